"""Accuracy benchmark: every row of the README's accuracy table, reproduced; prints a Markdown table.

    python bench/accuracy.py --quick                       # short versions of every row, 1 seed: minutes
    python bench/accuracy.py                               # the full rows, 3 seeds each: hours on 2 cores
    python bench/accuracy.py --rows fastcnn-30s,mlp        # some rows (names: --list)
    python bench/accuracy.py --backends                    # seconds per epoch of each family, TF vs JAX
    python bench/accuracy.py --quick --rows fastcnn-30s --quick-train-size 300 --quick-epochs 1   # a smoke run

Each row is `digitlab train --model M <recipe> --val 0 --seeds N` in a fresh process (so each picks
its own backend), into OUT/<row>; the ensemble row is `digitlab ensemble` over another row's runs.
Protocol: all 60,000 training images, a fixed number of epochs (no test-set peeking: no validation,
no early stopping), test accuracy on the 10,000 test images, mean and sample std over the seeds;
"train s" is the wall time of the training epochs (augmentation included; start-up, data loading
and evaluation excluded). A goal "in <= T s" holds only if every seed trained within T s (the worst seed
is judged, not the mean); an accuracy goal is on the mean over the seeds. A row already finished in OUT
is read back, not retrained; an interrupted one is resumed (`digitlab train --resume`), so the full
benchmark can be run in pieces. No ONNX export: these runs are measured, not served.
Other processes on the machine slow training down: the table records the 1-minute load average
seen during each row, so a slow figure can be told from a slow machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from digitlab.runs import is_seed_group, read_metrics, read_seed_group

ROOT = Path(__file__).resolve().parent.parent
QUICK_TRAIN_SIZE = 10_000  # --quick: a sixth of the data...
QUICK_EPOCHS = 2  # ...for two epochs: every row's recipe end to end, in seconds to a minute


@dataclass(frozen=True)
class Row:
    name: str  # row id, also the folder name under OUT
    model: str  # registered model
    recipe: str  # what the README says about it
    args: tuple[str, ...] = ()  # digitlab train flags on top of the model's registered recipe
    goal_accuracy: float | None = None  # the goal (mean over seeds), if any
    goal_seconds: float | None = None  # ... within this much training time, for every run (the worst seed)
    ensemble_of: str | None = None  # for an ensemble row: the row whose runs it averages
    tta: bool = False  # ensemble row: test-time augmentation
    each: bool = False  # ensemble row: one "ensemble" per member run (TTA of a single model), mean over them


ROWS = [
    Row("seed-ann", "seed-ann", "the tutorial: Adam 1e-3, batch 32, 10 epochs"),
    Row("mlp", "mlp", "2x1024 ReLU, dropout 0.3, batch 128, one-cycle 1e-3, label smoothing 0.1, 30 epochs",
        goal_accuracy=0.985),
    Row("mlp-aug", "mlp", "the mlp recipe, dropout 0.15, elastic augmentation (shift 2, rotate 10, zoom 0.1, "
        "alpha 34, sigma 4), 60 epochs", ("--augment", "elastic", "--dropout", "0.15", "--epochs", "60"),
        goal_accuracy=0.992),
    Row("lenet5", "lenet5", "LeNet-5, Adam 1e-3, batch 64, 10 epochs"),
    Row("convnet", "convnet", "keras-io convnet, Adam 1e-3, batch 128, 15 epochs"),
    Row("fastcnn-30s", "fastcnn", "conv-BN 16-32-64, batch 256, one-cycle 1.5e-2, label smoothing 0.1, 3 epochs",
        goal_accuracy=0.990, goal_seconds=30),
    Row("fastcnn-3min", "fastcnn", "conv-BN 32-64-128, batch 128, one-cycle 4e-3, label smoothing 0.1, affine "
        "augmentation, 9 epochs", ("--widths", "32,64,128", "--batch-size", "128", "--lr", "0.004", "--augment",
                                   "affine", "--epochs", "9"), goal_accuracy=0.995, goal_seconds=180),
    Row("bestcnn", "bestcnn", "conv-BN pairs 32-64-128, dropout 0.3, batch 128, one-cycle 3e-3, label smoothing 0.1, "
        "affine augmentation, 30 epochs", goal_accuracy=0.997, goal_seconds=1800),
    Row("bestcnn-tta", "ensemble", "each bestcnn run alone with 1-pixel-shift TTA (mean over the seeds)",
        ensemble_of="bestcnn", tta=True, each=True, goal_accuracy=0.997, goal_seconds=1800),
    Row("bestcnn-ensemble", "ensemble", "the bestcnn runs' probabilities averaged, with 1-pixel-shift TTA",
        ensemble_of="bestcnn", tta=True, goal_accuracy=0.9975),
    # the same recipe in half the time, for comparison
    Row("bestcnn-15ep", "bestcnn", "the bestcnn recipe for 15 epochs", ("--epochs", "15"),
        goal_accuracy=0.997, goal_seconds=1800),
    Row("bestcnn-15ep-tta", "ensemble", "each bestcnn-15ep run alone with 1-pixel-shift TTA (mean over the seeds)",
        ensemble_of="bestcnn-15ep", tta=True, each=True, goal_accuracy=0.997, goal_seconds=1800),
    Row("bestcnn-15ep-ensemble", "ensemble", "the bestcnn-15ep runs' probabilities averaged, with 1-pixel-shift TTA",
        ensemble_of="bestcnn-15ep", tta=True, goal_accuracy=0.9975),
]


def digitlab(*args: str, env_extra: dict | None = None) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env_extra or {})}
    cmd = [sys.executable, "-m", "digitlab", *args, *(["--no-export"] if args[0] in ("train", "ensemble") else [])]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def run_row(row: Row, out: Path, seeds: int, quick: bool, quick_train: int = QUICK_TRAIN_SIZE,
            quick_epochs: int = QUICK_EPOCHS) -> dict:
    folder = out / row.name
    load = os.getloadavg()[0]
    start = time.time()
    ran = False  # a finished row is read back: its load and wall time are those of the run that made it
    if row.ensemble_of:
        members = out / row.ensemble_of
        seeds_list = read_seed_group(members).seeds
        groups = [(folder / f"s{s}", [members / f"s{s}"]) for s in seeds_list] if row.each else [(folder, [members])]
        scores, secs = [], []
        for target, sources in groups:
            if read_metrics(target) is None:
                digitlab("ensemble", *map(str, sources), "--out", str(target), *(["--tta"] if row.tta else []))
                ran = True
            metrics = read_metrics(target)
            scores.append(metrics.test_accuracy)
            secs.append(metrics.train_seconds or 0.0)
        result = {"seeds": len(seeds_list), "accuracy_mean": statistics.mean(scores),
                  "accuracy_std": statistics.stdev(scores) if len(scores) > 1 else 0.0, "accuracy_each": scores,
                  "train_seconds": statistics.mean(secs), "train_seconds_each": secs}
    else:
        started = is_seed_group(folder)
        summary = read_seed_group(folder).summary if started else None
        if summary is None:
            ran = True
            if started:
                digitlab("train", "--resume", str(folder), "--quiet")
            else:
                extra = ["--train-size", str(quick_train), "--epochs", str(quick_epochs)] if quick else []
                digitlab("train", "--model", row.model, *row.args, *extra, "--val", "0", "--seeds", str(seeds),
                         "--quiet", "--out", str(folder))
            summary = read_seed_group(folder).summary
        result = {"seeds": len(summary["seeds"]), "accuracy_mean": summary["test_accuracy_mean"],
                  "accuracy_std": summary["test_accuracy_std"], "accuracy_each": summary["test_accuracy"],
                  "train_seconds": summary["train_seconds_mean"], "train_seconds_each": summary["train_seconds"]}
    measured = {"load_1min": round(load, 2), "wall_seconds": round(time.time() - start, 1)}
    previous = folder / "bench_row.json"
    if not ran and previous.exists():
        old = json.loads(previous.read_text())
        measured = {key: old.get(key) for key in measured}  # None if it was never recorded
    result.update(row=row.name, model=row.model, recipe=row.recipe, **measured, goal=goal_text(row),
                  met=goal_met(row, result))
    (folder / "bench_row.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def goal_text(row: Row) -> str:
    if row.goal_accuracy is None:
        return ""
    return f">= {row.goal_accuracy:.2%}" + (f" in <= {row.goal_seconds:.0f} s" if row.goal_seconds else "")


def goal_met(row: Row, r: dict) -> str:
    """"yes", or "no (why)": accuracy on the mean over the seeds; time on the slowest seed, since a goal of
    "99.5% in 3 minutes" is a promise about each run, which a mean can keep while a seed breaks it."""
    if row.goal_accuracy is None:
        return ""
    why = []
    if r["accuracy_mean"] < row.goal_accuracy - 1e-9:
        why.append(f"mean accuracy {r['accuracy_mean']:.2%}")
    if row.goal_seconds is not None:
        each = r.get("train_seconds_each") or ([r["train_seconds"]] if r["train_seconds"] is not None else [])
        if not each:
            why.append("no training time recorded")
        elif max(each) > row.goal_seconds:
            why.append(f"slowest seed {max(each):.0f} s")
    return "no (" + ", ".join(why) + ")" if why else "yes"


def table(results: list[dict], quick: bool) -> str:
    head = ("| row | model | recipe | seeds | test accuracy (mean ± std) | train s / run (slowest) | load | goal "
            "| met |\n|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in results:
        secs = "" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"
        if len(r.get("train_seconds_each") or []) > 1:
            secs += f" ({max(r['train_seconds_each']):.0f})"
        lines.append(f"| {r['row']} | {r['model']} | {r['recipe']} | {r['seeds']} | "
                     f"{r['accuracy_mean']:.2%} ± {r['accuracy_std']:.2%} | {secs} | {r['load_1min']} | "
                     f"{r['goal']} | {'(quick)' if quick and r['goal'] else r['met']} |")
    return head + "\n".join(lines) + "\n"


# ---------------------------------------------------------------- backends

BACKEND_MODELS = ["seed-ann", "mlp", "lenet5", "fastcnn", "bestcnn"]
BACKEND_IMAGES = 10_000  # images per timed epoch


def time_backends(out: Path) -> str:
    """Seconds per 60k-image epoch of each model on each backend: epoch 2 of a 2-epoch run (epoch 1 compiles)."""
    rows = ["| model | family | TensorFlow s/epoch | JAX s/epoch | faster |", "|---|---|---|---|---|"]
    sys.path.insert(0, str(ROOT))
    from digitlab.registry import get_model_info
    for model in BACKEND_MODELS:
        secs = {}
        for backend in ("tensorflow", "jax"):
            folder = out / "backends" / f"{model}-{backend}"
            if not (folder / "history.csv").exists():
                digitlab("train", "--model", model, "--epochs", "2", "--train-size", str(BACKEND_IMAGES), "--val", "0",
                         "--quiet", "--out", str(folder), env_extra={"KERAS_BACKEND": backend})
            lines = (folder / "history.csv").read_text().splitlines()
            secs[backend] = float(lines[2].split(",")[-1]) * 60_000 / BACKEND_IMAGES
        fast = min(secs, key=secs.get)
        rows.append(f"| {model} | {get_model_info(model).family} | {secs['tensorflow']:.1f} | {secs['jax']:.1f} | "
                    f"{fast} ({max(secs.values()) / min(secs.values()):.1f}x) |")
    return "\n".join(rows) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"each row on {QUICK_TRAIN_SIZE} images for {QUICK_EPOCHS} "
                                                        "epochs, 1 seed (checks the recipes run; not the goals)")
    p.add_argument("--quick-train-size", type=int, default=QUICK_TRAIN_SIZE, help="--quick: training images per row")
    p.add_argument("--quick-epochs", type=int, default=QUICK_EPOCHS, help="--quick: epochs per row")
    p.add_argument("--seeds", type=int, default=3, help="seeds per row (default 3; --quick: 1)")
    p.add_argument("--rows", help="comma-separated row names (default: all)")
    p.add_argument("--out", help="where runs go (default: runs/bench-accuracy[-quick])")
    p.add_argument("--backends", action="store_true", help="only time each model family on TensorFlow and JAX")
    p.add_argument("--list", action="store_true", help="list the rows and exit")
    args = p.parse_args(argv)
    if not args.quick and (args.quick_train_size, args.quick_epochs) != (QUICK_TRAIN_SIZE, QUICK_EPOCHS):
        p.error("--quick-train-size and --quick-epochs change --quick runs only; the full rows keep their protocol")
    if args.list:
        for r in ROWS:
            print(f"{r.name:18} {r.model:9} {' '.join(r.args):32} {goal_text(r)}")
        return 0
    out = Path(args.out or ROOT / "runs" / f"bench-accuracy{'-quick' if args.quick else ''}")
    out.mkdir(parents=True, exist_ok=True)
    if args.backends:
        text = time_backends(out)
        print(text)
        (out / "backends.md").write_text(text)
        return 0
    wanted = args.rows.split(",") if args.rows else [r.name for r in ROWS]
    unknown = set(wanted) - {r.name for r in ROWS}
    if unknown:
        print(f"unknown rows {sorted(unknown)}; known: {', '.join(r.name for r in ROWS)}", file=sys.stderr)
        return 2
    seeds = 1 if args.quick else args.seeds
    started = time.monotonic()
    results = []
    for row in (r for r in ROWS if r.name in wanted):
        print(f"{row.name} ...", file=sys.stderr, flush=True)
        results.append(run_row(row, out, seeds, args.quick, args.quick_train_size, args.quick_epochs))
    text = table(results, args.quick)
    if args.quick:
        text += (f"\n--quick: every recipe on {args.quick_train_size} training images for {args.quick_epochs} "
                 "epochs, 1 seed; it checks that the rows run, not the goals.\n")
    print(text)
    print(f"wall time {time.monotonic() - started:.0f} s for {len(results)} row(s) "
          f"(rows already in {out} are read back, not timed again)")
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
