"""A verdict for every input: `digit`, `unsure` (best guess and runner-up), `not_a_digit`, or `blank`.

    trust = TrustModel(...)                       # fitted by digitlab.ood.fit_trust; kept in the run
    p = trust.calibrate(proba)                    # temperature-scaled probabilities
    v = trust.judge(proba, features)              # [Verdict(kind="unsure", best=7, runner_up=1, ...), ...]
    v[0].text()                                   # "unsure: 7 or 1?"
    UNFITTED.judge(proba)                         # a model without a fitted trust model: T = 1, unsure below 0.5
    verdict(p[0], score[0], trust.thresholds)     # one row, given calibrated probabilities and an OOD score
    BLANK                                         # for an image preprocessing refused with NoInkError

The rule: an input whose OOD score is above `thresholds.ood` is `not_a_digit`; otherwise one whose
calibrated top probability is below `thresholds.confidence` is `unsure`; otherwise it is a `digit`. The
probabilities are kept in every case. An OOD score is higher for less digit-like inputs:
  - "msp": 1 - the calibrated top probability (maximum softmax probability, Hendrycks & Gimpel 2017);
  - "energy": -logsumexp(logits) of the pre-softmax logits (Liu et al. 2020);
  - "mahalanobis": the squared Mahalanobis distance of the penultimate-layer features to the nearest
    class mean, class-conditional Gaussians with one shared covariance fitted on training images
    (Lee et al. 2018);
  - "detector": the larger of two scores, each scaled so that 0 is the validation digits' median and 1 their
    99th percentile: log(1 + the Mahalanobis distance), and the logit of a small network (one hidden layer)
    trained on the penultimate features and that distance to tell training digits from generated non-digits
    (the non-digit set's train part). The distance catches what is unlike every digit (clothes); the
    network what the generator draws (letters, shapes, smileys), which a digit network maps near some digit.
`fit_thresholds` picks both thresholds on validation digits and the fit part of the non-digit set;
docs/trust.md says which method is the default and why.

Serialisation for the run directory: `to_json()` (scalars, JSON-able) and `arrays()` (for np.savez),
read back with `TrustModel.from_json(doc, arrays)`. Keras-free, so runs.py and any runtime can use it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from digitlab.calibration import apply_temperature
from digitlab.errors import RunError
from digitlab.scoring import logsumexp_rows

TRUST_FORMAT = 2  # of TrustModel.to_json(); a reader refuses a newer one (2: the detector method)
METHODS = ("msp", "energy", "mahalanobis", "detector")
DETECTOR_ARRAYS = ("detector_input", "detector_kernel", "detector_bias", "detector_out", "score_scales")
NEEDS = {"msp": (), "energy": ("head_kernel", "head_bias"), "mahalanobis": ("means", "precision"),
         "detector": ("means", "precision", *DETECTOR_ARRAYS)}
KINDS = ("digit", "unsure", "not_a_digit", "blank")


def uses_gaussians(method: str) -> bool:
    """Whether `method` is fitted on training images' features (the class Gaussians, and the detector's digits)."""
    return "means" in NEEDS[method]


# The default target: at least this share of validation digits answered `digit`. Above the 99% because
# the validation digits come from the training set's writers and are read more surely than a new writer's:
# measured with bench/trust.py, 99.0% of validation digits answered gave 98.8% of the test set's (other writers).
DEFAULT_ACCEPTANCE = 0.9925
COVERAGES = (1.0, 0.995, 0.99, 0.98)  # the selective-prediction table's columns
# A calibrated top probability below this is never answered as a digit: the answer would more likely be wrong
# than right. (A small model's thresholds would otherwise let "4 or 9?" at 0.45 each pass as a confident 4.)
MIN_CONFIDENCE = 0.5
RIDGE = 1e-6  # added to the shared covariance's diagonal, times its mean variance: dead ReLU units make it singular


# ---------------------------------------------------------------- verdicts

@dataclass(frozen=True)
class Thresholds:
    confidence: float  # calibrated top probability at or above which a digit is answered
    ood: float  # OOD score above which the input is not_a_digit (inf: never)


@dataclass(frozen=True)
class Verdict:
    kind: str  # digit | unsure | not_a_digit | blank
    digit: int | None = None  # the answer, set only when kind == "digit"
    best: int | None = None  # the best guess (None for blank)
    runner_up: int | None = None
    confidence: float | None = None  # calibrated probability of the best guess
    ood_score: float | None = None

    def text(self, class_names=None) -> str:
        """What a person reads: "7", "unsure: 7 or 1?", "not a digit", "blank"."""
        name = (lambda c: str(class_names[c])) if class_names is not None else str
        if self.kind == "digit":
            return name(self.digit)
        if self.kind == "unsure":
            return f"unsure: {name(self.best)} or {name(self.runner_up)}?"
        return "not a digit" if self.kind == "not_a_digit" else "blank"


BLANK = Verdict("blank")
FITTED_ON = ("validation", "training")


def verdict(proba_calibrated: np.ndarray, ood_score: float, thresholds: Thresholds) -> Verdict:
    """The verdict on one input, from its calibrated probabilities (k,) and its OOD score."""
    p = np.asarray(proba_calibrated, dtype=np.float64)
    order = np.argsort(-p, kind="stable")
    best, runner_up, top = int(order[0]), int(order[1]), float(p[order[0]])
    common = dict(best=best, runner_up=runner_up, confidence=top, ood_score=float(ood_score))
    if ood_score > thresholds.ood:
        return Verdict("not_a_digit", **common)
    if top < thresholds.confidence:
        return Verdict("unsure", **common)
    return Verdict("digit", digit=best, **common)


def verdict_kinds(confidence: np.ndarray, ood: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """`verdict(...).kind` for many inputs at once, from their top probabilities and OOD scores."""
    kinds = np.full(len(confidence), "digit", dtype=object)
    kinds[np.asarray(confidence) < thresholds.confidence] = "unsure"
    kinds[np.asarray(ood) > thresholds.ood] = "not_a_digit"
    return kinds


# ---------------------------------------------------------------- OOD scores

def msp_score(proba_calibrated: np.ndarray) -> np.ndarray:
    return 1.0 - np.asarray(proba_calibrated, dtype=np.float64).max(axis=1)


def energy_score(logits: np.ndarray) -> np.ndarray:
    return -logsumexp_rows(np.asarray(logits, dtype=np.float64))


def mahalanobis_score(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """min over classes of (f - mu_c)^T P (f - mu_c), for each row f of `features` (n, d)."""
    f = np.asarray(features, dtype=np.float64)
    fp = f @ precision  # (n, d)
    # mu_c^T P mu_c as a matrix product: einsum's unoptimised three-operand loop took 0.27 ms a call (d = 128)
    d2 = (np.sum(fp * f, axis=1)[:, None] - 2.0 * fp @ means.T
          + np.sum((means @ precision) * means, axis=1)[None, :])  # (n, classes)
    return np.maximum(d2.min(axis=1), 0.0)


def detector_inputs(features: np.ndarray, mahalanobis: np.ndarray) -> np.ndarray:
    """What the non-digit detector reads: the features and log(1 + the Mahalanobis distance), (n, d + 1)."""
    return np.concatenate([np.asarray(features, np.float64), np.log1p(mahalanobis)[:, None]], axis=1)


def detector_logit(features: np.ndarray, mahalanobis: np.ndarray, detector_input: np.ndarray,
                   kernel: np.ndarray, bias: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The non-digit detector's logit: detector_inputs, standardised (detector_input: (2, d + 1), mean then
    scale), through one ReLU layer (kernel (d + 1, h), bias (h,)) to one output (out: h weights, then the bias).
    A forward pass written out because it is two matrix products and must run without scikit-learn."""
    x = detector_inputs(features, mahalanobis)
    hidden = np.maximum(((x - detector_input[0]) / detector_input[1]) @ kernel + bias, 0.0)
    return hidden @ out[:-1] + out[-1]


def combined_score(mahalanobis: np.ndarray, logit: np.ndarray, score_scales: np.ndarray) -> np.ndarray:
    """max of log(1 + distance) and the detector's logit, each as (score - median) / (99th percentile - median)
    of the validation digits' (score_scales: rows distance, logit; columns median, spread)."""
    distance = (np.log1p(mahalanobis) - score_scales[0, 0]) / score_scales[0, 1]
    return np.maximum(distance, (logit - score_scales[1, 0]) / score_scales[1, 1])


def fit_gaussians(features: np.ndarray, y: np.ndarray, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Class means (classes, d) and the precision (d, d) of the shared, class-centred covariance."""
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(y).astype(int)
    means = np.stack([f[y == c].mean(axis=0) for c in range(classes)])
    centred = f - means[y]
    cov = centred.T @ centred / len(f)
    cov += RIDGE * max(float(np.mean(np.diag(cov))), 1e-12) * np.eye(len(cov))
    return means, np.linalg.pinv(cov, hermitian=True)


# ---------------------------------------------------------------- the trust model

@dataclass(frozen=True)
class TrustModel:
    """Everything a verdict needs besides the model: the temperature, the OOD method and its fitted
    statistics, the thresholds, and what they were fitted on and for."""
    temperature: float  # calibration: softmax(log p / T)
    method: str  # the OOD score: msp | energy | mahalanobis | detector
    thresholds: Thresholds
    target_acceptance: float = DEFAULT_ACCEPTANCE  # the target: share of validation digits answered `digit`
    val_acceptance: float | None = None  # the share reached on the validation digits
    fit_rejection: float | None = None  # share of the fit non-digits not answered `digit`
    val_images: int | None = None  # validation digits the temperature and thresholds were fitted on
    nondigit_images: int | None = None  # fit non-digits the thresholds were chosen on
    nondigit_version: int | None = None  # digitlab.nondigits.GENERATOR_VERSION of those
    nondigit_sha256: str | None = None
    feature_layer: str | None = None  # the final Dense layer whose input is the feature vector
    feature_images: int | None = None  # training images the class Gaussians (and the detector's digits) were fitted on
    negative_images: int | None = None  # generated non-digits the detector was trained on (the set's train part)
    negative_sha256: str | None = None
    # "validation": the temperature and thresholds were fitted on images the model never trained on;
    # "training": on a split carved from its training images, because it has no clean one (--val test, --val 0
    # with every training image trained on): expect it to be over-confident, the report says so
    fitted_on: str = "validation"
    model_sha256: str | None = None  # of the model file it was fitted for: another model file makes it stale
    # arrays, saved with np.savez (see arrays()): only those the method needs are set
    means: np.ndarray | None = field(default=None, repr=False)  # (classes, d) class means of the features
    precision: np.ndarray | None = field(default=None, repr=False)  # (d, d) shared precision matrix
    head_kernel: np.ndarray | None = field(default=None, repr=False)  # (d, classes) final Dense kernel (energy)
    head_bias: np.ndarray | None = field(default=None, repr=False)  # (classes,) its bias
    # the detector (see detector_logit, combined_score)
    detector_input: np.ndarray | None = field(default=None, repr=False)  # (2, d + 1) standardisation: mean, scale
    detector_kernel: np.ndarray | None = field(default=None, repr=False)  # (d + 1, hidden)
    detector_bias: np.ndarray | None = field(default=None, repr=False)  # (hidden,)
    detector_out: np.ndarray | None = field(default=None, repr=False)  # (hidden + 1,) output weights, then bias
    score_scales: np.ndarray | None = field(default=None, repr=False)  # (2, 2) median and spread of both scores

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown OOD method {self.method!r}; choose one of: {', '.join(METHODS)}")
        missing = [name for name in NEEDS[self.method] if getattr(self, name) is None]
        if missing:
            raise ValueError(f"the {self.method} method needs {', '.join(missing)}")
        if self.fitted_on not in FITTED_ON:
            raise ValueError(f"fitted_on must be one of {', '.join(FITTED_ON)}, got {self.fitted_on!r}")

    @property
    def needs_features(self) -> bool:
        return self.method != "msp"

    def calibrate(self, proba: np.ndarray) -> np.ndarray:
        return apply_temperature(proba, self.temperature)

    def ood_score(self, proba: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        """(n,) OOD scores of raw (uncalibrated) probabilities and, unless msp, the penultimate features."""
        if self.method == "msp":
            return msp_score(self.calibrate(proba))
        if features is None:
            raise ValueError(f"the {self.method} OOD score needs the penultimate features (Scorer.outputs)")
        if self.method == "energy":
            return energy_score(np.asarray(features, np.float64) @ self.head_kernel + self.head_bias)
        distance = mahalanobis_score(features, self.means, self.precision)
        if self.method == "mahalanobis":
            return distance
        logit = detector_logit(features, distance, self.detector_input, self.detector_kernel, self.detector_bias,
                               self.detector_out)
        return combined_score(distance, logit, self.score_scales)

    def judge(self, proba: np.ndarray, features: np.ndarray | None = None) -> list[Verdict]:
        """A verdict per row of raw probabilities (n, classes) (and features (n, d) unless msp)."""
        calibrated = self.calibrate(proba)
        scores = self.ood_score(proba, features)
        return [verdict(p, s, self.thresholds) for p, s in zip(calibrated, scores)]

    def with_thresholds(self, confidence: float | None = None, ood: float | None = None) -> TrustModel:
        """A copy with user-chosen thresholds (`--threshold` / `--ood-threshold`); None keeps the fitted one."""
        th = Thresholds(self.thresholds.confidence if confidence is None else float(confidence),
                        self.thresholds.ood if ood is None else float(ood))
        return dataclasses.replace(self, thresholds=th)

    # ---- serialisation: JSON scalars + named arrays

    def to_json(self) -> dict:
        doc = {"format": TRUST_FORMAT}
        for f in dataclasses.fields(self):
            if f.name in ARRAY_FIELDS:
                continue
            value = getattr(self, f.name)
            doc[f.name] = dataclasses.asdict(value) if isinstance(value, Thresholds) else value
        doc["thresholds"] = {k: _finite_or_none(v) for k, v in doc["thresholds"].items()}
        doc["arrays"] = sorted(self.arrays())
        return doc

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: np.asarray(getattr(self, name)) for name in ARRAY_FIELDS if getattr(self, name) is not None}

    @classmethod
    def from_json(cls, doc: dict, arrays: dict | None = None) -> TrustModel:
        """Rebuild from to_json()'s document and arrays() (an np.load of the .npz will do)."""
        if not isinstance(doc, dict):
            raise RunError("the trust model is not a JSON object; fit it again")
        doc = dict(doc)
        version = doc.pop("format", None)
        if not isinstance(version, int) or version > TRUST_FORMAT:
            raise RunError(f"the trust model has format {version!r}; this digitlab reads up to {TRUST_FORMAT}: "
                           "upgrade digitlab, or fit the trust model again")
        listed = doc.pop("arrays", [])
        names = {f.name for f in dataclasses.fields(cls)} - set(ARRAY_FIELDS)
        unknown = sorted(set(doc) - names)
        if unknown:
            raise RunError(f"the trust model has field {unknown[0]!r}, unknown to this digitlab version")
        arrays = arrays if arrays is not None else {}
        missing = [name for name in listed if name not in arrays]
        if missing:
            raise RunError(f"the trust model's arrays lack {', '.join(missing)}; the file is damaged: fit it again")
        try:
            th = doc.pop("thresholds")
            thresholds = Thresholds(float(th["confidence"]),
                                    math.inf if th["ood"] is None else float(th["ood"]))
            return cls(thresholds=thresholds, **doc, **{name: np.asarray(arrays[name]) for name in listed})
        except (KeyError, TypeError, ValueError) as exc:
            raise RunError(f"the trust model is incomplete or damaged ({exc}); fit it again") from None


ARRAY_FIELDS = ("means", "precision", "head_kernel", "head_bias", *DETECTOR_ARRAYS)

# For a model with no fitted trust model (a run evaluated by a digitlab before issue 11, a stand-in model):
# its own probabilities (T = 1), `unsure` below MIN_CONFIDENCE, and never `not_a_digit`, as nothing was fitted
# to tell. `digitlab evaluate RUN` fits the real one.
UNFITTED = TrustModel(1.0, "msp", Thresholds(MIN_CONFIDENCE, math.inf))


def _finite_or_none(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)  # JSON has no infinity


# ---------------------------------------------------------------- choosing the thresholds

@dataclass(frozen=True)
class ThresholdFit:
    thresholds: Thresholds
    val_acceptance: float  # share of validation digits answered `digit`
    val_selective_accuracy: float  # accuracy on those
    rejection: float  # share of the fit non-digits not answered `digit`
    not_a_digit: float  # share of the fit non-digits called not_a_digit


def fit_thresholds(val_confidence: np.ndarray, val_ood: np.ndarray, val_correct: np.ndarray,
                   nd_confidence: np.ndarray, nd_ood: np.ndarray,
                   target_acceptance: float = DEFAULT_ACCEPTANCE) -> ThresholdFit:
    """Both thresholds, at the stated target: answer at least `target_acceptance` of the validation digits
    as `digit`, and within that budget reject as many of the (fit) non-digits as possible.

    The budget of validation digits that may go unanswered is split between the two thresholds in every
    possible way: the OOD threshold at each of the top-scoring validation digits in turn, the confidence
    threshold then as high as the target allows. Among the splits whose non-digit rejection is within one
    standard error of the best (Breiman's one-standard-error rule: a few hundred non-digits cannot tell
    closer splits apart), the one with the highest accuracy on the answered validation digits wins, then
    the one calling the fewest validation digits not_a_digit. Without that rule a small model's budget
    all goes to the OOD score, leaving `unsure` unused, though it costs no measurable rejection.
    The confidence threshold is at least MIN_CONFIDENCE whenever the target can be met with it.
    """
    conf, ood = np.asarray(val_confidence, np.float64), np.asarray(val_ood, np.float64)
    correct = np.asarray(val_correct, bool)
    nd_conf, nd_ood = np.asarray(nd_confidence, np.float64), np.asarray(nd_ood, np.float64)
    n = len(conf)
    if n == 0:
        raise ValueError("fit_thresholds needs validation digits")
    need = math.ceil(target_acceptance * n - 1e-9)  # validation digits that must be answered
    splits = []
    for floor in (MIN_CONFIDENCE, 0.0):  # without the floor only if no split meets the target with it
        for t_ood in np.unique(np.sort(ood)[need - 1:]):  # each OOD threshold leaving at least `need` digits
            passing = ood <= t_ood
            t_conf = max(float(np.sort(conf[passing])[::-1][need - 1]), floor)
            accepted = passing & (conf >= t_conf)
            if accepted.sum() >= need:
                splits.append(_split(t_conf, float(t_ood), passing, accepted, correct, nd_conf, nd_ood))
        if splits:
            break
    top = max(fit.rejection for fit, _ in splits)
    se = math.sqrt(top * (1 - top) / len(nd_ood)) if len(nd_ood) else 0.0
    close = [(fit, passing) for fit, passing in splits if fit.rejection >= top - se - 1e-12]
    return max(close, key=lambda c: (c[0].val_selective_accuracy, c[1]))[0]


def _split(t_conf: float, t_ood: float, passing, accepted, correct, nd_conf, nd_ood) -> tuple[ThresholdFit, float]:
    nd_accepted = (nd_ood <= t_ood) & (nd_conf >= t_conf)
    fit = ThresholdFit(Thresholds(t_conf, t_ood), float(accepted.mean()), float(correct[accepted].mean()),
                       1.0 - float(nd_accepted.mean()) if len(nd_ood) else 0.0,
                       float((nd_ood > t_ood).mean()) if len(nd_ood) else 0.0)
    return fit, float(passing.mean())  # passing: share of validation digits not called not_a_digit


# ---------------------------------------------------------------- selective prediction

def coverage_curve(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, accuracy): answering the k surest inputs, for k = 1..n; accuracy on those answered."""
    order = np.argsort(-np.asarray(confidence), kind="stable")
    right = np.asarray(correct, np.float64)[order]
    k = np.arange(1, len(right) + 1)
    return k / len(right), np.cumsum(right) / k


def selective_table(confidence: np.ndarray, correct: np.ndarray,
                    coverages=COVERAGES) -> list[tuple[float, float]]:
    """[(coverage, accuracy on the answered)] at the given coverages, answering the surest first."""
    cov, acc = coverage_curve(confidence, correct)
    n = len(cov)
    return [(c, float(acc[max(1, math.floor(c * n + 1e-9)) - 1])) for c in coverages]
