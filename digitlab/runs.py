"""The run directory: the unit of provenance. `predict`, `evaluate` and `serve` need only its path.

    runs/20261126-071500-seed-ann-s0/
        config.json        resolved training configuration
        data.json          dataset, source, content sha256
        environment.json   seed, python/keras/backend/library versions, machine
        history.csv        per epoch: loss, accuracy, val_loss, val_accuracy, lr, seconds
        state.json         status (running / interrupted / completed), epochs completed
        model.keras        the model after the last completed epoch (Keras format)
        metrics.json ...   evaluation artefacts and report.html (digitlab.evaluation)

    run = open_run("runs/...")
    proba = run.predict_proba(x)  # (n, 28, 28) float32 in [0, 1] -> (n, 10)
"""
from __future__ import annotations

import csv
import datetime as dt
import json
import platform
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path

import numpy as np

MODEL_FILE = "model.keras"
BEST_MODEL_FILE = "best.keras"
PREDICT_CHUNK = 2048  # images per forward pass when scoring many


def new_run_dir(root: str | Path, model: str, seed: int) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(root) / f"{stamp}-{model}-s{seed}"
    n = 1
    while path.exists():  # two runs started in the same second
        n += 1
        path = Path(root) / f"{stamp}-{model}-s{seed}-{n}"
    path.mkdir(parents=True)
    return path


def environment_info(seed: int | None = None) -> dict:
    import keras
    versions = {}
    for pkg in ("numpy", "keras", "tensorflow-cpu", "tensorflow", "jax", "jaxlib", "scikit-learn", "scipy", "pillow", "matplotlib"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {
        "seed": seed,
        "keras_backend": keras.backend.backend(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": _cpu_count(),
        "versions": versions,
        "created": dt.datetime.now().isoformat(timespec="seconds"),
    }


def _cpu_count() -> int:
    import os
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def read_json(path: Path, default=None):
    return json.loads(path.read_text()) if path.exists() else default


def read_history(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as f:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(f)]


class RunError(ValueError):
    pass


@dataclass
class Run:
    path: Path

    @property
    def config(self) -> dict:
        return read_json(self.path / "config.json", {})

    @property
    def data(self) -> dict:
        return read_json(self.path / "data.json", {})

    @property
    def environment(self) -> dict:
        return read_json(self.path / "environment.json", {})

    @property
    def state(self) -> dict:
        return read_json(self.path / "state.json", {})

    @property
    def metrics(self) -> dict | None:
        return read_json(self.path / "metrics.json")

    @property
    def history(self) -> list[dict]:
        return read_history(self.path / "history.csv")

    @property
    def family(self) -> str | None:
        """The registered family of the run's model ("dense", "conv"), which picks the backend; None for a
        model this version doesn't register (an ensemble, a renamed model): the default backend loads it."""
        from digitlab.models import get_model_info  # no keras: the backend may still be unchosen
        try:
            return get_model_info(self.config.get("model", "")).family
        except KeyError:
            return None

    @property
    def class_names(self) -> list[str]:
        return self.data.get("class_names") or [str(d) for d in range(10)]

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @cached_property
    def model(self):
        return load_model(self.model_path)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return predict_proba(self.model, x)


def open_run(path: str | Path) -> Run:
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path} is not a run directory (train one with `digitlab train`)")
    if not (path / MODEL_FILE).exists():
        raise RunError(f"{path} has no {MODEL_FILE}: the run has not completed an epoch yet")
    return Run(path)


def load_model(path: str | Path):
    import keras
    # safe_mode=True refuses lambda layers and other code embedded in the file.
    return keras.saving.load_model(path, compile=False, safe_mode=True)


def predict_proba(model, x: np.ndarray) -> np.ndarray:
    """Class probabilities for a batch; no keras.predict() (about 30 ms per call on TensorFlow)."""
    x = np.asarray(x, dtype=np.float32)
    if len(x) == 0:
        return np.zeros((0, 10), dtype=np.float32)
    parts = [np.asarray(model.predict_on_batch(x[i:i + PREDICT_CHUNK])) for i in range(0, len(x), PREDICT_CHUNK)]
    return np.concatenate(parts).astype(np.float32)
