"""Which model the service should serve by default: the best reader of drawings it can afford.

The rule, from a model's metadata alone: among models whose forward pass fits the serving budget,
the highest accuracy on the project's drawn-digit set (`model.drawn_digits`), then on validation, then the
lower validation log-loss. The MNIST test set is never read here.
"""
from __future__ import annotations

# Forward-pass work per image that the service affords. With the micro-batched serving path, one
# worker on the 2-core host (16 concurrent requests; benchmarks/README.md, 2026-12-03) answered the
# page's own request (strokes with saliency) at p99 48-56 ms with the 23-MFLOP cnn and 120 ms with
# the 94-MFLOP ensemble, and plain strokes at 29-33 ms and 43-50 ms: the ensemble has no margin left
# on strokes, misses the page's request by more than twice, and serves half the requests before it
# sheds load. 32 MFLOP leaves the cnn's margin; a model near the line is measured with
# benchmarks/serve_load.py before it ships.
SERVING_BUDGET_MFLOP = 32.0


def forward_mflop(spec: dict) -> float:
    """Multiply-adds x 2 of one image's forward pass, in millions: dense and convolution layers (the
    elementwise work is a few percent). An ensemble costs the sum of its members."""
    if "members" in spec:
        return sum(forward_mflop(member) for member in spec["members"])
    flops, side = 0, 28
    for layer in spec["layers"]:
        kind = layer["type"]
        if kind == "dense":
            flops += 2 * layer["n_in"] * layer["n_out"]
        elif kind == "conv2d":
            k, stride = layer["kernel"], layer.get("stride", 1)
            if layer.get("padding", "same") == "valid":
                side -= k - 1
            side = -(-side // stride)
            flops += 2 * k * k * layer["n_in"] * layer["n_out"] * side * side
        elif kind == "maxpool2d":
            side //= 2
    return flops / 1e6


def serving_rank(meta: dict) -> tuple[float, float, float]:
    """Sort key, larger is better: drawn-digit accuracy, validation accuracy, minus validation NLL."""
    metrics = meta.get("metrics") or {}
    nll = (meta.get("calibration") or {}).get("nll_before", float("inf"))
    return (metrics.get("drawn_accuracy", 0.0), metrics.get("val_accuracy", 0.0), -nll)


def choose_default(metas: list[dict], budget_mflop: float = SERVING_BUDGET_MFLOP) -> dict:
    """The metadata of the model to serve: the best `serving_rank` among those within the budget.

    ValueError if none fits."""
    affordable = [meta for meta in metas if forward_mflop(meta["architecture"]) <= budget_mflop]
    if not affordable:
        raise ValueError(f"no model fits the serving budget of {budget_mflop:g} MFLOP per image")
    return max(affordable, key=serving_rank)
