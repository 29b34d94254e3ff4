// The training chart: loss against progress (left axis), validation accuracy per epoch (right axis),
// drawn on a canvas from a job view as GET /train/{id} gives it.

import { ACTIVE_JOB_STATES, percent } from "./page.js";

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

export function drawChart(canvas, view = {}) {
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
