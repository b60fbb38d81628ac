"""Data-parallel training (digitlab.distribute): `digitlab train --devices N` on 2 CPU devices, and
`--coordinator --num-processes --process-id` with 2 processes on loopback.

JAX makes N CPU devices when XLA_FLAGS=--xla_force_host_platform_device_count=N is set before it starts,
so each check runs in a fresh process. The same model, data and seed on 1 and on 2 devices (or processes)
must reach the same validation accuracy within noise, and a batch must be split across the devices.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from digitlab.errors import ConfigError

TWO_CPUS = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "KERAS_BACKEND": "jax",
            "TF_CPP_MIN_LOG_LEVEL": "3"}
TRAIN = ["--model", "seed-ann", "--epochs", "2", "--batch-size", "64", "--train-size", "3000", "--val", "1000",
         "--seed", "0", "--quiet", "--no-export"]


def run_python(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], env={**os.environ, **TWO_CPUS}, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_batch_is_split_across_two_cpu_devices():
    code = ("import json; from digitlab.distribute import use_devices, batch_split\n"
            "try:\n    use_devices(2, 63)\nexcept Exception as exc:\n    print(exc)\n"
            "print(json.dumps([use_devices(2, 64), batch_split(64)]))")
    out = run_python(["-c", code]).stdout.strip().splitlines()
    assert "cannot be split evenly over 2 devices" in out[-2]
    devices, shards = json.loads(out[-1])
    assert devices == ["cpu:0", "cpu:1"]
    assert sorted(d for d, _ in shards) == ["cpu:0", "cpu:1"] and all(s == [32, 28, 28] for _, s in shards)


@pytest.mark.slow  # two trainings, each in a fresh process
def test_two_devices_train_like_one(tmp_path):
    from digitlab.runs import Run
    two = run_python(["-m", "digitlab", "train", *TRAIN, "--devices", "2", "--out", str(tmp_path / "two")])
    assert "data-parallel over cpu:0, cpu:1" in two.stdout
    run_python(["-m", "digitlab", "train", *TRAIN, "--out", str(tmp_path / "one")])
    one_val = Run(tmp_path / "one").history[-1].val_accuracy
    two_val = Run(tmp_path / "two").history[-1].val_accuracy
    assert one_val > 0.85  # it learned
    assert abs(two_val - one_val) <= 0.01  # the same step, summed over 2 shards: float-order noise only


def test_devices_beyond_the_machine_or_off_jax_is_a_clear_error():
    import keras

    from digitlab.distribute import use_devices
    expected = "needs the JAX backend" if keras.backend.backend() != "jax" else "this machine shows 1 device"
    with pytest.raises(ConfigError, match=expected):
        use_devices(64, 64)


# ---------------------------------------------------------------- several processes on loopback

ONE_CPU = {"KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}  # one device per process: the job has 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def without_engine(cfg) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "engine"}


def start_process(args: list[str], process_id: int, port: int, extra: list[str] = ()) -> subprocess.Popen:
    """`digitlab train ARGS` as process `process_id` of 2, in a session of its own (its member child with it)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | ONE_CPU
    return subprocess.Popen([sys.executable, "-m", "digitlab", "train", *args, "--coordinator", f"127.0.0.1:{port}",
                             "--num-processes", "2", "--process-id", str(process_id), *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.slow  # two processes training together, about 25 s on 2 cores
def test_two_processes_train_one_run_like_one_process(tmp_path, trained_run):
    """The session's run (seed-ann, 3 epochs, batches of 64 on 12,000 images) again as a 2-process job: process
    0 writes a complete run with the same figures; process 1 writes nothing."""
    from digitlab.runs import Run
    cfg = trained_run.config
    args = ["--model", cfg.model, "--epochs", str(cfg.epochs), "--batch-size", str(cfg.batch_size), "--val",
            str(cfg.val), "--train-size", str(cfg.train_size), "--seed", str(cfg.seed), "--quiet", "--no-export"]
    port = free_port()
    first = start_process([*args, "--out", str(tmp_path / "run")], 0, port)
    second = start_process([*args, "--out", str(tmp_path / "not-written"), "--runs-root", str(tmp_path / "root")],
                           1, port)
    outs = [p.communicate(timeout=240) for p in (first, second)]
    assert (first.returncode, second.returncode) == (0, 0), outs[0][1][-3000:] + outs[1][1][-3000:]
    assert "process 0 of 2: data-parallel over 2 devices" in outs[0][0]
    assert "process 1: training done" in outs[1][0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # process 1 made no folder at all

    run = Run(tmp_path / "run")
    assert run.state.status == "completed" and run.state.epochs_completed == cfg.epochs
    assert run.metrics.test_accuracy > 0.85 and (run.path / "report.html").exists()
    assert run.distribution.num_processes == 2 and len(run.distribution.devices) == 2
    # The same training configuration; only how epochs run may differ (a distribution runs on Keras' fit).
    assert without_engine(run.config) == without_engine(trained_run.config)
    # One global batch of 64 (32 per process), averaged over both: the same steps as one process.
    if trained_run.environment.keras_backend == "jax":  # the session's run is on JAX unless the user said otherwise
        for two, one in zip(run.history, trained_run.history, strict=True):
            assert abs(two.loss - one.loss) < 1e-3 and abs(two.val_accuracy - one.val_accuracy) <= 0.005
    else:
        assert abs(run.history[-1].val_accuracy - trained_run.history[-1].val_accuracy) <= 0.02


@pytest.mark.slow  # two processes start, one is killed after an epoch: about 30 s on 2 cores
def test_a_killed_process_ends_the_job_with_a_clear_error(tmp_path):
    """Process 1 (with its member child) is killed mid-training: process 0 ends within seconds with a
    ClusterError, not a hang, and its run is marked failed with the reason."""
    from digitlab.runs import Run
    args = ["--model", "seed-ann", "--epochs", "50", "--train-size", "6000", "--val", "500", "--quiet", "--no-export"]
    port = free_port()
    first = start_process([*args, "--out", str(tmp_path / "run")], 0, port, ["--timeout", "20"])
    second = start_process(args, 1, port, ["--timeout", "20"])
    deadline = time.monotonic() + 120
    # an epoch is done and recorded (state.json comes after history.csv and the collective model save): both are
    # training the next one
    while (Run(tmp_path / "run").state.epochs_completed or 0) < 1:
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()[1][-3000:]
        time.sleep(0.2)
    os.killpg(second.pid, signal.SIGKILL)
    killed = time.monotonic()
    _, err = first.communicate(timeout=60)
    second.communicate()
    assert first.returncode == 1, err[-3000:]
    assert time.monotonic() - killed < 25  # the collective fails at once; the heartbeat timeout (20 s) at worst
    assert f"of the job at 127.0.0.1:{port}" in err and "Start all 2 processes again" in err
    state = Run(tmp_path / "run").state
    assert state.status == "failed" and "Start all 2 processes again" in state.error
    assert 1 <= state.epochs_completed < 50


def test_unreachable_coordinator_fails_fast_with_a_clear_error(tmp_path):
    """Process 1 with no process 0 at the address: a clear error within --timeout, no hang and no JAX abort."""
    port = free_port()  # nothing listens there
    start = time.monotonic()
    proc = start_process(["--model", "seed-ann", "--epochs", "1", "--train-size", "2000", "--quiet", "--no-export",
                          "--out", str(tmp_path / "run")], 1, port, ["--timeout", "3"])
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err[-3000:]
    assert time.monotonic() - start < 45  # the 3 s wait plus one process's start-up
    assert f"could not reach the coordinator 127.0.0.1:{port} within 3 s" in err
    assert "start process 0 there first" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_processes_with_different_settings_refuse_to_train_together(tmp_path):
    """Process 1 started with another --epochs: it is told why at once; process 0 gives up after --timeout."""
    port = free_port()
    args = ["--model", "seed-ann", "--train-size", "2000", "--quiet", "--no-export"]
    first = start_process([*args, "--epochs", "1", "--out", str(tmp_path / "run")], 0, port, ["--timeout", "5"])
    second = start_process([*args, "--epochs", "2"], 1, port, ["--timeout", "5"])
    (_, err0), (_, err1) = (p.communicate(timeout=90) for p in (first, second))
    assert (first.returncode, second.returncode) == (1, 1), err0[-2000:] + err1[-2000:]
    assert "process 1 was started with other training settings or data than process 0" in err1
    assert "process(es) 1 did not arrive" in err0
    assert not (tmp_path / "run").exists()  # made for the job, removed when it never started


@pytest.mark.parametrize(("flags", "expected"), [
    (["--coordinator", "127.0.0.1:1234"], "needs --coordinator HOST:PORT, --num-processes N and --process-id I"),
    (["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"], "must be HOST:PORT"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"], "--process-id must be 0 to 1"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "0", "--batch-size", "63"],
     "cannot be split evenly over 2 processes"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "0", "--devices", "2"],
     "drop --devices"),
    (["--timeout", "5"], "--timeout applies to multi-process training"),
])
def test_bad_cluster_flags_are_usage_errors(flags, expected, capsys):
    from digitlab.cli import main
    code = main(["train", "--model", "seed-ann", "--epochs", "1", "--no-export", *flags])
    err = capsys.readouterr().err
    assert code == 2 and expected in err
