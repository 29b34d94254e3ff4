"""Convolution and pooling layers, vectorised: im2col through strided views, one BLAS matmul per pass.

Images are (N, H, W, C), channels last, so a window's pixels are contiguous in the im2col matrix.
Python loops run over kernel offsets (at most kh*kw), never over pixels or examples.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from model.layers import DTYPE, Layer, register


class Reshape(Layer):
    """(N, prod(shape)) <-> (N, *shape), e.g. flat MNIST rows to (N, 28, 28, 1) images and back."""
    kind = "reshape"

    def __init__(self, shape: list[int]) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, X, training=False):
        self._in_shape = X.shape
        return X.reshape((len(X),) + self.shape)

    def backward(self, dY):
        return dY.reshape(self._in_shape)

    def spec(self):
        return {"type": self.kind, "shape": list(self.shape)}


class Conv2D(Layer):
    """'Same' convolution, stride 1: (N, H, W, C_in) -> (N, H, W, C_out). He-initialised."""
    kind = "conv2d"

    def __init__(self, n_in: int, n_out: int, kernel: int = 3, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"conv2d kernel must be odd for 'same' padding, got {kernel}")
        self.n_in, self.n_out, self.kernel = int(n_in), int(n_out), int(kernel)
        rng = rng or np.random.default_rng(0)
        fan_in = self.kernel * self.kernel * self.n_in
        self.params["W"] = (rng.standard_normal((fan_in, self.n_out)) * np.sqrt(2.0 / fan_in)).astype(DTYPE)
        self.params["b"] = np.zeros(self.n_out, dtype=DTYPE)
        self.grads["W"] = np.zeros_like(self.params["W"])
        self.grads["b"] = np.zeros_like(self.params["b"])
        self.needs_input_grad = True

    def _columns(self, X: np.ndarray) -> np.ndarray:
        """(N, H, W, C) -> im2col matrix (N*H*W, k*k*C), rows ordered (kh, kw, C) like W."""
        p = self.kernel // 2
        Xp = np.pad(X, ((0, 0), (p, p), (p, p), (0, 0)))
        windows = sliding_window_view(Xp, (self.kernel, self.kernel), axis=(1, 2))  # (N, H, W, C, k, k)
        N, H, W = X.shape[:3]
        return windows.transpose(0, 1, 2, 4, 5, 3).reshape(N * H * W, -1)  # one copy, contiguous

    def forward(self, X, training=False):
        """X: (N, H, W, C_in) -> (N, H, W, C_out)."""
        N, H, W, _ = X.shape
        cols = self._columns(X)  # (N*H*W, k*k*C_in)
        if training:
            self._cols, self._shape = cols, X.shape
        Z = cols @ self.params["W"]  # (N*H*W, C_out)
        Z += self.params["b"]
        return Z.reshape(N, H, W, self.n_out)

    def backward(self, dZ):
        """dZ: (N, H, W, C_out) -> dX (N, H, W, C_in); fills grads W and b."""
        N, H, W, C = self._shape
        dZ2 = dZ.reshape(-1, self.n_out)
        np.matmul(self._cols.T, dZ2, out=self.grads["W"])
        np.sum(dZ2, axis=0, out=self.grads["b"])
        if not self.needs_input_grad:
            return None
        k, p = self.kernel, self.kernel // 2
        dcols = (dZ2 @ self.params["W"].T).reshape(N, H, W, k, k, C)
        dXp = np.zeros((N, H + 2 * p, W + 2 * p, C), dtype=dZ.dtype)
        for i in range(k):  # col2im: add each kernel offset's slice back where it was read from
            for j in range(k):
                dXp[:, i:i + H, j:j + W, :] += dcols[:, :, :, i, j, :]
        return dXp[:, p:p + H, p:p + W, :]

    def spec(self):
        return {"type": self.kind, "n_in": self.n_in, "n_out": self.n_out, "kernel": self.kernel}


class MaxPool2D(Layer):
    """2x2 max pooling, stride 2: (N, H, W, C) -> (N, H/2, W/2, C). H and W must be even."""
    kind = "maxpool2d"

    def forward(self, X, training=False):
        N, H, W, C = X.shape
        if H % 2 or W % 2:
            raise ValueError(f"maxpool2d needs even height and width, got {H}x{W}")
        blocks = X.reshape(N, H // 2, 2, W // 2, 2, C)
        out = blocks.max(axis=(2, 4))
        if training:
            self._mask = blocks == out[:, :, None, :, None, :]  # where each maximum came from
        return out

    def backward(self, dY):
        # Ties (e.g. a block of ReLU zeros) share the gradient; a ReLU below zeroes it there anyway.
        N, h, w, C = dY.shape
        return (self._mask * dY[:, :, None, :, None, :]).reshape(N, 2 * h, 2 * w, C)


class Flatten(Layer):
    """(N, ...) -> (N, features)."""
    kind = "flatten"

    def forward(self, X, training=False):
        self._in_shape = X.shape
        return X.reshape(len(X), -1)

    def backward(self, dY):
        return dY.reshape(self._in_shape)


register(Reshape, Conv2D, MaxPool2D, Flatten)
