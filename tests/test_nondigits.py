"""The non-digit set: deterministic, versioned, split in two, drawn like user input and normalised like it."""
from __future__ import annotations

import numpy as np
import pytest

from digitlab import drawing, nondigits
from digitlab.errors import ConfigError
from digitlab.preprocessing import NoInkError, to_mnist


@pytest.fixture(scope="module")
def fit_set():
    return nondigits.split("fit", per_kind=4)


def test_the_set_is_a_pure_function_of_seed_part_and_version(fit_set):
    again = nondigits.split("fit", per_kind=4)
    assert again.sha256 == fit_set.sha256 and again.labels == fit_set.labels
    holdout, train = nondigits.split("holdout", per_kind=4), nondigits.split("train", per_kind=4)
    assert len({fit_set.sha256, holdout.sha256, train.sha256}) == 3
    images = [set(map(bytes, np.round(s.x * 255).astype(np.uint8))) for s in (fit_set, holdout, train)]
    assert not images[0] & images[1] and not images[1] & images[2]  # no held-out image is fitted or trained on
    assert nondigits.split("fit", per_kind=4, seed=1).sha256 != fit_set.sha256
    assert fit_set.version == nondigits.GENERATOR_VERSION and fit_set.part == "fit"


def test_every_kind_is_there_as_28x28_inputs(fit_set):
    assert fit_set.x.shape == (4 * len(nondigits.KINDS), 28, 28) and fit_set.x.dtype == np.float32
    assert fit_set.x.min() >= 0 and fit_set.x.max() == 1
    assert set(fit_set.kinds) == set(nondigits.KINDS)
    assert len(fit_set.of_kind("letter_font")) == 4
    assert fit_set.fonts  # the fonts it used, or Pillow's built-in one


def test_pictures_are_canvases_as_a_user_draws_them_and_the_set_is_what_predict_makes_of_them(fit_set):
    pictures = list(nondigits.pictures("fit", per_kind=4))
    assert [f"{k}" for k, _, _ in pictures] == list(fit_set.kinds)
    for (kind, label, im), x in zip(pictures, fit_set.x):
        assert im.mode == "L" and im.size == (nondigits.CANVAS, nondigits.CANVAS)
        gray = drawing.to_gray(im)
        if kind != "noise":  # white paper, dark ink
            assert np.median(gray) == 1.0 and gray.min() < 0.3, label
        np.testing.assert_array_equal(to_mnist(gray), x)


def test_digit_like_figures_are_left_out():
    # Circles are plausible zeros, a lone bar a one; letters a reader could take for digits are not drawn.
    assert not {"O", "o", "D", "Q", "I", "l", "Z", "z", "S", "s", "B", "G", "b", "g", "q"} & set(nondigits.FONT_LETTERS)
    assert not {"O", "I", "Z", "S", "G", "B"} & set(drawing.LETTERS)
    assert not any(name in nondigits.SHAPE_STROKES for name in ("circle", "ellipse", "ring"))


def test_a_blank_canvas_is_not_in_the_set_but_refused_by_preprocessing():
    with pytest.raises(NoInkError):
        to_mnist(drawing.to_gray(nondigits.blank_picture()))


def test_without_system_fonts_the_builtin_font_is_used(monkeypatch):
    monkeypatch.setattr(nondigits, "font_files", lambda: ())
    s = nondigits.split("holdout", per_kind=2)
    assert s.fonts == (nondigits.BUILTIN_FONT,) and len(s.of_kind("letter_font")) == 2
    assert all("pillow-default" in label for label, kind in zip(s.labels, s.kinds) if kind == "letter_font")


def test_unknown_part_is_refused():
    with pytest.raises(ConfigError, match="fit, holdout, train"):
        nondigits.split("test")


@pytest.mark.network
def test_fashion_mnist_is_the_far_out_of_distribution_set():
    x = nondigits.fashion_mnist_test(100)
    assert x.shape == (100, 28, 28) and x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
