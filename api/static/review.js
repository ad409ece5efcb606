// The Review view: the items of a finished job, low-confidence ones first, one big image at a
// time. A digit key records that digit as the item's label, Enter accepts the prediction (both
// saved at once with PUT /jobs/{id}/items/{index}/label), then the next item shows; the arrows
// move without saving. Loaded after app.js, whose `api`, `headers`, `state` and `$` it uses.
"use strict";

const REVIEW_MAX = 20000; // items a review loads at most (40 pages of results)
const review = { job: null, queue: [], at: 0, failed: [], loading: false };

// An item's image: straight from the server when the API is open (the browser lazy-loads it);
// with an API key, which an <img> cannot send, fetched once the row is near the screen.
const lazyImages = "IntersectionObserver" in window ? new IntersectionObserver((entries) => {
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    lazyImages.unobserve(entry.target);
    fetchImage(entry.target, entry.target.dataset.src);
  }
}, { rootMargin: "200px" }) : null;

async function fetchImage(img, url) {
  try {
    const blob = await (await api(url)).blob();
    img.src = URL.createObjectURL(blob);
    img.addEventListener("load", () => URL.revokeObjectURL(img.src), { once: true });
  } catch { img.alt = "image not available"; }
}

function itemImage(img, jobId, index, view = "upload", eager = false) {
  const url = `/jobs/${jobId}/items/${index}/image${view === "model" ? "?view=model" : ""}`;
  if (!headers().Authorization) {
    img.loading = eager ? "eager" : "lazy";
    img.src = url;
  } else if (eager || !lazyImages) {
    fetchImage(img, url);
  } else {
    img.dataset.src = url;
    lazyImages.observe(img);
  }
}

async function loadAll(jobId) {
  const items = [];
  let url = `/jobs/${jobId}/results?limit=1000`;
  while (url && items.length < REVIEW_MAX) {
    const page = await (await api(url)).json();
    items.push(...page.items);
    url = page.next;
  }
  return items;
}

// Called by app.js when a job has finished (and again after each poll of a finished job).
async function reviewReady(job) {
  if (review.loading || (review.job && review.job.id === job.id)) return;
  review.loading = true;
  try {
    const items = await loadAll(job.id);
    review.job = job;
    review.failed = items.filter((item) => item.status === "failed");
    const done = items.filter((item) => item.status === "done");
    // Low confidence first, least confident first; the rest after, in the same order.
    done.sort((a, b) => (b.low_confidence - a.low_confidence) || (a.confidence - b.confidence));
    review.queue = done;
    review.at = Math.max(0, done.findIndex((item) => item.label == null));
    if (review.at < 0) review.at = 0;
    $("review").hidden = false;
    showFailed();
    showItem();
  } catch (error) {
    reviewSay(`Could not load the items to review: ${error.message}`);
  } finally { review.loading = false; }
}

function showFailed() {
  const list = $("review-failed");
  list.replaceChildren(...review.failed.map((item) => {
    const li = document.createElement("li");
    li.textContent = `${item.name}: ${item.error}`;
    return li;
  }));
  $("review-failed-title").textContent = `${review.failed.length} failed item(s)`;
}

function showItem() {
  const queue = review.queue;
  const reviewed = queue.filter((item) => item.label != null).length;
  const flagged = queue.filter((item) => item.low_confidence).length;
  $("review-progress").textContent = `${reviewed} of ${queue.length} reviewed`;
  $("review-need").textContent = `${flagged} item(s) need a look (low confidence)`;
  const item = queue[review.at];
  if (!item) {
    $("review-item").hidden = true;
    $("review-status").textContent = queue.length ? "" : "No items to review.";
    return;
  }
  $("review-item").hidden = false;
  $("review-name").textContent = `#${item.index} ${item.name}`;
  $("review-guess").textContent = `Model: ${item.digit} (${item.confidence.toFixed(3)}${item.low_confidence ? ", low confidence" : ""})`;
  $("review-label").textContent = item.label == null ? "Not labelled yet" : `Labelled ${item.label}`;
  $("review-position").textContent = `Item ${review.at + 1} of ${queue.length}`;
  itemImage($("review-image"), review.job.id, item.index, "upload", true);
  itemImage($("review-model"), review.job.id, item.index, "model", true);
}

async function saveLabel(digit) {
  const item = review.queue[review.at];
  if (!item) return;
  try {
    const body = JSON.stringify({ digit });
    const saved = await (await api(`/jobs/${review.job.id}/items/${item.index}/label`, {
      method: "PUT", body, headers: { "Content-Type": "application/json" },
    })).json();
    item.label = saved.label;
    reviewSay(`Saved: #${item.index} is ${saved.label}`);
    move(1);
  } catch (error) { reviewSay(`Not saved: ${error.message}`); }
}

function move(step) {
  review.at = Math.min(Math.max(review.at + step, 0), review.queue.length - (step > 0 ? 0 : 1));
  showItem();
}

function reviewKeys(event) {
  if (event.altKey || event.ctrlKey || event.metaKey) return;
  const item = review.queue[review.at];
  if (/^[0-9]$/.test(event.key)) { event.preventDefault(); saveLabel(Number(event.key)); }
  else if (event.key === "Enter" && item) { event.preventDefault(); saveLabel(item.digit); }
  else if (event.key === "ArrowRight") { event.preventDefault(); move(1); }
  else if (event.key === "ArrowLeft" || event.key === "Backspace") { event.preventDefault(); move(-1); }
}

$("review-panel").addEventListener("keydown", reviewKeys);
$("review-start").addEventListener("click", () => $("review-panel").focus());

// The review's own line, announced through the page's one live region (app.js announce), so a
// screen reader hears each save once and nothing else twice.
function reviewSay(text) {
  $("review-status").textContent = text;
  announce(text);
}
