// "Show what mattered": the answer's saliency map (how each of the 28x28 pixels pushed it, in [-1, 1])
// drawn over the model's input, orange where more ink supports the digit and blue where it argues
// against it, more opaque the stronger the push. The server computes the map; this only paints it.

import { state, ui } from "./page.js";

// Orange and blue stay apart with every common colour-vision deficiency, and differ in lightness too.
const FOR_RGB = [255, 150, 20];
const AGAINST_RGB = [70, 150, 255];
// Opacity grows linearly with the push; the weakest tenth stays clear, since a raw gradient is small
// but not zero nearly everywhere and would otherwise cover the whole image in noise.
const FLOOR = 0.1;
const MAX_ALPHA = 255;

// Paint `saliency` (rows of values in [-1, 1]) for the answer `digit`, or clear it when there is none.
export function renderSaliency(saliency, digit) {
  const context = ui.saliency.getContext("2d");
  const valid = Array.isArray(saliency) && saliency.length > 0 && Array.isArray(saliency[0]);
  ui.explainToggle.disabled = !valid;
  if (!valid) {
    context.clearRect(0, 0, ui.saliency.width, ui.saliency.height);
    showOverlay();
    return;
  }
  const rows = saliency.length;
  const cols = saliency[0].length;
  const image = new ImageData(cols, rows);
  saliency.forEach((row, y) => row.forEach((value, x) => {
    const strength = Math.min(Math.abs(value), 1);
    if (!(strength >= FLOOR)) return;  // also skips NaN
    const offset = 4 * (y * cols + x);
    image.data.set(value > 0 ? FOR_RGB : AGAINST_RGB, offset);
    image.data[offset + 3] = Math.round(MAX_ALPHA * strength);
  }));
  ui.saliency.width = cols;  // drawn 1:1 and enlarged by CSS without smoothing, like the input
  ui.saliency.height = rows;
  context.putImageData(image, 0, 0);
  ui.legendFor.textContent = `Orange: more ink here, more like a ${digit}`;
  ui.legendAgainst.textContent = `Blue: more ink here, less like a ${digit}`;
  showOverlay();
}

function showOverlay() {
  const on = state.explain && !ui.explainToggle.disabled;
  ui.saliency.hidden = !on;
  ui.saliencyLegend.hidden = !on;
  ui.seenImage.dataset.explain = on ? "on" : "off";
}

function setExplain(on) {
  state.explain = on;
  ui.explainToggle.setAttribute("aria-pressed", String(on));
  showOverlay();
}

export function initExplain() {
  ui.explainToggle.addEventListener("click", () => setExplain(!state.explain));
  setExplain(false);
}
