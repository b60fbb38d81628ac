"""Train a registered model into a run directory, one epoch at a time, and resume it.

    run = train(TrainConfig(model="seed-ann", epochs=10, val="test"), runs_root="runs")
    metrics = evaluate_run(run)                                  # evaluation is its own step (digitlab.evaluation)
    run = resume("runs/20261126-071500-fastcnn-s0")              # after Ctrl-C or a killed process

The epoch loop is ours (one `fit` call per epoch) so that we control what Keras' own loop hides:
  - the data each epoch sees is a pure function of (seed, epoch): the shuffling permutation, the
    augmentation draws and the dropout masks (every layer's seed state is reset from (seed, epoch)),
    so a resumed run sees exactly what an uninterrupted one would;
  - after every epoch, history.csv, best.keras (when kept), model.keras and state.json are written,
    each atomically and in that order. model.keras is the truth: its optimiser step counter says how
    many epochs it holds, and a resume trims history.csv to match, wherever a kill landed;
  - early stopping and the best epoch are recomputed from history.csv, so they survive a resume;
  - Ctrl-C leaves the run marked "interrupted" with the last completed epoch on disk;
  - a loss that turns NaN or infinite stops training at that batch with a TrainingError, and the run is
    marked "failed" (the model on disk stays the last finite epoch's);
  - the process holds the run folder's lock (runs.lock_run) while it writes there, and a new run
    refuses a folder that holds anything unless told to overwrite (runs.claim_folder).
Importing this module imports Keras: the CLI chooses the backend first (digitlab.backend).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
import shutil
import time
import zipfile
from pathlib import Path

import keras
import numpy as np

from digitlab import data as data_mod
from digitlab.atomic import atomic_path
from digitlab.augmentation import augment_from, augment_images
from digitlab.config import TrainConfig, validate
from digitlab.data import NUM_CLASSES
from digitlab.distribute import describe as describe_distribution
from digitlab.distribute import local_part
from digitlab.engines import ScanEngine, resolve_engine, scan_unavailable_reason
from digitlab.environment import environment_info
from digitlab.errors import ConfigError, RunError, TrainingError
from digitlab.models import create_model
from digitlab.predictor import keep_tensorflow_unimported, unloadable_message
from digitlab.registry import check_params, model_family
from digitlab.runs import (
    DATA,
    MODEL_FILE,
    STATE,
    DataInfo,
    EpochRecord,
    Run,
    RunState,
    check_resumable,
    claim_folder,
    lock_run,
    new_run_dir,
    read_history,
    remove_run_temporaries,
)
from digitlab.schedules import make_learning_rate
from digitlab.scoring import stop_decision

keep_tensorflow_unimported()  # on JAX, Keras would import it to seed it and to save models

ADAMW_WEIGHT_DECAY = 0.004  # Keras' AdamW default, used when the config leaves weight_decay at 0
VALIDATION_BATCH = 1000  # images per step when the scan engine validates (fit validates in training batches)


# ---------------------------------------------------------------- model, optimiser, loss

def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return max(1, math.ceil(n_train / batch_size))


def make_optimizer(cfg: TrainConfig, steps: int = 1):
    """The optimiser named by cfg, with its learning-rate schedule; `steps` = optimiser steps per epoch."""
    lr = make_learning_rate(cfg, steps)
    wd = cfg.weight_decay or None
    factories = {
        "adam": lambda: keras.optimizers.Adam(learning_rate=lr, weight_decay=wd),
        "adamw": lambda: keras.optimizers.AdamW(learning_rate=lr, weight_decay=cfg.weight_decay or ADAMW_WEIGHT_DECAY),
        "sgd": lambda: keras.optimizers.SGD(learning_rate=lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                                            weight_decay=wd),
        "rmsprop": lambda: keras.optimizers.RMSprop(learning_rate=lr, weight_decay=wd),
    }
    return factories[cfg.optimizer]()  # validate() has checked the name


def make_loss(cfg: TrainConfig):
    """(loss, metrics). Smoothing needs one-hot targets: SparseCategoricalCrossentropy has no label_smoothing."""
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


# ---------------------------------------------------------------- training

def train(cfg: TrainConfig, runs_root: str | Path = "runs", run_dir: str | Path | None = None,
          data_dir=None, dataset: data_mod.Dataset | None = None, verbose: int = 1,
          callbacks: list | None = None, overwrite: bool = False) -> Run:
    """Train `cfg` into a new run directory and return its Run (not yet evaluated: see evaluate_run).

    `run_dir` must be empty or missing; with `overwrite`, a digitlab run in it is replaced (other
    files are kept). KeyboardInterrupt is recorded in state.json, then re-raised; a non-finite loss
    marks the run failed and raises TrainingError. `callbacks` are extra Keras callbacks passed to
    every epoch's fit (tests use one to simulate an interruption).
    """
    check(cfg)
    cfg = with_engine(cfg, callbacks)  # config.json records the engine that ran
    ds = dataset or data_mod.load_dataset(cfg.dataset, data_dir=data_dir)
    split = data_mod.prepare_split(cfg, ds)  # a bad --val or --train-size fails here, before any folder exists
    path = Path(run_dir) if run_dir else new_run_dir(runs_root, cfg.model, cfg.seed)
    with lock_run(path):
        claim_folder(path, overwrite)
        return _run_training(cfg, Run(path), ds, split, verbose, callbacks, resuming=False)


def resume(run_dir: str | Path, data_dir=None, dataset: data_mod.Dataset | None = None, verbose: int = 1,
           callbacks: list | None = None) -> Run:
    """Continue an interrupted run from its last completed epoch, with the config saved in it."""
    run = Run(run_dir)
    cfg = run.config  # RunError if there is none
    with lock_run(run.path):
        remove_run_temporaries(run.path)  # what a kill during a save left behind
        check_resumable(run)
        check(cfg)
        ds = dataset or data_mod.load_dataset(cfg.dataset, data_dir=data_dir)
        split = data_mod.prepare_split(cfg, ds)
        # Killed before its first files were written: start it again, in its own folder.
        resuming = (run.path / DATA).exists() and run.model_path.exists()
        return _run_training(cfg, run, ds, split, verbose, callbacks, resuming=resuming)


def check(cfg: TrainConfig) -> None:
    """Fail on a bad config before any data is loaded or any Keras work is done."""
    validate(cfg)
    _check_finite(cfg.model_params, "model parameter")
    check_params(cfg.model, cfg.model_params)


def with_engine(cfg: TrainConfig, callbacks=None) -> TrainConfig:
    """cfg with its engine resolved (engines.resolve_engine); --engine scan where it can't run is a ConfigError."""
    if cfg.engine == "scan" and (why := scan_unavailable_reason(callbacks)):
        raise ConfigError(f"--engine scan can't run here: {why}. Use --engine fit (or auto)")
    return dataclasses.replace(cfg, engine=resolve_engine(cfg.engine, callbacks, model_family(cfg.model)))


def _check_finite(value, name: str) -> None:
    """NaN and infinity pass every range check a builder makes, and json would write them as invalid NaN."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, f"{name} {key}")
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_finite(item, name)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}")


def _run_training(cfg: TrainConfig, run: Run, ds: data_mod.Dataset, split: data_mod.Split, verbose: int,
                  callbacks, resuming: bool) -> Run:
    """Train in run.path; the caller holds the folder's lock."""
    keras.utils.set_random_seed(cfg.seed)
    steps = steps_per_epoch(len(split.y_train), cfg.batch_size)
    keep_best = bool(cfg.early_stopping or cfg.save_best)  # validate() made sure the monitor will exist

    if not resuming:  # config.json first, so that a run killed from here on can be resumed
        run.write_config(cfg, distribution=describe_distribution())
        run.write_data(DataInfo(**ds.provenance, class_names=list(ds.class_names), train_images=len(split.y_train),
                                val_images=len(split.y_val), val_is_test=split.val_is_test,
                                test_images=len(ds.y_test)))
        run.write_environment(environment_info(cfg.seed))
    model = build_compiled_model(cfg, steps)
    if resuming:
        history, state = _restore(model, run, steps)
    else:
        history, state = [], RunState(status="running", epochs_completed=0)
    state.status = "running"
    run.write_state(state)

    validation = (local_part(data_mod.scale(split.x_val), targets(split.y_val, cfg), cfg.batch_size)[:2]
                  if len(split.y_val) else None)  # several processes: each one scores its part of the set
    if cfg.engine == "scan" and scan_unavailable_reason(callbacks):  # resumed where scan can't run: fit
        cfg = dataclasses.replace(cfg, engine="fit")                          # takes the same steps
    engine = ScanEngine(model) if cfg.engine == "scan" else None
    if engine and not augment_from(cfg).active:  # the same images every epoch, in another order
        engine.keep(data_mod.scale(split.x_train), targets(split.y_train, cfg))
    try:
        stop = _stopping(history, cfg)
        for epoch in range(len(history), cfg.epochs):
            if stop.stop:  # only true here when resuming a run that had already decided to stop
                break
            history.append(run_epoch(model, split, validation, cfg, epoch, verbose, callbacks, engine))
            stop = _stopping(history, cfg)
            run.write_history(history)
            if keep_best and stop.best_epoch == epoch + 1:
                save_model(model, run.best_model_path)
            save_model(model, run.model_path)
            state.epochs_completed = epoch + 1
            state.train_seconds = round(sum(r.seconds or 0.0 for r in history), 3)
            if keep_best:
                state.monitor, state.best_epoch, state.best_value = cfg.monitor, stop.best_epoch, stop.best_value
            run.write_state(state)
    except KeyboardInterrupt:
        state.status = "interrupted"
        run.write_state(state)
        raise
    except TrainingError as exc:
        state.status, state.error = "failed", str(exc)
        run.write_state(state)
        raise
    if stop.stop and len(history) < cfg.epochs:
        state.stopped_early_at_epoch = len(history)
    if keep_best and cfg.restore_best and run.best_model_path.exists() and stop.best_epoch != len(history):
        with atomic_path(run.model_path) as tmp:
            shutil.copyfile(run.best_model_path, tmp)
        state.final_model = f"best epoch {stop.best_epoch} by {cfg.monitor} (restore_best)"
    state.status = "completed"
    run.write_state(state)
    return run


def _restore(model, run: Run, steps: int) -> tuple[list[EpochRecord], RunState]:
    """Load model.keras (weights and optimiser state) into `model`; trim the history to the epochs it holds."""
    model.optimizer.build(model.trainable_variables)
    try:
        model.load_weights(run.model_path)
    except Exception as exc:  # noqa: BLE001 - Keras reports a mismatch as a ValueError listing weight arrays
        if not zipfile.is_zipfile(run.model_path):
            raise RunError(unloadable_message(run.model_path, exc)) from None
        raise RunError(f"{run.model_path} does not fit this run's {run.config.model} model ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0][:160]}): the folder holds another run's model. Train this run "
                       "again with --overwrite, or into a new --out") from None
    iterations = int(np.asarray(model.optimizer.iterations))
    if iterations % steps:
        raise RunError(f"{run.model_path} stopped mid-epoch ({iterations} steps, {steps} per epoch): "
                       "was the config changed after training? Train a new run instead")
    done = iterations // steps
    recorded = run.state.epochs_completed or 0
    # state.json is written after every save, so it lags by one epoch at most (runs too old to have one: unchecked)
    if (run.path / STATE).exists() and done > recorded + 1:
        raise RunError(f"{run.model_path} holds {done} epochs but {run.path.name}/state.json records {recorded}: "
                       "the model is another run's. Train this run again with --overwrite, or into a new --out")
    history = read_history(run.path / "history.csv")
    if len(history) < done:
        raise RunError(f"{run.path}/history.csv has {len(history)} epochs but {MODEL_FILE} holds {done}; "
                       "the run folder was edited by hand: start a new run")
    history = history[:done]
    run.write_history(history)
    state = run.state
    state.epochs_completed = done
    state.train_seconds = round(sum(r.seconds or 0.0 for r in history), 3)
    state.resumed.append({"at": dt.datetime.now().isoformat(timespec="seconds"), "from_epoch": done,
                          "keras_backend": keras.backend.backend()})
    return history, state


def _stopping(history: list[EpochRecord], cfg: TrainConfig):
    """Best epoch so far by cfg.monitor, and whether early stopping says stop (digitlab.scoring's rule)."""
    return stop_decision([getattr(r, cfg.monitor) for r in history], cfg.monitor, cfg.early_stopping)


def run_epoch(model, split: data_mod.Split, validation, cfg: TrainConfig, epoch: int, verbose: int,
              callbacks: list | None = None, engine: ScanEngine | None = None) -> EpochRecord:
    """Train one epoch, by `engine` (the scan engine) or by Keras' fit; check it stayed finite."""
    start = time.perf_counter()
    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(split.y_train))
    reset_layer_seeds(model, cfg.seed, epoch)
    if engine is not None and engine.training_set is not None:  # kept on the device: only the order travels
        x, y, shuffle = *engine.training_set, order
    else:
        x, y, shuffle = _epoch_images(split, cfg, epoch, order), targets(split.y_train[order], cfg), None
    if engine is not None:
        bar = _progress_bar(cfg.epochs) if verbose else None  # fit's display, drawn once the epoch is done
        if bar:
            bar.set_params({"verbose": 1, "epochs": cfg.epochs, "steps": steps_per_epoch(len(y), cfg.batch_size)})
            bar.on_epoch_begin(epoch)
        logs, bad_batch = engine.run_epoch(x, y, cfg.batch_size, order=shuffle)
        if validation is not None and bad_batch is None:
            # one compiled pass in large batches: the same sample means as fit's batches of 32, fewer steps
            val = model.evaluate(*validation, batch_size=VALIDATION_BATCH, verbose=0, return_dict=True)
            logs.update({f"val_{k}": float(v) for k, v in val.items()})
        if bar:
            bar.on_epoch_end(epoch, logs)
        if bad_batch is None:
            for callback in callbacks or []:  # epoch-level ones only (engines.needs_batches)
                callback.set_model(model)
                callback.on_train_begin()
                callback.on_epoch_end(epoch, dict(logs))
    else:
        guard = StopOnNonFiniteLoss()
        cbs = ([_progress_bar(cfg.epochs)] if verbose else []) + [guard] + list(callbacks or [])
        x, y, batch_size = local_part(x, y, cfg.batch_size)  # several processes: this one's part of each batch
        result = model.fit(x, y, batch_size=batch_size, epochs=epoch + 1, initial_epoch=epoch, shuffle=False,
                           validation_data=validation, verbose=1 if verbose else 0, callbacks=cbs)
        logs = {k: float(v[-1]) for k, v in result.history.items()}
        bad_batch = guard.batch
        if bad_batch is not None:
            logs["loss"] = guard.loss
    seconds = time.perf_counter() - start
    lr = current_learning_rate(model)
    where = f"at batch {bad_batch + 1} of epoch {epoch + 1}" if bad_batch is not None else f"in epoch {epoch + 1}"
    for name, what in (("loss", "the loss"), ("val_loss", "the validation loss")):
        value = logs.get(name)
        if value is not None and not math.isfinite(value):
            raise TrainingError(_diverged(f"{what} became {value} {where}", lr))
    # A ReLU can hide NaN weights from the loss (it maps NaN to 0): the model is checked before it is saved.
    broken = next((v.path for v in model.weights if not np.isfinite(keras.ops.convert_to_numpy(v)).all()), None)
    if broken:
        raise TrainingError(_diverged(f"the weights {broken} became non-finite in epoch {epoch + 1}", lr))
    return EpochRecord(epoch=epoch + 1, loss=logs.get("loss"), accuracy=logs.get("accuracy"),
                       val_loss=logs.get("val_loss"), val_accuracy=logs.get("val_accuracy"),
                       lr=lr, seconds=round(seconds, 3))


def _epoch_images(split: data_mod.Split, cfg: TrainConfig, epoch: int, order: np.ndarray) -> np.ndarray:
    """The epoch's training images, scaled, in `order`; augmented when the config says so."""
    aug = augment_from(cfg)
    if aug.active:  # a separate stream, so turning augmentation on doesn't change the shuffling
        return augment_images(split.x_train[order], aug, np.random.default_rng([cfg.seed, epoch, 1]))
    return data_mod.scale(split.x_train[order])


def _diverged(what: str, lr: float) -> str:
    return (f"training diverged: {what} (learning rate {lr:g}); the run is marked failed. Train a new run with a "
            "lower --lr (or without the setting that made it diverge)")


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Keras' TerminateOnNaN without its print: end the epoch at the first batch whose loss is not finite."""

    def __init__(self):
        super().__init__()
        self.batch: int | None = None  # the batch (0-based, in the epoch) where the loss went non-finite
        self.loss: float | None = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if self.batch is None and loss is not None and not math.isfinite(float(loss)):
            self.batch, self.loss = batch, float(loss)
            self.model.stop_training = True


def reset_layer_seeds(model, seed: int, epoch: int) -> None:
    """Set every random layer's seed state (dropout, ...) from (seed, epoch).

    Keras does not save these states in model.keras; resetting them each epoch makes the dropout
    masks of epoch k the same whether or not the run was resumed before it.
    """
    states = [v for v in model.variables if v.path.endswith("seed_generator_state")]
    if not states:
        return
    draws = np.random.default_rng([seed, epoch, 2]).integers(1, 2**31 - 1, size=len(states))
    for var, draw in zip(states, draws, strict=True):
        var.assign(np.array([draw, 0], dtype="uint32"))


class EpochProgressBar(keras.callbacks.ProgbarLogger):
    """Keras' progress bar, but headed "Epoch 3/10" rather than "Epoch 3/3" under our one-epoch fits."""

    def __init__(self, total_epochs: int):
        super().__init__()
        self.total_epochs = total_epochs

    def set_params(self, params):
        super().set_params(params)
        self.epochs = self.total_epochs


def _progress_bar(total_epochs: int) -> EpochProgressBar:
    return EpochProgressBar(total_epochs)


def current_learning_rate(model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def save_model(model, path: Path) -> None:
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)

