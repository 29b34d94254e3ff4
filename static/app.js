// The drawing page: pointer strokes in, predictions out. The page only draws and sends strokes;
// the server does all preprocessing (crop, scale, centre) and answers with the 28x28 input it used.

const THROTTLE_MS = 150;          // at most one /predict per this interval while drawing
const REQUEST_TIMEOUT_MS = 10000;
const PEN_FRACTION = 0.055;       // on-screen pen width as a fraction of the pad's width
const PREVIEW_SCALE = 5;          // CSS pixels per model pixel in the "what the model saw" preview

const $ = (id) => document.getElementById(id);

const ui = {
  pad: $("pad"),
  padFrame: $("pad-frame"),
  undo: $("undo"),
  clear: $("clear"),
  result: $("result"),
  digit: $("digit"),
  verdictText: $("verdict-text"),
  verdictDetail: $("verdict-detail"),
  bars: $("bars"),
  seen: $("seen"),
  status: $("status"),
  modelInfo: $("model-info"),
  modelVersion: $("model-version"),
  modelAccuracy: $("model-accuracy"),
};

// All mutable page state lives here.
export const state = {
  strokes: [],       // [[[x, y], ...], ...] in CSS pixels of the pad, as sent to /predict
  drawing: null,     // {pointerId, stroke} while a pen, finger or mouse button is down
  size: 0,           // the pad's CSS width (= height)
  epoch: 0,          // bumped on undo and clear; answers sent in an older epoch are dropped
  inFlight: false,   // one /predict at a time
  wanted: false,     // the strokes changed since the last /predict was sent
  lastSentAt: -Infinity,
  timer: 0,
  prediction: null,  // the /predict answer on display
  model: null,       // the GET /model answer
};

const padContext = ui.pad.getContext("2d");

// ---- the pad -----------------------------------------------------------------------------------

function resizePad() {
  const size = ui.pad.clientWidth;
  if (!size) return;
  if (state.size && size !== state.size) scaleStrokes(size / state.size);
  state.size = size;
  const pixels = Math.round(size * (window.devicePixelRatio || 1));
  if (ui.pad.width !== pixels) {
    ui.pad.width = pixels;
    ui.pad.height = pixels;
  }
  redrawPad();
}

function scaleStrokes(factor) {
  for (const stroke of state.strokes) {
    for (const point of stroke) {
      point[0] = round1(point[0] * factor);
      point[1] = round1(point[1] * factor);
    }
  }
}

function preparePen() {
  const scale = ui.pad.width / state.size;
  padContext.setTransform(scale, 0, 0, scale, 0, 0);
  padContext.lineCap = "round";
  padContext.lineJoin = "round";
  padContext.lineWidth = Math.max(4, state.size * PEN_FRACTION);
  const ink = getComputedStyle(ui.pad).getPropertyValue("--ink").trim() || "#1d2433";
  padContext.strokeStyle = ink;
  padContext.fillStyle = ink;
}

function redrawPad() {
  if (!state.size) return;
  preparePen();
  padContext.clearRect(0, 0, state.size, state.size);
  for (const stroke of state.strokes) drawStroke(stroke);
}

const midpoint = (a, b) => [(a[0] + b[0]) / 2, (a[1] + b[1]) / 2];

function drawDot([x, y]) {
  padContext.beginPath();
  padContext.arc(x, y, padContext.lineWidth / 2, 0, 2 * Math.PI);
  padContext.fill();
}

// A whole stroke, smoothed: quadratic curves through the midpoints, with the points as controls.
function drawStroke(points) {
  if (points.length === 1) return drawDot(points[0]);
  padContext.beginPath();
  padContext.moveTo(...points[0]);
  padContext.lineTo(...midpoint(points[0], points[1]));
  for (let i = 1; i < points.length - 1; i++) {
    padContext.quadraticCurveTo(...points[i], ...midpoint(points[i], points[i + 1]));
  }
  padContext.lineTo(...points[points.length - 1]);
  padContext.stroke();
}

// Only the newest piece of the stroke being drawn; the same curve drawStroke draws.
function drawTail(points) {
  const n = points.length;
  if (n === 1) return drawDot(points[0]);
  padContext.beginPath();
  if (n === 2) {
    padContext.moveTo(...points[0]);
    padContext.lineTo(...midpoint(points[0], points[1]));
  } else {
    padContext.moveTo(...midpoint(points[n - 3], points[n - 2]));
    padContext.quadraticCurveTo(...points[n - 2], ...midpoint(points[n - 2], points[n - 1]));
  }
  padContext.stroke();
}

const round1 = (value) => Math.round(value * 10) / 10;

function pointFrom(event) {
  const box = ui.pad.getBoundingClientRect();
  const clamp = (value) => Math.min(Math.max(value, 0), state.size);
  const scale = state.size / (box.width || state.size);
  return [round1(clamp((event.clientX - box.left) * scale)), round1(clamp((event.clientY - box.top) * scale))];
}

// ---- pointer input -----------------------------------------------------------------------------

function onPointerDown(event) {
  if (state.drawing || !event.isPrimary) return;
  if (event.pointerType === "mouse" && event.button !== 0) return;
  event.preventDefault();
  ui.pad.setPointerCapture(event.pointerId);
  const stroke = [pointFrom(event)];
  state.strokes.push(stroke);
  state.drawing = { pointerId: event.pointerId, stroke };
  preparePen();
  drawTail(stroke);
  updateControls();
}

function onPointerMove(event) {
  const drawing = state.drawing;
  if (!drawing || event.pointerId !== drawing.pointerId) return;
  const events = event.getCoalescedEvents?.() ?? [];
  let added = false;
  for (const each of events.length ? events : [event]) {
    const point = pointFrom(each);
    const last = drawing.stroke[drawing.stroke.length - 1];
    if (Math.hypot(point[0] - last[0], point[1] - last[1]) < 0.75) continue;
    drawing.stroke.push(point);
    drawTail(drawing.stroke);
    added = true;
  }
  if (added) schedulePrediction();
}

function onPointerUp(event) {
  if (!state.drawing || event.pointerId !== state.drawing.pointerId) return;
  state.drawing = null;
  redrawPad();
  schedulePrediction({ now: true });
}

// ---- undo and clear ----------------------------------------------------------------------------

export function undoStroke() {
  if (!state.strokes.length) return;
  state.strokes.pop();
  strokesRemoved();
}

export function clearDrawing() {
  state.strokes = [];
  strokesRemoved();
}

function strokesRemoved() {
  state.drawing = null;
  state.epoch += 1;
  redrawPad();
  updateControls();
  if (state.strokes.length) {
    schedulePrediction({ now: true });
  } else {
    cancelPrediction();
    resetDisplay();
  }
}

function updateControls() {
  ui.padFrame.dataset.hasInk = String(state.strokes.length > 0);
}

function isTyping(target) {
  return target instanceof HTMLElement &&
    (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
}

function onKeyDown(event) {
  if (event.defaultPrevented || isTyping(event.target)) return;
  if (event.key === "Escape") {
    clearDrawing();
  } else if ((event.ctrlKey || event.metaKey) && !event.shiftKey && !event.altKey &&
             event.key.toLowerCase() === "z") {
    event.preventDefault();
    undoStroke();
  }
}

// ---- talking to the server ---------------------------------------------------------------------

function describeDetail(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((item) => item?.msg ?? JSON.stringify(item)).join("; ");
  return detail == null ? "" : JSON.stringify(detail);
}

// GET or POST JSON; resolves to the parsed answer, or rejects with an Error whose message is readable.
export async function fetchJSON(url, options = {}) {
  const controller = new AbortController();
  const timeout = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
  try {
    let response;
    try {
      response = await fetch(url, { ...options, signal: controller.signal });
    } catch (error) {
      throw new Error(error.name === "AbortError" ? "the server took too long to answer"
                                                 : "can't reach the server; is it running?");
    }
    const data = await response.json().catch(() => null);
    if (!response.ok) {
      throw new Error(describeDetail(data?.detail) || `the server answered ${response.status} ${response.statusText}`);
    }
    if (data === null) throw new Error("the server's answer was not JSON");
    return data;
  } finally {
    clearTimeout(timeout);
  }
}

// Ask for a prediction: right away when `now` (pen-up, undo), else at most once per THROTTLE_MS.
export function schedulePrediction({ now = false } = {}) {
  if (!state.strokes.length) return;
  state.wanted = true;
  updateBusy();
  if (state.inFlight) return;  // the request in flight schedules the next one when it ends
  const wait = now ? 0 : state.lastSentAt + THROTTLE_MS - performance.now();
  if (wait <= 0) {
    sendPrediction();
  } else if (!state.timer) {
    state.timer = setTimeout(sendPrediction, wait);
  }
}

function cancelPrediction() {
  clearTimeout(state.timer);
  state.timer = 0;
  state.wanted = false;
  updateBusy();
}

async function sendPrediction() {
  clearTimeout(state.timer);
  state.timer = 0;
  if (!state.wanted || state.inFlight || !state.strokes.length) return;
  state.wanted = false;
  state.inFlight = true;
  state.lastSentAt = performance.now();
  const epoch = state.epoch;
  const body = JSON.stringify({ strokes: state.strokes, explain: true });
  updateBusy();
  try {
    const answer = await fetchJSON("/predict", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body,
    });
    if (epoch === state.epoch) showPrediction(answer);
  } catch (error) {
    if (epoch === state.epoch) showStatus(error.message, "error");
  } finally {
    state.inFlight = false;
    if (state.wanted) schedulePrediction();
    updateBusy();
  }
}

function updateBusy() {
  ui.result.setAttribute("aria-busy", String(state.inFlight || state.wanted));
}

async function loadModelInfo() {
  try {
    const model = await fetchJSON("/model");
    state.model = model;
    showModelInfo(model);
  } catch (error) {
    ui.modelInfo.dataset.state = "error";
    ui.modelVersion.textContent = "unavailable";
    ui.modelAccuracy.textContent = "unknown";
    showStatus(`Could not load the model's details: ${error.message}`, "error");
  }
}

// ---- showing results ---------------------------------------------------------------------------

const percent = (p) => `${(p * 100).toFixed(1)}%`;

function showModelInfo(model) {
  const accuracy = model.metrics?.test_accuracy;
  ui.modelVersion.textContent = model.version;
  ui.modelVersion.title = `${model.architecture} network, created ${model.created_at}`;
  ui.modelAccuracy.textContent = typeof accuracy === "number" ? percent(accuracy) : "not measured";
  ui.modelInfo.dataset.state = "ready";
}

function verdictFor(digit, confidence) {
  if (confidence >= 0.9) return `That's a ${digit}`;
  if (confidence >= 0.6) return `Probably a ${digit}`;
  return `Maybe a ${digit}?`;
}

function showPrediction(answer) {
  const probabilities = answer?.probabilities;
  if (!Array.isArray(probabilities) || !probabilities.length) {
    showStatus("The server's answer had no probabilities.", "error");
    return;
  }
  state.prediction = answer;
  ui.digit.textContent = String(answer.digit);
  ui.verdictText.textContent = verdictFor(answer.digit, answer.confidence);
  ui.verdictDetail.textContent = `${percent(answer.confidence)} confident`;
  renderBars(probabilities, answer.digit);
  renderSeen(answer.input);
  ui.result.dataset.state = "result";
  showStatus("");
  document.dispatchEvent(new CustomEvent("digits:prediction", { detail: answer }));
}

function makeBar(label) {
  const item = document.createElement("li");
  item.className = "bar";
  item.innerHTML = '<span class="bar-label"></span><span class="bar-track" aria-hidden="true">' +
                   '<span class="bar-fill"></span></span><span class="bar-value"></span>';
  item.querySelector(".bar-label").textContent = label;
  return item;
}

// One bar per probability; as many bars as the answer has classes.
function renderBars(probabilities, top) {
  while (ui.bars.children.length > probabilities.length) ui.bars.lastElementChild.remove();
  while (ui.bars.children.length < probabilities.length) ui.bars.append(makeBar(String(ui.bars.children.length)));
  probabilities.forEach((p, digit) => {
    const item = ui.bars.children[digit];
    item.classList.toggle("is-top", digit === top);
    item.querySelector(".bar-fill").style.width = `${Math.min(Math.max(p, 0), 1) * 100}%`;
    item.querySelector(".bar-value").textContent = percent(p);
  });
}

// The model's input (rows of values in [0, 1], 1 = ink), enlarged without smoothing.
function renderSeen(input) {
  const context = ui.seen.getContext("2d");
  if (!Array.isArray(input) || !input.length || !Array.isArray(input[0])) {
    context.clearRect(0, 0, ui.seen.width, ui.seen.height);
    return;
  }
  const rows = input.length;
  const cols = input[0].length;
  const image = new ImageData(cols, rows);
  input.forEach((row, y) => row.forEach((value, x) => {
    const offset = 4 * (y * cols + x);
    image.data.fill(255, offset, offset + 3);
    image.data[offset + 3] = Math.round(Math.min(Math.max(value, 0), 1) * 255);
  }));
  const small = document.createElement("canvas");
  small.width = cols;
  small.height = rows;
  small.getContext("2d").putImageData(image, 0, 0);
  const scale = Math.ceil(PREVIEW_SCALE * (window.devicePixelRatio || 1));
  ui.seen.width = cols * scale;
  ui.seen.height = rows * scale;
  ui.seen.style.setProperty("--cols", cols);
  context.imageSmoothingEnabled = false;
  context.drawImage(small, 0, 0, ui.seen.width, ui.seen.height);
}

function resetDisplay() {
  state.prediction = null;
  ui.digit.textContent = "?";
  ui.verdictText.textContent = "Draw a digit";
  ui.verdictDetail.textContent = "Use a mouse, a finger or a pen on the pad.";
  ui.bars.replaceChildren();
  renderSeen(null);
  ui.result.dataset.state = "empty";
  showStatus("");
}

export function showStatus(message, kind = "info") {
  ui.status.textContent = message;
  ui.status.dataset.kind = message ? kind : "";
}

// ---- start -------------------------------------------------------------------------------------

function init() {
  ui.pad.addEventListener("pointerdown", onPointerDown);
  ui.pad.addEventListener("pointermove", onPointerMove);
  ui.pad.addEventListener("pointerup", onPointerUp);
  ui.pad.addEventListener("pointercancel", onPointerUp);
  ui.pad.addEventListener("lostpointercapture", onPointerUp);
  ui.pad.addEventListener("contextmenu", (event) => event.preventDefault());
  ui.undo.addEventListener("click", undoStroke);
  ui.clear.addEventListener("click", clearDrawing);
  document.addEventListener("keydown", onKeyDown);
  new ResizeObserver(resizePad).observe(ui.pad);
  window.addEventListener("resize", resizePad);  // devicePixelRatio changes with zoom
  resizePad();
  updateControls();
  resetDisplay();
  loadModelInfo();
}

init();
