"""The evaluation report's `index.html`: one static page, inline CSS, images linked relatively.

Only text and tables are made here; `model/report.py` computes the numbers and draws the figures.
"""
from __future__ import annotations

from html import escape

import numpy as np

from model.network import N_CLASSES

STYLE = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f3f5fa; color: #1b2232; line-height: 1.5;
       font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Liberation Sans", sans-serif; }
main { max-width: 60rem; margin: 0 auto; padding: 1rem; }
h1 { font-size: 1.5rem; margin: 0.5rem 0; overflow-wrap: anywhere; }
h2 { font-size: 1.15rem; margin: 0 0 0.5rem; }
section { background: #fff; border: 1px solid #dfe3ec; border-radius: 12px; padding: 1rem; margin: 1rem 0; }
.lead { color: #3d4658; margin: 0; }
.lead strong { color: #1b2232; }
code { font-family: ui-monospace, Menlo, Consolas, "Liberation Mono", monospace; font-size: 0.9em;
       overflow-wrap: anywhere; }
img { display: block; max-width: 100%; height: auto; margin: 0.5rem auto; }
figure { margin: 0; }
figcaption, .note { color: #3d4658; font-size: 0.92rem; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; font-size: 0.92rem; }
th, td { padding: 0.25rem 0.6rem; text-align: right; border-bottom: 1px solid #dfe3ec; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #eef1f7; }
details { margin-top: 0.5rem; }
summary { cursor: pointer; color: #2f4ac0; }
"""

CALIBRATION_LABELS = {
    "temperature": "temperature T", "threshold": "“not sure” below", "ece_before": "ECE before (T = 1)",
    "ece_after": "ECE after", "nll_before": "NLL before", "nll_after": "NLL after",
    "coverage": "share of answers given as sure", "precision_kept": "accuracy of those answers",
    "n": "validation images",
}
PERCENT_KEYS = ("threshold", "ece_before", "ece_after", "coverage", "precision_kept")


def render_index(meta: dict, found, y: np.ndarray, figures: list[str], title: str, n_shown: int) -> str:
    """The page: `found` is a `model.report.Findings`, `figures` the PNG names written beside it,
    `n_shown` how many of the most confident mistakes the grid holds."""
    ev = found.evaluation
    architecture = (meta.get("architecture") or {}).get("name", "custom")
    parts = [
        f'<h1>{escape(title)}</h1>',
        f'<p class="lead">Model <code id="model-version">{escape(str(meta.get("version", "?")))}</code> '
        f'({escape(str(architecture))}) · test accuracy <strong id="test-accuracy">{100 * ev.accuracy:.2f}%</strong> '
        f'on {ev.n:,} images ({int(np.trace(ev.confusion)):,} right) · created '
        f'{escape(str(meta.get("created_at", "?")))}</p>',
        metrics_section(meta.get("metrics") or {}),
        calibration_section(meta.get("calibration") or {}),
        figure_section("Confusion matrix", "confusion.png", figures,
                       "Confusion matrix: rows are the true digit, columns the predicted one; every cell shows "
                       "its count.", "Rows: true digit; columns: what the model said. Off the diagonal are "
                       "the mistakes."),
        mistakes_section(found, y, figures, n_shown),
        precision_recall_section(found, figures),
        figure_section("Reliability", "reliability.png", figures,
                       "Reliability diagram: accuracy against confidence per confidence bin, with the "
                       "diagonal of perfect calibration" + (", before and after temperature scaling."
                                                            if found.calibrated else "."),
                       "A well-calibrated model's bars follow the diagonal: of the answers given with 90% "
                       "confidence, 90% are right. ECE is the count-weighted mean gap.",
                       before=ece_summary(found)),
        training_section(meta, figures),
    ]
    return ("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n"
            + "\n".join(parts) + "\n</main>\n</body>\n</html>\n")


def figure_section(heading: str, name: str, figures: list[str], alt: str, caption: str,
                   before: str = "", after: str = "") -> str:
    """A section with its heading, `before`, the figure (if it was written) and `after`."""
    figure = (f'<figure><img src="{name}" alt="{escape(alt)}" loading="lazy">'
              f'<figcaption>{caption}</figcaption></figure>\n') if name in figures else ""
    return f"<section>\n<h2>{heading}</h2>\n{before}{figure}{after}</section>"


def table(header: list[str], rows: list[list[str]], table_id: str = "") -> str:
    head = "".join(f"<th scope=\"col\">{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>\n" for row in rows)
    id_attr = f' id="{table_id}"' if table_id else ""
    return f'<div class="table-wrap"><table{id_attr}><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table></div>'


def format_confidence(p: float) -> str:
    """98%, or 99.9% above 99% so that a near-certain answer does not read as 100%."""
    return f"{100 * p:.1f}%" if 0.99 < p < 1 else f"{100 * p:.0f}%"


def format_value(key: str, value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return escape(str(value))
    if isinstance(value, float) and ("accuracy" in key or key in ("coverage", "precision_kept")) and 0 <= value <= 1:
        return f"{100 * value:.2f}%"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}"


def ece_summary(found) -> str:
    text = f"Expected calibration error on these test images: {100 * found.ece_plain:.2f}% with the plain softmax"
    if found.calibrated:
        text += f", {100 * found.ece:.2f}% after temperature scaling (T = {found.temperature:.3f})"
    return f'<p id="ece">{text}.</p>\n'


def metrics_section(metrics: dict) -> str:
    if not metrics:
        return "<section>\n<h2>Training metrics</h2>\n<p class=\"note\">None recorded in the model's metadata.</p>\n</section>"
    rows = [[escape(str(k)), format_value(k, v)] for k, v in sorted(metrics.items())]
    return ("<section>\n<h2>Training metrics</h2>\n<p class=\"note\">As recorded when the model was trained "
            "(validation chose the epoch; the test set only reports).</p>\n"
            + table(["metric", "value"], rows, "metrics") + "\n</section>")


def calibration_order(key: str) -> tuple:
    """The known quantities in CALIBRATION_LABELS's order, then any others by name."""
    keys = list(CALIBRATION_LABELS)
    return (keys.index(key), "") if key in keys else (len(keys), key)


def calibration_section(calibration: dict) -> str:
    if "temperature" not in calibration:
        return ("<section>\n<h2>Calibration</h2>\n<p class=\"note\" id=\"no-calibration\">This model has no "
                "fitted temperature: its confidences are the plain softmax (T = 1).</p>\n</section>")
    rows = [[CALIBRATION_LABELS.get(k, escape(str(k))),
             f"{100 * v:.2f}%" if k in PERCENT_KEYS and isinstance(v, (int, float)) else format_value(k, v)]
            for k, v in sorted(calibration.items(), key=lambda kv: calibration_order(kv[0]))]
    return ("<section>\n<h2>Calibration</h2>\n<p class=\"note\">Fitted on validation data: the temperature "
            "divides the logits (never changing the answer), and below the threshold the service says "
            "“not sure”. The confidences in this report are temperature-scaled.</p>\n"
            + table(["quantity", "value"], rows, "calibration") + "\n</section>")


def mistakes_section(found, y: np.ndarray, figures: list[str], n_shown: int) -> str:
    n_wrong, n = len(found.mistakes), len(y)
    shown = found.mistakes[:n_shown]
    summary = (f'<p id="mistakes-summary" data-mistakes="{n_wrong}" data-total="{n}" data-shown="{len(shown)}">'
               f'{n_wrong:,} of {n:,} test images are misclassified ({100 * n_wrong / n:.2f}%)'
               + (f"; the {len(shown)} the model was surest of:" if n_wrong else ".") + "</p>\n")
    threshold = found.threshold
    if threshold is not None and n_wrong:
        unsure_wrong = int((found.confidence[found.mistakes] < threshold).sum())
        right = np.setdiff1d(np.arange(n), found.mistakes)
        unsure_right = int((found.confidence[right] < threshold).sum())
        summary += (f'<p class="note">With the “not sure” threshold of {100 * threshold:.1f}%, the service '
                    f'would say “not sure” to {unsure_wrong:,} of these {n_wrong:,} mistakes, and to '
                    f'{unsure_right:,} of the {len(right):,} right answers.</p>\n')
    if not n_wrong:
        return f"<section>\n<h2>Most confident mistakes</h2>\n{summary}</section>"
    rows = [[str(rank), str(int(i)), str(int(y[i])), str(int(found.predicted[i])),
             format_confidence(found.confidence[i])] for rank, i in enumerate(shown, 1)]
    listing = ("<details><summary>The same mistakes as a table</summary>\n"
               + table(["#", "test image", "true", "said", "confidence"], rows, "mistakes") + "\n</details>\n")
    return figure_section("Most confident mistakes", "mistakes.png", figures,
                          f"The {len(shown)} test images the model got wrong with the highest confidence, each "
                          "titled with its true digit, the model's answer and its confidence.",
                          "Each image: the true digit, what the model said, and how sure it was.",
                          before=summary, after=listing)


def precision_recall_section(found, figures: list[str]) -> str:
    confusion = found.evaluation.confusion

    def pct(v: float) -> str:
        return "—" if np.isnan(v) else f"{100 * v:.2f}%"

    rows = [[str(d), pct(found.precision[d]), pct(found.recall[d]), f"{int(confusion[d].sum()):,}",
             f"{int(confusion[:, d].sum()):,}"] for d in range(N_CLASSES)]
    numbers = table(["digit", "precision", "recall", "images of it", "times said"], rows, "per-class")
    return figure_section("Precision and recall per digit", "precision_recall.png", figures,
                          "Bar chart of precision and recall for each digit, 0 to 9.",
                          "Precision: of the times the model said this digit, the share that were right. "
                          "Recall: of the images of this digit, the share it found.", after=numbers + "\n")


def training_section(meta: dict, figures: list[str]) -> str:
    if "training.png" not in figures:
        return ("<section>\n<h2>Training curves</h2>\n<p class=\"note\" id=\"no-history\">This model's metadata "
                "holds no training history, so there are no curves to show.</p>\n</section>")
    return figure_section("Training curves", "training.png", figures,
                          "Training loss, validation accuracy and learning rate for each epoch.",
                          "Per epoch, as recorded by the trainer.")
