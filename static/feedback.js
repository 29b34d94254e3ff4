// "Wrong? It's a …": send the drawing with the digit the person says it is, once per version of the
// drawing, and show how many corrections the server holds (the Train panel can include them).

import { fetchJSON, postJSON } from "./api.js";
import { state, ui } from "./page.js";

// The drawing changed (new stroke, undo, clear): it may be labelled again.
export function drawingChanged() {
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
  const body = { strokes: state.strokes, label };
  state.feedback.sending = true;
  updateFeedbackButtons();
  showFeedbackStatus("Saving…");
  try {
    const answer = await postJSON("/feedback", body);
    if (revision === state.revision) {
      state.feedback.sentRevision = revision;
      state.feedback.label = label;
      showFeedbackStatus(answer.message || `Thanks! Saved as a ${label}.`, "ok");
    }
    loadFeedbackCount();
  } catch (error) {
    // 429: too many corrections for now (a rate limit or the storage cap); the server's sentence says
    // which, shown as a notice rather than a fault. The buttons stay usable for a later try.
    if (revision === state.revision) {
      showFeedbackStatus(error.message, error.status === 429 ? "warning" : "error");
    }
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

export function initFeedback() {
  for (const button of ui.feedbackButtons) {
    button.addEventListener("click", () => sendFeedback(Number(button.dataset.digit)));
  }
  updateFeedbackButtons();
  loadFeedbackCount();
}
