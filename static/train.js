// The Train panel: improve the active model with the corrections (fine-tuning, the first action) or
// start a new model from the form; follow the job over Server-Sent Events (also one started in another
// tab or by `digits`), cancel it. job.js draws what the job reports.

import { fetchAsAdmin, initAdminToken } from "./admin.js";
import { fetchJSON } from "./api.js";
import { redrawChart, renderJob } from "./job.js";
import { ACTIVE_JOB_STATES, state, ui } from "./page.js";
import { checkModel } from "./predict.js";

function showTrainMessage(message, kind = "info") {
  ui.trainMessage.textContent = message;
  ui.trainMessage.dataset.kind = message ? kind : "";
}

export function jobIsActive() {
  return Boolean(state.job && !state.job.ended);
}

const improveButton = document.getElementById("train-improve");
const recipes = {};  // architecture -> its default recipe (GET /architectures), for the epochs placeholder

function updateTrainControls() {
  const active = jobIsActive();
  ui.trainStart.disabled = active || state.starting;
  improveButton.disabled = active || state.starting;
  ui.trainCard.dataset.state = active ? "running" : state.job ? "ended" : "idle";
}

// The architectures the server's trainer knows; `seed` (the page's own option) if it cannot say.
async function loadArchitectures() {
  let names;
  let fallback;
  try {
    const answer = await fetchJSON("/architectures");
    names = answer.architectures;
    fallback = answer.default_recipe?.architecture;
    Object.assign(recipes, answer.recipes ?? {});
  } catch {
    return;
  }
  if (!Array.isArray(names) || !names.length || !names.every((name) => typeof name === "string")) return;
  const chosen = [ui.trainArchitecture.value, fallback].find((name) => names.includes(name)) ?? names[0];
  ui.trainArchitecture.replaceChildren(...names.map((name) => new Option(name, name, name === chosen, name === chosen)));
  showDefaultEpochs();
}

// An empty Epochs field takes the architecture's own recipe: show its count as the placeholder.
function showDefaultEpochs() {
  const epochs = recipes[ui.trainArchitecture.value]?.epochs;
  ui.trainEpochs.placeholder = Number.isInteger(epochs) ? String(epochs) : "";
}

// ---- start, follow, cancel ------------------------------------------------------------------------

async function startTraining(event) {
  event.preventDefault();
  if (jobIsActive() || state.starting) return;
  const recipe = { architecture: ui.trainArchitecture.value };
  if (ui.trainEpochs.value.trim() !== "") {
    const epochs = Number(ui.trainEpochs.value);
    const min = Number(ui.trainEpochs.min);
    const max = Number(ui.trainEpochs.max);
    if (!Number.isInteger(epochs) || epochs < min || epochs > max) {
      showTrainMessage(`Epochs must be a whole number from ${min} to ${max}, or empty for the recipe's.`, "error");
      ui.trainEpochs.focus();
      return;
    }
    recipe.epochs = epochs;
  }
  recipe.include_feedback = ui.trainFeedback.checked;
  await postTraining(recipe);
}

// Fine-tune the active model on MNIST plus the corrections; the server fills in the recipe.
async function improveModel() {
  if (jobIsActive() || state.starting) return;
  await postTraining({ fine_tune: true, include_feedback: true });
}

async function postTraining(recipe) {
  state.starting = true;
  updateTrainControls();
  showTrainMessage("Starting…");
  try {
    const created = await fetchAsAdmin("/train", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(recipe),
    });
    showTrainMessage("");
    followJob(created.job_id, { job_id: created.job_id, status: created.status, n_epochs: recipe.epochs, recipe,
                                progress: 0 });
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
// With none, the newest job is shown if it was interrupted (the machine went down), so that it can
// be resumed.
export async function attachToActiveJob({ quiet = false } = {}) {
  try {
    const { jobs = [] } = await fetchJSON("/train");
    const job = jobs.find((each) => ACTIVE_JOB_STATES.includes(each.status));
    if (!job) {
      const newest = jobs[0];
      if (newest?.resumable && !state.job) showEndedJob(newest);
      return false;
    }
    if (state.job?.id !== job.job_id || state.job.ended) followJob(job.job_id, job);
    return true;
  } catch (error) {
    if (!quiet) showTrainMessage(`Could not list the training jobs: ${error.message}`, "error");
    return false;
  }
}

// Show a job that has ended, without following it.
function showEndedJob(view) {
  stopFollowing();
  state.job = { id: view.job_id, view: null, source: null, ended: true, retry: 0 };
  ui.job.hidden = false;
  renderJob(view);
  updateTrainControls();
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
    // 202 {"status": "cancelling"}; the job's own events show it end (the button stays "Cancelling…")
    await fetchAsAdmin(`/train/${encodeURIComponent(job.id)}`, { method: "DELETE" });
  } catch (error) {
    if (state.job === job) {
      showTrainMessage(error.message, "error");
      ui.trainCancel.disabled = job.ended;
      ui.trainCancel.textContent = "Cancel";
    }
  }
}

async function resumeTraining() {
  const job = state.job;
  if (!job || !job.ended || state.starting) return;
  state.starting = true;
  ui.trainResume.disabled = true;
  updateTrainControls();
  try {
    const created = await fetchAsAdmin(`/train/${encodeURIComponent(job.id)}/resume`, { method: "POST" });
    showTrainMessage("");
    followJob(created.job_id, { ...job.view, status: created.status, resumable: false, eta_s: null });
  } catch (error) {
    showTrainMessage(error.message, error.status === 409 ? "info" : "error");
    ui.trainResume.disabled = false;
    if (error.status === 409) await attachToActiveJob();  // another job trains: follow that one
  } finally {
    state.starting = false;
    updateTrainControls();
  }
}

export function initTraining() {
  ui.trainForm.addEventListener("submit", startTraining);
  improveButton.addEventListener("click", improveModel);
  ui.trainArchitecture.addEventListener("change", showDefaultEpochs);
  ui.trainCancel.addEventListener("click", cancelTraining);
  ui.trainResume.addEventListener("click", resumeTraining);
  // Leaving the page ends the stream cleanly; coming back from the back-forward cache resumes it.
  window.addEventListener("pagehide", () => stopFollowing());
  window.addEventListener("pageshow", (event) => {
    if (event.persisted && state.job && !state.job.ended) listen(state.job);
  });
  new ResizeObserver(() => { if (!ui.job.hidden) redrawChart(); }).observe(ui.chart);
  initAdminToken();
  loadArchitectures();
  updateTrainControls();
  attachToActiveJob();
}
