"""Calibrated probabilities: temperature scaling, and the figures that say whether "90%" means right 90% of the time.

    t = fit_temperature(log_proba(val_proba), y_val)    # one number, fitted on the validation split
    p = apply_temperature(test_proba, t)                # calibrated probabilities, same argmax
    summary = calibration_summary(val_proba, y_val, test_proba, y_test)   # ECE, NLL, Brier before/after
    t_svm = fit_temperature(svm.decision_function(x_val), y_val)          # any per-class scores as logits

Our models output softmax probabilities, not logits. log p equals the logits up to a constant per row,
and softmax is blind to such a constant, so softmax(log p / T) is exactly temperature scaling of the
logits (Guo et al. 2017). T > 1 softens an over-confident model, T < 1 sharpens an under-confident one
(label smoothing makes models under-confident). T is fitted by minimising the validation NLL over log T,
a one-dimensional bounded search.

ECE here is the top-label expected calibration error with 15 equal-width bins (Guo et al.): the mean,
weighted by bin size, of |accuracy - mean confidence| over the bins of the top probability. Brier is the
multi-class Brier score: the mean over images of sum_k (p_k - [k = y])^2, 0 perfect, 2 worst.
Keras-free: the run files (digitlab.runs) and the inference path can use it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from digitlab.scoring import log_loss, log_softmax_rows, softmax_rows

ECE_BINS = 15  # equal-width bins of the top probability (Guo et al. 2017)
TEMPERATURE_BOUNDS = (0.05, 20.0)  # the search range for T; a fit at a bound means the scores are odd
TINY = 1e-30  # floor for probabilities before taking logs: float32 softmax outputs can be exactly 0


def log_proba(proba: np.ndarray) -> np.ndarray:
    """Probabilities -> logits (log p, a valid set of logits: softmax(log p) == p)."""
    return np.log(np.maximum(np.asarray(proba, dtype=np.float64), TINY))


def softmax_t(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T) row by row, in float64."""
    return softmax_rows(np.asarray(logits, dtype=np.float64) / temperature)


def apply_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities recalibrated with temperature T (T = 1 returns them unchanged), float32."""
    if temperature == 1.0:
        return np.asarray(proba, dtype=np.float32)
    return softmax_t(log_proba(proba), temperature).astype(np.float32)


def fit_temperature(logits: np.ndarray, y: np.ndarray, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The T minimising the NLL of softmax(logits / T) on (logits, y): logits of any kind (log p, SVM scores)."""
    from scipy.optimize import minimize_scalar  # here: fitting only; the inference path (apply_temperature) skips it

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y).astype(int)
    if len(y) == 0:
        raise ValueError("fit_temperature needs at least one labelled example")
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        return float(-np.mean(log_softmax_rows(z / np.exp(log_t))[rows, y]))

    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    result = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


# ---------------------------------------------------------------- how calibrated

def ece(proba: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error with `bins` equal-width bins, as a fraction (0.01 = 1%)."""
    b = reliability_bins(proba, y, bins)
    n = b.counts.sum()
    return float(np.sum(b.counts * np.abs(b.accuracy - b.confidence)) / n) if n else 0.0


def brier(proba: np.ndarray, y: np.ndarray) -> float:
    """Multi-class Brier score: mean over images of the squared distance to the one-hot truth."""
    p = np.asarray(proba, dtype=np.float64)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(p)), np.asarray(y).astype(int)] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def nll(proba: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood, the project's one log-loss (digitlab.scoring)."""
    return log_loss(y, np.asarray(proba))


@dataclass(frozen=True)
class ReliabilityBins:
    edges: np.ndarray  # (bins + 1,) bin edges over [0, 1]
    counts: np.ndarray  # (bins,) images whose top probability falls in the bin
    confidence: np.ndarray  # (bins,) their mean top probability (0 where empty)
    accuracy: np.ndarray  # (bins,) the share of them predicted right (0 where empty)


def reliability_bins(proba: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> ReliabilityBins:
    """The reliability diagram's numbers: per bin of top probability, how many, how sure, how often right."""
    p = np.asarray(proba, dtype=np.float64)
    top = p.max(axis=1)
    right = (p.argmax(axis=1) == np.asarray(y)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bins are (lo, hi]; the first also takes 0. A top probability is at least 1/classes anyway.
    which = np.clip(np.searchsorted(edges, top, side="left") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.where(counts, np.bincount(which, top, bins) / counts, 0.0)
        accuracy = np.where(counts, np.bincount(which, right, bins) / counts, 0.0)
    return ReliabilityBins(edges, counts, confidence, accuracy)


@dataclass(frozen=True)
class CalibrationScores:
    ece: float  # fraction
    nll: float
    brier: float


def scores(proba: np.ndarray, y: np.ndarray) -> CalibrationScores:
    return CalibrationScores(ece(proba, y), nll(proba, y), brier(proba, y))


@dataclass(frozen=True)
class CalibrationSummary:
    temperature: float  # fitted on the validation split
    fitted_on: int  # validation images it was fitted on
    before: CalibrationScores  # on the evaluation images (the test set), raw probabilities
    after: CalibrationScores  # the same images, calibrated


def calibration_summary(val_proba: np.ndarray, y_val: np.ndarray, test_proba: np.ndarray,
                        y_test: np.ndarray) -> CalibrationSummary:
    """Fit T on the validation probabilities, and score the test probabilities before and after."""
    t = fit_temperature(log_proba(val_proba), y_val)
    return CalibrationSummary(t, int(len(y_val)), scores(test_proba, y_test),
                              scores(apply_temperature(test_proba, t), y_test))
