// Busy answers: a 429 (over a quota) or a 503 (too many uploads at once, a store briefly down)
// that carries Retry-After is asked again after that many seconds, saying "busy, retrying in N s"
// meanwhile. Both are the server saying "not now", never "no": the page waits instead of failing.
// Shared by fetch (app.js `api`) and the upload's XMLHttpRequest, which fetch cannot replace
// (no upload progress events).
"use strict";

const BUSY_STATUSES = [429, 503];
const BUSY_TRIES = 6; // then the busy answer is shown as it is
const BUSY_LONGEST_WAIT = 300; // seconds: a Retry-After beyond this is waited for this long

// Seconds to wait from a Retry-After value (delay-seconds or an HTTP date), or null: none given.
function retryAfterSeconds(value) {
  if (value == null || value === "") return null;
  const text = String(value).trim();
  if (/^\d+$/.test(text)) return Math.min(Number(text), BUSY_LONGEST_WAIT);
  const when = Date.parse(text);
  if (Number.isNaN(when)) return null;
  return Math.min(Math.max(0, Math.ceil((when - Date.now()) / 1000)), BUSY_LONGEST_WAIT);
}

// Count down `seconds`, telling `tell(text, announcement)` each second; the announcement stays the
// same for the whole wait, so a screen reader hears it once, not once a second.
function busyCountdown(seconds, tell) {
  const announcement = `Busy, retrying in ${seconds} s`;
  return new Promise((resolve) => {
    let left = seconds;
    const tick = () => {
      if (left <= 0) { resolve(); return; }
      tell(`Busy, retrying in ${left} s`, announcement);
      left -= 1;
      setTimeout(tick, 1000);
    };
    tick();
  });
}

// `send()` makes one attempt and resolves to { status, retryAfter, ... }; while the answer is a busy
// one with a Retry-After, wait and send again (up to BUSY_TRIES attempts). Resolves to the last answer.
async function whileBusy(send, tell) {
  for (let attempt = 1; ; attempt += 1) {
    const answer = await send();
    const wait = BUSY_STATUSES.includes(answer.status) ? retryAfterSeconds(answer.retryAfter) : null;
    if (wait === null || attempt >= BUSY_TRIES) return answer;
    await busyCountdown(wait, tell);
  }
}
