"""The scan engine (digitlab.engines): an epoch as one compiled JAX program, computing what Keras' fit computes.

Each test runs its trainings in a fresh process on JAX (the engine's backend), whatever backend this one has."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

WORKER = textwrap.dedent("""
    import json, sys
    import keras
    import numpy as np
    from digitlab.config import TrainConfig
    from digitlab.data import load_mnist
    from digitlab.errors import TrainingError
    from digitlab.predictor import load_keras_model
    from digitlab.runs import Run
    from digitlab.training import train, with_engine

    ds, out = load_mnist(), {}
    # 1,300 images at batch 64: 20 whole batches and one of 20, which the engine runs as one more step, as fit does
    base = dict(model="seed-ann", epochs=2, train_size=1300, batch_size=64, val="500", seed=5)
    for engine in ("fit", "scan"):
        run = train(TrainConfig(engine=engine, **base), run_dir=f"{sys.argv[1]}/{engine}", dataset=ds, verbose=0)
        out[engine] = {"config_engine": run.config.engine,
                       "history": [[r.loss, r.accuracy, r.val_loss, r.val_accuracy] for r in run.history],
                       "weights": [w.tolist() for w in load_keras_model(run.model_path).get_weights()]}
    class Recorder(keras.callbacks.Callback):  # marked as looking at whole epochs only: scan runs it
        epoch_level = True
        seen = []
        def on_epoch_end(self, epoch, logs=None):
            self.seen.append([epoch, sorted(logs)])
    run = train(TrainConfig(**base), run_dir=f"{sys.argv[1]}/auto", dataset=ds, verbose=0, callbacks=[Recorder()])
    out["auto"], out["epoch_callback"] = run.config.engine, Recorder.seen
    # batch normalisation: its moving statistics are state the scan carries too
    bn = dict(base, model="mlp", model_params={"hidden": [64, 32], "batchnorm": True}, epochs=1)
    out["batchnorm"] = {}
    for engine in ("fit", "scan"):
        run = train(TrainConfig(engine=engine, **bn), run_dir=f"{sys.argv[1]}/bn-{engine}", dataset=ds, verbose=0)
        out["batchnorm"][engine] = [w.tolist() for w in load_keras_model(run.model_path).get_weights()]
    out["cnn_auto"] = with_engine(TrainConfig(model="fastcnn")).engine
    try:
        train(TrainConfig(engine="scan", **{**base, "lr": 1e30}), run_dir=f"{sys.argv[1]}/nan", dataset=ds, verbose=0)
    except TrainingError as exc:
        out["diverged"] = [str(exc), Run(f"{sys.argv[1]}/nan").state.status]
    out["tensorflow_imported"] = "tensorflow" in sys.modules
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def on_jax(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engines")
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", WORKER, str(folder)], env=env, capture_output=True, text=True,
                          timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


@pytest.mark.slow  # five short trainings in a fresh process: ~20 s of CPU
def test_scan_takes_the_same_steps_as_fit(on_jax):
    """Same data order, same dropout masks, the same last partial batch: only float summation order may differ."""
    import numpy as np
    fit, scan = on_jax["fit"], on_jax["scan"]
    assert (fit["config_engine"], scan["config_engine"], on_jax["auto"]) == ("fit", "scan", "scan")
    np.testing.assert_allclose(scan["history"], fit["history"], rtol=1e-4)
    for a, b in zip(scan["weights"], fit["weights"], strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


@pytest.mark.slow
def test_scan_carries_batch_normalisation_statistics_as_fit_does(on_jax):
    import numpy as np
    fit, scan = on_jax["batchnorm"]["fit"], on_jax["batchnorm"]["scan"]
    for a, b in zip(scan, fit, strict=True):  # weights, BN gamma/beta and the moving mean and variance
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_auto_picks_scan_for_dense_networks_only(on_jax):
    """A CNN's batches are compute-bound: there the scan engine measured slower than fit (docs/training.md)."""
    assert (on_jax["auto"], on_jax["cnn_auto"]) == ("scan", "fit")


@pytest.mark.slow
def test_scan_runs_callbacks_that_watch_whole_epochs(on_jax):
    """A sweep's pruning and the MLflow logger are such callbacks: they see each epoch's figures as under fit."""
    figures = ["accuracy", "loss", "val_accuracy", "val_loss"]
    assert on_jax["epoch_callback"] == [[0, figures], [1, figures]]


@pytest.mark.slow
def test_scan_stops_a_diverging_run_and_marks_it_failed(on_jax):
    message, status = on_jax["diverged"]
    assert "diverged" in message and "at batch " in message and "of epoch 1" in message
    assert status == "failed"


@pytest.mark.slow
def test_training_on_jax_never_imports_tensorflow(on_jax):
    """Keras seeds TensorFlow and checks objects against its types whenever it is installed; digitlab.training
    keeps it from importing TensorFlow to do so (1.8 s and 500 MB per process)."""
    assert on_jax["tensorflow_imported"] is False


def test_engine_scan_where_it_cannot_run_is_a_usage_error(tmp_path):
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-m", "digitlab", "train", "--model", "seed-ann", "--engine", "scan",
                           "--epochs", "1", "--train-size", "500", "--out", str(tmp_path / "run")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--engine scan can't run here: it needs the JAX backend (this process runs tensorflow)" in proc.stderr
    assert not (tmp_path / "run").exists()
