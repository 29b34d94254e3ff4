// The drawing page: pointer strokes in, predictions out. The page only draws and sends strokes;
// the server does all preprocessing (crop, scale, centre) and answers with the 28x28 input it used.
// Also: corrections sent as feedback, a training panel that follows a /train job live, and a watch
// on the active model so a newly promoted one is picked up without reloading.

const THROTTLE_MS = 150;          // at most one /predict per this interval while drawing
const REQUEST_TIMEOUT_MS = 10000;
const PEN_FRACTION = 0.055;       // on-screen pen width as a fraction of the pad's width
const PREVIEW_SCALE = 5;          // CSS pixels per model pixel in the "what the model saw" preview
const MODEL_POLL_MS = 5000;       // how often to ask which model is active and whether a job runs
const MODEL_NOTICE_MS = 8000;     // how long "Now using model …" stays up
const ACTIVE_JOB_STATES = ["queued", "running"];

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
  modelNotice: $("model-notice"),
  feedback: $("feedback"),
  feedbackButtons: [...document.querySelectorAll("#feedback-digits [data-digit]")],
  feedbackStatus: $("feedback-status"),
  feedbackCount: $("feedback-count"),
  trainCard: $("train"),
  trainForm: $("train-form"),
  trainArchitecture: $("train-architecture"),
  trainEpochs: $("train-epochs"),
  trainFeedback: $("train-feedback"),
  trainStart: $("train-start"),
  trainMessage: $("train-message"),
  job: $("job"),
  jobId: $("job-id"),
  jobStatus: $("job-status"),
  jobProgress: $("job-progress"),
  jobProgressFill: $("job-progress-fill"),
  jobPercent: $("job-percent"),
  jobEpoch: $("job-epoch"),
  jobEta: $("job-eta"),
  jobSpeed: $("job-speed"),
  jobOutcome: $("job-outcome"),
  trainCancel: $("train-cancel"),
  chart: $("train-chart"),
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
  checkingModel: false,
  modelNoticeTimer: 0,
  revision: 0,       // bumped on every change to the drawing (new stroke, undo, clear)
  feedback: { sending: false, sentRevision: -1, label: null },
  job: null,         // {id, view, source, ended, retry} of the training job the panel follows
  starting: false,   // a POST /train is in flight
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
  drawingChanged();
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
  drawingChanged();
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
      const error = new Error(describeDetail(data?.detail) ||
                              `the server answered ${response.status} ${response.statusText}`);
      error.status = response.status;
      throw error;
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

// Ask which model is active; when it changed, say so and classify the drawing again with it.
export async function checkModel() {
  if (state.checkingModel) return;
  state.checkingModel = true;
  try {
    const model = await fetchJSON("/model");
    const before = state.model?.version;
    state.model = model;
    showModelInfo(model);
    if (before && model.version !== before) {
      announceModel(model);
      if (state.strokes.length) schedulePrediction({ now: true });
    }
  } catch {
    // Quietly keep what is shown; the next poll asks again.
  } finally {
    state.checkingModel = false;
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
  ui.feedback.hidden = false;
  showStatus("");
  if (state.model && answer.model_version && answer.model_version !== state.model.version) checkModel();
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
  ui.feedback.hidden = true;
  showStatus("");
}

export function showStatus(message, kind = "info") {
  ui.status.textContent = message;
  ui.status.dataset.kind = message ? kind : "";
}

function announceModel(model) {
  const accuracy = model.metrics?.test_accuracy;
  const detail = typeof accuracy === "number" ? ` (test accuracy ${percent(accuracy)})` : "";
  ui.modelNotice.textContent = `Now using model ${model.version}${detail}.`;
  ui.modelNotice.hidden = false;
  ui.modelInfo.dataset.changed = "true";
  clearTimeout(state.modelNoticeTimer);
  state.modelNoticeTimer = setTimeout(() => {
    ui.modelNotice.hidden = true;
    delete ui.modelInfo.dataset.changed;
  }, MODEL_NOTICE_MS);
}

// ---- feedback: "Wrong? It's a …" -----------------------------------------------------------------

function drawingChanged() {
  state.revision += 1;
  if (state.feedback.sentRevision !== -1 || ui.feedbackStatus.textContent) {
    state.feedback.sentRevision = -1;
    state.feedback.label = null;
    showFeedbackStatus("");
  }
  updateFeedbackButtons();
}

function updateFeedbackButtons() {
  const done = state.feedback.sentRevision === state.revision;
  for (const button of ui.feedbackButtons) {
    button.disabled = state.feedback.sending || done;
    button.classList.toggle("is-chosen", done && Number(button.dataset.digit) === state.feedback.label);
  }
}

function showFeedbackStatus(message, kind = "info") {
  ui.feedbackStatus.textContent = message;
  ui.feedbackStatus.dataset.kind = message ? kind : "";
}

// Send the drawing as it is now, with the digit the person says it is.
export async function sendFeedback(label) {
  if (!state.strokes.length || state.feedback.sending) return;
  const revision = state.revision;
  const body = JSON.stringify({ strokes: state.strokes, label });
  state.feedback.sending = true;
  updateFeedbackButtons();
  showFeedbackStatus("Saving…");
  try {
    const answer = await fetchJSON("/feedback", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body,
    });
    if (revision === state.revision) {
      state.feedback.sentRevision = revision;
      state.feedback.label = label;
      showFeedbackStatus(answer.message || `Thanks! Saved as a ${label}.`, "ok");
    }
    loadFeedbackCount();
  } catch (error) {
    if (revision === state.revision) showFeedbackStatus(error.message, "error");
  } finally {
    state.feedback.sending = false;
    updateFeedbackButtons();
  }
}

async function loadFeedbackCount() {
  try {
    const summary = await fetchJSON("/feedback");
    const total = summary.total ?? 0;
    ui.feedbackCount.textContent = `(${total} drawing${total === 1 ? "" : "s"} so far)`;
  } catch {
    ui.feedbackCount.textContent = "";
  }
}

function initFeedback() {
  for (const button of ui.feedbackButtons) {
    button.addEventListener("click", () => sendFeedback(Number(button.dataset.digit)));
  }
  updateFeedbackButtons();
  loadFeedbackCount();
}

// ---- training: start, follow, cancel -------------------------------------------------------------

function showTrainMessage(message, kind = "info") {
  ui.trainMessage.textContent = message;
  ui.trainMessage.dataset.kind = message ? kind : "";
}

function jobIsActive() {
  return Boolean(state.job && !state.job.ended);
}

function updateTrainControls() {
  const active = jobIsActive();
  ui.trainStart.disabled = active || state.starting;
  ui.trainCard.dataset.state = active ? "running" : state.job ? "ended" : "idle";
}

async function startTraining(event) {
  event.preventDefault();
  if (jobIsActive() || state.starting) return;
  const epochs = Number(ui.trainEpochs.value);
  const min = Number(ui.trainEpochs.min);
  const max = Number(ui.trainEpochs.max);
  if (!Number.isInteger(epochs) || epochs < min || epochs > max) {
    showTrainMessage(`Epochs must be a whole number from ${min} to ${max}.`, "error");
    ui.trainEpochs.focus();
    return;
  }
  const recipe = {
    architecture: ui.trainArchitecture.value,
    epochs,
    include_feedback: ui.trainFeedback.checked,
  };
  state.starting = true;
  updateTrainControls();
  showTrainMessage("Starting…");
  try {
    const created = await fetchJSON("/train", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(recipe),
    });
    showTrainMessage("");
    followJob(created.job_id, { job_id: created.job_id, status: created.status, n_epochs: epochs, progress: 0 });
  } catch (error) {
    if (error.status === 409) {
      showTrainMessage(error.message, "info");  // a job is already training: follow that one
      await attachToActiveJob();
    } else {
      showTrainMessage(error.message, "error");
    }
  } finally {
    state.starting = false;
    updateTrainControls();
  }
}

// Follow the newest queued or running job, if there is one (started here, in another tab or by
// `digits`). Resolves to whether it found one; `quiet` keeps a failure to ask off the page.
async function attachToActiveJob({ quiet = false } = {}) {
  try {
    const { jobs = [] } = await fetchJSON("/train");
    const job = jobs.find((each) => ACTIVE_JOB_STATES.includes(each.status));
    if (!job) return false;
    if (state.job?.id !== job.job_id || state.job.ended) followJob(job.job_id, job);
    return true;
  } catch (error) {
    if (!quiet) showTrainMessage(`Could not list the training jobs: ${error.message}`, "error");
    return false;
  }
}

function stopFollowing() {
  state.job?.source?.close();
  clearTimeout(state.job?.retry);
}

// Show the job and follow its Server-Sent Events until the final `done`.
export function followJob(jobId, view = null) {
  stopFollowing();
  state.job = { id: jobId, view: null, source: null, ended: false, retry: 0 };
  ui.job.hidden = false;
  ui.trainCancel.disabled = false;
  ui.trainCancel.textContent = "Cancel";
  if (view) renderJob(view);
  updateTrainControls();
  listen(state.job);
}

function listen(job) {
  const source = new EventSource(`/train/${encodeURIComponent(job.id)}/events`);
  job.source = source;
  const onEvent = (event) => {
    if (state.job !== job || job.ended) return;
    let view;
    try {
      view = JSON.parse(event.data);
    } catch {
      return;
    }
    renderJob(view);
    if (event.type === "done" || !ACTIVE_JOB_STATES.includes(view.status)) jobEnded(job, view);
  };
  source.addEventListener("progress", onEvent);
  source.addEventListener("done", onEvent);
  source.addEventListener("open", () => {
    if (state.job === job && ui.trainMessage.dataset.kind === "warning") showTrainMessage("");
  });
  source.addEventListener("error", () => {
    if (job.ended) {
      source.close();  // the server ended the stream after `done`: no reconnecting
      return;
    }
    if (state.job !== job) return;
    if (source.readyState === EventSource.CONNECTING) {
      showTrainMessage("Lost the connection to the server; reconnecting…", "warning");
      return;
    }
    // The browser gave up (e.g. the job is unknown): ask once, then try again a little later.
    source.close();
    recheckJob(job);
  });
}

async function recheckJob(job) {
  try {
    const view = await fetchJSON(`/train/${encodeURIComponent(job.id)}`);
    if (state.job !== job) return;
    renderJob(view);
    if (ACTIVE_JOB_STATES.includes(view.status)) {
      job.retry = setTimeout(() => { if (state.job === job && !job.ended) listen(job); }, 2000);
    } else {
      jobEnded(job, view);
    }
  } catch (error) {
    if (state.job !== job) return;
    if (error.status === 404) {
      showTrainMessage(error.message, "error");
      job.ended = true;
      updateTrainControls();
      ui.trainCancel.hidden = true;
    } else {
      showTrainMessage("Lost the connection to the server; reconnecting…", "warning");
      job.retry = setTimeout(() => recheckJob(job), 3000);
    }
  }
}

function jobEnded(job, view) {
  job.ended = true;
  // The server ends the stream right after `done`; closing it here would abort that last moment of
  // the response, so let it end (the error handler then closes it) and close it anyway soon after.
  const source = job.source;
  if (source) job.retry = setTimeout(() => source.close(), 2000);
  if (ui.trainMessage.dataset.kind !== "error") showTrainMessage("");
  updateTrainControls();
  // A promoted model is picked up by the server within about a second; look now and once more.
  checkModel();
  setTimeout(checkModel, 1500);
}

async function cancelTraining() {
  const job = state.job;
  if (!job || job.ended) return;
  ui.trainCancel.disabled = true;
  ui.trainCancel.textContent = "Cancelling…";
  try {
    const view = await fetchJSON(`/train/${encodeURIComponent(job.id)}`, { method: "DELETE" });
    if (state.job === job && !job.ended) renderJob(view);
  } catch (error) {
    if (state.job === job) {
      showTrainMessage(error.message, "error");
      ui.trainCancel.disabled = job.ended;
      ui.trainCancel.textContent = "Cancel";
    }
  }
}

const STATUS_TEXT = {
  queued: "queued",
  running: "running",
  succeeded: "succeeded",
  failed: "failed",
  cancelled: "cancelled",
  interrupted: "interrupted",
};

function formatDuration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "";
  if (seconds < 1) return "under a second";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
}

const number = new Intl.NumberFormat("en", { maximumFractionDigits: 0 });

function renderJob(view) {
  if (!state.job) return;
  state.job.view = view;
  const status = view.status ?? "queued";
  const final = !ACTIVE_JOB_STATES.includes(status);
  ui.jobId.textContent = view.job_id ?? state.job.id;
  ui.jobStatus.textContent = STATUS_TEXT[status] ?? status;
  ui.jobStatus.dataset.status = status;

  const fraction = Math.min(Math.max(Number(view.progress) || 0, 0), 1);
  const shown = Math.floor(fraction * 100);
  ui.jobProgressFill.style.width = `${fraction * 100}%`;
  ui.jobProgress.setAttribute("aria-valuenow", String(shown));
  ui.jobProgress.dataset.status = status;
  ui.jobPercent.textContent = `${shown}%`;

  const nEpochs = view.n_epochs;
  if (view.epoch) {
    ui.jobEpoch.textContent = `epoch ${view.epoch} of ${nEpochs}`;
  } else {
    ui.jobEpoch.textContent = status === "queued" ? "starting…" : nEpochs ? `${nEpochs} epoch${nEpochs === 1 ? "" : "s"}` : "";
  }
  ui.jobEta.textContent = !final && Number.isFinite(view.eta_s) ? `about ${formatDuration(view.eta_s)} left` : "";
  const speed = [];
  if (Number.isFinite(view.loss)) speed.push(`loss ${view.loss.toFixed(3)}`);
  if (Number.isFinite(view.samples_per_s)) speed.push(`${number.format(view.samples_per_s)} images/s`);
  ui.jobSpeed.textContent = speed.join(" · ");

  ui.trainCancel.hidden = final;
  if (final) {
    ui.trainCancel.disabled = false;
    ui.trainCancel.textContent = "Cancel";
  } else if (view.cancel_requested) {
    ui.trainCancel.disabled = true;
    ui.trainCancel.textContent = "Cancelling…";
  }

  renderOutcome(view, final);
  drawChart();
}

function renderOutcome(view, final) {
  if (!final) {
    ui.jobOutcome.hidden = true;
    ui.jobOutcome.replaceChildren();
    return;
  }
  const lines = [];
  const add = (text, className = "") => {
    const p = document.createElement("p");
    p.textContent = text;
    if (className) p.className = className;
    lines.push(p);
  };
  if (view.status === "succeeded") {
    const metrics = view.metrics ?? {};
    const parts = [];
    if (typeof metrics.val_accuracy === "number") parts.push(`validation accuracy ${percent(metrics.val_accuracy)}`);
    if (typeof metrics.test_accuracy === "number") parts.push(`test accuracy ${percent(metrics.test_accuracy)}`);
    add(`Trained ${view.model_version ?? "a new model"}${parts.length ? `: ${parts.join(", ")}` : ""}.`);
    add(view.promoted ? "Promoted: the page now uses it." : "Not promoted: the current model stays.",
        view.promoted ? "outcome-verdict is-good" : "outcome-verdict");
    if (view.decision) add(view.decision, "muted");
  } else if (view.status === "cancelled") {
    add("Cancelled; the current model stays.", "outcome-verdict");
    if (view.error) add(view.error, "muted");
  } else {
    add(`Training ${STATUS_TEXT[view.status] ?? view.status}; the current model stays.`, "outcome-verdict is-bad");
    if (view.error) add(view.error, "outcome-error");
  }
  ui.jobOutcome.replaceChildren(...lines);
  ui.jobOutcome.dataset.status = view.status;
  ui.jobOutcome.hidden = false;
}

// ---- the training chart: loss against progress, validation accuracy per epoch ---------------------

const GRID_LINES = 4;  // horizontal grid lines above the bottom axis

// The smallest "round" tick step (1, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a power of ten) with
// GRID_LINES steps reaching `value`.
function niceStep(value) {
  const wanted = value > 0 ? value / GRID_LINES : 0.25;
  const power = 10 ** Math.floor(Math.log10(wanted));
  for (const step of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8]) {
    if (wanted <= step * power * (1 + 1e-9)) return step * power;
  }
  return 10 * power;
}

// The accuracy axis runs from `lowest` (rounded down to a range with round ticks) to 100%.
function accuracyFloor(lowest) {
  for (const range of [0.04, 0.1, 0.2, 0.4, 1]) {
    if (1 - range <= lowest - 0.004) return 1 - range;
  }
  return 0;
}

const tickText = (value) => String(Number(value.toFixed(3)));

function drawChart() {
  const canvas = ui.chart;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (!width || !height) return;
  const ratio = window.devicePixelRatio || 1;
  const pixelsWide = Math.round(width * ratio);
  const pixelsHigh = Math.round(height * ratio);
  if (canvas.width !== pixelsWide || canvas.height !== pixelsHigh) {
    canvas.width = pixelsWide;
    canvas.height = pixelsHigh;
  }
  const context = canvas.getContext("2d");
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  context.clearRect(0, 0, width, height);

  const style = getComputedStyle(canvas);
  const color = (name, fallback) => style.getPropertyValue(name).trim() || fallback;
  const lossColor = color("--loss", "#3b5bdb");
  const accuracyColor = color("--accuracy", "#0f8a5f");
  const gridColor = color("--grid", "#dfe3ec");
  const textColor = color("--axis", "#566076");

  const view = state.job?.view ?? {};
  const curve = (view.curve ?? []).filter((p) => Number.isFinite(p.progress) && Number.isFinite(p.loss));
  const history = (view.history ?? []).filter((h) => Number.isFinite(h.val_accuracy));
  const nEpochs = Math.max(1, view.n_epochs || history.length || 1);

  const box = { left: 46, right: width - 50, top: 10, bottom: height - 26 };
  const plotWidth = Math.max(1, box.right - box.left);
  const plotHeight = Math.max(1, box.bottom - box.top);
  const x = (fraction) => box.left + Math.min(Math.max(fraction, 0), 1) * plotWidth;

  const lossStep = niceStep(Math.max(0, ...curve.map((p) => p.loss)));
  const lossMax = lossStep * GRID_LINES;
  const yLoss = (loss) => box.bottom - (Math.min(loss, lossMax) / lossMax) * plotHeight;
  const accuracyMin = accuracyFloor(Math.min(1, ...history.map((h) => h.val_accuracy)));
  const yAccuracy = (acc) => box.bottom - ((Math.max(acc, accuracyMin) - accuracyMin) / (1 - accuracyMin)) * plotHeight;

  context.font = "11px system-ui, sans-serif";
  context.lineWidth = 1;

  // Grid and axes: loss on the left, accuracy on the right, epochs along the bottom.
  context.strokeStyle = gridColor;
  context.fillStyle = textColor;
  context.textBaseline = "middle";
  for (let i = 0; i <= GRID_LINES; i++) {
    const y = box.bottom - (i / GRID_LINES) * plotHeight;
    context.beginPath();
    context.moveTo(box.left, Math.round(y) + 0.5);
    context.lineTo(box.right, Math.round(y) + 0.5);
    context.stroke();
    context.textAlign = "right";
    context.fillStyle = lossColor;
    context.fillText(tickText(lossStep * i), box.left - 6, y);
    context.textAlign = "left";
    context.fillStyle = accuracyColor;
    context.fillText(`${tickText((accuracyMin + (1 - accuracyMin) * i / GRID_LINES) * 100)}%`, box.right + 6, y);
  }
  context.fillStyle = textColor;
  context.textAlign = "center";
  context.textBaseline = "top";
  const every = Math.ceil(nEpochs / 10);
  for (let epoch = 0; epoch <= nEpochs; epoch += every) {
    const px = x(epoch / nEpochs);
    context.strokeStyle = gridColor;
    context.beginPath();
    context.moveTo(Math.round(px) + 0.5, box.bottom);
    context.lineTo(Math.round(px) + 0.5, box.bottom + 4);
    context.stroke();
    context.fillText(String(epoch), px, box.bottom + 7);
  }
  context.textAlign = "right";
  context.fillText("epoch", box.left - 6, box.bottom + 7);

  if (!curve.length && !history.length) {
    context.textAlign = "center";
    context.textBaseline = "middle";
    context.fillText(view.status && !ACTIVE_JOB_STATES.includes(view.status) ? "no training steps recorded"
                                                                            : "waiting for the first steps…",
                     box.left + plotWidth / 2, box.top + plotHeight / 2);
  }

  // Training loss: one line through the reported steps.
  if (curve.length) {
    context.strokeStyle = lossColor;
    context.lineWidth = 2;
    context.lineJoin = "round";
    context.beginPath();
    curve.forEach((p, i) => (i ? context.lineTo : context.moveTo).call(context, x(p.progress), yLoss(p.loss)));
    context.stroke();
  }

  // Validation accuracy: a point at the end of every epoch, joined.
  if (history.length) {
    const points = history.map((h) => [x(h.epoch / nEpochs), yAccuracy(h.val_accuracy)]);
    context.strokeStyle = accuracyColor;
    context.fillStyle = accuracyColor;
    context.lineWidth = 2;
    context.setLineDash([5, 4]);
    context.beginPath();
    points.forEach(([px, py], i) => (i ? context.lineTo(px, py) : context.moveTo(px, py)));
    context.stroke();
    context.setLineDash([]);
    for (const [px, py] of points) {
      context.beginPath();
      context.arc(px, py, 3.5, 0, 2 * Math.PI);
      context.fill();
    }
  }

  const last = curve[curve.length - 1];
  const lastAccuracy = history[history.length - 1];
  const described = [];
  if (last) described.push(`training loss ${last.loss.toFixed(3)} at ${Math.floor(last.progress * 100)}%`);
  if (lastAccuracy) described.push(`validation accuracy ${percent(lastAccuracy.val_accuracy)} after epoch ${lastAccuracy.epoch}`);
  canvas.setAttribute("aria-label", `Training chart: ${described.join("; ") || "no data yet"}`);
}

function initTraining() {
  ui.trainForm.addEventListener("submit", startTraining);
  ui.trainCancel.addEventListener("click", cancelTraining);
  // Leaving the page ends the stream cleanly; coming back from the back-forward cache resumes it.
  window.addEventListener("pagehide", () => stopFollowing());
  window.addEventListener("pageshow", (event) => {
    if (event.persisted && state.job && !state.job.ended) listen(state.job);
  });
  new ResizeObserver(() => { if (!ui.job.hidden) drawChart(); }).observe(ui.chart);
  updateTrainControls();
  attachToActiveJob();
}

// Every few seconds while the page is visible: a new active model? a job started elsewhere?
function watchServer() {
  if (document.hidden) return;
  checkModel();
  if (!jobIsActive() && !state.starting) attachToActiveJob({ quiet: true });
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
  initFeedback();
  initTraining();
  setInterval(watchServer, MODEL_POLL_MS);
  document.addEventListener("visibilitychange", watchServer);
}

init();
