"""Model registry: each model is one registered builder, looked up by name.

    model = create_model("seed-ann")          # an uncompiled keras.Model
    info = get_model_info("seed-ann")         # family, description, training defaults

Every model takes (batch, 28, 28) float32 images scaled to [0, 1] and returns class
**probabilities** (a softmax output), as the tutorial's network does; losses are built for that.
Registering touches no keras: the CLI reads a model's family first to pick the backend.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from digitlab.data import IMAGE_SIZE, NUM_CLASSES


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str  # "dense" or "conv": decides the default backend (digitlab.backend)
    build: Callable  # build(**params) -> keras.Model
    description: str
    defaults: dict = field(default_factory=dict)  # training settings this model is meant to use


_REGISTRY: dict[str, ModelInfo] = {}


def register(name: str, family: str, description: str, **defaults):
    """Decorator: add a builder to the registry under `name`."""
    def decorator(build):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelInfo(name, family, build, description, defaults)
        return build
    return decorator


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def get_model_info(name: str) -> ModelInfo:
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(model_names())}")
    return _REGISTRY[name]


def create_model(name: str, **params):
    return get_model_info(name).build(**params)


# ---------------------------------------------------------------- the tutorial's network

@register("seed-ann", family="dense",
          description="the tutorial's network: Flatten -> Dense(128, relu) -> Dropout(0.2) -> Dense(10, softmax)",
          epochs=10, batch_size=32, lr=1e-3, optimizer="adam")
def seed_ann():
    import keras
    return keras.Sequential([
        keras.Input((IMAGE_SIZE, IMAGE_SIZE)),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(NUM_CLASSES, activation="softmax"),
    ], name="seed_ann")
