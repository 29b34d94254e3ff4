"""Convolution and pooling layers, vectorised: im2col through strided views, one BLAS matmul per pass.

Images are (N, H, W, C), channels last, so a window's pixels are contiguous in the im2col matrix.
Python loops run over kernel offsets (at most kh*kw), never over pixels or examples. Inference
(`Conv2D.infer`) fuses the pooling, normalisation and ReLU that follow, in per-thread scratch arrays.
"""
from __future__ import annotations

import threading

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from model.layers import DTYPE, Layer, register, scale_shift_relu_

# Inference builds the im2col matrix for this many bytes of images at a time (at least one image):
# at batch 64 the cnn's second convolution has a 40 MB matrix, which went to memory and back; in
# chunks it stays in the cache. 0.5, 1, 2 and 4 MiB were within noise of each other (0.5 best by a
# few percent at batches 4, 16 and 64 of cnn and cnn_deep); 32 MiB, one chunk, 15-30% slower.
CHUNK_BYTES = 1 << 19

_scratch = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype: np.dtype, zeroed: bool = False) -> np.ndarray:
    """A per-thread array kept for reuse under (name, shape, dtype): each thread has its own, so
    concurrent inference calls never write into each other's. `zeroed` ones start as zeros."""
    arrays = _scratch.__dict__.setdefault("arrays", {})
    key = (name, shape, dtype)
    array = arrays.get(key)
    if array is None:
        array = arrays[key] = (np.zeros if zeroed else np.empty)(shape, dtype=dtype)
    return array


class Reshape(Layer):
    """(N, prod(shape)) <-> (N, *shape), e.g. flat MNIST rows to (N, 28, 28, 1) images and back."""
    kind = "reshape"

    def __init__(self, shape: list[int]) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, X, training=False):
        if training:  # only backward needs it; inference writes nothing to a layer (threads share it)
            self._in_shape = X.shape
        return X.reshape((len(X),) + self.shape)

    def backward(self, dY):
        return dY.reshape(self._in_shape)

    def spec(self):
        return {"type": self.kind, "shape": list(self.shape)}


class Conv2D(Layer):
    """Convolution with stride 1 or 2 and 'same' or 'valid' padding: (N, H, W, C_in) -> (N, H', W', C_out),
    H' = (H + 2p - k) // stride + 1 with p = k // 2 for 'same' and 0 for 'valid'. He-initialised.

    'same' pads both sides by k // 2, so at stride 1 the map keeps its size, and at stride 2 it halves
    (rounding up). TensorFlow pads one pixel more at the bottom and right than at the top and left
    when the total is odd; this pads symmetrically: the same output size, the windows one pixel up
    and left of TensorFlow's.
    """
    kind = "conv2d"

    def __init__(self, n_in: int, n_out: int, kernel: int = 3, stride: int = 1, padding: str = "same",
                 rng: np.random.Generator | None = None) -> None:
        super().__init__()
        if padding not in ("same", "valid"):
            raise ValueError(f"conv2d padding must be 'same' or 'valid', got {padding!r}")
        if padding == "same" and kernel % 2 != 1:
            raise ValueError(f"conv2d kernel must be odd for 'same' padding, got {kernel}")
        if isinstance(stride, bool) or stride not in (1, 2):
            raise ValueError(f"conv2d stride must be 1 or 2, got {stride!r}")
        self.n_in, self.n_out, self.kernel = int(n_in), int(n_out), int(kernel)
        self.stride, self.padding = int(stride), padding
        self.pad = self.kernel // 2 if padding == "same" else 0
        rng = rng or np.random.default_rng(0)
        fan_in = self.kernel * self.kernel * self.n_in
        self.params["W"] = (rng.standard_normal((fan_in, self.n_out)) * np.sqrt(2.0 / fan_in)).astype(DTYPE)
        self.params["b"] = np.zeros(self.n_out, dtype=DTYPE)
        self.grads["W"] = np.zeros_like(self.params["W"])
        self.grads["b"] = np.zeros_like(self.params["b"])
        self.needs_input_grad = True

    def output_size(self, H: int, W: int) -> tuple[int, int]:
        """The output map's height and width for an H x W input."""
        k, p, s = self.kernel, self.pad, self.stride
        if H + 2 * p < k or W + 2 * p < k:
            raise ValueError(f"conv2d kernel {k} with padding {self.padding!r} does not fit a {H}x{W} map")
        return (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1

    def _padded(self, X: np.ndarray) -> np.ndarray:
        p = self.pad
        return np.pad(X, ((0, 0), (p, p), (p, p)) + ((0, 0),) * (X.ndim - 3)) if p else X

    def _columns(self, X: np.ndarray) -> np.ndarray:
        """(N, H, W, C) -> im2col matrix (N*H'*W', k*k*C), rows ordered (kh, kw, C) like W."""
        k, s = self.kernel, self.stride
        N, H, W, C = X.shape
        Ho, Wo = self.output_size(H, W)
        if C == 1:
            # One input channel: a row of the im2col matrix is only k*k values, and copying windows
            # that short is slow. Build its transpose instead, one whole shifted image per kernel
            # offset (k*k copies of long rows), and hand BLAS the transposed view: 4x faster here.
            Xp = self._padded(X[..., 0])
            colsT = np.empty((k, k, N, Ho, Wo), dtype=X.dtype)
            for i in range(k):
                for j in range(k):
                    colsT[i, j] = Xp[:, i:i + s * (Ho - 1) + 1:s, j:j + s * (Wo - 1) + 1:s]
            return colsT.reshape(k * k, N * Ho * Wo).T
        windows = sliding_window_view(self._padded(X), (k, k), axis=(1, 2))  # (N, H+2p-k+1, ., C, k, k)
        if s > 1:
            windows = windows[:, ::s, ::s]  # (N, Ho, Wo, C, k, k)
        return windows.transpose(0, 1, 2, 4, 5, 3).reshape(N * Ho * Wo, -1)  # one copy, contiguous

    def forward(self, X, training=False):
        """X: (N, H, W, C_in) -> (N, H', W', C_out)."""
        if not training:
            return self.infer(X)
        N, H, W, _ = X.shape
        Ho, Wo = self.output_size(H, W)
        cols = self._columns(X)  # (N*Ho*Wo, k*k*C_in)
        self._cols, self._shape = cols, X.shape
        Z = cols @ self.params["W"]  # (N*Ho*Wo, C_out)
        Z += self.params["b"]
        return Z.reshape(N, Ho, Wo, self.n_out)

    def infer(self, X: np.ndarray, pool: bool = False, scale: np.ndarray | None = None,
              shift: np.ndarray | None = None, relu: bool = False) -> np.ndarray:
        """Inference forward, fused with what follows it: a 2x2 max pooling, a per-channel Y * scale + shift
        (batch normalisation's running statistics) and a ReLU, each if asked, in that order.
        X: (N, H, W, C_in) -> (N, H', W', C_out), or (N, H'/2, W'/2, C_out) pooled.

        The same products as `forward` in training, on chunks of images small enough for the cache, with
        the padded input and the im2col matrix in per-thread scratch arrays (`scratch`): no np.pad, no
        large allocation, and concurrent calls from several threads never share one."""
        N, H, W, C = X.shape
        Ho, Wo = self.output_size(H, W)
        if pool and (Ho % 2 or Wo % 2):
            raise ValueError(f"maxpool2d needs even height and width, got {Ho}x{Wo}")
        W_, b = self.params["W"], self.params["b"]
        dtype = X.dtype if X.dtype == W_.dtype else np.result_type(X.dtype, W_.dtype)
        # Images per chunk, whatever N: the scratch arrays then come in one size per layer shape.
        capacity = max(1, CHUNK_BYTES // (Ho * Wo * W_.shape[0] * X.itemsize))
        out = np.empty((N, Ho // 2, Wo // 2, self.n_out) if pool else (N, Ho, Wo, self.n_out), dtype=dtype)
        for start in range(0, N, capacity):
            Xc, Yc = X[start:start + capacity], out[start:start + capacity]
            Yc = Yc.reshape(-1, self.n_out)  # (n*H''*W'', C_out), a view: out is contiguous
            cols = self._inference_columns(Xc, Ho, Wo, capacity, pool)  # (n*Ho*Wo, k*k*C_in)
            if pool:
                # The rows come as four blocks, one per corner of the 2x2 windows: pooling is the
                # elementwise max of four contiguous blocks of the product.
                Z = scratch("conv out", (capacity * Ho * Wo * self.n_out,), dtype)[:cols.shape[0] * self.n_out]
                Z = np.matmul(cols, W_, out=Z.reshape(-1, self.n_out)).reshape(4, -1, self.n_out)
                np.maximum(Z[0], Z[1], out=Yc)
                np.maximum(Yc, Z[2], out=Yc)
                np.maximum(Yc, Z[3], out=Yc)
            else:
                np.matmul(cols, W_, out=Yc)
            # After the pooling, on a quarter of the values: max(a + b, c + b) is max(a, c) + b exactly,
            # as rounding keeps order, so the sums are forward's.
            Yc += b
            scale_shift_relu_(Yc, scale, shift, relu)
        return out

    def _inference_columns(self, X: np.ndarray, Ho: int, Wo: int, capacity: int, pool: bool) -> np.ndarray:
        """`_columns(X)` for up to `capacity` images, in per-thread scratch arrays: the same rows, as
        `_columns` lays them out (transposed for one input channel), but with `pool` ordered by the
        corner (dy, dx) of their 2x2 pooling window first, then image, row and column of the pooled map."""
        k, p, s = self.kernel, self.pad, self.stride
        N, H, W, C = X.shape
        # Written anew each call but for the border, which stays the zeros it was made with.
        Xp = scratch(f"padded {p}", (capacity, H + 2 * p, W + 2 * p, C), X.dtype, zeroed=True)
        Xp[:N, p:p + H, p:p + W] = X
        sN, sH, sW, sC = Xp.strides
        if pool:  # output row 2*h + dy, column 2*w + dx
            rows, row_strides = (2, 2, N, Ho // 2, Wo // 2), (s * sH, s * sW, sN, 2 * s * sH, 2 * s * sW)
        else:
            rows, row_strides = (N, Ho, Wo), (sN, s * sH, s * sW)
        n_rows, n_cols = N * Ho * Wo, k * k * C
        # The windows as a strided view of Xp (np.ndarray on its buffer: sliding_window_view costs 9 µs).
        cols = scratch("im2col", (capacity * Ho * Wo * n_cols,), X.dtype)[:n_rows * n_cols]
        if C == 1:
            # One input channel: a row is only k*k values, and copying rows that short is slow. As in
            # `_columns`, build the transpose, one shifted image per kernel offset, for BLAS to read transposed.
            windows = np.ndarray((k, k) + rows, X.dtype, Xp, 0, (sH, sW) + row_strides)
            np.copyto(cols.reshape(windows.shape), windows)
            return cols.reshape(n_cols, n_rows).T
        windows = np.ndarray(rows + (k, k, C), X.dtype, Xp, 0, row_strides + (sH, sW, sC))
        np.copyto(cols.reshape(windows.shape), windows)
        return cols.reshape(n_rows, n_cols)

    def backward(self, dZ):
        """dZ: (N, H', W', C_out) -> dX (N, H, W, C_in); fills grads W and b."""
        N, H, W, C = self._shape
        dZ2 = dZ.reshape(-1, self.n_out)
        if self.param_grads:
            np.matmul(self._cols.T, dZ2, out=self.grads["W"])
            np.sum(dZ2, axis=0, out=self.grads["b"])
        if not self.needs_input_grad:
            return None
        # dX is the sum, over kernel offsets (i, j), of dZ @ W[i, j].T placed at the pixels that
        # offset read (every stride-th from (i, j)). One small matmul per offset writes a contiguous
        # (N*Ho*Wo, C_in) block, and its add into the padded gradient runs over whole image rows; the
        # textbook col2im (one big dZ @ W.T, then 25 adds of strided C_in-wide slices) took 2.7x as long.
        k, p, s = self.kernel, self.pad, self.stride
        Ho, Wo = dZ.shape[1:3]
        Wk = self.params["W"].reshape(k, k, C, self.n_out)
        dXp = np.zeros((N, H + 2 * p, W + 2 * p, C), dtype=dZ.dtype)  # rows no window reads stay 0
        part = np.empty((N * Ho * Wo, C), dtype=dZ.dtype)
        for i in range(k):
            for j in range(k):
                np.matmul(dZ2, Wk[i, j].T, out=part)
                dXp[:, i:i + s * (Ho - 1) + 1:s, j:j + s * (Wo - 1) + 1:s, :] += part.reshape(N, Ho, Wo, C)
        return dXp[:, p:p + H, p:p + W, :]

    def spec(self):
        spec = {"type": self.kind, "n_in": self.n_in, "n_out": self.n_out, "kernel": self.kernel}
        # Only when not the defaults: the specs in older weights files stay as they were written.
        if self.stride != 1:
            spec["stride"] = self.stride
        if self.padding != "same":
            spec["padding"] = self.padding
        return spec


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
        if training:  # only backward needs it; inference writes nothing to a layer (threads share it)
            self._in_shape = X.shape
        return X.reshape(len(X), -1)

    def backward(self, dY):
        return dY.reshape(self._in_shape)


register(Reshape, Conv2D, MaxPool2D, Flatten)
