"""A model's evaluation report: PNG figures and an `index.html` that shows them, written to one folder.

Figures: confusion matrix, the most confident mistakes, per-class precision and recall, reliability
diagram, training curves. matplotlib is imported only while a report is written (its object API, no
pyplot state), so importing `model/` stays NumPy-only. Every file is replaced atomically, index.html last.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.atomic import write_atomically
from model.calibrate import expected_calibration_error, reliability, scaled_probabilities
from model.evaluate import Evaluation, evaluate, percent
from model.network import N_CLASSES, N_PIXELS
from model.report_html import format_confidence, render_index

N_MISTAKES_SHOWN = 36
GRID_COLUMNS = 6
DPI = 100
FIGURE_FILES = ("confusion.png", "mistakes.png", "precision_recall.png", "reliability.png", "training.png")


@dataclass
class Findings:
    """What the report says, computed once: the figures and the page are drawn from it."""
    evaluation: Evaluation
    probs: np.ndarray        # (N, 10) calibrated (softmax(logits / T))
    probs_plain: np.ndarray  # (N, 10) softmax(logits), T = 1
    predicted: np.ndarray    # (N,)
    confidence: np.ndarray   # (N,) calibrated probability of the predicted digit
    precision: np.ndarray    # (10,), NaN for a digit never predicted
    recall: np.ndarray       # (10,), NaN for a digit absent from the data
    mistakes: np.ndarray     # (M,) indices of wrong answers, most confident first
    temperature: float
    calibrated: bool         # meta holds a fitted temperature
    threshold: float | None  # the "not sure" threshold, if the calibration chose one
    ece_plain: float         # expected calibration error at T = 1
    ece: float               # ... of the probabilities the report uses (the same without a temperature)


def analyse(model, X: np.ndarray, y: np.ndarray) -> Findings:
    """model.weights.Model, X: (N, 784) in [0, 1], y: (N,) -> every number the report shows."""
    if len(y) == 0:
        raise ValueError("an evaluation report needs labelled test images; got none")
    logits = model.network.logits(X)  # (N, 10)
    calibration = model.meta.get("calibration") or {}
    calibrated = "temperature" in calibration
    T = float(calibration["temperature"]) if calibrated else 1.0
    probs_plain = scaled_probabilities(logits, 1.0)
    probs = scaled_probabilities(logits, T) if calibrated else probs_plain
    predicted = probs.argmax(axis=1)
    confidence = probs[np.arange(len(y)), predicted]
    ev = evaluate(predicted, y)
    hits = np.diag(ev.confusion).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = hits / ev.confusion.sum(axis=0)  # columns: how often each answer was right
        recall = hits / ev.confusion.sum(axis=1)     # rows: how often each digit was found
    wrong = np.nonzero(predicted != y)[0]
    mistakes = wrong[np.argsort(-confidence[wrong], kind="stable")]
    threshold = calibration.get("threshold") if calibrated else None
    return Findings(ev, probs, probs_plain, predicted, confidence, precision, recall, mistakes, T, calibrated,
                    None if threshold is None else float(threshold),
                    expected_calibration_error(probs_plain, y), expected_calibration_error(probs, y))


def write_report(model, X_test: np.ndarray, y_test: np.ndarray, out_dir: Path, title: str | None = None,
                 drawn: bool = True) -> Path:
    """Write the figures and index.html of `model` on (X_test (N, 784), y_test (N,)) to out_dir; returns
    index.html's path. Figures with nothing to show (no mistakes, no training history) are left out.
    With `drawn`, the page also shows the model on the project's drawn digits, per style."""
    from matplotlib.figure import Figure  # lazily: matplotlib is needed only here

    X_test = np.asarray(X_test, dtype=np.float32).reshape(-1, N_PIXELS)
    y_test = np.asarray(y_test)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    found = analyse(model, X_test, y_test)
    history = [h for h in (model.meta.get("history") or []) if isinstance(h, dict) and "epoch" in h]
    best_epoch = (model.meta.get("metrics") or {}).get("best_epoch")

    figures = {"confusion.png": plot_confusion(Figure(figsize=(6.4, 5.6), layout="constrained"), found),
               "precision_recall.png": plot_precision_recall(Figure(figsize=(7, 3.4), layout="constrained"), found),
               "reliability.png": plot_reliability(Figure(figsize=(4.2 * (1 + found.calibrated), 4),
                                                          layout="constrained"), found, y_test)}
    if len(found.mistakes):
        figures["mistakes.png"] = plot_mistakes(Figure(layout="constrained"), found, X_test, y_test)
    if history:
        figures["training.png"] = plot_training(Figure(figsize=(10, 3.2), layout="constrained"), history, best_epoch)
    for name, fig in figures.items():
        write_atomically(out_dir / name, png_bytes(fig))
    index = out_dir / "index.html"
    page = render_index(model.meta, found, y_test, sorted(figures), title or f"Evaluation of {model.version}",
                        N_MISTAKES_SHOWN, drawn_by_style(model) if drawn else None)
    write_atomically(index, page.encode("utf-8"))
    for name in FIGURE_FILES:  # an older report's figure that this one has no data for
        if name not in figures:
            (out_dir / name).unlink(missing_ok=True)
    return index


def drawn_by_style(model) -> dict:
    """The model on the drawn digits that metadata quotes (`model.drawn_digits.REPORT_SET`): accuracy,
    and per style its share right and its number of drawings."""
    from model.drawn_digits import evaluate_drawn, report_drawn_set
    ds, X = report_drawn_set()
    result = evaluate_drawn(model.network.predict, ds, X)
    counts = {style: ds.styles.count(style) for style in result["per_style"]}
    return {"accuracy": result["accuracy"], "n": result["n"],
            "per_style": {style: (accuracy, counts[style]) for style, accuracy in result["per_style"].items()}}


# ---- figures -------------------------------------------------------------------------------------

def plot_confusion(fig, found: Findings):
    """Counts written in every cell; the colour is the share of the true digit, on a power scale so
    that a handful of mistakes still shows against the full diagonal."""
    from matplotlib.colors import PowerNorm

    confusion = found.evaluation.confusion
    share = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    norm = PowerNorm(gamma=0.3, vmin=0, vmax=1)
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", norm=norm)
    for i in range(N_CLASSES):
        for j in range(N_CLASSES):
            dark = norm(share[i, j]) > 0.55
            ax.text(j, i, f"{confusion[i, j]}", ha="center", va="center", fontsize=8,
                    color="white" if dark else ("#1b2232" if confusion[i, j] else "#9aa3b5"))
    ax.set(xticks=range(N_CLASSES), yticks=range(N_CLASSES), xlabel="predicted digit", ylabel="true digit",
           title="Confusion matrix (counts)")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true digit")
    return fig


def plot_mistakes(fig, found: Findings, X: np.ndarray, y: np.ndarray):
    """The most confident wrong answers as a grid of 28x28 images, each titled with what went wrong."""
    shown = found.mistakes[:N_MISTAKES_SHOWN]
    n_rows = -(-len(shown) // GRID_COLUMNS)
    n_cols = min(GRID_COLUMNS, len(shown))
    fig.set_size_inches(1.3 * n_cols, 1.45 * n_rows + 0.4)
    fig.suptitle(f"The {len(shown)} most confident mistakes", fontsize=10)
    for k, i in enumerate(shown):
        ax = fig.add_subplot(n_rows, n_cols, k + 1)
        ax.imshow(X[i].reshape(28, 28), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"true {y[i]} → said {found.predicted[i]} ({format_confidence(found.confidence[i])})",
                     fontsize=6.5)
        ax.set_axis_off()
    return fig


def plot_precision_recall(fig, found: Findings):
    """Grouped bars per digit; the axis starts just below the lowest value, which the title says."""
    ax = fig.subplots()
    digits = np.arange(N_CLASSES)
    ax.bar(digits - 0.2, found.precision, width=0.4, label="precision", color="#3b5bdb")
    ax.bar(digits + 0.2, found.recall, width=0.4, label="recall", color="#f08c00")
    values = np.concatenate([found.precision, found.recall])
    low = np.nanmin(values) if np.isfinite(values).any() else 0.0
    bottom = max(0.0, np.floor((low - 0.005) * 100) / 100)  # a whole percent, a little below
    ax.set(xticks=digits, xlabel="digit", ylim=(bottom, 1.0),
           title=f"Precision and recall per digit (axis from {100 * bottom:.0f}%)")
    ax.yaxis.set_major_formatter(lambda v, _: f"{100 * v:.1f}%" if bottom > 0.9 else f"{100 * v:.0f}%")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_reliability(fig, found: Findings, y: np.ndarray):
    """Accuracy against mean confidence per confidence bin, with the diagonal of perfect calibration;
    before (T = 1) and after temperature scaling when the model has a fitted temperature."""
    panels = [("softmax, T = 1", found.probs_plain, found.ece_plain)]
    if found.calibrated:
        panels.append((f"temperature-scaled, T = {found.temperature:.3f}", found.probs, found.ece))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (label, probs, ece) in zip(axes, panels):
        r = reliability(probs, y)
        filled = r.count > 0
        centres, width = (r.edges[:-1] + r.edges[1:]) / 2, r.edges[1] - r.edges[0]
        ax.bar(centres[filled], r.accuracy[filled], width=width, color="#3b5bdb", edgecolor="white",
               label="accuracy in the bin")
        ax.plot(r.confidence[filled], r.accuracy[filled], "o", color="#f08c00", markersize=4,
                label="at the bin's mean confidence")
        ax.plot([0, 1], [0, 1], "--", color="#566076", linewidth=1, label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
               title=f"{label}\nECE {percent(ece)}")
        ax.title.set_fontsize(9)
        ax.legend(loc="upper left", fontsize=7)
    return fig


def plot_training(fig, history: list[dict], best_epoch: int | None):
    """Loss, validation accuracy and learning rate per epoch, the kept epoch marked."""
    epochs = np.array([h["epoch"] for h in history])
    series = [("loss", "training loss", "#3b5bdb"), ("val_accuracy", "validation accuracy", "#0f7b55"),
              ("learning_rate", "learning rate", "#f08c00")]
    series = [s for s in series if any(h.get(s[0]) is not None for h in history)]
    axes = fig.subplots(1, max(len(series), 1), squeeze=False)[0]
    for ax, (key, label, colour) in zip(axes, series):
        values = np.array([np.nan if h.get(key) is None else h[key] for h in history], dtype=np.float64)
        ax.plot(epochs, values, "o-", color=colour, markersize=3, linewidth=1.5)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="#566076", linestyle=":", linewidth=1)
        ax.set(title=label, xlabel="epoch")
        ax.title.set_fontsize(10)
        ax.grid(alpha=0.3)
        if key == "val_accuracy":
            ax.yaxis.set_major_formatter(lambda v, _: f"{100 * v:.1f}%")
    if best_epoch is not None:
        fig.suptitle(f"Training curves (dotted: epoch {best_epoch}, the one kept)", fontsize=10)
    return fig


# ---- files ---------------------------------------------------------------------------------------

def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()
