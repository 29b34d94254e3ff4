"""Optimizers: a separate step over parameter and gradient dicts, updating in place, optionally keeping
an exponential moving average (EMA) of the parameters for evaluation."""
from __future__ import annotations

import numpy as np


class Averaging:
    """The EMA of the parameters that SGD and Adam keep when `ema_decay` > 0 (0: off, nothing kept).

    After every step, E = d * E + (1 - d) * P with d = min(ema_decay, (1 + t) / (10 + t)) at step t, as
    TensorFlow's ExponentialMovingAverage with num_updates: early on the average follows the weights
    closely instead of remembering their random start for thousands of steps.
    """

    def __init__(self, ema_decay: float = 0.0) -> None:
        if not 0 <= ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        self.ema_decay = ema_decay
        self.ema_steps = 0
        self._ema: dict[str, np.ndarray] = {}

    def averaged(self) -> dict[str, np.ndarray]:
        """The averaged parameters by key (the arrays themselves: copy before changing them)."""
        return self._ema

    def _update_average(self, params: dict[str, np.ndarray]) -> None:
        if not self.ema_decay:
            return
        self.ema_steps += 1
        d = np.float32(min(self.ema_decay, (1 + self.ema_steps) / (10 + self.ema_steps)))
        for key, P in params.items():
            E = self._ema.get(key)
            if E is None:
                self._ema[key] = P.copy()
                continue
            E *= d
            E += (1 - d) * P

    def _average_state(self, scalars: dict, arrays: dict[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
        """The optimizer's state with the average's added; unchanged (as older checkpoints) when off."""
        if self.ema_decay:
            scalars = {**scalars, "ema_steps": self.ema_steps}
            arrays = {**arrays, **{f"ema/{k}": v for k, v in self._ema.items()}}
        return scalars, arrays

    def _load_average(self, scalars: dict, arrays: dict[str, np.ndarray]) -> None:
        self.ema_steps = int(scalars.get("ema_steps", 0))
        self._ema = {k.removeprefix("ema/"): np.array(v) for k, v in arrays.items() if k.startswith("ema/")}


class SGD(Averaging):
    """Minibatch SGD, optionally with (Nesterov) momentum. Gradients are consumed (scaled in place)."""

    def __init__(self, learning_rate: float, momentum: float = 0.0, nesterov: bool = False,
                 ema_decay: float = 0.0) -> None:
        super().__init__(ema_decay)
        if learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {learning_rate}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.nesterov = nesterov
        self._velocity: dict[str, np.ndarray] = {}

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(scalars, arrays) that `load_state` restores: the rate and the velocity, for checkpoints."""
        return self._average_state({"learning_rate": self.learning_rate},
                                   {f"velocity/{k}": v for k, v in self._velocity.items()})

    def load_state(self, scalars: dict, arrays: dict[str, np.ndarray]) -> None:
        self._load_average(scalars, arrays)
        self.learning_rate = float(scalars["learning_rate"])
        self._velocity = {k.removeprefix("velocity/"): np.array(v) for k, v in arrays.items()
                          if k.startswith("velocity/")}

    @property
    def gradient_scale(self) -> float:
        """What to scale the loss gradient by before back-propagation (`Network.loss_and_gradients`):
        the learning rate for plain SGD, whose step then needs no pass over the gradients to scale them
        (for the seed network, 3.2 MB of the 0.8 M first-layer weights every step); 1 with momentum,
        whose velocity sums unscaled gradients while the rate changes under a schedule, and 1 at a rate
        of 0 (the last step of a cosine schedule), which would leave no gradient to scale back."""
        return 1.0 if self.momentum or self.learning_rate <= 0 else self.learning_rate

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray],
             weight_decay: dict[str, float] | None = None, gradient_scale: float = 1.0) -> None:
        """P -= lr * G (G, or the momentum form of it), in place; `grads` is used as scratch space.

        `grads` hold `gradient_scale` times the gradient G (see `gradient_scale`). `weight_decay` maps keys
        to an L2 coefficient l2, making G + l2 * P the gradient. Without momentum that is applied as
        P *= 1 - lr * l2: one pass over the weights and no temporary, where adding l2 * P to G first takes
        two and a temporary the size of the weights."""
        mu = np.float32(self.momentum)
        weight_decay = weight_decay or {}
        # the factor that turns the grads as given into lr * G: 1 when they came pre-scaled by the rate
        rate = np.float32(self.learning_rate / gradient_scale)
        for key, P in params.items():
            G = grads[key]
            l2 = weight_decay.get(key, 0.0)
            if self.momentum:
                if gradient_scale != 1.0:
                    G *= np.float32(1 / gradient_scale)
                if l2:
                    G += np.float32(l2) * P
                V = self._velocity.setdefault(key, np.zeros_like(P))
                V *= mu
                V += G  # V = mu * V + G
                if self.nesterov:
                    G += mu * V
                else:
                    G[...] = V
                G *= np.float32(self.learning_rate)
            else:
                if l2:
                    P *= np.float32(1 - self.learning_rate * l2)
                if rate != 1:
                    G *= rate
            P -= G
        self._update_average(params)


class Adam(Averaging):
    """Adam (Kingma and Ba, 2015) with decoupled weight decay (AdamW): P -= lr * (m_hat / (sqrt(v_hat) + eps) + l2 * P)."""

    def __init__(self, learning_rate: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, ema_decay: float = 0.0) -> None:
        super().__init__(ema_decay)
        if learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {learning_rate}")
        self.learning_rate, self.beta1, self.beta2, self.eps = learning_rate, beta1, beta2, eps
        self._m: dict[str, np.ndarray] = {}
        self._v: dict[str, np.ndarray] = {}
        self.t = 0

    gradient_scale = 1.0  # Adam wants plain gradients (see SGD.gradient_scale)

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(scalars, arrays) that `load_state` restores: rate, step count and both moments."""
        arrays = {**{f"m/{k}": v for k, v in self._m.items()}, **{f"v/{k}": v for k, v in self._v.items()}}
        return self._average_state({"learning_rate": self.learning_rate, "t": self.t}, arrays)

    def load_state(self, scalars: dict, arrays: dict[str, np.ndarray]) -> None:
        self._load_average(scalars, arrays)
        self.learning_rate, self.t = float(scalars["learning_rate"]), int(scalars["t"])
        self._m = {k[2:]: np.array(v) for k, v in arrays.items() if k.startswith("m/")}
        self._v = {k[2:]: np.array(v) for k, v in arrays.items() if k.startswith("v/")}

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray],
             weight_decay: dict[str, float] | None = None, gradient_scale: float = 1.0) -> None:
        """One update in place; `grads` (`gradient_scale` times the gradients) is used as scratch space."""
        self.t += 1
        b1, b2 = np.float32(self.beta1), np.float32(self.beta2)
        # bias corrections folded into the step size, as in the paper's section 2
        step = np.float32(self.learning_rate * np.sqrt(1 - self.beta2 ** self.t) / (1 - self.beta1 ** self.t))
        for key, P in params.items():
            G = grads[key]
            if gradient_scale != 1.0:
                G *= np.float32(1 / gradient_scale)
            M = self._m.setdefault(key, np.zeros_like(P))
            V = self._v.setdefault(key, np.zeros_like(P))
            M *= b1
            M += (1 - b1) * G
            V *= b2
            V += (1 - b2) * G * G
            l2 = (weight_decay or {}).get(key, 0.0)
            if l2:
                P *= np.float32(1 - self.learning_rate * l2)
            np.sqrt(V, out=G)
            G += np.float32(self.eps)
            np.divide(M, G, out=G)
            G *= step
            P -= G
        self._update_average(params)
