"""`digitlab predict RUN INPUT...`: read digits and whole numbers from image files, folders and .npy arrays.

    digitlab predict runs/20261126-071500-seed-ann-s0 my_7.png scans/ --save-input seen/
    digitlab predict runs/... meter.png my_7.png --mode auto      # meter.png: number 1207 (p=0.930) ...
    digitlab predict runs/... meter.png --mode number --json      # the digits' boxes, probabilities, verdicts
    digitlab predict runs/... digits.npy --json
    digitlab predict runs/... scribble.png --explain why/         # + why/scribble-explain.png
    digitlab predict runs/... my_7.png --threshold 0.9 --ood-threshold 250

Each input gets one verdict (docs/trust.md): "digit 7 (p=0.998)", "unsure: 7 or 1? (p=0.55)", "not a
digit (best guess 4, p=0.91)" or "blank (no ink found)". The probabilities are calibrated by the run's
trust model; --threshold and --ood-threshold override the thresholds `digitlab evaluate` fitted.

Whole numbers (issue 12, docs/numbers.md): --mode auto reads an image as one digit, exactly as --mode
digit does, unless its ink clearly holds several digits; then it prints "meter.png: number 1207 (p=0.930)
digits: 1 0.998, 2 0.990, ...  unsure at position: 3" (p is the product of the digits' probabilities;
positions count from 1; every digit is judged by the trust model, and any whose verdict is not "digit" is
named). --mode number always looks for several digits (touching ones too: auto reads those as one digit).
--mode digit never does (the API's default, whose numbers answer another schema). auto is the default: it
reads noise, dashes and frames as one digit, "not a digit", as --mode digit does (docs/numbers.md). With --json
a number is its NumberReading (text, confidence, 0-based unsure_positions, mode, per digit
box/probabilities/verdict, marks) plus path and error (null). --save-input and --explain write one PNG
per digit of a number, <stem>-<position>-28x28.png. .npy arrays hold 28x28 digits already:
every entry is read as one digit, whatever the mode. Runs whose classes are not the digits 0-9
(Fashion-MNIST) read one item per image: auto means digit there, and number is refused.

Exit status: 0 when every input was read (whatever its verdict: a verdict is not an error, nor is a blank
image, nor an unsure digit in a number), 1 when any input could not be read (not an image, more than 32
digits; the others are still reported), 2 for usage problems (no such run, a model file that can't be
loaded, an unwritable --save-input or --explain folder, a threshold out of range, an unknown --mode).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from digitlab.cli import fail, run_family
from digitlab.errors import ConfigError
from digitlab.numbers import MODES


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="predict the digit in image files, folders of images or .npy arrays",
        description="Each image is normalised as MNIST was (ink bright on black, 20 px box, centred by "
                    "mass in 28x28); .npy files must already hold 28x28 MNIST-style digits.")
    p.add_argument("run", metavar="RUN", help="a run directory (from `digitlab train`)")
    p.add_argument("inputs", metavar="INPUT", nargs="+",
                   help="image files (PNG, JPEG, BMP, GIF, WebP, TIFF), .npy arrays, or folders of them")
    p.add_argument("--mode", choices=MODES, default="auto",
                   help="number: read the digits of a whole number, left to right; auto (default): one digit "
                        "unless the ink clearly holds several; digit: each image is one digit")
    p.add_argument("--json", action="store_true", help="print one JSON list instead of text lines")
    p.add_argument("--save-input", metavar="DIR", type=Path,
                   help="write each 28x28 image the model saw to DIR as PNG, to check the preprocessing")
    p.add_argument("--explain", metavar="DIR", type=Path,
                   help="write an occlusion map of each input to DIR as PNG: red where the ink supports the best "
                        "guess, blue where it speaks against it")
    p.add_argument("--threshold", metavar="P", type=float,
                   help="answer a digit only at this calibrated probability or above (0-1; default: the run's, "
                        "fitted by `digitlab evaluate`); below it the verdict is unsure")
    p.add_argument("--ood-threshold", metavar="S", type=float,
                   help="call an input not a digit when its out-of-distribution score is above S (default: the "
                        "run's; report.html shows the scores); 'inf' never does")
    p.set_defaults(func=run, family=lambda args: run_family(args.run))


def run(args) -> int:
    from digitlab.prediction import FileNumber, read_paths
    from digitlab.predictor import Predictor
    from digitlab.runs import open_run
    _check_thresholds(args)
    the_run = open_run(args.run)
    predictor = Predictor.from_run(the_run)  # now: a broken model file is one clear error, not one per input
    names = list(the_run.class_names)
    mode = _mode_for(args.mode, names)
    if args.threshold is not None or args.ood_threshold is not None:
        predictor = predictor.with_thresholds(args.threshold, args.ood_threshold)
    for flag, folder in (("--save-input", args.save_input), ("--explain", args.explain)):
        try:
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)  # before the model runs, not after
        except OSError as exc:
            return fail(f"cannot write to {flag} {folder}: {exc.strerror or exc}")
    try:
        results = read_paths(predictor, args.inputs, mode, save_input_dir=args.save_input, explain_dir=args.explain)
    except OSError as exc:  # writing into those folders; reading inputs reports per file instead
        return fail(f"cannot write {exc.filename or 'to the output folder'}: {exc.strerror or exc}")

    if mode == "number" and any(r.path.lower().endswith(".npy") for r in results):
        print("note: .npy arrays hold 28x28 digits already: each entry is read as one digit, not as a number",
              file=sys.stderr)
    if args.json:
        print(json.dumps([r.to_json() if isinstance(r, FileNumber) else {**_with_label(r.to_json(), names),
                                                                         "mode": "digit"}
                          for r in results], indent=2))
    else:
        for r in results:
            if isinstance(r, FileNumber):
                print(f"{r.path}: {_number_line(r.reading)}")
                continue
            where = r.path if r.index is None else f"{r.path}[{r.index}]"
            if r.error:
                print(f"{where}: ERROR {r.error}", file=sys.stderr)
            else:
                print(f"{where}: {_verdict_line(r, names)}")
    return 1 if any(r.error for r in results) else 0


def _mode_for(mode: str, names: list[str]) -> str:
    """The reading mode for this run: numbers are made of digits, so other classes are read one per image."""
    if _is_digits(names) and len(names) == 10:
        return mode
    if mode == "number":
        raise ConfigError(f"--mode number reads digits, and this run's classes are {', '.join(names[:3])}...: "
                          "use --mode digit (one item per image)")
    return "digit"


_VERDICT_WORDS = {"unsure": "unsure", "not_a_digit": "not a digit", "blank": "blank"}


def _number_line(reading) -> str:
    """ "number 1207 (p=0.930)  digits: 1 0.998, 2 0.990, 0 0.975, 7 0.967  unsure at position: 3"."""
    digits = ", ".join(f"{d.digit} {d.confidence:.3f}" for d in reading.digits)
    line = f"number {reading.text} (p={reading.confidence:.3f})  digits: {digits}"
    for kind, words in _VERDICT_WORDS.items():  # positions from 1, for people
        where = [str(i + 1) for i, d in enumerate(reading.digits) if d.verdict == kind]
        if where:
            line += f"  {words} at position{'s' if len(where) > 1 else ''}: {', '.join(where)}"
    return line


def _check_thresholds(args) -> None:
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold is a probability between 0 and 1, got {args.threshold}")
    if args.ood_threshold is not None and math.isnan(args.ood_threshold):
        raise ConfigError("--ood-threshold must be a number (or inf: never 'not a digit'), got nan")


def _verdict_line(r, names: list[str]) -> str:
    """ "digit 7 (p=0.998)  top3: ...", "unsure: 7 or 1? (p=0.550)  top3: ...", "not a digit (best guess 4,
    p=0.910)  top3: ...", "blank (no ink found)"."""
    v = r.verdict
    if v.kind == "blank":
        return "blank (no ink found)"
    top = ", ".join(f"{_label(c, names)} {p:.3f}" for c, p in r.top3)
    if v.kind == "digit":
        head = f"{_noun(names)} {_label(r.digit, names)} (p={r.probability:.3f})"
    elif v.kind == "unsure":
        head = f"{v.text([_label(c, names) for c in range(len(names))])} (p={r.probability:.3f})"
    else:
        head = f"{v.text()} (best guess {_label(r.best, names)}, p={r.probability:.3f})"
    return f"{head}  top3: {top}"


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
