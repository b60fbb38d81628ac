"""Train (or load) every planned model, score it on the same test images, write the leaderboard.

    board = run_comparison(CompareConfig(models=("logreg", "seed-ann"), train_size=10_000), "runs/compare",
                           progress=lambda event, **info: print(event, info.get("model")))
    board.rows[0].model, board.rows[0].test_accuracy

Each model gets out_dir/<model>/: the saved model, manifest.json and the core evaluation
(digitlab.evaluation.write_evaluation: confusion matrix, classification report, report.html).
Every model is scored through a digitlab.predictor.Predictor, classic ones included, on images
scaled by digitlab.data.scale. Progress events, in order: "plan", then per model "model-start",
"stage" (load / train / predict), "round" (XGBoost's boosting rounds), "model-end".

Calibration: no model trains on the calibration split (CompareConfig.calibration training images, held
out like `digitlab train`'s validation split). Each model's calibration map is fitted on its probabilities
for those images: a network's by temperature scaling, as `digitlab evaluate` calibrates a run
(digitlab.calibration); a classic model's by isotonic regression per class (classic.fit_calibrator),
which its vote-share probabilities need. Its ECE and loss are measured before and after; its accuracy,
confusion matrix and report are its own predictions' (an isotonic map can change a near tie).
"""
from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from digitlab import classic
from digitlab.calibration import apply_temperature, ece, fit_temperature, log_proba, nll
from digitlab.comparison import manifest
from digitlab.comparison.leaderboard import Leaderboard, LoadAverage, Meta, Row, ranked, wilson_interval
from digitlab.comparison.plan import (
    CALIBRATION_IMAGES,
    CheckedConfig,
    CompareConfig,
    ModelPlan,
    check_config,
    plan_models,
    split_config,
)
from digitlab.comparison.references import published
from digitlab.comparison.render import write_leaderboard
from digitlab.data import Dataset, load_dataset, prepare_split, scale
from digitlab.environment import keras_backend, load_average, machine_info, versions
from digitlab.predictor import Predictor
from digitlab.runs import MODEL_FILE, EpochRecord, Run, to_json

Progress = Callable[..., None]  # progress(event, **info): "plan", "model-start", "stage", "round", "model-end"
META_VERSIONS = ("numpy", "scikit-learn", "xgboost", "xgboost-cpu", "keras", "tensorflow-cpu", "jax")
WARM_UP_IMAGES = 64  # a network's first call builds its graph: scored once before the timed pass


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class TestSet:
    """The images every model is scored on."""
    images: np.ndarray  # (n, 28, 28) uint8 as stored: the report shows these
    x: np.ndarray  # (n, 28, 28) float32 in [0, 1]: what the models see
    y: np.ndarray  # (n,) int labels
    dataset: Dataset  # where they came from: name, provenance, class names


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class CalibrationSet:
    """The training images no model trains on, each model's temperature is fitted on."""
    x: np.ndarray  # (n, 28, 28) float32 in [0, 1]
    y: np.ndarray  # (n,) int labels


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class Job:
    """One model's turn: its plan, its folder, its training images, where its progress goes."""
    plan: ModelPlan
    folder: Path
    x_train: np.ndarray  # (n, 28, 28) float32 in [0, 1]
    y_train: np.ndarray  # (n,) int
    emit: Progress  # already bound to this model's name
    verbose: int  # Keras progress bars while a network trains


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class Fitted:
    """A trained or loaded model, ready to score, and what its report should say about it."""
    predictor: Predictor
    model_path: Path
    train_seconds: float  # as measured when it was trained
    notes: list[str]
    configuration: dict  # shown under "Configuration" in its report
    history: list[EpochRecord] = field(default_factory=list)
    cluster_scores: dict = field(default_factory=dict)  # k-means only (clustering_scores)


def run_comparison(cfg: CompareConfig, out_dir: str | Path, dataset: Dataset | None = None,
                   progress: Progress | None = None, verbose: int = 0, data_dir=None) -> Leaderboard:
    """Train (or load) and evaluate every model, write every artefact, return the leaderboard.

    `verbose` is passed to the networks' training (Keras progress bars); classic models report
    through `progress` only. The config is checked (check_config) once, before the data loads."""
    start = time.perf_counter()
    checked = check_config(cfg, out_dir)
    load_at_start = load_average()
    ds = dataset or load_dataset(cfg.dataset, data_dir=data_dir)
    plans = plan_models(checked, ds)
    test = test_set(ds, cfg.test_size, cfg.seed)
    calibration = calibration_set(ds, cfg)
    emit = progress or (lambda event, **info: None)
    emit("plan", plans=plans, test_images=len(test.y), out_dir=checked.out)

    train_sets: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # models with the same size share one subset
    rows = []
    for i, plan in enumerate(plans, 1):
        emit("model-start", plan=plan, index=i, total=len(plans))
        if plan.train_images not in train_sets:
            train_sets[plan.train_images] = training_data(ds, plan.train_images, cfg.seed, cfg.calibration)
        job = Job(plan, checked.out / plan.name, *train_sets[plan.train_images],
                  emit=functools.partial(emit, model=plan.name), verbose=verbose)
        fitted = run_neural(job, ds) if plan.kind == "neural" else run_classic(job, test)
        row = score(job, fitted, test, calibration)
        rows.append(row)
        emit("model-end", row=row, index=i, total=len(plans))

    total = time.perf_counter() - start
    board = Leaderboard(ranked(rows), _meta(checked, plans, ds, test, load_at_start, total), ds.name, total)
    write_leaderboard(board, checked.out)
    return board


def _meta(checked: CheckedConfig, plans: list[ModelPlan], ds: Dataset, test: TestSet, load_at_start,
          total: float) -> Meta:
    return Meta(config=checked.cfg, models=[p.name for p in plans], dataset=ds.provenance,
                train_images_full=len(ds.y_train), calibration_images=checked.cfg.calibration,
                test_images=len(test.y), machine=machine_info(),
                load_average=LoadAverage(load_at_start, load_average()), versions=versions(META_VERSIONS),
                keras_backend=keras_backend() if any(p.kind == "neural" for p in plans) else None,
                total_seconds=round(total, 1), created=time.strftime("%Y-%m-%d %H:%M:%S"))


# ---------------------------------------------------------------- the data

def training_data(ds: Dataset, size: int, seed: int,
                  calibration: int = CALIBRATION_IMAGES) -> tuple[np.ndarray, np.ndarray]:
    """`size` training images, scaled: the seeded, stratified subset that `digitlab train --val <calibration>
    --train-size <size>` trains on (digitlab.data.prepare_split), so classic models and networks see the same
    images, and none of the calibration split's."""
    cfg = CompareConfig(seed=seed, calibration=calibration)
    split = prepare_split(split_config(cfg, min(size, len(ds.y_train) - calibration)), ds)
    return scale(split.x_train), split.y_train.astype(int)


def calibration_set(ds: Dataset, cfg: CompareConfig) -> CalibrationSet | None:
    """The calibration split (a network's validation split), scaled; None when cfg.calibration is 0."""
    if not cfg.calibration:
        return None
    split = prepare_split(split_config(cfg), ds)
    return CalibrationSet(scale(split.x_val), split.y_val.astype(int))


def test_set(ds: Dataset, size: int, seed: int) -> TestSet:
    """The whole test set, or (size > 0) a seeded, stratified subset of it for smoke runs."""
    idx = np.arange(len(ds.y_test))
    if size and size < len(idx):
        from sklearn.model_selection import train_test_split  # a second to import; smoke runs only

        idx = np.sort(train_test_split(idx, train_size=size, random_state=seed, stratify=ds.y_test)[0])
    images = ds.x_test[idx]
    return TestSet(images, scale(images), ds.y_test[idx].astype(int), ds)


# ---------------------------------------------------------------- classic models

def run_classic(job: Job, test: TestSet) -> Fitted:
    """Fit (or load) a scikit-learn or XGBoost model on flattened pixels; save it with its manifest."""
    plan, folder = job.plan, job.folder
    folder.mkdir(parents=True, exist_ok=True)
    if plan.reuse:
        saved = plan.saved  # believed at planning: signed on this machine, or the user trusts the folder
        job.emit("stage", stage="load", path=str(folder / saved.model_file))
        model = classic.load_classic(folder / saved.model_file, saved.model_sha256)  # hashes what it loads
        if plan.adopt:
            manifest.write_manifest(folder, saved)  # --trust-folder: from now on it is one of ours
    else:
        manifest.forget(folder)
        job.emit("stage", stage="train", images=plan.train_images)
        model = classic.build_classic(plan.name, seed=plan.seed, overrides=plan.params)
        t0 = time.perf_counter()
        classic.fit_classic(model, classic.flatten(job.x_train), job.y_train,
                            on_round=lambda done, total: job.emit("round", done=done, total=total))
        train_seconds = round(time.perf_counter() - t0, 3)
        path, sha = classic.save_classic(model, folder)
        saved = manifest.write_manifest(
            folder, manifest.Manifest(plan.name, plan.kind, path.name, sha, train_seconds, plan.fit_key))

    predictor = Predictor.from_estimator(lambda x: classic.predict_proba(model, classic.flatten(x)), name=plan.name)
    notes = [f"{plan.description}. Hyperparameters: {json.dumps(plan.params)}."]
    scores = {}
    if plan.kind == "clustering":
        scores = clustering_scores(model, job.y_train, classic.flatten(test.x), test.y)
        notes.append(f"Unsupervised: {model.n_clusters} clusters found without labels; each cluster is then "
                     f"labelled by majority vote of its training labels. Test ARI {scores['ari_test']:.3f}, "
                     f"NMI {scores['nmi_test']:.3f}.")
    if plan.name == "svm":
        notes.append("The SVM has no probabilities of its own: its scores are a softmax of its one-vs-rest "
                     "decision values (no Platt scaling, which would cost 5 more fits), and their loss is not "
                     "comparable with the other models'. Calibrated on the held-out calibration images (isotonic "
                     "regression per class, as every classic model), they are probabilities: the calibrated loss "
                     "and ECE are comparable.")
    return Fitted(predictor, folder / saved.model_file, saved.train_seconds, notes, plan.fit_key,
                  cluster_scores=scores)


def clustering_scores(model: classic.ClusterClassifier, y_train, x_test, y_test) -> dict:
    """Majority-vote accuracy on the training images, and how well clusters match digits (ARI, NMI)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    train_clusters = model.kmeans_.labels_  # the training images' clusters, kept from the fit
    test_clusters = model.clusters(x_test)
    return {"train_accuracy": float(np.mean(model.cluster_label_[train_clusters] == y_train)),
            "ari_train": float(adjusted_rand_score(y_train, train_clusters)),
            "nmi_train": float(normalized_mutual_info_score(y_train, train_clusters)),
            "ari_test": float(adjusted_rand_score(y_test, test_clusters)),
            "nmi_test": float(normalized_mutual_info_score(y_test, test_clusters))}


# ---------------------------------------------------------------- networks

def run_neural(job: Job, ds: Dataset) -> Fitted:
    """Train (or load) a registered network with its own recipe; the run folder is the model's folder."""
    plan, folder = job.plan, job.folder
    if plan.reuse:
        job.emit("stage", stage="load", path=str(folder / MODEL_FILE))
        run = Run(folder)  # Keras loads it with safe_mode=True; its SHA-256 was checked in the plan
    else:
        # Here, not at the top: training imports Keras, which must wait until the CLI has chosen
        # the backend, and a comparison of classic models alone never needs it.
        from digitlab.training import train

        folder.mkdir(parents=True, exist_ok=True)
        manifest.forget(folder)
        job.emit("stage", stage="train", images=plan.train_images)
        run = train(plan.train_config, run_dir=folder, dataset=ds, verbose=job.verbose,
                    overwrite=True)  # the plan decided to retrain: the folder holds only our own earlier files
        manifest.write_manifest(folder, manifest.Manifest(plan.name, plan.kind, MODEL_FILE, run.model_sha256(),
                                                          run.state.train_seconds, plan.fit_key))
    # Compare times the network as trained, and calibrates it as it does every model (not with a trust model).
    predictor = Predictor.from_run(run, runtime="keras", trust=False)
    if plan.adopt:
        manifest.write_manifest(folder, plan.saved)  # --trust-folder, and it loaded: from now on it is one of ours
    held = (f"every training image but the {plan.train_config.val} held out for calibration (its validation "
            f"split)" if plan.train_config.val != "0" else "every training image (no validation hold-out)")
    notes = [f"{plan.description}; trained {run.state.epochs_completed} epochs with its registered "
             f"defaults, on {held}. Training time is the sum of the "
             f"epochs' fit times; the model file includes the optimizer state."]
    return Fitted(predictor, run.model_path, run.state.train_seconds or 0.0, notes,
                  to_json(run.config), history=run.history)


# ---------------------------------------------------------------- scoring

def score(job: Job, fitted: Fitted, test: TestSet, calibration: CalibrationSet | None = None) -> Row:
    """Time the prediction of the test images, calibrate the model on the calibration set, write its evaluation
    (of the calibrated probabilities), return its leaderboard row."""
    # Here, not at the top: digitlab.evaluation imports Keras (for its diagnostics), which must wait
    # until the backend is chosen.
    from digitlab.evaluation import EvaluationContext, write_evaluation

    plan, n = job.plan, len(test.y)
    job.emit("stage", stage="predict", images=n)
    if fitted.predictor.runtime == "keras":
        fitted.predictor.predict_proba(test.x[:WARM_UP_IMAGES])  # keep graph building out of the timing
    t0 = time.perf_counter()
    proba = fitted.predictor.predict_proba(test.x)  # the model's own probabilities
    predict_seconds = time.perf_counter() - t0
    calibrated, method = None, None
    if calibration is not None:
        calibrated, method = calibrate(plan.kind, fitted.predictor.predict_proba(calibration.x), calibration.y,
                                       proba)

    train_seconds = round(float(fitted.train_seconds), 3)
    extra = {"kind": plan.kind, "train_images": plan.train_images,
             "predict_seconds_per_10k": round(predict_seconds * 10_000 / n, 3),
             "size_bytes": fitted.model_path.stat().st_size, "reused": plan.reuse, **fitted.cluster_scores,
             "calibration": method, "ece_uncalibrated": ece(proba, test.y),
             "ece": ece(calibrated, test.y) if calibrated is not None else None,
             "test_loss_calibrated": nll(calibrated, test.y) if calibrated is not None else None}
    context = EvaluationContext(
        title=f"digitlab compare: {plan.name}", notes=fitted.notes,
        details={"Configuration": fitted.configuration, "Data provenance": test.dataset.provenance},
        about={"model": plan.name, "train_seconds": train_seconds}, extra=extra)
    metrics = write_evaluation(job.folder, test.y, proba, test.images, test.dataset.class_names,
                               history=fitted.history or None, context=context, shown_proba=calibrated)
    low, high = wilson_interval(n - metrics.test_errors, n)
    ref = published(plan.name, test.dataset.name)
    return Row(rank=None, model=plan.name, kind=plan.kind, test_accuracy=metrics.test_accuracy,
               ci95_low=low, ci95_high=high, test_errors=metrics.test_errors, test_images=n,
               train_images=plan.train_images, train_seconds=train_seconds,
               predict_seconds_per_10k=extra["predict_seconds_per_10k"], size_bytes=extra["size_bytes"],
               published_accuracy=ref.accuracy if ref else None,
               published_delta=metrics.test_accuracy - ref.accuracy if ref else None,
               published_method=ref.method if ref else "", published_source=ref.source if ref else "",
               reused=plan.reuse, test_loss=metrics.test_loss, macro_f1=metrics.macro_f1,
               **fitted.cluster_scores, description=plan.description, ece=extra["ece"],
               ece_uncalibrated=extra["ece_uncalibrated"], test_loss_calibrated=extra["test_loss_calibrated"],
               calibration=method)


def calibrate(kind: str, cal_proba: np.ndarray, y_cal: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, str]:
    """`proba` calibrated by a map fitted on (cal_proba, y_cal), and the map in words: a network's by temperature
    scaling (as `digitlab evaluate` does a run's), a classic model's by isotonic regression per class."""
    if kind == "neural":
        t = fit_temperature(log_proba(cal_proba), y_cal)
        return apply_temperature(proba, t), f"temperature scaling, T = {t:.3f}"
    return classic.fit_calibrator(cal_proba, y_cal)(proba), f"{classic.CALIBRATION} regression per class"
