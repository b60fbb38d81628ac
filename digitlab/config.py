"""Typed, frozen configuration, one dataclass per concern; the resolved config is saved with every run.

    cfg = TrainConfig(model="seed-ann")
    cfg = apply_overrides(cfg, {"epochs": "3", "lr": "0.01"})   # strings parsed against field types

TrainConfig is flat on purpose: a model's registered training defaults
(`@register(..., epochs=30, schedule="onecycle")`) and the CLI flags are both plain key=value
overrides of it. Its fields come in groups (data, optimisation, schedule, augmentation, stopping);
the augmentation group is turned into an `augmentation.Augment` by `augment_from(cfg)` there.
The defaults are the tutorial's: Adam 1e-3, batch 32, 10 epochs, constant rate, no augmentation.
"""
from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field

from digitlab.errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    # ---- what to train on
    model: str = "seed-ann"  # a name from the model registry (digitlab.models)
    model_params: dict = field(default_factory=dict)  # keyword arguments for the model's builder
    dataset: str = "mnist"  # mnist | fashion-mnist
    seed: int = 0  # seeds python, numpy, the backend, the validation split, shuffling and augmentation
    val: str = "5000"  # validation images held out of the training set, "0" for none, or "test" (the tutorial's choice)
    train_size: int = 0  # train on a seeded, stratified sample of N of the training images; 0 = all
    # ---- optimisation
    epochs: int = 10  # passes over the training set
    batch_size: int = 32  # images per gradient step
    lr: float = 1e-3  # peak learning rate
    optimizer: str = "adam"  # adam | adamw | sgd | rmsprop
    momentum: float = 0.9  # sgd only
    nesterov: bool = True  # sgd only
    # decoupled weight decay: each step w -= lr * weight_decay * w; 0 = none (adamw: Keras' 0.004)
    weight_decay: float = 0.0
    label_smoothing: float = 0.0  # share of the target spread over all classes (0.1 is common); 0 = plain cross-entropy
    # ---- learning-rate schedule (digitlab.schedules)
    schedule: str = "constant"  # constant | step | cosine | onecycle
    warmup_epochs: float = 0.0  # linear warm-up from 0 to lr before the schedule, epochs (fractions allowed)
    step_epochs: int = 10  # step: multiply the rate by step_gamma every this many epochs
    step_gamma: float = 0.1  # step: the factor
    # ---- augmentation, training images only (digitlab.augmentation); all 0 = none
    aug_shift: float = 0.0  # max random translation per axis, pixels
    aug_rotate: float = 0.0  # max random rotation, degrees
    aug_zoom: float = 0.0  # max random scale change, fraction (0.1 = 90% to 110%)
    aug_elastic_alpha: float = 0.0  # elastic distortion strength (Simard 2003), pixels; 0 = off
    aug_elastic_sigma: float = 4.0  # smoothness of the elastic displacement field, pixels
    # ---- stopping and checkpoints
    early_stopping: int = 0  # patience: stop after this many epochs without improvement of `monitor`; 0 = off
    monitor: str = "val_loss"  # val_loss | val_accuracy | loss | accuracy
    save_best: bool = False  # keep best.keras, the best epoch by `monitor` (on whenever early_stopping is)
    restore_best: bool = True  # when best.keras is kept, the run ends with the best epoch's model, not the last
    # ---- speed
    jit_compile: bool = False  # XLA-compile the train step (TensorFlow; JAX always compiles)
    mixed_precision: bool = False  # bfloat16 arithmetic, float32 weights (measured ~1.1x faster for fastcnn here)
    # scan: one compiled JAX program per epoch (digitlab.engines) | fit: Keras' fit, the tutorial's loop |
    # auto: scan where it can run (JAX, no Keras callbacks, one device); a run's config records which ran
    engine: str = "auto"


def field_types(cls) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def parse_value(cls, key: str, raw):
    """Parse a CLI string into the type of field `key` of dataclass `cls`."""
    types = field_types(cls)
    if key not in types:
        raise ConfigError(f"unknown setting {key!r} for {cls.__name__}; known: {', '.join(types)}")
    kind = types[key]
    if not isinstance(raw, str):
        if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
            return float(raw)
        return raw
    try:
        if kind is bool:
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
        if kind in (int, float, str):
            return kind(raw)
        if kind is dict:
            return json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{key} must be of type {getattr(kind, '__name__', kind)}, got {raw!r}") from exc
    return raw


def apply_overrides(cfg, overrides: dict):
    """A copy of `cfg` with `overrides` (None values ignored) parsed against the field types."""
    changes = {k: parse_value(type(cfg), k, v) for k, v in overrides.items() if v is not None}
    return dataclasses.replace(cfg, **changes)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls, data: dict):
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


CHOICES = {  # fields with a closed set of values, checked by validate()
    "optimizer": ("adam", "adamw", "sgd", "rmsprop"),
    "schedule": ("constant", "step", "cosine", "onecycle"),
    "monitor": ("val_loss", "val_accuracy", "loss", "accuracy"),
    "engine": ("auto", "scan", "fit"),
}


def validate(cfg: TrainConfig) -> TrainConfig:
    """Return `cfg` if its values make sense together; otherwise raise ConfigError saying what to change."""
    for f in dataclasses.fields(cfg):  # NaN passes every comparison below, and json writes it as invalid NaN
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name} must be a finite number, got {value}")
    for key, allowed in CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"unknown {key} {getattr(cfg, key)!r}; choose one of: {', '.join(allowed)}")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ConfigError(f"epochs and batch_size must be at least 1, got {cfg.epochs} and {cfg.batch_size}")
    if cfg.lr <= 0:
        raise ConfigError(f"lr must be positive, got {cfg.lr}")
    if not 0 <= cfg.label_smoothing < 1:
        raise ConfigError(f"label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if not 0 <= cfg.warmup_epochs < cfg.epochs:
        raise ConfigError(f"warmup_epochs must be in [0, epochs={cfg.epochs}), got {cfg.warmup_epochs}")
    if cfg.schedule == "step" and (cfg.step_epochs < 1 or not 0 < cfg.step_gamma <= 1):
        raise ConfigError("the step schedule needs step_epochs >= 1 and 0 < step_gamma <= 1")
    for key in ("aug_shift", "aug_rotate", "aug_zoom", "aug_elastic_alpha", "weight_decay", "early_stopping"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key} must not be negative, got {getattr(cfg, key)}")
    if cfg.aug_zoom >= 1:
        raise ConfigError(f"aug_zoom is a fraction below 1 (0.1 = 90% to 110%), got {cfg.aug_zoom}")
    if cfg.aug_elastic_alpha > 0 and cfg.aug_elastic_sigma <= 0:
        raise ConfigError("elastic distortion needs aug_elastic_sigma > 0 (4 to 6 pixels is usual)")
    no_val = str(cfg.val) == "0"
    if (cfg.early_stopping or cfg.save_best) and no_val and cfg.monitor.startswith("val_"):
        raise ConfigError(f"early stopping and save_best watch {cfg.monitor}, but there is no validation set (val=0): "
                         "hold some images out (--val 5000) or watch the training figures (--monitor loss)")
    return cfg
