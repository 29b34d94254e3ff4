"""On-the-fly augmentation of (N, 784) batches, vectorised and seeded: random affine maps (shift,
rotation, scale, shear) and elastic distortions (Simard et al., 2003), resampled bilinearly, and
random stroke thickness (grey-scale dilation or erosion, by a fraction).

No Python loop over examples or pixels: every sample's sampling grid is built and read at once.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SIDE = 28


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random transforms; each sample draws its own."""
    max_shift: float = 2.0        # pixels, each axis
    max_rotation: float = 12.0    # degrees
    max_scale: float = 0.1        # scale in [1 - s, 1 + s]
    max_shear: float = 0.15       # shear factor
    elastic_alpha: float = 0.0    # strength (0 = off); Simard et al. used 34 with sigma 4
    elastic_sigma: float = 4.0    # smoothness of the displacement field, pixels
    max_thickness: float = 0.0    # stroke thickness change in [-t, t] (0 = off; 1 = a full pixel, see `thicken`)

    def to_dict(self) -> dict:
        return asdict(self)


def _gaussian_matrix(sigma: float, n: int = SIDE) -> np.ndarray:
    """(n, n) matrix that blurs a length-n signal with a Gaussian (zero beyond the edges)."""
    d = np.arange(n)[:, None] - np.arange(n)[None, :]
    G = np.exp(-0.5 * (d / sigma) ** 2)
    return (G / G.sum(axis=1, keepdims=True)).astype(np.float32)


def augment(X: np.ndarray, rng: np.random.Generator, aug: Augmentation = Augmentation()) -> np.ndarray:
    """X: (N, 784) float32 in [0, 1] -> (N, 784) randomly transformed copies."""
    N = len(X)
    imgs = X.reshape(N, SIDE, SIDE)
    angle = np.deg2rad(rng.uniform(-aug.max_rotation, aug.max_rotation, N))
    scale = rng.uniform(1 - aug.max_scale, 1 + aug.max_scale, N)
    shear = rng.uniform(-aug.max_shear, aug.max_shear, N)
    shift = rng.uniform(-aug.max_shift, aug.max_shift, (N, 2))
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    # Inverse map, output -> input coordinates: rotation/scale, then shear along x. (N, 2, 2)
    A = np.empty((N, 2, 2))
    A[:, 0, 0], A[:, 0, 1] = cos, -sin
    A[:, 1, 0], A[:, 1, 1] = sin + shear * cos, cos - shear * sin
    centre = (SIDE - 1) / 2
    gr, gc = np.meshgrid(np.arange(SIDE) - centre, np.arange(SIDE) - centre, indexing="ij")  # (28, 28)
    A = A.astype(np.float32)[:, :, :, None, None]
    offset = (centre - shift).astype(np.float32)[:, :, None, None]
    coords = A[:, :, 0] * gr.astype(np.float32) + A[:, :, 1] * gc.astype(np.float32) + offset  # (N, 2, 28, 28)
    if aug.elastic_alpha > 0:
        # Simard et al.: uniform noise in [-1, 1], smoothed by a Gaussian, times alpha.
        G = _gaussian_matrix(aug.elastic_sigma)
        noise = rng.uniform(-1, 1, (N, 2, SIDE, SIDE)).astype(np.float32)
        coords += aug.elastic_alpha * (G @ noise @ G.T)  # (N, 2, 28, 28) displacement
    if aug.max_thickness > 0:
        # Drawn last, so the other transforms draw what they drew before this option existed.
        amount = rng.uniform(-aug.max_thickness, aug.max_thickness, N).astype(np.float32)
        imgs = thicken(imgs, amount)  # before resampling: the morphology works on the crisp strokes
    return bilinear_sample(imgs, coords).reshape(N, SIDE * SIDE)


def thicken(imgs: np.ndarray, amount: np.ndarray) -> np.ndarray:
    """imgs (N, H, W), amount (N,) in [-1, 1] -> (N, H, W): thicker strokes where amount > 0, thinner below.

    Grey-scale dilation (erosion) is the max (min) over a pixel and its four neighbours: a stroke grows
    (shrinks) by a pixel on each side. A fraction of a pixel blends linearly towards it. The cross
    rather than the 3x3 square because MNIST strokes are only 2-3 pixels wide: the square erodes thin
    strokes away and rounds corners into blobs.
    """
    padded = np.pad(imgs, ((0, 0), (1, 1), (1, 1)))
    shifted = (padded[:, :-2, 1:-1], padded[:, 2:, 1:-1], padded[:, 1:-1, :-2], padded[:, 1:-1, 2:])
    grown, shrunk = imgs.copy(), imgs.copy()
    for view in shifted:
        np.maximum(grown, view, out=grown)
        np.minimum(shrunk, view, out=shrunk)
    t = amount.astype(imgs.dtype)[:, None, None]
    # towards the dilation for t > 0, towards the erosion for t < 0
    return imgs + np.maximum(t, 0) * (grown - imgs) + np.minimum(t, 0) * (imgs - shrunk)


def bilinear_sample(imgs: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Read imgs (N, H, W) at fractional coords (N, 2, H, W) (rows, cols); zero outside. -> (N, H, W) float32."""
    N, H, W = imgs.shape
    padded = np.zeros((N, H + 2, W + 2), dtype=np.float32)  # a zero border makes outside reads zero
    padded[:, 1:-1, 1:-1] = imgs
    r = np.clip(coords[:, 0] + 1, 0, H + 0.999)
    c = np.clip(coords[:, 1] + 1, 0, W + 0.999)
    r0f, c0f = np.floor(r), np.floor(c)
    r0, c0 = r0f.astype(np.intp), c0f.astype(np.intp)
    fr, fc = r - r0f, c - c0f  # float32, like the images
    width = W + 2
    idx = r0 * width + c0 + (np.arange(N) * (H + 2) * width)[:, None, None]  # top-left neighbour, flat
    flat = padded.ravel()
    top = flat[idx] + fc * (flat[idx + 1] - flat[idx])
    bottom = flat[idx + width] + fc * (flat[idx + width + 1] - flat[idx + width])
    return top + fr * (bottom - top)
