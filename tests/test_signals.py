"""Ctrl-C for real: SIGINT sent to a running `digitlab train` process in the middle of an epoch.

The run must stop with exit status 130, say how to continue, mark state.json "interrupted", and keep
the model of the last completed epoch, loadable, with no temporary files left behind. This is also the
default path a user takes: `digitlab train --model seed-ann` with no KERAS_BACKEND trains on JAX.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from digitlab.data import prepare_split, scale
from digitlab.errors import RunError
from digitlab.predictor import Predictor, load_keras_model
from digitlab.runs import open_run
from digitlab.scoring import log_loss

EPOCHS = 50  # far more than will run: the signal always lands during training, never after it
STARTUP_S = 180  # imports, data, the first epoch and its compilation, on a busy 2-core machine


def completed_epochs(path) -> int:
    try:
        return open_run(path).state.epochs_completed
    except RunError:  # state.json not written yet
        return 0


@pytest.mark.slow  # a fresh `digitlab train` process, up to its second epoch: ~15 s of CPU
def test_sigint_mid_epoch_keeps_the_last_completed_epoch(tmp_path, mnist):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}  # the backend a user gets
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    # 20,000 images at batch 32: 625 steps, about a second per epoch, so the signal arrives mid-epoch.
    proc = subprocess.Popen([sys.executable, "-m", "digitlab", "train", "--model", "seed-ann", "--epochs", str(EPOCHS),
                             "--train-size", "20000", "--val", "1000", "--quiet", "--out", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + STARTUP_S
        while completed_epochs(out) < 1:  # wait for the first epoch's files, then interrupt the second
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no epoch completed in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    assert "training seed-ann on mnist (backend: jax, seed 0)" in stdout  # dense -> JAX by default
    assert "interrupted: the run keeps its last completed epoch; continue it with `digitlab train --resume RUN`" \
        in stderr
    assert "Traceback" not in stderr

    run = open_run(out)
    done = run.state.epochs_completed
    assert run.state.status == "interrupted" and 1 <= done < EPOCHS
    assert [r.epoch for r in run.history] == list(range(1, done + 1))
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"
    # The saved model is the last completed epoch's, not a half-trained one: it scores the validation
    # set exactly as that epoch's history row says.
    model = load_keras_model(run.model_path)
    split = prepare_split(run.config, mnist)
    proba = Predictor.from_keras(model).predict_proba(scale(split.x_val))
    assert log_loss(split.y_val.astype(int), proba) == pytest.approx(run.history[-1].val_loss, rel=1e-4)
    assert float(np.mean(proba.argmax(1) == split.y_val)) == pytest.approx(run.history[-1].val_accuracy, abs=1e-6)
