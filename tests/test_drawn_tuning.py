"""benchmarks/drawn_tuning.py scores models on the tuning set (never the report set) per preprocessing setting."""
import re
from pathlib import Path

import numpy as np

from benchmarks import drawn_tuning
from model.drawn import REPORT_SET, TUNING_SET, drawn_digits, drawn_inputs
from model.weights import load_model

SEED_MODEL = next(Path(__file__).resolve().parents[1].joinpath("weights").glob("seed-*.npz"))


def test_the_tuning_set_is_not_the_report_set():
    assert TUNING_SET["seed"] != REPORT_SET["seed"]
    tuning, report = drawn_digits(2, TUNING_SET["seed"]), drawn_digits(2, REPORT_SET["seed"])
    assert not np.array_equal(drawn_inputs(tuning), drawn_inputs(report))


def test_sweep_scores_each_setting_as_the_model_predicts():
    model = load_model(SEED_MODEL)
    ds = drawn_digits(2, TUNING_SET["seed"])
    table = drawn_tuning.sweep({"seed": model}, ds, [(32, 0.08), (32, 0.12)])
    for (raster, width), row in table.items():
        X = drawn_inputs(ds, raster=raster, stroke_width=width)
        assert row["seed"] == (model.predict_proba(X).argmax(axis=1) == ds.labels).mean()
    assert set(table) == {(32, 0.08), (32, 0.12)}


def test_the_script_prints_both_sweeps_with_the_shipped_setting_marked(capsys):
    assert drawn_tuning.main(["--model", str(SEED_MODEL), "--widths", "0.1", "0.12", "--rasters", "32"]) == 0
    out = capsys.readouterr().out
    assert "660 drawings" in out
    assert re.search(r"width 0\.120\s+\d+\.\d\d%\s+\(shipped\)", out), out
    assert re.search(r"raster 32\s+\d+\.\d\d%\s+\(shipped\)", out), out
    assert out.count("best: ") == 2 and "most missed styles" in out
