// Predictions: /predict at most every THROTTLE_MS while drawing (retried once when the server is busy),
// the answer shown as a verdict (or "not sure" when the server is not), one bar per class and the 28x28
// input the model saw with what mattered (explain.js); and the active model, shown and watched.

import { fetchJSON, postJSON } from "./api.js";
import { renderSaliency } from "./explain.js";
import { percent, state, ui } from "./page.js";

const THROTTLE_MS = 150;          // at most one /predict per this interval while drawing
const PREVIEW_SCALE = 5;          // CSS pixels per model pixel in the "what the model saw" preview
const MODEL_NOTICE_MS = 8000;     // how long "Now using model …" stays up
const BUSY_WAIT_S = 1;            // the wait before the retry when a 503 has no readable Retry-After
const BUSY_WAIT_MAX_S = 5;        // and the longest wait, whatever Retry-After asks
const BUSY_RETRYING = "Many drawings to read at the moment; trying again shortly.";
const BUSY_GAVE_UP = "The service is busy right now; your drawing will be read on your next stroke.";
// "Not sure" between two digits: the runner-up holds at least COMPETING_MIN and the two together at
// least COMPETING_TOTAL, so the other eight share at most a fifth. See notSureAdvice.
const COMPETING_MIN = 0.25;
const COMPETING_TOTAL = 0.8;

// ---- asking for predictions ----------------------------------------------------------------------

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

export function cancelPrediction() {
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
  const body = { strokes: state.strokes, explain: true };
  updateBusy();
  try {
    const answer = await postPrediction(body, epoch);
    if (answer && epoch === state.epoch) showPrediction(answer);
  } catch (error) {
    if (epoch !== state.epoch) return;
    if (error.status === 503) showBusy("Busy right now", BUSY_GAVE_UP);
    else showStatus(error.message, "error");
  } finally {
    state.inFlight = false;
    if (state.wanted) schedulePrediction();
    updateBusy();
  }
}

// POST /predict. A 503 means the server's queue is full: say so, wait as its Retry-After asks (capped)
// and send the same body once more; a second 503 is thrown. The request stays in flight while waiting,
// so nothing else is sent meanwhile. A drawing changed during the wait (a stroke, undo, clear)
// supersedes the retry: resolves to null, and sendPrediction's `finally` sends the newer drawing.
async function postPrediction(body, epoch) {
  try {
    return await postJSON("/predict", body);
  } catch (error) {
    if (error.status !== 503) throw error;
    const waitSeconds = Math.min(error.retryAfter ?? BUSY_WAIT_S, BUSY_WAIT_MAX_S);
    if (epoch === state.epoch) showBusy("Busy, retrying…", BUSY_RETRYING);
    await new Promise((resolve) => setTimeout(resolve, waitSeconds * 1000));
    if (epoch !== state.epoch || state.wanted) return null;
    return await postJSON("/predict", body);
  }
}

function updateBusy() {
  ui.result.setAttribute("aria-busy", String(state.inFlight || state.wanted));
}

// ---- the active model ------------------------------------------------------------------------------

export async function loadModelInfo() {
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

function showModelInfo(model) {
  const accuracy = model.metrics?.test_accuracy;
  ui.modelVersion.textContent = model.version;
  ui.modelVersion.title = `${model.architecture} network, created ${model.created_at}`;
  ui.modelAccuracy.textContent = typeof accuracy === "number" ? percent(accuracy) : "not measured";
  // The evaluation report (figures written by `digits evaluate --report`), when the server has one.
  if (model.report_url) ui.modelReportLink.href = model.report_url;
  ui.modelReport.hidden = !model.report_url;
  ui.modelInfo.dataset.state = "ready";
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

// ---- showing results ---------------------------------------------------------------------------

function verdictFor(digit, confidence) {
  if (confidence >= 0.9) return `That's a ${digit}`;
  if (confidence >= 0.6) return `Probably a ${digit}`;
  return `Maybe a ${digit}?`;
}

// The advice under "Not sure". When two digits compete (the rule at COMPETING_MIN), name both, the lower
// digit first ("A 1 or a 7?") so that the pair reads the same whichever is ahead; the best guess line
// below says which is. Otherwise (one weak favourite, or the mass spread wider) the generic advice.
function notSureAdvice(probabilities) {
  const [first, second] = probabilities.map((p, digit) => ({ p, digit })).sort((a, b) => b.p - a.p);
  if (!second || second.p < COMPETING_MIN || first.p + second.p < COMPETING_TOTAL) {
    return "Try drawing it bigger or clearer.";
  }
  const [low, high] = [first.digit, second.digit].sort((a, b) => a - b);
  const named = (digit) => `${digit === 8 ? "an" : "a"} ${digit}`;
  const pair = `${named(low)} or ${named(high)}`;
  return `${pair[0].toUpperCase()}${pair.slice(1)}? It could be either.`;
}

// "Busy": the server's queue is full. Shown where the answer shows; the last answer's bars stay, dimmed.
function showBusy(text, detail) {
  ui.digit.textContent = "…";
  ui.verdictText.textContent = text;
  ui.verdictDetail.textContent = detail;
  ui.verdictGuess.hidden = true;
  ui.result.dataset.state = "busy";
  showStatus("");
}

function showPrediction(answer) {
  const probabilities = answer?.probabilities;
  if (!Array.isArray(probabilities) || !probabilities.length) {
    showStatus("The server's answer had no probabilities.", "error");
    return;
  }
  state.prediction = answer;
  // Below the model's threshold (chosen on validation data) the server says it is not sure: show that,
  // with the best guess subdued, rather than a confident wrong digit. No `sure` (an older server): sure.
  const sure = answer.sure !== false;
  ui.digit.textContent = sure ? String(answer.digit) : "?";
  if (sure) {
    ui.verdictText.textContent = verdictFor(answer.digit, answer.confidence);
    ui.verdictDetail.textContent = `${percent(answer.confidence)} confident`;
  } else {
    ui.verdictText.textContent = "Not sure";
    ui.verdictDetail.textContent = notSureAdvice(probabilities);
  }
  ui.verdictGuess.textContent = sure ? "" : `Best guess: ${answer.digit} (${percent(answer.confidence)})`;
  ui.verdictGuess.hidden = sure;
  renderBars(probabilities, sure ? answer.digit : null);
  renderSeen(answer.input);
  renderSaliency(answer.saliency, answer.digit);
  ui.result.dataset.state = sure ? "result" : "unsure";
  ui.feedbackPrompt.textContent = sure ? "Wrong? It's a …" : "Which digit is it? It's a …";
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

// One bar per probability; as many bars as the answer has classes. `top` (none when not sure) is marked.
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

export function resetDisplay() {
  state.prediction = null;
  ui.digit.textContent = "?";
  ui.verdictText.textContent = "Draw a digit";
  ui.verdictDetail.textContent = "Use a mouse, a finger or a pen on the pad.";
  ui.verdictGuess.hidden = true;
  ui.bars.replaceChildren();
  renderSeen(null);
  renderSaliency(null);
  ui.result.dataset.state = "empty";
  ui.feedback.hidden = true;
  showStatus("");
}

export function showStatus(message, kind = "info") {
  ui.status.textContent = message;
  ui.status.dataset.kind = message ? kind : "";
}
