"""The benchmark scripts behind the README's tables keep running, and judge their goals as stated.

Smoke runs on tiny settings (seconds, not the hours of the real rows); the goal checks on made-up results.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from bench_support import BENCH, bench_module


def bench(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}  # each program picks its own
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


# ---------------------------------------------------------------- goals

def test_accuracy_time_goal_is_judged_on_the_slowest_seed():
    accuracy = bench_module("accuracy")
    row = next(r for r in accuracy.ROWS if r.name == "fastcnn-3min")  # >= 99.5% in <= 180 s
    # The README's measurement: the mean (174 s) is within the goal, one seed (185 s) is not.
    measured = {"accuracy_mean": 0.9956, "train_seconds": 174.7, "train_seconds_each": [185.0, 172.0, 167.0]}
    assert accuracy.goal_met(row, measured) == "no (slowest seed 185 s)"
    assert accuracy.goal_met(row, {**measured, "train_seconds_each": [179.0, 172.0, 167.0]}) == "yes"
    assert accuracy.goal_met(row, {**measured, "accuracy_mean": 0.9949}) == "no (mean accuracy 99.49%, slowest seed 185 s)"
    no_time_goal = next(r for r in accuracy.ROWS if r.name == "mlp")
    assert accuracy.goal_met(no_time_goal, {**measured, "accuracy_mean": 0.986}) == "yes"
    assert accuracy.goal_met(next(r for r in accuracy.ROWS if r.name == "seed-ann"), measured) == ""


def test_load_goal_is_p50_5_ms_and_p99_20_ms_for_paced_traffic():
    load = bench_module("load")
    fast = load.Result("50 clients x 10/s", paced=True, seconds=1.0, latencies_ms=[1.0] * 98 + [15.0, 19.0])
    assert fast.goal_met() and fast.row()["goal"] == "met" and "goal p50 <= 5 ms and p99 <= 20 ms met" in fast.goal_line()
    slow_tail = load.Result("50 clients x 10/s", paced=True, seconds=1.0, latencies_ms=[1.0] * 97 + [30.0] * 3)
    assert not slow_tail.goal_met() and slow_tail.row()["goal"] == "NOT met"
    slow_median = load.Result("50 clients x 10/s", paced=True, seconds=1.0, latencies_ms=[6.0] * 100)
    assert not slow_median.goal_met()
    with_errors = load.Result("50 clients x 10/s", paced=True, seconds=1.0, latencies_ms=[1.0] * 100, errors=1)
    assert not with_errors.goal_met()
    assert load.Result("16 clients x max", seconds=1.0, latencies_ms=[50.0]).row()["goal"] == "-"


def test_load_feedback_audit_finds_lost_and_doubled_corrections(tmp_path):
    import numpy as np

    from digitlab.feedback import Correction, FeedbackStore
    load = bench_module("load")
    pixels = (np.arange(28 * 28) % 256).reshape(28, 28).tolist()
    log = load.FeedbackLog(10.0, token=0xBEEF)
    nonces = [log.token << 32 | k for k in range(4)] + [0x1234 << 32]  # the last one another run's
    assert [load.nonce_of(load.with_nonce(pixels, n)) for n in nonces] == nonces
    assert load.with_nonce(pixels, nonces[3])[1:] == pixels[1:]  # only row 0 carries it

    def put(store, nonce):
        original = json.dumps(json.loads(load.correction_body([(pixels, 3)], nonce))["pixels"]).encode()
        return store.add(Correction(label=3, predicted=3, probabilities=[0.1] * 10, x28=np.zeros((28, 28)),
                                    original=original, original_kind="pixels"))

    db = tmp_path / "fb.sqlite"
    with FeedbackStore.open(db) as s:
        log.acked = {nonces[0]: put(s, nonces[0]), nonces[1]: put(s, nonces[1])}
        put(s, nonces[1])  # stored twice
        log.acked[nonces[2]] = 999  # acknowledged, never stored: lost
        put(s, nonces[3])  # stored, though its client saw no 200
        put(s, nonces[4])
    load.audit_feedback(db, log)
    assert (log.rows, log.lost, log.duplicated, log.unacknowledged) == (4, 1, 1, 1) and not log.ok()
    log.acked.pop(nonces[2])
    with FeedbackStore.open(db) as s:
        s.delete(max(c.id for c in s.corrections() if load.nonce_of(json.loads(c.original)) == nonces[1]))
        s.delete(next(c.id for c in s.corrections() if load.nonce_of(json.loads(c.original)) == nonces[3]))
    load.audit_feedback(db, log)
    assert (log.rows, log.lost, log.duplicated, log.unacknowledged) == (2, 0, 0, 0) and log.ok()


# ---------------------------------------------------------------- smoke runs

def test_load_bench_posts_corrections_and_counts_them(trained_run, tmp_path):
    out = tmp_path / "rows.json"
    proc = bench("load.py", "--run", str(trained_run.path), "--scenario", "4x10", "--feedback-rate", "10",
                 "--duration", "1", "--json", str(out))
    off, on = json.loads(out.read_text())
    assert off["scenario"] == "4 clients x 10/s" and off["corr. acked"] is None and off["errors"] == 0
    assert on["scenario"] == "4 clients x 10/s + 10 corrections/s" and on["errors"] == on["corr. errors"] == 0
    # 10 senders, one a second each, random phase: one correction each in the 1 s
    assert on["corr. acked"] == on["corr. rows"] == 10 and on["lost"] == on["doubled"] == 0
    assert "0 lost, 0 stored twice" in proc.stdout and "(none lost or doubled, no errors) met" in proc.stdout

@pytest.mark.slow
def test_accuracy_bench_quick_runs_a_row(tmp_path):
    proc = bench("accuracy.py", "--quick", "--rows", "fastcnn-30s", "--quick-train-size", "300", "--quick-epochs", "1",
                 "--out", str(tmp_path))
    assert "| fastcnn-30s | fastcnn |" in proc.stdout and "(quick)" in proc.stdout
    assert "--quick: every recipe on 300 training images for 1 epochs" in proc.stdout
    row, = json.loads((tmp_path / "results.json").read_text())
    assert row["row"] == "fastcnn-30s" and row["seeds"] == 1 and 0.1 < row["accuracy_mean"] < 1.0
    assert len(row["train_seconds_each"]) == 1 and row["train_seconds_each"][0] > 0


@pytest.mark.slow
def test_seed_bench_runs_every_program(tmp_path):
    proc = bench("seed.py", "--seeds", "1", "--epochs", "1", "--train-size", "500")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| program | backend | seeds | process s")
    rows = {line.split(" | ")[0].removeprefix("| "): line.split(" | ") for line in lines[1:]}
    assert rows["tutorial (plain Keras), as written"][1] == "tensorflow"
    assert rows["tutorial (plain Keras), on JAX"][1:3] == ["jax", "1"]
    assert rows["tutorial (plain Keras), on JAX"][-2:] == ["1.00", "1.00 |"]  # the baseline of both ratios
    for name in ("digitlab, the main job (quickstart)", "digitlab --val test --no-export --engine fit"):
        assert rows[name][1] == "jax"  # the default backend for a dense network
        assert all(float(ratio.strip(" |")) > 0 for ratio in rows[name][-2:])
