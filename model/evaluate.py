"""Accuracy, per-class accuracy and the confusion matrix of a network on labelled data."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.network import N_CLASSES


@dataclass
class Evaluation:
    accuracy: float
    per_class_accuracy: np.ndarray  # (10,)
    confusion: np.ndarray           # (10, 10): rows true label, columns prediction
    n: int


def evaluate(predicted: np.ndarray, y: np.ndarray) -> Evaluation:
    """predicted, y: (N,) digits -> accuracy, per-class accuracy and confusion matrix."""
    confusion = np.zeros((N_CLASSES, N_CLASSES), dtype=np.int64)
    np.add.at(confusion, (y, predicted), 1)
    totals = confusion.sum(axis=1)
    per_class = np.divide(np.diag(confusion), totals, out=np.full(N_CLASSES, np.nan), where=totals > 0)
    return Evaluation(float((predicted == y).mean()), per_class, confusion, len(y))


def format_evaluation(ev: Evaluation, title: str) -> str:
    """A plain-text report: accuracy in percent, per-class accuracy and the confusion matrix."""
    lines = [f"{title}: test accuracy {100 * ev.accuracy:.2f}% ({int(np.trace(ev.confusion))}/{ev.n})", "",
             "per-class accuracy:"]
    lines += [f"  {d}: {100 * a:6.2f}%  (n={int(ev.confusion[d].sum())})" for d, a in enumerate(ev.per_class_accuracy)]
    lines += ["", "confusion matrix (rows: true digit, columns: predicted):",
              "       " + "".join(f"{d:>6}" for d in range(N_CLASSES))]
    lines += [f"  {d:>3}  " + "".join(f"{c:>6}" for c in row) for d, row in enumerate(ev.confusion)]
    return "\n".join(lines)


def percent(fraction: float) -> str:
    """0.98765 -> "98.8%": how reports, the page and the command line write accuracies."""
    return f"{100 * fraction:.1f}%"
