"""Verdicts, OOD scores, threshold fitting and the trust model's files, on arrays whose answers are known."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy.spatial.distance import mahalanobis
from scipy.special import logsumexp

from digitlab.errors import RunError
from digitlab.trust import (
    BLANK,
    MIN_CONFIDENCE,
    Thresholds,
    TrustModel,
    energy_score,
    fit_gaussians,
    fit_thresholds,
    mahalanobis_score,
    selective_table,
    verdict,
    verdict_kinds,
)

TH = Thresholds(confidence=0.8, ood=5.0)


def _row(best: int, p: float, runner_up: int) -> np.ndarray:
    row = np.full(10, (1 - p - 0.05) / 8)
    row[best], row[runner_up] = p, 0.05
    return row


def test_each_verdict_follows_the_thresholds():
    sure = verdict(_row(7, 0.95, 1), 1.0, TH)
    assert (sure.kind, sure.digit, sure.best, sure.runner_up) == ("digit", 7, 7, 1)
    unsure = verdict(_row(7, 0.6, 1), 1.0, TH)
    assert (unsure.kind, unsure.digit, unsure.best, unsure.runner_up) == ("unsure", None, 7, 1)
    far = verdict(_row(7, 0.99, 1), 9.0, TH)  # confident, but out of distribution
    assert (far.kind, far.digit, far.best) == ("not_a_digit", None, 7)
    at_thresholds = verdict(_row(7, 0.8, 1), 5.0, TH)  # the thresholds themselves are accepted
    assert at_thresholds.kind == "digit"
    assert [sure.text(), unsure.text(), far.text(), BLANK.text()] == ["7", "unsure: 7 or 1?", "not a digit", "blank"]
    kinds = verdict_kinds(np.array([0.95, 0.6, 0.99]), np.array([1.0, 1.0, 9.0]), TH)
    assert list(kinds) == ["digit", "unsure", "not_a_digit"]


def test_energy_and_mahalanobis_scores_against_references():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 10))
    np.testing.assert_allclose(energy_score(logits), -logsumexp(logits, axis=1))
    means = rng.normal(size=(10, 4))
    a = rng.normal(size=(4, 4))
    precision = a @ a.T + np.eye(4)
    f = rng.normal(size=(6, 4))
    reference = [min(mahalanobis(row, m, precision) ** 2 for m in means) for row in f]
    np.testing.assert_allclose(mahalanobis_score(f, means, precision), reference, rtol=1e-9)


def test_fit_gaussians_recovers_the_class_means_and_the_shared_covariance():
    rng = np.random.default_rng(1)
    cov = np.array([[2.0, 0.6, 0.0], [0.6, 1.0, 0.3], [0.0, 0.3, 0.5]])
    means = rng.normal(size=(10, 3)) * 5
    y = rng.integers(0, 10, 40_000)
    f = means[y] + rng.multivariate_normal(np.zeros(3), cov, len(y))
    m, precision = fit_gaussians(f, y)
    np.testing.assert_allclose(m, means, atol=0.05)
    np.testing.assert_allclose(np.linalg.inv(precision), cov, atol=0.05)


def _synthetic_fit_data(seed: int = 0, n: int = 300, m: int = 120):
    rng = np.random.default_rng(seed)
    conf = np.clip(rng.beta(8, 1, n), 0, 1)
    ood = rng.normal(0, 1, n)
    correct = rng.random(n) < conf
    nd_conf = np.clip(rng.beta(3, 2, m), 0, 1)
    nd_ood = rng.normal(1.5, 1.2, m)
    return conf, ood, correct, nd_conf, nd_ood


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fitted_thresholds_meet_the_target_and_reject_about_as_many_as_brute_force(seed):
    conf, ood, correct, nd_conf, nd_ood = _synthetic_fit_data(seed)
    fit = fit_thresholds(conf, ood, correct, nd_conf, nd_ood, target_acceptance=0.95)
    accepted = (conf >= fit.thresholds.confidence) & (ood <= fit.thresholds.ood)
    assert accepted.mean() >= 0.95 and accepted.mean() == pytest.approx(fit.val_acceptance)
    nd_rejected = ~((nd_conf >= fit.thresholds.confidence) & (nd_ood <= fit.thresholds.ood))
    assert nd_rejected.mean() == pytest.approx(fit.rejection)
    # Brute force over every pair of thresholds taken from the validation scores.
    best = 0.0
    for tc, to in itertools.product(np.unique(conf), np.unique(ood)):
        if ((conf >= tc) & (ood <= to)).mean() >= 0.95:
            best = max(best, 1 - ((nd_conf >= tc) & (nd_ood <= to)).mean())
    se = math.sqrt(best * (1 - best) / len(nd_ood))  # the one-standard-error rule may give up this much
    assert best - se - 1e-9 <= fit.rejection <= best + 1e-9


def test_the_confidence_threshold_is_at_least_one_half_when_the_target_allows():
    conf, ood, correct, nd_conf, nd_ood = _synthetic_fit_data(3)
    conf = np.maximum(conf, 0.55)  # every validation digit answered at p >= 0.55: the floor costs nothing
    fit = fit_thresholds(conf, ood, correct, nd_conf, nd_ood, target_acceptance=0.9)
    assert fit.thresholds.confidence >= MIN_CONFIDENCE


def test_selective_table_by_hand():
    conf = np.array([0.9, 0.8, 0.7, 0.6])
    correct = np.array([True, True, False, True])
    assert selective_table(conf, correct, (1.0, 0.75, 0.5)) == [(1.0, 0.75), (0.75, 2 / 3), (0.5, 1.0)]


def _model(method: str = "mahalanobis", **kw) -> TrustModel:
    rng = np.random.default_rng(4)
    gaussians = dict(means=rng.normal(size=(10, 8)), precision=np.eye(8) * 2)
    detector = dict(detector_input=np.stack([rng.normal(size=9), rng.uniform(0.5, 2, size=9)]),
                    detector_kernel=rng.normal(size=(9, 4)), detector_bias=rng.normal(size=4),
                    detector_out=rng.normal(size=5), score_scales=np.array([[2.0, 1.5], [-3.0, 2.0]]))
    arrays = {"mahalanobis": gaussians, "detector": {**gaussians, **detector},
              "energy": dict(head_kernel=rng.normal(size=(8, 10)), head_bias=rng.normal(size=10)),
              "msp": {}}[method]
    return TrustModel(temperature=1.7, method=method, thresholds=Thresholds(0.7, 12.5), val_acceptance=0.99,
                      fit_rejection=0.8, val_images=5000, nondigit_images=540, nondigit_version=1,
                      nondigit_sha256="ab" * 32, feature_layer="dense_1", feature_images=20000, **arrays, **kw)


@pytest.mark.parametrize("method", ["msp", "energy", "mahalanobis", "detector"])
def test_trust_model_round_trips_through_json_and_npz(tmp_path, method):
    trust = _model(method)
    (tmp_path / "trust.json").write_text(json.dumps(trust.to_json()))
    np.savez(tmp_path / "trust.npz", **trust.arrays())
    with np.load(tmp_path / "trust.npz") as npz:
        back = TrustModel.from_json(json.loads((tmp_path / "trust.json").read_text()), dict(npz))
    assert back.to_json() == trust.to_json()
    for name, array in trust.arrays().items():
        np.testing.assert_array_equal(back.arrays()[name], array)
    rng = np.random.default_rng(5)
    proba = np.exp(rng.normal(size=(20, 10)) * 3)
    proba /= proba.sum(1, keepdims=True)
    features = rng.normal(size=(20, 8))
    assert back.judge(proba, features) == trust.judge(proba, features)


def test_the_detector_score_by_hand():
    """The detector method's score written out with plain loops: the larger of the two scaled scores, the
    network's logit from standardised [features, log(1 + distance)] through one ReLU layer."""
    trust = _model("detector")
    features = np.random.default_rng(6).normal(size=(5, 8))
    distance = mahalanobis_score(features, trust.means, trust.precision)
    expected = []
    for f, d2 in zip(features, distance):
        x = [(v - m) / s for v, m, s in zip([*f, math.log1p(d2)], *trust.detector_input)]
        hidden = [max(0.0, sum(xi * w for xi, w in zip(x, trust.detector_kernel[:, j])) + trust.detector_bias[j])
                  for j in range(4)]
        logit = sum(h * w for h, w in zip(hidden, trust.detector_out[:4])) + trust.detector_out[4]
        (m_med, m_spread), (l_med, l_spread) = trust.score_scales
        expected.append(max((math.log1p(d2) - m_med) / m_spread, (logit - l_med) / l_spread))
    np.testing.assert_allclose(trust.ood_score(np.full((5, 10), 0.1), features), expected, rtol=1e-12)


def test_user_thresholds_and_an_ood_threshold_of_infinity_survive_json():
    trust = _model().with_thresholds(confidence=0.9, ood=math.inf)
    doc = json.loads(json.dumps(trust.to_json()))  # strict JSON: no Infinity token
    assert doc["thresholds"] == {"confidence": 0.9, "ood": None}
    assert TrustModel.from_json(doc, trust.arrays()).thresholds == Thresholds(0.9, math.inf)


def test_damaged_or_newer_trust_files_are_refused():
    trust = _model()
    with pytest.raises(RunError, match="format"):
        TrustModel.from_json({**trust.to_json(), "format": 99}, trust.arrays())
    with pytest.raises(RunError, match="lack"):
        TrustModel.from_json(trust.to_json(), {})
    with pytest.raises(RunError, match="unknown"):
        TrustModel.from_json({**trust.to_json(), "surprise": 1}, trust.arrays())
    with pytest.raises(ValueError, match="needs"):
        TrustModel(temperature=1.0, method="mahalanobis", thresholds=TH)
    with pytest.raises(ValueError, match="detector_kernel"):
        TrustModel(temperature=1.0, method="detector", thresholds=TH, **{
            name: array for name, array in _model("detector").arrays().items() if name != "detector_kernel"})
