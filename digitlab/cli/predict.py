"""`digitlab predict RUN INPUT...`: read digits from image files, folders and .npy arrays.

    digitlab predict runs/20261126-071500-seed-ann-s0 my_7.png scans/ --save-input seen/
    digitlab predict runs/... digits.npy --json

Exit status: 0 when every input was predicted, 1 when any input failed (the others are still
reported), 2 for usage problems (no such run, a model file that can't be loaded, an unwritable
--save-input folder).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from digitlab.cli import fail, run_family


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="predict the digit in image files, folders of images or .npy arrays",
        description="Each image is normalised as MNIST was (ink bright on black, 20 px box, centred by "
                    "mass in 28x28); .npy files must already hold 28x28 MNIST-style digits.")
    p.add_argument("run", metavar="RUN", help="a run directory (from `digitlab train`)")
    p.add_argument("inputs", metavar="INPUT", nargs="+",
                   help="image files (PNG, JPEG, BMP, GIF, WebP, TIFF), .npy arrays, or folders of them")
    p.add_argument("--json", action="store_true", help="print one JSON list instead of text lines")
    p.add_argument("--save-input", metavar="DIR", type=Path,
                   help="write each 28x28 image the model saw to DIR as PNG, to check the preprocessing")
    p.set_defaults(func=run, family=lambda args: run_family(args.run))


def run(args) -> int:
    from digitlab.prediction import predict_paths
    from digitlab.predictor import Predictor
    from digitlab.runs import open_run
    the_run = open_run(args.run)
    predictor = Predictor.from_run(the_run)  # now: a broken model file is one clear error, not one per input
    try:
        results = predict_paths(predictor, args.inputs, save_input_dir=args.save_input)
    except OSError as exc:  # the --save-input folder; reading inputs reports per file instead
        return fail(f"cannot write to --save-input {args.save_input}: {exc.strerror or exc}")

    names = list(the_run.class_names)
    if args.json:
        print(json.dumps([_with_label(r.to_json(), names) for r in results], indent=2))
    else:
        for r in results:
            where = r.path if r.index is None else f"{r.path}[{r.index}]"
            if r.error:
                print(f"{where}: ERROR {r.error}", file=sys.stderr)
            else:
                top = ", ".join(f"{_label(c, names)} {p:.3f}" for c, p in r.top3)
                print(f"{where}: {_noun(names)} {_label(r.digit, names)} (p={r.probability:.3f})  top3: {top}")
    return 1 if any(r.error for r in results) else 0


def _is_digits(names: list[str]) -> bool:
    return names == [str(i) for i in range(len(names))]


def _noun(names: list[str]) -> str:
    return "digit" if _is_digits(names) else "class"


def _label(c: int, names: list[str]) -> str:
    # Fashion-MNIST runs name their classes; digits are their own names.
    return str(c) if _is_digits(names) or c >= len(names) else f"{c}:{names[c]}"


def _with_label(item: dict, names: list[str]) -> dict:
    d = item["digit"]
    item["label"] = None if d is None else (names[d] if d < len(names) else str(d))
    return item
