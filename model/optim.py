"""Optimizers: a separate step over parameter and gradient dicts, updating in place."""
from __future__ import annotations

import numpy as np


class SGD:
    """Minibatch SGD, optionally with (Nesterov) momentum. Gradients are consumed (scaled in place)."""

    def __init__(self, learning_rate: float, momentum: float = 0.0, nesterov: bool = False) -> None:
        if learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {learning_rate}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.nesterov = nesterov
        self._velocity: dict[str, np.ndarray] = {}

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray],
             weight_decay: dict[str, float] | None = None) -> None:
        """P -= lr * G (G, or the momentum form of it), in place; `grads` is used as scratch space.

        `weight_decay` maps keys to an L2 coefficient l2, making G + l2 * P the gradient. Without momentum
        that is applied as P *= 1 - lr * l2: one pass over the weights and no temporary, where adding
        l2 * P to G first takes two and a temporary the size of the weights."""
        lr, mu = np.float32(self.learning_rate), np.float32(self.momentum)
        weight_decay = weight_decay or {}
        for key, P in params.items():
            G = grads[key]
            l2 = weight_decay.get(key, 0.0)
            if self.momentum:
                if l2:
                    G += np.float32(l2) * P
                V = self._velocity.setdefault(key, np.zeros_like(P))
                V *= mu
                V += G  # V = mu * V + G
                if self.nesterov:
                    G += mu * V
                else:
                    G[...] = V
            elif l2:
                P *= np.float32(1 - self.learning_rate * l2)
            G *= lr
            P -= G
