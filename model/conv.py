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
        p, k = self.kernel // 2, self.kernel
        N, H, W, C = X.shape
        if C == 1:
            # One input channel: a row of the im2col matrix is only k*k values, and copying windows
            # that short is slow. Build its transpose instead, one whole shifted image per kernel
            # offset (k*k copies of long rows), and hand BLAS the transposed view: 4x faster here.
            Xp = np.pad(X[..., 0], ((0, 0), (p, p), (p, p)))
            colsT = np.empty((k, k, N, H, W), dtype=X.dtype)
            for i in range(k):
                for j in range(k):
                    colsT[i, j] = Xp[:, i:i + H, j:j + W]
            return colsT.reshape(k * k, N * H * W).T
        Xp = np.pad(X, ((0, 0), (p, p), (p, p), (0, 0)))
        windows = sliding_window_view(Xp, (k, k), axis=(1, 2))  # (N, H, W, C, k, k)
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
        if self.param_grads:
            np.matmul(self._cols.T, dZ2, out=self.grads["W"])
            np.sum(dZ2, axis=0, out=self.grads["b"])
        if not self.needs_input_grad:
            return None
        # dX is the sum, over kernel offsets (i, j), of dZ @ W[i, j].T shifted by (i, j). One small
        # matmul per offset writes a contiguous (N*H*W, C_in) block, and its add into the padded
        # gradient runs over whole image rows; the textbook col2im (one big dZ @ W.T, then 25 adds
        # of strided C_in-wide slices) took 2.7x as long here.
        k, p = self.kernel, self.kernel // 2
        Wk = self.params["W"].reshape(k, k, C, self.n_out)
        dXp = np.zeros((N, H + 2 * p, W + 2 * p, C), dtype=dZ.dtype)
        part = np.empty((N * H * W, C), dtype=dZ.dtype)
        for i in range(k):
            for j in range(k):
                np.matmul(dZ2, Wk[i, j].T, out=part)
                dXp[:, i:i + H, j:j + W, :] += part.reshape(N, H, W, C)
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
        # The four corners of every 2x2 block as strided views: three elementwise maxima, no 6-D
        # reduction (which took 4x as long).
        corners = (X[:, 0::2, 0::2], X[:, 0::2, 1::2], X[:, 1::2, 0::2], X[:, 1::2, 1::2])
        out = np.maximum(corners[0], corners[1])
        np.maximum(out, np.maximum(corners[2], corners[3]), out=out)
        if training:
            self._X, self._out = X, out
        return out

    def backward(self, dY):
        # Each block's gradient goes to the corner(s) that held its maximum. Exact ties share it;
        # with pooling placed before the ReLU (see `cnn`), ties between distinct floats do not occur.
        X, out = self._X, self._out
        N, H, W, C = X.shape
        blocks = X.reshape(N, H // 2, 2, W // 2, 2, C)
        held = blocks == out[:, :, None, :, None, :]
        return np.multiply(held, dY[:, :, None, :, None, :], dtype=dY.dtype).reshape(X.shape)


class Flatten(Layer):
    """(N, ...) -> (N, features)."""
    kind = "flatten"

    def forward(self, X, training=False):
        self._in_shape = X.shape
        return X.reshape(len(X), -1)

    def backward(self, dY):
        return dY.reshape(self._in_shape)


register(Reshape, Conv2D, MaxPool2D, Flatten)
