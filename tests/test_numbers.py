"""digitlab.numbers: whole numbers are segmented into their digits and read left to right.

The pictures are written with a pen by bench/read_numbers.py's generator (stroke templates jittered per
drawing), which also returns each digit's true box; the classifier is the session's small trained
seed-ann (conftest.trained_predictor).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bench_support import bench_module
from scipy import ndimage

from digitlab.errors import ConfigError, InputImageError
from digitlab.numbers import MAX_DIGITS, TooManyDigitsError, read_number
from digitlab.preprocessing import NoInkError, to_mnist
from digitlab.segmentation import segment


@pytest.fixture(scope="module")
def bench():
    """bench/read_numbers.py, the generator of numbers (a script, so loaded from its path)."""
    return bench_module("read_numbers")


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


# ---------------------------------------------------------------- auto mode: what is not writing stays one digit

def test_noise_is_read_as_one_digit_in_auto_mode(trained_predictor):
    """Noise falls apart into blobs that the search reads as "188" (number mode does); auto reads it as
    `digitlab predict` does, so it gets predict's verdict ("not a digit" with a trust model)."""
    from digitlab import nondigits
    rng = np.random.default_rng(0)
    uniform = [rng.random((280, 280)).astype(np.float32) for _ in range(8)]
    canvases = [np.asarray(im, np.float32) / 255 for kind, _, im in nondigits.pictures("holdout", per_kind=12)
                if kind == "noise"]
    assert sum(len(read_number(x, trained_predictor, mode="number").text) > 1 for x in uniform) >= 4
    for x in uniform + canvases:
        try:
            expected = trained_predictor.predict_proba(to_mnist(x)[None])[0]
        except NoInkError:  # faint noise: blank in every mode
            with pytest.raises(NoInkError):
                read_number(x, trained_predictor)
            continue
        reading = read_number(x, trained_predictor)
        assert reading.mode == "digit" and len(reading.digits) == 1
        np.testing.assert_allclose(reading.digits[0].probabilities, expected, atol=1e-6)


def test_a_clear_number_is_still_a_number_in_auto_mode(bench, trained_predictor):
    from digitlab.numbers import trust_judge
    for k, pen in enumerate(bench.PENS):
        gray, _ = bench.draw_number(list("1207"), np.random.default_rng(k), pen, light_on_dark=bool(k % 2))
        reading = read_number(gray, trained_predictor, judge=trust_judge(trained_predictor))
        assert reading.mode == "number" and len(reading.digits) == 4


@pytest.mark.parametrize(("flagged", "as_number"), [(0, True), (1, True), (2, False), (4, False)])
def test_auto_reads_a_number_half_made_of_non_digits_as_one_digit(bench, trained_predictor, flagged, as_number):
    """Half the positions not digits (a dash cut in pieces, a frame): auto gives the single-digit reading."""
    gray, _ = bench.draw_number(list("1207"), np.random.default_rng(0), bench.PENS[1])

    def judge(images, proba):
        return ["not_a_digit"] * flagged + ["digit"] * (len(images) - flagged) if len(images) > 1 else ["not_a_digit"]

    reading = read_number(gray, trained_predictor, judge=judge)
    assert (reading.mode == "number") == as_number
    if not as_number:
        assert [d.verdict for d in reading.digits] == ["not_a_digit"]
        np.testing.assert_allclose(reading.digits[0].probabilities,
                                   trained_predictor.predict_proba(to_mnist(gray)[None])[0], atol=1e-6)
    assert len(read_number(gray, trained_predictor, mode="number", judge=judge).digits) == 4  # never in number mode


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


# ---------------------------------------------------------------- `digitlab predict --mode`

def write_png(gray: np.ndarray, path: Path) -> Path:
    from PIL import Image
    Image.fromarray(np.round(gray * 255).astype(np.uint8)).save(path)
    return path


def predict(capsys, trained_run, *argv) -> tuple[int, str, str]:
    """`digitlab predict RUN ARGV...` through main(): exit status, stdout, stderr."""
    from digitlab.cli import main
    code = main(["predict", str(trained_run.path), *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_predict_reads_a_number_with_its_boxes_left_to_right(bench, trained_run, trained_predictor, tmp_path,
                                                            capsys):
    gray, truth = bench.draw_number(["4", "2"], np.random.default_rng(0), bench.PENS[1])
    png = write_png(gray, tmp_path / "meter.png")
    seven = write_png(bench.draw_number(["7"], np.random.default_rng(0), bench.PENS[1])[0], tmp_path / "seven.png")
    code, out, err = predict(capsys, trained_run, png, seven, "--mode", "auto", "--json", "--save-input",
                             tmp_path / "seen")
    assert code == 0, err
    item, lone = json.loads(out)
    # A lone digit in auto mode keeps predict's single-digit entry.
    assert lone["mode"] == "digit" and lone["path"] == str(seven) and lone["verdict"] and len(lone["top3"]) == 3
    assert item["path"] == str(png) and item["text"] == "42" and item["mode"] == "number" and item["error"] is None
    boxes = [tuple(d["box"].values()) for d in item["digits"]]
    assert [b[0] for b in boxes] == sorted(b[0] for b in boxes)  # left to right
    assert min(iou(b, t) for b, t in zip(boxes, truth, strict=True)) >= 0.8
    assert item["confidence"] == pytest.approx(np.prod([d["confidence"] for d in item["digits"]]))
    assert all(d["verdict"] in ("digit", "unsure", "not_a_digit") for d in item["digits"])
    assert item["unsure_positions"] == [k for k, d in enumerate(item["digits"]) if d["verdict"] != "digit"]
    # --save-input: one 28x28 per digit, what the model saw, named by its position from 1.
    from digitlab.preprocessing import read_image_file, to_png_bytes
    saved = sorted((tmp_path / "seen").iterdir())
    assert [f.name for f in saved] == ["meter-1-28x28.png", "meter-2-28x28.png", "seven-28x28.png"]
    saved = saved[:2]
    reading = read_number(read_image_file(png), trained_predictor)
    assert [f.read_bytes() for f in saved] == [to_png_bytes(d.input28) for d in reading.digits]


def test_predict_text_names_the_doubtful_positions_from_1(bench, trained_predictor):
    from digitlab.cli.predict import _number_line
    gray, _ = bench.draw_number(["4", "2", "7"], np.random.default_rng(0), bench.PENS[1])
    reading = read_number(gray, trained_predictor, judge=lambda images, proba: ["unsure", "digit", "not_a_digit"])
    line = _number_line(reading)
    d = reading.digits
    assert line == (f"number {reading.text} (p={reading.confidence:.3f})  digits: {d[0].digit} {d[0].confidence:.3f}, "
                    f"{d[1].digit} {d[1].confidence:.3f}, {d[2].digit} {d[2].confidence:.3f}"
                    "  unsure at position: 1  not a digit at position: 3")


def test_predict_reports_bad_files_in_a_batch_and_reads_the_others(bench, trained_run, mnist, tmp_path, capsys):
    blank = write_png(np.ones((60, 200), dtype=np.float32), tmp_path / "blank.png")
    number = write_png(bench.draw_number(["4", "2"], np.random.default_rng(0), bench.PENS[1])[0],
                       tmp_path / "n42.png")
    long_digits = [str(d % 10) for d in range(MAX_DIGITS + 8)]
    too_long = write_png(bench.draw_number(long_digits, np.random.default_rng(0),
                                           bench.Pen("thin", (2, 2), (40, 40)))[0], tmp_path / "long.png")
    np.save(tmp_path / "digits.npy", mnist.x_test[:2])
    code, out, err = predict(capsys, trained_run, blank, too_long, number, tmp_path / "digits.npy", "--mode", "number")
    assert code == 1  # one input could not be read
    lines = out.splitlines()
    assert lines[0] == f"{blank}: blank (no ink found)"  # a verdict, as for a single digit
    assert lines[1].startswith(f"{number}: number 42 (p=")
    assert [line.split(": ")[1].split()[0] for line in lines[2:]] == ["digit", "digit"]  # .npy: single digits
    assert f"{too_long}: ERROR " in err and f"limit of {MAX_DIGITS}" in err
    assert ".npy arrays hold 28x28 digits already" in err


def test_runs_of_other_classes_read_one_item_per_image():
    from digitlab.cli.predict import _mode_for
    digits, fashion = [str(d) for d in range(10)], ["T-shirt/top", "Trouser", "Pullover"] + ["x"] * 7
    assert [_mode_for(m, digits) for m in ("auto", "number", "digit")] == ["auto", "number", "digit"]
    assert [_mode_for(m, fashion) for m in ("auto", "digit")] == ["digit", "digit"]  # a wide shoe is no number
    with pytest.raises(ConfigError, match="--mode number reads digits"):
        _mode_for("number", fashion)


def test_predict_refuses_an_unknown_mode(trained_run, tmp_path, capsys):
    from digitlab.cli import main
    assert main(["predict", str(trained_run.path), str(tmp_path / "x.png"), "--mode", "numbers"]) == 2
    assert "invalid choice: 'numbers'" in capsys.readouterr().err


# ---------------------------------------------------------------- the benchmark's scoring

def test_bench_scores_whole_numbers_and_digits(bench):
    assert bench.edit_distance("1234", "1234") == 0
    assert bench.edit_distance("1234", "124") == 1  # a digit missed
    assert bench.edit_distance("1234", "12834") == 1  # a digit added
    assert bench.edit_distance("1234", "1284") == 1  # a digit misread
    exact, per_digit = bench.score(["1234", "1234", "12"], ["1234", "1284", "3456"])
    assert exact == pytest.approx(1 / 3)
    assert per_digit == pytest.approx((1 + 0.75 + 0) / 3)  # 1 - 4/2 edits, floored at 0
