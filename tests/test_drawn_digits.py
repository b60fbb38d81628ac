"""The acceptance test for `digitlab predict`: digits drawn as a person would draw them are read correctly.

Each digit 0-9 is written with a pen on a 300x300 white canvas from a stroke template (how people
write it: a 4 as two strokes, a 9 as a loop and a tail), jittered per drawing (slant, rotation,
proportions, wobbly strokes), then placed centred or off-centre, small or large, with a thin
(2-3 px) or a thick (15-25 px) pen. The PNGs go through the real CLI and a real trained network.

    .venv/bin/python tests/test_drawn_digits.py /tmp/drawn   # write the drawings and a contact sheet
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytestmark = pytest.mark.slow  # trains a network with `digitlab train` (about 15 s on two cores)

CANVAS = 300  # px, square, white
SUPERSAMPLE = 4  # strokes are drawn this much larger, then box-averaged: anti-aliased as in a paint app

Stroke = list[tuple[float, float]]  # points in the template's frame: y down, digit height 1


# ---------------------------------------------------------------- stroke templates

def _arc(cx, cy, rx, ry, start, stop, n=40) -> Stroke:
    """Points on an ellipse from angle `start` to `stop`, degrees, counter-clockwise as seen (y down)."""
    return [(cx + rx * math.cos(math.radians(a)), cy - ry * math.sin(math.radians(a)))
            for a in np.linspace(start, stop, n)]


def _curve(p0, p1, p2, n=30) -> Stroke:
    """Quadratic Bezier from p0 to p2, pulled towards p1."""
    return [((1 - t) ** 2 * p0[0] + 2 * (1 - t) * t * p1[0] + t ** 2 * p2[0],
             (1 - t) ** 2 * p0[1] + 2 * (1 - t) * t * p1[1] + t ** 2 * p2[1]) for t in np.linspace(0, 1, n)]


def _segment(p0, p1, n=12) -> Stroke:
    return [(p0[0] + t * (p1[0] - p0[0]), p0[1] + t * (p1[1] - p0[1])) for t in np.linspace(0, 1, n)]


# The pen strokes of each digit, x in about [0, 0.6], y in [0, 1] (top to bottom).
TEMPLATES: dict[int, list[Stroke]] = {
    0: [_arc(0.3, 0.5, 0.28, 0.49, 95, 95 + 372, 80)],  # one loop from the top, closed with an overlap
    1: [_segment((0.22, 0.12), (0.36, 0.0), 4) + _segment((0.36, 0.0), (0.3, 1.0), 20)],  # a short flag
    2: [_arc(0.3, 0.27, 0.26, 0.25, 160, -35, 40) + _segment((0.52, 0.43), (0.02, 0.98), 20)
        + _segment((0.02, 0.98), (0.62, 0.96), 12)],
    3: [_arc(0.29, 0.26, 0.25, 0.24, 150, -90, 40) + _arc(0.29, 0.74, 0.29, 0.26, 90, -150, 40)],
    4: [_segment((0.36, 0.0), (0.02, 0.62), 14) + _segment((0.02, 0.62), (0.62, 0.6), 12),
        _segment((0.48, 0.2), (0.46, 1.0), 16)],
    5: [_segment((0.12, 0.02), (0.07, 0.44), 10) + _arc(0.3, 0.7, 0.28, 0.28, 145, -160, 40),
        _segment((0.12, 0.02), (0.58, 0.0), 10)],
    6: [_curve((0.5, 0.0), (0.06, 0.18), (0.04, 0.72)) + _arc(0.3, 0.73, 0.26, 0.26, 180, 180 + 350, 50)],
    7: [_segment((0.0, 0.04), (0.62, 0.0), 12) + _curve((0.62, 0.0), (0.35, 0.45), (0.24, 1.0))],
    8: [_arc(0.3, 0.25, 0.21, 0.24, 0, 365, 50), _arc(0.3, 0.73, 0.27, 0.26, 90, 90 + 365, 50)],
    9: [_arc(0.3, 0.28, 0.26, 0.27, 5, 5 + 360, 50) + _curve((0.56, 0.26), (0.55, 0.7), (0.48, 1.0))],
}


# ---------------------------------------------------------------- drawing

@dataclass(frozen=True)
class Variant:
    """One way of drawing: pen width, digit height and where it goes, in canvas pixels."""
    name: str
    pen: tuple[float, float]  # stroke width range, px
    height: tuple[int, int]  # digit height range, px
    off_centre: bool  # True: pushed towards a random corner or edge; False: near the middle


VARIANTS = [
    Variant("thin-small-centred", (2, 3), (45, 70), False),
    Variant("thin-small-off-centre", (2, 3), (45, 70), True),
    Variant("thin-large-centred", (2, 3), (170, 250), False),
    Variant("thin-large-off-centre", (2, 3), (150, 210), True),
    Variant("medium-mid-off-centre", (6, 9), (90, 140), True),
    Variant("thick-large-centred", (15, 25), (180, 250), False),
    Variant("thick-large-off-centre", (15, 20), (150, 200), True),
    Variant("thick-mid-off-centre", (15, 18), (120, 150), True),
]


def draw_digit(digit: int, variant: Variant, rng: np.random.Generator) -> Image.Image:
    """A jittered drawing of `digit` as an "L" image: dark ink on white paper, CANVAS x CANVAS."""
    pen = rng.uniform(*variant.pen)
    height = rng.uniform(*variant.height)
    slant, turn = rng.uniform(-0.15, 0.35), math.radians(rng.uniform(-8, 8))
    widen = rng.uniform(0.8, 1.2)
    strokes = []
    for stroke in TEMPLATES[digit]:
        p = np.array(stroke, dtype=float)  # (n, 2): x, y
        # A hand wobbles slowly along the stroke: smooth noise, a few hundredths of the height.
        wobble = np.cumsum(rng.normal(0, 0.006, p.shape), axis=0)
        p = p + wobble - wobble.mean(0)
        x, y = (p[:, 0] - 0.3) * widen, p[:, 1] - 0.5
        x = x - slant * y  # slant > 0 leans the top forward (to the right), as most writers do
        x, y = x * math.cos(turn) - y * math.sin(turn), x * math.sin(turn) + y * math.cos(turn)
        strokes.append(np.stack([x, y], 1) * height)
    pts = np.concatenate(strokes)
    lo, hi = pts.min(0) - pen, pts.max(0) + pen
    room = CANVAS - (hi - lo)  # free space per axis, px
    if variant.off_centre:  # hug a random side on each axis, leaving a small margin
        where = np.array([rng.choice([rng.uniform(0, 0.12), rng.uniform(0.88, 1.0)]) for _ in range(2)])
    else:
        where = rng.uniform(0.4, 0.6, 2)
    offset = np.maximum(room, 0) * where - lo
    s = SUPERSAMPLE
    im = Image.new("L", (CANVAS * s, CANVAS * s), 255)
    d = ImageDraw.Draw(im)
    ink = int(rng.integers(0, 60))  # pencil-grey to black
    for stroke in strokes:
        q = [(float(a) * s, float(b) * s) for a, b in stroke + offset]
        d.line(q, fill=ink, width=max(1, round(pen * s)), joint="curve")
        r = pen * s / 2  # round pen: caps at the ends
        for a, b in (q[0], q[-1]):
            d.ellipse((a - r, b - r, a + r, b + r), fill=ink)
    return im.reduce(s)


def drawings(seed: int = 0) -> list[tuple[str, int, Image.Image]]:
    """(variant name, digit, image) for every variant and digit, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    return [(v.name, digit, draw_digit(digit, v, rng)) for v in VARIANTS for digit in range(10)]


def contact_sheet(items: list[tuple[Image.Image, np.ndarray]], cols: int = 10) -> Image.Image:
    """Each drawing (shrunk to 112 px) above what the model sees (28x28 enlarged 4x, ink white)."""
    cell = 112
    rows = math.ceil(len(items) / cols)
    sheet = Image.new("L", (cols * cell, rows * 2 * cell), 128)
    for i, (im, x28) in enumerate(items):
        r, c = divmod(i, cols)
        sheet.paste(im.resize((cell - 4, cell - 4), Image.Resampling.BOX), (c * cell + 2, 2 * r * cell + 2))
        small = Image.fromarray(np.round(x28 * 255).astype(np.uint8)).resize((cell - 4, cell - 4),
                                                                             Image.Resampling.NEAREST)
        sheet.paste(small, (c * cell + 2, (2 * r + 1) * cell + 2))
    return sheet


# ---------------------------------------------------------------- the acceptance test

THIN = [v.name for v in VARIANTS if v.pen[1] <= 3]


@pytest.fixture(scope="module")
def run_path(tmp_path_factory, mnist):
    """seed-ann trained as a user trains it (`digitlab train`, so on JAX), 3 epochs over all 59,000 training
    images in a few seconds: 96% on MNIST's test set, like the session's `trained_run` (12,000 images), but
    surer of drawn digits."""
    from conftest import digitlab_process
    run_dir = tmp_path_factory.mktemp("runs") / "seed-ann"
    digitlab_process(["train", "--model", "seed-ann", "--epochs", "3", "--batch-size", "256", "--val", "1000",
                      "--seed", "0", "--quiet", "--no-export", "--out", str(run_dir)])
    return run_dir


@dataclass
class Reading:
    variant: str
    digit: int  # what was drawn
    predicted: int | None
    p_true: float  # the probability the model gave the drawn digit (0 when outside its top 3)
    path: str


@pytest.fixture(scope="module")
def readings(run_path, tmp_path_factory) -> tuple[int, list[Reading], str]:
    """`digitlab predict RUN *.png --json` on 160 drawings (two of each digit per variant)."""
    import contextlib
    import io

    from digitlab.cli import main

    folder = tmp_path_factory.mktemp("drawn")
    truth = {}
    for seed in (0, 1):
        for name, digit, im in drawings(seed):
            path = folder / f"{name}-{digit}-s{seed}.png"
            im.save(path)
            truth[str(path)] = (name, digit)
    seen = folder / "seen"  # what the model saw, to look at when the test fails
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["predict", str(run_path), *truth, "--json", "--save-input", str(seen)])
    items = json.loads(out.getvalue())
    got = [Reading(*truth[i["path"]], i["digit"], dict(i["top3"]).get(truth[i["path"]][1], 0.0), i["path"])
           for i in items]
    return code, got, str(seen)


def _wrong(rs: list[Reading]) -> list[str]:
    return [f"{r.path.rsplit('/', 1)[-1]} read as {r.predicted}" for r in rs if r.predicted != r.digit]


def test_drawn_digits_are_read_correctly(readings, figures):
    code, rs, seen = readings
    assert code == 0 and len(rs) == 2 * 10 * len(VARIANTS)
    accuracy = np.mean([r.predicted == r.digit for r in rs])
    # The README quotes this figure, printed at the end of the test run. Before thin strokes were
    # thickened (see the next test) this read 98.1%; without cropping the digit out of its canvas, 78%.
    # A 0.95 gate leaves room for another machine's or backend's training.
    figures("drawn digits read by `digitlab predict` (tests/test_drawn_digits.py)",
            f"{accuracy:.1%} of {len(rs)} ({int(round(accuracy * len(rs)))} right; wrong: {', '.join(_wrong(rs)) or 'none'})")
    assert accuracy >= 0.95, (accuracy, _wrong(rs), f"28x28 inputs in {seen}")
    for v in VARIANTS:
        group = [r for r in rs if r.variant == v.name]
        group_accuracy = np.mean([r.predicted == r.digit for r in group])
        assert group_accuracy >= 0.85, (v.name, group_accuracy, _wrong(group), f"28x28 inputs in {seen}")


def test_thin_strokes_are_read_with_confidence(readings):
    # A hairline is often still read right, but with little confidence: before thin strokes were
    # thickened the model gave the drawn digit 0.6-0.75 on average in these groups; now 0.95-0.98.
    _, rs, seen = readings
    for name in THIN:
        p = np.mean([r.p_true for r in rs if r.variant == name])
        assert p >= 0.85, (name, p, f"28x28 inputs in {seen}")


if __name__ == "__main__":
    import sys
    from pathlib import Path

    from digitlab.preprocessing import to_mnist

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/drawn")
    out.mkdir(parents=True, exist_ok=True)
    items = []
    for name, digit, im in drawings():
        im.save(out / f"{name}-{digit}.png")
        items.append((im, to_mnist(np.asarray(im, np.float32) / 255)))
    contact_sheet(items).save(out / "contact-sheet.png")
    print(f"wrote {len(items)} drawings and contact-sheet.png to {out}")
