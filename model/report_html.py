"""The evaluation report's `index.html`: one static page, inline CSS, images linked relatively.

The page is the Jinja2 template `model/templates/report.html`, autoescaped, so every value from a
model's metadata is shown as text. Here: the numbers formatted for it; `model/report.py` computes them.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from model.evaluate import percent
from model.network import N_CLASSES

TEMPLATES = Path(__file__).parent / "templates"
CALIBRATION_LABELS = {
    "temperature": "temperature T", "threshold": "“not sure” below", "ece_before": "ECE before (T = 1)",
    "ece_after": "ECE after", "nll_before": "NLL before", "nll_after": "NLL after",
    "coverage": "share of answers given as sure", "precision_kept": "accuracy of those answers",
    "n": "validation images",
}
PERCENT_KEYS = ("threshold", "ece_before", "ece_after", "coverage", "precision_kept")


@lru_cache(maxsize=1)
def template():
    import jinja2  # lazily, as matplotlib: only `digits evaluate --report` needs it

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True,
                             lstrip_blocks=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template("report.html")


def render_index(meta: dict, found, y: np.ndarray, figures: list[str], title: str, n_shown: int,
                 drawn: dict | None = None) -> str:
    """The page: `found` is a `model.report.Findings`, `figures` the PNG names written beside it,
    `n_shown` how many of the most confident mistakes the grid holds, `drawn` the model on the drawn
    digits (`model.report.drawn_by_style`) or None."""
    ev = found.evaluation
    return template().render(
        title=title, version=str(meta.get("version", "?")),
        architecture=str((meta.get("architecture") or {}).get("name", "custom")),
        accuracy=percent(ev.accuracy), n=f"{ev.n:,}", n_right=f"{int(np.trace(ev.confusion)):,}",
        created=str(meta.get("created_at", "?")), figures=figures,
        metrics=metrics_rows(meta.get("metrics") or {}), calibration=calibration_rows(meta.get("calibration") or {}),
        mistakes=mistakes_summary(found, y, n_shown), per_class=per_class_rows(found),
        ece=ece_summary(found), calibrated=found.calibrated,
        drawn=None if drawn is None else {
            "accuracy": percent(drawn["accuracy"]), "n": f"{drawn['n']:,}", "n_styles": len(drawn["per_style"]),
            "rows": [[style, percent(acc), f"{n:,}"] for style, (acc, n) in drawn["per_style"].items()]})


def format_confidence(p: float) -> str:
    """98%, or 99.9% above 99% so that a near-certain answer does not read as 100%."""
    return f"{100 * p:.1f}%" if 0.99 < p < 1 else f"{100 * p:.0f}%"


def format_value(key: str, value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and ("accuracy" in key or key in ("coverage", "precision_kept")) and 0 <= value <= 1:
        return percent(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}"


def ece_summary(found) -> str:
    text = f"Expected calibration error on these test images: {percent(found.ece_plain)} with the plain softmax"
    if found.calibrated:
        text += f", {percent(found.ece)} after temperature scaling (T = {found.temperature:.3f})"
    return text


def metrics_rows(metrics: dict) -> list[list[str]]:
    return [[str(k), format_value(k, v)] for k, v in sorted(metrics.items())]


def calibration_order(key: str) -> tuple:
    """The known quantities in CALIBRATION_LABELS's order, then any others by name."""
    keys = list(CALIBRATION_LABELS)
    return (keys.index(key), "") if key in keys else (len(keys), key)


def calibration_rows(calibration: dict) -> list[list[str]] | None:
    """None without a fitted temperature."""
    if "temperature" not in calibration:
        return None
    return [[CALIBRATION_LABELS.get(k, str(k)),
             percent(v) if k in PERCENT_KEYS and isinstance(v, (int, float)) else format_value(k, v)]
            for k, v in sorted(calibration.items(), key=lambda kv: calibration_order(kv[0]))]


def mistakes_summary(found, y: np.ndarray, n_shown: int) -> dict:
    """How many mistakes, the table of the `n_shown` surest, and how many the "not sure" threshold catches."""
    n_wrong, n = len(found.mistakes), len(y)
    shown = found.mistakes[:n_shown]
    unsure = None
    if found.threshold is not None and n_wrong:
        right = np.setdiff1d(np.arange(n), found.mistakes)
        unsure = {"threshold": f"{100 * found.threshold:.1f}%",
                  "wrong": f"{int((found.confidence[found.mistakes] < found.threshold).sum()):,}",
                  "right": f"{int((found.confidence[right] < found.threshold).sum()):,}",
                  "n_right": f"{len(right):,}"}
    rows = [[str(rank), str(int(i)), str(int(y[i])), str(int(found.predicted[i])),
             format_confidence(found.confidence[i])] for rank, i in enumerate(shown, 1)]
    return {"n_wrong": n_wrong, "n": n, "share": percent(n_wrong / n), "rows": rows, "unsure": unsure}


def per_class_rows(found) -> list[list[str]]:
    confusion = found.evaluation.confusion

    def pct(v: float) -> str:
        return "—" if np.isnan(v) else percent(v)

    return [[str(d), pct(found.precision[d]), pct(found.recall[d]), f"{int(confusion[d].sum()):,}",
             f"{int(confusion[:, d].sum()):,}"] for d in range(N_CLASSES)]
