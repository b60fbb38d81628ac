"""Train a registered model into a run directory, one epoch at a time.

    run = train(TrainConfig(model="seed-ann", epochs=10, val="test"), runs_root="runs")
    run.metrics["test_accuracy"]

The epoch loop is ours (one `fit` call per epoch) so that we control three things Keras' own loop
hides: the shuffling order (a permutation seeded by (seed, epoch), hence reproducible and
resumable), a model file saved atomically after every completed epoch, and a clean stop on Ctrl-C.
"""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np

from digitlab import data as data_mod
from digitlab.atomic import atomic_path, write_json_atomic, write_text_atomic
from digitlab.config import TrainConfig, to_dict
from digitlab.models import create_model, get_model_info
from digitlab.runs import MODEL_FILE, Run, environment_info, new_run_dir

HISTORY_FIELDS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]


def make_optimizer(cfg: TrainConfig):
    import keras
    factories = {
        "adam": lambda: keras.optimizers.Adam(learning_rate=cfg.lr),
        "adamw": lambda: keras.optimizers.AdamW(learning_rate=cfg.lr),
        "sgd": lambda: keras.optimizers.SGD(learning_rate=cfg.lr, momentum=0.9, nesterov=True),
        "rmsprop": lambda: keras.optimizers.RMSprop(learning_rate=cfg.lr),
    }
    if cfg.optimizer not in factories:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; known: {', '.join(factories)}")
    return factories[cfg.optimizer]()


def build_compiled_model(cfg: TrainConfig):
    import keras
    model = create_model(cfg.model, **cfg.model_params)
    model.compile(optimizer=make_optimizer(cfg), loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=["accuracy"])
    return model


def prepare_data(cfg: TrainConfig, data_dir=None, dataset: data_mod.Dataset | None = None):
    ds = dataset or data_mod.load_dataset(cfg.dataset, data_dir=data_dir)
    split = data_mod.validation_split(ds, cfg.val, seed=cfg.seed)
    if cfg.train_size:
        split = data_mod.subset_training(split, cfg.train_size, seed=cfg.seed)
    return ds, split


def train(cfg: TrainConfig, runs_root: str | Path = "runs", run_dir: str | Path | None = None,
          data_dir=None, dataset: data_mod.Dataset | None = None, verbose: int = 1,
          evaluate: bool = True) -> Run:
    """Train `cfg` and return its Run. KeyboardInterrupt is recorded in state.json, then re-raised."""
    import keras

    get_model_info(cfg.model)  # unknown names fail before any data is loaded
    keras.utils.set_random_seed(cfg.seed)
    ds, split = prepare_data(cfg, data_dir, dataset)

    path = Path(run_dir) if run_dir else new_run_dir(runs_root, cfg.model, cfg.seed)
    path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path / "config.json", to_dict(cfg))
    write_json_atomic(path / "data.json", {**ds.provenance, "class_names": list(ds.class_names),
                                           "train_images": len(split.y_train), "val_images": len(split.y_val),
                                           "val_is_test": split.val_is_test, "test_images": len(ds.y_test)})
    write_json_atomic(path / "environment.json", environment_info(cfg.seed))

    model = build_compiled_model(cfg)
    x_val = data_mod.scale(split.x_val)
    validation = (x_val, split.y_val) if len(split.y_val) else None
    history: list[dict] = []
    state = {"status": "running", "epochs_completed": 0, "epochs_planned": cfg.epochs}
    write_json_atomic(path / "state.json", state)
    try:
        for epoch in range(cfg.epochs):
            row = run_epoch(model, split, validation, cfg, epoch, verbose)
            history.append(row)
            save_model(model, path / MODEL_FILE)
            write_history(path / "history.csv", history)
            state["epochs_completed"] = epoch + 1
            state["train_seconds"] = round(sum(r["seconds"] for r in history), 3)
            write_json_atomic(path / "state.json", state)
    except KeyboardInterrupt:
        state["status"] = "interrupted"
        write_json_atomic(path / "state.json", state)
        raise
    state["status"] = "completed"
    write_json_atomic(path / "state.json", state)

    run = Run(path)
    if evaluate:
        from digitlab.evaluation import evaluate_run
        evaluate_run(run, dataset=ds)
    return run


def run_epoch(model, split: data_mod.Split, validation, cfg: TrainConfig, epoch: int, verbose: int) -> dict:
    start = time.perf_counter()
    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(split.y_train))
    result = model.fit(data_mod.scale(split.x_train[order]), split.y_train[order], batch_size=cfg.batch_size,
                       epochs=epoch + 1, initial_epoch=epoch, shuffle=False, validation_data=validation,
                       verbose=1 if verbose else 0, callbacks=[_progress_bar(cfg.epochs)] if verbose else None)
    seconds = time.perf_counter() - start
    logs = {k: float(v[-1]) for k, v in result.history.items()}
    return {"epoch": epoch + 1, "loss": logs.get("loss"), "accuracy": logs.get("accuracy"),
            "val_loss": logs.get("val_loss"), "val_accuracy": logs.get("val_accuracy"),
            "lr": current_learning_rate(model), "seconds": round(seconds, 3)}


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
