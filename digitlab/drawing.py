"""Pen drawings of digits, letters and shapes, as a person draws them on a canvas: the input generator shared
by the drawn-digit checks and the non-digit set (digitlab.nondigits).

    rng = np.random.default_rng(0)
    im = draw_digit(7, VARIANTS[0], rng)            # an "L" image: dark ink on white, CANVAS x CANVAS
    im = draw_template(LETTERS["X"], VARIANTS[5], rng)
    for variant, digit, im in drawings(seed=0): ...  # 80 drawings: each digit in each variant

A template is a list of pen strokes in the template's frame: y down, figure height 1, x in about
[0, 0.6] for a digit. `draw_template` jitters it as a hand would (slant, rotation, proportions, a slow
wobble along each stroke), scales it to a height, places it centred or off-centre and draws it with a
round pen, supersampled so the strokes are anti-aliased as in a paint app.

The digit templates, `Variant`s and `draw_digit` are the drawn-digit acceptance test's generator
(tests/test_drawn_digits.py imports them from here), so bench/trust.py measures the drawn digits that
test reads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

CANVAS = 300  # px, square, white
SUPERSAMPLE = 4  # strokes are drawn this much larger, then box-averaged: anti-aliased as in a paint app

Stroke = list[tuple[float, float]]  # points in the template's frame: y down, figure height 1


# ---------------------------------------------------------------- stroke pieces

def arc(cx, cy, rx, ry, start, stop, n=40) -> Stroke:
    """Points on an ellipse from angle `start` to `stop`, degrees, counter-clockwise as seen (y down)."""
    return [(cx + rx * math.cos(math.radians(a)), cy - ry * math.sin(math.radians(a)))
            for a in np.linspace(start, stop, n)]


def curve(p0, p1, p2, n=30) -> Stroke:
    """Quadratic Bezier from p0 to p2, pulled towards p1."""
    return [((1 - t) ** 2 * p0[0] + 2 * (1 - t) * t * p1[0] + t ** 2 * p2[0],
             (1 - t) ** 2 * p0[1] + 2 * (1 - t) * t * p1[1] + t ** 2 * p2[1]) for t in np.linspace(0, 1, n)]


def segment(p0, p1, n=12) -> Stroke:
    return [(p0[0] + t * (p1[0] - p0[0]), p0[1] + t * (p1[1] - p0[1])) for t in np.linspace(0, 1, n)]


def polyline(*points, n=10) -> Stroke:
    """Straight segments through `points`, one pen stroke."""
    out: Stroke = []
    for p0, p1 in zip(points[:-1], points[1:]):
        out += segment(p0, p1, n)
    return out


# ---------------------------------------------------------------- templates

# The pen strokes of each digit, x in about [0, 0.6], y in [0, 1] (top to bottom).
DIGITS: dict[int, list[Stroke]] = {
    0: [arc(0.3, 0.5, 0.28, 0.49, 95, 95 + 372, 80)],  # one loop from the top, closed with an overlap
    1: [segment((0.22, 0.12), (0.36, 0.0), 4) + segment((0.36, 0.0), (0.3, 1.0), 20)],  # a short flag
    2: [arc(0.3, 0.27, 0.26, 0.25, 160, -35, 40) + segment((0.52, 0.43), (0.02, 0.98), 20)
        + segment((0.02, 0.98), (0.62, 0.96), 12)],
    3: [arc(0.29, 0.26, 0.25, 0.24, 150, -90, 40) + arc(0.29, 0.74, 0.29, 0.26, 90, -150, 40)],
    4: [segment((0.36, 0.0), (0.02, 0.62), 14) + segment((0.02, 0.62), (0.62, 0.6), 12),
        segment((0.48, 0.2), (0.46, 1.0), 16)],
    5: [segment((0.12, 0.02), (0.07, 0.44), 10) + arc(0.3, 0.7, 0.28, 0.28, 145, -160, 40),
        segment((0.12, 0.02), (0.58, 0.0), 10)],
    6: [curve((0.5, 0.0), (0.06, 0.18), (0.04, 0.72)) + arc(0.3, 0.73, 0.26, 0.26, 180, 180 + 350, 50)],
    7: [segment((0.0, 0.04), (0.62, 0.0), 12) + curve((0.62, 0.0), (0.35, 0.45), (0.24, 1.0))],
    8: [arc(0.3, 0.25, 0.21, 0.24, 0, 365, 50), arc(0.3, 0.73, 0.27, 0.26, 90, 90 + 365, 50)],
    9: [arc(0.3, 0.28, 0.26, 0.27, 5, 5 + 360, 50) + curve((0.56, 0.26), (0.55, 0.7), (0.48, 1.0))],
}

# Capital letters written with a pen, in the digits' frame (x centred on 0.3). Only letters no reader
# would take for a digit: no O (0), I (1), Z (2), S (5), G (6), B (8), nor T or L (a 7 or a 1 at a slant).
LETTERS: dict[str, list[Stroke]] = {
    "A": [polyline((0.0, 1.0), (0.3, 0.0), (0.6, 1.0)), segment((0.12, 0.62), (0.48, 0.62))],
    "E": [polyline((0.55, 0.0), (0.05, 0.0), (0.05, 1.0), (0.55, 1.0)), segment((0.05, 0.5), (0.45, 0.5))],
    "F": [polyline((0.55, 0.0), (0.05, 0.0), (0.05, 1.0)), segment((0.05, 0.48), (0.42, 0.48))],
    "H": [segment((0.02, 0.0), (0.02, 1.0)), segment((0.58, 0.0), (0.58, 1.0)), segment((0.02, 0.5), (0.58, 0.5))],
    "K": [segment((0.05, 0.0), (0.05, 1.0)), polyline((0.55, 0.0), (0.05, 0.55)), segment((0.2, 0.42), (0.58, 1.0))],
    "M": [polyline((-0.05, 1.0), (0.0, 0.0), (0.3, 0.6), (0.6, 0.0), (0.65, 1.0))],
    "N": [polyline((0.02, 1.0), (0.02, 0.0), (0.58, 1.0), (0.58, 0.0))],
    "V": [polyline((0.0, 0.0), (0.3, 1.0), (0.6, 0.0))],
    "W": [polyline((-0.1, 0.0), (0.1, 1.0), (0.3, 0.35), (0.5, 1.0), (0.7, 0.0))],
    "X": [segment((0.0, 0.0), (0.6, 1.0)), segment((0.6, 0.0), (0.0, 1.0))],
    "Y": [polyline((0.0, 0.0), (0.3, 0.5), (0.6, 0.0)), segment((0.3, 0.5), (0.3, 1.0))],
    "R": [segment((0.05, 0.0), (0.05, 1.0)), arc(0.05, 0.27, 0.5, 0.27, 90, -90, 30),
          segment((0.2, 0.54), (0.58, 1.0))],
    "P": [segment((0.05, 0.0), (0.05, 1.0)), arc(0.05, 0.27, 0.5, 0.27, 90, -90, 30)],
    "C": [arc(0.35, 0.5, 0.32, 0.5, 50, 310, 50)],
    "U": [segment((0.02, 0.0), (0.02, 0.65)) + arc(0.3, 0.65, 0.28, 0.35, 180, 360, 30)
          + segment((0.58, 0.65), (0.58, 0.0))],
}


# ---------------------------------------------------------------- drawing

@dataclass(frozen=True)
class Variant:
    """One way of drawing: pen width, figure height and where it goes, in canvas pixels."""
    name: str
    pen: tuple[float, float]  # stroke width range, px
    height: tuple[int, int]  # figure height range, px
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


def draw_template(template: list[Stroke], variant: Variant, rng: np.random.Generator, centre_x: float = 0.3,
                  canvas: int = CANVAS, supersample: int = SUPERSAMPLE) -> Image.Image:
    """A jittered drawing of `template` as an "L" image: dark ink on white paper, canvas x canvas.

    `centre_x` is the template's horizontal middle (0.3 for a digit). The random draws come in a fixed
    order (pen, height, slant, turn, widen, the wobble of each stroke, the place, the ink), so that a
    template and a seed always give the same picture.
    """
    pen = rng.uniform(*variant.pen)
    height = rng.uniform(*variant.height)
    slant, turn = rng.uniform(-0.15, 0.35), math.radians(rng.uniform(-8, 8))
    widen = rng.uniform(0.8, 1.2)
    strokes = []
    for stroke in template:
        p = np.array(stroke, dtype=float)  # (n, 2): x, y
        # A hand wobbles slowly along the stroke: smooth noise, a few hundredths of the height.
        wobble = np.cumsum(rng.normal(0, 0.006, p.shape), axis=0)
        p = p + wobble - wobble.mean(0)
        x, y = (p[:, 0] - centre_x) * widen, p[:, 1] - 0.5
        x = x - slant * y  # slant > 0 leans the top forward (to the right), as most writers do
        x, y = x * math.cos(turn) - y * math.sin(turn), x * math.sin(turn) + y * math.cos(turn)
        strokes.append(np.stack([x, y], 1) * height)
    pts = np.concatenate(strokes)
    lo, hi = pts.min(0) - pen, pts.max(0) + pen
    room = canvas - (hi - lo)  # free space per axis, px
    if variant.off_centre:  # hug a random side on each axis, leaving a small margin
        where = np.array([rng.choice([rng.uniform(0, 0.12), rng.uniform(0.88, 1.0)]) for _ in range(2)])
    else:
        where = rng.uniform(0.4, 0.6, 2)
    offset = np.maximum(room, 0) * where - lo
    ink = int(rng.integers(0, 60))  # pencil-grey to black
    return render_strokes([s + offset for s in strokes], pen, ink, canvas, supersample)


def render_strokes(strokes, pen: float, ink: int = 0, canvas: int = CANVAS, supersample: int = SUPERSAMPLE,
                   image: Image.Image | None = None) -> Image.Image:
    """Draw polylines given in canvas pixels with a round pen of `pen` px, ink grey level `ink` on white.

    With `image` (a supersampled canvas from `blank_canvas`), draws onto it and returns it un-reduced, so
    that several pens can share one canvas; call `.reduce(supersample)` at the end.
    """
    s = supersample
    im = image if image is not None else blank_canvas(canvas, s)
    d = ImageDraw.Draw(im)
    for stroke in strokes:
        q = [(float(a) * s, float(b) * s) for a, b in stroke]
        d.line(q, fill=ink, width=max(1, round(pen * s)), joint="curve")
        r = pen * s / 2  # round pen: caps at the ends
        for a, b in (q[0], q[-1]):
            d.ellipse((a - r, b - r, a + r, b + r), fill=ink)
    return im if image is not None else im.reduce(s)


def blank_canvas(canvas: int = CANVAS, supersample: int = SUPERSAMPLE) -> Image.Image:
    return Image.new("L", (canvas * supersample, canvas * supersample), 255)


def draw_digit(digit: int, variant: Variant, rng: np.random.Generator) -> Image.Image:
    """A jittered drawing of `digit` as an "L" image: dark ink on white paper, CANVAS x CANVAS."""
    return draw_template(DIGITS[digit], variant, rng)


def drawings(seed: int = 0) -> list[tuple[str, int, Image.Image]]:
    """(variant name, digit, image) for every variant and digit, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    return [(v.name, digit, draw_digit(digit, v, rng)) for v in VARIANTS for digit in range(10)]


def to_gray(im: Image.Image) -> np.ndarray:
    """An "L" image as the (H, W) float32 gray picture digitlab.preprocessing.to_mnist takes (1 = white)."""
    return np.asarray(im, dtype=np.float32) / 255.0
