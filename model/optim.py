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

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        """P -= lr * G (G, or the momentum form of it), in place; `grads` is used as scratch space."""
        lr, mu = np.float32(self.learning_rate), np.float32(self.momentum)
        for key, P in params.items():
            G = grads[key]
            if self.momentum:
                V = self._velocity.setdefault(key, np.zeros_like(P))
                V *= mu
                V += G  # V = mu * V + G
                if self.nesterov:
                    G += mu * V
                else:
                    G[...] = V
            G *= lr
            P -= G
