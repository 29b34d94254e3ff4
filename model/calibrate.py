"""Confidence that means what it says: temperature scaling, expected calibration error, a "not sure" threshold.

Temperature scaling (Guo et al., 2017) divides the logits by one scalar T fitted on validation data to
minimise the negative log-likelihood. It never changes which digit wins, only how sure the answer is.
The threshold is the lowest calibrated confidence at which the answers kept are still right often
enough (`TARGET_PRECISION`), also chosen on validation data; below it the service says "not sure".
Given examples of drawings that are no digit at all (validation scribbles, `model.drawn_digits.scribbles`),
it is raised where needed so that at least `REJECT_SHARE` of them land below it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

ECE_BINS = 15
TARGET_PRECISION = 0.995   # answers at or above the threshold must be right this often (on validation)
REJECT_SHARE = 0.6         # at least this share of non-digit scribbles must fall below the threshold
T_RANGE = (0.05, 20.0)     # temperatures searched (log-spaced, then refined)


def log_softmax(Z: np.ndarray) -> np.ndarray:
    Z = np.asarray(Z, dtype=np.float64)
    Z = Z - Z.max(axis=1, keepdims=True)
    return Z - np.log(np.exp(Z).sum(axis=1, keepdims=True))


def scaled_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T), (N, 10) float64."""
    return np.exp(log_softmax(np.asarray(logits, dtype=np.float64) / temperature))


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / T)."""
    lp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature)
    return float(-lp[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T > 0 that minimises `nll(logits, y, T)`: a log-spaced grid, then golden-section search.

    The NLL is smooth and unimodal in log T, so this finds the minimum to about 1e-4 relative.
    """
    if len(y) == 0:
        raise ValueError("fitting a temperature needs labelled validation data")
    lo, hi = np.log(T_RANGE[0]), np.log(T_RANGE[1])
    grid = np.linspace(lo, hi, 41)
    losses = [nll(logits, y, np.exp(g)) for g in grid]
    i = int(np.argmin(losses))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    ratio = (np.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(logits, y, np.exp(c)), nll(logits, y, np.exp(d))
    while b - a > 1e-5:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(logits, y, np.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(logits, y, np.exp(d))
    return float(np.exp((a + b) / 2))


@dataclass
class Reliability:
    """Per-bin mean confidence, accuracy and count: the reliability diagram's data."""
    edges: np.ndarray       # (bins + 1,)
    confidence: np.ndarray  # (bins,), NaN where a bin is empty
    accuracy: np.ndarray    # (bins,), NaN where a bin is empty
    count: np.ndarray       # (bins,)


def reliability(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> Reliability:
    """Bin the top-1 confidences into `bins` equal-width bins over [0, 1]."""
    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == y
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=conf, minlength=bins) / count
        acc = np.bincount(which, weights=correct, minlength=bins) / count
    return Reliability(edges, mean_conf, acc, count)


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over equal-width confidence bins."""
    r = reliability(probs, y, bins)
    filled = r.count > 0
    return float((r.count[filled] * np.abs(r.accuracy[filled] - r.confidence[filled])).sum() / len(y))


def choose_threshold(probs: np.ndarray, y: np.ndarray, precision: float = TARGET_PRECISION) -> float:
    """The lowest confidence c such that answers with confidence >= c are right at least `precision` of
    the time, so that as few answers as possible say "not sure". 0 when every answer already is."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    order = np.argsort(-conf, kind="stable")
    hits = np.cumsum(correct[order])
    kept_precision = hits / np.arange(1, len(y) + 1)
    ok = np.nonzero(kept_precision >= precision)[0]
    if not len(ok):
        return 1.0
    last = ok[-1]  # keep the most answers that still meet the precision
    if last == len(y) - 1:
        return 0.0
    return float(conf[order[last]])


@dataclass
class Calibration:
    temperature: float
    threshold: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    coverage: float          # share of validation answers at or above the threshold
    precision_kept: float    # their accuracy
    n: int
    scribbles_rejected: float | None = None  # share of the non-digit scribbles below the threshold
    n_scribbles: int = 0

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def calibrate(logits: np.ndarray, y: np.ndarray, precision: float = TARGET_PRECISION,
              reject_logits: np.ndarray | None = None, reject_share: float = REJECT_SHARE) -> Calibration:
    """Fit the temperature and the "not sure" threshold on (validation) logits and labels; with
    `reject_logits` (of drawings that are no digit), raise the threshold until `reject_share` of them
    fall below it."""
    T = fit_temperature(logits, y)
    before, after = scaled_probabilities(logits, 1.0), scaled_probabilities(logits, T)
    threshold = choose_threshold(after, y, precision)
    rejected, n_reject = None, 0
    if reject_logits is not None and len(reject_logits):
        junk = scaled_probabilities(reject_logits, T).max(axis=1)
        # The smallest threshold with at least reject_share of the junk strictly below it.
        k = int(np.ceil(reject_share * len(junk))) - 1
        if k >= 0:
            threshold = max(threshold, float(np.nextafter(np.sort(junk)[k], np.inf)))
        rejected, n_reject = float((junk < threshold).mean()), len(junk)
    kept = after.max(axis=1) >= threshold
    return Calibration(
        temperature=T, threshold=threshold,
        ece_before=expected_calibration_error(before, y), ece_after=expected_calibration_error(after, y),
        nll_before=nll(logits, y), nll_after=nll(logits, y, T),
        coverage=float(kept.mean()),
        precision_kept=float((after.argmax(axis=1) == y)[kept].mean()) if kept.any() else float("nan"),
        n=len(y), scribbles_rejected=rejected, n_scribbles=n_reject,
    )
