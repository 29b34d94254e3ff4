"""Tune the strokes preprocessing for drawn digits, and compare models on drawings, on the tuning set.

The drawn-digit *tuning* set (`model.drawn_digits.TUNING_SET`: other seeds than the report's set) goes through
the service's stroke preprocessing at several pen widths and render sizes, and every model given is
scored on each. The report set, which metadata and reports quote, is never used to choose; neither is
the MNIST test set.

    python3 -m benchmarks.drawn_tuning                       # every model in weights/
    python3 -m benchmarks.drawn_tuning --model a.npz --model b.npz --widths 0.10 0.12 0.14

Prints accuracy per setting and model (the shipped setting marked), each model's best setting, and
the styles each model misses most at the shipped setting.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from model.drawn_digits import TUNING_SET, drawn_digits, drawn_inputs
from model.preprocess import RASTER, STROKE_WIDTH
from model.weights import WeightsError, load_model

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = (0.08, 0.10, 0.12, 0.14, 0.16, 0.18)
RASTERS = (28, 32, 40, 56)


def sweep(models: dict, ds, settings: list[tuple[int, float]]) -> dict[tuple[int, float], dict[str, float]]:
    """(raster, stroke_width) -> model name -> accuracy on `ds`."""
    table = {}
    for raster, width in settings:
        X = drawn_inputs(ds, raster=raster, stroke_width=width)
        table[raster, width] = {name: float((m.predict_proba(X).argmax(axis=1) == ds.labels).mean())
                                for name, m in models.items()}
    return table


def print_table(title: str, table: dict, names: list[str], label) -> None:
    print(f"\n{title}")
    print(f"  {'':18}" + "".join(f"{name:>19}" for name in names))
    for setting, row in table.items():
        mark = "  (shipped)" if setting == (RASTER, STROKE_WIDTH) else ""
        print(f"  {label(setting):18}" + "".join(f"{100 * row[n]:18.2f}%" for n in names) + mark)
    best = {n: max(table, key=lambda s: (table[s][n], s == (RASTER, STROKE_WIDTH))) for n in names}
    print("  best: " + "; ".join(f"{n}: {label(best[n])}" for n in names))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", type=Path,
                        help="weights file to score (repeatable); default: every .npz in --weights-dir")
    parser.add_argument("--weights-dir", type=Path, default=ROOT / "weights")
    parser.add_argument("--widths", type=float, nargs="+", default=WIDTHS, help="pen widths, fractions of the raster")
    parser.add_argument("--rasters", type=int, nargs="+", default=RASTERS, help="render sizes in pixels")
    args = parser.parse_args(argv)
    paths = args.model or sorted(args.weights_dir.glob("*.npz"))
    models = {}
    for path in paths:
        try:
            model = load_model(path)
        except WeightsError as exc:
            parser.error(str(exc))
        arch, digest = model.version.split("-")[0], model.version.rsplit("-", 1)[-1]
        models[f"{arch}-{digest}"] = model  # seed-994442ba: short enough for a column
    if not models:
        parser.error(f"no weights files in {args.weights_dir}")
    names = list(models)
    ds = drawn_digits(**TUNING_SET)
    print(f"tuning set: {len(ds.labels)} drawings ({TUNING_SET['per_style']} per style, seed {TUNING_SET['seed']}); "
          f"shipped: raster {RASTER}, pen width {STROKE_WIDTH}")
    print_table("accuracy by pen width (raster %d)" % RASTER, sweep(models, ds, [(RASTER, w) for w in args.widths]),
                names, lambda s: f"width {s[1]:.3f}")
    print_table(f"accuracy by render size (pen width {STROKE_WIDTH})",
                sweep(models, ds, [(r, STROKE_WIDTH) for r in args.rasters]), names, lambda s: f"raster {s[0]}")
    X, styles = drawn_inputs(ds), np.array(ds.styles)
    print("\nmost missed styles at the shipped setting (misses of 20):")
    for name, model in models.items():
        wrong = model.predict_proba(X).argmax(axis=1) != ds.labels
        found, counts = np.unique(styles[wrong], return_counts=True)
        worst = sorted(zip(counts, found), key=lambda cf: (-cf[0], cf[1]))[:4]
        print(f"  {name}: " + (", ".join(f"{style} {count}" for count, style in worst) or "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
