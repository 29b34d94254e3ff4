"""model.calibrate: temperature scaling, expected calibration error and the "not sure" threshold."""
import numpy as np
import pytest

from model.calibrate import (calibrate, choose_threshold, expected_calibration_error, fit_temperature, nll,
                             reliability, scaled_probabilities)


def sampled(temperature_true: float, n: int = 20_000, seed: int = 0):
    """Logits whose labels are drawn from softmax(logits / T_true): T_true is the right answer."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, 10)) * 4
    probs = scaled_probabilities(logits, temperature_true)
    y = (probs.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return logits, y


@pytest.mark.parametrize("t_true", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_the_temperature_the_labels_were_drawn_with(t_true):
    logits, y = sampled(t_true)
    T = fit_temperature(logits, y)
    assert T == pytest.approx(t_true, rel=0.05)
    for other in (T * 0.9, T * 1.1):  # and it is the minimum
        assert nll(logits, y, T) < nll(logits, y, other)


def test_scaling_never_changes_the_answer_and_fixes_an_overconfident_model():
    logits, y = sampled(2.0)  # the raw logits are twice as sure as they should be
    result = calibrate(logits, y)
    raw, fixed = scaled_probabilities(logits, 1.0), scaled_probabilities(logits, result.temperature)
    np.testing.assert_array_equal(raw.argmax(axis=1), fixed.argmax(axis=1))
    assert result.ece_before > 0.05
    assert result.ece_after < 0.02
    assert result.ece_before == pytest.approx(expected_calibration_error(raw, y))


def test_ece_is_the_weighted_gap_between_confidence_and_accuracy():
    # Two bins by hand: 4 answers at 0.95 confidence, 3 right; 2 at 0.55, both right.
    probs = np.full((6, 10), 0.0)
    probs[:4, 0], probs[:4, 1] = 0.95, 0.05
    probs[4:, 2], probs[4:, 3] = 0.55, 0.45
    y = np.array([0, 0, 0, 1, 2, 2])
    expected = (4 * abs(0.75 - 0.95) + 2 * abs(1.0 - 0.55)) / 6
    assert expected_calibration_error(probs, y) == pytest.approx(expected)
    r = reliability(probs, y)
    assert r.count.sum() == 6 and np.nansum(r.count * r.accuracy) == pytest.approx(5)


def test_the_threshold_keeps_the_most_answers_that_meet_the_precision():
    conf = np.array([0.99, 0.98, 0.97, 0.9, 0.8, 0.7, 0.6])
    right = np.array([1, 1, 1, 1, 0, 1, 0], bool)
    probs = np.zeros((7, 10))
    probs[:, 0] = conf
    probs[:, 1] = 1 - conf
    y = np.where(right, 0, 1)
    # kept from the top: 4/4 right at 0.9; 4/5 at 0.8; 5/6 at 0.7
    assert choose_threshold(probs, y, precision=1.0) == pytest.approx(0.9)
    assert choose_threshold(probs, y, precision=0.8) == pytest.approx(0.7)
    assert choose_threshold(probs, y, precision=0.5) == 0.0  # every answer may be given


def test_calibrate_reports_coverage_and_precision_above_the_threshold():
    logits, y = sampled(1.0, seed=3)
    result = calibrate(logits, y, precision=0.95)
    probs = scaled_probabilities(logits, result.temperature)
    kept = probs.max(axis=1) >= result.threshold
    assert result.coverage == pytest.approx(kept.mean())
    assert result.precision_kept >= 0.95
    assert 0 < result.coverage < 1
    assert set(result.to_dict()) >= {"temperature", "threshold", "ece_before", "ece_after"}


def test_fitting_without_data_is_refused():
    with pytest.raises(ValueError, match="validation data"):
        fit_temperature(np.empty((0, 10)), np.empty(0, int))


def test_the_threshold_rises_until_most_non_digits_are_rejected():
    logits, y = sampled(1.0, seed=5)
    plain = calibrate(logits, y, precision=0.9)
    rng = np.random.default_rng(6)
    junk = rng.standard_normal((300, 10)) * 6  # confident-looking logits for drawings of nothing
    result = calibrate(logits, y, precision=0.9, reject_logits=junk, reject_share=0.7)
    junk_conf = scaled_probabilities(junk, result.temperature).max(axis=1)
    assert result.scribbles_rejected == pytest.approx((junk_conf < result.threshold).mean())
    assert 0.7 <= result.scribbles_rejected < 0.7 + 2 / 300, "raised just enough"
    assert result.threshold > plain.threshold and result.coverage < plain.coverage
    assert result.temperature == plain.temperature  # the temperature is fitted on the digits alone
