"""The one preprocessing path from a drawing to the 28x28 MNIST-style input, used by /predict,
feedback and training alike: ink channel, crop, scale the longest side to 20 px, centre by mass.

Decoding image files is not done here (the web layer turns bytes into arrays); this is NumPy only.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

PREPROCESSING_VERSION = 2  # 2: centre of mass at (14, 14), as MNIST has it
SIZE, BOX = 28, 20  # MNIST: digits scaled into a 20x20 box, centred by mass in 28x28
INK_FLOOR = 0.1     # a drawing whose strongest ink is fainter than this is empty
STROKE_WIDTH = 0.12  # pen width as a fraction of the drawing's longest side, MNIST-like
RASTER = 32          # strokes are rendered at this size (cheap), then go through preprocess_ink


class EmptyDrawingError(ValueError):
    """The drawing has no ink."""

    def __init__(self) -> None:
        super().__init__("the drawing is empty")


def to_ink(image: np.ndarray) -> np.ndarray:
    """Any image to one ink channel in [0, 1] (1 = ink).

    image: (H, W) grey or (H, W, 3|4) RGB(A) uint8. With transparency, alpha is the ink. Otherwise ink is
    the distance from the background colour (the median border colour), so dark-on-light, light-on-dark
    and coloured ink all work.
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected a (H, W), (H, W, 3) or (H, W, 4) image, got shape {img.shape}")
    if img.size == 0:
        raise EmptyDrawingError()
    # np.divide(..., dtype=float32) gives what .astype(np.float32) / 255.0 does in one pass (several
    # times faster on the strided alpha channel); converting only the channels used saves the rest.
    if img.shape[2] == 4:
        alpha = np.divide(img[:, :, 3], 255.0, dtype=np.float32)
        if alpha.min() < 1.0:
            return alpha
        img = img[:, :, :3]
    img = np.divide(img, 255.0, dtype=np.float32)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    background = np.median(border, axis=0)
    return np.abs(img - background).max(axis=2)


@lru_cache(maxsize=512)
def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights that average input cells over each output cell's span (antialiased resize)."""
    edges = np.linspace(0, n_in, n_out + 1)
    left, right = edges[:-1, None], edges[1:, None]
    cells = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(right, cells + 1) - np.maximum(left, cells), 0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def preprocess_ink(ink: np.ndarray) -> np.ndarray:
    """Ink (H, W) float in [0, 1] -> (28, 28) float32 MNIST-style; raises EmptyDrawingError."""
    ink = np.asarray(ink, dtype=np.float32)
    # The crop box from row maxima, then column maxima of those rows only: fewer passes over a big
    # canvas than a full mask (a row has ink above the floor iff its maximum is above it).
    row_peaks = ink.max(axis=1, initial=0.0)  # (H,)
    peak = float(row_peaks.max(initial=0.0))
    if peak < INK_FLOOR:
        raise EmptyDrawingError()
    floor = peak * INK_FLOOR / 2
    rows = np.flatnonzero(row_peaks > floor)
    ink = ink[rows[0]:rows[-1] + 1]
    cols = np.flatnonzero(ink.max(axis=0) > floor)
    ink = ink[:, cols[0]:cols[-1] + 1] / peak
    h, w = ink.shape
    scale = BOX / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    small = _area_matrix(h, new_h) @ ink @ _area_matrix(w, new_w).T  # (new_h, new_w)
    small /= max(float(small.max()), 1e-6)
    total = small.sum()
    cy = float((small.sum(axis=1) * np.arange(new_h)).sum() / total)
    cx = float((small.sum(axis=0) * np.arange(new_w)).sum() / total)
    # MNIST's centre of mass sits at (14, 14) in pixel-index coordinates (measured: 13.99, 14.01)
    # (rounding half up, not Python's half-to-even, so equal drawings always land alike)
    top = min(max(math.floor(SIZE / 2 - cy + 0.5), 0), SIZE - new_h)
    left = min(max(math.floor(SIZE / 2 - cx + 0.5), 0), SIZE - new_w)
    out = np.zeros((SIZE, SIZE), dtype=np.float32)
    out[top:top + new_h, left:left + new_w] = small
    return out


def preprocess_image(image: np.ndarray) -> np.ndarray:
    """A decoded image (see `to_ink`) -> (28, 28) float32 in [0, 1]."""
    return preprocess_ink(to_ink(image))


def _decimate(q: np.ndarray, step: float) -> np.ndarray:
    """Keep about one point per `step` of arc length (plus both ends): same shape, far fewer segments."""
    if len(q) < 3:
        return q
    d = q[1:] - q[:-1]
    arc = np.zeros(len(q))
    np.cumsum(np.hypot(d[:, 0], d[:, 1]), out=arc[1:])
    bucket = np.floor(arc / step)
    keep = np.ones(len(q), dtype=bool)  # each bucket's first point (arc never decreases), and the last
    keep[1:-1] = bucket[1:-1] != bucket[:-2]
    return q[keep]


def render_strokes(strokes: list, raster: int = RASTER, stroke_width: float = STROKE_WIDTH) -> np.ndarray:
    """Pen strokes [[[x, y], ...], ...] in any units -> (raster, raster) antialiased ink.

    The drawing's bounding box is scaled to fill the raster and drawn with a fixed pen width relative to
    it (`stroke_width` of the raster's side), so the brush size the person used does not matter. Only
    tuning passes other `raster` or `stroke_width` values (benchmarks/drawn_tuning.py).
    """
    points = [np.asarray(s, dtype=np.float64).reshape(-1, 2) for s in strokes if len(s)]
    if not points:
        raise EmptyDrawingError()
    allp = np.concatenate(points)
    lo, hi = allp.min(axis=0), allp.max(axis=0)
    span = float((hi - lo).max())
    pen = stroke_width * raster
    # A drawing narrower than a millionth of a pixel is a dot: dividing by its span would overflow.
    scale = (raster - 2 * pen) / span if span > 1e-6 else 1.0
    starts, ends = [], []
    for p in points:
        q = _decimate((p - (lo + hi) / 2) * scale + raster / 2, step=1.0)
        if len(q) == 1:
            q = np.vstack([q, q])  # a dot: a segment of length zero
        starts.append(q[:-1])
        ends.append(q[1:])
    A = np.concatenate(starts).astype(np.float32)  # (K, 2) segment starts, (x, y)
    AB = np.concatenate(ends).astype(np.float32) - A
    len2 = np.maximum((AB ** 2).sum(axis=1), 1e-6)
    # Ink reaches pen/2 + 0.5 from a segment, so each segment only needs a W x W window of pixels around
    # it (its bounding box grown by that, plus one for rounding, moved inside the raster) instead of the
    # whole raster. Per pixel and segment the arithmetic is unchanged, so the result is identical.
    reach = pen / 2 + 0.5 + 1
    lo_px = np.ceil(np.minimum(A, A + AB) - reach - 0.5)  # (K, 2) first pixel each segment can ink
    hi_px = np.floor(np.maximum(A, A + AB) + reach - 0.5)
    W = int(min((hi_px - lo_px).max() + 1, raster))
    corner = np.clip(lo_px, 0, raster - W).astype(np.int64)  # (K, 2)
    centres = np.arange(raster, dtype=np.float32) + 0.5
    cols = corner[:, 0, None] + np.arange(W)  # (K, W) window pixel x
    rows = corner[:, 1, None] + np.arange(W)  # (K, W) window pixel y
    dist2 = np.full(raster * raster, np.inf, dtype=np.float32)
    chunk = max(1, 2**17 // (W * W))  # segments per pass, bounding memory at (chunk, W, W)
    for k in range(0, len(A), chunk):
        s = slice(k, k + chunk)
        dx = (centres[cols[s]] - A[s, 0, None])[:, None, :]  # (k, 1, W)
        dy = (centres[rows[s]] - A[s, 1, None])[:, :, None]  # (k, W, 1)
        bx, by = AB[s, 0, None, None], AB[s, 1, None, None]
        t = np.clip((dx * bx + dy * by) / len2[s, None, None], 0.0, 1.0)  # (k, W, W)
        dx = dx - t * bx
        dy = dy - t * by
        pixel = rows[s, :, None] * raster + cols[s, None, :]  # (k, W, W) flat pixel index
        np.minimum.at(dist2, pixel.ravel(), (dx * dx + dy * dy).ravel())
    ink = np.clip(pen / 2 + 0.5 - np.sqrt(dist2), 0.0, 1.0)
    return ink.reshape(raster, raster)


def preprocess_strokes(strokes: list, raster: int = RASTER, stroke_width: float = STROKE_WIDTH) -> np.ndarray:
    """Pen strokes -> (28, 28) float32 in [0, 1], through the same path as images."""
    return preprocess_ink(render_strokes(strokes, raster, stroke_width))
