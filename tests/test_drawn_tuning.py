"""benchmarks/drawn_tuning.py scores models on the tuning set (never the report set) per preprocessing setting."""
import re
from pathlib import Path

import numpy as np

from benchmarks import drawn_tuning
from model.drawn_digits import REPORT_SET, TUNING_SET, drawn_digits, drawn_inputs

SEED_MODEL = next(Path(__file__).resolve().parents[1].joinpath("weights").glob("seed-*.npz"))


def test_the_tuning_set_is_not_the_report_set():
    assert TUNING_SET["seed"] != REPORT_SET["seed"]
    tuning, report = drawn_digits(2, TUNING_SET["seed"]), drawn_digits(2, REPORT_SET["seed"])
    assert not np.array_equal(drawn_inputs(tuning), drawn_inputs(report))


class Answers:
    """A stand-in model that answers `digits` (one per drawing, in order) and records what it was shown."""

    def __init__(self, digits) -> None:
        self.digits, self.shown = np.asarray(digits), []

    def predict_proba(self, X):
        self.shown.append(X)
        return np.eye(10)[self.digits]


def test_sweep_scores_each_setting_by_how_many_answers_match_the_labels():
    ds = drawn_digits(2, TUNING_SET["seed"])
    n = len(ds.labels)
    half_right = np.where(np.arange(n) < n // 2, ds.labels, (ds.labels + 1) % 10)
    models = {"right": Answers(ds.labels), "wrong": Answers((ds.labels + 1) % 10), "half": Answers(half_right)}
    table = drawn_tuning.sweep(models, ds, [(32, 0.08), (32, 0.12)])
    row = {"right": 1.0, "wrong": 0.0, "half": (n // 2) / n}
    assert table == {(32, 0.08): row, (32, 0.12): row}
    # each setting draws its own inputs: the thicker stroke inks more of every 28x28 input
    thin, thick = models["right"].shown
    assert thin.shape == thick.shape == (n, 784)
    assert (thick > 0.5).sum(axis=1).mean() > (thin > 0.5).sum(axis=1).mean()


def test_the_script_prints_both_sweeps_with_the_shipped_setting_marked(capsys):
    assert drawn_tuning.main(["--model", str(SEED_MODEL), "--widths", "0.1", "0.12", "--rasters", "32"]) == 0
    out = capsys.readouterr().out
    assert "660 drawings" in out
    assert re.search(r"width 0\.120\s+\d+\.\d\d%\s+\(shipped\)", out), out
    assert re.search(r"raster 32\s+\d+\.\d\d%\s+\(shipped\)", out), out
    assert out.count("best: ") == 2 and "most missed styles" in out
