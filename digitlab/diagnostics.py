"""The tutorial's quiz, answered with data: is the model overfitting, are units dead, what did layer 1 learn?

    diag = diagnose(model, run.history, run.state, run.config, x_train, y_train, x_val, y_val)  # diagnostics.json
    sections = report_sections(diag, test, first_layer(model), gap_png(diag), first_layer_png(...))  # report.html

  - Overfitting: per epoch, training minus validation accuracy and validation minus training loss
    (Keras' training figures are running averages over the epoch, with dropout and augmentation on);
    then the finished model measured cleanly on its own training images against validation and test;
    and the epoch early stopping chose, or would have chosen with patience EARLY_STOP_PATIENCE.
  - Dead units: per dense layer followed by a ReLU, the share of units whose output is 0 for every
    training image; they get no gradient and can't recover.
  - First layer: a dense first layer's weights as 28x28 images (one per unit: the pattern it
    responds to, red positive, blue negative); a conv first layer's kernels at their own size.
"""
from __future__ import annotations

import keras
import matplotlib.pyplot as plt
import numpy as np

from digitlab import plots
from digitlab.data import IMAGE_SIZE
from digitlab.pages import esc as _e
from digitlab.pages import img as _img
from digitlab.pages import table as _table
from digitlab.plots import figure_png
from digitlab.predictor import Predictor
from digitlab.scoring import accuracy, first_stop, log_loss, stop_decision

EARLY_STOP_PATIENCE = 3  # epochs; the "would have stopped" answer for runs trained without early stopping
FIRST_LAYER_UNITS = 64  # units shown in the first-layer picture
PROBE_CHUNK = 2048  # images per forward pass


# ---------------------------------------------------------------- numbers

def overfitting(history, state, config) -> dict:
    """Per-epoch gaps, and the epoch early stopping chose (or would have chosen).

    history: list of runs.EpochRecord; state: runs.RunState; config: config.TrainConfig.
    """
    rows = [{"epoch": r.epoch,
             "accuracy_gap": None if r.accuracy is None or r.val_accuracy is None else r.accuracy - r.val_accuracy,
             "loss_gap": None if r.loss is None or r.val_loss is None else r.val_loss - r.loss}
            for r in history]
    monitor, patience = config.monitor, config.early_stopping
    out = {"epochs": rows, "monitor": monitor, "early_stopping": patience,
           "best_epoch": None, "stopped_at_epoch": state.stopped_early_at_epoch,
           "would_stop_at_epoch": None, "patience_assumed": None}
    values = [getattr(r, monitor) for r in history]
    decision = stop_decision(values, monitor, patience)
    if decision.best_epoch:
        out["best_epoch"] = decision.best_epoch
        if not patience:  # what early stopping would have done, with the tutorial-style default patience
            out["would_stop_at_epoch"] = first_stop(values, monitor, EARLY_STOP_PATIENCE)
            out["patience_assumed"] = EARLY_STOP_PATIENCE
    return out


def relu_probes(model) -> list[tuple[str, object]]:
    """(dense layer name, the tensor holding its ReLU output) for every dense layer but the classifier."""
    probes = []
    layers = model.layers
    for i, layer in enumerate(layers):
        if type(layer).__name__ != "Dense" or layer is layers[-1]:
            continue
        if _is_relu(layer):
            probes.append((layer.name, layer.output))
            continue
        for nxt in layers[i + 1:]:  # Dense -> BatchNorm -> ReLU: the unit's output is after the ReLU
            if _is_relu(nxt):
                probes.append((layer.name, nxt.output))
                break
            if type(nxt).__name__ not in ("BatchNormalization", "Dropout"):
                break
    return probes


def _is_relu(layer) -> bool:
    if type(layer).__name__ == "ReLU":
        return not getattr(layer, "negative_slope", 0) and getattr(layer, "max_value", None) is None
    return getattr(getattr(layer, "activation", None), "__name__", "") == "relu"


def clean_fit_and_dead_units(model, x: np.ndarray, y: np.ndarray) -> dict:
    """One pass over the training images: clean accuracy and loss, and each ReLU dense layer's dead units."""
    probes = relu_probes(model)
    probe = keras.Model(model.inputs, [t for _, t in probes] + list(model.outputs))
    peak = [None] * len(probes)  # max output per unit over all images
    correct, loss_sum = 0, 0.0
    for i in range(0, len(x), PROBE_CHUNK):
        outs = probe.predict_on_batch(np.asarray(x[i:i + PROBE_CHUNK], dtype=np.float32))
        outs = [np.asarray(o) for o in (outs if isinstance(outs, (list, tuple)) else [outs])]
        proba, acts = outs[-1], outs[:-1]
        yb = y[i:i + PROBE_CHUNK]
        correct += int(np.sum(proba.argmax(1) == yb))
        loss_sum += log_loss(yb, proba) * len(yb)
        for k, a in enumerate(acts):
            m = a.reshape(len(a), -1).max(axis=0)
            peak[k] = m if peak[k] is None else np.maximum(peak[k], m)
    dead = [{"layer": name, "units": int(len(p)), "dead": int(np.sum(p <= 0)), "fraction": float(np.mean(p <= 0))}
            for (name, _), p in zip(probes, peak)]
    return {"train_accuracy": correct / max(len(x), 1), "train_loss": loss_sum / max(len(x), 1),
            "train_images": int(len(x)), "dead_units": dead}


def first_layer(model) -> dict | None:
    """The first dense or conv layer's weights: {"layer", "kind", "weights"}; None if it has neither."""
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Dense":
            w = np.asarray(layer.get_weights()[0])  # (784, units)
            if w.shape[0] != IMAGE_SIZE * IMAGE_SIZE:
                return None
            return {"layer": layer.name, "kind": "dense", "weights": w.T.reshape(-1, IMAGE_SIZE, IMAGE_SIZE)}
        if kind == "Conv2D":
            w = np.asarray(layer.get_weights()[0])  # (k, k, in, filters)
            return {"layer": layer.name, "kind": "conv", "weights": np.moveaxis(w[:, :, 0, :], -1, 0)}
    return None


def diagnose(model, history, state, config, x_train, y_train, x_val=None, y_val=None) -> dict:
    """Everything above, as JSON-friendly numbers (the first-layer weights excepted)."""
    out = {"overfitting": overfitting(history, state, config), "val_accuracy": None, "val_loss": None}
    out.update(clean_fit_and_dead_units(model, x_train, y_train))
    if x_val is not None and len(x_val):
        val = accuracy_and_loss(model, x_val, y_val)
        out.update(val_accuracy=val["accuracy"], val_loss=val["loss"])
    return out


def accuracy_and_loss(model, x, y) -> dict:
    proba = Predictor.from_keras(model).predict_proba(x)
    return {"accuracy": accuracy(y, proba), "loss": log_loss(y, proba)}


# ---------------------------------------------------------------- report sections

def report_sections(diag: dict, metrics: dict, first: dict | None, gap_png: bytes | None,
                    first_png: bytes | None) -> list[dict]:
    return [{"title": "Diagnostics: overfitting", "html": _overfitting_html(diag, metrics, gap_png)},
            {"title": "Diagnostics: dead units", "html": _dead_html(diag)},
            {"title": "Diagnostics: what the first layer learned", "html": _first_html(first, first_png)}]


def _overfitting_html(diag: dict, metrics: dict, gap_png: bytes | None) -> str:
    o = diag["overfitting"]
    rows = [["training images (clean, after training)", _pct(diag["train_accuracy"]), f"{diag['train_loss']:.4f}"]]
    if diag["val_accuracy"] is not None:
        rows.append(["validation images", _pct(diag["val_accuracy"]), f"{diag['val_loss']:.4f}"])
    rows.append(["test images", _pct(metrics["test_accuracy"]), f"{metrics['test_loss']:.4f}"])
    parts = ["<p>The finished model on the images it trained on, against images it never saw. "
             "A training accuracy well above the others is overfitting; all three close together and "
             "short of 100% is underfitting.</p>", _table(rows, ["images", "accuracy", "loss"])]
    if o["best_epoch"]:
        if o["early_stopping"]:
            stop = (f"stopped after epoch {o['stopped_at_epoch']}" if o["stopped_at_epoch"]
                    else "never triggered")
            parts.append(f"<p>Early stopping (patience {o['early_stopping']}, watching {_e(o['monitor'])}) "
                         f"{stop}; the best epoch was <b>{o['best_epoch']}</b>.</p>")
        else:
            would = o["would_stop_at_epoch"]
            parts.append(f"<p>Early stopping was off. The best epoch by {_e(o['monitor'])} was "
                         f"<b>{o['best_epoch']}</b> of {len(o['epochs'])}; with patience {o['patience_assumed']} "
                         + (f"it would have stopped after epoch {would}." if would else "it would not have stopped.")
                         + "</p>")
    gaps = [[r["epoch"], _fmt(r["accuracy_gap"]), _fmt(r["loss_gap"])] for r in o["epochs"]]
    if any(g[1] or g[2] for g in gaps):
        parts.append("<p>Per epoch, from the training history. Keras' training figures are averages over the "
                     "epoch with dropout and augmentation switched on, so a negative gap early on is normal; "
                     "a gap that keeps growing is the overfitting signal.</p>")
        if gap_png:
            parts.append(_img(gap_png, "generalisation gap per epoch"))
        parts.append(_table(gaps, ["epoch", "train acc - val acc", "val loss - train loss"]))
    return "".join(parts)


def _dead_html(diag: dict) -> str:
    dead = diag["dead_units"]
    if not dead:
        return "<p>No dense layer here feeds a ReLU, so no unit can die this way.</p>"
    rows = [[d["layer"], d["units"], d["dead"], _pct(d["fraction"])] for d in dead]
    return (f"<p>A unit is dead when its ReLU outputs 0 for every one of the {diag['train_images']:,} training "
            "images: it passes no gradient and cannot recover. A few percent is common; a large share means "
            "too high a learning rate or a poor initialisation.</p>"
            + _table(rows, ["dense layer", "units", "dead", "share dead"]))


def _first_html(first: dict | None, png: bytes | None) -> str:
    if not first or png is None:
        return "<p>The first layer is neither dense nor convolutional.</p>"
    if first["kind"] == "dense":
        n = len(first["weights"])
        return (f"<p>Layer {_e(first['layer'])}: each unit's {IMAGE_SIZE}x{IMAGE_SIZE} weights, the first "
                f"{min(n, FIRST_LAYER_UNITS)} of {n} units. Red pixels raise the unit's input, blue lower it: "
                "strokes and stroke-ends of digits in well-trained units, noise in units that learned little.</p>"
                + _img(png, "first-layer weights"))
    k = first["weights"].shape[1]
    return (f"<p>Layer {_e(first['layer'])}: the {len(first['weights'])} convolution kernels, {k}x{k} pixels "
            "each (a conv layer looks at small patches, not whole images): edge and stroke detectors at "
            "different angles.</p>" + _img(png, "first-layer kernels"))


# ---------------------------------------------------------------- figures

def gap_png(diag: dict) -> bytes | None:
    o = diag["overfitting"]
    epochs = [r["epoch"] for r in o["epochs"]]
    acc = [r["accuracy_gap"] for r in o["epochs"]]
    loss = [r["loss_gap"] for r in o["epochs"]]
    if not epochs or all(v is None for v in acc + loss):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, vals, title in ((axes[0], acc, "train acc - val acc"), (axes[1], loss, "val loss - train loss")):
        ax.plot(epochs, [np.nan if v is None else v for v in vals], "o-")
        ax.axhline(0, color="#888", lw=0.8)
        for e, style, label in ((o["best_epoch"], "--", "best epoch"), (o["stopped_at_epoch"], ":", "stopped")):
            if e:
                ax.axvline(e, ls=style, color="#c33", label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if o["best_epoch"]:
            ax.legend()
    return figure_png(fig)


def first_layer_png(first: dict | None) -> bytes | None:
    if not first:
        return None
    w = first["weights"][:FIRST_LAYER_UNITS]
    cols = 8 if first["kind"] == "dense" else min(8, len(w))
    # each unit on its own symmetric scale: white is 0, whatever the unit's scale
    tiles = [np.asarray(img, dtype=np.float32) / (float(np.abs(img).max()) or 1.0) for img in w]
    mosaic, _ = plots.tile_mosaic(tiles, cols, gap=(3, 3))
    rows = int(np.ceil(len(w) / cols))
    fig, ax = plt.subplots(figsize=(cols * 1.2, rows * 1.2))
    ax.imshow(mosaic, cmap=plots.white_gaps("RdBu_r"), vmin=-1, vmax=1, interpolation="nearest")
    ax.axis("off")
    return figure_png(fig)


# ---------------------------------------------------------------- html helpers

def _pct(v) -> str:
    return f"{v:.2%}"


def _fmt(v) -> str:
    return "" if v is None else f"{v:+.4f}"
