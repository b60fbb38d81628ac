"""int8 against float32 (`digitlab export --quantize`), and the quantizer --quantize did not pick, side by side.

    python bench/quantize.py --run runs/...-seed-ann-s0 --run runs/...-fastcnn-s0 --repeats 3

For each run (a copy in a temporary folder; the run itself is not touched): `export_run(quantize=True)`
--repeats times, then the other onnxruntime quantizer (quantize_static for a dense chain, quantize_dynamic for
a CNN) on the same model.onnx, timed the same way (digitlab.quantize._timings: one thread, both outputs, float
and int8 calls alternated). Prints a Markdown table: medians over the repeats, and the machine's load average.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np

from digitlab.data import load_dataset, scale
from digitlab.export import export_run
from digitlab.predictor import Predictor
from digitlab.quantize import _quantize_dynamic, _quantize_static, _timings
from digitlab.runs import open_run

KEYS = ("int8_us_batch", "float_us_batch", "int8_us_single", "float_us_single")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="a trained run (repeat for several)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    print("| run | quantizer | kept | size KB (float) | accuracy (float) | same top class | features off by "
          "| us/image, batch 256 (float) | us, one image (float) | load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in args.run:
        with tempfile.TemporaryDirectory() as tmp:
            run = open_run(shutil.copytree(path, Path(tmp) / "run"))
            ds = load_dataset(run.config.dataset)
            checks = [export_run(run, dataset=ds, quantize=True)["onnx"].quantized for _ in range(args.repeats)]
            q = checks[-1]
            times = {k: statistics.median(getattr(c, k) for c in checks) for k in KEYS}
            _row(run.config.model, f"{q.method} (--quantize)", q.passed, q.size_bytes, q.float_size_bytes,
                 q.accuracy, q.float_accuracy, q.same_argmax, q.max_feature_diff, times)
            other = Path(tmp) / "other.onnx"
            if q.method == "dynamic":
                _quantize_static(run.export_path("onnx"), other, scale(ds.x_train[np.linspace(
                    0, len(ds.x_train) - 1, 300).astype(int)]))
            else:
                _quantize_dynamic(run.export_path("onnx"), other)
            x, y = scale(ds.x_test), ds.y_test
            floating, int8 = Predictor.from_onnx(run.export_path("onnx")), Predictor.from_onnx(other)
            out, ref = int8.outputs(x), floating.outputs(x)
            timed = [_timings(floating, int8, x) for _ in range(args.repeats)]
            times = {k: statistics.median(t[k] for t in timed) for k in KEYS}
            feature_diff = float(np.max(np.abs(out.features - ref.features)) / np.max(np.abs(ref.features)))
            _row(run.config.model, "static" if q.method == "dynamic" else "dynamic", None, other.stat().st_size,
                 q.float_size_bytes, float(np.mean(out.proba.argmax(1) == y)), q.float_accuracy,
                 float(np.mean(out.proba.argmax(1) == ref.proba.argmax(1))), feature_diff, times)


def _row(model, how, kept, size, float_size, acc, float_acc, same, feature_diff, t) -> None:
    print(f"| {model} | {how} | {'-' if kept is None else 'yes' if kept else 'no'} | {size / 1024:.0f} "
          f"({float_size / 1024:.0f}) | {acc:.2%} ({float_acc:.2%}) | {same:.2%} | {feature_diff:.1%} | "
          f"{t['int8_us_batch']:.3g} ({t['float_us_batch']:.3g}) | {t['int8_us_single']:.3g} "
          f"({t['float_us_single']:.3g}) | {os.getloadavg()[0]:.1f} |")


if __name__ == "__main__":
    main()
