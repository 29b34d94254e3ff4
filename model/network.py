"""A sequential network of `model.layers`, built from a JSON-able spec, plus the named architectures."""
from __future__ import annotations

import copy
from functools import partial
from typing import Callable

import numpy as np

from model.batchnorm import BatchNorm
from model.conv import Conv2D, Flatten, MaxPool2D, Reshape  # importing registers them with build_layer
from model.layers import DTYPE, Dense, Dropout, Layer, ReLU, SoftmaxCrossEntropy, build_layer, softmax

N_CLASSES = 10
N_PIXELS = 784


def architecture_spec(name: str) -> dict:
    """The layer list of a named architecture."""
    if name == "seed":
        # The classic cs231n two-layer net: 784 -> 1024 ReLU -> 10.
        return {"name": "seed", "layers": [
            {"type": "dense", "n_in": N_PIXELS, "n_out": 1024},
            {"type": "relu"},
            {"type": "dense", "n_in": 1024, "n_out": N_CLASSES},
        ]}
    if name == "mlp":
        # Two wide hidden layers with dropout (Srivastava et al. 2014 used 2x800 and more on MNIST).
        return {"name": "mlp", "layers": [
            {"type": "dropout", "rate": 0.1},
            {"type": "dense", "n_in": N_PIXELS, "n_out": 800}, {"type": "relu"}, {"type": "dropout", "rate": 0.3},
            {"type": "dense", "n_in": 800, "n_out": 800}, {"type": "relu"}, {"type": "dropout", "rate": 0.3},
            {"type": "dense", "n_in": 800, "n_out": N_CLASSES},
        ]}
    if name == "cnn":
        # Two 5x5 convolution blocks and a dense head, the LeNet-like shape that reaches 99.5-99.7%
        # on MNIST with augmentation. Pooling comes before the ReLU: max and ReLU commute, so the
        # result is the same, and the ReLU then runs on a quarter of the values.
        return {"name": "cnn", "layers": [
            {"type": "reshape", "shape": [28, 28, 1]},
            {"type": "conv2d", "n_in": 1, "n_out": 32, "kernel": 5}, {"type": "maxpool2d"}, {"type": "relu"},
            {"type": "conv2d", "n_in": 32, "n_out": 64, "kernel": 5}, {"type": "maxpool2d"}, {"type": "relu"},
            {"type": "flatten"},
            {"type": "dense", "n_in": 7 * 7 * 64, "n_out": 256}, {"type": "relu"}, {"type": "dropout", "rate": 0.5},
            {"type": "dense", "n_in": 256, "n_out": N_CLASSES},
        ]}
    if name == "cnn_bn":
        # The cnn with batch normalisation (model.batchnorm) after each block's pooling and on the dense
        # head: the same products, so the same cost within a few percent (the statistics are taken on
        # the pooled maps, a quarter of the convolution's output).
        return {"name": "cnn_bn", "layers": [
            {"type": "reshape", "shape": [28, 28, 1]},
            {"type": "conv2d", "n_in": 1, "n_out": 32, "kernel": 5}, {"type": "maxpool2d"},
            {"type": "batchnorm", "n_features": 32}, {"type": "relu"},
            {"type": "conv2d", "n_in": 32, "n_out": 64, "kernel": 5}, {"type": "maxpool2d"},
            {"type": "batchnorm", "n_features": 64}, {"type": "relu"},
            {"type": "flatten"},
            {"type": "dense", "n_in": 7 * 7 * 64, "n_out": 256}, {"type": "batchnorm", "n_features": 256},
            {"type": "relu"}, {"type": "dropout", "rate": 0.5},
            {"type": "dense", "n_in": 256, "n_out": N_CLASSES},
        ]}
    if name == "cnn_deep":
        # Chris Deotte's Kaggle MNIST network (99.75% single, 99.76% ensembled): no pooling; stride-2
        # 5x5 convolutions halve the map and learn how. Batch normalisation and a ReLU follow every
        # convolution; the first 3x3 convolutions of each block are 'valid': 28 -> 26 -> 24 -> 12 -> 10 ->
        # 8 -> 4 -> 1.
        def conv(n_in, n_out, kernel, stride=1, padding="valid"):
            c = {"type": "conv2d", "n_in": n_in, "n_out": n_out, "kernel": kernel}
            c.update({"stride": stride} if stride != 1 else {})
            c.update({"padding": padding} if padding != "same" else {})
            return [c, {"type": "batchnorm", "n_features": n_out}, {"type": "relu"}]

        return {"name": "cnn_deep", "layers": [
            {"type": "reshape", "shape": [28, 28, 1]},
            *conv(1, 32, 3), *conv(32, 32, 3), *conv(32, 32, 5, stride=2, padding="same"),
            {"type": "dropout", "rate": 0.4},
            *conv(32, 64, 3), *conv(64, 64, 3), *conv(64, 64, 5, stride=2, padding="same"),
            {"type": "dropout", "rate": 0.4},
            *conv(64, 128, 4),
            {"type": "flatten"}, {"type": "dropout", "rate": 0.4},
            {"type": "dense", "n_in": 128, "n_out": N_CLASSES},
        ]}
    raise ValueError(f"unknown architecture {name!r}; known: {ARCHITECTURES}")


ARCHITECTURES = ("seed", "mlp", "cnn", "cnn_bn", "cnn_deep")


def check_keys(own: dict, arrays: dict, what: str) -> None:
    """ValueError naming the missing and unexpected parameter keys, if `arrays` does not match `own`."""
    missing, extra = own.keys() - arrays.keys(), arrays.keys() - own.keys()
    if missing or extra:
        raise ValueError(f"parameters do not match {what}: missing {sorted(missing)}, unexpected {sorted(extra)}")


class Network:
    """Layers applied in order; `predict_proba` and `predict` as in scikit-learn."""

    def __init__(self, spec: dict, rng: np.random.Generator | None = None) -> None:
        if not isinstance(spec, dict) or not isinstance(spec.get("layers"), list) or not spec["layers"]:
            raise ValueError("architecture spec must be an object with a non-empty 'layers' list")
        self.spec = spec
        self.name = str(spec.get("name", "custom"))
        self.layers: list[Layer] = [build_layer(s, rng) for s in spec["layers"]]
        # Nothing before the first layer with parameters needs a gradient (the input is data), so
        # that layer skips computing dX and backward stops there.
        first_trainable = next((layer for layer in self.layers if layer.params), None)
        if first_trainable is not None:
            first_trainable.needs_input_grad = False
        self.loss = SoftmaxCrossEntropy()

    @classmethod
    def from_architecture(cls, name: str, seed: int = 0) -> "Network":
        return cls(architecture_spec(name), np.random.default_rng(seed))

    # --- parameters and state ----------------------------------------------------------------
    def parameters(self) -> dict[str, np.ndarray]:
        """Every trainable array by its weights-file key, e.g. '0.W' (layer index, attribute): what the
        optimizer updates."""
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in layer.params.items()}

    def gradients(self) -> dict[str, np.ndarray]:
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in layer.grads.items()}

    def state(self) -> dict[str, np.ndarray]:
        """The parameters and the untrained buffers (e.g. '3.running_mean'): the whole model, as a
        weights file holds it. Save, hash, copy and restore this; the optimizer sees `parameters()`."""
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers)
                for k, v in (*layer.params.items(), *layer.buffers.items())}

    def set_parameters(self, arrays: dict[str, np.ndarray]) -> None:
        """Copy the trainable arrays into the network, checking that keys, shapes and dtypes match the spec."""
        self._copy_in(arrays, buffers=False)

    def set_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Copy a whole `state()` (parameters and buffers) in, with the checks of `set_parameters`."""
        self._copy_in(arrays, buffers=True)

    def _copy_in(self, arrays: dict[str, np.ndarray], buffers: bool) -> None:
        """Check every array before copying any, so a bad one leaves the network as it was."""
        own: dict[str, tuple[Layer, str, np.ndarray, str]] = {}  # key -> (layer, name, target, what)
        for i, layer in enumerate(self.layers):
            for what, named in (("parameter", layer.params), ("buffer", layer.buffers if buffers else {})):
                own.update({f"{i}.{name}": (layer, name, target, what) for name, target in named.items()})
        check_keys(own, arrays, "the architecture")
        for key, (layer, name, target, what) in own.items():
            value = arrays[key]
            if value.dtype.kind != "f":
                raise ValueError(f"{what} {key!r} has dtype {value.dtype}, not floating point")
            if value.shape != target.shape:
                raise ValueError(f"{what} {key!r} has shape {value.shape}, the architecture needs {target.shape}")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"{what} {key!r} holds NaN or infinity")
            problem = layer.array_problem(name, value)
            if problem:
                raise ValueError(f"{what} {key!r} {problem}")
        for key, (_, _, target, _) in own.items():
            target[...] = arrays[key]

    def weight_keys(self) -> list[str]:
        """Keys that the L2 penalty applies to: weight matrices, not biases."""
        return [key for key in self.parameters() if key.endswith(".W")]

    # --- computation ---------------------------------------------------------------------------
    def forward(self, X: np.ndarray, training: bool = False) -> np.ndarray:
        """X: (N, 784) float32 -> logits (N, 10)."""
        A = X
        if not training:
            for step in self._inference_steps():
                A = step(A)
            return A
        for layer in self.layers:
            A = layer.forward(A, training)
        return A

    def _inference_steps(self) -> list[Callable[[np.ndarray], np.ndarray]]:
        """`inference_steps` of the layers, built again only when the layer list has changed."""
        key, steps = getattr(self, "_steps", ((), []))
        if key != tuple(self.layers):
            steps = inference_steps(self.layers)
            self._steps = (tuple(self.layers), steps)  # one assignment: threads see the old pair or the new
        return steps

    def backward(self, dlogits: np.ndarray) -> None:
        """Back-propagate dlogits (N, 10), filling every layer's grads."""
        dA = dlogits
        for layer in reversed(self.layers):
            dA = layer.backward(dA)
            if dA is None:  # the first trainable layer: nothing below needs a gradient
                return

    def l2_penalty(self, l2: float) -> float:
        """0.5 * l2 * sum(W^2) over the weight matrices (`weight_keys`), not the biases."""
        if not l2:
            return 0.0
        params = self.parameters()
        return 0.5 * l2 * sum(float(np.vdot(params[key], params[key])) for key in self.weight_keys())

    def loss_and_gradients(self, X: np.ndarray, y: np.ndarray, l2: float = 0.0,
                           gradient_scale: float = 1.0) -> float:
        """One forward and backward pass; returns the loss including 0.5 * l2 * sum(W^2).

        The gradients are those of `gradient_scale` times the loss (see `SoftmaxCrossEntropy.backward`)."""
        loss = self.loss.forward(self.forward(X, training=True), y)
        self.backward(self.loss.backward(gradient_scale))
        if l2:
            loss += self.l2_penalty(l2)
            params, grads = self.parameters(), self.gradients()
            for key in self.weight_keys():
                grads[key] += DTYPE(l2 * gradient_scale) * params[key]
        return loss

    @property
    def inference_batch(self) -> int:
        """Rows per forward pass when scoring many images: a convolution's im2col matrix holds
        k*k values per pixel and channel, so conv nets take smaller slices to stay within memory."""
        return 256 if any(layer.kind == "conv2d" for layer in self.layers) else 2048

    def logits(self, X: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """X: (N, 784) float32 in [0, 1] -> (N, 10) logits, computed in slices."""
        X = np.asarray(X, dtype=DTYPE).reshape(-1, N_PIXELS)
        batch_size = batch_size or self.inference_batch
        out = np.empty((len(X), N_CLASSES), dtype=DTYPE)
        for start in range(0, len(X), batch_size):
            out[start:start + batch_size] = self.forward(X[start:start + batch_size])
        return out

    def predict_proba(self, X: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """X: (N, 784) float32 in [0, 1] -> (N, 10) probabilities."""
        return softmax(self.logits(X, batch_size))

    def predict(self, X: np.ndarray) -> np.ndarray:
        """X: (N, 784) -> (N,) predicted digits."""
        return self.predict_proba(X).argmax(axis=1)

    def input_gradient(self, X: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """d log p(class) / d pixels for each row of X: (N, 784), the saliency of each pixel.

        Positive where more ink would make the class more likely. Runs the inference network (no
        dropout, batch normalisation by its running statistics, left unchanged) with the caches that
        backward needs, and skips the parameter gradients. It works on shallow copies of the layers:
        they share the parameters and buffers (only read here) but keep their own flags and caches, so
        several threads may ask one network for saliency at once.
        """
        X = np.asarray(X)
        X = (X if X.dtype == np.float64 else X.astype(DTYPE)).reshape(len(X), -1)  # float64 for gradient checks
        layers = [copy.copy(layer) for layer in self.layers]
        for layer in layers:
            layer.param_grads = False
            if isinstance(layer, Dropout):
                layer.rate = 0.0
            elif isinstance(layer, BatchNorm):
                layer.use_running_stats = True
        first = next((layer for layer in layers if layer.params), None)
        if first is not None:
            first.needs_input_grad = True
        A = X
        for layer in layers:
            A = layer.forward(A, training=True)
        probs = softmax(A)
        # d log softmax_c / d logits = onehot(c) - probs
        dlogits = -probs
        dlogits[np.arange(len(X)), classes] += 1
        dA = dlogits
        for layer in reversed(layers):
            dA = layer.backward(dA)
        return dA.reshape(X.shape)


def inference_steps(layers: list[Layer]) -> list[Callable[[np.ndarray], np.ndarray]]:
    """The layers as inference runs them, each step X -> Y: a convolution or dense layer fused with the
    pooling, batch normalisation and ReLU that follow it (`Conv2D.infer`, `Dense.infer`), dropout left
    out, reshapes as plain reshapes. No step writes to a layer, so threads can share the network."""
    steps: list[Callable[[np.ndarray], np.ndarray]] = []
    i = 0

    def next_is(kind: type) -> Layer | None:
        nonlocal i
        if i < len(layers) and type(layers[i]) is kind:
            i += 1
            return layers[i - 1]
        return None

    while i < len(layers):
        layer = layers[i]
        i += 1
        if type(layer) in (Conv2D, Dense):
            pool = type(layer) is Conv2D and next_is(MaxPool2D) is not None
            norm, relu = next_is(BatchNorm), next_is(ReLU) is not None
            steps.append(partial(fused_inference, layer, pool, norm, relu))
        elif type(layer) is Reshape:
            steps.append(lambda X, shape=layer.shape: X.reshape((len(X),) + shape))
        elif type(layer) is Flatten:
            steps.append(lambda X: X.reshape(len(X), -1))
        elif type(layer) is not Dropout:  # dropout is the identity at inference
            steps.append(layer.forward)
    return steps


def fused_inference(layer: Conv2D | Dense, pool: bool, norm: BatchNorm | None, relu: bool, X: np.ndarray
                    ) -> np.ndarray:
    """One fused step of `inference_steps`; the normalisation's scale and shift are read at each call."""
    scale, shift = norm.inference_affine() if norm is not None else (None, None)
    if pool:
        return layer.infer(X, pool, scale, shift, relu)
    return layer.infer(X, scale=scale, shift=shift, relu=relu)


class Ensemble:
    """Several networks whose probabilities are averaged; the same interface as `Network`.

    Its spec is {"name": "ensemble", "members": [member spec, ...]} and its parameters (and state) are
    the members' under "m<i>." prefixes, so one weights file holds the whole ensemble.
    """

    def __init__(self, spec: dict, rng: np.random.Generator | None = None) -> None:
        members = spec.get("members") if isinstance(spec, dict) else None
        if not isinstance(members, list) or not members:
            raise ValueError("an ensemble spec needs a non-empty 'members' list")
        self.members = [Network(member, rng) for member in members]
        self.spec = {"name": str(spec.get("name", "ensemble")), "members": [m.spec for m in self.members]}
        self.name = self.spec["name"]

    @classmethod
    def of(cls, networks: list[Network], name: str = "ensemble") -> "Ensemble":
        ensemble = cls({"name": name, "members": [n.spec for n in networks]})
        ensemble.members = list(networks)
        return ensemble

    @property
    def layers(self) -> list[Layer]:
        return [layer for member in self.members for layer in member.layers]

    def parameters(self) -> dict[str, np.ndarray]:
        return {f"m{i}.{k}": v for i, m in enumerate(self.members) for k, v in m.parameters().items()}

    def state(self) -> dict[str, np.ndarray]:
        return {f"m{i}.{k}": v for i, m in enumerate(self.members) for k, v in m.state().items()}

    def set_parameters(self, arrays: dict[str, np.ndarray]) -> None:
        self._copy_in(arrays, buffers=False)

    def set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self._copy_in(arrays, buffers=True)

    def _copy_in(self, arrays: dict[str, np.ndarray], buffers: bool) -> None:
        """Each member's "m<i>."-prefixed arrays to its `set_state` (or `set_parameters`)."""
        check_keys(self.state() if buffers else self.parameters(), arrays, "the ensemble")
        for i, member in enumerate(self.members):
            prefix = f"m{i}."
            own = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            (member.set_state if buffers else member.set_parameters)(own)

    def predict_proba(self, X: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """The members' probabilities, averaged."""
        total = self.members[0].predict_proba(X, batch_size)
        for member in self.members[1:]:
            total += member.predict_proba(X, batch_size)
        total /= len(self.members)
        return total

    def logits(self, X: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """log of the averaged probabilities: softmax of these gives the ensemble's probabilities back,
        and temperature scaling applies to them as to a single network's logits."""
        return np.log(np.maximum(self.predict_proba(X, batch_size), np.finfo(DTYPE).tiny))

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_proba(X).argmax(axis=1)

    def input_gradient(self, X: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """The members' saliencies, averaged."""
        return sum(m.input_gradient(X, classes) for m in self.members) / len(self.members)


def build_network(spec: dict, rng: np.random.Generator | None = None) -> Network | Ensemble:
    """A `Network`, or an `Ensemble` when the spec lists members."""
    if isinstance(spec, dict) and "members" in spec:
        return Ensemble(spec, rng)
    return Network(spec, rng)
