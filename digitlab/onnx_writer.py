"""Write a chain of dense layers (the family trained on JAX: seed-ann, mlp) straight to ONNX.

    data = dense_chain_onnx(model)   # ONNX bytes: input (n, 28, 28) -> [probabilities, penultimate features]; or None

Why by hand: Keras' ONNX export goes through tf2onnx, which runs on TensorFlow. For a network trained on
JAX that meant a second process importing TensorFlow (2.4 s of imports, 900 MB) to write five matrix
operations, the slowest step of the main job after training. A Sequential of Flatten, Dense, Dropout,
BatchNormalization and Activation layers maps one to one onto ONNX operators, so it is written here with
onnx's own helper API; a model with any other layer gets None and goes to tf2onnx as before. Either way,
digitlab.export keeps the file only if it passes the same check against Keras on the whole test set.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13  # Erf, Softmax over the last axis, Flatten: all there since 13, and every ONNX Runtime reads it
INPUT, PROBABILITIES, FEATURES = "input", "probabilities", "features"


class _Graph:
    """The nodes and weights of the graph being written, each tensor named by a counter."""

    def __init__(self):
        self.nodes, self.weights, self._n = [], [], 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, array: np.ndarray, hint: str) -> str:
        name = self.name(hint)
        self.weights.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, **attrs) -> str:
        out = self.name(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out


def _activation(g: _Graph, x: str, name: str) -> str | None:
    """x through Keras' activation `name` (its defaults); None for an activation not written here."""
    if name == "linear":
        return x
    if name in ("relu", "tanh", "sigmoid"):
        return g.op({"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid"}[name], [x], name)
    if name == "softmax":
        return g.op("Softmax", [x], "softmax", axis=-1)
    if name in ("silu", "swish"):
        return g.op("Mul", [x, g.op("Sigmoid", [x], "sigmoid")], "silu")
    if name == "gelu":  # Keras' default is the exact GELU: x * (1 + erf(x / sqrt(2))) / 2
        erf = g.op("Erf", [g.op("Div", [x, g.const(np.sqrt(2.0), "sqrt2")], "scaled")], "erf")
        product = g.op("Mul", [x, g.op("Add", [erf, g.const(1.0, "one")], "erf1")], "product")
        return g.op("Mul", [product, g.const(0.5, "half")], "gelu")
    return None


def _activation_name(layer) -> str:
    return getattr(layer.activation, "__name__", "")


def _layer(g: _Graph, layer, x: str) -> str | None:
    """x through one Keras layer at inference; None for a layer (or setting) not written here."""
    kind = type(layer).__name__
    config = layer.get_config()
    if kind == "Dropout":
        return x  # identity at inference
    if kind == "Flatten":
        return g.op("Flatten", [x], "flatten", axis=1)
    if kind == "Activation":
        return _activation(g, x, _activation_name(layer))
    if kind == "Dense":
        weights = layer.get_weights()
        y = g.op("MatMul", [x, g.const(weights[0], "kernel")], "dense")
        if config.get("use_bias", True):
            y = g.op("Add", [y, g.const(weights[1], "bias")], "biased")
        return _activation(g, y, _activation_name(layer))
    if kind == "BatchNormalization" and config.get("axis") in (-1, [-1], 1, [1]):
        weights = list(layer.get_weights())
        gamma = weights.pop(0) if config.get("scale", True) else 1.0
        beta = weights.pop(0) if config.get("center", True) else 0.0
        mean, variance = weights
        scale = np.asarray(gamma) / np.sqrt(np.asarray(variance) + config["epsilon"])
        shift = np.asarray(beta) - np.asarray(mean) * scale
        return g.op("Add", [g.op("Mul", [x, g.const(scale, "bn_scale")], "bn"), g.const(shift, "bn_shift")], "bn")
    return None


def dense_chain_onnx(model) -> bytes | None:
    """`model` as ONNX bytes, outputs [probabilities, penultimate features] as digitlab.predictor.features_model
    gives them; None unless it is a chain of the layers above ending in Dense(softmax), on float32."""
    layers = list(getattr(model, "layers", []))
    input_shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else ()
    if (not layers or type(layers[-1]).__name__ != "Dense" or _activation_name(layers[-1]) != "softmax"
            or len(input_shape) != 3 or any(w.dtype != "float32" for w in model.weights)
            or getattr(getattr(model, "dtype_policy", None), "compute_dtype", "float32") != "float32"):
        return None
    g = _Graph()
    x = INPUT
    for layer in layers[:-1]:
        x = _layer(g, layer, x)
        if x is None:
            return None
    features = x
    probabilities = _layer(g, layers[-1], x)
    if probabilities is None:
        return None
    g.nodes += [helper.make_node("Identity", [probabilities], [PROBABILITIES]),
                helper.make_node("Identity", [features], [FEATURES])]
    n_features = int(layers[-1].get_weights()[0].shape[0])
    graph = helper.make_graph(
        g.nodes, model.name or "model",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["n", *input_shape[1:]])],
        [helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["n", int(layers[-1].units)]),
         helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, ["n", n_features])],
        initializer=g.weights)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                   producer_name="digitlab.onnx_writer")
    onnx_model.ir_version = 8  # what ONNX Runtime 1.15+ reads; the helper's default can be newer than it knows
    onnx.checker.check_model(onnx_model)
    return onnx_model.SerializeToString()
