"""Finite-difference helpers for the gradient checks of test_layers.py and test_conv.py."""
from __future__ import annotations

import numpy as np

EPS = 1e-6


def numerical_gradient(f, x: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Central differences of the scalar f() with respect to every entry of x (float64, changed in place)."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        saved = x[i]
        x[i] = saved + eps
        plus = f()
        x[i] = saved - eps
        minus = f()
        x[i] = saved
        grad[i] = (plus - minus) / (2 * eps)
    return grad


def as_float64(layer):
    """The same layer computing in float64, so finite differences are exact enough to compare."""
    for key in layer.params:
        layer.params[key] = layer.params[key].astype(np.float64)
        layer.grads[key] = np.zeros_like(layer.params[key])
    return layer
