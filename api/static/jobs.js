// The key's recent jobs (GET /jobs), and reopening one: from the list, or after a reload from the
// URL's #job=<id> (app.js `start` writes it). Uses app.js's `api`, `say`, `start`, `showThumbs`.
"use strict";

{ // a block: these names stay out of the other scripts' way
const RECENT = 10; // jobs listed: the newest ones; older ones are one `digitq list` away
const JOB_HASH = /^#job=([0-9a-f]{32})$/;
const TERMINAL = ["succeeded", "failed", "cancelled"];

const listedFor = new Set(); // jobs the list was reloaded for once: not again on every poll

function when(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

function recentRow(job) {
  const row = document.createElement("tr");
  row.dataset.job = job.id;
  cell(row, when(job.created_at));
  cell(row, String(job.counts.total));
  cell(row, job.status, "job-status");
  const open = document.createElement("button");
  open.type = "button";
  open.textContent = `Open ${job.id.slice(0, 8)}`; // the name starts with the visible text
  open.setAttribute("aria-label", `Open ${job.id.slice(0, 8)}: job ${job.id}, ${job.counts.total} image(s)`);
  open.addEventListener("click", () => openJob(job.id));
  cell(row, "").append(open);
  return row;
}

function markCurrent() {
  for (const row of $("recent").tBodies[0].rows) {
    if (state.job && row.dataset.job === state.job.id) row.setAttribute("aria-current", "true");
    else row.removeAttribute("aria-current");
  }
}

async function loadRecent() {
  try {
    const list = await (await api(`/jobs?limit=${RECENT}`)).json();
    $("recent").tBodies[0].replaceChildren(...list.items.map(recentRow));
    $("recent-info").textContent = list.items.length
      ? `Your ${list.items.length} newest job(s)${list.next ? " (older ones are not shown)" : ""}`
      : "No jobs yet.";
    markCurrent();
  } catch (error) {
    $("recent-info").textContent = `Could not list your jobs: ${error.message}`;
  }
}

// Reopen a job: the page follows it and shows its results as after an upload (without thumbnails:
// the files are not in this page any more).
async function openJob(id) {
  try {
    const job = await (await api(`/jobs/${id}`)).json();
    state.files = [];
    showThumbs([]);
    start(job);
    markCurrent();
  } catch (error) {
    if (error.message === "API key needed") return; // app.js asks for it; digitq:key reopens
    history.replaceState(null, "", location.pathname);
    say(`Job ${id} cannot be opened (${error.message}).`);
  }
}

function openFromHash() {
  const match = JOB_HASH.exec(location.hash);
  if (match && (!state.job || state.job.id !== match[1])) openJob(match[1]);
}

// Keep the list current without listing on every poll: list again when a job appears or ends.
function jobChanged(event) {
  const job = event.detail;
  const row = [...$("recent").tBodies[0].rows].find((r) => r.dataset.job === job.id);
  if (!row) {
    if (!listedFor.has(job.id)) { listedFor.add(job.id); loadRecent(); }
    return;
  }
  const shown = row.querySelector(".job-status");
  if (shown.textContent !== job.status) {
    shown.textContent = job.status;
    if (TERMINAL.includes(job.status)) loadRecent();
  }
  markCurrent();
}

function wireRecent() {
  $("recent-refresh").addEventListener("click", loadRecent);
  document.addEventListener("digitq:job", jobChanged);
  document.addEventListener("digitq:jobs", loadRecent);
  document.addEventListener("digitq:key", () => { loadRecent(); if (!state.job) openFromHash(); });
  window.addEventListener("hashchange", openFromHash);
  loadRecent();
  openFromHash();
}

wireRecent();
}
