"""The tutorial's program against `digitlab train --model seed-ann`, side by side, several seeds each.

    python bench/seed.py                 # 3 seeds each, prints a Markdown table
    python bench/seed.py --seeds 1 --also-tf
    python bench/seed.py --seeds 1 --epochs 1 --train-size 1000     # a smoke run: seconds, not minutes

"tutorial" is the tutorial's code as written (plain Keras on TensorFlow, `model.fit` on the arrays with the
test set as validation data every epoch, batch 32, 10 epochs), fed by our loader since its download address
is unreachable here. "digitlab" is `digitlab train --model seed-ann --val test`: the same model, optimiser,
batch size, epochs and validation, trained by our epoch loop on the backend digitlab picks for dense
networks. Each run is a fresh process; training seconds are the wall time of the training epochs
(validation included, start-up and data loading excluded) for both. --epochs and --train-size shrink both
programs alike (the same seeded, stratified subset of the training images) for a quick check.
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


def run_tutorial(seed: int, epochs: int = 10, train_size: int = 0) -> dict:
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", TUTORIAL, str(seed), str(epochs), str(train_size)], env=env,
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_digitlab(seed: int, backend: str | None, epochs: int = 10, train_size: int = 0) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("KERAS_BACKEND", None)
    if backend:
        env["KERAS_BACKEND"] = backend
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        size = ["--train-size", str(train_size)] if train_size else []
        subprocess.run([sys.executable, "-m", "digitlab", "train", "--model", "seed-ann", "--val", "test",
                        "--epochs", str(epochs), *size, "--seed", str(seed), "--out", str(run), "--quiet",
                        "--no-export"], env=env, check=True, capture_output=True, text=True)
        m = read_metrics(run)
    return {"seconds": m.train_seconds, "accuracy": m.test_accuracy, "backend": m.keras_backend}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--also-tf", action="store_true", help="add digitlab forced onto TensorFlow")
    parser.add_argument("--epochs", type=int, default=10, help="epochs for both programs (the tutorial's: 10)")
    parser.add_argument("--train-size", type=int, default=0, help="train both on this many images (default: all)")
    args = parser.parse_args(argv)
    size = dict(epochs=args.epochs, train_size=args.train_size)
    contenders = [("tutorial (plain Keras)", lambda s: run_tutorial(s, **size)),
                  ("digitlab train", lambda s: run_digitlab(s, None, **size))]
    if args.also_tf:
        contenders.append(("digitlab train, KERAS_BACKEND=tensorflow", lambda s: run_digitlab(s, "tensorflow", **size)))
    results = {name: [] for name, _ in contenders}
    for seed in range(args.seeds):  # interleaved, so machine noise hits every contender alike
        for name, fn in contenders:
            r = fn(seed)
            results[name].append(r)
            print(f"# seed {seed} {name}: {r['seconds']:.1f} s, accuracy {r['accuracy']:.4f} ({r['backend']})",
                  file=sys.stderr, flush=True)
    base = statistics.mean(r["seconds"] for r in results[contenders[0][0]])
    print("| program | backend | seeds | training s (mean ± sd) | test accuracy (mean ± sd) | time ratio |")
    print("|---|---|---|---|---|---|")
    for name, rs in results.items():
        secs = [r["seconds"] for r in rs]
        accs = [r["accuracy"] * 100 for r in rs]
        sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
        print(f"| {name} | {rs[0]['backend']} | {len(rs)} | {statistics.mean(secs):.1f} ± {sd(secs):.1f} | "
              f"{statistics.mean(accs):.2f}% ± {sd(accs):.2f} | {statistics.mean(secs) / base:.2f} |")


if __name__ == "__main__":
    main()
