// The digitq page: upload with progress, follow the job, page through results, download CSV or
// JSON Lines. Plain JS, no build step (busy.js, jobs.js and draw.js are loaded beside it).
// Everything from the server or the user is written with textContent (a zip entry's name is
// user input), and the API key lives in sessionStorage: this tab only.
"use strict";

const PAGE = 50; // rows per results page: a 10,000-image job is 200 pages, never 10,000 rows
const KEY = "digitq-api-key";
const $ = (id) => document.getElementById(id);

// thumbs: item index -> blob URL of the dropped image (names collide: two folders' "1.png")
const state = { files: [], job: null, offset: 0, thumbs: new Map(), timer: null, pageDone: false };

function headers() {
  const key = sessionStorage.getItem(KEY);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function newKey() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID(); // secure contexts only
  return Array.from({ length: 32 }, () => Math.floor(Math.random() * 16).toString(16)).join("");
}

// Screen readers hear the live region only when its text changes: the job's status, not every
// poll's counts (those show on the visible line and the progress bar).
let announced = "";
function announce(text) {
  if (text === announced) return;
  announced = text;
  $("announce").textContent = text;
}

function say(text, announcement = text) {
  const line = $("status");
  if (line.textContent !== text) line.textContent = text;
  announce(announcement);
}

async function problemText(response) {
  try {
    const body = await response.json();
    return `${body.title || response.status}: ${body.detail || ""}`;
  } catch { return `HTTP ${response.status}`; }
}

function askForKey(why) {
  $("key-why").textContent = why;
  $("key-form").hidden = false;
  $("api-key").focus();
}

// fetch with the key; busy answers (429/503 + Retry-After) are retried, told through `tell`.
async function api(path, options = {}, tell = say) {
  const attempt = async () => {
    const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
    return { status: response.status, retryAfter: response.headers.get("Retry-After"), response };
  };
  const { response } = await whileBusy(attempt, tell);
  if (response.status === 401) {
    askForKey("This server needs an API key (the one given was refused).");
    throw new Error("API key needed");
  }
  if (!response.ok) throw new Error(await problemText(response));
  return response;
}

// Upload ------------------------------------------------------------------------------------

// A job's items follow its parts: an image part is one item, a zip as many as it holds. Images
// are sent first, so image k is item k whatever the zips hold, and thumbnails are keyed by index.
const ZIP_MAGIC = [[0x50, 0x4b, 0x03, 0x04], [0x50, 0x4b, 0x05, 0x06]]; // as the server sniffs

// "zip", "other", or null: unreadable (a dropped folder is a File that cannot be read)
async function kindOf(file) {
  try {
    const head = new Uint8Array(await file.slice(0, 4).arrayBuffer());
    return ZIP_MAGIC.some((magic) => magic.every((byte, i) => head[i] === byte)) ? "zip" : "other";
  } catch { return null; }
}

// { images, zips, unreadable }: what to send, images first, and what cannot be sent
async function imagesFirst(files) {
  const kinds = await Promise.all(files.map(kindOf));
  const of = (kind) => files.filter((_, i) => kinds[i] === kind);
  return { images: of("other"), zips: of("zip"), unreadable: of(null).length };
}

function showThumbs(files) {
  const box = $("thumbs");
  box.replaceChildren();
  for (const url of state.thumbs.values()) URL.revokeObjectURL(url);
  state.thumbs.clear();
  for (const [index, file] of files.entries()) { // images only: the index of each is its item's
    if (!file.type.startsWith("image/")) continue;
    const url = URL.createObjectURL(file);
    state.thumbs.set(index, url);
    if (box.children.length < 60) { // the rest still show in the table
      const img = document.createElement("img");
      img.src = url;
      img.alt = file.name;
      box.append(img);
    }
  }
}

// One upload attempt; resolves to { status, retryAfter, body } (status 0: unreachable).
function send(form, idempotencyKey) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest(); // fetch has no upload progress events
    xhr.open("POST", "/jobs");
    for (const [name, value] of Object.entries(headers())) xhr.setRequestHeader(name, value);
    xhr.setRequestHeader("Idempotency-Key", idempotencyKey); // the same key on every retry
    const bar = $("upload-progress");
    bar.value = 0;
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) { bar.max = event.total; bar.value = event.loaded; }
    };
    xhr.onload = () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      resolve({ status: xhr.status, retryAfter: xhr.getResponseHeader("Retry-After"), body });
    };
    xhr.onerror = () => resolve({ status: 0, retryAfter: null, body: {} });
    xhr.send(form);
  });
}

async function submit(dropped) {
  if (!dropped.length) return;
  const { images, zips, unreadable } = await imagesFirst(dropped);
  const files = [...images, ...zips];
  const left = unreadable
    ? ` (${unreadable} folder(s) or unreadable file(s) left out: drop their files, or a zip)` : "";
  if (!files.length) { say(`Nothing to upload${left}.`); return; }
  state.files = files;
  showThumbs(images);
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  say(`Uploading ${files.length} file(s)…${left}`);
  const idempotencyKey = newKey();
  const { status, body } = await whileBusy(() => send(form, idempotencyKey), say);
  if (status === 0) { say("Upload failed: the server could not be reached."); return; }
  if (status === 401) { askForKey("This server needs an API key."); say("Waiting for an API key."); return; }
  if (status >= 400) { say(`Upload refused — ${body.title || status}: ${body.detail || ""}`); return; }
  $("upload-progress").value = $("upload-progress").max;
  start(body);
}

// Job ---------------------------------------------------------------------------------------

function start(job) {
  state.job = job;
  state.offset = 0;
  state.pageDone = false;
  $("csv").hidden = false;
  $("csv").href = job.links.csv;
  $("jsonl").hidden = false;
  $("jsonl").href = `${job.links.results}?format=jsonl`;
  $("cancel").hidden = false;
  history.replaceState(null, "", `#job=${job.id}`); // a reload reopens it (jobs.js)
  showJob(job);
  poll();
}

function showJob(job) {
  const c = job.counts;
  $("job-progress").max = Math.max(c.total, 1);
  $("job-progress").value = c.done;
  const failed = c.failed ? `, ${c.failed} failed` : "";
  const counts = `${c.done} of ${c.total} done${failed}${job.error ? ` (${job.error})` : ""}`;
  const finished = ["succeeded", "failed", "cancelled"].includes(job.status);
  // Announced: the status, and the counts once they stop changing
  say(`Job ${job.id}: ${job.status} — ${counts}`, `Job ${job.status}${finished ? ` — ${counts}` : ""}`);
  $("results").dataset.status = job.status;
  $("cancel").hidden = finished;
  document.dispatchEvent(new CustomEvent("digitq:job", { detail: job })); // jobs.js keeps its list current
}

async function poll() {
  clearTimeout(state.timer);
  const id = state.job.id;
  try {
    const job = await (await api(`/jobs/${id}`)).json();
    if (!state.job || state.job.id !== id) return; // another upload started meanwhile
    state.job = job;
    showJob(job);
    const finished = ["succeeded", "failed", "cancelled"].includes(job.status);
    if (!state.pageDone || finished) await loadPage();
    if (!finished) state.timer = setTimeout(poll, 700);
    else if (job.status !== "cancelled") reviewReady(job); // review.js
  } catch (error) {
    say(`Could not read the job: ${error.message}`);
    state.timer = setTimeout(poll, 3000);
  }
}

// Results -----------------------------------------------------------------------------------

async function loadPage() {
  const job = state.job;
  const page = await (await api(`/jobs/${job.id}/results?offset=${state.offset}&limit=${PAGE}`)).json();
  state.pageDone = page.items.every((item) => item.status !== "pending");
  renderRows(page.items);
  const pages = Math.max(1, Math.ceil(page.total / PAGE));
  const current = Math.floor(state.offset / PAGE) + 1;
  $("page-info").textContent = `Page ${current} of ${pages} (${page.total} images)`;
  $("prev").disabled = state.offset === 0;
  $("next").disabled = !page.next;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.append(td);
  return td;
}

function renderRows(items) {
  const body = $("results").tBodies[0];
  const rows = items.map((item) => {
    const row = document.createElement("tr");
    row.className = item.status + (item.low_confidence ? " low" : "");
    const thumb = cell(row, "");
    const img = document.createElement("img");
    img.alt = "";
    const url = state.thumbs.get(item.index);
    if (url) img.src = url; // dropped directly: the browser has it
    else if (item.status === "done") itemImage(img, state.job.id, item.index); // from the server (review.js)
    thumb.append(img);
    cell(row, String(item.index));
    cell(row, item.name, "name");
    cell(row, item.digit ?? (item.status === "pending" ? "…" : ""), "digit");
    cell(row, item.confidence == null ? "" : item.confidence.toFixed(3));
    cell(row, item.low_confidence ? "low" : "", "flag");
    cell(row, item.error || "", "error");
    cell(row, item.label ?? "", "label");
    return row;
  });
  body.replaceChildren(...rows);
}

async function turnPage(delta) {
  if (!state.job) return;
  state.offset = Math.max(0, state.offset + delta * PAGE);
  state.pageDone = false;
  try { await loadPage(); } catch (error) { say(error.message); }
}

// CSV, JSON Lines: a plain link cannot send the API key, so fetch it and hand the browser a Blob.
async function download(event, format) {
  event.preventDefault();
  if (!state.job) return;
  try {
    const blob = await (await api(`${state.job.links.results}?format=${format}`)).blob();
    const url = URL.createObjectURL(blob);
    const link = document.createElement("a");
    link.href = url;
    link.download = `digitq-${state.job.id}.${format}`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (error) { say(`Download failed: ${error.message}`); }
}

// Wiring ------------------------------------------------------------------------------------

function wire() {
  const drop = $("drop");
  drop.addEventListener("click", () => $("files").click());
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); $("files").click(); }
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    submit(Array.from(event.dataTransfer.files));
  });
  $("files").addEventListener("change", (event) => submit(Array.from(event.target.files)));
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("api-key").value.trim());
    $("key-form").hidden = true;
    document.dispatchEvent(new CustomEvent("digitq:key")); // jobs.js lists the key's jobs
    if (state.job) poll();
    else submit(state.files);
  });
  $("prev").addEventListener("click", () => turnPage(-1));
  $("next").addEventListener("click", () => turnPage(1));
  $("csv").addEventListener("click", (event) => download(event, "csv"));
  $("jsonl").addEventListener("click", (event) => download(event, "jsonl"));
  $("cancel").addEventListener("click", async () => {
    try { showJob(await (await api(`/jobs/${state.job.id}`, { method: "DELETE" })).json()); }
    catch (error) { say(error.message); }
  });
}

wire();
