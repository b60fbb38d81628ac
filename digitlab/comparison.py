"""`digitlab compare`: classic models and registered networks on the same data, in one leaderboard.

    cfg = CompareConfig(models=("logreg", "knn", "seed-ann"), train_size=10_000)
    board = run_comparison(cfg, "runs/compare", progress=lambda event, **info: ...)
    board.rows[0]["model"], board.rows[0]["test_accuracy"], board.total_seconds

Every model trains on the same training images (the full 60,000 by default, as the published figures
do; `train_size` or a per-model `max_train` takes the same seeded, stratified subset that
`digitlab train --train-size` takes) and is scored on the same test images. Each gets a folder
out_dir/<model>/ holding the saved model, manifest.json (what it was trained on, how long it took,
the SHA-256 of the saved model) and the core evaluation (`write_evaluation`: confusion matrix,
classification report, report.html). A second run with the same settings loads the saved models,
after checking their SHA-256, and only re-evaluates. The leaderboard is written as
leaderboard.{md,csv,json,html} and leaderboard.png in out_dir.
"""
from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

from digitlab import classic
from digitlab.atomic import write_json_atomic, write_text_atomic
from digitlab.data import Dataset, load_dataset, scale, subset_training, validation_split

DEFAULT_MODELS = ("logreg", "knn", "svm", "rf", "xgboost", "kmeans", "seed-ann")
ALIASES = {"kmeans": tuple(classic.kmeans_name(k) for k in classic.KMEANS_DEFAULT_CLUSTERS),
           "classic": tuple(classic.classic_names())}
QUICK_TRAIN_SIZE = 10_000  # --quick: training images per model; the whole default set runs in minutes
Z95 = 1.959964  # standard normal quantile for a two-sided 95% interval
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class CompareConfig:
    models: tuple[str, ...] = DEFAULT_MODELS  # classic names, "kmeans" (= kmeans-10/64/256), registered networks
    dataset: str = "mnist"  # mnist | fashion-mnist
    train_size: int = 0  # training images per model; 0 = the whole training set (60,000 for MNIST)
    test_size: int = 0  # test images; 0 = the whole test set (10,000). Smaller only for smoke tests
    max_train: dict = field(default_factory=dict)  # per-model cap on training images, e.g. {"svm": 20000}
    params: dict = field(default_factory=dict)  # per-model hyperparameter overrides: {"xgboost": {"n_estimators": 50}}
    neural_epochs: int = 0  # epochs for registered networks; 0 = each network's registered default
    seed: int = 0  # seeds the subsets, the classic models' randomness and the networks' training
    retrain: bool = False  # train again even where a saved model with the same settings exists


@dataclass(frozen=True)
class Reference:
    accuracy: float  # the published test accuracy on the 10,000 MNIST test images
    method: str  # the method as the source names it
    source: str
    note: str = ""  # why our figure may differ


LECUN_TABLE = "LeCun, Cortes & Burges, The MNIST database, http://yann.lecun.com/exdb/mnist/"
REFERENCES = {  # MNIST only: figures for other datasets are not comparable
    "logreg": Reference(0.880, "linear classifier (1-layer NN), no preprocessing, 12.0% error",
                        f"LeCun et al. 1998, in {LECUN_TABLE}",
                        "the 1998 one-layer network was trained with a far weaker recipe than today's L-BFGS "
                        "softmax regression, which reaches ~92.5% on the same pixels; the table's 92.4% "
                        "(pairwise linear classifier) used deskewed images"),
    "knn": Reference(0.9691, "K-nearest-neighbors, Euclidean (L2), no preprocessing, 3.09% error",
                     f"Kenneth Wilder, U. Chicago, in {LECUN_TABLE}"),
    "svm": Reference(0.986, "SVM, Gaussian kernel, no preprocessing, 1.4% error", LECUN_TABLE),
    "xgboost": Reference(0.9847, "boosted trees (17 leaves), no preprocessing, 1.53% error",
                         f"Kegl & Busa-Fekete, ICML 2009, in {LECUN_TABLE}",
                         "AdaBoost.MH over many thousands of rounds, against our 200 XGBoost rounds"),
    "seed-ann": Reference(0.984, "2-layer NN, 800 hidden units, cross-entropy loss, 1.6% error",
                          f"Simard et al., ICDAR 2003, in {LECUN_TABLE}",
                          "the tutorial's network has 128 hidden units (and dropout), not 800"),
    "lenet5": Reference(0.9905, "Convolutional net LeNet-5, no distortions, 0.95% error",
                        f"LeCun et al. 1998, in {LECUN_TABLE}",
                        "the 1998 network had a sparse C3 connection table and was trained with stochastic "
                        "diagonal Levenberg-Marquardt; the registry's version is a modern re-implementation"),
}
NO_REFERENCE = {
    "rf": "LeCun's table has no random forest, so there is no published figure to compare with",
    "kmeans": "unsupervised, so not in LeCun's table; accuracy here labels each cluster by majority vote "
              "of its training images, which flatters k-means compared with one distinct label per cluster",
}


class CompareError(ValueError):
    """A bad argument, found before anything trains; the message says what to change."""


# ---------------------------------------------------------------- arguments and plan

def expand_models(names) -> tuple[str, ...]:
    """Aliases expanded, duplicates dropped, order kept: ("kmeans", "knn") -> (kmeans-10, kmeans-64, kmeans-256, knn)."""
    out: list[str] = []
    for name in names:
        for n in ALIASES.get(name, (name,)):
            if n not in out:
                out.append(n)
    return tuple(out)


def model_kind(name: str) -> str:
    """"classic", "clustering" or "neural"; an unknown name raises CompareError listing the known ones."""
    try:
        spec = classic.classic_spec(name)
    except ValueError as exc:
        raise CompareError(str(exc)) from exc
    if spec is not None:
        return "clustering" if spec.estimator == "kmeans" else "classic"
    from digitlab.models import model_names
    if name in model_names():
        return "neural"
    raise CompareError(f"unknown model {name!r}; known: {', '.join(classic.CLASSIC)}, "
                       f"kmeans (= {', '.join(ALIASES['kmeans'])}; any kmeans-N with N >= 10), classic (all of "
                       f"these) and the registered networks {', '.join(model_names())}")


def parse_assignments(items, what: str) -> dict[str, str]:
    """["svm=20000,knn=5000", "rf=1000"] -> {"svm": "20000", "knn": "5000", "rf": "1000"}."""
    out = {}
    for item in items or []:
        for part in filter(None, (p.strip() for p in item.split(","))):
            key, sep, value = part.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise CompareError(f"{what}: expected NAME=VALUE, got {part!r}")
            out[key.strip()] = value.strip()
    return out


def parse_max_train(items) -> dict[str, int]:
    """--max-train svm=20000 -> {"svm": 20000}; a size below 1 is an error."""
    out = {}
    for name, raw in parse_assignments(items, "--max-train").items():
        try:
            out[name] = int(raw)
        except ValueError:
            raise CompareError(f"--max-train {name}={raw}: the size must be a whole number of images") from None
    return out


def parse_param_overrides(items) -> dict[str, dict]:
    """--set xgboost.n_estimators=50 -> {"xgboost": {"n_estimators": 50}}, typed like the default value."""
    out: dict[str, dict] = {}
    for dotted, raw in parse_assignments(items, "--set").items():
        name, _, key = dotted.partition(".")
        if not key or classic.classic_spec(name) is None:
            raise CompareError(f"--set {dotted}={raw}: expected CLASSIC_MODEL.SETTING=VALUE "
                               f"(classic models: {', '.join(classic.classic_names())})")
        defaults = classic.resolved_params(name)
        if key not in defaults:
            raise CompareError(f"--set {dotted}: {name} has no setting {key!r}; settable: {', '.join(defaults)}")
        out.setdefault(name, {})[key] = _typed_like(defaults[key], raw, f"--set {dotted}")
    return out


def _typed_like(default, raw: str, what: str):
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise CompareError(f"{what}: expected a {type(default).__name__}, got {raw!r}") from None
    for kind in (int, float):  # a string setting may also take a number (svm gamma="scale" or 0.05)
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


@dataclass(frozen=True)
class ModelPlan:
    name: str
    kind: str  # "classic", "clustering" or "neural"
    description: str
    train_images: int
    fit_key: dict  # everything the fitted model depends on; a saved model is reused only if this matches
    reuse: bool  # a saved model with this fit_key exists (and its SHA-256 checks out): evaluate only


def check_config(cfg: CompareConfig, out_dir: str | Path) -> tuple[str, ...]:
    """Validate everything that needs no data; return the expanded model names. Raises CompareError."""
    models = expand_models(cfg.models)
    if not models:
        raise CompareError("no models to compare: pass --models NAME[,NAME...]")
    kinds = {name: model_kind(name) for name in models}
    for flag, size in (("--train-size", cfg.train_size), ("--test-size", cfg.test_size)):
        if size < 0:  # 0 means "all of them" here; the CLI rejects an explicit 0
            raise CompareError(f"{flag} must be a positive number of images, got {size}")
    for name, cap in cfg.max_train.items():
        if name not in models:
            raise CompareError(f"--max-train {name}={cap}: {name} is not among the models compared "
                               f"({', '.join(models)})")
        if cap < 1:
            raise CompareError(f"--max-train {name}={cap}: a model needs at least 1 training image")
    for name, overrides in cfg.params.items():
        if name not in kinds:
            raise CompareError(f"--set {name}.*: {name} is not among the models compared ({', '.join(models)})")
        if kinds[name] == "neural":
            raise CompareError(f"--set {name}.*: --set is for classic models; {name} is a network (see --epochs)")
        try:
            classic.resolved_params(name, overrides)
        except KeyError as exc:
            raise CompareError(str(exc).strip("'\"")) from None
    if cfg.neural_epochs < 0:
        raise CompareError(f"--epochs must be 1 or more, got {cfg.neural_epochs}")
    _check_writable(Path(out_dir))
    return models


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise CompareError(f"cannot write to the output folder {out}: {exc.strerror or exc}. "
                           f"Pass --out with a folder you can write to.") from None


def plan_comparison(cfg: CompareConfig, out_dir: str | Path, ds: Dataset) -> list[ModelPlan]:
    """One plan per model: its training size, its fit key and whether its saved model is reused.

    Every saved model that will be reused has its SHA-256 checked here, so a tampered file stops the
    run before anything trains (classic.ModelIntegrityError)."""
    out = Path(out_dir)
    models = check_config(cfg, out)
    n_train, n_test = len(ds.y_train), len(ds.y_test)
    if cfg.train_size > n_train:
        raise CompareError(f"--train-size {cfg.train_size}: {ds.name} has only {n_train} training images")
    if cfg.test_size > n_test:
        raise CompareError(f"--test-size {cfg.test_size}: {ds.name} has only {n_test} test images")
    plans = []
    for name in models:
        size = min(cfg.train_size or n_train, cfg.max_train.get(name, n_train))
        kind = model_kind(name)
        if kind == "clustering" and size < classic.classic_spec(name).params["n_clusters"]:
            raise CompareError(f"{name} needs at least {classic.classic_spec(name).params['n_clusters']} "
                               f"training images, got {size}")
        key = _fit_key(cfg, name, kind, size, ds)
        reuse = not cfg.retrain and _saved_model_matches(out / name, key, kind)
        plans.append(ModelPlan(name, kind, _description(name, kind), size, key, reuse))
    return plans


def _description(name: str, kind: str) -> str:
    if kind == "neural":
        from digitlab.models import get_model_info
        return get_model_info(name).description
    return classic.classic_spec(name).description


def neural_train_config(cfg: CompareConfig, name: str, train_images: int, n_available: int):
    """The TrainConfig for a registered network: its own defaults, no validation hold-out, our subset."""
    import dataclasses
    from digitlab.config import TrainConfig, apply_overrides
    from digitlab.models import get_model_info
    tc = apply_overrides(TrainConfig(model=name), get_model_info(name).defaults)
    return dataclasses.replace(
        tc, dataset=cfg.dataset, seed=cfg.seed, val="0",  # "0": every training image trains, like the classic models
        train_size=0 if train_images >= n_available else train_images,
        epochs=cfg.neural_epochs or tc.epochs)


def _fit_key(cfg: CompareConfig, name: str, kind: str, size: int, ds: Dataset) -> dict:
    key = {"model": name, "dataset": ds.name, "data_sha256": ds.provenance.get("sha256"),
           "train_images": size, "seed": cfg.seed}
    if kind == "neural":
        from digitlab.config import to_dict
        key["train_config"] = to_dict(neural_train_config(cfg, name, size, len(ds.y_train)))
        key["versions"] = _versions("keras")
    else:
        key["params"] = classic.resolved_params(name, cfg.params.get(name))
        # A pickle from another scikit-learn may load wrongly: a version change means a refit.
        key["versions"] = _versions("scikit-learn", "xgboost", "numpy")
    return json.loads(json.dumps(key))  # the form it takes in manifest.json, for comparison


def _saved_model_matches(folder: Path, key: dict, kind: str) -> bool:
    manifest = _read_json(folder / MANIFEST)
    if not manifest or manifest.get("fit_key") != key:
        return False
    path = folder / manifest.get("model_file", "")
    if not path.is_file():
        return False
    if kind == "neural" and (_read_json(folder / "state.json") or {}).get("status") != "completed":
        return False
    actual = classic.sha256_file(path)
    if actual != manifest.get("model_sha256"):
        raise classic.ModelIntegrityError(
            f"{path} has SHA-256 {actual[:16]}..., not the {str(manifest.get('model_sha256'))[:16]}... recorded in "
            f"{folder / MANIFEST} when it was saved: the file changed since. Refusing to load it; "
            f"pass --retrain to train it again (or delete {folder}).")
    return True


# ---------------------------------------------------------------- running

@dataclass
class Leaderboard:
    rows: list[dict]  # one per model, best test accuracy first (ROW_FIELDS)
    meta: dict  # config, data, machine, versions, total_seconds
    total_seconds: float = 0.0


Progress = Callable[..., None]  # progress(event, **info): "plan", "model-start", "stage", "round", "model-end"


def run_comparison(cfg: CompareConfig, out_dir: str | Path, dataset: Dataset | None = None,
                   progress: Progress | None = None, verbose: int = 0, data_dir=None) -> Leaderboard:
    """Train (or load) and evaluate every model, write every artefact, return the leaderboard.

    `verbose` is passed to the networks' training (Keras progress bars); classic models report
    through `progress` only."""
    start = time.perf_counter()
    emit = progress or (lambda event, **info: None)
    out = Path(out_dir)
    check_config(cfg, out)  # cheap checks before the data loads
    load_avg_start = _load_average()
    ds = dataset or load_dataset(cfg.dataset, data_dir=data_dir)
    plans = plan_comparison(cfg, out, ds)
    test_idx = _test_subset(ds, cfg.test_size, cfg.seed)
    x_test_img, y_test = ds.x_test[test_idx], ds.y_test[test_idx].astype(int)
    x_test = scale(x_test_img)
    emit("plan", plans=plans, test_images=len(y_test), out_dir=out)

    splits: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    rows = []
    for i, plan in enumerate(plans):
        emit("model-start", plan=plan, index=i + 1, total=len(plans))
        if plan.train_images not in splits:
            splits[plan.train_images] = training_data(ds, plan.train_images, cfg.seed)
        x_train, y_train = splits[plan.train_images]
        runner = _run_neural if plan.kind == "neural" else _run_classic
        row = runner(cfg, plan, out / plan.name, ds, x_train, y_train, x_test, x_test_img, y_test,
                     lambda event, _p=plan, **info: emit(event, model=_p.name, **info), verbose)
        rows.append(row)
        emit("model-end", row=row, index=i + 1, total=len(plans))

    rows.sort(key=lambda r: -r["test_accuracy"])
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    total = time.perf_counter() - start
    meta = {"config": asdict(cfg), "models": [p.name for p in plans], "dataset": ds.provenance,
            "train_images_full": len(ds.y_train), "test_images": len(y_test),
            "machine": machine_info(), "load_average": {"start": load_avg_start, "end": _load_average()},
            "versions": _versions("numpy", "scikit-learn", "xgboost", "keras", "tensorflow-cpu", "jax"),
            "keras_backend": _keras_backend() if any(p.kind == "neural" for p in plans) else None,
            "total_seconds": round(total, 1), "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    board = Leaderboard(rows, meta, total)
    write_leaderboard(board, out)
    return board


def training_data(ds: Dataset, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`size` training images, scaled: the seeded, stratified subset `digitlab train --val 0 --train-size`
    picks, so classic models and networks see the same images."""
    split = validation_split(ds, 0, seed=seed)
    if size < len(split.y_train):
        split = subset_training(split, size, seed=seed)
    return scale(split.x_train), split.y_train.astype(int)


def _test_subset(ds: Dataset, size: int, seed: int) -> np.ndarray:
    idx = np.arange(len(ds.y_test))
    if not size or size >= len(idx):
        return idx
    from sklearn.model_selection import train_test_split
    sub, _ = train_test_split(idx, train_size=size, random_state=seed, stratify=ds.y_test)
    return np.sort(sub)


def _run_classic(cfg, plan, folder, ds, x_train, y_train, x_test, x_test_img, y_test, emit, verbose) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    if plan.reuse:
        manifest = _read_json(folder / MANIFEST)
        emit("stage", stage="load", path=str(folder / manifest["model_file"]))
        model = classic.load_classic(folder / manifest["model_file"], manifest["model_sha256"])
        train_seconds = manifest["train_seconds"]
    else:
        (folder / MANIFEST).unlink(missing_ok=True)  # a run that dies mid-training leaves no stale claim
        emit("stage", stage="train", images=plan.train_images)
        model = classic.build_classic(plan.name, seed=cfg.seed, overrides=cfg.params.get(plan.name))
        t0 = time.perf_counter()
        classic.fit_classic(model, classic.flatten(x_train), y_train,
                            on_round=lambda done, total: emit("round", done=done, total=total))
        train_seconds = time.perf_counter() - t0
        path, sha = classic.save_classic(model, folder)
        manifest = {"model": plan.name, "kind": plan.kind, "model_file": path.name, "model_sha256": sha,
                    "train_seconds": round(train_seconds, 3), "fit_key": plan.fit_key,
                    "saved": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_json_atomic(folder / MANIFEST, manifest)  # written last: a manifest implies a complete model

    emit("stage", stage="predict", images=len(y_test))
    t0 = time.perf_counter()
    proba = classic.predict_proba(model, classic.flatten(x_test))
    predict_seconds = time.perf_counter() - t0

    extra = {}
    notes = [f"{plan.description}. Hyperparameters: {json.dumps(plan.fit_key['params'])}."]
    if plan.kind == "clustering":
        extra = clustering_scores(model, y_train, classic.flatten(x_test), y_test)
        notes.append(f"Unsupervised: {model.n_clusters} clusters found without labels; each cluster is then "
                     f"labelled by majority vote of its training labels. Test ARI {extra['ari_test']:.3f}, "
                     f"NMI {extra['nmi_test']:.3f}.")
    if plan.name == "svm":
        notes.append("The SVM's 'probabilities' are a softmax of its one-vs-rest decision values (no Platt "
                     "scaling, which would cost 5 more fits): their argmax is the prediction, but the loss is not "
                     "comparable with the other models'.")
    return _evaluate(plan, folder, proba, x_test_img, y_test, ds, train_seconds, predict_seconds,
                     folder / manifest["model_file"], extra, notes, history=None, config=plan.fit_key)


def clustering_scores(model, y_train, x_test, y_test) -> dict:
    """Majority-vote accuracy on the training images, and how well clusters match digits (ARI, NMI)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    train_clusters = model.kmeans_.labels_  # the training images' clusters, kept from the fit
    test_clusters = model.clusters(x_test)
    return {"train_accuracy": float(np.mean(model.cluster_label_[train_clusters] == y_train)),
            "ari_train": float(adjusted_rand_score(y_train, train_clusters)),
            "nmi_train": float(normalized_mutual_info_score(y_train, train_clusters)),
            "ari_test": float(adjusted_rand_score(y_test, test_clusters)),
            "nmi_test": float(normalized_mutual_info_score(y_test, test_clusters))}


def _run_neural(cfg, plan, folder, ds, x_train, y_train, x_test, x_test_img, y_test, emit, verbose) -> dict:
    from digitlab.runs import MODEL_FILE, Run
    if plan.reuse:
        emit("stage", stage="load", path=str(folder / MODEL_FILE))
        run = Run(folder)  # Keras loads it with safe_mode=True; its SHA-256 was checked in the plan
    else:
        from digitlab.training import train
        from digitlab.config import from_dict, TrainConfig
        (folder / MANIFEST).unlink(missing_ok=True)  # a run that dies mid-training leaves no stale claim
        emit("stage", stage="train", images=plan.train_images)
        tc = from_dict(TrainConfig, plan.fit_key["train_config"])
        run = train(tc, run_dir=folder, dataset=ds, verbose=verbose, evaluate=False)
        write_json_atomic(folder / MANIFEST, {
            "model": plan.name, "kind": plan.kind, "model_file": MODEL_FILE,
            "model_sha256": classic.sha256_file(folder / MODEL_FILE),
            "train_seconds": run.state.get("train_seconds"), "fit_key": plan.fit_key,
            "saved": time.strftime("%Y-%m-%d %H:%M:%S")})
    emit("stage", stage="predict", images=len(y_test))
    run.predict_proba(x_test[:64])  # the first call builds the graph: keep that out of the timing
    t0 = time.perf_counter()
    proba = run.predict_proba(x_test)
    predict_seconds = time.perf_counter() - t0
    notes = [f"{plan.description}; trained {run.state.get('epochs_completed')} epochs with its registered "
             f"defaults, on every training image (no validation hold-out). Training time is the sum of the "
             f"epochs' fit times; the model file includes the optimizer state."]
    return _evaluate(plan, folder, proba, x_test_img, y_test, ds, run.state.get("train_seconds") or 0.0,
                     predict_seconds, folder / MODEL_FILE, {}, notes, history=run.history, config=run.config)


def _evaluate(plan, folder, proba, x_test_img, y_test, ds, train_seconds, predict_seconds, model_path,
              extra, notes, history, config) -> dict:
    from digitlab.evaluation import write_evaluation
    size = model_path.stat().st_size
    n = len(y_test)
    row_extra = {"model": plan.name, "kind": plan.kind, "train_images": plan.train_images,
                 "train_seconds": round(float(train_seconds), 3),
                 "predict_seconds_per_10k": round(predict_seconds * 10_000 / n, 3),
                 "size_bytes": size, "reused": plan.reuse, **extra}
    context = {"config": config, "data": ds.provenance, "notes": notes, "metrics_extra": row_extra}
    metrics = write_evaluation(folder, y_test, proba, x_test_img, ds.class_names, history=history or None,
                               context=context, title=f"digitlab compare: {plan.name}")
    correct = n - metrics["test_errors"]
    low, high = wilson_interval(correct, n)
    ref = REFERENCES.get(plan.name) if ds.name == "mnist" else None
    return {"rank": None, "model": plan.name, "kind": plan.kind, "test_accuracy": metrics["test_accuracy"],
            "ci95_low": low, "ci95_high": high, "test_errors": metrics["test_errors"], "test_images": n,
            "test_loss": metrics["test_loss"], "macro_f1": metrics["macro_f1"], **row_extra,
            "published_accuracy": ref.accuracy if ref else None,
            "published_delta": metrics["test_accuracy"] - ref.accuracy if ref else None,
            "published_method": ref.method if ref else "", "published_source": ref.source if ref else "",
            "description": plan.description}


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion: sound near 0 and 1, unlike p +- z*sqrt(p(1-p)/n)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At k=0 (k=n) the lower (upper) bound is exactly 0 (1); floating point would leave 1e-16 off.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


# ---------------------------------------------------------------- environment

def _versions(*packages) -> dict:
    out = {}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _keras_backend() -> str | None:
    keras = sys.modules.get("keras")  # only once a network has loaded it
    return keras.backend.backend() if keras else os.environ.get("KERAS_BACKEND")


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory_gib = None
    try:
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return {"cpu": cpu, "cores": cores, "memory_gib": memory_gib, "platform": platform.platform(),
            "python": platform.python_version()}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- the leaderboard files

ROW_FIELDS = ["rank", "model", "kind", "test_accuracy", "ci95_low", "ci95_high", "test_errors", "test_images",
              "train_images", "train_seconds", "predict_seconds_per_10k", "size_bytes", "published_accuracy",
              "published_delta", "published_method", "published_source", "reused", "test_loss", "macro_f1",
              "train_accuracy", "ari_train", "nmi_train", "ari_test", "nmi_test", "description"]


def write_leaderboard(board: Leaderboard, out_dir: str | Path) -> dict[str, Path]:
    """leaderboard.{md,csv,json,html} and leaderboard.png in `out_dir`; returns their paths."""
    from digitlab.plots import save_png
    out = Path(out_dir)
    paths = {ext: out / f"leaderboard.{ext}" for ext in ("md", "csv", "json", "html", "png")}
    write_text_atomic(paths["md"], leaderboard_markdown(board))
    write_text_atomic(paths["csv"], leaderboard_csv(board))
    write_json_atomic(paths["json"], {"rows": board.rows, "meta": board.meta})
    png = leaderboard_png(board)
    save_png(paths["png"], png)
    write_text_atomic(paths["html"], leaderboard_html(board, png))
    return paths


def leaderboard_csv(board: Leaderboard) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=ROW_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(board.rows)
    return buf.getvalue()


def _pct(v) -> str:
    return "" if v is None else f"{100 * v:.2f}%"


def human_seconds(v) -> str:
    if v is None:
        return ""
    return f"{v:.2f} s" if v < 10 else f"{v:.0f} s" if v < 120 else f"{v / 60:.1f} min"


def human_size(n) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _sources(board: Leaderboard) -> list[str]:
    sources = []
    for row in board.rows:
        if row["published_source"] and row["published_source"] not in sources:
            sources.append(row["published_source"])
    return sources


def table_rows(board: Leaderboard) -> tuple[list[str], list[list[str]]]:
    """The leaderboard as text cells, shared by the Markdown and HTML tables."""
    header = ["#", "model", "test accuracy (95% CI)", "published", "Δ (points)", "train images",
              "train time", "predict / 10k", "size on disk"]
    sources = _sources(board)
    rows = []
    for r in board.rows:
        published = ""
        if r["published_accuracy"] is not None:
            published = f"{_pct(r['published_accuracy'])} [{sources.index(r['published_source']) + 1}]"
        delta = "" if r["published_delta"] is None else f"{100 * r['published_delta']:+.2f}"
        rows.append([str(r["rank"]), r["model"],
                     f"{_pct(r['test_accuracy'])} ({100 * r['ci95_low']:.2f}–{100 * r['ci95_high']:.2f})",
                     published, delta, f"{r['train_images']:,}", human_seconds(r["train_seconds"]),
                     human_seconds(r["predict_seconds_per_10k"]), human_size(r["size_bytes"])])
    return header, rows


def notes(board: Leaderboard) -> list[str]:
    """Plain-language notes under the table: caps, missing references, gaps to the published figures."""
    out = []
    meta, cfg = board.meta, board.meta["config"]
    full = meta["train_images_full"]
    capped = [f"{r['model']} ({r['train_images']:,})" for r in board.rows if r["train_images"] < full]
    if capped and len(capped) == len(board.rows) and len({r["train_images"] for r in board.rows}) == 1:
        out.append(f"Every model trained on {board.rows[0]['train_images']:,} of the {full:,} training images "
                   f"(a quick run): the published figures use all of them, so expect these to sit lower.")
    elif capped:
        out.append(f"Trained on fewer than all {full:,} training images: {', '.join(capped)} — the published "
                   f"figures use all of them, so expect these to sit lower.")
    if meta["test_images"] < 10_000:
        out.append(f"Scored on a {meta['test_images']:,}-image subset of the test set: a smoke run, not a result.")
    for r in board.rows:
        ref = REFERENCES.get(r["model"])
        if r["train_images"] < full:
            continue  # the note on training caps above already explains its gap
        if r["published_delta"] is not None and abs(r["published_delta"]) > 0.01:
            side = "above" if r["published_delta"] > 0 else "below"
            why = f": {ref.note}" if ref and ref.note else ""
            out.append(f"{r['model']} is {100 * abs(r['published_delta']):.1f} points {side} its published "
                       f"figure{why}.")
    models = [r["model"] for r in board.rows]
    if meta["dataset"].get("dataset") != "mnist":
        out.append("The published figures are for MNIST only; none are shown for this dataset.")
    else:
        if "rf" in models:
            out.append(f"rf: {NO_REFERENCE['rf']}.")
        if any(classic.is_clustering(m) for m in models):
            out.append(f"k-means: {NO_REFERENCE['kmeans']}.")
    if "svm" in models:
        out.append("svm: libsvm is single-threaded, so its time is one core's; its test loss (in its report) "
                   "comes from softmaxed decision values, not probabilities.")
    if any(r["reused"] for r in board.rows):
        out.append("Saved models were re-used (SHA-256 checked): their training time is the one recorded when "
                   "they were trained. Pass --retrain to measure it again.")
    return out


def _machine_line(meta: dict) -> str:
    m = meta["machine"]
    load = meta.get("load_average") or {}
    backend = f", Keras backend {meta['keras_backend']}" if meta.get("keras_backend") else ""
    return (f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['platform']}, Python {m['python']}{backend}; "
            f"total wall time {human_seconds(meta['total_seconds'])}, finished {meta['created']} (load average "
            f"{(load.get('start') or ['?'])[0]} at start, {(load.get('end') or ['?'])[0]} at end: the cores are shared)")


def leaderboard_markdown(board: Leaderboard) -> str:
    header, rows = table_rows(board)
    lines = [f"# digitlab compare: {board.meta['dataset'].get('dataset', '')}", "",
             f"Machine: {_machine_line(board.meta)}.", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---:" if i != 1 else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    sources = _sources(board)
    if sources:
        lines += ["", "Published figures (no preprocessing, trained on all 60,000 images):"]
        lines += [f"[{i}] {s}: " + "; ".join(sorted({r['published_method'] for r in board.rows
                                                      if r['published_source'] == s})) for i, s in enumerate(sources, 1)]
    clusters = [r for r in board.rows if r["kind"] == "clustering"]
    if clusters:
        lines += ["", "| clustering | train accuracy (majority vote) | test accuracy | ARI train | ARI test | NMI train | NMI test |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['model']} | {_pct(r['train_accuracy'])} | {_pct(r['test_accuracy'])} | {r['ari_train']:.3f} | "
                  f"{r['ari_test']:.3f} | {r['nmi_train']:.3f} | {r['nmi_test']:.3f} |" for r in clusters]
    lines += ["", "Notes:"] + [f"- {n}" for n in notes(board)]
    lines += ["", "Each model's confusion matrix and report: `<model>/report.html` beside this file."]
    return "\n".join(lines) + "\n"


def leaderboard_png(board: Leaderboard) -> bytes:
    """Accuracy (with 95% CI and the published figure) beside what it costs: training, prediction, size."""
    import matplotlib
    matplotlib.use("Agg")  # no screen on servers
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter
    rows = board.rows[::-1]  # best at the top
    names = [r["model"] for r in rows]
    y = np.arange(len(rows))
    fig, axes = plt.subplots(1, 4, figsize=(15, 0.45 * len(rows) + 1.6), sharey=True,
                             gridspec_kw={"width_ratios": [2.2, 1, 1, 1]})
    acc = np.array([r["test_accuracy"] for r in rows]) * 100
    err = np.array([[r["test_accuracy"] - r["ci95_low"], r["ci95_high"] - r["test_accuracy"]] for r in rows]).T * 100
    ax = axes[0]
    ax.barh(y, acc, xerr=err, color="#4a7fb5", capsize=3)
    refs = [(i, r["published_accuracy"] * 100) for i, r in enumerate(rows) if r["published_accuracy"] is not None]
    if refs:
        ax.plot([v for _, v in refs], [i for i, _ in refs], "D", color="#d62728", label="published")
        ax.legend(loc="lower right", fontsize=8)
    low = min(list(acc) + [v for _, v in refs])
    x0 = max(0, 5 * math.floor((low - 3) / 5))
    ax.set_xlim(x0, 100)
    for i, v in enumerate(acc):  # inside the bar's base: the far end holds the CI and the published mark
        ax.text(x0 + 0.5, i, f"{v:.2f}%", va="center", fontsize=8, color="white", fontweight="bold")
    ax.set_yticks(y, names)
    ax.set_title("test accuracy % (95% CI)")
    for ax, key, title, scale_ in ((axes[1], "train_seconds", "training time (s)", 1),
                                   (axes[2], "predict_seconds_per_10k", "prediction s / 10k images", 1),
                                   (axes[3], "size_bytes", "size on disk (MB)", 1 / 2**20)):
        vals = np.array([max(float(r[key]) * scale_, 1e-3) for r in rows])
        ax.barh(y, vals, color="#8c8c8c")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on short decades
        ax.set_title(title + ", log scale", fontsize=10)
    for ax in axes:
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def leaderboard_html(board: Leaderboard, png: bytes) -> str:
    import base64
    from digitlab.report import CSS
    header, rows = table_rows(board)
    body = []
    for cells in rows:
        escaped = [html.escape(c) for c in cells]
        escaped[1] = f"<a href='{escaped[1]}/report.html'>{escaped[1]}</a>"  # each model's own report
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in escaped) + "</tr>")
    table = ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
             + "".join(body) + "</table>")
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<title>digitlab compare</title><style>{CSS}</style></head><body>",
             f"<h1>digitlab compare: {html.escape(str(board.meta['dataset'].get('dataset', '')))}</h1>",
             f"<p>{html.escape(_machine_line(board.meta))}.</p>",
             f"<img alt='leaderboard chart' src='data:image/png;base64,{base64.b64encode(png).decode()}'>",
             "<h2>Leaderboard</h2>", table]
    sources = _sources(board)
    if sources:
        parts.append("<h2>Published figures</h2><ol>" + "".join(f"<li>{html.escape(s)}</li>" for s in sources) + "</ol>")
    clusters = [r for r in board.rows if r["kind"] == "clustering"]
    if clusters:
        head = ["clustering", "train accuracy", "test accuracy", "ARI train", "ARI test", "NMI train", "NMI test"]
        parts.append("<h2>k-means</h2><table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(
            f"<tr><td>{html.escape(r['model'])}</td><td>{_pct(r['train_accuracy'])}</td><td>{_pct(r['test_accuracy'])}</td>"
            f"<td>{r['ari_train']:.3f}</td><td>{r['ari_test']:.3f}</td><td>{r['nmi_train']:.3f}</td>"
            f"<td>{r['nmi_test']:.3f}</td></tr>" for r in clusters) + "</table>")
    parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes(board)) + "</ul>")
    parts.append(f"<h2>Configuration</h2><pre>{html.escape(json.dumps(board.meta, indent=2, default=str))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
