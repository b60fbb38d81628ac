"""digitlab.numbers: whole numbers are segmented into their digits and read left to right.

The pictures are written with a pen by bench/read_numbers.py's generator (stroke templates jittered per
drawing), which also returns each digit's true box; the classifier is the session's small trained
seed-ann (conftest.trained_predictor).
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from digitlab.errors import ConfigError, InputImageError
from digitlab.numbers import MAX_DIGITS, TooManyDigitsError, read_number
from digitlab.preprocessing import NoInkError, to_mnist
from digitlab.segmentation import segment


@pytest.fixture(scope="module")
def bench():
    """bench/read_numbers.py, the generator of numbers (a script, so loaded from its path)."""
    spec = importlib.util.spec_from_file_location("bench_numbers", Path(__file__).parents[1] / "bench" / "read_numbers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def iou(a, b) -> float:
    """Intersection over union of two (left, top, width, height) boxes."""
    left, top = max(a[0], b[0]), max(a[1], b[1])
    right, bottom = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0, right - left) * max(0, bottom - top)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def boxes_of(segments) -> list[tuple[int, int, int, int]]:
    return [(s.box.left, s.box.top, s.box.width, s.box.height) for s in segments]


def components(gray: np.ndarray, light_on_dark: bool) -> int:
    ink = (gray if light_on_dark else 1 - gray) > 0.5
    return ndimage.label(ink, structure=np.ones((3, 3)))[1]


# ---------------------------------------------------------------- segmentation

@pytest.mark.parametrize("pen", ["thin", "medium", "thick"])
@pytest.mark.parametrize("light_on_dark", [False, True])
def test_pieces_of_one_digit_are_put_together(bench, trained_predictor, pen, light_on_dark):
    # An open 4 (its two strokes apart), a 5 whose top bar was lifted off, a 7 with a crossbar, a 1.
    # Thick pens make pictures of 150-220 px a digit, which the search shrinks: boxes still come
    # back in the picture's pixels.
    pen = next(p for p in bench.PENS if p.name == pen)
    gray, truth = bench.draw_number(["4-open", "5-bar", "7-cross", "1"], np.random.default_rng(3), pen,
                                    light_on_dark=light_on_dark)
    assert components(gray, light_on_dark) >= 6  # the 4 and the 5 really are in pieces
    found = segment(gray, trained_predictor, mode="number").segments
    assert len(found) == 4
    overlaps = [iou(f, t) for f, t in zip(boxes_of(found), truth, strict=True)]
    assert min(overlaps) >= 0.8, overlaps


@pytest.mark.parametrize("pair, seed", [("23", 3), ("23", 5), ("00", 0), ("00", 4)])
def test_touching_digits_are_cut_apart(bench, trained_predictor, pair, seed):
    pen = bench.Pen("medium", (6, 6), (100, 100))
    gray, truth = bench.draw_number(list(pair), np.random.default_rng(seed), pen, gap=(-0.04, -0.04))
    assert components(gray, False) == 1  # one piece of ink: only a cut can separate them
    found = segment(gray, trained_predictor, mode="number").segments
    assert len(found) == 2
    overlaps = [iou(f, t) for f, t in zip(boxes_of(found), truth, strict=True)]
    assert min(overlaps) >= 0.7, overlaps


# ---------------------------------------------------------------- reading

@pytest.mark.parametrize("pen", ["thin", "medium", "thick"])
@pytest.mark.parametrize("light_on_dark", [False, True])
def test_reads_42(bench, trained_predictor, pen, light_on_dark):
    pen = next(p for p in bench.PENS if p.name == pen)
    gray, truth = bench.draw_number(["4", "2"], np.random.default_rng(0), pen, light_on_dark=light_on_dark)
    reading = read_number(gray, trained_predictor)
    assert reading.text == "42" and reading.mode == "number"
    assert [d.digit for d in reading.digits] == [4, 2]
    assert reading.confidence == pytest.approx(reading.digits[0].confidence * reading.digits[1].confidence)
    for d, box in zip(reading.digits, truth, strict=True):
        assert d.confidence == pytest.approx(float(d.probabilities.max()))
        assert d.input28.shape == (28, 28) and d.input28.dtype == np.float32
        assert iou((d.box.left, d.box.top, d.box.width, d.box.height), box) >= 0.8


def test_single_digits_are_never_split_in_auto_mode(bench, trained_predictor, mnist):
    """Auto mode reads a lone digit exactly as `digitlab predict` does: same 28x28, same probabilities."""
    pictures = [im for im in mnist.x_test[:300]]
    for k, glyph in enumerate([str(d) for d in range(10)] + ["4-open", "5-bar", "7-cross"]):
        for pen in bench.PENS:
            gray, _ = bench.draw_number([glyph], np.random.default_rng(k), pen, light_on_dark=bool(k % 2))
            pictures.append(gray)
    expected = trained_predictor.predict_proba(np.stack([to_mnist(p) for p in pictures]))
    for picture, proba in zip(pictures, expected, strict=True):
        reading = read_number(picture, trained_predictor)
        assert reading.mode == "digit" and len(reading.digits) == 1
        np.testing.assert_allclose(reading.digits[0].probabilities, proba, atol=1e-6)


def test_unsure_digits_are_named_and_the_reading_is_json(bench, trained_predictor):
    gray, _ = bench.draw_number(["4", "2"], np.random.default_rng(0), bench.PENS[1])
    assert read_number(gray, trained_predictor, unsure_below=0.0).unsure_positions == []
    doubtful = read_number(gray, trained_predictor, unsure_below=1.01)  # no probability reaches it
    assert doubtful.unsure_positions == [0, 1]
    assert [d.verdict for d in doubtful.digits] == ["unsure", "unsure"]
    data = json.loads(json.dumps(doubtful.to_json()))
    assert data["text"] == doubtful.text and data["unsure_positions"] == [0, 1] and data["mode"] == "number"
    first = data["digits"][0]
    assert set(first) == {"digit", "confidence", "verdict", "box", "probabilities"}
    assert set(first["box"]) == {"left", "top", "width", "height"}
    assert sum(first["probabilities"]) == pytest.approx(1.0, abs=1e-4)


def test_a_judge_gives_the_verdicts(bench, trained_predictor):
    """The hook for the trust model (issue 11): it sees what the model saw, and its verdicts are kept."""
    gray, _ = bench.draw_number(["4", "2", "7"], np.random.default_rng(0), bench.PENS[1])
    seen = {}

    def judge(images, proba):
        seen["shapes"] = images.shape, proba.shape
        return ["digit", "not_a_digit", "digit"]

    reading = read_number(gray, trained_predictor, judge=judge)
    assert seen["shapes"] == ((3, 28, 28), (3, 10))
    assert [d.verdict for d in reading.digits] == ["digit", "not_a_digit", "digit"]
    assert reading.unsure_positions == [1]


def test_a_decimal_point_and_a_minus_sign_are_left_out_as_marks(bench, trained_predictor):
    pen = bench.PENS[1]  # medium: a dot of this pen is more than a speck of dust
    gray, truth = bench.draw_number(["3", ".", "1", "4"], np.random.default_rng(0), pen)
    reading = read_number(gray, trained_predictor)
    assert len(reading.text) == 3 and len(reading.marks) == 1
    assert iou(tuple(reading.marks[0].to_json().values()), truth[1]) >= 0.5
    gray, truth = bench.draw_number(["-", "1", "2"], np.random.default_rng(0), pen)
    reading = read_number(gray, trained_predictor)
    assert len(reading.text) == 2 and len(reading.marks) == 1
    assert iou(tuple(reading.marks[0].to_json().values()), truth[0]) >= 0.5


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("mode", ["auto", "number", "digit"])
@pytest.mark.parametrize("shade", [0.0, 0.6, 1.0])
def test_a_blank_picture_is_a_clear_error(trained_predictor, mode, shade):
    with pytest.raises(NoInkError, match="blank"):
        read_number(np.full((60, 200), shade, dtype=np.float32), trained_predictor, mode=mode)


def test_a_number_too_long_is_refused(bench, trained_predictor):
    digits = [str(d % 10) for d in range(MAX_DIGITS + 8)]
    gray, _ = bench.draw_number(digits, np.random.default_rng(0), bench.Pen("thin", (2, 2), (40, 40)))
    with pytest.raises(TooManyDigitsError, match=f"limit of {MAX_DIGITS}") as info:
        read_number(gray, trained_predictor)
    assert isinstance(info.value, InputImageError)  # the CLI and the API show it as a user's error


def test_bad_arguments_are_clear_errors(trained_predictor):
    picture = np.zeros((40, 40), dtype=np.float32)
    picture[10:30, 18:22] = 1
    with pytest.raises(ConfigError, match="unknown reading mode 'numbers'"):
        read_number(picture, trained_predictor, mode="numbers")
    with pytest.raises(InputImageError, match="2-D"):
        read_number(np.zeros((4, 40, 40), dtype=np.float32), trained_predictor)
    with pytest.raises(InputImageError, match="0..255"):
        read_number(np.full((40, 40), 300), trained_predictor)


# ---------------------------------------------------------------- the benchmark's scoring

def test_bench_scores_whole_numbers_and_digits(bench):
    assert bench.edit_distance("1234", "1234") == 0
    assert bench.edit_distance("1234", "124") == 1  # a digit missed
    assert bench.edit_distance("1234", "12834") == 1  # a digit added
    assert bench.edit_distance("1234", "1284") == 1  # a digit misread
    exact, per_digit = bench.score(["1234", "1234", "12"], ["1234", "1284", "3456"])
    assert exact == pytest.approx(1 / 3)
    assert per_digit == pytest.approx((1 + 0.75 + 0) / 3)  # 1 - 4/2 edits, floored at 0
