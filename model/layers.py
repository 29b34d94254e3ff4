"""Small layers with `forward` and `backward`, batch-major and float32.

`forward` caches what `backward` needs; `backward` returns dX and stores parameter gradients in
`self.grads`. Parameter updates live in `model.optim`, never here. Arrays a layer keeps but does not
train (batch normalisation's running statistics) live in `self.buffers`, out of the optimizer's sight.
"""
from __future__ import annotations

import numpy as np

from model import blas

DTYPE = np.float32


class Layer:
    """Base: a layer with no parameters."""
    kind = "layer"
    required_sizes: tuple[str, ...] = ()  # spec fields (of PARAMETRISED) that build_layer insists on

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        # State that is saved with the weights but never trained: the optimizer only sees `params`.
        self.buffers: dict[str, np.ndarray] = {}
        # False while only the gradient w.r.t. the input is wanted (saliency): backward then skips
        # the parameter gradients, for a dense layer the largest product of the pass.
        self.param_grads = True

    def forward(self, X: np.ndarray, training: bool = False) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dY: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def spec(self) -> dict:
        """JSON-able description, enough to rebuild the layer (without its parameters)."""
        return {"type": self.kind}

    def array_problem(self, name: str, value: np.ndarray) -> str | None:
        """What is wrong with `value` as this layer's array `name` beyond shape, dtype and finiteness
        (which `Network` checks for every array), or None."""
        return None


def scale_shift_relu_(Z: np.ndarray, scale: np.ndarray | None, shift: np.ndarray | None,
                      relu: bool) -> np.ndarray:
    """In place: Z * scale + shift per feature (batch normalisation's running statistics, if given),
    then max(Z, 0) if asked; the epilogue of the fused inference steps. Returns Z."""
    if scale is not None:
        Z *= scale
        Z += shift
    if relu:
        np.maximum(Z, 0, out=Z)
    return Z


class Dense(Layer):
    """Z = X @ W + b. He-initialised for the ReLU that usually follows."""
    kind = "dense"
    required_sizes = ("n_in", "n_out")

    def __init__(self, n_in: int, n_out: int, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        self.n_in, self.n_out = int(n_in), int(n_out)
        rng = rng or np.random.default_rng(0)
        scale = np.sqrt(2.0 / self.n_in)
        self.params["W"] = (rng.standard_normal((self.n_in, self.n_out)) * scale).astype(DTYPE)
        self.params["b"] = np.zeros(self.n_out, dtype=DTYPE)
        self.grads["W"] = np.zeros_like(self.params["W"])
        self.grads["b"] = np.zeros_like(self.params["b"])
        # The first layer's input is the data: nobody needs its gradient, so backward skips
        # that (N, n_in) matmul. Network sets this.
        self.needs_input_grad = True
        self._X: np.ndarray | None = None

    def forward(self, X, training=False):
        """X: (N, n_in) -> (N, n_out)."""
        if training:
            self._X = X
        Z = X @ self.params["W"]  # (N, n_out)
        Z += self.params["b"]  # in place: `+ b` would allocate and fill a second (N, n_out) array
        return Z

    def infer(self, X: np.ndarray, scale: np.ndarray | None = None, shift: np.ndarray | None = None,
              relu: bool = False) -> np.ndarray:
        """Inference forward, fused with a per-feature Y * scale + shift (batch normalisation's running
        statistics) and a ReLU if asked, all in place on the product: (N, n_in) -> (N, n_out)."""
        return scale_shift_relu_(self.forward(X), scale, shift, relu)

    def backward(self, dZ):
        """dZ: (N, n_out) -> dX (N, n_in), or None for the first layer; fills grads W and b."""
        if self.param_grads:
            np.matmul(self._X.T, dZ, out=self.grads["W"])  # (n_in, n_out)
            np.sum(dZ, axis=0, out=self.grads["b"])
        if not self.needs_input_grad:
            return None
        return blas.matmul(dZ, self.params["W"].T)  # (N, n_in); one thread when n_out is small

    def spec(self):
        return {"type": self.kind, "n_in": self.n_in, "n_out": self.n_out}


class ReLU(Layer):
    """A = max(Z, 0), computed in place: the layer before never keeps its output."""
    kind = "relu"

    def forward(self, X, training=False):
        A = np.maximum(X, 0, out=X)
        if training:
            self._A = A
        return A

    def backward(self, dA):
        dA *= self._A > 0  # in place: dA belongs to this backward pass alone
        return dA


class SoftmaxCrossEntropy:
    """Mean softmax cross-entropy over the batch, with the fused gradient (probs - onehot) / N."""

    def forward(self, logits: np.ndarray, y: np.ndarray) -> float:
        """logits: (N, C), y: (N,) int labels -> mean loss."""
        self._probs = softmax(logits)
        self._y = y
        N = len(y)
        picked = self._probs[np.arange(N), y]
        return float(-np.log(np.maximum(picked, np.finfo(DTYPE).tiny)).mean())

    def backward(self, scale: float = 1.0) -> np.ndarray:
        """-> dlogits (N, C) of `scale` times the mean loss.

        Every gradient below is linear in dlogits, so a `scale` here (the plain SGD step's learning
        rate, see `model.optim.SGD.gradient_scale`) scales them all for the price of this (N, C) pass,
        where scaling the gradients afterwards takes a pass over every weight."""
        N = len(self._y)
        dZ = self._probs  # reused in place; forward's probabilities are not needed again
        dZ[np.arange(N), self._y] -= 1
        dZ *= DTYPE(scale / N)
        return dZ


class DistillationLoss:
    """Knowledge distillation (Hinton et al. 2015), mean over the batch: alpha * T^2 * KL(softmax(teacher / T)
    || softmax(student / T)) + (1 - alpha) * cross-entropy with the labels, with the fused gradient.
    T^2 keeps the soft term's gradient, which shrinks as 1/T^2, on the scale of the labels' term."""

    def __init__(self, temperature: float, weight: float) -> None:
        self.temperature, self.weight = float(temperature), float(weight)
        self.cross_entropy = SoftmaxCrossEntropy()

    def forward(self, logits: np.ndarray, y: np.ndarray, teacher_logits: np.ndarray) -> float:
        """logits, teacher_logits: (N, C), y: (N,) int labels -> mean loss."""
        T, alpha = self.temperature, self.weight
        hard = self.cross_entropy.forward(logits, y)
        log_student = log_softmax(logits / logits.dtype.type(T))  # (N, C)
        log_teacher = log_softmax(teacher_logits.astype(logits.dtype) / logits.dtype.type(T))  # (N, C)
        self._q_student, self._q_teacher = np.exp(log_student), np.exp(log_teacher)
        # log-probabilities from log_softmax stay finite, so a teacher probability of 0 adds 0, not NaN
        kl = float(np.sum(self._q_teacher * (log_teacher - log_student))) / len(y)
        return (1 - alpha) * hard + alpha * T * T * kl

    def backward(self, scale: float = 1.0) -> np.ndarray:
        """-> dlogits (N, C) of `scale` times the mean loss: (1 - alpha) (probs - onehot) / N from the labels
        plus alpha T (q_student - q_teacher) / N from the soft targets (see `SoftmaxCrossEntropy.backward`)."""
        T, alpha, N = self.temperature, self.weight, len(self._q_student)
        dZ = self.cross_entropy.backward(scale * (1 - alpha))
        soft = self._q_student  # reused in place: forward's probabilities are not needed again
        soft -= self._q_teacher
        soft *= soft.dtype.type(scale * alpha * T / N)
        dZ += soft
        return dZ


def log_softmax(Z: np.ndarray) -> np.ndarray:
    """Row-wise log of the softmax, stable: Z - max - log(sum(exp(Z - max))). (N, C) -> (N, C)."""
    shifted = Z - Z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(Z: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable: the row max is subtracted first. (N, C) -> (N, C)."""
    E = np.exp(Z - Z.max(axis=1, keepdims=True))
    E /= E.sum(axis=1, keepdims=True)
    return E


class Dropout(Layer):
    """Inverted dropout: in training, zero a `rate` share of activations and scale the rest by 1/(1-rate)."""
    kind = "dropout"

    def __init__(self, rate: float, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        if not 0 <= rate < 1:
            raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.rng = np.random.default_rng(rng.integers(2**63) if rng is not None else 0)

    def forward(self, X, training=False):
        if not training or self.rate == 0:
            self._mask = None
            return X
        self._mask = (self.rng.random(X.shape, dtype=np.float32) >= self.rate) * DTYPE(1 / (1 - self.rate))
        return X * self._mask

    def backward(self, dY):
        if self._mask is not None:
            dY *= self._mask
        return dY

    def spec(self):
        return {"type": self.kind, "rate": self.rate}


LAYER_TYPES: dict[str, type[Layer]] = {}
PARAMETRISED = ("n_in", "n_out", "kernel", "n_features")  # integer sizes a spec must give as positive integers


def register(*classes: type[Layer]) -> None:
    """Make layer classes buildable from their spec's "type" (see `model.conv` for more)."""
    LAYER_TYPES.update({cls.kind: cls for cls in classes})


register(Dense, ReLU, Dropout)


def build_layer(spec: dict, rng: np.random.Generator | None = None) -> Layer:
    """Rebuild a layer from its `spec()`; unknown types and bad sizes raise ValueError."""
    if not isinstance(spec, dict):
        raise ValueError(f"a layer spec must be an object with a 'type', got {spec!r}")
    kind = spec.get("type")
    if kind not in LAYER_TYPES:
        raise ValueError(f"unknown layer type {kind!r}; known: {sorted(LAYER_TYPES)}")
    cls = LAYER_TYPES[kind]
    args = {k: v for k, v in spec.items() if k != "type"}
    for key in PARAMETRISED:
        if key in args and (not isinstance(args[key], int) or isinstance(args[key], bool) or args[key] <= 0):
            raise ValueError(f"{kind} layer needs a positive integer {key!r}, got {args[key]!r}")
    missing = next((key for key in cls.required_sizes if key not in args), None)
    if missing is not None:
        raise ValueError(f"{kind} layer needs a positive integer {missing!r}, got None")
    try:
        return cls(**args, rng=rng) if "rng" in cls.__init__.__code__.co_varnames else cls(**args)
    except TypeError as exc:
        raise ValueError(f"bad {kind} layer spec {spec}: {exc}") from exc
