"""Train a registered model into a run directory, one epoch at a time; resume it; repeat it over seeds.

    run = train(TrainConfig(model="seed-ann", epochs=10, val="test"), runs_root="runs")
    run.metrics["test_accuracy"]
    run = resume("runs/20261126-071500-fastcnn-s0")        # after Ctrl-C or a killed process
    group = train_seeds(TrainConfig(model="fastcnn"), seeds=3)   # group.summary["test_accuracy_mean"]

The epoch loop is ours (one `fit` call per epoch) so that we control what Keras' own loop hides:
  - the data each epoch sees is a pure function of (seed, epoch): the shuffling permutation, the
    augmentation draws and the dropout masks (every layer's seed state is reset from (seed, epoch)),
    so a resumed run sees exactly what an uninterrupted one would;
  - after every epoch, history.csv, best.keras (when kept), model.keras and state.json are written,
    each atomically and in that order. model.keras is the truth: its optimiser step counter says how
    many epochs it holds, and a resume trims history.csv to match, wherever a kill landed;
  - early stopping and the best epoch are recomputed from history.csv, so they survive a resume;
  - Ctrl-C leaves the run marked "interrupted" with the last completed epoch on disk.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digitlab import data as data_mod
from digitlab.atomic import atomic_path, write_json_atomic, write_text_atomic
from digitlab.augmentation import augment_from, augment_images
from digitlab.config import TrainConfig, from_dict, to_dict, validate
from digitlab.data import NUM_CLASSES
from digitlab.models import check_params, create_model, get_model_info
from digitlab.runs import BEST_MODEL_FILE, MODEL_FILE, Run, environment_info, read_json, read_history

HISTORY_FIELDS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]
SEEDS_FILE = "seeds.json"  # in a --seeds group folder: the config, the seeds and the summary
ADAMW_WEIGHT_DECAY = 0.004  # Keras' AdamW default, used when the config leaves weight_decay at 0


# ---------------------------------------------------------------- model, optimiser, loss

def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return max(1, math.ceil(n_train / batch_size))


def make_optimizer(cfg: TrainConfig, steps: int = 1):
    """The optimiser named by cfg, with its learning-rate schedule; `steps` = optimiser steps per epoch."""
    import keras
    from digitlab.schedules import make_learning_rate
    lr = make_learning_rate(cfg, steps)
    wd = cfg.weight_decay or None
    factories = {
        "adam": lambda: keras.optimizers.Adam(learning_rate=lr, weight_decay=wd),
        "adamw": lambda: keras.optimizers.AdamW(learning_rate=lr, weight_decay=cfg.weight_decay or ADAMW_WEIGHT_DECAY),
        "sgd": lambda: keras.optimizers.SGD(learning_rate=lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                                            weight_decay=wd),
        "rmsprop": lambda: keras.optimizers.RMSprop(learning_rate=lr, weight_decay=wd),
    }
    if cfg.optimizer not in factories:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; known: {', '.join(factories)}")
    return factories[cfg.optimizer]()


def make_loss(cfg: TrainConfig):
    """(loss, metrics). Smoothing needs one-hot targets: SparseCategoricalCrossentropy has no label_smoothing."""
    import keras
    if cfg.label_smoothing:
        return (keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
                [keras.metrics.CategoricalAccuracy(name="accuracy")])
    return keras.losses.SparseCategoricalCrossentropy(), ["accuracy"]


def targets(y: np.ndarray, cfg: TrainConfig) -> np.ndarray:
    """Labels in the form make_loss() expects: class ids, or one-hot rows when smoothing."""
    if cfg.label_smoothing:
        return np.eye(NUM_CLASSES, dtype=np.float32)[np.asarray(y, dtype=np.int64)]
    return y


def build_compiled_model(cfg: TrainConfig, steps: int = 1):
    import keras
    # Keras reads the dtype policy when each layer is built, so it is set around the build only; the
    # layers keep it in model.keras. Our models' softmax layers are float32 whatever the policy.
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if cfg.mixed_precision else "float32")
    try:
        model = create_model(cfg.model, **cfg.model_params)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    loss, metrics = make_loss(cfg)
    model.compile(optimizer=make_optimizer(cfg, steps), loss=loss, metrics=metrics,
                  jit_compile=True if cfg.jit_compile else "auto")
    return model


def prepare_data(cfg: TrainConfig, data_dir=None, dataset: data_mod.Dataset | None = None):
    ds = dataset or data_mod.load_dataset(cfg.dataset, data_dir=data_dir)
    split = data_mod.validation_split(ds, cfg.val, seed=cfg.seed)
    if cfg.train_size:
        split = data_mod.subset_training(split, cfg.train_size, seed=cfg.seed)
    return ds, split


# ---------------------------------------------------------------- training

def train(cfg: TrainConfig, runs_root: str | Path = "runs", run_dir: str | Path | None = None,
          data_dir=None, dataset: data_mod.Dataset | None = None, verbose: int = 1,
          evaluate: bool = True, callbacks: list | None = None) -> Run:
    """Train `cfg` into a new run directory and return its Run.

    KeyboardInterrupt is recorded in state.json, then re-raised. `callbacks` are extra Keras callbacks
    passed to every epoch's fit (tests use one to simulate an interruption).
    """
    from digitlab.runs import new_run_dir
    _check(cfg)
    path = Path(run_dir) if run_dir else new_run_dir(runs_root, cfg.model, cfg.seed)
    path.mkdir(parents=True, exist_ok=True)
    return _run_training(cfg, path, data_dir, dataset, verbose, evaluate, callbacks, resuming=False)


def resume(run_dir: str | Path, data_dir=None, dataset: data_mod.Dataset | None = None, verbose: int = 1,
           evaluate: bool = True, callbacks: list | None = None) -> Run:
    """Continue an interrupted run from its last completed epoch, with the config saved in it."""
    path = Path(run_dir)
    if not (path / "config.json").exists():
        raise ValueError(f"{path} is not a run directory (no config.json); pass the folder `digitlab train` made")
    state = read_json(path / "state.json", {})
    if state.get("status") == "completed":
        raise ValueError(f"{path} already completed {state.get('epochs_completed')} epochs; nothing to resume "
                         "(to train longer, start a new run with more --epochs)")
    cfg = from_dict(TrainConfig, read_json(path / "config.json"))
    _check(cfg)
    return _run_training(cfg, path, data_dir, dataset, verbose, evaluate, callbacks,
                         resuming=(path / MODEL_FILE).exists())


def _check(cfg: TrainConfig) -> None:
    """Fail on a bad config before any data is loaded or any keras work is done."""
    validate(cfg)
    check_params(cfg.model, cfg.model_params)
    get_model_info(cfg.model)


def _run_training(cfg, path: Path, data_dir, dataset, verbose, evaluate, callbacks, resuming: bool) -> Run:
    import keras
    keras.utils.set_random_seed(cfg.seed)
    ds, split = prepare_data(cfg, data_dir, dataset)
    steps = steps_per_epoch(len(split.y_train), cfg.batch_size)
    keep_best = bool(cfg.early_stopping or cfg.save_best)  # validate() made sure the monitor will exist

    model = build_compiled_model(cfg, steps)
    if resuming:
        history, state = _restore(model, path, cfg, steps)
    else:
        write_json_atomic(path / "config.json", to_dict(cfg))
        write_json_atomic(path / "data.json", {
            **ds.provenance, "class_names": list(ds.class_names), "train_images": len(split.y_train),
            "val_images": len(split.y_val), "val_is_test": split.val_is_test, "test_images": len(ds.y_test)})
        write_json_atomic(path / "environment.json", environment_info(cfg.seed))
        history, state = [], {"status": "running", "epochs_completed": 0, "epochs_planned": cfg.epochs}
    state["status"] = "running"
    write_json_atomic(path / "state.json", state)

    validation = (data_mod.scale(split.x_val), targets(split.y_val, cfg)) if len(split.y_val) else None
    try:
        stop = _stopping(history, cfg)
        for epoch in range(len(history), cfg.epochs):
            if stop["stop"]:  # only true here when resuming a run that had already decided to stop
                break
            row = run_epoch(model, split, validation, cfg, epoch, verbose, callbacks)
            history.append(row)
            stop = _stopping(history, cfg)
            write_history(path / "history.csv", history)
            if keep_best and stop["best_epoch"] == epoch + 1:
                save_model(model, path / BEST_MODEL_FILE)
            save_model(model, path / MODEL_FILE)
            state.update(epochs_completed=epoch + 1, train_seconds=round(sum(r["seconds"] for r in history), 3))
            if keep_best:
                state.update(monitor=cfg.monitor, best_epoch=stop["best_epoch"], best_value=stop["best_value"])
            write_json_atomic(path / "state.json", state)
    except KeyboardInterrupt:
        state["status"] = "interrupted"
        write_json_atomic(path / "state.json", state)
        raise
    if stop["stop"] and len(history) < cfg.epochs:
        state["stopped_early_at_epoch"] = len(history)
    if keep_best and cfg.restore_best and (path / BEST_MODEL_FILE).exists() and stop["best_epoch"] != len(history):
        with atomic_path(path / MODEL_FILE) as tmp:
            shutil.copyfile(path / BEST_MODEL_FILE, tmp)
        state["final_model"] = f"best epoch {stop['best_epoch']} by {cfg.monitor} (restore_best)"
    state["status"] = "completed"
    write_json_atomic(path / "state.json", state)

    run = Run(path)
    if evaluate:
        from digitlab.evaluation import evaluate_run
        evaluate_run(run, dataset=ds)
    return run


def _restore(model, path: Path, cfg: TrainConfig, steps: int) -> tuple[list[dict], dict]:
    """Load model.keras (weights and optimiser state) into `model`; trim the history to the epochs it holds."""
    model.optimizer.build(model.trainable_variables)
    model.load_weights(path / MODEL_FILE)
    iterations = int(np.asarray(model.optimizer.iterations))
    if iterations % steps:
        raise ValueError(f"{path / MODEL_FILE} stopped mid-epoch ({iterations} steps, {steps} per epoch): "
                         "was the config changed after training? Train a new run instead")
    done = iterations // steps
    history = read_history(path / "history.csv")
    if len(history) < done:
        raise ValueError(f"{path}/history.csv has {len(history)} epochs but model.keras holds {done}; "
                         "the run folder was edited by hand: start a new run")
    history = [{**r, "epoch": int(r["epoch"])} for r in history[:done]]
    write_history(path / "history.csv", history)
    state = read_json(path / "state.json", {})
    state.update(epochs_completed=done, train_seconds=round(sum(r["seconds"] or 0 for r in history), 3))
    state.setdefault("resumed", []).append({"at": dt.datetime.now().isoformat(timespec="seconds"),
                                            "from_epoch": done, "keras_backend": _backend()})
    return history, state


def _backend() -> str:
    import keras
    return keras.backend.backend()


def _stopping(history: list[dict], cfg: TrainConfig) -> dict:
    """Best epoch so far by cfg.monitor, and whether early stopping says stop (Keras' EarlyStopping rule)."""
    values = [r.get(cfg.monitor) for r in history]
    if not values or any(v is None for v in values):
        return {"best_epoch": None, "best_value": None, "stop": False}
    better = (lambda a, b: a > b) if cfg.monitor.endswith("accuracy") else (lambda a, b: a < b)
    best = 0
    for i, v in enumerate(values):
        if better(v, values[best]):
            best = i
    wait = len(values) - 1 - best  # epochs since the best one
    return {"best_epoch": best + 1, "best_value": float(values[best]),
            "stop": bool(cfg.early_stopping) and wait >= cfg.early_stopping}


def run_epoch(model, split: data_mod.Split, validation, cfg: TrainConfig, epoch: int, verbose: int,
              callbacks: list | None = None) -> dict:
    start = time.perf_counter()
    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(split.y_train))
    aug = augment_from(cfg)
    if aug.active:  # a separate stream, so turning augmentation on doesn't change the shuffling
        x = augment_images(split.x_train[order], aug, np.random.default_rng([cfg.seed, epoch, 1]))
    else:
        x = data_mod.scale(split.x_train[order])
    reset_layer_seeds(model, cfg.seed, epoch)
    cbs = ([_progress_bar(cfg.epochs)] if verbose else []) + list(callbacks or [])
    result = model.fit(x, targets(split.y_train[order], cfg), batch_size=cfg.batch_size,
                       epochs=epoch + 1, initial_epoch=epoch, shuffle=False, validation_data=validation,
                       verbose=1 if verbose else 0, callbacks=cbs or None)
    seconds = time.perf_counter() - start
    logs = {k: float(v[-1]) for k, v in result.history.items()}
    return {"epoch": epoch + 1, "loss": logs.get("loss"), "accuracy": logs.get("accuracy"),
            "val_loss": logs.get("val_loss"), "val_accuracy": logs.get("val_accuracy"),
            "lr": current_learning_rate(model), "seconds": round(seconds, 3)}


def reset_layer_seeds(model, seed: int, epoch: int) -> None:
    """Set every random layer's seed state (dropout, ...) from (seed, epoch).

    Keras does not save these states in model.keras; resetting them each epoch makes the dropout
    masks of epoch k the same whether or not the run was resumed before it.
    """
    states = [v for v in model.variables if v.path.endswith("seed_generator_state")]
    if not states:
        return
    draws = np.random.default_rng([seed, epoch, 2]).integers(1, 2**31 - 1, size=len(states))
    for var, draw in zip(states, draws):
        var.assign(np.array([draw, 0], dtype="uint32"))


def _progress_bar(total_epochs: int):
    """Keras' progress bar, but headed "Epoch 3/10" rather than "Epoch 3/3" under our one-epoch fits."""
    import keras

    class EpochProgressBar(keras.callbacks.ProgbarLogger):
        def set_params(self, params):
            super().set_params(params)
            self.epochs = total_epochs

    return EpochProgressBar()


def current_learning_rate(model) -> float:
    import keras
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def save_model(model, path: Path) -> None:
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)


def write_history(path: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(path, buf.getvalue())


# ---------------------------------------------------------------- several seeds

@dataclass(frozen=True)
class SeedGroup:
    path: Path  # the group folder: one run folder per seed (s0, s1, ...) and seeds.json
    runs: list  # list[Run]
    summary: dict  # per-seed figures, mean and standard deviation


def train_seeds(cfg: TrainConfig, seeds: int, runs_root: str | Path = "runs", out: str | Path | None = None,
                data_dir=None, dataset: data_mod.Dataset | None = None, verbose: int = 1,
                callbacks: list | None = None) -> SeedGroup:
    """Train cfg with seeds cfg.seed, cfg.seed + 1, ... into one group folder; runs already done are kept."""
    from digitlab.runs import new_run_dir
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    _check(cfg)
    # new_run_dir names it <stamp>-<model>-seeds3-s<first seed>, unique even within one second.
    path = Path(out) if out else new_run_dir(runs_root, f"{cfg.model}-seeds{seeds}", cfg.seed)
    path.mkdir(parents=True, exist_ok=True)
    seed_list = [cfg.seed + i for i in range(seeds)]
    write_json_atomic(path / SEEDS_FILE, {"config": to_dict(cfg), "seeds": seed_list})
    return _train_group(path, cfg, seed_list, data_dir, dataset, verbose, callbacks)


def resume_seeds(group_dir: str | Path, data_dir=None, dataset=None, verbose: int = 1, callbacks=None) -> SeedGroup:
    """Finish a --seeds group: completed seeds are kept, an interrupted one resumed, missing ones trained."""
    path = Path(group_dir)
    meta = read_json(path / SEEDS_FILE)
    cfg = from_dict(TrainConfig, meta["config"])
    return _train_group(path, cfg, meta["seeds"], data_dir, dataset, verbose, callbacks)


def is_seed_group(path: str | Path) -> bool:
    return (Path(path) / SEEDS_FILE).exists()


def _train_group(path: Path, cfg: TrainConfig, seed_list: list[int], data_dir, dataset, verbose, callbacks):
    import keras
    ds = dataset or data_mod.load_dataset(cfg.dataset, data_dir=data_dir)
    runs = []
    for seed in seed_list:
        run_dir = path / f"s{seed}"
        status = read_json(run_dir / "state.json", {}).get("status")
        if status == "completed":
            runs.append(Run(run_dir))
            continue
        keras.backend.clear_session()  # free the previous seed's graphs; keeps layer names stable
        if status is not None and (run_dir / MODEL_FILE).exists():
            runs.append(resume(run_dir, dataset=ds, verbose=verbose, callbacks=callbacks))
        else:
            runs.append(train(dataclasses.replace(cfg, seed=seed), run_dir=run_dir, dataset=ds, verbose=verbose,
                              callbacks=callbacks))
    summary = summarize(runs)
    write_json_atomic(path / SEEDS_FILE, {"config": to_dict(cfg), "seeds": seed_list, "summary": summary})
    return SeedGroup(path, runs, summary)


def summarize(runs: list) -> dict:
    """Test accuracy and training time per run, with mean and sample standard deviation (n - 1)."""
    acc = [float(r.metrics["test_accuracy"]) for r in runs]
    secs = [float(r.state.get("train_seconds") or 0.0) for r in runs]

    def std(v):
        return float(np.std(v, ddof=1)) if len(v) > 1 else 0.0

    return {"runs": [str(r.path) for r in runs], "seeds": [r.config.get("seed") for r in runs],
            "test_accuracy": acc, "test_accuracy_mean": float(np.mean(acc)), "test_accuracy_std": std(acc),
            "train_seconds": secs, "train_seconds_mean": float(np.mean(secs)), "train_seconds_std": std(secs)}
