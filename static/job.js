// One training job in the Train panel: status, progress bar, epoch, ETA, speed, the chart and,
// once it has ended, its outcome. Draws what a job view (GET /train/{id} or an SSE event) says.

import { drawChart } from "./chart.js";
import { ACTIVE_JOB_STATES, percent, state, ui } from "./page.js";

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

export function renderJob(view) {
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

  ui.trainResume.hidden = !(final && view.resumable);
  ui.trainResume.disabled = false;

  renderOutcome(view, final);
  drawChart(ui.chart, view);
}

// How the fine-tuned model reads the corrections it never trained on, before and after.
function heldOutText(metrics) {
  const n = metrics.n_feedback_held_out ?? 0;
  const before = metrics.feedback_accuracy_before;
  const after = metrics.feedback_accuracy;
  if (!n || typeof before !== "number" || typeof after !== "number") {
    return `Held-out corrections: none (${metrics.n_feedback ?? 0} sent; a fifth is held out from 5 on).`;
  }
  return `Held-out corrections (${n} drawing${n === 1 ? "" : "s"} it never trained on): ` +
         `${percent(before)} right before, ${percent(after)} after.`;
}

// Redraw the followed job's chart, e.g. after the canvas was resized.
export function redrawChart() {
  drawChart(ui.chart, state.job?.view ?? {});
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
    const fineTuned = Boolean(view.recipe?.fine_tune);
    const parts = [];
    if (typeof metrics.val_accuracy === "number") {
      const was = metrics.val_accuracy_before;
      const before = typeof was === "number" ? ` (was ${percent(was)})` : "";
      parts.push(`validation accuracy ${percent(metrics.val_accuracy)}${before}`);
    }
    if (typeof metrics.test_accuracy === "number") parts.push(`test accuracy ${percent(metrics.test_accuracy)}`);
    const source = view.recipe?.start_from?.replace(/\.npz$/, "") ?? "the model";
    const made = fineTuned ? `Improved ${source} into` : "Trained";
    add(`${made} ${view.model_version ?? "a new model"}${parts.length ? `: ${parts.join(", ")}` : ""}.`);
    if (fineTuned) add(heldOutText(metrics), "outcome-feedback");
    add(view.promoted ? "Promoted: the page now uses it." : "Not promoted: the current model stays.",
        view.promoted ? "outcome-verdict is-good" : "outcome-verdict");
    if (view.decision) add(view.decision, "muted");
  } else if (view.status === "cancelled") {
    add("Cancelled; the current model stays.", "outcome-verdict");
    if (view.error) add(view.error, "muted");
  } else {
    add(`Training ${STATUS_TEXT[view.status] ?? view.status}; the current model stays.`, "outcome-verdict is-bad");
    if (view.error) add(view.error, "outcome-error");
    if (view.resumable) {
      add(view.checkpointed ? "Resume goes on after the last finished epoch."
                            : "No epoch had finished: Resume starts it again from the beginning.", "muted");
    }
  }
  ui.jobOutcome.replaceChildren(...lines);
  ui.jobOutcome.dataset.status = view.status;
  ui.jobOutcome.hidden = false;
}
