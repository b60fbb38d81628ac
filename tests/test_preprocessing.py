"""digitlab.preprocessing: drawn strokes come out as MNIST digits, MNIST digits stay themselves,
bad inputs fail clearly."""
from __future__ import annotations

import io
import pickle
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw
from scipy import ndimage

from digitlab import preprocessing
from digitlab.preprocessing import (
    MAX_BYTES,
    STROKE_MIN,
    STROKE_TARGET,
    BadArrayError,
    ImageTooLargeError,
    InputImageError,
    NoInkError,
    NotAnImageError,
    from_pixels,
    read_image_bytes,
    read_image_file,
    read_npy,
    stroke_width,
    to_mnist,
    to_png_bytes,
)

SHAPES = ("zero", "one", "four", "seven")


# ---------------------------------------------------------------- generated digits

def draw(shape: str, canvas=(200, 160), box=(60, 30, 130, 130), width=8, ink=0, paper=255, mode="L") -> Image.Image:
    """A digit-like figure drawn inside `box` (x0, y0, x1, y1) on a `canvas` (w, h)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    strokes = {
        "zero": None,
        "one": [(x0 + 0.7 * w, y0), (x0 + 0.3 * w, y1)],
        "four": [(x0 + 0.6 * w, y1), (x0 + 0.6 * w, y0), (x0, y0 + 0.65 * h), (x1, y0 + 0.65 * h)],
        "seven": [(x0, y0), (x1, y0), (x0 + 0.3 * w, y1)],
    }[shape]
    im = Image.new(mode, canvas, paper)
    d = ImageDraw.Draw(im)
    if strokes is None:
        d.ellipse(box, outline=ink, width=width)
    else:
        d.line(strokes, fill=ink, width=width, joint="curve")
    return im


def png(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def ink_box(x: np.ndarray, level: float = 0.0) -> tuple[int, int]:
    """(height, width) of the bounding box of pixels brighter than `level`."""
    rows, cols = np.flatnonzero((x > level).any(1)), np.flatnonzero((x > level).any(0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def assert_mnist_like(x: np.ndarray, source_hw: tuple[int, int] | None = None, pen: float = 0) -> None:
    # What every MNIST digit satisfies: see test_mnist_itself_satisfies_the_checks.
    assert x.shape == (28, 28) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.5
    h, w = ink_box(x)
    assert max(h, w) in (19, 20), (h, w)
    # Centre of mass on (14, 14) to within half a pixel (whole-pixel shifts), unless the shift was
    # stopped so as not to cut ink off: then the ink touches the edge it was pushed towards.
    com = np.array(ndimage.center_of_mass(x))
    assert np.abs(com - 14.0).max() <= 2.0, com
    for axis, off in enumerate(com - 14.0):
        edges = (x[0], x[-1]) if axis == 0 else (x[:, 0], x[:, -1])
        if abs(off) > 0.5 + 1e-3:  # float32 sums land a hair past 0.5
            assert edges[1 if off < 0 else 0].any(), (com, "off centre without touching the edge")
    if source_hw is not None:  # aspect ratio kept: the shorter side scales as the longer one does
        sh, sw = source_hw
        expected = 20 * min(sh, sw) / max(sh, sw)
        # A pen that would come out thinner than MNIST's is thickened first, which pads the ink box
        # on every side: the shorter side then gains up to the added stroke width, STROKE_TARGET px.
        # (`pen`, source px, is the pen width the figure was drawn with; 20% margin for measuring.)
        thickened = pen * 20 / max(sh, sw) < 1.2 * STROKE_MIN
        low, high = expected - 1.5, expected + 1.5 + (STROKE_TARGET if thickened else 0)
        assert low <= min(h, w) <= high, (h, w, source_hw, pen)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Best correlation over one-pixel shifts: where the centre of mass falls on a half pixel,
    rounding can place the same digit one pixel apart, which is no difference to a model."""
    return max(np.corrcoef(np.roll(a, (dy, dx), (0, 1)).ravel(), b.ravel())[0, 1]
               for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def test_mnist_itself_satisfies_the_checks(mnist):
    for img in mnist.x_test[:200]:
        assert_mnist_like(img.astype(np.float32) / 255)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("canvas,box,width", [
    ((200, 160), (60, 30, 130, 130), 8),     # a scan, digit in the middle
    ((640, 480), (20, 300, 120, 470), 14),   # a photo, digit in a corner
    ((30, 30), (3, 4, 14, 18), 1),           # smaller than MNIST, 1-px pen: enlarged
    ((400, 100), (330, 5, 395, 95), 6),      # wide strip, digit at the right edge
])
def test_generated_digit_comes_out_mnist_like(shape, canvas, box, width):
    im = draw(shape, canvas, box, width)
    gray = read_image_bytes(png(im))
    src = 1 - gray
    assert_mnist_like(to_mnist(gray), source_hw=ink_box(src, 0.5), pen=width)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.sampled_from(SHAPES),
       canvas=st.tuples(st.integers(40, 500), st.integers(40, 500)),
       frac=st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0.3, 0.9), st.floats(0.3, 0.9)),
       pen=st.floats(0.03, 0.15),
       encoding=st.sampled_from(["dark-on-light", "light-on-dark", "rgb", "rgba-black", "rgba-white", "jpeg"]))
# found by hypothesis: a 33 px pen on a figure 20 px tall draws a stroke only 20 px thick, which is thickened
@example(shape="zero", canvas=(356, 40), frac=(0.0, 0.0, 0.75, 0.5), pen=0.125, encoding="dark-on-light")
def test_property_any_drawn_digit_is_normalised(shape, canvas, frac, pen, encoding):
    cw, ch = canvas
    fx, fy, fw, fh = frac
    w, h = max(12, int(fw * cw)), max(12, int(fh * ch))
    x0, y0 = int(fx * (cw - w)), int(fy * (ch - h))
    width = max(1, round(pen * max(w, h)))
    # Keep the ellipse's ring open and strokes inside the canvas.
    box = (x0 + width, y0 + width, x0 + w - width, y0 + h - width)
    if box[2] - box[0] < 6 or box[3] - box[1] < 6:
        box = (x0, y0, x0 + w - 1, y0 + h - 1)
    im = encode(draw(shape, canvas, box, width), encoding)
    gray = read_image_bytes(im)
    reference = 1 - read_image_bytes(png(draw(shape, canvas, box, width)))
    figure_hw = ink_box(reference, 0.5)
    # The ink is no thicker than the figure: a pen wider than its shorter side draws a thinner stroke.
    assert_mnist_like(to_mnist(gray), source_hw=figure_hw, pen=min(width, *figure_hw))


def encode(im_l: Image.Image, encoding: str) -> bytes:
    """The same black-on-white drawing in another form a user might send."""
    a = np.asarray(im_l)
    ink = 255 - a  # 255 where the stroke is
    if encoding == "dark-on-light":
        return png(im_l)
    if encoding == "light-on-dark":
        return png(Image.fromarray(ink))
    if encoding == "rgb":  # blue ballpoint on yellowish paper
        rgb = np.stack([250 - 0.8 * ink, 240 - 0.7 * ink, 200 - 0.2 * ink], -1).clip(0, 255).astype(np.uint8)
        return png(Image.fromarray(rgb))
    if encoding == "rgba-black":  # black strokes on a transparent ground that stores black too
        rgba = np.zeros(a.shape + (4,), np.uint8)
        rgba[..., 3] = ink
        return png(Image.fromarray(rgba))
    if encoding == "rgba-white":  # white strokes on a transparent ground, as for a dark-mode page
        rgba = np.full(a.shape + (4,), 255, np.uint8)
        rgba[..., 3] = ink
        return png(Image.fromarray(rgba))
    if encoding == "jpeg":
        return png(im_l, format="JPEG", quality=75)
    raise ValueError(encoding)


@pytest.mark.parametrize("encoding", ["light-on-dark", "rgb", "rgba-black", "rgba-white", "jpeg"])
def test_every_encoding_gives_the_same_digit(encoding):
    im = draw("seven", (120, 120), (30, 20, 90, 100), 7)
    expected = to_mnist(read_image_bytes(png(im)))
    got = to_mnist(read_image_bytes(encode(im, encoding)))
    assert similarity(expected, got) > 0.97


def test_stroke_colour_under_transparency_is_ignored():
    # A common export: transparent pixels store white, strokes are black and opaque.
    a = np.asarray(draw("four"))
    rgba = np.full(a.shape + (4,), 255, np.uint8)
    rgba[..., :3] = a[..., None]
    rgba[..., 3] = np.where(a < 128, 255, 0)
    assert_mnist_like(to_mnist(read_image_bytes(png(Image.fromarray(rgba)))))


def test_noise_and_dust_do_not_move_the_box():
    rng = np.random.default_rng(0)
    clean = np.asarray(draw("one", (300, 300), (120, 60, 180, 240), 12), np.float32) / 255
    dirty = clean * 0.8 + 0.1 + rng.normal(0, 0.03, clean.shape)  # grey paper, sensor noise
    dirty[rng.integers(0, 300, 20), rng.integers(0, 300, 20)] = 0.1  # specks of dust
    a, b = to_mnist(clean), to_mnist(dirty.clip(0, 1))
    assert_mnist_like(b)
    assert similarity(a, b) > 0.95


def test_mnist_digits_stay_themselves(mnist):
    # MNIST was made with this recipe, so re-applying it should change little. Thin strokes can
    # move by one pixel (the centre of mass rounds the other way), hence the shift tolerance.
    x = mnist.x_test[:300].astype(np.float32) / 255
    y = np.stack([to_mnist(img) for img in x])
    corr = np.array([np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(x, y)])
    shifted = np.array([similarity(a, b) for a, b in zip(x, y)])
    assert corr.mean() > 0.97
    assert shifted.min() > 0.85
    for img in y:
        assert_mnist_like(img)


def test_polarity_of_a_28x28_drawing():
    # A user's 28x28 dark-on-light PNG is inverted; MNIST polarity passes through.
    x = np.zeros((28, 28), np.float32)
    x[4:24, 12:16] = 1.0
    assert np.allclose(to_mnist(x), to_mnist(1 - x))
    assert np.allclose(to_mnist((x * 255).astype(np.uint8)), to_mnist(x))


# ---------------------------------------------------------------- stroke width

def pen_line(width: int, angle: float) -> np.ndarray:
    """A 140 px line `width` px wide at `angle` degrees, anti-aliased, ink 1 on 0."""
    s = 4  # drawn 4x larger, then box-averaged
    im = Image.new("L", (200 * s, 200 * s), 0)
    dx, dy = 70 * s * np.cos(np.radians(angle)), 70 * s * np.sin(np.radians(angle))
    ImageDraw.Draw(im).line([(100 * s - dx, 100 * s - dy), (100 * s + dx, 100 * s + dy)], fill=255, width=width * s)
    return np.asarray(im.reduce(s), np.float32) / 255


@pytest.mark.parametrize("width", [2, 3, 6, 10, 20])
@pytest.mark.parametrize("angle", [0, 20, 45])
def test_stroke_width_measures_the_pen(width, angle):
    assert abs(stroke_width(pen_line(width, angle) >= 0.5) - width) <= max(0.7, 0.15 * width)
    ring = np.asarray(draw("zero", (200, 200), (20, 20, 180, 180), width), np.float32) < 128
    assert abs(stroke_width(ring) - width) <= max(0.7, 0.15 * width)
    assert stroke_width(np.zeros((5, 5), bool)) == 0


def without_thickening(monkeypatch, gray) -> np.ndarray:
    with monkeypatch.context() as m:
        m.setattr(preprocessing, "_thicken", lambda digit, box: digit)
        return to_mnist(gray)


@pytest.fixture(scope="module")
def mnist_stroke_range(mnist) -> tuple[float, float]:
    """5th and 95th percentile of the stroke width of MNIST test digits, px (about 2.0 and 3.8)."""
    widths = [stroke_width(x >= 128) for x in mnist.x_test[:1000]]
    return tuple(np.percentile(widths, [5, 95]))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("canvas,box,pen", [
    ((600, 600), (150, 40, 450, 560), 3),    # a fine pen on a phone-sized canvas
    ((1400, 1000), (300, 50, 900, 950), 4),  # larger than THICKEN_SIDE many times: max-pooled first
    ((80, 80), (20, 10, 60, 70), 1),         # a 1-px pen on a small canvas
])
def test_thin_pen_comes_out_as_wide_as_mnist(shape, canvas, box, pen, mnist_stroke_range, monkeypatch):
    gray = np.asarray(draw(shape, canvas, box, pen), np.float32) / 255
    x = to_mnist(gray)
    lo, hi = mnist_stroke_range
    assert lo <= stroke_width(x >= 0.5) <= hi
    assert stroke_width(without_thickening(monkeypatch, gray) >= 0.5) < lo  # what it was: a hairline
    assert_mnist_like(x)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("pen", [35, 50, 70])  # about 2.5, 3.5 and 4.5 px at the final scale
def test_bold_strokes_are_left_alone(shape, pen, monkeypatch):
    gray = np.asarray(draw(shape, (300, 300), (70, 20, 230, 280), pen), np.float32) / 255
    assert np.array_equal(to_mnist(gray), without_thickening(monkeypatch, gray))


def test_pooled_thickening_matches_the_full_resolution_one(monkeypatch):
    # THICKEN_SIDE is a shortcut for speed: thickening the full 1900 px digit gives the same picture.
    gray = np.asarray(draw("four", (1400, 2000), (200, 50, 1200, 1950), 3), np.float32) / 255
    fast = to_mnist(gray)
    monkeypatch.setattr(preprocessing, "THICKEN_SIDE", 10_000)
    assert similarity(fast, to_mnist(gray)) > 0.95


def small_loop_nine(loop: int) -> np.ndarray:
    """A 9 whose loop is `loop` px across on a 330 px tall figure, drawn with a 2 px pen."""
    im = Image.new("L", (300, 400), 255)
    d = ImageDraw.Draw(im)
    d.ellipse((100, 30, 100 + loop, 30 + loop), outline=0, width=2)
    d.line([(100 + loop, 30 + loop / 2), (90 + loop, 330)], fill=0, width=2)
    return np.asarray(im, np.float32) / 255


def loop_pixels(x: np.ndarray) -> int:
    """Pixels enclosed by ink (x >= 0.5): the inside of the loops."""
    ink = x >= 0.5
    return int((ndimage.binary_fill_holes(ink) & ~ink).sum())


@pytest.mark.parametrize("loop", [50, 70])  # about 3 and 4 px across at the final scale
def test_thickening_keeps_small_loops_open(loop, monkeypatch):
    gray = small_loop_nine(loop)
    x = to_mnist(gray)
    assert loop_pixels(x) >= 1
    assert stroke_width(x >= 0.5) >= STROKE_MIN  # the loop was spared without thinning the rest
    monkeypatch.setattr(preprocessing, "LOOP_KEEP", 0.0)  # control: growing into the loop fills it
    assert loop_pixels(to_mnist(gray)) < loop_pixels(x)


# ---------------------------------------------------------------- reading images

def test_read_image_bytes_returns_gray_float():
    gray = read_image_bytes(png(draw("zero")))
    assert gray.shape == (160, 200) and gray.dtype == np.float32
    assert gray.min() == 0.0 and gray.max() == 1.0


def test_16_bit_png_is_scaled():
    a = (np.asarray(draw("one"), np.uint16) * 257)
    im = Image.fromarray(a)
    assert im.mode.startswith("I")
    assert np.allclose(read_image_bytes(png(im)), read_image_bytes(png(draw("one"))), atol=1e-3)


def test_gif_first_frame_is_used():
    first, second = draw("seven").convert("P"), Image.new("P", (200, 160), 255)
    buf = io.BytesIO()
    first.save(buf, format="GIF", save_all=True, append_images=[second], duration=100)
    assert_mnist_like(to_mnist(read_image_bytes(buf.getvalue())))


def test_exif_orientation_is_applied():
    im = Image.new("L", (40, 20), 255)
    im.paste(0, (0, 0, 40, 5))  # a bar along the top
    exif = Image.Exif()
    exif[0x0112] = 3  # Orientation: rotate 180, so the bar belongs at the bottom
    gray = read_image_bytes(png(im, format="JPEG", exif=exif, quality=95))
    assert gray[-3:].mean() < 0.2 and gray[:3].mean() > 0.8


def test_large_image_is_shrunk_for_work():
    gray = read_image_bytes(png(draw("one", (5000, 300), (2400, 20, 2600, 280), 30)))
    assert max(gray.shape) == 2048
    assert_mnist_like(to_mnist(gray))


def test_read_image_file(tmp_path):
    path = tmp_path / "d.png"
    path.write_bytes(png(draw("four")))
    assert np.array_equal(read_image_file(path), read_image_bytes(path.read_bytes()))


# ---------------------------------------------------------------- bad inputs

def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that declares huge dimensions: a decompression bomb's header."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("data,error,words", [
    (b"hello, this is text", NotAnImageError, "not an image"),
    (b"", NotAnImageError, "empty"),
    (png(draw("zero"))[:300], NotAnImageError, "truncated"),
    (png_header_only(8000, 7000), ImageTooLargeError, "megapixels"),  # over ours, under Pillow's limit
    (png_header_only(20000, 20000), ImageTooLargeError, "decompression bomb"),  # Pillow's own error
])
def test_bad_bytes_fail_clearly(data, error, words):
    with pytest.raises(error, match=words):
        read_image_bytes(data)


def test_pillow_warning_range_is_refused_too():
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(ImageTooLargeError):
        read_image_bytes(png_header_only(10000, 10000))


def test_bomb_bits_decoding_never_starts():
    # A real 1-bit 20000x20000 PNG is a few hundred kB; decoding it would take 400 MB as "L".
    im = Image.new("1", (20000, 20000), 1)
    data = png(im)
    assert len(data) < 1_000_000
    with pytest.raises(ImageTooLargeError):
        read_image_bytes(data)


def test_byte_limit(tmp_path):
    with pytest.raises(ImageTooLargeError, match="MiB"):
        read_image_bytes(b"\0" * (MAX_BYTES + 1))
    big = tmp_path / "big.png"
    with open(big, "wb") as f:  # sparse: no disk used, and never read
        f.truncate(MAX_BYTES + 1)
    with pytest.raises(ImageTooLargeError):
        read_image_file(big)


@pytest.mark.parametrize("picture", [
    np.ones((100, 100)),  # white paper
    np.zeros((100, 100)),  # black screen
    (0.9 + np.random.default_rng(0).normal(0, 0.02, (300, 300))).clip(0, 1),  # paper with sensor noise
])
def test_blank_image_has_no_ink(picture):
    with pytest.raises(NoInkError, match="blank"):
        to_mnist(picture)


def test_fully_transparent_png_has_no_ink():
    with pytest.raises(NoInkError):
        to_mnist(read_image_bytes(png(Image.new("RGBA", (50, 50), (0, 0, 0, 0)))))


def test_errors_are_value_errors():
    assert issubclass(InputImageError, ValueError)
    for cls in (NotAnImageError, ImageTooLargeError, NoInkError, BadArrayError):
        assert issubclass(cls, InputImageError)


@pytest.mark.parametrize("bad", [np.zeros((28, 28, 3)), np.full((28, 28), np.nan),
                                 np.array([[1, 2], [3]], dtype=object)])
def test_to_mnist_refuses_bad_arrays(bad):
    with pytest.raises(BadArrayError):
        to_mnist(bad)


# ---------------------------------------------------------------- arrays that are already digits

def test_from_pixels_passes_mnist_through(mnist):
    img = mnist.x_test[0]
    assert np.array_equal(from_pixels(img), img.astype(np.float32) / 255)
    assert np.array_equal(from_pixels(img.astype(np.float64) / 255), img.astype(np.float32) / 255)
    assert from_pixels(img.tolist()).dtype == np.float32  # JSON gives nested lists of ints


@pytest.mark.parametrize("bad,words", [
    (np.zeros((27, 28)), "shape"),
    (np.zeros((1, 28, 28)), "shape"),
    (np.full((28, 28), np.nan), "NaN"),
    (np.full((28, 28), 255.0), r"\[0, 1\]"),
    (np.full((28, 28), -3), "0..255"),
    (np.full((28, 28), 300), "0..255"),
    (np.full((28, 28), "a"), "dtype"),
    ([[0.0] * 28] * 27 + [[0.0]], "rectangular"),
])
def test_from_pixels_refuses(bad, words):
    with pytest.raises(BadArrayError, match=words):
        from_pixels(bad)


def test_read_npy(tmp_path, mnist):
    one, many = tmp_path / "one.npy", tmp_path / "many.npy"
    np.save(one, mnist.x_test[0])
    np.save(many, mnist.x_test[:5].astype(np.float32) / 255)
    assert read_npy(one).shape == (28, 28)
    got = read_npy(many)
    assert got.shape == (5, 28, 28) and got.dtype == np.float32
    assert np.allclose(got, mnist.x_test[:5] / 255)


@pytest.mark.parametrize("name,content,words", [
    ("shape.npy", np.zeros((32, 32)), "shape"),
    ("shape3.npy", np.zeros((2, 28, 29)), "shape"),
    ("nan.npy", np.full((28, 28), np.nan), "NaN"),
    ("range.npy", np.full((28, 28), 2.5), r"\[0, 1\]"),
    ("object.npy", np.array([np.zeros((28, 28))] * 2 + [None], dtype=object), "pickle"),
])
def test_read_npy_refuses(tmp_path, name, content, words):
    path = tmp_path / name
    np.save(path, content, allow_pickle=True)
    with pytest.raises(BadArrayError, match=words):
        read_npy(path)


def test_read_npy_refuses_a_plain_pickle(tmp_path):
    path = tmp_path / "evil.npy"
    path.write_bytes(pickle.dumps({"not": "an array"}))
    with pytest.raises(BadArrayError, match="pickle"):
        read_npy(path)


# ---------------------------------------------------------------- output

def test_to_png_bytes_round_trips(mnist):
    x = mnist.x_test[1].astype(np.float32) / 255
    back = np.asarray(Image.open(io.BytesIO(to_png_bytes(x))))
    assert back.shape == (28, 28) and np.array_equal(back, mnist.x_test[1])
    big = Image.open(io.BytesIO(to_png_bytes(x, scale=8)))
    assert big.size == (224, 224) and big.mode == "L"
