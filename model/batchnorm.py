"""Batch normalisation (Ioffe and Szegedy, 2015) for dense rows (N, C) and channels-last maps (N, H, W, C).

Each of the C features is normalised over every other axis. The running mean and variance are
buffers: saved with the weights, used at inference, never trained.
"""
from __future__ import annotations

import numpy as np

from model.layers import DTYPE, Layer, register

EPS = 1e-5


class BatchNorm(Layer):
    """Y = gamma * (X - mean) / sqrt(var + eps) + beta, per feature (the last axis).

    Training passes normalise with the batch's own statistics and fold them into the running ones:
    running = momentum * running + (1 - momentum) * batch, the variance with Bessel's correction (a
    batch of one value per feature says nothing of the variance, so it leaves them unchanged).
    Inference uses the running statistics, so a row's output does not depend on the rest of its batch.
    """
    kind = "batchnorm"
    required_sizes = ("n_features",)

    def __init__(self, n_features: int, momentum: float = 0.9) -> None:
        super().__init__()
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise ValueError(f"batchnorm momentum must be a number in [0, 1), got {momentum!r}")
        self.n_features, self.momentum = int(n_features), float(momentum)
        C = self.n_features
        self.params["gamma"] = np.ones(C, dtype=DTYPE)
        self.params["beta"] = np.zeros(C, dtype=DTYPE)
        self.grads["gamma"] = np.zeros(C, dtype=DTYPE)
        self.grads["beta"] = np.zeros(C, dtype=DTYPE)
        self.buffers["running_mean"] = np.zeros(C, dtype=DTYPE)
        self.buffers["running_var"] = np.ones(C, dtype=DTYPE)
        self.needs_input_grad = True
        # True while a training pass should behave as inference does (saliency, `Network.input_gradient`):
        # normalise with the running statistics and leave them as they are.
        self.use_running_stats = False

    def forward(self, X, training=False):
        """X: (N, C) or (N, H, W, C) -> the same shape."""
        if X.shape[-1] != self.n_features:
            raise ValueError(f"batchnorm expects {self.n_features} features on the last axis, got shape {X.shape}")
        mean, var = self.buffers["running_mean"], self.buffers["running_var"]
        if not training:
            scale, shift = self.inference_affine()
            Y = X * scale
            Y += shift
            return Y
        axes = tuple(range(X.ndim - 1))  # every axis but the features'
        if not self.use_running_stats:
            m = X.size // self.n_features  # values per feature: N, or N*H*W
            mean, var = X.mean(axis=axes), X.var(axis=axes)  # (C,) each, the batch's own
            if m > 1:
                mu = DTYPE(self.momentum)
                self.buffers["running_mean"] *= mu
                self.buffers["running_mean"] += (1 - mu) * mean
                self.buffers["running_var"] *= mu
                self.buffers["running_var"] += (1 - mu) * (m / (m - 1)) * var
        inv_std = 1 / np.sqrt(var + EPS)  # (C,)
        X_hat = X - mean  # a new array: X may be the caller's input
        X_hat *= inv_std
        self._X_hat, self._inv_std, self._axes = X_hat, inv_std, axes
        self._batch_stats = not self.use_running_stats
        Y = X_hat * self.params["gamma"]
        Y += self.params["beta"]
        return Y

    def inference_affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(scale, shift), each (C,): inference's Y = X * scale + shift, one multiply-add per value."""
        scale = self.params["gamma"] / np.sqrt(self.buffers["running_var"] + EPS)
        return scale, self.params["beta"] - self.buffers["running_mean"] * scale

    def backward(self, dY):
        """dY: the output's shape -> dX of the same shape (None for the first trainable layer); fills
        grads gamma and beta. With batch statistics the mean and variance depend on every value, so
        dX = gamma * inv_std * (dY - mean(dY) - X_hat * mean(dY * X_hat)), the means per feature."""
        X_hat, axes = self._X_hat, self._axes
        scale = self.params["gamma"] * self._inv_std  # (C,)
        if self.param_grads or (self.needs_input_grad and self._batch_stats):
            dbeta, dgamma = dY.sum(axis=axes), (dY * X_hat).sum(axis=axes)  # (C,) each
        if self.param_grads:
            self.grads["beta"][...] = dbeta
            self.grads["gamma"][...] = dgamma
        if not self.needs_input_grad:
            return None
        if not self._batch_stats:  # fixed statistics: a per-feature scale and shift
            return dY * scale
        m = X_hat.size // self.n_features
        dX = dY - dbeta / m
        dX -= X_hat * (dgamma / m)
        dX *= scale
        return dX

    def spec(self):
        return {"type": self.kind, "n_features": self.n_features, "momentum": self.momentum}

    def array_problem(self, name, value):
        if name == "running_var" and (value < 0).any():
            return "is negative somewhere; a variance cannot be"
        return None


register(BatchNorm)
