// Draw a digit and have it recognised: a canvas drawn with Pointer Events (mouse, finger, pen
// alike), sent as a PNG to POST /predict, answered with the digit, its confidence and the 28x28
// the model saw. Uses app.js's `$`, `api`, `headers`, `announce`.
"use strict";

{ // a block: these names stay out of the other scripts' way
const INK = 18; // stroke width on the 280 px pad: MNIST's ~2 px strokes in its 20 px box, scaled
const SIDE = 28; // MNIST: what the model sees
const BOX = 20; // MNIST: the digit's longer side inside it (as ml/preprocess.py)

const pad = $("pad");
const ink = pad.getContext("2d", { willReadFrequently: true });
const strokes = new Map(); // pointerId -> last point: two fingers draw two lines
let drawn = false;
let waitingForKey = false;

function blank() {
  ink.fillStyle = "#fff";
  ink.fillRect(0, 0, pad.width, pad.height);
  drawn = false;
}

function point(event) {
  const box = pad.getBoundingClientRect();
  return {
    x: ((event.clientX - box.left) * pad.width) / box.width,
    y: ((event.clientY - box.top) * pad.height) / box.height,
  };
}

function line(from, to) {
  ink.strokeStyle = "#000";
  ink.lineWidth = INK;
  ink.lineCap = "round";
  ink.lineJoin = "round";
  ink.beginPath();
  ink.moveTo(from.x, from.y);
  ink.lineTo(to.x, to.y);
  ink.stroke();
  drawn = true;
}

function down(event) {
  if (event.button !== 0) return; // the primary button, a touch or a pen tip
  event.preventDefault();
  pad.setPointerCapture(event.pointerId); // the stroke goes on when it leaves the pad
  const at = point(event);
  strokes.set(event.pointerId, at);
  line(at, at); // a dot
}

function move(event) {
  let last = strokes.get(event.pointerId);
  if (!last) return;
  // A fast stroke delivers several positions per frame: draw through all of them
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const each of events.length ? events : [event]) {
    const at = point(each);
    line(last, at);
    last = at;
  }
  strokes.set(event.pointerId, last);
}

function up(event) { strokes.delete(event.pointerId); }

function tell(text, announcement = text) {
  $("draw-status").textContent = text;
  announce(announcement);
}

// The drawing brought to 28x28 in this browser, the way ml/preprocess.py does on the server: the
// ink's bounding box scaled so its longer side is 20 px, placed so that the ink's centre of mass
// sits at (14, 14), light ink on black. An approximation (the browser's resampling, no dust or
// noise removal); the server's own 28x28 is shown instead when the API serves it.
function approximateModelView() {
  const { data, width, height } = ink.getImageData(0, 0, pad.width, pad.height);
  let top = height, left = width, bottom = -1, right = -1;
  for (let y = 0; y < height; y += 1) {
    for (let x = 0; x < width; x += 1) {
      if (data[(y * width + x) * 4] < 255) {
        top = Math.min(top, y); bottom = Math.max(bottom, y);
        left = Math.min(left, x); right = Math.max(right, x);
      }
    }
  }
  if (bottom < 0) return null;
  const cropW = right - left + 1, cropH = bottom - top + 1;
  const scale = BOX / Math.max(cropW, cropH);
  const w = Math.max(1, Math.round(cropW * scale)), h = Math.max(1, Math.round(cropH * scale));
  const small = document.createElement("canvas");
  small.width = w;
  small.height = h;
  const shrink = small.getContext("2d", { willReadFrequently: true });
  shrink.imageSmoothingQuality = "high";
  shrink.drawImage(pad, left, top, cropW, cropH, 0, 0, w, h);
  const pixels = shrink.getImageData(0, 0, w, h).data;
  const value = new Float32Array(w * h);
  let peak = 0, total = 0, sumX = 0, sumY = 0;
  for (let i = 0; i < w * h; i += 1) {
    value[i] = 255 - pixels[i * 4]; // light ink on black, as the model sees digits
    peak = Math.max(peak, value[i]);
    total += value[i];
    sumX += value[i] * (i % w);
    sumY += value[i] * Math.floor(i / w);
  }
  const cx = total ? sumX / total : (w - 1) / 2, cy = total ? sumY / total : (h - 1) / 2;
  const x0 = Math.min(Math.max(Math.round(14 - cx), 0), SIDE - w);
  const y0 = Math.min(Math.max(Math.round(14 - cy), 0), SIDE - h);
  const field = new ImageData(SIDE, SIDE);
  for (let i = 0; i < SIDE * SIDE; i += 1) field.data[i * 4 + 3] = 255; // opaque black
  for (let y = 0; y < h; y += 1) {
    for (let x = 0; x < w; x += 1) {
      const level = peak ? Math.round((value[y * w + x] * 255) / peak) : 0;
      const at = ((y0 + y) * SIDE + x0 + x) * 4;
      field.data[at] = field.data[at + 1] = field.data[at + 2] = level;
    }
  }
  return field;
}

// The server's 28x28 of the job's item, when this API serves it (GET .../image?view=model);
// null otherwise: the page then shows its own approximation, and says so.
async function serverModelView(jobId) {
  try {
    const response = await fetch(`/jobs/${jobId}/items/0/image?view=model`, { headers: headers() });
    const type = response.headers.get("Content-Type") || "";
    if (!response.ok || !type.startsWith("image/")) return null;
    return URL.createObjectURL(await response.blob());
  } catch { return null; }
}

async function showModelView(jobId) {
  const image = $("seen-image"), canvas = $("seen-canvas");
  if (image.src.startsWith("blob:")) URL.revokeObjectURL(image.src);
  const served = await serverModelView(jobId);
  if (served) {
    image.src = served;
    await image.decode().catch(() => {}); // shown once drawn: no empty frame
    image.alt = "The 28 by 28 pixel image the model classified";
    image.hidden = false;
    canvas.hidden = true;
    $("seen-caption").textContent = "The 28×28 the model saw (from the server).";
  } else {
    const field = approximateModelView();
    if (!field) return;
    canvas.getContext("2d").putImageData(field, 0, 0);
    canvas.hidden = false;
    image.hidden = true;
    image.removeAttribute("src");
    $("seen-caption").textContent =
      "About what the model saw: your drawing brought to 28×28 in this browser the way the server " +
      "does it (cropped, scaled to 20 px, centred). The server does not send its own 28×28 yet.";
  }
  $("seen").hidden = false;
}

async function recognise() {
  if (!drawn) { tell("Draw a digit first."); return; }
  const png = await new Promise((resolve) => pad.toBlob(resolve, "image/png"));
  const form = new FormData();
  form.append("file", png, "drawing.png");
  tell("Recognising…");
  $("recognise").disabled = true;
  try {
    const answer = await (await api("/predict", { method: "POST", body: form }, tell)).json();
    $("answer-digit").textContent = String(answer.digit);
    const low = answer.low_confidence ? " (low: the model is unsure)" : "";
    $("answer-confidence").textContent = `${(answer.confidence * 100).toFixed(1)} %${low}`;
    $("answer").hidden = false;
    tell(`Recognised ${answer.digit}, confidence ${(answer.confidence * 100).toFixed(0)} %${low}.`);
    document.dispatchEvent(new CustomEvent("digitq:jobs")); // a /predict is a job too: jobs.js lists it
    await showModelView(answer.job_id);
  } catch (error) {
    if (error.message === "API key needed") { waitingForKey = true; tell("Waiting for an API key."); }
    else tell(`Not recognised: ${error.message}`);
  } finally {
    $("recognise").disabled = false;
  }
}

function clear() {
  blank();
  strokes.clear();
  $("answer").hidden = true;
  $("seen").hidden = true;
  tell("");
}

function wireDraw() {
  blank();
  pad.addEventListener("pointerdown", down);
  pad.addEventListener("pointermove", move);
  pad.addEventListener("pointerup", up);
  pad.addEventListener("pointercancel", up);
  $("recognise").addEventListener("click", recognise);
  $("clear").addEventListener("click", clear);
  document.addEventListener("digitq:key", () => {
    if (waitingForKey) { waitingForKey = false; recognise(); }
  });
}

wireDraw();
}
