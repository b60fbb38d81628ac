"""Trust, fitted and measured: penultimate features, out-of-distribution scores, the fitted TrustModel,
its evaluation, and its report figures.

    scorer = Scorer.from_run(run)          # probabilities and penultimate features in one forward pass
    trust = fit_trust(scorer, split.x_train, split.y_train, split.x_val, split.y_val, nondigits.split("fit"),
                      negatives=nondigits.split("train", DETECTOR_NEGATIVES_PER_KIND))
    result = evaluate_trust(trust, scorer.outputs(x_test), y_test,
                            {"fashion-mnist": scorer.outputs(x_fashion), "non-digits": scorer.outputs(holdout.x)})
    png = reliability_png(raw_test_proba, trust.calibrate(raw_test_proba), y_test)
    png = coverage_png(confidence, correct, (result.coverage, result.selective_accuracy))

The features are the input of the model's final Dense(softmax) layer (every registered model ends in
one). The Predictor gives them (Predictor.outputs: digitlab.predictor.features_model on Keras, a two-output
model, [probabilities, features], one forward pass for both, exported as such to ONNX). The logits the
energy score needs are features @ kernel + bias of that Dense layer. A model without such a head (an
ensemble's Average) has no features: its trust falls back to the msp method.

The default OOD method (DEFAULT_METHOD) was chosen by measurement with bench/trust.py; docs/trust.md
has the figures and the reasons. Importing this module imports neither Keras (a Scorer does) nor Matplotlib
(the figures do), so the inference path can use a Scorer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from digitlab.calibration import CalibrationScores, fit_temperature, log_proba, reliability_bins, scores
from digitlab.predictor import Outputs, Predictor, head_layer, load_keras_model
from digitlab.trust import (
    COVERAGES,
    DEFAULT_ACCEPTANCE,
    METHODS,
    Thresholds,
    TrustModel,
    coverage_curve,
    detector_inputs,
    detector_logit,
    fit_gaussians,
    fit_thresholds,
    mahalanobis_score,
    selective_table,
    uses_gaussians,
    verdict_kinds,
)

DEFAULT_METHOD = "detector"  # measured: see docs/trust.md
FEATURE_IMAGES = 20_000  # training images the class Gaussians are fitted on (a seeded sample): enough for d <= 256
# The detector: trained on those training images against this many generated non-digits of each kind (the set's
# train part, 2,700 pictures); one hidden layer of DETECTOR_HIDDEN units. Measured on bestcnn, fastcnn and seed-ann
# (docs/trust.md): 16-64 units, 100-300 of each kind and 10,000-20,000 digits all did within a few points.
DETECTOR_NEGATIVES_PER_KIND = 300
DETECTOR_HIDDEN = 32
SCORE_QUANTILE = 0.99  # each score of the detector method is scaled to 1 at this quantile of the validation digits


# ---------------------------------------------------------------- features

class Scorer:
    """Probabilities and penultimate features of a model, in one forward pass per chunk (Predictor.outputs), plus
    what fitting needs from the Keras model: the head's name and weights (the energy score's logits)."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        model = predictor.keras_model
        head = head_layer(model) if model is not None and predictor.has_features else None
        self.feature_layer = head.name if head is not None else None
        # the head's weights: logits = features @ kernel + bias (the energy score needs logits)
        self.head_kernel = np.asarray(head.kernel.numpy(), np.float32) if head is not None else None
        self.head_bias = np.asarray(head.bias.numpy(), np.float32) if head is not None else None

    @classmethod
    def from_predictor(cls, predictor: Predictor) -> Scorer:
        return cls(predictor)

    @classmethod
    def from_run(cls, run) -> Scorer:
        """The run's model.keras, without its trust model (fitting needs the model's own probabilities)."""
        model = load_keras_model(run.model_path)
        return cls(Predictor.from_keras(model, class_names=run.class_names, name=run.config.model))

    @property
    def has_features(self) -> bool:
        return self.predictor.has_features

    def outputs(self, x: np.ndarray) -> Outputs:
        """(n, 28, 28) float32 images in [0, 1] -> Outputs (uncalibrated probabilities), in chunks of PREDICT_CHUNK."""
        return self.predictor.outputs(x)

    def logits(self, out: Outputs) -> np.ndarray:
        return out.features.astype(np.float64) @ self.head_kernel + self.head_bias


# ---------------------------------------------------------------- fitting

def fit_trust(scorer: Scorer, x_train, y_train, x_val, y_val, nondigits, method: str = DEFAULT_METHOD,
              target_acceptance: float = DEFAULT_ACCEPTANCE, feature_images: int = FEATURE_IMAGES,
              seed: int = 0, negatives=None, **provenance) -> TrustModel:
    """Fit the temperature and the OOD statistics, then both thresholds, for one model.

    x_train/y_train: training images for the class Gaussians and the detector's digits (a seeded sample of
    `feature_images`); x_val/y_val: the validation split (temperature, thresholds); `nondigits`: the fit part
    of the non-digit set (a digitlab.nondigits.NonDigitSet: .x, .version, .sha256); `negatives`: the detector's
    non-digits, another part of the set (default: its train part, DETECTOR_NEGATIVES_PER_KIND of each kind).
    Without features (an ensemble) the method falls back to msp. `provenance`: TrustModel's fitted_on and
    model_sha256.
    """
    train_out = negatives_out = None
    if uses_gaussians(method) and scorer.has_features:
        pick = np.random.default_rng(seed).permutation(len(y_train))[:feature_images]
        pick.sort()
        train_out = scorer.outputs(x_train[pick])
        y_train = np.asarray(y_train)[pick]
    if method == "detector" and scorer.has_features:
        if negatives is None:
            from digitlab import nondigits as nondigit_sets
            negatives = nondigit_sets.cached_split("train", DETECTOR_NEGATIVES_PER_KIND)
        negatives_out = scorer.outputs(negatives.x)
    return fit_trust_outputs(scorer, train_out, y_train, scorer.outputs(x_val), y_val, scorer.outputs(nondigits.x),
                             method=method, target_acceptance=target_acceptance,
                             nondigit_version=getattr(nondigits, "version", None),
                             nondigit_sha256=getattr(nondigits, "sha256", None), negatives_out=negatives_out,
                             negative_sha256=getattr(negatives, "sha256", None), seed=seed, **provenance)


def fit_trust_outputs(scorer: Scorer, train_out: Outputs | None, y_train, val_out: Outputs, y_val,
                      nd_out: Outputs, method: str = DEFAULT_METHOD, target_acceptance: float = DEFAULT_ACCEPTANCE,
                      nondigit_version: int | None = None, nondigit_sha256: str | None = None,
                      fitted_on: str = "validation", model_sha256: str | None = None,
                      negatives_out: Outputs | None = None, negative_sha256: str | None = None,
                      seed: int = 0) -> TrustModel:
    """fit_trust on outputs already computed (the bench fits every method on one forward pass; evaluation
    scores the test set with the same pass it judges). `negatives_out`: the detector's non-digits."""
    if method not in METHODS:
        raise ValueError(f"unknown OOD method {method!r}; choose one of: {', '.join(METHODS)}")
    if not scorer.has_features:
        method = "msp"
    y_val = np.asarray(y_val).astype(int)
    arrays: dict = {}
    provenance: dict = {}
    if uses_gaussians(method):
        if train_out is None:
            raise ValueError(f"the {method} method needs the training images' outputs")
        arrays["means"], arrays["precision"] = fit_gaussians(train_out.features, y_train, val_out.proba.shape[1])
    if method == "detector":
        if negatives_out is None or not len(negatives_out.proba):
            raise ValueError("the detector method needs generated non-digits to train on (the non-digit set's "
                             "train part)")
        arrays.update(fit_detector(train_out.features, negatives_out.features, val_out.features, arrays, seed))
        provenance = dict(negative_images=len(negatives_out.proba), negative_sha256=negative_sha256)
    elif method == "energy":
        arrays["head_kernel"], arrays["head_bias"] = scorer.head_kernel, scorer.head_bias
    temperature = fit_temperature(log_proba(val_out.proba), y_val)
    draft = TrustModel(temperature, method, Thresholds(0.0, np.inf), **arrays)
    val_cal = draft.calibrate(val_out.proba)
    nd_cal = draft.calibrate(nd_out.proba)
    fit = fit_thresholds(val_cal.max(axis=1), draft.ood_score(val_out.proba, val_out.features),
                         val_cal.argmax(axis=1) == y_val, nd_cal.max(axis=1),
                         draft.ood_score(nd_out.proba, nd_out.features), target_acceptance)
    return TrustModel(temperature, method, fit.thresholds, target_acceptance=target_acceptance,
                      val_acceptance=fit.val_acceptance, fit_rejection=fit.rejection, val_images=len(y_val),
                      nondigit_images=len(nd_out.proba), nondigit_version=nondigit_version,
                      nondigit_sha256=nondigit_sha256, feature_layer=scorer.feature_layer,
                      feature_images=len(train_out.proba) if train_out is not None else None,
                      fitted_on=fitted_on, model_sha256=model_sha256, **provenance, **arrays)


def fit_detector(digit_features: np.ndarray, negative_features: np.ndarray, val_features: np.ndarray,
                 gaussians: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """The detector method's arrays (trust.DETECTOR_ARRAYS): a one-hidden-layer network (scikit-learn's
    MLPClassifier) on [features, log(1 + Mahalanobis distance)] telling digits (0) from generated non-digits (1),
    the negatives repeated to balance the classes; then both scores' medians and spreads on the validation digits.
    `gaussians`: the fitted means and precision."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    def distance(features):
        return mahalanobis_score(features, gaussians["means"], gaussians["precision"])

    digits = detector_inputs(digit_features, distance(digit_features))
    negatives = detector_inputs(negative_features, distance(negative_features))
    negatives = np.repeat(negatives, max(1, len(digits) // len(negatives)), axis=0)
    x = np.concatenate([digits, negatives])
    y = np.concatenate([np.zeros(len(digits)), np.ones(len(negatives))])
    scaler = StandardScaler().fit(x)
    net = MLPClassifier(hidden_layer_sizes=(DETECTOR_HIDDEN,), alpha=1e-2, max_iter=200, random_state=seed)
    with warnings.catch_warnings():  # stopping at max_iter is fine: the thresholds are fitted on what it gives
        warnings.simplefilter("ignore", ConvergenceWarning)
        net.fit(scaler.transform(x), y)
    arrays = {"detector_input": np.stack([scaler.mean_, scaler.scale_]),
              "detector_kernel": net.coefs_[0], "detector_bias": net.intercepts_[0],
              "detector_out": np.concatenate([net.coefs_[1][:, 0], net.intercepts_[1]])}
    val_distance = distance(val_features)
    logit = detector_logit(val_features, val_distance, arrays["detector_input"], arrays["detector_kernel"],
                           arrays["detector_bias"], arrays["detector_out"])
    scales = []
    for score in (np.log1p(val_distance), logit):
        median = float(np.median(score))
        scales.append((median, max(float(np.quantile(score, SCORE_QUANTILE)) - median, 1e-9)))
    arrays["score_scales"] = np.array(scales, np.float64)
    return arrays


# ---------------------------------------------------------------- measuring

def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Area under the ROC curve for telling out-of-distribution inputs (positives) by a higher score."""
    from sklearn.metrics import roc_auc_score
    y = np.concatenate([np.zeros(len(in_scores)), np.ones(len(out_scores))])
    return float(roc_auc_score(y, np.concatenate([in_scores, out_scores])))


@dataclass(frozen=True)
class OodResult:
    name: str  # the out-of-distribution set: fashion-mnist, non-digits (holdout), ...
    images: int
    auroc: float  # of the trust model's OOD score, against the test digits
    rejected: float  # share not answered `digit` at the operating point (unsure or not_a_digit)
    not_a_digit: float  # share called not_a_digit


@dataclass(frozen=True)
class TrustEvaluation:
    method: str
    temperature: float
    before: CalibrationScores  # test digits, raw probabilities
    after: CalibrationScores  # test digits, calibrated
    accuracy: float  # on all test digits
    coverage: float  # share of test digits answered `digit` at the operating point
    selective_accuracy: float  # accuracy on those
    unsure: float  # share of test digits answered unsure
    not_a_digit: float  # share of test digits called not_a_digit
    table: list[tuple[float, float]]  # (coverage, accuracy), answering the surest first (COVERAGES)
    ood: list[OodResult]


def evaluate_trust(trust: TrustModel, test_out: Outputs, y_test, out_sets: dict[str, Outputs]) -> TrustEvaluation:
    """Calibration, selective prediction and OOD detection of `trust` on the test digits and the OOD sets."""
    y = np.asarray(y_test).astype(int)
    cal = trust.calibrate(test_out.proba)
    conf, correct = cal.max(axis=1), cal.argmax(axis=1) == y
    test_scores = trust.ood_score(test_out.proba, test_out.features)
    kinds = verdict_kinds(conf, test_scores, trust.thresholds)
    answered = kinds == "digit"
    results = []
    for name, out in out_sets.items():
        s = trust.ood_score(out.proba, out.features)
        k = verdict_kinds(trust.calibrate(out.proba).max(axis=1), s, trust.thresholds)
        results.append(OodResult(name, len(s), auroc(test_scores, s), float(np.mean(k != "digit")),
                                 float(np.mean(k == "not_a_digit"))))
    return TrustEvaluation(
        trust.method, trust.temperature, scores(test_out.proba, y), scores(cal, y), float(correct.mean()),
        float(answered.mean()), float(correct[answered].mean()) if answered.any() else float("nan"),
        float(np.mean(kinds == "unsure")), float(np.mean(kinds == "not_a_digit")),
        selective_table(conf, correct, COVERAGES), results)


# ---------------------------------------------------------------- figures

def reliability_png(proba_before: np.ndarray, proba_after: np.ndarray, y, title: str = "Reliability") -> bytes:
    """Reliability diagrams before and after calibration: accuracy against confidence per bin, with ECE."""
    import matplotlib.pyplot as plt

    from digitlab import plots
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), sharey=True)
    for ax, proba, name in ((axes[0], proba_before, "before calibration"), (axes[1], proba_after, "after")):
        b = reliability_bins(proba, y)
        s = scores(proba, y)
        width = np.diff(b.edges)
        filled = b.counts > 0
        ax.bar(b.edges[:-1][filled], b.accuracy[filled], width=width[filled], align="edge", color="#4c72b0",
               edgecolor="white", label="accuracy")
        gap_low = np.minimum(b.accuracy, b.confidence)[filled]  # the gap drawn from the lower of the two, up
        ax.bar(b.edges[:-1][filled], np.abs(b.confidence - b.accuracy)[filled], bottom=gap_low,
               width=width[filled], align="edge", color="none", edgecolor="#c44e52", hatch="///",
               label="gap to the mean confidence")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top probability)")
        ax.set_title(f"{name}: ECE {s.ece:.2%}, NLL {s.nll:.4f}, Brier {s.brier:.4f}", fontsize=9)
        ax.grid(alpha=0.3)
        share = ax.twinx()  # how many images each bin holds: most sit in the last one
        share.plot(b.edges[:-1][filled] + width[filled] / 2, b.counts[filled] / b.counts.sum(), "o:",
                   color="grey", ms=3)
        share.set_yscale("log")
        share.set_ylabel("share of images (log)", color="grey", fontsize=8)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return plots.figure_png(fig)


def coverage_png(confidence: np.ndarray, correct: np.ndarray, operating_point: tuple[float, float] | None = None,
                 title: str = "Accuracy against coverage") -> bytes:
    """Accuracy on the answered images against the share answered (surest first), the operating point marked."""
    import matplotlib.pyplot as plt

    from digitlab import plots
    cov, acc = coverage_curve(confidence, correct)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.plot(cov * 100, acc * 100, lw=1.5, label="answering the surest first")
    if operating_point is not None:
        c, a = operating_point
        ax.plot([c * 100], [a * 100], "o", color="#c44e52", label=f"operating point: {c:.2%} answered, {a:.2%} right")
    lo = min(float(acc[int(0.8 * (len(acc) - 1))]), float(acc[-1])) * 100
    ax.set_xlim(80, 100.2)
    ax.set_ylim(max(lo - 0.2, 0), 100.05)
    ax.set_xlabel("coverage: share of test digits answered (%)")
    ax.set_ylabel("accuracy on the answered (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return plots.figure_png(fig)
