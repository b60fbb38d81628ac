"""Trust on a real (briefly trained) model: features, fitting, each verdict reached by a generated input, the
figures and the explanation."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from scipy.special import softmax

from digitlab import nondigits
from digitlab.calibration import log_proba
from digitlab.data import prepare_split, scale
from digitlab.drawing import to_gray
from digitlab.explain import explanation_png, occlusion_map
from digitlab.ood import Scorer, auroc, coverage_png, evaluate_trust, fit_trust, reliability_png
from digitlab.predictor import Predictor
from digitlab.preprocessing import NoInkError, to_mnist
from digitlab.trust import BLANK, MIN_CONFIDENCE, TrustModel, energy_score

# The session's model answers about 96% of test digits right, so it cannot answer 99% of them with p >= 0.5:
# its thresholds are fitted for 95%, a target it can meet (bench/trust.py measures the default 99%).
TARGET = 0.95


@pytest.fixture(scope="module")
def scorer(trained_run):
    return Scorer.from_run(trained_run)


@pytest.fixture(scope="module")
def trust(scorer, trained_run, mnist) -> TrustModel:
    split = prepare_split(trained_run.config, mnist)
    return fit_trust(scorer, scale(split.x_train), split.y_train, scale(split.x_val), split.y_val,
                     nondigits.split("fit", per_kind=20), target_acceptance=TARGET,
                     negatives=nondigits.split("train", per_kind=60))


@pytest.fixture(scope="module")
def holdout():
    return nondigits.split("holdout", per_kind=30)


def _verdicts(scorer, trust, x):
    out = scorer.outputs(x)
    return trust.judge(out.proba, out.features)


def test_features_are_the_input_of_the_softmax_head(scorer, mnist):
    out = scorer.outputs(scale(mnist.x_test[:64]))
    assert out.features.shape == (64, 128) and scorer.feature_layer
    np.testing.assert_allclose(softmax(scorer.logits(out), axis=1), out.proba, atol=1e-5)
    # Why energy needs them: log p as logits gives energy 0 for every input.
    np.testing.assert_allclose(energy_score(log_proba(out.proba)), 0.0, atol=1e-6)
    assert np.std(energy_score(scorer.logits(out))) > 0.1


def test_fitted_trust_meets_its_target_on_validation_and_about_on_test(trust, scorer, mnist):
    assert trust.method == "detector" and trust.val_acceptance >= TARGET and trust.negative_images == 540
    assert trust.thresholds.confidence >= MIN_CONFIDENCE  # "4 or 9?" at p < 0.5 is never a confident answer
    result = evaluate_trust(trust, scorer.outputs(scale(mnist.x_test)), mnist.y_test, {})
    assert result.coverage >= TARGET - 0.015  # new digits: the validation target, within sampling error
    assert result.selective_accuracy > result.accuracy  # what it declines is mostly what it would get wrong
    assert result.after.ece < result.before.ece


def test_each_verdict_is_reached_by_a_generated_input(trust, scorer, holdout, mnist):
    # blank: preprocessing finds no ink, before any model runs
    with pytest.raises(NoInkError):
        to_mnist(to_gray(nondigits.blank_picture()))
    assert BLANK.kind == "blank"
    # a clear digit: MNIST's test digits are answered, and right
    x, y = scale(mnist.x_test[:200]), mnist.y_test[:200]
    verdicts = _verdicts(scorer, trust, x)
    assert np.mean([v.kind == "digit" and v.digit == t for v, t in zip(verdicts, y)]) >= 0.9
    # noise, a letter, a shape (held-out pictures): each is called not_a_digit, and the OOD score ranks such
    # pictures above digits. Measured with this model (TensorFlow): AUROC noise 0.97, letters 0.81, shapes 0.90;
    # called not_a_digit: noise 77%, letters 13%, shapes 33%, test digits 0.2%. A 3-epoch MLP is a weak detector:
    # bench/trust.py measures the real models.
    digits = scorer.outputs(scale(mnist.x_test[:2000]))
    digit_scores = trust.ood_score(digits.proba, digits.features)
    for kinds, min_auroc in ((("noise",), 0.9), (("letter_font", "letter_drawn"), 0.7), (("shape",), 0.75)):
        out = scorer.outputs(np.concatenate([holdout.of_kind(k) for k in kinds]))
        assert any(v.kind == "not_a_digit" for v in trust.judge(out.proba, out.features)), kinds
        area = auroc(digit_scores, trust.ood_score(out.proba, out.features))
        assert area >= min_auroc, (kinds, area)
    # an ambiguous digit: a blend of a sure 4 and a sure 9 at the mix where the answer changes is unsure of the two
    assert _ambiguous_blends(scorer, trust, x, y) >= 1


def _ambiguous_blends(scorer, trust, x, y) -> int:
    """Blends of two confidently read digits, bisected to where the answer switches: how many are unsure of the
    two. None may be a confident digit: at the switch the two top classes share at most p = 0.5."""
    p = trust.calibrate(scorer.outputs(x).proba)
    unsure_of_the_two = 0
    for a, b in ((4, 9), (3, 5), (0, 6)):
        xa = x[np.flatnonzero((y == a) & (p.argmax(1) == a))[0]]
        xb = x[np.flatnonzero((y == b) & (p.argmax(1) == b))[0]]
        lo, hi = 0.0, 1.0
        for _ in range(20):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if _verdicts(scorer, trust, _blend(xa, xb, mid)[None])[0].best == a else (lo, mid)
        v = _verdicts(scorer, trust, _blend(xa, xb, (lo + hi) / 2)[None])[0]
        assert v.kind in ("unsure", "not_a_digit"), (a, b, v)
        unsure_of_the_two += v.kind == "unsure" and {v.best, v.runner_up} == {a, b}
    return unsure_of_the_two


def _blend(xa, xb, t):
    m = (1 - t) * xa + t * xb
    return (m / m.max()).astype(np.float32)  # full-strength ink, as preprocessing would leave it


def test_a_model_without_features_falls_back_to_msp(trained_predictor, trained_run, mnist):
    split = prepare_split(trained_run.config, mnist)
    plain = Scorer.from_predictor(Predictor.from_estimator(trained_predictor.predict_proba))
    trust = fit_trust(plain, None, None, scale(split.x_val), split.y_val, nondigits.split("fit", per_kind=3),
                      target_acceptance=TARGET)
    assert trust.method == "msp" and not trust.arrays()
    verdicts = trust.judge(trained_predictor.predict_proba(scale(mnist.x_test[:50])))
    assert sum(v.kind == "digit" for v in verdicts) >= 40


def test_the_fitted_trust_model_judges_the_same_after_a_round_trip(trust, scorer, holdout):
    back = TrustModel.from_json(json.loads(json.dumps(trust.to_json())), trust.arrays())
    out = scorer.outputs(holdout.x)
    assert back.judge(out.proba, out.features) == trust.judge(out.proba, out.features)


def _png_size(png: bytes) -> tuple[int, int]:
    assert png.startswith(b"\x89PNG")
    return Image.open(io.BytesIO(png)).size


def test_report_figures_are_pngs(trust, scorer, mnist):
    out = scorer.outputs(scale(mnist.x_test[:500]))
    cal = trust.calibrate(out.proba)
    _png_size(reliability_png(out.proba, cal, mnist.y_test[:500]))
    _png_size(coverage_png(cal.max(1), cal.argmax(1) == mnist.y_test[:500], (0.99, 0.98)))


def test_occlusion_finds_the_evidence_on_the_ink(trained_predictor, mnist):
    x = scale(mnist.x_test[:20])
    p = trained_predictor.predict_proba(x)
    i = int(np.argmax(p.max(1) * (p.argmax(1) == mnist.y_test[:20])))  # the surest right answer
    heat = occlusion_map(trained_predictor.predict_proba, x[i])
    ink = x[i] > 0.5
    assert heat[ink].mean() > heat[~ink].mean()  # hiding strokes costs the answer more than hiding background
    assert _png_size(explanation_png(x[i], heat)) == (224, 224)
