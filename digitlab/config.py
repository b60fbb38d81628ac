"""Typed, frozen configuration, one dataclass per concern; the resolved config is saved with every run.

    cfg = TrainConfig(model="seed-ann")
    cfg = apply_overrides(cfg, {"epochs": "3", "lr": "0.01"})   # strings parsed against field types
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TrainConfig:
    model: str = "seed-ann"  # a name from the model registry (digitlab.models)
    model_params: dict = field(default_factory=dict)  # keyword arguments for the model's builder
    dataset: str = "mnist"  # mnist | fashion-mnist
    epochs: int = 10  # passes over the training set
    batch_size: int = 32  # images per gradient step
    lr: float = 1e-3  # peak learning rate
    optimizer: str = "adam"  # adam | adamw | sgd | rmsprop
    seed: int = 0  # seeds python, numpy, the backend, the validation split and the shuffling
    val: str = "5000"  # validation images held out of the training set, or "test" (the tutorial's choice)
    train_size: int = 0  # use only the first N training images (stratified subset); 0 = all


def field_types(cls) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def parse_value(cls, key: str, raw):
    """Parse a CLI string into the type of field `key` of dataclass `cls`."""
    types = field_types(cls)
    if key not in types:
        raise KeyError(f"unknown setting {key!r} for {cls.__name__}; known: {', '.join(types)}")
    kind = types[key]
    if not isinstance(raw, str):
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
        raise ValueError(f"{key} must be of type {getattr(kind, '__name__', kind)}, got {raw!r}") from exc
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
