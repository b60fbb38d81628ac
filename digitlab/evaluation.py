"""Evaluate predicted probabilities against the test set and write the report artefacts.

    metrics = evaluate_run(open_run("runs/..."))        # a run: scores its model on its dataset's test set
    metrics = write_evaluation(out, y_test, proba, x_test, class_names)   # any model (compare uses this)

Artefacts, all written atomically into the folder: metrics.json, classification_report.{txt,json},
confusion_matrix.{csv,png}, confused_pairs.txt, misclassified.png, loss.png and accuracy.png (when a
history is given) and report.html, one self-contained page with all of it.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix

from digitlab import plots
from digitlab.atomic import write_json_atomic, write_text_atomic
from digitlab.data import Dataset, load_dataset, prepare_split, scale
from digitlab.predictor import Predictor
from digitlab.report import render_report
from digitlab.runs import EpochRecord, Metrics, Run, TrainConfig, to_json, write_metrics
from digitlab.scoring import accuracy, log_loss

VAL_IS_TEST_NOTE = ("Validation figures are test-set figures: this run validated on the test set (--val test), "
                    "as the tutorial does.")


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
                     history: list[EpochRecord] | None = None, context: EvaluationContext | None = None) -> Metrics:
    """Compute the metrics, write every artefact into `out_dir`, and return the metrics."""
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

    figures = {"confusion_matrix": plots.confusion_matrix_png(cm, class_names),
               "misclassified": plots.misclassified_png(x_images, y_true, proba, misclassified_order(y_true, proba),
                                                        class_names)}
    if history:
        figures["loss"] = plots.history_png(history, "loss")
        figures["accuracy"] = plots.history_png(history, "accuracy")
    for name, png in figures.items():
        plots.save_png(out / f"{name}.png", png)

    metrics = Metrics(test_accuracy=scores["test_accuracy"], test_loss=scores["test_loss"],
                      test_images=scores["test_images"], test_errors=scores["test_errors"],
                      macro_f1=scores["classification_report"]["macro avg"]["f1-score"],
                      confused_pairs=scores["confused_pairs"], extra=context.extra, **context.about)
    write_metrics(out, metrics)
    write_text_atomic(out / "report.html", render_report(context, metrics, text, figures, history or []))
    return metrics


def _confusion_csv(cm: np.ndarray, class_names) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["true \\ predicted", *class_names])
    for name, row in zip(class_names, cm, strict=True):
        writer.writerow([name, *map(int, row)])
    return buf.getvalue()


def evaluate_run(run: Run, dataset: Dataset | None = None, predictor: Predictor | None = None,
                 with_diagnostics: bool = True) -> Metrics:
    """Score a run's model on its dataset's test set and (re)write its evaluation artefacts.

    With `with_diagnostics`, the report also answers the tutorial's quiz (digitlab.diagnostics): the
    overfitting gap and the epoch early stopping chose, dead ReLU units, the first layer's weights;
    the numbers go to diagnostics.json.
    """
    ds = dataset or load_dataset(run.config.dataset)
    predictor = predictor or Predictor.from_run(run)
    proba = predictor.predict_proba(scale(ds.x_test))
    state = run.state
    env = run.environment
    context = EvaluationContext(
        title=run.title, notes=[VAL_IS_TEST_NOTE] if run.data.val_is_test else [],
        details={"Configuration": to_json(run.config), "Data provenance": to_json(run.data),
                 "Run state": to_json(state), "Environment": to_json(env) if env else None},
        about={"model": run.config.model, "train_seconds": state.train_seconds, "val_is_test": run.data.val_is_test,
               "keras_backend": env.keras_backend if env else None})
    if with_diagnostics and isinstance(run.config, TrainConfig) and predictor.keras_model is not None:
        _add_diagnostics(run, ds, predictor, proba, context)
    return run_metrics(run, write_evaluation(run.path, ds.y_test, proba, ds.x_test, ds.class_names,
                                             history=run.history, context=context))


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
