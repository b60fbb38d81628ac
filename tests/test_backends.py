"""The Keras backend, as the README states it: which one each command picks, and what determinism holds on each.

Every check runs in fresh processes with KERAS_BACKEND set, because Keras reads it once, at import: the
test process itself runs on whichever backend it imported first, so in-process tests never switch.

    pytest tests/test_backends.py
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from digitlab.predictor import load_keras_model
from digitlab.runs import open_run

BACKENDS = ("tensorflow", "jax")
OTHER = {"tensorflow": "jax", "jax": "tensorflow"}
TIMEOUT_S = 300
# A .keras file loaded on the other backend: the same weights, summed in another order. Measured here:
# probabilities differ by at most 3.3e-7 (seed-ann) and 5.2e-7 (fastcnn) on these tiny runs, 8.3e-7 on a
# 2-epoch seed-ann over the whole test set (bench/determinism.py, quoted in the README).
CROSS_BACKEND_ATOL = 2e-6


def clean_env(backend: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if backend:
        env["KERAS_BACKEND"] = backend
    return env


# ---------------------------------------------------------------- the default backend rule

RULE = textwrap.dedent("""
    import json, os, sys
    from digitlab import backend
    cases = [("dense", None), ("conv", None), (None, None), ("dense", "tensorflow"), ("conv", "jax")]
    out = []
    for family, preset in cases:
        os.environ.pop("KERAS_BACKEND", None)
        if preset:
            os.environ["KERAS_BACKEND"] = preset
        out.append([family, preset, backend.choose_backend(family), os.environ["KERAS_BACKEND"]])
    assert "keras" not in sys.modules  # the rule is decided before Keras is imported
    os.environ.pop("KERAS_BACKEND")
    backend.choose_backend(sys.argv[1])
    import keras
    out.append(["imported", sys.argv[1], keras.backend.backend(), os.environ["KERAS_BACKEND"]])
    print(json.dumps(out))
""")


def test_dense_picks_jax_conv_picks_tensorflow_and_keras_backend_wins():
    proc = subprocess.run([sys.executable, "-c", RULE, "dense"], env=clean_env(None), capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = {(f, preset): (chosen, env) for f, preset, chosen, env in json.loads(proc.stdout.splitlines()[-1])}
    assert got[("dense", None)] == ("jax", "jax")
    assert got[("conv", None)] == ("tensorflow", "tensorflow")
    assert got[(None, None)] == ("tensorflow", "tensorflow")  # no network to run (data, models): the default
    assert got[("dense", "tensorflow")] == ("tensorflow", "tensorflow")  # the user's KERAS_BACKEND wins
    assert got[("conv", "jax")] == ("jax", "jax")
    assert got[("imported", "dense")] == ("jax", "jax"), "Keras runs on the backend the rule chose"
    # (conv -> TensorFlow once Keras is imported: test_digitlab_train_says_and_uses_its_backend below.)


def digitlab_cli(args: list[str], backend: str | None = None) -> subprocess.CompletedProcess:
    """`python -m digitlab ARGS` in a fresh process; backend None = the user set no KERAS_BACKEND."""
    return subprocess.run([sys.executable, "-m", "digitlab", *args], env=clean_env(backend), capture_output=True,
                          text=True, timeout=TIMEOUT_S)


TINY_CLI = ["--epochs", "1", "--train-size", "500", "--batch-size", "64", "--quiet", "--no-export"]


@pytest.mark.parametrize("model, keras_backend, expected", [
    ("lenet5", None, "tensorflow"),  # a CNN, nothing set: TensorFlow
    ("seed-ann", "tensorflow", "tensorflow"),  # a dense network, but the user's KERAS_BACKEND wins
])
def test_digitlab_train_says_and_uses_its_backend(tmp_path, model, keras_backend, expected):
    """(seed-ann with nothing set trains on JAX: tests/test_signals.py and the session's trained_run check that.)"""
    out = tmp_path / "run"
    proc = digitlab_cli(["train", "--model", model, *TINY_CLI, "--val", "test", "--out", str(out)], keras_backend)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"training {model} on mnist (backend: {expected}, seed 0)" in proc.stdout
    run = open_run(out)
    assert run.environment.keras_backend == expected and run.metrics.keras_backend == expected
    assert f"training time: {run.state.train_seconds:.1f} s ({expected})" in proc.stdout
    # --val test: the tutorial's setup, and the report says what that means (README "Validation").
    assert run.data.val_is_test and run.history[0].val_accuracy is not None
    report = (out / "report.html").read_text()
    assert "Validation figures are test-set figures: this run validated on the test set (--val test)" in report


# ---------------------------------------------------------------- determinism, per backend and across

WORKER = textwrap.dedent("""
    import json, sys
    import keras
    import numpy as np
    from digitlab.config import TrainConfig
    from digitlab.data import load_mnist, scale
    from digitlab.engines import ScanEngine
    from digitlab.evaluation import evaluate_run
    from digitlab.predictor import Predictor
    from digitlab.runs import open_run
    from digitlab.training import resume, train

    class InterruptAfter(keras.callbacks.Callback):  # Ctrl-C after this many batches (of all epochs)
        def __init__(self, batches):
            super().__init__()
            self.left = batches
        def on_train_batch_end(self, batch, logs=None):
            self.left -= 1
            if self.left == 0:
                raise KeyboardInterrupt

    job = json.loads(sys.argv[1])
    ds = load_mnist()
    cfg = TrainConfig(**job["config"])
    for step, path, extra in job["steps"]:
        keras.backend.clear_session()
        if step == "train":
            run = train(cfg, run_dir=path, dataset=ds, verbose=0)
            if extra:  # metrics.json, as `digitlab train` writes it
                evaluate_run(run, dataset=ds)
        elif step == "cut":
            # fit (TensorFlow) is cut by a callback mid-epoch; the scan engine (JAX) runs an epoch as one call,
            # so Ctrl-C lands as its second epoch's call returns: the state it computed must not be kept.
            real_epoch, calls = ScanEngine.run_epoch, []
            def second_epoch_interrupted(self, *args, **kwargs):
                result = real_epoch(self, *args, **kwargs)
                calls.append(1)
                if len(calls) == 2:
                    raise KeyboardInterrupt
                return result
            ScanEngine.run_epoch = second_epoch_interrupted
            scan = keras.backend.backend() == "jax"
            try:
                train(cfg, run_dir=path, dataset=ds, verbose=0, callbacks=[] if scan else [InterruptAfter(extra)])
                raise SystemExit("the interruption did not happen")
            except KeyboardInterrupt:
                pass
            ScanEngine.run_epoch = real_epoch
        elif step == "resume":
            resume(path, dataset=ds, verbose=0)
        elif step == "proba":
            np.save(extra, Predictor.from_run(open_run(path)).predict_proba(scale(ds.x_test[:PROBA_IMAGES])))
    print(keras.backend.backend())
""").replace("PROBA_IMAGES", "2048")  # one predict chunk: one compiled shape

# Dense, on both backends: the README's list (dropout, augmentation, one-cycle, label smoothing).
# A CNN with batch normalisation on TensorFlow, the backend CNNs train on (fastcnn on JAX spends ~10 s
# compiling per run on two cores). 20 steps per epoch, 2 epochs; validation in whole batches (no
# second compiled shape). The cut run is interrupted in its second epoch (5 batches into it on TensorFlow's fit;
# on JAX, where the scan engine runs an epoch as one call, as that call returns).
TINY = dict(epochs=2, batch_size=64, train_size=1280, val="512", seed=3)
CASES = {
    "seed-ann": dict(model="seed-ann", schedule="onecycle", label_smoothing=0.1, aug_shift=2.0,
                     aug_elastic_alpha=20.0, **TINY),
    "fastcnn": dict(model="fastcnn", **TINY),
}
CUT_AFTER_BATCHES = 25


def start_worker(backend: str, config: dict, steps: list) -> subprocess.Popen:
    job = json.dumps({"config": config, "steps": steps})
    return subprocess.Popen([sys.executable, "-c", WORKER, job], env=clean_env(backend), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(*procs: tuple[str, subprocess.Popen]) -> None:
    """Wait for workers started together; each must have succeeded on its backend."""
    try:
        done = [(backend, proc, *proc.communicate(timeout=TIMEOUT_S)) for backend, proc in procs]
    finally:
        for _, proc in procs:
            proc.kill()  # only ever does something when a worker hung
    for backend, proc, out, err in done:
        assert proc.returncode == 0, f"{backend} worker failed:\n{err[-3000:]}"
        assert out.split()[-1:] == [backend], f"the worker did not say it ran on {backend}: {out[-200:]!r}"


def weights(path) -> list[np.ndarray]:
    return load_keras_model(path / "model.keras").get_weights()


def without_timing(records):
    """History rows, or metrics, without their wall-clock seconds (the only field allowed to differ)."""
    if isinstance(records, list):
        return [dataclasses.replace(r, seconds=None) for r in records]
    return dataclasses.replace(records, train_seconds=None)


def assert_bit_identical(a, b, what: str) -> None:
    wa, wb = weights(a), weights(b)
    assert len(wa) == len(wb)
    for i, (x, y) in enumerate(zip(wa, wb)):
        assert np.array_equal(x, y), f"{what}: weight {i} differs by up to {np.max(np.abs(x - y)):.3g}"
    assert without_timing(open_run(a).history) == without_timing(open_run(b).history), f"{what}: history differs"


@pytest.mark.slow  # five trainings and two model loads, in three fresh processes: ~25 s of CPU each
@pytest.mark.parametrize("model, backend", [("seed-ann", "jax"), ("seed-ann", "tensorflow"), ("fastcnn", "tensorflow")])
def test_same_seed_resume_and_the_other_backend(tmp_path, model, backend, figures):
    """Same seed twice: bit-identical weights, history and metrics.json. Interrupted in its second epoch and
    resumed in a new process: bit-identical to the uninterrupted run. The .keras file on the other backend:
    the same probabilities within CROSS_BACKEND_ATOL, the same digits."""
    config, other = CASES[model], OTHER[backend]
    whole, again, cut = tmp_path / "whole", tmp_path / "again", tmp_path / "cut"
    evaluate = model == "seed-ann"  # metrics.json on both backends; for the CNN, bit-identical weights say it all
    finish((backend, start_worker(backend, config, [["train", str(whole), evaluate],
                                                    ["cut", str(cut), CUT_AFTER_BATCHES],
                                                    ["proba", str(whole), str(tmp_path / "own.npy")]])))
    state = open_run(cut).state
    assert (state.status, state.epochs_completed, len(open_run(cut).history)) == ("interrupted", 1, 1)
    finish((backend, start_worker(backend, config, [["train", str(again), evaluate], ["resume", str(cut), None]])),
           (other, start_worker(other, config, [["proba", str(whole), str(tmp_path / "other.npy")]])))

    assert_bit_identical(whole, again, f"{model} on {backend}, same seed twice")
    if evaluate:
        a, b = open_run(whole).metrics, open_run(again).metrics
        assert a.keras_backend == backend and without_timing(a) == without_timing(b), "metrics.json differs"
    resumed = open_run(cut)
    assert resumed.state.status == "completed" and resumed.state.resumed[0]["from_epoch"] == 1
    assert resumed.state.resumed[0]["keras_backend"] == backend
    assert_bit_identical(whole, cut, f"{model} on {backend}, resumed vs uninterrupted")

    own, there = np.load(tmp_path / "own.npy"), np.load(tmp_path / "other.npy")
    assert own.shape == (2048, 10)
    diff = float(np.max(np.abs(own - there)))
    figures(f"{model} trained on {backend}, loaded on {other} (tests/test_backends.py)",
            f"probabilities differ by at most {diff:.2g} on 2,048 test images")
    assert diff <= CROSS_BACKEND_ATOL, f"{model} trained on {backend}, loaded on {other}: max |dp| = {diff:.3g}"
    assert np.array_equal(own.argmax(1), there.argmax(1)), f"{other} reads a digit differently"
