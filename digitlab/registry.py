"""The model table: names, families, training recipes, builder parameters. No Keras here.

    spec = get_model_info("fastcnn")     # .family "conv", .defaults (its recipe), .params (builder defaults)
    model_names()                        # ["bestcnn", "convnet", "fastcnn", "lenet5", "mlp", "seed-ann"]
    check_params("mlp", {"hidden": [512]})

`digitlab models`, `--help` and the backend choice (digitlab.backend: dense -> JAX, conv ->
TensorFlow) read only this table, so they never pay for importing Keras. The builders live in
digitlab.models, one per entry; tests/test_models.py checks that each builder's keyword defaults
are exactly the `params` listed here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from digitlab.errors import ConfigError, UnknownModelError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # "dense" or "conv": decides the default backend (digitlab.backend)
    description: str
    defaults: dict = field(default_factory=dict)  # the training recipe: TrainConfig fields this model is meant to use
    params: dict = field(default_factory=dict)  # builder keyword parameters and their defaults


MLP_ACTIVATIONS = ("relu", "tanh", "sigmoid", "gelu")

_SPECS = [
    ModelSpec("seed-ann", "dense",
              "the tutorial's network: Flatten -> Dense(128, relu) -> Dropout(0.2) -> Dense(10, softmax)",
              dict(epochs=10, batch_size=32, lr=1e-3, optimizer="adam")),
    ModelSpec("mlp", "dense",
              "configurable MLP: --hidden sizes, activation, dropout per layer, batch norm, L1/L2, max-norm",
              dict(epochs=30, batch_size=128, lr=1e-3, optimizer="adam", schedule="onecycle", label_smoothing=0.1),
              dict(hidden=(1024, 1024), activation="relu", dropout=0.3, input_dropout=0.0, batchnorm=False,
                   l1=0.0, l2=0.0, max_norm=0.0)),
    ModelSpec("lenet5", "conv",
              "LeNet-5 (LeCun et al. 1998): two 5x5 tanh conv + average-pool stages, then 120-84-10",
              dict(epochs=10, batch_size=64, lr=1e-3, optimizer="adam")),
    ModelSpec("convnet", "conv",
              "keras-io's simple MNIST convnet: conv32-pool-conv64-pool-dropout(0.5)-dense",
              dict(epochs=15, batch_size=128, lr=1e-3, optimizer="adam")),
    ModelSpec("fastcnn", "conv",
              "ours, for time to accuracy on a CPU: three 3x3 conv-BN-ReLU stages, pooling after each, "
              "so most work happens on 14x14 and 7x7 maps",
              dict(epochs=3, batch_size=256, lr=1.5e-2, optimizer="adam", schedule="onecycle", label_smoothing=0.1),
              dict(widths=(16, 32, 64), dropout=0.0)),
    ModelSpec("bestcnn", "conv",
              "ours, for the best accuracy: VGG-style pairs of 3x3 conv-BN-ReLU at 28, 14 and 7 pixels, "
              "dropout, a dense head; trained with augmentation and label smoothing",
              # 30 epochs: 99.71% mean over 3 seeds in ~26 min on 2 cores; 15 epochs gave 99.68% in half the time
              dict(epochs=30, batch_size=128, lr=3e-3, optimizer="adam", schedule="onecycle", label_smoothing=0.1,
                   aug_shift=2.0, aug_rotate=10.0, aug_zoom=0.1),
              dict(widths=(32, 64, 128), dropout=0.3, head=256)),
]
REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}


def model_names() -> list[str]:
    return sorted(REGISTRY)


def get_model_info(name: str) -> ModelSpec:
    if name not in REGISTRY:
        raise UnknownModelError(name, model_names())
    return REGISTRY[name]


def model_family(name: str) -> str | None:
    """The family of a registered model, None for a name this version doesn't register."""
    spec = REGISTRY.get(name)
    return spec.family if spec else None


def model_params(name: str) -> dict:
    """The builder's keyword parameters and their defaults, e.g. {"hidden": (1024, 1024), ...}."""
    return dict(get_model_info(name).params)


def check_params(name: str, params: dict) -> None:
    """Fail early, naming the known parameters, when `params` has one the model's builder doesn't take."""
    known = model_params(name)
    unknown = sorted(set(params) - set(known))
    if unknown:
        takes = ", ".join(known) if known else "none"
        raise ConfigError(f"model {name!r} has no parameter {', '.join(map(repr, unknown))} (its parameters: {takes})")


def int_list(value, name: str) -> list[int]:
    """512,256 / 512x256 / [512, 256] / 512 -> [512, 256] / [512]. ("512x256" is one value where commas already
    separate values, as in a sweep's hidden=choice:256,512x256.)"""
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").replace("x", ",").split(",") if v]
    if isinstance(value, (int, float)):
        value = [value]
    try:
        out = [int(v) for v in value]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be a list of sizes like 512,256, got {value!r}") from exc
    if not out or any(v < 1 for v in out):
        raise ConfigError(f"{name} needs at least one positive size, got {value!r}")
    return out
