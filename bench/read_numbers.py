"""Numbers benchmark: how often `digitlab.numbers.read_number` reads a whole number right; a Markdown table.

    python bench/read_numbers.py /tmp/runs/seed-ann /tmp/runs/fastcnn          # 300 4-digit numbers per level
    python bench/read_numbers.py RUN --count 50 --digits 2-6 --mode number      # any lengths, forced number mode
    python bench/read_numbers.py RUN --runtime keras                   # model.keras even if there is an ONNX file
    python bench/read_numbers.py --sheet /tmp/numbers                           # pictures of each level's first numbers

Levels, each built afresh from a seed (the same numbers for every model):
- clear / close / touching: MNIST *test* digits cropped to their ink, scaled 0.85-1.15x, jittered
  up or down by up to 2 px and set side by side with gaps between their ink boxes of 4-8 px
  (clear), 0-2 px (close) or -3..0 px (touching: boxes meeting or overlapping by up to 3 px).
  MNIST digits are about 20 px tall, so 4 px is a fifth of a digit.
- drawn: numbers written with a pen from digitlab.drawing's stroke templates (those of the
  drawn-digit test: a 4 in two strokes, a 9 as a loop and a tail), jittered per digit, with gaps of
  0.12-0.45 digit heights, at a thin (2-3 px), medium (5-9 px) or thick (12-18 px) pen, 45-220 px
  tall, dark on light or light on dark; 40% of the 4s are open (the two strokes apart), of the 5s
  have a detached top bar, of the 7s a crossbar.
Single digits in `auto` mode: the 10,000 MNIST test digits and the drawn-digit test's 160 drawings
(half of them inverted), each must be read as one digit, with the accuracy `digitlab predict` gets
(to_mnist, then the model).

Whole-number accuracy counts exact strings; per-digit accuracy is 1 - edit distance / length
(a digit missed, added or misread costs one). Each run is measured in its own process, on the
runtime `digitlab predict` would use: the run's checked model.onnx if it has one, else model.keras
on the Keras backend its family runs fastest on (`digitlab.backend`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from digitlab.drawing import DIGITS, SUPERSAMPLE, Stroke, arc, curve, drawings, render_strokes, segment, to_gray

LEVELS = ("clear", "close", "touching", "drawn")
GAPS = {"clear": (4, 8), "close": (0, 2), "touching": (-3, 0)}  # px between ink boxes, inclusive
SCALE = (0.85, 1.15)  # each MNIST digit resized by a factor from this range
JITTER = 2  # px up or down, each MNIST digit
MARGIN = 6  # px of background around an MNIST number
SEED = 12

# Goals from issue 12 (whole 4-digit numbers exact). Keyed by level, then by model family name.
GOALS = {("clear", "bestcnn"): 0.985, ("clear", "seed-ann"): 0.93, ("close", None): 0.97,
         ("touching", None): 0.90, ("drawn", "bestcnn"): 0.97}
SPEED_GOAL_MS = 10.0  # a 6-digit number


# ---------------------------------------------------------------- numbers from MNIST test digits

def mnist_number(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator, n: int, level: str):
    """(picture (H, W) float32 ink bright on black, text, boxes as (left, top, width, height))."""
    pieces = []
    for i in rng.choice(len(images), n, replace=False):
        im = images[i].astype(np.float32) / 255
        rows, cols = np.flatnonzero(im.any(1)), np.flatnonzero(im.any(0))
        im = im[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        s = rng.uniform(*SCALE)
        size = (max(1, round(im.shape[1] * s)), max(1, round(im.shape[0] * s)))
        im = np.clip(np.asarray(Image.fromarray(im).resize(size, Image.Resampling.BILINEAR)), 0, 1)
        pieces.append((str(labels[i]), im, int(rng.integers(-JITTER, JITTER + 1))))
    tallest = max(p[1].shape[0] for p in pieces)
    gaps = [int(rng.integers(GAPS[level][0], GAPS[level][1] + 1)) for _ in range(n - 1)] + [0]
    width = sum(p[1].shape[1] for p in pieces) + sum(gaps) + 2 * MARGIN
    canvas = np.zeros((tallest + 2 * (MARGIN + JITTER), width), dtype=np.float32)
    boxes, left = [], MARGIN
    for (_, im, dy), gap in zip(pieces, gaps, strict=True):
        h, w = im.shape
        top = MARGIN + JITTER + (tallest - h) // 2 + dy
        region = canvas[top:top + h, left:left + w]
        np.maximum(region, im, out=region)  # overlapping digits: the darker ink wins, as on paper
        boxes.append((left, top, w, h))
        left += w + gap
    return canvas, "".join(p[0] for p in pieces), boxes


# ---------------------------------------------------------------- hand-drawn numbers

# The digit templates of digitlab.drawing (x in about [0, 0.6], y in [0, 1]), and three ways of
# writing a digit in pieces that a segmenter must put back together.
TEMPLATES: dict[str, list[Stroke]] = {str(d): strokes for d, strokes in DIGITS.items()} | {
    # An open 4: the bar stops short of the upright, so the two strokes don't touch.
    "4-open": [segment((0.3, 0.0), (0.0, 0.62), 14) + segment((0.0, 0.62), (0.36, 0.6), 8),
               segment((0.5, 0.15), (0.48, 1.0), 16)],
    # A 5 whose top bar was written separately, lifted off the upright.
    "5-bar": [segment((0.1, 0.1), (0.07, 0.44), 10) + arc(0.3, 0.7, 0.28, 0.28, 145, -160, 40),
              segment((0.16, 0.0), (0.6, -0.02), 10)],
    # A continental 7: a bar across the stem.
    "7-cross": [segment((0.0, 0.04), (0.62, 0.0), 12) + curve((0.62, 0.0), (0.35, 0.45), (0.24, 1.0)),
                segment((0.16, 0.52), (0.56, 0.5), 10)],
    # Not digits: a decimal point on the baseline and a minus sign, which the reader leaves out.
    ".": [segment((0.0, 0.96), (0.01, 0.96), 2)],
    "-": [segment((0.0, 0.55), (0.3, 0.53), 6)],
}
VARIANT_OF = {"4": "4-open", "5": "5-bar", "7": "7-cross"}


@dataclass(frozen=True)
class Pen:
    """A pen and a size of writing, in canvas pixels."""
    name: str
    width: tuple[float, float]  # stroke width range
    height: tuple[float, float]  # digit height range


PENS = [Pen("thin", (2, 3), (45, 120)), Pen("medium", (5, 9), (80, 150)), Pen("thick", (12, 18), (130, 220))]


def _jittered(strokes: list[Stroke], height: float, rng: np.random.Generator) -> list[np.ndarray]:
    """A digit's strokes as a person might write them: slanted, turned, widened, wobbly; px, centred on 0.

    The jitter of digitlab.drawing.draw_template, without its placing on a square canvas."""
    slant, turn = rng.uniform(-0.15, 0.35), math.radians(rng.uniform(-8, 8))
    widen = rng.uniform(0.8, 1.2)
    out = []
    for stroke in strokes:
        p = np.array(stroke, dtype=float)
        wobble = np.cumsum(rng.normal(0, 0.006, p.shape), axis=0)
        p = p + wobble - wobble.mean(0)
        x, y = (p[:, 0] - 0.3) * widen, p[:, 1] - 0.5
        x = x - slant * y
        x, y = x * math.cos(turn) - y * math.sin(turn), x * math.sin(turn) + y * math.cos(turn)
        out.append(np.stack([x, y], 1) * height)
    return out


def draw_number(glyphs: list[str], rng: np.random.Generator, pen: Pen, *, light_on_dark: bool = False,
                gap: tuple[float, float] = (0.12, 0.45)):
    """Write `glyphs` (TEMPLATES keys) side by side; (picture as float32 (H, W) in [0, 1], boxes).

    `gap` is the space between neighbouring digits' ink, as a fraction of the digit height.
    Boxes are (left, top, width, height) of each digit's ink, in the picture's pixels.
    """
    width = rng.uniform(*pen.width)
    height = rng.uniform(*pen.height)
    digits, left = [], 0.0
    for glyph in glyphs:
        strokes = _jittered(TEMPLATES[glyph], height * rng.uniform(0.9, 1.1), rng)
        pts = np.concatenate(strokes)
        shift = np.array([left - pts[:, 0].min(), rng.uniform(-0.06, 0.06) * height])
        strokes = [s + shift for s in strokes]
        digits.append(strokes)
        left = max(s[:, 0].max() for s in strokes) + width + rng.uniform(*gap) * height
    pts = np.concatenate([p for d in digits for p in d])
    margin = 0.25 * height + width
    offset = margin - pts.min(0)
    size = np.ceil(pts.max(0) - pts.min(0) + 2 * margin).astype(int)
    im = Image.new("L", (int(size[0]) * SUPERSAMPLE, int(size[1]) * SUPERSAMPLE), 255)
    ink = int(rng.integers(0, 60))  # pencil-grey to black
    boxes = []
    for strokes in digits:
        render_strokes([stroke + offset for stroke in strokes], width, ink, supersample=SUPERSAMPLE, image=im)
        p = np.concatenate(strokes) + offset
        lo, hi = p.min(0) - width / 2, p.max(0) + width / 2
        boxes.append((int(lo[0]), int(lo[1]), int(math.ceil(hi[0] - lo[0])), int(math.ceil(hi[1] - lo[1]))))
    gray = to_gray(im.reduce(SUPERSAMPLE))
    return (1 - gray if light_on_dark else gray), boxes


def drawn_number(rng: np.random.Generator, n: int):
    """A random n-digit number written with a random pen and polarity: (picture, text, boxes)."""
    text = "".join(str(d) for d in rng.integers(0, 10, n))
    glyphs = [VARIANT_OF[c] if c in VARIANT_OF and rng.random() < 0.4 else c for c in text]
    pen = PENS[int(rng.integers(len(PENS)))]
    gray, boxes = draw_number(glyphs, rng, pen, light_on_dark=bool(rng.random() < 0.5))
    return gray, text, boxes


def make_numbers(level: str, count: int, lengths: tuple[int, int], seed: int = SEED, dataset=None):
    """`count` (picture, text, boxes) of `level`, lengths drawn from lengths[0]..lengths[1]."""
    rng = np.random.default_rng([seed, LEVELS.index(level)])
    out = []
    for _ in range(count):
        n = int(rng.integers(lengths[0], lengths[1] + 1))
        if level == "drawn":
            out.append(drawn_number(rng, n))
        else:
            out.append(mnist_number(dataset.x_test, dataset.y_test, rng, n, level))
    return out


# ---------------------------------------------------------------- scoring

def edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def score(truth: list[str], read: list[str]) -> tuple[float, float]:
    """(whole-number accuracy, per-digit accuracy = 1 - edit distance / length, floored at 0)."""
    exact = np.mean([t == r for t, r in zip(truth, read, strict=True)])
    per_digit = np.mean([max(0.0, 1 - edit_distance(t, r) / len(t)) for t, r in zip(truth, read, strict=True)])
    return float(exact), float(per_digit)


def single_digits(predictor, dataset, count: int) -> dict:
    """Single digits in auto mode: MNIST test digits and drawn ones, against the single-digit path."""
    from digitlab.numbers import read_number
    from digitlab.preprocessing import to_mnist

    x, y = dataset.x_test[:count], dataset.y_test[:count]
    plain = predictor.predict_proba(np.stack([to_mnist(im) for im in x])).argmax(1)
    read = [read_number(im, predictor).text for im in x]
    drawn = []  # the drawn-digit test's 160 drawings (tests/test_drawn_digits.py), both polarities
    for seed in (0, 1):
        for k, (_, digit, im) in enumerate(drawings(seed)):
            gray = to_gray(im)
            drawn.append((str(digit), 1 - gray if (k + seed) % 2 else gray))
    drawn_plain = predictor.predict_proba(np.stack([to_mnist(g) for _, g in drawn])).argmax(1)
    drawn_read = [read_number(g, predictor).text for _, g in drawn]
    return {"mnist_count": len(x), "mnist_split": sum(len(r) != 1 for r in read),
            "mnist_plain_accuracy": float(np.mean(plain == y)),
            "mnist_auto_accuracy": float(np.mean([r == str(t) for r, t in zip(read, y, strict=True)])),
            "drawn_count": len(drawn), "drawn_split": sum(len(r) != 1 for r in drawn_read),
            "drawn_plain_accuracy": float(np.mean([str(p) == g for p, (g, _) in zip(drawn_plain, drawn, strict=True)])),
            "drawn_auto_accuracy": float(np.mean([r == g for r, (g, _) in zip(drawn_read, drawn, strict=True)]))}


def speed(predictor, dataset, repeats: int = 30) -> dict:
    """Median ms to read a 6-digit number, per level (after one warm-up read)."""
    from digitlab.numbers import read_number

    out = {}
    for level in LEVELS:
        numbers = make_numbers(level, repeats, (6, 6), seed=SEED + 1, dataset=dataset)
        read_number(numbers[0][0], predictor)
        times = []
        for gray, _, _ in numbers:
            t = time.perf_counter()
            read_number(gray, predictor)
            times.append(1e3 * (time.perf_counter() - t))
        out[level] = float(np.median(times))
    return out


def measure(run_path: str, count: int, lengths: tuple[int, int], mode: str, singles: int, failures: int,
            runtime: str = "auto") -> dict:
    """Everything for one run, in this process (whose Keras backend suits the run)."""
    from digitlab.backend import choose_backend
    from digitlab.runs import open_run

    run = open_run(run_path)
    choose_backend(run.family)
    from digitlab.data import load_mnist
    from digitlab.numbers import read_number
    from digitlab.predictor import Predictor

    predictor = Predictor.from_run(run, runtime=runtime)
    dataset = load_mnist()
    result = {"run": run_path, "model": run.config.model, "runtime": predictor.runtime, "levels": {}}
    for level in LEVELS:
        numbers = make_numbers(level, count, lengths, dataset=dataset)
        t = time.perf_counter()
        read = [read_number(g, predictor, mode=mode).text for g, _, _ in numbers]
        seconds = time.perf_counter() - t
        truth = [text for _, text, _ in numbers]
        exact, per_digit = score(truth, read)
        wrong = [(t, r) for t, r in zip(truth, read, strict=True) if t != r]
        result["levels"][level] = {"exact": exact, "per_digit": per_digit, "count": count,
                                   "ms_mean": 1e3 * seconds / count, "wrong": wrong[:failures]}
    result["speed_ms_6_digits"] = speed(predictor, dataset)
    if singles:
        result["single"] = single_digits(predictor, dataset, singles)
    return result


# ---------------------------------------------------------------- the table

def goal_for(level: str, model: str) -> float | None:
    return GOALS.get((level, model), GOALS.get((level, None)))


def table(results: list[dict], lengths: tuple[int, int]) -> str:
    span = f"{lengths[0]}" if lengths[0] == lengths[1] else f"{lengths[0]}-{lengths[1]}"
    lines = [f"| model | level | whole {span}-digit numbers | per digit | ms per number | goal |",
             "|---|---|---|---|---|---|"]
    for r in results:
        name = f"{r['model']} ({r['runtime']})"
        for level, m in r["levels"].items():
            goal = goal_for(level, r["model"])
            verdict = "" if goal is None else f"{goal:.1%}: {'met' if m['exact'] >= goal else 'not met'}"
            lines.append(f"| {name} | {level} | {m['exact']:.1%} ({m['count']}) | {m['per_digit']:.1%} "
                         f"| {m['ms_mean']:.1f} | {verdict} |")
    lines += ["", "| model | 6-digit number, ms (median): clear | close | touching | drawn "
              f"| goal: < {SPEED_GOAL_MS:.0f} ms |", "|---|---|---|---|---|---|"]
    for r in results:
        s = r["speed_ms_6_digits"]
        met = [k for k in LEVELS if s[k] < SPEED_GOAL_MS]
        verdict = "met" if len(met) == len(LEVELS) else f"met for {', '.join(met)}" if met else "not met"
        lines.append(f"| {r['model']} ({r['runtime']}) | " + " | ".join(f"{s[k]:.1f}" for k in LEVELS)
                     + f" | {verdict} |")
    singles = [r for r in results if "single" in r]
    if singles:
        lines += ["", "| model | MNIST test digits in auto mode: split | accuracy (predict's) "
                  "| drawn digits: split | accuracy (predict's) |", "|---|---|---|---|---|"]
        for r in singles:
            s = r["single"]
            lines.append(f"| {r['model']} ({r['runtime']}) | {s['mnist_split']} of {s['mnist_count']} "
                         f"| {s['mnist_auto_accuracy']:.2%} ({s['mnist_plain_accuracy']:.2%}) "
                         f"| {s['drawn_split']} of {s['drawn_count']} "
                         f"| {s['drawn_auto_accuracy']:.2%} ({s['drawn_plain_accuracy']:.2%}) |")
    return "\n".join(lines)


def sheet(path: str, level: str, count: int, lengths: tuple[int, int]) -> None:
    """A picture of the first numbers of a level, to look at what the bench builds."""
    from digitlab.data import load_mnist

    numbers = make_numbers(level, count, lengths, dataset=load_mnist() if level != "drawn" else None)
    rows = []
    for gray, _, _ in numbers:
        im = Image.fromarray(np.round(gray * 255).astype(np.uint8))
        rows.append(im.resize((max(1, round(im.width * 60 / im.height)), 60)))
    out = Image.new("L", (max(r.width for r in rows), 64 * len(rows)), 128)
    for k, r in enumerate(rows):
        out.paste(r, (0, 64 * k))
    out.save(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", help="run directories to measure")
    ap.add_argument("--count", type=int, default=300, help="numbers per level (default 300)")
    ap.add_argument("--digits", default="4", help="number length, N or MIN-MAX (default 4)")
    ap.add_argument("--mode", default="auto", choices=["auto", "number"])
    ap.add_argument("--runtime", default="auto", choices=["auto", "onnx", "keras"],
                    help="as Predictor.from_run: auto = the checked model.onnx if the run has one")
    ap.add_argument("--singles", type=int, default=10000, help="MNIST test digits for the single-digit check (0: skip)")
    ap.add_argument("--failures", type=int, default=5, help="misread numbers to list per level")
    ap.add_argument("--sheet", help="write a picture of some numbers of each level to this PNG prefix")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one run, print JSON
    args = ap.parse_args(argv)
    lo, _, hi = args.digits.partition("-")
    lengths = (int(lo), int(hi or lo))
    if args.sheet:
        for level in LEVELS:
            sheet(f"{args.sheet}-{level}.png", level, 12, lengths)
            print(f"wrote {args.sheet}-{level}.png")
    if args.one:
        print(json.dumps(measure(args.one, args.count, lengths, args.mode, args.singles, args.failures,
                                 args.runtime)))
        return 0
    results = []
    for run in args.runs:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        cmd = [sys.executable, __file__, "--one", run, "--count", str(args.count), "--digits", args.digits,
               "--mode", args.mode, "--singles", str(args.singles), "--failures", str(args.failures),
               "--runtime", args.runtime]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode:
            sys.stderr.write(proc.stderr)
            return proc.returncode
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        for level, m in results[-1]["levels"].items():
            for t, r in m["wrong"]:
                print(f"{results[-1]['model']} {level}: {t} read as {r}", file=sys.stderr)
    if results:
        print(table(results, lengths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
