// The drawing page's entry point. The page only draws and sends strokes; the server does all
// preprocessing (crop, scale, centre) and answers with the 28x28 input it used. The modules:
// draw.js (the pad, undo, clear), predict.js (predictions and the active model), explain.js (the
// "what mattered" overlay), feedback.js (corrections), train.js with job.js and chart.js (the Train
// panel), admin.js (the admin token), api.js (fetchJSON), page.js (the elements and the shared state).

import { initDrawing } from "./draw.js";
import { initExplain } from "./explain.js";
import { initFeedback } from "./feedback.js";
import { state } from "./page.js";
import { checkModel, loadModelInfo, resetDisplay } from "./predict.js";
import { attachToActiveJob, initTraining, jobIsActive } from "./train.js";

export { fetchJSON } from "./api.js";
export { clearDrawing, undoStroke } from "./draw.js";
export { sendFeedback } from "./feedback.js";
export { state } from "./page.js";
export { checkModel, schedulePrediction, showStatus } from "./predict.js";
export { followJob } from "./train.js";

const MODEL_POLL_MS = 5000;       // how often to ask which model is active and whether a job runs

// Every few seconds while the page is visible: a new active model? a job started elsewhere?
function watchServer() {
  if (document.hidden) return;
  checkModel();
  if (!jobIsActive() && !state.starting) attachToActiveJob({ quiet: true });
}

function init() {
  initDrawing();
  initExplain();
  resetDisplay();
  loadModelInfo();
  initFeedback();
  initTraining();
  setInterval(watchServer, MODEL_POLL_MS);
  document.addEventListener("visibilitychange", watchServer);
}

init();
