"""Diagnostics: dead units, first-layer weights, overfitting figures, and their place in the report."""
from __future__ import annotations

import json

import numpy as np
import pytest

from digitlab import diagnostics as dg


def test_dead_units_counts_units_silent_on_every_image():
    import keras

    from digitlab.models import create_model
    keras.utils.set_random_seed(0)  # unseeded, about 1 initialisation in 5 leaves an extra unit dead
    model = create_model("mlp", hidden=[8, 4], dropout=0.0)
    dense = [layer for layer in model.layers if type(layer).__name__ == "Dense"]
    kernel, bias = dense[0].get_weights()
    bias[:3] = -1e4  # units 0-2 of the first layer can never fire on [0, 1] pixels
    kernel[:, 3:] = np.abs(kernel[:, 3:])  # and units 3-7 always do (non-negative weights, bias 0, pixels >= 0)
    bias[3:] = 0.0
    dense[0].set_weights([kernel, bias])
    x = np.random.default_rng(0).random((300, 28, 28), dtype=np.float32)
    out = dg.clean_fit_and_dead_units(model, x, np.zeros(300, int))
    assert [(d["units"], d["dead"]) for d in out["dead_units"]][0] == (8, 3)
    assert out["dead_units"][0]["fraction"] == pytest.approx(3 / 8)
    assert out["train_images"] == 300


def test_relu_after_batchnorm_is_found_and_tanh_layers_are_skipped():
    from digitlab.models import create_model
    assert len(dg.relu_probes(create_model("mlp", hidden=[16, 8], batchnorm=True))) == 2
    assert dg.relu_probes(create_model("mlp", hidden=[16], activation="tanh")) == []
    assert dg.relu_probes(create_model("lenet5")) == []  # tanh throughout


def test_first_layer_weights_as_images():
    from digitlab.models import create_model
    model = create_model("seed-ann")
    first = dg.first_layer(model)
    kernel = model.layers[1].get_weights()[0]
    assert first["kind"] == "dense" and first["weights"].shape == (128, 28, 28)
    np.testing.assert_array_equal(first["weights"][5], kernel[:, 5].reshape(28, 28))
    conv = dg.first_layer(create_model("lenet5"))
    assert conv["kind"] == "conv" and conv["weights"].shape == (6, 5, 5)
    assert dg.first_layer_png(first)[:4] == b"\x89PNG"


def test_overfitting_gaps_and_the_epoch_early_stopping_would_choose():
    from digitlab.config import TrainConfig
    from digitlab.runs import EpochRecord, RunState
    hist = [EpochRecord(epoch=e, accuracy=a, val_accuracy=va, loss=lo, val_loss=vl)
            for e, a, va, lo, vl in [(1, .90, .92, .40, .30), (2, .95, .95, .20, .20), (3, .98, .95, .10, .25),
                                    (4, .99, .94, .05, .30), (5, .995, .94, .03, .35)]]
    o = dg.overfitting(hist, RunState(), TrainConfig(monitor="val_loss"))
    assert o["best_epoch"] == 2 and o["would_stop_at_epoch"] == 5 and o["patience_assumed"] == 3
    assert [round(r["accuracy_gap"], 3) for r in o["epochs"]] == [-0.02, 0.0, 0.03, 0.05, 0.055]
    assert o["epochs"][3]["loss_gap"] == pytest.approx(0.25)


def test_the_report_answers_the_quiz(trained_run):
    html = (trained_run.path / "report.html").read_text()
    for title in ("Diagnostics: overfitting", "Diagnostics: dead units", "Diagnostics: what the first layer learned"):
        assert title in html
    diag = json.loads((trained_run.path / "diagnostics.json").read_text())
    assert 0.9 < diag["train_accuracy"] <= 1.0
    assert diag["dead_units"][0]["units"] == 128 and 0 <= diag["dead_units"][0]["fraction"] < 0.5
    assert (trained_run.path / "first_layer.png").exists()
    metrics = json.loads((trained_run.path / "metrics.json").read_text())
    assert metrics["train_accuracy_clean"] == pytest.approx(diag["train_accuracy"])
