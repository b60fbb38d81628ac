"""Core training, in-process: the run directory holds everything, and Ctrl-C keeps the last epoch.

Determinism, resume and moving a .keras file between backends are checked per backend, in fresh processes,
in tests/test_backends.py; a real SIGINT to `digitlab train` in tests/test_signals.py.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import USER_KERAS_BACKEND

from digitlab.config import TrainConfig
from digitlab.predictor import Predictor
from digitlab.runs import open_run


def test_run_directory_holds_provenance(trained_run, mnist):
    path = trained_run.path
    config = json.loads((path / "config.json").read_text())
    assert config["model"] == "seed-ann" and config["seed"] == 0 and config["epochs"] == 3
    data = json.loads((path / "data.json").read_text())
    assert data["sha256"] == mnist.provenance["sha256"] and data["train_images"] == 12000
    env = json.loads((path / "environment.json").read_text())
    # Trained by `digitlab train` (conftest): a dense network runs on JAX unless the user set KERAS_BACKEND.
    assert env["seed"] == 0 and "keras" in env["versions"]
    assert env["keras_backend"] == (USER_KERAS_BACKEND or "jax")
    history = trained_run.history
    assert [int(r.epoch) for r in history] == [1, 2, 3]
    assert all(r.val_accuracy is not None and r.seconds > 0 and r.lr == pytest.approx(1e-3) for r in history)
    assert history[-1].loss < history[0].loss
    assert trained_run.state.status == "completed"


def test_ctrl_c_keeps_last_completed_epoch(tmp_path, mnist, monkeypatch):
    import digitlab.training as training
    real_epoch = training.run_epoch
    calls = []

    def interrupted_on_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(training, "run_epoch", interrupted_on_second_epoch)
    cfg = TrainConfig(model="seed-ann", epochs=3, batch_size=128, val="500", train_size=2000)
    with pytest.raises(KeyboardInterrupt):
        training.train(cfg, run_dir=tmp_path / "run", dataset=mnist, verbose=0)
    run = open_run(tmp_path / "run")
    assert run.state.status == "interrupted" and run.state.epochs_completed == 1
    assert len(run.history) == 1
    assert Predictor.from_run(run).predict_proba(mnist.x_test[:4] / np.float32(255)).shape == (4, 10)
    assert not list((tmp_path / "run").glob(".*")), "no temporary files left behind"
