"""`kill -9` a real `digitlab train` at chosen and random moments; `--resume` must end where an
uninterrupted run ends (issue 15).

Each scenario runs the command line in a process of its own, on JAX (set explicitly, so that the
reference and the resumed runs share a backend), watches the run folder and kills the process when
the moment comes: as config.json appears, at a random time in training, while model.keras is being
saved, between history.csv and the model of an epoch, during the evaluation. A `--seeds 2` group is
killed in its second seed. Two processes run at a time, so the file takes about a minute of 2 cores.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # ~15 processes of a few seconds each; runs in CI with the rest

TRAIN = ["--model", "seed-ann", "--train-size", "2000", "--val", "500", "--epochs", "3", "--batch-size", "64",
         "--quiet", "--no-export"]
SEEDS = ["--model", "seed-ann", "--train-size", "1000", "--val", "500", "--epochs", "2", "--batch-size", "64",
         "--seeds", "2", "--quiet", "--no-export"]
ENV = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
POLL_S = 0.001  # how often the folder is looked at while waiting for a moment: a model save lasts ~10-50 ms here
TIMEOUT_S = 300  # per process, on a loaded 2-core machine


def digitlab(*argv, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "digitlab", *map(str, argv)], env=ENV, capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@dataclass
class Killed:
    """A `digitlab train` killed at a moment: what the folder held when it died."""
    moment: str
    left: list[str] = field(default_factory=list)  # the files in the run folder just after the kill
    after_s: float = 0.0  # seconds from config.json appearing to the kill


def train_and_kill(argv: list, folder: Path, moment, name: str) -> Killed:
    """Start `digitlab train ARGV`, call moment(folder) every POLL_S until it is true, then kill -9."""
    proc = subprocess.Popen([sys.executable, "-m", "digitlab", "train", *map(str, argv)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline, started = time.monotonic() + TIMEOUT_S, None
    try:
        while not moment(folder):
            if started is None and (folder / "config.json").exists():
                started = time.monotonic()
            if proc.poll() is not None:
                pytest.fail(f"{name}: the process ended ({proc.returncode}) before the moment came: "
                            f"{proc.stderr.read()[-2000:]}")
            assert time.monotonic() < deadline, f"{name}: the moment never came"
            time.sleep(POLL_S)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    left = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    return Killed(name, left, time.monotonic() - (started or time.monotonic()))


def resume(folder: Path) -> subprocess.CompletedProcess:
    """`digitlab train --resume`; a run killed in its evaluation is told to run `digitlab evaluate`, and is."""
    proc = digitlab("train", "--resume", folder, "--quiet", "--no-export", check=False)
    if proc.returncode == 2 and f"digitlab evaluate {folder}" in proc.stderr:
        return digitlab("evaluate", folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def outcome(folder: Path) -> dict:
    """The figures a finished run is judged by."""
    metrics = json.loads((folder / "metrics.json").read_text())
    state = json.loads((folder / "state.json").read_text())
    history = (folder / "history.csv").read_text().splitlines()
    return {"status": state["status"], "epochs": state["epochs_completed"], "history_rows": len(history) - 1,
            "test_errors": metrics["test_errors"], "test_accuracy": metrics["test_accuracy"],
            "test_loss": round(metrics["test_loss"], 4),
            "val_loss": [round(float(row.split(",")[3]), 4) for row in history[1:]]}


# ---------------------------------------------------------------- the moments

def _state(folder: Path) -> dict:
    try:
        return json.loads((folder / "state.json").read_text())
    except (OSError, ValueError):  # not written yet (each write is atomic: never half a file)
        return {}


def config_written(folder: Path) -> bool:  # before the model is built: the resume starts over
    return (folder / "config.json").exists()


def saving_model(folder: Path) -> bool:  # a temporary of model.keras exists: the save is under way
    try:
        return any(entry.name.startswith(".model.keras.") for entry in os.scandir(folder))
    except FileNotFoundError:
        return False


def history_ahead_of_model(folder: Path) -> bool:  # epoch 2 in history.csv, its model not saved yet
    try:
        return len((folder / "history.csv").read_text().splitlines()) == 3 and _state(folder).get(
            "epochs_completed") == 1
    except OSError:
        return False


def evaluating(folder: Path) -> bool:  # training completed, metrics.json not written yet
    return _state(folder).get("status") == "completed"


def at_random(delay_s: float):
    """A moment `delay_s` after config.json appears."""
    seen = {}

    def moment(folder: Path) -> bool:
        if "t" not in seen and (folder / "config.json").exists():
            seen["t"] = time.monotonic()
        return "t" in seen and time.monotonic() - seen["t"] >= delay_s
    return moment


# ---------------------------------------------------------------- the test

def test_kill_9_at_five_moments_then_resume_ends_like_an_uninterrupted_run(tmp_path):
    rng = random.Random(15)  # the random moment is drawn, and logged on failure

    def reference() -> tuple[dict, float]:
        folder = tmp_path / "whole"
        digitlab("train", *TRAIN, "--out", folder)
        # From config.json to the last state.json (training completed): the training, as the file times tell.
        training_s = (folder / "state.json").stat().st_mtime - (folder / "config.json").stat().st_mtime
        return outcome(folder), training_s

    def scenario(name: str, moment) -> tuple[Killed, dict]:
        folder = tmp_path / name
        killed = train_and_kill([*TRAIN, "--out", folder], folder, moment, name)
        resume(folder)
        temporaries = [p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != ".digitlab.lock"]
        assert temporaries == [], f"{name}: resume left {temporaries}"
        return killed, outcome(folder)

    with ThreadPoolExecutor(2) as pool:
        whole = pool.submit(reference)
        moments = {"config-written": config_written, "saving-model": saving_model,
                   "history-ahead-of-model": history_ahead_of_model, "evaluating": evaluating}
        runs = {name: pool.submit(scenario, name, moment) for name, moment in moments.items()}
        expected, training_s = whole.result()
        # Random: somewhere in the training, as long as the uninterrupted run's took (measured under the same
        # load; kept in its first part, so that a process that happens to run faster is still caught training).
        delay = rng.uniform(0.05, 0.6) * training_s
        runs[f"random-{delay:.1f}s"] = pool.submit(scenario, f"random-{delay:.1f}s", at_random(delay))
        results = {name: future.result() for name, future in runs.items()}

    assert expected["status"] == "completed" and expected["epochs"] == 3
    for name, (killed, got) in results.items():
        assert got == expected, f"{name}: killed with {killed.left}, resumed to {got}, expected {expected}"
    # The moments were hit: the evidence each kill left in the folder.
    assert "model.keras" not in results["config-written"][0].left
    assert any(n.startswith(".model.keras.") for n in results["saving-model"][0].left), results["saving-model"][0]
    assert "metrics.json" not in results["evaluating"][0].left


def test_kill_9_in_a_seeds_group_then_resume_gives_the_same_summary(tmp_path):
    def summary(folder: Path) -> dict:
        s = json.loads((folder / "seeds.json").read_text())["summary"]
        return {k: s[k] for k in ("seeds", "test_accuracy", "test_accuracy_mean", "test_accuracy_std")}

    def second_seed_training(folder: Path) -> bool:
        return (folder / "s1" / "history.csv").exists()

    with ThreadPoolExecutor(2) as pool:
        whole = pool.submit(digitlab, "train", *SEEDS, "--out", tmp_path / "whole")
        killed = pool.submit(train_and_kill, [*SEEDS, "--out", tmp_path / "cut"], tmp_path / "cut",
                             second_seed_training, "seeds")
        whole.result()
        killed = killed.result()
    assert "seeds.json" in killed.left and "s1" in killed.left
    digitlab("train", "--resume", tmp_path / "cut", "--quiet", "--no-export")
    assert summary(tmp_path / "cut") == summary(tmp_path / "whole")
