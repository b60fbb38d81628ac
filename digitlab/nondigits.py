"""The project's non-digit set: letters, symbols, shapes, dashes, scribbles, noise, smileys and multi-digit
strings, drawn as a user draws on the page's canvas and normalised by the same `to_mnist` as `predict`.

    fit = split("fit")              # NonDigitSet: .x (n, 28, 28) float32 in [0, 1], .kinds, .labels, .sha256
    holdout = split("holdout")      # never used to fit or train anything: the figures quoted for non-digits
    negatives = split("train", per_kind=400)        # for training on negatives (bench/trust.py --outlier-exposure)
    for kind, label, im in pictures("holdout", per_kind=2): im.save(f"{label}.png")   # the canvases
    x_fashion = fashion_mnist_test()                # Fashion-MNIST's test images, scaled

Each picture is a 280x280 white canvas (the page's) with dark strokes: pens from 2 to 25 px, figures from
45 px to the full canvas, centred or pushed to an edge, then `preprocessing.to_mnist`, so the 28x28 input
is exactly what the model would see from `digitlab predict` or the page.

Determinism and versions: picture i of kind k in part p is drawn from the random stream
(seed, p, k, i), so a set is a pure function of (GENERATOR_VERSION, seed, part, per_kind) and of the
fonts on the machine (recorded in `.fonts`; without DejaVu or Liberation fonts Pillow's built-in font is
used). Any change to what is drawn bumps GENERATOR_VERSION; `.sha256` tells two sets apart.

What is left out, deliberately: circles, ellipses and rings (a plausible 0), a lone vertical bar (a 1),
and the letters a reader could take for a digit (O o D Q I l i j Z z S s G b B g q y T J L). A smiley
keeps its eyes and mouth, so it is never just a ring. Blank canvases are not here: preprocessing refuses
them (NoInkError), and that is the `blank` verdict, decided before any model runs.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from digitlab.atomic import atomic_path
from digitlab.data import default_cache_dir, load_dataset, scale
from digitlab.drawing import (
    DIGITS,
    LETTERS,
    VARIANTS,
    Variant,
    arc,
    blank_canvas,
    draw_template,
    polyline,
    render_strokes,
    segment,
    to_gray,
)
from digitlab.errors import ConfigError
from digitlab.preprocessing import NoInkError, to_mnist

GENERATOR_VERSION = 1  # bump on any change to what is drawn
CANVAS = 280  # px, the page's drawing canvas
SUPERSAMPLE = 2  # anti-aliasing of the strokes: enough at 280 px, and twice as fast as 4
# Three disjoint parts (separate random streams): "fit" for choosing thresholds, "train" for training on
# negatives (outlier exposure, a reject class), "holdout" for measuring, never used to fit or train anything.
PARTS = {"fit": 0, "holdout": 1, "train": 2}
DEFAULT_PER_KIND = 60  # pictures of each kind per part: 600 a part, drawn in about 4 s
MAX_TRIES = 5  # draws of one picture before giving up on it (only noise can come out blank)

FONT_LETTERS = "ACEFHKMNPRUVWXYacefhkmnprtuvwx"  # no glyph a reader could take for a digit (see above)
SYMBOLS = "+=#@%&?!*"
# Font files tried in this order, looked up by name under FONT_DIRS (Debian's fonts-dejavu-core and
# fonts-liberation put them there): several faces, so letters come regular, bold, serif and slanted.
FONT_FILES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf",
              "DejaVuSans-Oblique.ttf", "LiberationSans-Regular.ttf", "LiberationSerif-Regular.ttf",
              "LiberationSerif-Italic.ttf", "LiberationMono-Bold.ttf", "LiberationSansNarrow-Regular.ttf")
FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"))
BUILTIN_FONT = "pillow-default"

# Stroke-drawn symbols and shapes, in drawing's template frame (y down, height 1, x centred on 0.3).
SYMBOL_STROKES: dict[str, list] = {
    "+": [segment((0.3, 0.1), (0.3, 0.9)), segment((-0.1, 0.5), (0.7, 0.5))],
    "=": [segment((-0.1, 0.3), (0.7, 0.3)), segment((-0.1, 0.7), (0.7, 0.7))],
    "#": [segment((0.15, 0.0), (0.05, 1.0)), segment((0.55, 0.0), (0.45, 1.0)),
          segment((-0.1, 0.33), (0.75, 0.33)), segment((-0.15, 0.67), (0.7, 0.67))],
    "*": [segment((0.3, 0.0), (0.3, 1.0)), segment((-0.13, 0.25), (0.73, 0.75)), segment((-0.13, 0.75), (0.73, 0.25))],
}
_STAR = [(0.3 + 0.5 * math.sin(math.radians(a)) * (1 if k % 2 == 0 else 0.4),
          0.55 - 0.5 * math.cos(math.radians(a)) * (1 if k % 2 == 0 else 0.4)) for k, a in enumerate(range(0, 396, 36))]
SHAPE_STROKES: dict[str, list] = {
    "triangle": [polyline((0.3, 0.0), (0.75, 1.0), (-0.15, 1.0), (0.3, 0.0))],
    "square": [polyline((-0.2, 0.0), (0.8, 0.0), (0.8, 1.0), (-0.2, 1.0), (-0.2, 0.0))],
    "wide rectangle": [polyline((-0.7, 0.2), (1.3, 0.2), (1.3, 0.8), (-0.7, 0.8), (-0.7, 0.2))],
    "diamond": [polyline((0.3, 0.0), (0.8, 0.5), (0.3, 1.0), (-0.2, 0.5), (0.3, 0.0))],
    "star": [polyline(*_STAR, n=6)],
    "arrow": [segment((-0.5, 0.5), (1.1, 0.5)), polyline((0.75, 0.2), (1.1, 0.5), (0.75, 0.8))],
    "heart": [arc(0.05, 0.3, 0.25, 0.22, 0, 200, 20) + segment((-0.19, 0.38), (0.3, 1.0))
              + segment((0.3, 1.0), (0.79, 0.38)) + arc(0.55, 0.3, 0.25, 0.22, -20, 180, 20)],
    "check mark": [polyline((-0.1, 0.55), (0.15, 1.0), (0.8, 0.0))],
    "cross-hatch": [segment((-0.3, y), (0.9, y)) for y in (0.1, 0.4, 0.7, 1.0)]
                   + [segment((x, 0.0), (x + 0.1, 1.0)) for x in (-0.2, 0.2, 0.6)],
}
DASH = [segment((0.0, 0.5), (1.0, 0.5))]  # centre_x 0.5; the figure "height" is the dash's length
# A face: outline, two eye loops, a smile; without the outline it is the ":)" kind.
SMILEY = [arc(0.3, 0.5, 0.5, 0.5, 90, 90 + 365, 60), arc(0.12, 0.35, 0.05, 0.07, 0, 365, 12),
          arc(0.48, 0.35, 0.05, 0.07, 0, 365, 12), arc(0.3, 0.55, 0.28, 0.22, 200, 340, 20)]
CHAR_ADVANCE = 0.8  # a handwritten digit string: next digit this far right, in digit heights


# ---------------------------------------------------------------- the set

@dataclass(frozen=True)
class NonDigitSet:
    x: np.ndarray  # (n, 28, 28) float32 in [0, 1]: what the model sees
    kinds: tuple[str, ...]  # the kind of each image (KINDS)
    labels: tuple[str, ...]  # what was drawn, e.g. "letter_font K DejaVuSans-Bold", "multidigit 305"
    part: str  # fit | holdout
    seed: int
    version: int  # GENERATOR_VERSION that drew it
    fonts: tuple[str, ...]  # the font files it found (or BUILTIN_FONT)

    @functools.cached_property
    def sha256(self) -> str:
        """Of the 28x28 images as uint8: equal sets, equal hashes, whatever machine drew them."""
        return hashlib.sha256(np.round(self.x * 255).astype(np.uint8).tobytes()).hexdigest()

    def __len__(self) -> int:
        return len(self.kinds)

    def of_kind(self, kind: str) -> np.ndarray:
        """The images of one kind."""
        return self.x[np.asarray(self.kinds) == kind]


def split(part: str = "fit", per_kind: int = DEFAULT_PER_KIND, seed: int = 0) -> NonDigitSet:
    """The `part` of the non-digit set: "fit" (choosing thresholds), "train" (training), "holdout" (measuring)."""
    drawn = list(_drawn(part, per_kind, seed))
    x = np.stack([x28 for *_, x28 in drawn]) if drawn else np.zeros((0, 28, 28), np.float32)
    return NonDigitSet(x, tuple(d[0] for d in drawn), tuple(d[1] for d in drawn), part, seed, GENERATOR_VERSION,
                       tuple(font_names()))


def cached_split(part: str = "fit", per_kind: int = DEFAULT_PER_KIND, seed: int = 0,
                 cache_dir: Path | None = None) -> NonDigitSet:
    """split(), kept in the data cache (default_cache_dir()) after the first time: drawing a part takes about 2 s of
    every evaluation, and a set is a pure function of its key. The file holds the images' SHA-256 and is used only if
    they still have it and the fonts are the same; otherwise the part is drawn again (and the cache rewritten)."""
    fonts = tuple(font_names())
    path = (cache_dir or default_cache_dir()) / f"nondigits-v{GENERATOR_VERSION}-{part}-{per_kind}-s{seed}.npz"
    # no pickles: a cache file is data, never code
    with contextlib.suppress(OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError), \
            np.load(path, allow_pickle=False) as f:
        cached = NonDigitSet(f["x"], tuple(f["kinds"].tolist()), tuple(f["labels"].tolist()), part, seed,
                             GENERATOR_VERSION, tuple(f["fonts"].tolist()))
        if cached.fonts == fonts and cached.sha256 == str(f["sha256"]):
            return cached
    fresh = split(part, per_kind, seed)
    with contextlib.suppress(OSError):  # a cache that can't be written costs time, not the evaluation
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, x=fresh.x, kinds=np.array(fresh.kinds), labels=np.array(fresh.labels),
                     fonts=np.array(fresh.fonts), sha256=np.array(fresh.sha256))
    return fresh


def pictures(part: str = "fit", per_kind: int = DEFAULT_PER_KIND,
             seed: int = 0) -> Iterator[tuple[str, str, Image.Image]]:
    """(kind, label, picture) for each canvas of the part, before preprocessing: white 280x280 "L" images."""
    for kind, label, im, _ in _drawn(part, per_kind, seed):
        yield kind, label, im


def _drawn(part: str, per_kind: int, seed: int) -> Iterator[tuple[str, str, Image.Image, np.ndarray]]:
    if part not in PARTS:
        raise ConfigError(f"unknown part {part!r} of the non-digit set; choose one of: {', '.join(PARTS)}")
    for k, kind in enumerate(KINDS):
        draw = DRAWERS[kind]
        for i in range(per_kind):
            rng = np.random.default_rng([seed, PARTS[part], k, i])
            for _ in range(MAX_TRIES):  # only noise can come out blank; then it is drawn again
                label, im = draw(rng)
                try:
                    x28 = to_mnist(to_gray(im))
                except NoInkError:
                    continue
                yield kind, f"{kind} {label}", im, x28
                break


def fashion_mnist_test(n: int | None = None) -> np.ndarray:
    """Fashion-MNIST's test images (the first n), scaled like MNIST: a far-out-of-distribution set."""
    ds = load_dataset("fashion-mnist")
    return scale(ds.x_test[:n] if n else ds.x_test)


# ---------------------------------------------------------------- fonts

@functools.cache
def font_files() -> tuple[Path, ...]:
    """The FONT_FILES present on this machine, in FONT_FILES order."""
    found = {}
    for root in FONT_DIRS:
        if root.is_dir():
            for path in root.rglob("*.ttf"):
                found.setdefault(path.name, path)
    return tuple(found[name] for name in FONT_FILES if name in found)


def font_names() -> list[str]:
    return [p.stem for p in font_files()] or [BUILTIN_FONT]


def _font(rng: np.random.Generator, size: int) -> tuple[ImageFont.ImageFont | ImageFont.FreeTypeFont, str]:
    files = font_files()
    if not files:
        return ImageFont.load_default(size=size), BUILTIN_FONT
    path = files[int(rng.integers(len(files)))]
    return ImageFont.truetype(str(path), size=size), path.stem


def _text_picture(text: str, rng: np.random.Generator) -> tuple[str, Image.Image]:
    """`text` typed in a random font and size, heavier or lighter, slightly turned, anywhere on the canvas."""
    size = int(rng.uniform(50, 230) / max(1.0, 0.7 * len(text)))  # px; a glyph is about 0.6 size wide
    font, name = _font(rng, size)
    ink = int(rng.integers(0, 60))
    weight = int(rng.integers(0, max(1, size // 14)))  # Pillow's stroke_width: a heavier pen round the glyph
    im = Image.new("L", (CANVAS, CANVAS), 255)
    d = ImageDraw.Draw(im)
    left, top, right, bottom = d.textbbox((0, 0), text, font=font, stroke_width=weight)
    room = np.maximum([CANVAS - (right - left), CANVAS - (bottom - top)], 0)
    x, y = rng.uniform(0.05, 0.95, 2) * room - [left, top]
    d.text((float(x), float(y)), text, fill=ink, font=font, stroke_width=weight, stroke_fill=ink)
    im = im.rotate(float(rng.uniform(-10, 10)), resample=Image.Resampling.BILINEAR, fillcolor=255)
    return f"{text!r} {name}", im


def _variant(rng: np.random.Generator, height: tuple[int, int] | None = None) -> Variant:
    """One of drawing.VARIANTS (a pen, a size, a place), its height range optionally replaced."""
    v = VARIANTS[int(rng.integers(len(VARIANTS)))]
    return Variant(v.name, v.pen, height or v.height, v.off_centre)


def _strokes_picture(template, rng: np.random.Generator, centre_x: float = 0.3,
                     height: tuple[int, int] | None = None) -> Image.Image:
    return draw_template(template, _variant(rng, height), rng, centre_x=centre_x, canvas=CANVAS,
                         supersample=SUPERSAMPLE)


# ---------------------------------------------------------------- the kinds

def _letter_font(rng):
    return _text_picture(FONT_LETTERS[int(rng.integers(len(FONT_LETTERS)))], rng)


def _letter_drawn(rng):
    name = sorted(LETTERS)[int(rng.integers(len(LETTERS)))]
    return name, _strokes_picture(LETTERS[name], rng, height=(45, 200))


def _symbol(rng):
    if rng.random() < 0.5:
        name = sorted(SYMBOL_STROKES)[int(rng.integers(len(SYMBOL_STROKES)))]
        return f"{name} drawn", _strokes_picture(SYMBOL_STROKES[name], rng, height=(45, 180))
    return _text_picture(SYMBOLS[int(rng.integers(len(SYMBOLS)))], rng)


def _shape(rng):
    name = sorted(SHAPE_STROKES)[int(rng.integers(len(SHAPE_STROKES)))]
    if rng.random() < 0.25:  # a filled polygon, as a user colouring it in would leave
        pts = np.array(SHAPE_STROKES[name][0])
        h = rng.uniform(60, 200)
        pts = (pts - pts.mean(0)) * h + rng.uniform(0.35, 0.65, 2) * CANVAS
        im = Image.new("L", (CANVAS, CANVAS), 255)
        ImageDraw.Draw(im).polygon([tuple(p) for p in pts], fill=int(rng.integers(0, 60)))
        return f"{name} filled", im
    return name, _strokes_picture(SHAPE_STROKES[name], rng, height=(45, 180))


def _dash(rng):
    return "-", _strokes_picture(DASH, rng, centre_x=0.5, height=(40, 250))


def _scribble(rng):
    """A tangle: one to three smooth strokes through 8-16 random points in a box."""
    side = rng.uniform(60, 250)
    corner = rng.uniform(0, CANVAS - side, 2)
    strokes = []
    for _ in range(int(rng.integers(1, 4))):
        points = corner + rng.uniform(0, side, (int(rng.integers(8, 17)), 2))
        strokes.append(_smooth(points))
    pen = float(rng.uniform(2, 20))
    im = render_strokes(strokes, pen, int(rng.integers(0, 60)), CANVAS, SUPERSAMPLE)
    return f"{len(strokes)} strokes", im


def _smooth(points: np.ndarray, per_segment: int = 8) -> np.ndarray:
    """A Catmull-Rom curve through `points`: a hand's path, not a polygon."""
    p = np.concatenate([points[:1], points, points[-1:]])
    t = np.linspace(0, 1, per_segment, endpoint=False)[:, None]
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        out.append(0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                          + (3 * p1 - p0 - 3 * p2 + p3) * t ** 3))
    return np.concatenate(out + [points[-1:]])


def _noise(rng):
    """Random speckle, grey noise or blotches, over the canvas or a patch of it, as a camera or a careless
    pen leaves."""
    which = ("speckle", "grey", "blotches")[int(rng.integers(3))]
    if which == "speckle":
        x = np.where(rng.random((CANVAS, CANVAS)) < rng.uniform(0.02, 0.3), rng.uniform(0, 0.4), 1.0)
    elif which == "grey":
        x = 1.0 - np.abs(rng.normal(0, rng.uniform(0.15, 0.5), (CANVAS, CANVAS)))
    else:
        field = ndimage.gaussian_filter(rng.normal(size=(CANVAS, CANVAS)), rng.uniform(4, 15))
        x = np.where(field > np.quantile(field, 1 - rng.uniform(0.05, 0.3)), 0.1, 1.0)
    if which != "grey" and rng.random() < 0.5:  # a patch of the canvas, squarish: a tall one would read as a 1
        h = int(rng.integers(60, CANVAS - 20))
        w = int(np.clip(h * rng.uniform(0.7, 1.4), 40, CANVAS - 20))
        top, left = rng.integers(0, CANVAS - h), rng.integers(0, CANVAS - w)
        patch = np.ones_like(x)
        patch[top:top + h, left:left + w] = x[top:top + h, left:left + w]
        x, which = patch, f"{which} patch"
    return which, Image.fromarray(np.round(np.clip(x, 0, 1) * 255).astype(np.uint8))


def _smiley(rng):
    face = rng.random() < 0.75
    template = SMILEY if face else SMILEY[1:]
    return "face" if face else ":)", _strokes_picture(template, rng, height=(45, 250))


def _multidigit(rng):
    """A number of two or three digits written as one picture, by hand or typed."""
    text = "".join(str(d) for d in rng.integers(0, 10, int(rng.integers(2, 4))))
    if text[0] == "0":
        text = str(int(rng.integers(1, 10))) + text[1:]
    if rng.random() < 0.3:
        return _text_picture(text, rng)
    template = [[(x + CHAR_ADVANCE * i, y) for x, y in stroke] for i, c in enumerate(text) for stroke in DIGITS[int(c)]]
    centre = 0.3 + CHAR_ADVANCE * (len(text) - 1) / 2
    biggest = int(CANVAS * 0.9 / (CHAR_ADVANCE * len(text)))  # so the whole number fits on the canvas
    return text, _strokes_picture(template, rng, centre_x=centre, height=(40, biggest))


Drawer = Callable[[np.random.Generator], tuple[str, Image.Image]]
DRAWERS: dict[str, Drawer] = {  # kind -> drawer; a new kind goes at the end (the random streams follow the order)
    "letter_font": _letter_font,
    "letter_drawn": _letter_drawn,
    "symbol": _symbol,
    "shape": _shape,
    "dash": _dash,
    "scribble": _scribble,
    "noise": _noise,
    "smiley": _smiley,
    "multidigit": _multidigit,
}
KINDS = tuple(DRAWERS)


def blank_picture() -> Image.Image:
    """An empty canvas: what the `blank` verdict is for (preprocessing raises NoInkError)."""
    return blank_canvas(CANVAS, 1)
