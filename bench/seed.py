"""The tutorial's program against `digitlab train --model seed-ann`, side by side, several seeds each.

    python bench/seed.py                 # 3 seeds each, prints a Markdown table
    python bench/seed.py --seeds 1 --also-tf
    python bench/seed.py --seeds 1 --epochs 1 --train-size 1000     # a smoke run: seconds, not minutes

"tutorial" is the tutorial's code as written (plain Keras, `model.fit` on the arrays with the test set as
validation data every epoch, batch 32, 10 epochs), fed by our loader since its download address is
unreachable here; it runs on TensorFlow as written, and on JAX (the backend digitlab trains dense networks on,
so the fair baseline for speed). "digitlab, the main job" is the quickstart's command, `digitlab train
--model seed-ann`: 55,000 training images and 5,000 held out for validation, then the evaluation, report,
trust model and ONNX export. "--val test" trains on the tutorial's split (60,000, validating on the test set
every epoch) without the export; "--engine fit" is that with Keras' own fit loop instead of the scan engine.

Columns: the whole process's wall time (start to exit: imports, data, training, evaluation, report; for
digitlab also the export), the training time (the epochs, validation included, for every program), the test
accuracy, and the two time ratios against the tutorial on JAX. Each run is a fresh process, the contenders
interleaved seed by seed so that machine noise hits them alike. --epochs and --train-size shrink every
program alike (the same seeded, stratified subset of the training images) for a quick check.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from digitlab.runs import read_metrics

TUTORIAL = textwrap.dedent("""
    import json, sys, time
    import keras
    from digitlab.data import load_mnist, subset_training, validation_split
    seed, epochs, train_size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    keras.utils.set_random_seed(seed)
    ds = load_mnist()
    split = validation_split(ds, "test")  # the tutorial validates on the test set
    if train_size:  # the images `digitlab train --train-size` picks
        split = subset_training(split, train_size, seed=seed)
    x_train, x_test = split.x_train / 255.0, ds.x_test / 255.0   # as in the tutorial
    y_train, y_test = split.y_train, ds.y_test
    model = keras.models.Sequential([
        keras.Input((28, 28)),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation='relu'),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(10, activation='softmax'),
    ])
    model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])
    start = time.perf_counter()
    r = model.fit(x_train, y_train, validation_data=(x_test, y_test), epochs=epochs, verbose=0)
    seconds = time.perf_counter() - start
    loss, acc = model.evaluate(x_test, y_test, verbose=0)
    print(json.dumps({"seconds": seconds, "accuracy": acc, "backend": keras.backend.backend()}))
""")


def run_tutorial(seed: int, backend: str = "tensorflow", epochs: int = 10, train_size: int = 0) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", TUTORIAL, str(seed), str(epochs), str(train_size)], env=env,
                         check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - start
    return {**json.loads(out.strip().splitlines()[-1]), "wall": wall}


def run_digitlab(seed: int, flags: list[str], epochs: int = 10, train_size: int = 0,
                 backend: str | None = None) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("KERAS_BACKEND", None)  # the backend digitlab picks for the model, unless `backend` says
    if backend:
        env["KERAS_BACKEND"] = backend
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        size = ["--train-size", str(train_size)] if train_size else []
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "digitlab", "train", "--model", "seed-ann", *flags,
                        "--epochs", str(epochs), *size, "--seed", str(seed), "--out", str(run), "--quiet"],
                       env=env, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - start
        m = read_metrics(run)
    return {"seconds": m.train_seconds, "accuracy": m.test_accuracy, "backend": m.keras_backend, "wall": wall}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--also-tf", action="store_true", help="add digitlab forced onto TensorFlow")
    parser.add_argument("--epochs", type=int, default=10, help="epochs for every program (the tutorial's: 10)")
    parser.add_argument("--train-size", type=int, default=0, help="train all on this many images (default: all)")
    args = parser.parse_args(argv)
    size = dict(epochs=args.epochs, train_size=args.train_size)
    baseline = "tutorial (plain Keras), on JAX"
    contenders = [("tutorial (plain Keras), as written", lambda s: run_tutorial(s, "tensorflow", **size)),
                  (baseline, lambda s: run_tutorial(s, "jax", **size)),
                  ("digitlab, the main job (quickstart)", lambda s: run_digitlab(s, [], **size)),
                  ("digitlab --val test --no-export", lambda s: run_digitlab(s, ["--val", "test", "--no-export"],
                                                                             **size)),
                  ("digitlab --val test --no-export --engine fit",
                   lambda s: run_digitlab(s, ["--val", "test", "--no-export", "--engine", "fit"], **size))]
    if args.also_tf:
        contenders.append(("digitlab --val test --no-export, KERAS_BACKEND=tensorflow",
                           lambda s: run_digitlab(s, ["--val", "test", "--no-export"], backend="tensorflow", **size)))
    results = {name: [] for name, _ in contenders}
    for seed in range(args.seeds):  # interleaved, so machine noise hits every contender alike
        for name, fn in contenders:
            r = fn(seed)
            results[name].append(r)
            print(f"# seed {seed} {name}: process {r['wall']:.1f} s, training {r['seconds']:.1f} s, accuracy "
                  f"{r['accuracy']:.4f} ({r['backend']})", file=sys.stderr, flush=True)
    base_wall = statistics.mean(r["wall"] for r in results[baseline])
    base_train = statistics.mean(r["seconds"] for r in results[baseline])
    print("| program | backend | seeds | process s (mean ± sd) | training s (mean ± sd) | test accuracy (mean ± sd) "
          "| process / tutorial on JAX | training / tutorial's fit on JAX |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rs in results.items():
        walls, secs = [r["wall"] for r in rs], [r["seconds"] for r in rs]
        accs = [r["accuracy"] * 100 for r in rs]
        print(f"| {name} | {rs[0]['backend']} | {len(rs)} | {_mean_sd(walls, 1)} | {_mean_sd(secs, 1)} | "
              f"{_mean_sd(accs, 2, '%')} | {statistics.mean(walls) / base_wall:.2f} | "
              f"{statistics.mean(secs) / base_train:.2f} |")


def _mean_sd(values: list[float], digits: int, unit: str = "") -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f}{unit} ± {sd:.{digits}f}"


if __name__ == "__main__":
    main()
