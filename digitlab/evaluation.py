"""Evaluate predicted probabilities against the test set and write the report artefacts.

    metrics = evaluate_run(open_run("runs/..."))        # a run: scores its model, fits its trust model, reports
    metrics = write_evaluation(out, y_test, proba, x_test, class_names)   # any model (compare uses this)

Artefacts, all written atomically into the folder: metrics.json, classification_report.{txt,json},
confusion_matrix.{csv,png}, confused_pairs.txt, misclassified.png, loss.png and accuracy.png (when a
history is given) and report.html, one self-contained page with all of it.

For a run, evaluation also fits its trust model (issue 11, docs/trust.md) and stores it in the run (trust.json,
trust.npz): the temperature and both thresholds on digits the model never trained on (its validation split, and
the training images a --train-size left out; for an ensemble, those no member trained on), the class Gaussians
of the Mahalanobis score and the non-digit detector on its training images (the detector against the non-digit
set's train part), the non-digit set's fit part for the thresholds. A run with no such images (--val test, or
--val 0 on every training image) is fitted on a seeded split of its training images instead, and its report says
so. The report then shows the reliability diagram, ECE/NLL/Brier before and after calibration, the
accuracy-coverage curve and table, and the OOD figures against the non-digit set's held-out part and, when it is
on this machine (cache or DIGITLAB_DATA_DIR: evaluation never downloads it), Fashion-MNIST's test set.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix

from digitlab import nondigits, plots
from digitlab.atomic import write_json_atomic, write_text_atomic
from digitlab.data import Dataset, load_dataset, prepare_split, scale
from digitlab.errors import DigitlabError, RunError
from digitlab.ood import (
    DEFAULT_METHOD,
    DETECTOR_NEGATIVES_PER_KIND,
    FEATURE_IMAGES,
    Scorer,
    TrustEvaluation,
    coverage_png,
    evaluate_trust,
    fit_trust_outputs,
    reliability_png,
)
from digitlab.predictor import Outputs, Predictor
from digitlab.report import render_report, trust_section
from digitlab.runs import (
    EnsembleConfig,
    EpochRecord,
    Metrics,
    OodFigures,
    Run,
    TrainConfig,
    TrustFigures,
    to_json,
    write_metrics,
)
from digitlab.scoring import accuracy, log_loss
from digitlab.trust import uses_gaussians

VAL_IS_TEST_NOTE = ("Validation figures are test-set figures: this run validated on the test set (--val test), "
                    "as the tutorial does.")
FIT_IMAGES = 10_000  # at most this many never-trained-on digits (a seeded sample) fit the temperature and thresholds
MIN_CLEAN_IMAGES = 500  # fewer never-trained-on digits than this: fit on carved training images instead
CARVED_IMAGES = 5_000  # with no clean digits: a seeded sample of the training images fits them (trained on)
NONDIGITS_PER_KIND = 30  # non-digit pictures per kind (9 kinds): 270 fit the thresholds, 270 held out measure
NONDIGITS_HOLDOUT = "non-digits (held out)"  # the OOD sets' names in the report and metrics.json
FASHION = "fashion-mnist"


@dataclass
class EvaluationContext:
    """What a report says besides the scores; each producer (a run, compare, an ensemble) fills its part."""
    title: str = "digitlab report"
    notes: list[str] = field(default_factory=list)  # highlighted paragraphs at the top
    sections: list[dict] = field(default_factory=list)  # {"title", "html"}: extra report sections
    details: dict[str, object] = field(default_factory=dict)  # heading -> JSON-able value, shown at the end
    about: dict = field(default_factory=dict)  # Metrics' optional fields: model, keras_backend, train_seconds, ...
    extra: dict = field(default_factory=dict)  # Metrics.extra: figures particular to the producer


def confused_pairs(cm: np.ndarray, class_names, top: int = 10) -> list[dict]:
    """Off-diagonal cells of the confusion matrix, most frequent first."""
    pairs = [{"true": class_names[i], "predicted": class_names[j], "count": int(cm[i, j])}
             for i in range(len(cm)) for j in range(len(cm)) if i != j and cm[i, j] > 0]
    pairs.sort(key=lambda p: (-p["count"], p["true"], p["predicted"]))
    return pairs[:top]


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, class_names) -> dict:
    y_true = np.asarray(y_true).astype(int)
    y_pred = proba.argmax(axis=1)
    labels = list(range(len(class_names)))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    report = classification_report(y_true, y_pred, labels=labels, target_names=list(class_names),
                                   output_dict=True, zero_division=0)
    return {
        "test_accuracy": accuracy(y_true, proba),
        "test_loss": log_loss(y_true, proba),
        "test_images": int(len(y_true)),
        "test_errors": int(np.sum(y_pred != y_true)),
        "confusion_matrix": cm.tolist(),
        "classification_report": report,
        "confused_pairs": confused_pairs(cm, list(class_names)),
    }


def report_text(report: dict, class_names, digits: int = 4) -> str:
    """scikit-learn's text layout of a classification report, from its dict (so it is computed once)."""
    width = max(len(n) for n in [*class_names, "weighted avg"])
    head = ["precision", "recall", "f1-score", "support"]
    lines = [" " * width + " " + "".join(f"{h:>10}" for h in head), ""]

    def row(name, r):
        return (f"{name:>{width}} " + "".join(f"{r[k]:>10.{digits}f}" for k in head[:3])
                + f"{int(r['support']):>10}")

    lines += [row(n, report[n]) for n in class_names] + [""]
    support = int(report["macro avg"]["support"])
    lines.append(f"{'accuracy':>{width}} " + " " * 20 + f"{report['accuracy']:>10.{digits}f}{support:>10}")
    lines += [row(n, report[n]) for n in ("macro avg", "weighted avg")]
    return "\n".join(lines) + "\n"


def misclassified_order(y_true, proba) -> np.ndarray:
    """Indices of the mistakes, the most confident mistakes first."""
    y_pred = proba.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != y_true)
    return wrong[np.argsort(-proba[wrong].max(axis=1), kind="stable")]


def write_evaluation(out_dir: str | Path, y_true, proba, x_images, class_names,
                     history: list[EpochRecord] | None = None, context: EvaluationContext | None = None,
                     shown_proba: np.ndarray | None = None, trust: TrustFigures | None = None) -> Metrics:
    """Compute the metrics, write every artefact into `out_dir`, and return the metrics.

    `proba` are the model's own probabilities (the scores: accuracy, loss); `shown_proba`, when given, the
    calibrated ones the misclassified figure shows; `trust`, the trust model's figures for metrics.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    context = context or EvaluationContext()
    class_names = list(class_names)
    y_true = np.asarray(y_true).astype(int)
    scores = classification_metrics(y_true, proba, class_names)
    cm = np.array(scores["confusion_matrix"])
    text = report_text(scores["classification_report"], class_names)

    write_text_atomic(out / "classification_report.txt", text)
    write_json_atomic(out / "classification_report.json", scores["classification_report"])
    write_text_atomic(out / "confusion_matrix.csv", _confusion_csv(cm, class_names))
    write_text_atomic(out / "confused_pairs.txt", "".join(
        f"{p['true']} -> {p['predicted']}: {p['count']} times\n" for p in scores["confused_pairs"]))

    shown = proba if shown_proba is None else shown_proba
    figures = {"confusion_matrix": plots.confusion_matrix_png(cm, class_names),
               "misclassified": plots.misclassified_png(x_images, y_true, shown, misclassified_order(y_true, shown),
                                                        class_names)}
    if history:
        figures["loss"] = plots.history_png(history, "loss")
        figures["accuracy"] = plots.history_png(history, "accuracy")
    for name, png in figures.items():
        plots.save_png(out / f"{name}.png", png)

    metrics = Metrics(test_accuracy=scores["test_accuracy"], test_loss=scores["test_loss"],
                      test_images=scores["test_images"], test_errors=scores["test_errors"],
                      macro_f1=scores["classification_report"]["macro avg"]["f1-score"],
                      confused_pairs=scores["confused_pairs"], trust=trust, extra=context.extra, **context.about)
    write_text_atomic(out / "report.html", render_report(context, metrics, text, figures, history or []))
    write_metrics(out, metrics)  # last: a run with metrics.json has its whole evaluation (train --resume relies on it)
    return metrics


def _confusion_csv(cm: np.ndarray, class_names) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["true \\ predicted", *class_names])
    for name, row in zip(class_names, cm, strict=True):
        writer.writerow([name, *map(int, row)])
    return buf.getvalue()


def evaluate_run(run: Run, dataset: Dataset | None = None, predictor: Predictor | None = None,
                 with_diagnostics: bool = True, with_trust: bool = True) -> Metrics:
    """Score a run's model on its dataset's test set and (re)write its evaluation artefacts.

    With `with_diagnostics`, the report also answers the tutorial's quiz (digitlab.diagnostics): the
    overfitting gap and the epoch early stopping chose, dead ReLU units, the first layer's weights;
    the numbers go to diagnostics.json. With `with_trust`, the run's trust model is fitted and stored
    (trust.json), and the report gets its figures (see the module's docstring).
    """
    ds = dataset or load_dataset(run.config.dataset)
    # The run's model itself, not an export of it; its own probabilities (outputs), not the calibrated ones.
    predictor = predictor or Predictor.from_run(run, runtime="keras", trust=False)
    test_out = predictor.outputs(scale(ds.x_test), features=with_trust)  # one pass: probabilities and features
    proba = test_out.proba
    if not np.isfinite(proba).all():
        raise RunError(f"the model in {run.path} outputs non-finite probabilities (NaN or infinity): its weights "
                       "are broken, as when training diverged; train the run again with a lower --lr")
    state = run.state
    env = run.environment
    context = EvaluationContext(
        title=run.title, notes=[VAL_IS_TEST_NOTE] if run.data.val_is_test else [],
        details={"Configuration": to_json(run.config), "Data provenance": to_json(run.data),
                 "Run state": to_json(state), "Environment": to_json(env) if env else None,
                 "Exports, checked against Keras (export.json)": {f: to_json(c) for f, c in run.exports.items()}},
        about={"model": run.config.model, "train_seconds": state.train_seconds, "val_is_test": run.data.val_is_test,
               "keras_backend": env.keras_backend if env else None})
    if with_diagnostics and isinstance(run.config, TrainConfig) and predictor.keras_model is not None:
        _add_diagnostics(run, ds, predictor, proba, context)
    shown, figures = proba, None
    if with_trust:
        trust, figures = add_trust(run, ds, predictor, test_out, context)
        shown = trust.calibrate(proba)
    return run_metrics(run, write_evaluation(run.path, ds.y_test, proba, ds.x_test, ds.class_names,
                                             history=run.history, context=context, shown_proba=shown,
                                             trust=figures))


def run_metrics(run: Run, metrics: Metrics) -> Metrics:
    run.__dict__["metrics"] = metrics  # the Run's cached copy follows the file just written
    return metrics


def _add_diagnostics(run: Run, ds: Dataset, predictor: Predictor, proba, context: EvaluationContext) -> None:
    """Diagnostics sections and artefacts for a trained run (part of evaluate_run)."""
    # Imported here: diagnostics runs Keras models, and compare's classic models are evaluated without Keras.
    from digitlab import diagnostics
    split = prepare_split(run.config, ds)
    model = predictor.keras_model
    diag = diagnostics.diagnose(model, run.history, run.state, run.config, scale(split.x_train),
                                split.y_train.astype(int), scale(split.x_val), split.y_val.astype(int))
    first = diagnostics.first_layer(model)
    gap, first_png = diagnostics.gap_png(diag), diagnostics.first_layer_png(first)
    for name, png in (("generalisation_gap", gap), ("first_layer", first_png)):
        if png:
            plots.save_png(run.path / f"{name}.png", png)
    write_json_atomic(run.path / "diagnostics.json", diag)
    y_test = ds.y_test.astype(int)
    test = {"test_accuracy": accuracy(y_test, proba), "test_loss": log_loss(y_test, proba)}
    context.sections += diagnostics.report_sections(diag, test, first, gap, first_png)
    context.about.update(
        train_accuracy_clean=diag["train_accuracy"], best_epoch=diag["overfitting"]["best_epoch"],
        dead_unit_share=max((d["fraction"] for d in diag["dead_units"]), default=None))


# ---------------------------------------------------------------- trust (issue 11)

@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class FitSplit:
    """The digits a run's temperature and thresholds are fitted on."""
    x: np.ndarray  # (n, 28, 28) uint8, as stored
    y: np.ndarray  # (n,) int
    fitted_on: str  # "validation": never trained on | "training": carved from the training images
    how: str  # in words, for the report


def add_trust(run: Run, ds: Dataset, predictor: Predictor, test_out: Outputs, context: EvaluationContext):
    """Fit the run's trust model, store it (trust.json), measure it on the test set and the OOD sets, and add its
    section to the report. Returns (the TrustModel, its TrustFigures for metrics.json)."""
    scorer = Scorer(predictor)
    fit = trust_fit_split(run, ds)
    x_train, y_train = _training_images(run, ds)
    train_out = negatives_out = negatives = None
    if uses_gaussians(DEFAULT_METHOD) and scorer.has_features:
        # the class Gaussians and the detector's digits, on the training images
        pick = np.sort(np.random.default_rng(_seed(run)).permutation(len(y_train))[:FEATURE_IMAGES])
        train_out, y_train = scorer.outputs(scale(x_train[pick])), y_train[pick]
        if DEFAULT_METHOD == "detector":
            negatives = nondigit_set("train", DETECTOR_NEGATIVES_PER_KIND)
            negatives_out = scorer.outputs(negatives.x)
    fit_set = nondigit_set("fit")
    trust = fit_trust_outputs(scorer, train_out, y_train, scorer.outputs(scale(fit.x)), fit.y,
                              scorer.outputs(fit_set.x), method=DEFAULT_METHOD, nondigit_version=fit_set.version,
                              nondigit_sha256=fit_set.sha256, fitted_on=fit.fitted_on,
                              model_sha256=run.model_sha256(), negatives_out=negatives_out,
                              negative_sha256=negatives.sha256 if negatives is not None else None, seed=_seed(run))
    run.write_trust(trust)

    out_sets = {NONDIGITS_HOLDOUT: scorer.outputs(nondigit_set("holdout").x)}
    fashion = fashion_test() if run.config.dataset == "mnist" else None
    if fashion is not None:
        out_sets[FASHION] = scorer.outputs(fashion)
    result = evaluate_trust(trust, test_out, ds.y_test, out_sets)
    figures = trust_figures(result, trust, len(fit.y))
    calibrated = trust.calibrate(test_out.proba)
    cal_conf, correct = calibrated.max(axis=1), calibrated.argmax(axis=1) == ds.y_test.astype(int)
    pngs = {"reliability": reliability_png(test_out.proba, calibrated, ds.y_test,
                                           title=f"Reliability on the {len(ds.y_test):,} test images"),
            "coverage": coverage_png(cal_conf, correct, (result.coverage, result.selective_accuracy)
                                     if result.coverage > 0 else None)}
    for name, png in pngs.items():
        plots.save_png(run.path / f"{name}.png", png)
    notes = [fit.how]
    if fashion is None and run.config.dataset == "mnist":
        notes.append("Fashion-MNIST is not on this machine (evaluation never downloads it): `digitlab data "
                     "--dataset fashion-mnist` fetches it once, and the next evaluation measures against it too.")
    if fit.fitted_on == "training":
        context.notes.append(f"Trust: {fit.how}")
    context.sections.append(trust_section(figures, trust, pngs, notes))
    return trust, figures


def trust_fit_split(run: Run, ds: Dataset) -> FitSplit:
    """The digits to fit the temperature and thresholds on: those the run's model never trained on (its validation
    split, and the training images a --train-size left out; for an ensemble, those no member trained on), at most
    FIT_IMAGES of them; with fewer than MIN_CLEAN_IMAGES, CARVED_IMAGES of its training images instead."""
    n = len(ds.y_train)
    rng = np.random.default_rng(_seed(run))
    try:
        trained = trained_indices(run, ds)
    except RunError as exc:  # an ensemble whose member moved: which images it trained on is unknown
        trained, unknown = np.arange(n), str(exc)
    else:
        unknown = ""
    clean = np.setdiff1d(np.arange(n), trained)
    if len(clean) >= MIN_CLEAN_IMAGES:
        pick = np.sort(rng.permutation(clean)[:FIT_IMAGES])
        some = f"a seeded sample of the {len(clean):,}" if len(pick) < len(clean) else "the"
        return FitSplit(ds.x_train[pick], ds.y_train[pick].astype(int), "validation",
                        f"The temperature and thresholds were fitted on {len(pick):,} digits the model never trained "
                        f"on: {some} {_clean_source(run, len(clean))}.")
    pick = np.sort(rng.permutation(n)[:CARVED_IMAGES])
    if unknown:
        why = unknown
    elif len(clean):
        why = f"only {len(clean)} training-set images were never trained on (fewer than {MIN_CLEAN_IMAGES})"
    elif isinstance(run.config, EnsembleConfig):
        why = "its members trained on every training image between them"
    else:
        why = ("it validated on the test set (--val test)" if run.data.val_is_test
               else "it trained on every training image (--val 0)")
    return FitSplit(ds.x_train[pick], ds.y_train[pick].astype(int), "training",
                    f"No clean split: {why}, so the temperature and thresholds were fitted on {len(pick):,} "
                    "images carved (seeded) from its training set, which the model has seen: its confidence on "
                    "them is higher than on new digits, so expect the calibration to be over-confident and the "
                    "thresholds to answer fewer new digits than the target. Train with a validation split "
                    "(the default --val 5000) for a clean fit.")


def _clean_source(run: Run, clean: int) -> str:
    """What the `clean` never-trained-on training-set images are, in words."""
    if isinstance(run.config, EnsembleConfig):
        return "training-set images none of its members trained on"
    val = int(run.config.val) if str(run.config.val).isdigit() else 0  # "test": the validation split is the test set
    parts = [f"images of its validation split ({val:,})"] if val else []
    if clean > val:
        parts.append(f"training images its --train-size left out ({clean - val:,})")
    return " and ".join(parts) or "training-set images"


def trained_indices(run: Run, ds: Dataset) -> np.ndarray:
    """Indices into ds.x_train of the images the run's model trained on (any member's, for an ensemble)."""
    cfg = run.config
    if isinstance(cfg, EnsembleConfig):
        parts = []
        for member in cfg.members:
            if not (Path(member) / "config.json").exists():
                raise RunError(f"its member {member} is not there any more")
            parts.append(trained_indices(Run(member), ds))
        return np.unique(np.concatenate(parts)) if parts else np.arange(len(ds.y_train))
    # prepare_split on a dataset whose "images" are their own indices: the split training uses, as indices
    indexed = dataclasses.replace(ds, x_train=np.arange(len(ds.y_train)))
    return np.asarray(prepare_split(cfg, indexed).x_train)


def _training_images(run: Run, ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The run's training images (uint8) and labels; for an ensemble, the whole training set."""
    if isinstance(run.config, TrainConfig):
        split = prepare_split(run.config, ds)
        return split.x_train, split.y_train.astype(int)
    return ds.x_train, ds.y_train.astype(int)


def _seed(run: Run) -> int:
    return run.config.seed if isinstance(run.config, TrainConfig) else 0


@functools.cache
def nondigit_set(part: str, per_kind: int = NONDIGITS_PER_KIND) -> nondigits.NonDigitSet:
    """A part of the project's non-digit set, drawn once per process (a --seeds group evaluates several runs)."""
    return nondigits.cached_split(part, per_kind=per_kind)


def fashion_test() -> np.ndarray | None:
    """Fashion-MNIST's test images, scaled, if they are on this machine already (cache or DIGITLAB_DATA_DIR);
    None otherwise: evaluation never downloads."""
    try:
        return scale(load_dataset(FASHION, sources=[]).x_test)
    except DigitlabError:
        return None


def trust_figures(result: TrustEvaluation, trust, fit_images: int) -> TrustFigures:
    """ood.evaluate_trust's result as metrics.json keeps it (strict JSON: no NaN, no infinity)."""
    def finite(v):
        return float(v) if v is not None and math.isfinite(v) else None

    return TrustFigures(
        method=result.method, temperature=result.temperature, fitted_on=trust.fitted_on, fit_images=fit_images,
        confidence_threshold=trust.thresholds.confidence, ood_threshold=finite(trust.thresholds.ood),
        ece_before=result.before.ece, ece_after=result.after.ece, nll_before=result.before.nll,
        nll_after=result.after.nll, brier_before=result.before.brier, brier_after=result.after.brier,
        coverage=result.coverage, selective_accuracy=finite(result.selective_accuracy), unsure=result.unsure,
        not_a_digit=result.not_a_digit, coverage_table=[[c, a] for c, a in result.table],
        ood=[OodFigures(o.name, o.images, o.auroc, o.rejected, o.not_a_digit) for o in result.ood])
