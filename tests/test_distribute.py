"""Data-parallel training (digitlab.distribute, `digitlab train --devices N`) on 2 CPU devices.

JAX makes N CPU devices when XLA_FLAGS=--xla_force_host_platform_device_count=N is set before it starts,
so each check runs in a fresh process. The same model, data and seed on 1 and on 2 devices must reach the
same validation accuracy within noise, and a batch must be split across the devices.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

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
