"""The same training as 1 process and as N processes on this machine (`--coordinator 127.0.0.1:PORT`):
wall time and the figures each reached.

    python bench/multiprocess.py                                   # seed-ann, 2 epochs, all 55,000 images
    python bench/multiprocess.py --model mlp --epochs 1 --processes 2 --repeat 3

Every command is `digitlab train` in fresh processes on the JAX backend, one CPU device per process, with
--no-export. One process runs twice: with --engine fit (the loop the processes run: a distribution trains
on Keras' fit) and with the default engine. Times are the whole command's wall time (start-up, data
loading, training, process 0's evaluation); the processes are started together and the time ends when
the last one exits. On one machine the processes share its cores: this measures the cost of the
distributed runtime, not a speed-up, which needs a core (or GPU) per process.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from digitlab.runs import Run

ENV = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "KERAS_BACKEND": "jax",
       "TF_CPP_MIN_LOG_LEVEL": "3"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(commands: list[list[str]]) -> float:
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "digitlab", "train", *c], env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for c in commands]
    errors = [p.communicate()[1] for p in procs]
    seconds = time.perf_counter() - start
    for p, err in zip(procs, errors, strict=True):
        if p.returncode:
            sys.exit(f"a process failed ({p.returncode}):\n{err[-3000:]}")
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="seed-ann")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1, help="rounds of the three commands, interleaved")
    a = p.parse_args()
    base = ["--model", a.model, "--epochs", str(a.epochs), "--batch-size", str(a.batch_size), "--seed", "0",
            "--quiet", "--no-export"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeat):
            for name in ("1 process, --engine fit", "1 process, default engine", f"{a.processes} processes"):
                out = Path(tmp) / f"{r}-{len(rows)}"
                if name.startswith("1 process"):
                    engine = ["--engine", "fit"] if "fit" in name else []
                    commands = [[*base, *engine, "--out", str(out)]]
                else:
                    port = free_port()
                    commands = [[*base, *(["--out", str(out)] if i == 0 else []), "--coordinator",
                                 f"127.0.0.1:{port}", "--num-processes", str(a.processes), "--process-id", str(i)]
                                for i in range(a.processes)]  # only process 0 writes
                seconds = timed(commands)
                run = Run(out)
                rows.append((name, seconds, run.history[-1].val_accuracy, run.metrics.test_accuracy,
                             run.state.train_seconds))
                print(f"{name}: {seconds:.1f} s wall, training {run.state.train_seconds:.1f} s, "
                      f"val {run.history[-1].val_accuracy:.4f}, test {run.metrics.test_accuracy:.4f}", flush=True)
    print(f"\n| job ({a.model}, {a.epochs} epochs, batch {a.batch_size}) | wall | training | val | test |")
    print("|---|---|---|---|---|")
    for name, seconds, val, test, train_s in rows:
        print(f"| {name} | {seconds:.1f} s | {train_s:.1f} s | {val:.4f} | {test:.4f} |")
    print(f"\nmachine: {os.cpu_count()} CPUs; load average before/after: see `uptime`")


if __name__ == "__main__":
    main()
