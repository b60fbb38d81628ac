"""Model builders, one per entry of the model table (digitlab.registry), looked up by name.

    model = create_model("seed-ann")          # an uncompiled keras.Model
    model = create_model("mlp", hidden=[512, 256], dropout=[0.2, 0.5], l2=1e-4)

    seed-ann  the tutorial's network, unchanged
    mlp       configurable MLP: hidden sizes, activation, dropout per layer, batch norm, L1/L2, max-norm
    lenet5    LeNet-5 (LeCun et al. 1998)
    convnet   keras-io's simple MNIST convnet
    fastcnn   ours, for time to accuracy on a CPU (~99.1% in about 30 s of training on 2 cores)
    bestcnn   ours, for the best accuracy (with augmentation, in under 30 minutes on 2 cores)

Every model takes (batch, 28, 28) float32 images scaled to [0, 1] and returns class
**probabilities** (a softmax output), as the tutorial's network does; losses are built for that.
Importing this module imports Keras: choose the backend first (digitlab.backend). Names, families
and recipes are in digitlab.registry, which does not.
"""
from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

from digitlab.data import IMAGE_SIZE, NUM_CLASSES
from digitlab.errors import ConfigError
from digitlab.registry import MLP_ACTIVATIONS, check_params, get_model_info, int_list

# Batch-norm momentum for every model here. Keras' default 0.99 leaves the running statistics near
# their initial values for the first few hundred steps, so a short run evaluates badly; 0.9 settles
# within ~50 steps.
BN_MOMENTUM = 0.9

BUILDERS: dict[str, Callable] = {}  # registry name -> build(**params) -> keras.Model


def builder(name: str):
    """Decorator: the builder of registry entry `name`."""
    def decorator(build):
        get_model_info(name)  # only models in the table get a builder
        if name in BUILDERS:
            raise ValueError(f"model {name!r} has two builders")
        BUILDERS[name] = build
        return build
    return decorator


def create_model(name: str, **params) -> keras.Model:
    check_params(name, params)
    return BUILDERS[name](**params)


# ---------------------------------------------------------------- the tutorial's network

@builder("seed-ann")
def seed_ann():
    return keras.Sequential([
        keras.Input((IMAGE_SIZE, IMAGE_SIZE)),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(NUM_CLASSES, activation="softmax"),
    ], name="seed_ann")


# ---------------------------------------------------------------- configurable MLP

@builder("mlp")
def mlp(hidden=(1024, 1024), activation: str = "relu", dropout=0.3, input_dropout: float = 0.0,
        batchnorm: bool = False, l1: float = 0.0, l2: float = 0.0, max_norm: float = 0.0):
    """Flatten -> [Dense -> (BatchNorm) -> activation -> Dropout] per hidden size -> Dense(10, softmax).

    dropout: one rate for every hidden layer or one per layer ([0.2, 0.5]); l1/l2: weight penalties
    added to the loss (the tutorial's regularizers.l2(0.01) is l2=0.01); max_norm: cap on the L2 norm
    of each unit's incoming weights (Hinton et al. 2012 use 3-4 with dropout); 0 = off.
    """
    hidden = int_list(hidden, "hidden")
    rates = _per_layer(dropout, len(hidden), "dropout")
    if activation not in MLP_ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation!r}; choose one of: {', '.join(MLP_ACTIVATIONS)}")
    regularizer = keras.regularizers.L1L2(l1=l1, l2=l2) if (l1 or l2) else None
    constraint = keras.constraints.MaxNorm(max_norm) if max_norm else None
    stack = [keras.Input((IMAGE_SIZE, IMAGE_SIZE)), layers.Flatten()]
    if input_dropout:
        stack.append(layers.Dropout(input_dropout))
    for units, rate in zip(hidden, rates):
        # With batch norm the activation comes after the normalisation, and BN's shift replaces the bias.
        stack.append(layers.Dense(units, activation=None if batchnorm else activation, use_bias=not batchnorm,
                                  kernel_regularizer=regularizer, kernel_constraint=constraint))
        if batchnorm:
            stack += [layers.BatchNormalization(momentum=BN_MOMENTUM), layers.Activation(activation)]
        if rate:
            stack.append(layers.Dropout(rate))
    stack.append(layers.Dense(NUM_CLASSES, activation="softmax", kernel_regularizer=regularizer))
    return keras.Sequential(stack, name="mlp")


def _per_layer(value, n: int, name: str) -> list[float]:
    """One value for all n layers, or exactly n values."""
    if isinstance(value, str):
        value = [float(v) for v in value.split(",") if v.strip()]
    values = [float(value)] * n if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) == 1:
        values = values * n
    if len(values) != n:
        raise ConfigError(f"{name} needs one value or one per hidden layer ({n}), got {value!r}")
    if any(not 0 <= v < 1 for v in values):
        raise ConfigError(f"{name} rates must be in [0, 1), got {value!r}")
    return values


# ---------------------------------------------------------------- classic CNNs

@builder("lenet5")
def lenet5():
    return keras.Sequential([
        keras.Input((IMAGE_SIZE, IMAGE_SIZE)),
        layers.Reshape((IMAGE_SIZE, IMAGE_SIZE, 1)),
        layers.Conv2D(6, 5, padding="same", activation="tanh"),  # the paper pads 28 -> 32; "same" is that
        layers.AveragePooling2D(2),  # 14x14
        layers.Conv2D(16, 5, activation="tanh"),  # 10x10
        layers.AveragePooling2D(2),  # 5x5x16
        layers.Flatten(),
        layers.Dense(120, activation="tanh"),  # the paper's C5: a 5x5 conv over a 5x5 map is a dense layer
        layers.Dense(84, activation="tanh"),
        layers.Dense(NUM_CLASSES, activation="softmax"),
    ], name="lenet5")


@builder("convnet")
def convnet():
    return keras.Sequential([
        keras.Input((IMAGE_SIZE, IMAGE_SIZE)),
        layers.Reshape((IMAGE_SIZE, IMAGE_SIZE, 1)),
        layers.Conv2D(32, 3, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(64, 3, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dropout(0.5),
        layers.Dense(NUM_CLASSES, activation="softmax"),
    ], name="convnet")


# ---------------------------------------------------------------- our CNNs

def _conv_bn(x, filters: int, name: str):
    """3x3 conv -> batch norm -> ReLU; no conv bias, since BN's shift does that job."""
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


@builder("fastcnn")
def fastcnn(widths=(16, 32, 64), dropout: float = 0.0):
    widths = int_list(widths, "widths")
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE))
    x = layers.Reshape((IMAGE_SIZE, IMAGE_SIZE, 1))(inputs)
    for i, w in enumerate(widths):
        x = _conv_bn(x, w, f"stage{i + 1}")
        x = layers.MaxPooling2D(2, name=f"stage{i + 1}_pool")(x) if i < len(widths) - 1 else x
    x = layers.GlobalMaxPooling2D()(x)  # max keeps "is this stroke anywhere?"; cheaper than a dense head
    if dropout:
        x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32")(x)  # float32 under mixed precision too
    return keras.Model(inputs, outputs, name="fastcnn")


@builder("bestcnn")
def bestcnn(widths=(32, 64, 128), dropout: float = 0.3, head: int = 256):
    widths = int_list(widths, "widths")
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE))
    x = layers.Reshape((IMAGE_SIZE, IMAGE_SIZE, 1))(inputs)
    for i, w in enumerate(widths):
        x = _conv_bn(x, w, f"stage{i + 1}a")
        x = _conv_bn(x, w, f"stage{i + 1}b")
        if i < len(widths) - 1:
            x = layers.MaxPooling2D(2, name=f"stage{i + 1}_pool")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(dropout)(x)
    x = layers.Dense(head, use_bias=False)(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
    x = layers.ReLU()(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32")(x)  # float32 under mixed precision too
    return keras.Model(inputs, outputs, name="bestcnn")
