"""Every shipped model's claimed test accuracy is what it really scores on the MNIST test set."""
from pathlib import Path

import pytest

from model.data import SHA256, load_split
from model.registry import active_path
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


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_model_scores_its_recorded_figures_on_drawn_digits_and_scribbles(path):
    from model.drawn import beyond_mnist
    model = load_model(path)
    metrics = model.meta["metrics"]
    assert "drawn_accuracy" in metrics, f"{path.name}: run digits calibrate {path} to record them"
    measured = beyond_mnist(model.predict_proba, model.threshold)
    for key, value in measured.items():
        assert value == pytest.approx(metrics[key], abs=1e-9), f"{path.name}: {key}"


def test_the_active_model_is_the_one_the_default_rule_picks_from_the_shipped_metadata():
    # The rule reads drawn-digit and validation figures from the metadata; the tests above check those
    # figures against the data, so the choice rests on measured numbers, never on the test set.
    from model.selection import choose_default
    from model.weights import read_meta

    chosen = choose_default([read_meta(path) for path in SHIPPED])
    assert load_model(active_path(WEIGHTS)).version == chosen["version"]
