"""digitlab.imageops against scipy.ndimage, the reference it replaces on the inference path: the same numbers,
bit for bit, on random masks and images of many shapes and on the edge cases (empty, full, one row, one
pixel, ink touching the border). SciPy is a training and test dependency, so it is here to compare with."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_array_equal
from scipy import ndimage

from digitlab import imageops

SQUARE = np.ones((3, 3))  # scipy's structure for 8-connectivity


@st.composite
def masks(draw, max_side: int = 24):
    """A boolean mask: random shape (one row or column included), random density (empty and full included)."""
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 0.5, 0.7, 0.95, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).random((h, w)) < density


@st.composite
def images(draw, max_side: int = 24):
    """A float32 image in [0, 1], from 8-bit values (as decoded pictures are) or from arbitrary floats."""
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        return (rng.integers(0, 256, (h, w)) / 255).astype(np.float32)
    return (rng.random((h, w)) ** draw(st.sampled_from([1, 3, 10]))).astype(np.float32)


EDGE_CASES = {
    "empty": np.zeros((5, 7), bool),
    "full": np.ones((5, 7), bool),
    "one pixel on": np.pad(np.ones((1, 1), bool), 2),
    "one pixel image": np.ones((1, 1), bool),
    "one pixel off": np.ones((1, 1), bool) & False,
    "one row": np.array([[1, 0, 1, 1, 0, 0, 1]], bool),
    "one column": np.array([[1, 0, 1, 1, 0, 0, 1]], bool).T,
    "frame": np.pad(np.zeros((3, 4), bool), 1, constant_values=True),  # touches every border, one hole
    "diagonal": np.eye(6, dtype=bool),  # one component 8-connected, six 4-connected
    "anti-diagonal": np.eye(6, dtype=bool)[::-1],
    "checkerboard": (np.indices((6, 7)).sum(0) % 2).astype(bool),
    "spiral": np.array([[1, 1, 1, 1, 1, 1],
                        [0, 0, 0, 0, 0, 1],
                        [1, 1, 1, 1, 0, 1],
                        [1, 0, 0, 1, 0, 1],
                        [1, 0, 0, 0, 0, 1],
                        [1, 1, 1, 1, 1, 1]], bool),
    "u shapes joined late": np.array([[1, 0, 1, 0, 1, 0, 1],
                                      [1, 0, 1, 0, 1, 0, 1],
                                      [1, 1, 1, 0, 1, 1, 1],
                                      [0, 0, 0, 0, 0, 0, 1],
                                      [1, 1, 1, 1, 1, 1, 1]], bool),
}


def check_label(mask: np.ndarray) -> None:
    for connectivity, structure in ((imageops.SQUARE, SQUARE), (imageops.CROSS, None)):
        labels, n = imageops.label(mask, connectivity)
        want, want_n = ndimage.label(mask, structure=structure)
        assert n == want_n
        assert labels.dtype == want.dtype
        assert_array_equal(labels, want)  # the same numbering: raster order of each component's first pixel


def check_measurements(x: np.ndarray, mask: np.ndarray) -> None:
    labels, n = ndimage.label(mask, structure=SQUARE)
    index = np.arange(1, n + 1)
    assert_array_equal(imageops.sum_labels(x, labels, index), ndimage.sum(x, labels, index))
    assert imageops.find_objects(labels) == ndimage.find_objects(labels)
    assert imageops.find_objects(labels, max_label=n + 2) == ndimage.find_objects(labels, max_label=n + 2)
    if n:
        x64 = x.astype(np.float64)
        assert_array_equal(imageops.maximum_labels(x64, labels, index), ndimage.maximum(x64, labels, index))
        centres = imageops.center_of_mass(x, labels, index)  # nan where a component's values are all 0, as SciPy's
        assert_array_equal(np.array(centres), np.array(ndimage.center_of_mass(x, labels, index)))
    if x.sum() > 0:
        assert imageops.center_of_mass(x) == ndimage.center_of_mass(x)


def check_shapes(mask: np.ndarray) -> None:
    assert_array_equal(imageops.binary_fill_holes(mask), ndimage.binary_fill_holes(mask))
    assert_array_equal(imageops.binary_dilation(mask), ndimage.binary_dilation(mask))
    ours = imageops.distance_transform_edt(mask)
    if mask.all():  # scipy has no background to measure to and returns an artefact; we say inf
        assert np.isinf(ours).all()
    else:
        want = ndimage.distance_transform_edt(mask)
        assert ours.dtype == want.dtype
        assert_array_equal(ours, want)


@pytest.mark.parametrize("name", EDGE_CASES)
def test_edge_cases_match_scipy(name):
    mask = EDGE_CASES[name]
    check_label(mask)
    check_shapes(mask)
    check_measurements(mask * np.linspace(0.1, 1, mask.size, dtype=np.float32).reshape(mask.shape), mask)


def test_empty_arrays():
    for shape in ((0, 5), (5, 0)):
        mask = np.zeros(shape, bool)
        labels, n = imageops.label(mask)
        assert n == 0 and labels.shape == shape
        assert imageops.binary_fill_holes(mask).shape == shape
        assert imageops.binary_dilation(mask).shape == shape
        assert imageops.distance_transform_edt(mask).shape == shape


@settings(max_examples=150, deadline=None)
@given(masks())
def test_label_matches_scipy(mask):
    check_label(mask)


@settings(max_examples=150, deadline=None)
@given(masks(), images())
@pytest.mark.filterwarnings("ignore:invalid value encountered")  # 0 / 0: both give nan
def test_measurements_match_scipy(mask, image):
    h, w = min(mask.shape[0], image.shape[0]), min(mask.shape[1], image.shape[1])
    mask = mask[:h, :w]
    check_measurements(image[:h, :w] * mask, mask)


@settings(max_examples=150, deadline=None)
@given(masks(max_side=40))
def test_shapes_and_distances_match_scipy(mask):
    check_shapes(mask)


def test_distances_on_a_large_thin_figure():
    # The transform thickening runs: the distance to a thin stroke, far across a large picture.
    mask = np.ones((300, 260), bool)
    rows = np.arange(40, 260)
    mask[rows, (60 + 0.6 * rows).astype(int)] = False  # a slanted hairline
    mask[150, 20:240] = False
    assert_array_equal(imageops.distance_transform_edt(mask), ndimage.distance_transform_edt(mask))
    assert_array_equal(imageops.distance_transform_edt(~mask), ndimage.distance_transform_edt(~mask))


@settings(max_examples=150, deadline=None)
@given(images(max_side=40))
def test_uniform_filter_matches_scipy(image):
    assert_array_equal(imageops.uniform_filter(image, 3), ndimage.uniform_filter(image, 3))
    as_float64 = image.astype(np.float64) * 37.1  # rounding shows in float64: SciPy's running sum, reproduced
    assert_array_equal(imageops.uniform_filter(as_float64, 3), ndimage.uniform_filter(as_float64, 3))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 50), st.integers(1, 60), st.sampled_from(["float32", "float64", "int64"]),
       st.integers(0, 2**32 - 1))
def test_1d_filters_match_scipy(length, size, dtype, seed):
    # Windows longer than the line included: "reflect" then mirrors it periodically.
    rng = np.random.default_rng(seed)
    v = (rng.random(length) * 10 ** rng.uniform(-3, 3)).astype(dtype) if dtype != "int64" \
        else rng.integers(-5, 50, length)
    assert_array_equal(imageops.minimum_filter1d(v, size), ndimage.minimum_filter1d(v, size))
    assert_array_equal(imageops.maximum_filter1d(v, size), ndimage.maximum_filter1d(v, size))
    ours, want = imageops.uniform_filter1d(v, size), ndimage.uniform_filter1d(v, size)
    assert ours.dtype == want.dtype
    assert_array_equal(ours, want)


def test_a_photo_sized_mask_matches_scipy():
    # Noise and strokes on a 1000 x 1000 picture: many components, long runs, labels up to the thousands.
    rng = np.random.default_rng(0)
    mask = rng.random((1000, 1000)) < 0.05
    mask[200:800, 480:520] = True
    mask[100:110, :] = True
    check_label(mask)
    labels, n = ndimage.label(mask, structure=SQUARE)
    x = rng.random(mask.shape).astype(np.float32) * mask
    index = np.arange(1, n + 1)
    assert_array_equal(imageops.sum_labels(x, labels, index), ndimage.sum(x, labels, index))
    assert imageops.find_objects(labels) == ndimage.find_objects(labels)
