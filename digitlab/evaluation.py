"""Evaluate predicted probabilities against the test set and write the report artefacts.

    metrics = evaluate_run(open_run("runs/..."))           # a trained run: scores its model on the test set
    metrics = write_evaluation(out, y_test, proba, x_test, class_names)   # any model (compare uses this)

Artefacts, all written atomically into the folder: metrics.json, classification_report.{txt,json},
confusion_matrix.{csv,png}, confused_pairs.txt, misclassified.png, loss.png and accuracy.png (when a
history is given) and report.html, one self-contained page with all of it.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix

from digitlab import plots
from digitlab.atomic import write_json_atomic, write_text_atomic

EPS = 1e-7  # probabilities are clipped like keras' cross-entropy before taking the log


def log_loss(y_true: np.ndarray, proba: np.ndarray) -> float:
    p = np.clip(proba[np.arange(len(y_true)), y_true], EPS, 1.0)
    return float(-np.mean(np.log(p)))


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
                                   output_dict=True, zero_division=0, digits=4)
    return {
        "test_accuracy": float(np.mean(y_pred == y_true)),
        "test_loss": log_loss(y_true, proba),
        "test_images": int(len(y_true)),
        "test_errors": int(np.sum(y_pred != y_true)),
        "confusion_matrix": cm.tolist(),
        "classification_report": report,
        "confused_pairs": confused_pairs(cm, list(class_names)),
    }


def misclassified_order(y_true, proba) -> np.ndarray:
    """Indices of the mistakes, the most confident mistakes first."""
    y_pred = proba.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != y_true)
    return wrong[np.argsort(-proba[wrong].max(axis=1), kind="stable")]


def write_evaluation(out_dir: str | Path, y_true, proba, x_test, class_names, history=None,
                     context: dict | None = None, title: str = "digitlab report") -> dict:
    """Compute the metrics, write every artefact into `out_dir`, and return the metrics."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    class_names = list(class_names)
    y_true = np.asarray(y_true).astype(int)
    metrics = classification_metrics(y_true, proba, class_names)
    cm = np.array(metrics["confusion_matrix"])

    report_text = classification_report(y_true, proba.argmax(axis=1), labels=list(range(len(class_names))),
                                         target_names=class_names, zero_division=0, digits=4)
    write_text_atomic(out / "classification_report.txt", report_text)
    write_json_atomic(out / "classification_report.json", metrics["classification_report"])
    write_text_atomic(out / "confusion_matrix.csv", _confusion_csv(cm, class_names))
    write_text_atomic(out / "confused_pairs.txt", "".join(
        f"{p['true']} -> {p['predicted']}: {p['count']} times\n" for p in metrics["confused_pairs"]))

    figures = {"confusion_matrix": plots.confusion_matrix_png(cm, class_names),
               "misclassified": plots.misclassified_png(x_test, y_true, proba, misclassified_order(y_true, proba),
                                                        class_names)}
    if history:
        figures["loss"] = plots.history_png(history, "loss")
        figures["accuracy"] = plots.history_png(history, "accuracy")
    for name, png in figures.items():
        plots.save_png(out / f"{name}.png", png)

    summary = {k: v for k, v in metrics.items() if k not in ("classification_report", "confusion_matrix")}
    summary["macro_f1"] = metrics["classification_report"]["macro avg"]["f1-score"]
    extra = (context or {}).get("metrics_extra") or {}
    summary.update(extra)
    write_json_atomic(out / "metrics.json", summary)

    from digitlab.report import render_report
    write_text_atomic(out / "report.html", render_report(title, summary, metrics, report_text, figures,
                                                         history or [], context or {}))
    return summary


def _confusion_csv(cm: np.ndarray, class_names) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["true \\ predicted", *class_names])
    for name, row in zip(class_names, cm):
        writer.writerow([name, *map(int, row)])
    return buf.getvalue()


def evaluate_run(run, dataset=None, diagnostics: bool = True) -> dict:
    """Score a run's model on its dataset's test set and (re)write its evaluation artefacts.

    With `diagnostics`, the report also answers the tutorial's quiz (digitlab.diagnostics): the
    overfitting gap and the epoch early stopping chose, dead ReLU units, the first layer's weights;
    the numbers go to diagnostics.json.
    """
    from digitlab.data import load_dataset, scale
    ds = dataset or load_dataset(run.data.get("dataset", "mnist"))
    proba = run.predict_proba(scale(ds.x_test))
    history = run.history
    state = run.state
    val_is_test = run.data.get("val_is_test", False)
    context = {
        "config": run.config, "data": run.data, "environment": run.environment, "state": state,
        "notes": (["Validation figures are test-set figures: this run validated on the test set (--val test), "
                   "as the tutorial does."] if val_is_test else []),
        "metrics_extra": {"model": run.config.get("model"), "epochs_completed": state.get("epochs_completed"),
                          "train_seconds": state.get("train_seconds"), "status": state.get("status"),
                          "val_is_test": val_is_test,
                          "keras_backend": run.environment.get("keras_backend")},
    }
    if diagnostics and run.config.get("model") != "ensemble":
        _add_diagnostics(run, ds, proba, history, state, context)
    return write_evaluation(run.path, ds.y_test, proba, ds.x_test, ds.class_names, history=history,
                            context=context, title=f"digitlab: {run.config.get('model', 'model')} ({run.path.name})")


def _add_diagnostics(run, ds, proba, history, state, context) -> None:
    """Diagnostics sections and artefacts for a trained run (part of evaluate_run)."""
    from digitlab import diagnostics as dg
    from digitlab.config import TrainConfig, from_dict
    from digitlab.data import scale
    from digitlab.training import prepare_data
    _, split = prepare_data(from_dict(TrainConfig, run.config), dataset=ds)
    diag = dg.diagnose(run.model, history, state, run.config, scale(split.x_train), split.y_train.astype(int),
                       scale(split.x_val), split.y_val.astype(int))
    first = dg.first_layer(run.model)
    gap, first_png = dg.gap_png(diag), dg.first_layer_png(first)
    for name, png in (("generalisation_gap", gap), ("first_layer", first_png)):
        if png:
            plots.save_png(run.path / f"{name}.png", png)
    write_json_atomic(run.path / "diagnostics.json", diag)
    test = {"test_accuracy": float(np.mean(proba.argmax(1) == ds.y_test)), "test_loss": log_loss(ds.y_test.astype(int), proba)}
    context["extra_sections"] = context.get("extra_sections", []) + dg.report_sections(diag, test, first, gap, first_png)
    context["metrics_extra"].update(
        train_accuracy_clean=diag["train_accuracy"], best_epoch=diag["overfitting"]["best_epoch"],
        dead_unit_share=max((d["fraction"] for d in diag["dead_units"]), default=None))
