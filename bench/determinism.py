"""Determinism, measured: the figures of the README's "Backends and determinism" section.

    python bench/determinism.py                                   # seed-ann, 2 epochs on 20,000 images, seed 0
    python bench/determinism.py --model fastcnn --epochs 1 --train-size 5000

On each backend (TensorFlow, JAX) the same `digitlab train` command runs twice, each time in a fresh process
(batch, optimiser and the rest are the model's registered recipe; no validation split, no ONNX export). The
table gives each run's test accuracy and whether the second run's weights, metrics.json and history.csv are
bit-identical to the first's (training seconds aside, a wall-clock time), else the largest weight
difference. Then each backend's model.keras is loaded on the other backend: the largest difference in
test-set probabilities, and how many of the 10,000 digits read differently.
tests/test_backends.py checks the same on tiny runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

BACKENDS = ("tensorflow", "jax")
PROBA = textwrap.dedent("""
    import sys
    import numpy as np
    from digitlab.data import load_mnist, scale
    from digitlab.predictor import Predictor, load_keras_model
    model = load_keras_model(sys.argv[1] + "/model.keras")
    np.save(sys.argv[2], Predictor.from_keras(model).predict_proba(scale(load_mnist().x_test)))
    np.savez(sys.argv[3], *model.get_weights())
""")


def env_for(backend: str) -> dict:
    return {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}


def run(cmd: list[str], backend: str) -> None:
    proc = subprocess.run(cmd, env=env_for(backend), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])}... failed on {backend}:\n{proc.stderr[-3000:]}")


def train(out: Path, backend: str, args) -> None:
    run([sys.executable, "-m", "digitlab", "train", "--model", args.model, "--epochs", str(args.epochs),
         "--train-size", str(args.train_size), "--val", "0", "--seed", str(args.seed), "--quiet", "--no-export",
         "--out", str(out)], backend)


def load_on(run_dir: Path, backend: str, tmp: Path) -> tuple[np.ndarray, list[np.ndarray]]:
    """(test-set probabilities, weights) of a run's model.keras, loaded on `backend`."""
    proba, weights = tmp / f"{run_dir.name}-on-{backend}.npy", tmp / f"{run_dir.name}-on-{backend}-w.npz"
    run([sys.executable, "-c", PROBA, str(run_dir), str(proba), str(weights)], backend)
    with np.load(weights) as w:
        return np.load(proba), [w[k] for k in sorted(w.files, key=lambda k: int(k.split("_")[1]))]


def weight_gap(a: list[np.ndarray], b: list[np.ndarray]) -> str:
    if all(np.array_equal(x, y) for x, y in zip(a, b, strict=True)):
        return "bit-identical"
    return f"differ, max {max(float(np.max(np.abs(x - y))) for x, y in zip(a, b)):.2g}"


def files_gap(a: Path, b: Path) -> str:
    """metrics.json and history.csv of two runs, wall-clock seconds aside."""
    from digitlab.runs import open_run
    ra, rb = open_run(a), open_run(b)
    same_metrics = dataclasses.replace(ra.metrics, train_seconds=None) == dataclasses.replace(rb.metrics,
                                                                                              train_seconds=None)
    same_history = [dataclasses.replace(r, seconds=None) for r in ra.history] == \
        [dataclasses.replace(r, seconds=None) for r in rb.history]
    return " and ".join(["identical" if same_metrics else "differ", "identical" if same_history else "differ"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="seed-ann")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-size", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="keep the runs here (default: a temporary folder)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.out or scratch)
        tmp = Path(scratch)
        runs = {(b, i): root / f"{b}-{i}" for b in BACKENDS for i in (1, 2)}
        for (backend, i), out in runs.items():
            print(f"# training {args.model} on {backend}, run {i}", file=sys.stderr, flush=True)
            train(out, backend, args)
        loaded = {(b, i, on): load_on(runs[b, i], on, tmp) for b in BACKENDS for i in (1, 2) for on in BACKENDS
                  if i == 1 or on == b}
        from digitlab.data import load_mnist
        y = load_mnist().y_test
        print(f"{args.model}, {args.epochs} epochs on {args.train_size:,} training images, seed {args.seed}; "
              f"each run a fresh `digitlab train` process\n")
        print("| backend | test accuracy, run 1 | run 2 | weights, run 2 vs 1 | metrics.json and history.csv, "
              "run 2 vs 1 |")
        print("|---|---|---|---|---|")
        for b in BACKENDS:
            acc = [float(np.mean(loaded[b, i, b][0].argmax(1) == y)) for i in (1, 2)]
            print(f"| {b} | {acc[0]:.2%} | {acc[1]:.2%} | {weight_gap(loaded[b, 1, b][1], loaded[b, 2, b][1])} | "
                  f"{files_gap(runs[b, 1], runs[b, 2])} |")
        print("\n| trained on | loaded on | max abs difference in probabilities | digits read differently |")
        print("|---|---|---|---|")
        for b in BACKENDS:
            other = next(o for o in BACKENDS if o != b)
            own, there = loaded[b, 1, b][0], loaded[b, 1, other][0]
            print(f"| {b} | {other} | {float(np.max(np.abs(own - there))):.2g} | "
                  f"{int(np.sum(own.argmax(1) != there.argmax(1)))} of {len(y):,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
