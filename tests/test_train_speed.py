"""benchmarks/train_speed.py: its FLOP counts and its hand-written reference loop (timed beside `train`)."""
import numpy as np
import pytest

from benchmarks import train_speed
from model.train import Recipe


def test_the_seed_flop_count_is_the_issues_formula():
    # forward and weight gradients of both layers, plus the hidden layer's input gradient
    assert train_speed.dense_stack_flops("seed") == 2 * (784 * 1024 + 1024 * 10) * 2 + 2 * 1024 * 10


def test_the_cnn_flop_count_has_no_input_gradient_for_the_first_convolution():
    conv1 = 2 * 28 * 28 * 25 * 1 * 32
    conv2 = 2 * 14 * 14 * 25 * 32 * 64
    head = 2 * 7 * 7 * 64 * 256 + 2 * 256 * 10
    assert train_speed.layer_stack_flops("cnn") == 2 * conv1 + 3 * conv2 + 3 * head


def test_the_reference_loop_learns_what_the_seed_network_learns():
    # Timing a loop that computes the wrong thing would prove nothing: it must train.
    rng = np.random.default_rng(0)
    centres = rng.random((10, 784), dtype=np.float32)
    y = rng.integers(0, 10, 3000)
    X = np.clip(centres[y] + 0.3 * rng.standard_normal((3000, 784), dtype=np.float32), 0, 1)
    params = train_speed.reference_seed_params(np.random.default_rng(1))
    def accuracy():
        h = np.maximum(X @ params["W1"] + params["b1"], 0)
        return float(((h @ params["W2"] + params["b2"]).argmax(axis=1) == y).mean())
    before = accuracy()
    seconds = train_speed.reference_seed_epoch(X, y, Recipe(learning_rate=0.1), np.random.default_rng(2), params)
    assert seconds > 0
    assert before < 0.3 and accuracy() > 0.95


def test_reference_is_refused_for_other_architectures(capsys):
    with pytest.raises(SystemExit) as exc:
        train_speed.main(["--arch", "cnn", "--reference"])
    assert exc.value.code == 2
    assert "--reference times the seed network" in capsys.readouterr().err
