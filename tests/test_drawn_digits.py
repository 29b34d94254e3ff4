"""model.drawn_digits: synthetic pen-stroke digits, drawn as the page records them and read as the service reads them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.drawn_digits import (CANVAS, DrawnSet, drawn_digits, drawn_inputs, evaluate_drawn, format_drawn, scribbles,
                         stroke_templates)
from model.weights import load_model

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


@pytest.fixture(scope="module")
def drawn() -> DrawnSet:
    return drawn_digits(per_style=4, seed=0)


@pytest.fixture(scope="module")
def inputs(drawn) -> np.ndarray:
    return drawn_inputs(drawn)


def test_the_same_seed_draws_the_same_set_and_another_seed_does_not(drawn):
    again, other = drawn_digits(per_style=4, seed=0), drawn_digits(per_style=4, seed=1)
    assert again.styles == drawn.styles and np.array_equal(again.labels, drawn.labels)
    assert again.variations == drawn.variations and np.array_equal(again.pen_widths, drawn.pen_widths)
    for a, b in zip(again.strokes, drawn.strokes):
        assert len(a) == len(b) and all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not np.array_equal(other.strokes[0][0], drawn.strokes[0][0])


def test_every_digit_is_drawn_in_at_least_three_styles_each_per_style_times(drawn):
    styles = list(stroke_templates())
    assert sorted({s.split("/")[0] for s in styles}) == [str(d) for d in range(10)]
    for d in range(10):
        assert sum(s.startswith(f"{d}/") for s in styles) >= 3, d
    assert [drawn.styles.count(s) for s in styles] == [4] * len(styles)
    assert all(int(style[0]) == label for style, label in zip(drawn.styles, drawn.labels))
    assert len(drawn.strokes) == len(drawn.labels) == len(drawn.variations) == len(drawn.pen_widths)


def test_strokes_are_canvas_pixels_as_the_page_records_them(drawn):
    for drawing in drawn.strokes:
        for stroke in drawing:
            assert stroke.ndim == 2 and stroke.shape[1] == 2 and len(stroke) >= 2
            assert stroke.min() >= 0 and stroke.max() <= CANVAS
            assert np.allclose(stroke * 10, np.round(stroke * 10))  # the page rounds to 0.1 px
            assert np.hypot(*np.diff(stroke, axis=0).T).min() >= 0.75  # and drops smaller moves


def test_drawings_vary_in_size_place_and_pen_width(drawn):
    boxes = np.array([np.ptp(np.concatenate(d), axis=0).max() for d in drawn.strokes])
    centres = np.array([np.concatenate(d).mean(axis=0) for d in drawn.strokes])
    assert boxes.min() < 0.3 * CANVAS and boxes.max() > 0.8 * CANVAS
    assert np.ptp(centres, axis=0).min() > 0.4 * CANVAS
    assert drawn.pen_widths.min() < 6 and drawn.pen_widths.max() > 20


def test_two_drawings_of_the_same_style_differ(inputs, drawn):
    for style in stroke_templates():
        first, second = [i for i, s in enumerate(drawn.styles) if s == style][:2]
        assert np.abs(inputs[first] - inputs[second]).sum() > 5, style


def test_inputs_are_mnist_like_with_the_ink_centred_by_mass(inputs):
    assert inputs.shape == (len(inputs), 784) and inputs.dtype == np.float32
    assert inputs.min() >= 0 and inputs.max() <= 1
    images = inputs.reshape(-1, 28, 28)
    mass = images.sum(axis=(1, 2))
    rows = images.sum(axis=2) @ np.arange(28) / mass
    cols = images.sum(axis=1) @ np.arange(28) / mass
    assert np.abs(rows - 14).max() < 1 and np.abs(cols - 14).max() < 1


def test_evaluate_drawn_scores_per_digit_and_per_style(drawn):
    perfect = evaluate_drawn(lambda X: drawn.labels, drawn)
    assert perfect["accuracy"] == 1.0 and perfect["n"] == len(drawn.labels)
    always_seven = evaluate_drawn(lambda X: np.full(len(X), 7), drawn)
    assert always_seven["per_digit"] == {d: float(d == 7) for d in range(10)}
    assert always_seven["per_style"]["7/european"] == 1.0 and always_seven["per_style"]["1/flag"] == 0.0
    assert "7/european" in format_drawn(always_seven, "always 7")


def test_the_shipped_mlp_reads_most_drawn_digits():
    path = sorted(WEIGHTS.glob("mlp-*.npz"))[-1]
    result = evaluate_drawn(load_model(path).network.predict, drawn_digits(per_style=10, seed=0))
    assert result["accuracy"] > 0.9, format_drawn(result, path.name)
    assert min(result["per_digit"].values()) > 0.6, format_drawn(result, path.name)


def test_scribbles_are_drawn_and_preprocess_like_any_drawing():
    scrawls = scribbles(16, seed=0)
    assert {s.split("/")[1] for s in scrawls.styles} == {"zigzag", "spiral", "walk", "hash"}
    assert (scrawls.labels == -1).all()
    X = drawn_inputs(scrawls)
    assert X.shape == (16, 784) and np.isfinite(X).all() and (X.max(axis=1) > 0.5).all()
    with pytest.raises(ValueError, match="scribbles"):
        evaluate_drawn(lambda X: np.zeros(len(X), dtype=int), scrawls)


def test_beyond_mnist_counts_not_sure_answers_on_drawings_and_scribbles():
    from model.drawn_digits import REPORT_SCRIBBLES, REPORT_SET, beyond_mnist
    ds = drawn_digits(**REPORT_SET)
    n_junk = REPORT_SCRIBBLES["n"]

    def confident_and_right(X):
        """Sure and right on the drawn digits (recognised by their count), unsure on everything else."""
        probs = np.full((len(X), 10), 0.1)
        if len(X) == len(ds.labels):
            probs[:] = 0.0
            probs[np.arange(len(X)), ds.labels] = 1.0
        return probs

    result = beyond_mnist(confident_and_right, threshold=0.5)
    assert result["drawn_accuracy"] == 1.0 and result["drawn_not_sure"] == 0.0
    assert result["drawn_sure_accuracy"] == 1.0
    assert result["scribbles_not_sure"] == 1.0 and result["scribbles_n"] == n_junk
    always_sure = beyond_mnist(confident_and_right, threshold=0.0)
    assert always_sure["scribbles_not_sure"] == 0.0
