"""A sweep of the configurable mlp with 1 worker, then 2: wall time ratio, and the best trial against the
registered recipe on validation.

    python bench/sweep.py                                  # the issue's bench: 20 trials, 10,000 images
    python bench/sweep.py --trials 6 --epochs 2            # a short version (minutes on 2 cores)

Each sweep is `digitlab sweep` in a fresh process, in its own folder (a fresh study), with pruning off so
both do the same work; the recipe is `digitlab train --model mlp` on the same subset, epochs and seed.
Times are the whole command's wall time (start-up, data loading, the test score of the best at the end).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from digitlab.runs import Run

# The registered recipe's 1024x1024 is in the space, so the sweep can find at least what the recipe gets.
SPACE = ["lr=loguniform:3e-4:1e-2", "dropout=uniform:0:0.5", "hidden=choice:256,512,1024,512x512,1024x1024",
         "label_smoothing=uniform:0:0.2"]


def digitlab(args: list[str]) -> float:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "digitlab", *args], env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"digitlab {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--train-size", type=int, default=10000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", help="keep the sweeps here (default: a temporary folder)")
    args = p.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="bench-sweep-"))
    fixed = ["--set", f"epochs={args.epochs}", "--set", f"train_size={args.train_size}", "--set", "val=5000"]
    common = ["sweep", "--model", "mlp", *sum((["--param", s] for s in SPACE), []), *fixed,
              "--trials", str(args.trials), "--no-prune", "--seed", "0"]
    seconds, best = {}, {}
    for jobs in (1, args.workers):
        folder = root / f"jobs{jobs}"
        seconds[jobs] = digitlab([*common, "--jobs", str(jobs), "--out", str(folder)])
        best[jobs] = json.loads((folder / "best.json").read_text())
    recipe = root / "recipe"
    digitlab(["train", "--model", "mlp", "--epochs", str(args.epochs), "--train-size", str(args.train_size),
              "--val", "5000", "--seed", "0", "--quiet", "--no-export", "--out", str(recipe)])
    recipe_val = max(r.val_accuracy for r in Run(recipe).history)
    print(f"mlp sweep: {args.trials} trials, {args.epochs} epochs, {args.train_size} training images, "
          f"5000 validation; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
    print("| workers | wall time | best val | its test |\n|---|---|---|---|")
    for jobs in seconds:
        print(f"| {jobs} | {seconds[jobs]:.0f} s | {100 * best[jobs]['val_accuracy']:.2f}% "
              f"| {100 * best[jobs]['test_accuracy']:.2f}% |")
    print(f"\ntime ratio ({args.workers} workers / 1): {seconds[args.workers] / seconds[1]:.2f}")
    print(f"registered recipe (same subset and epochs): best val {100 * recipe_val:.2f}%")
    print(f"best trial vs recipe on validation: {100 * (best[args.workers]['val_accuracy'] - recipe_val):+.2f} points")
    print(f"sweeps kept in {root}")


if __name__ == "__main__":
    main()
