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
from PIL import Image

# The generator lives in digitlab.drawing, so that bench/trust.py and the trust tests draw these same digits.
from digitlab.drawing import VARIANTS, drawings

pytestmark = pytest.mark.slow  # trains a network with `digitlab train` (about 15 s on two cores)

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
