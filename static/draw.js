// The pad: pointer strokes drawn smoothly on a canvas that follows its CSS size, undo and clear
// (buttons, Ctrl+Z and Esc). Each change asks predict.js for a new prediction.

import { state, ui } from "./page.js";
import { cancelPrediction, resetDisplay, schedulePrediction } from "./predict.js";
import { drawingChanged } from "./feedback.js";

const PEN_FRACTION = 0.055;       // on-screen pen width as a fraction of the pad's width

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

export function initDrawing() {
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
}
