"""Core training: the run directory holds everything, same seed gives same metrics, Ctrl-C keeps the last epoch,
and a .keras file moves between the TensorFlow and JAX backends."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

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
    assert env["seed"] == 0 and "keras" in env["versions"] and env["keras_backend"]
    history = trained_run.history
    assert [int(r.epoch) for r in history] == [1, 2, 3]
    assert all(r.val_accuracy is not None and r.seconds > 0 and r.lr == pytest.approx(1e-3) for r in history)
    assert history[-1].loss < history[0].loss
    assert trained_run.state.status == "completed"


def test_same_seed_same_metrics(tmp_path, mnist):
    from digitlab.training import train
    cfg = TrainConfig(model="seed-ann", epochs=1, batch_size=128, val="500", train_size=3000, seed=7)
    a = train(cfg, run_dir=tmp_path / "a", dataset=mnist, verbose=0)
    b = train(cfg, run_dir=tmp_path / "b", dataset=mnist, verbose=0)
    x = mnist.x_test[:500] / np.float32(255)
    np.testing.assert_allclose(Predictor.from_run(a).predict_proba(x), Predictor.from_run(b).predict_proba(x),
                               atol=1e-5)
    assert a.history[0].val_loss == pytest.approx(b.history[0].val_loss, abs=1e-5)


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


def _run_in_backend(backend: str, code: str) -> str:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.parametrize("train_backend,load_backend", [("jax", "tensorflow"), ("tensorflow", "jax")])
def test_keras_file_moves_between_backends(tmp_path, train_backend, load_backend):
    run_dir = tmp_path / "run"
    score = f"""
        import numpy as np, keras
        from digitlab.data import load_mnist, scale
        from digitlab.predictor import Predictor
        from digitlab.runs import open_run
        ds = load_mnist()
        proba = Predictor.from_run(open_run(r"{run_dir}")).predict_proba(scale(ds.x_test))
        print(repr(float((proba.argmax(1) == ds.y_test).mean())))
    """
    trained = _run_in_backend(train_backend, textwrap.dedent(f"""
        from digitlab.config import TrainConfig
        from digitlab.training import train
        import keras
        assert keras.backend.backend() == "{train_backend}"
        train(TrainConfig(model="seed-ann", epochs=1, batch_size=128, val="500", train_size=3000),
              run_dir=r"{run_dir}", verbose=0)
    """) + textwrap.dedent(score))
    loaded = _run_in_backend(load_backend, textwrap.dedent(f"""
        import keras
        assert keras.backend.backend() == "{load_backend}"
    """) + textwrap.dedent(score))
    acc_trained, acc_loaded = (float(o.strip().splitlines()[-1]) for o in (trained, loaded))
    assert 0.7 <= acc_trained < 1.0
    assert acc_loaded == pytest.approx(acc_trained, abs=2e-4), "same weights, same predictions on either backend"
