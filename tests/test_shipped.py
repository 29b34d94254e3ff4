"""Every shipped model's claimed test accuracy is what it really scores on the MNIST test set."""
import hashlib
from pathlib import Path

import numpy as np
import pytest

from model.active import active_path
from model.data import SHA256, load_split
from model.weights import load_model

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
SHIPPED = sorted(WEIGHTS.glob("*.npz"))


def test_a_model_is_shipped_and_active():
    assert SHIPPED, "weights/ holds no .npz"
    assert active_path(WEIGHTS) in SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_model_scores_exactly_its_recorded_test_accuracy(path, mnist_dir):
    checksums = {}
    X, y = load_split(mnist_dir, "t10k", checksums)
    model = load_model(path)
    n_correct = int((model.network.predict(X) == y).sum())
    metrics = model.meta["metrics"]
    assert n_correct == round(metrics["test_accuracy"] * len(y)), f"{path.name}: {n_correct}/{len(y)}"
    assert model.meta["data_checksums"]["t10k-images-idx3-ubyte"] == SHA256["t10k-images-idx3-ubyte"]


def measured_test_accuracy(path: Path, mnist_dir: Path) -> float:
    """The model's accuracy on the MNIST test set, measured now (not read from its metadata)."""
    X, y = load_split(mnist_dir, "t10k", {})
    return float((load_model(path).network.predict(X) == y).mean())


def test_the_shipped_default_reaches_the_seed_target(mnist_dir):
    accuracy = measured_test_accuracy(active_path(WEIGHTS), mnist_dir)
    assert accuracy >= 0.979, f"the active model scores {accuracy:.4f} on the test set"


# The drawings the shipped figures were measured on. A change to drawing or preprocessing changes these:
# re-measure every shipped model (`digits calibrate weights/X.npz`) and write the new fingerprints here.
REPORT_DRAWN_SHA256 = "1f9df7818834e848fdd750b3e48c9fa0c85c0ca7d04d9c8f6482761ba4d72513"
REPORT_SCRIBBLES_SHA256 = "320e22dc1653f4116193472e8b3091ea5709b918b74348e1a90f1f8021088dd7"


def fingerprint(X, labels=None) -> str:
    digest = hashlib.sha256(np.round(X, 3).astype(np.float32).tobytes())
    if labels is not None:
        digest.update(np.asarray(labels, np.int64).tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def report_sets():
    """The report's drawn digits and scribbles, built here rather than through beyond_mnist."""
    from model.drawn_digits import REPORT_SCRIBBLES, REPORT_SET, drawn_digits, drawn_inputs, scribbles
    drawn = drawn_digits(**REPORT_SET)
    return drawn_inputs(drawn), drawn.labels, drawn_inputs(scribbles(REPORT_SCRIBBLES["n"], REPORT_SCRIBBLES["seed"]))


def test_the_drawings_behind_the_shipped_figures_are_the_ones_measured(report_sets):
    X, labels, junk = report_sets
    assert fingerprint(X, labels) == REPORT_DRAWN_SHA256
    assert fingerprint(junk) == REPORT_SCRIBBLES_SHA256


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_model_scores_its_recorded_figures_on_drawn_digits_and_scribbles(path, report_sets):
    X, labels, junk = report_sets
    model = load_model(path)
    metrics = model.meta["metrics"]
    assert "drawn_accuracy" in metrics, f"{path.name}: run digits calibrate {path} to record them"
    probs = model.predict_proba(X)
    sure = probs.max(axis=1) >= model.threshold
    right = probs.argmax(axis=1) == labels
    measured = {"drawn_accuracy": right.mean(), "drawn_n": len(labels), "drawn_not_sure": 1 - sure.mean(),
                "drawn_sure_accuracy": right[sure].mean(), "scribbles_n": len(junk),
                "scribbles_not_sure": (model.predict_proba(junk).max(axis=1) < model.threshold).mean()}
    for key, value in measured.items():
        assert metrics[key] == pytest.approx(float(value), abs=1e-9), f"{path.name}: {key}"


def test_the_active_model_is_the_one_the_default_rule_picks_from_the_shipped_metadata():
    # The rule reads drawn-digit and validation figures from the metadata; the tests above check those
    # figures against the data, so the choice rests on measured numbers, never on the test set.
    from model.selection import choose_default
    from model.weights import read_meta

    chosen = choose_default([read_meta(path) for path in SHIPPED])
    assert load_model(active_path(WEIGHTS)).version == chosen["version"]
