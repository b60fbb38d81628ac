"""Turn real images into MNIST digits: one implementation for `predict`, the web server and the tests.

    gray = read_image_file("photo_of_a_7.jpg")   # (H, W) float32, 0 = black, 1 = white
    x = to_mnist(gray)                            # (28, 28) float32 in [0, 1], ink bright on black
    x = from_pixels(json_pixels)                  # an array that is already a 28x28 MNIST digit
    digits = read_npy("digits.npy")               # (28, 28) or (n, 28, 28), already MNIST digits
    png = to_png_bytes(x, scale=8)                # what the model sees, as a 224x224 preview

`to_mnist` follows LeCun's recipe for MNIST: ink made bright on black, cropped to its bounding
box, the box's longer side scaled to 20 px with anti-aliasing (aspect ratio kept), then placed in a
28x28 field so that the centre of mass of the pixels lands on the centre, (14, 14) in array
indices, where MNIST's own digits have it (mean over the test set: (13.99, 14.00)).

One step is ours: MNIST's writers used pens about 2.5 px wide at that scale, but a 3 px pen on a
600 px photo or canvas shrinks to a hairline. So the stroke width is measured in the source and
a stroke that would end up thinner than any of MNIST's is thickened to MNIST's typical width
first (`_thicken`); bold strokes are left as they are, since MNIST has bold digits too.

Every bad input raises a subclass of `InputImageError` (a ValueError) whose message says what is
wrong and what to do; callers show it as is.
"""
from __future__ import annotations

import io
import os
import stat
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from digitlab import imageops
from digitlab.data import scale
from digitlab.errors import InputImageError

SIZE = 28  # MNIST field, pixels
DIGIT_BOX = 20  # longer side of the digit's bounding box inside the field, pixels (LeCun)
CENTRE = (14.0, 14.0)  # (row, col) where MNIST's centre of mass sits, in array indices

MAX_BYTES = 20 * 1024 * 1024  # an image file larger than this is refused before decoding
# Refused before decoding: 50 MP admits 48-MP phone photos (8000x6000) and keeps a decoded RGBA
# image under 200 MB; it is below Pillow's own bomb limit (89 MP), so ours is the one that fires.
MAX_PIXELS = 50_000_000
WORK_MAX_SIDE = 2048  # decoded images are shrunk to this longer side: the digit ends up 20 px anyway
MAX_NPY_DIGITS = 100_000  # digits in one .npy file (about 300 MB as float32)
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")  # Pillow decoders we let near user bytes

# Ink detection, as fractions of the ink's contrast against the background (0 = background, 1 = ink).
MIN_INK_CONTRAST = 0.12  # below this (on a 0..1 scale) the image counts as blank
NOISE_FLOOR = 0.15  # fainter than this is background: paper texture, JPEG noise, shadows
INK_FULL = 0.85  # at least this dark (or bright) is full-strength ink, as MNIST's saturated strokes
SPECK_FRACTION = 0.02  # blobs with less ink than this fraction of the largest blob are dust, not digit
BORDER_FRACTION = 0.05  # width of the frame whose median is taken as the background colour

# Stroke width, measured by `stroke_width` on ink = x >= 0.5: on MNIST's test digits its median is
# 2.56 px, 5th-95th percentile 2.05-3.8 px. Strokes within that range are left as they are.
STROKE_MIN = 2.0  # px in the 20-px box: a stroke that would come out thinner is thickened...
STROKE_TARGET = 2.5  # px: ...to this, MNIST's median pen
THICKEN_SIDE = 128  # px: a larger digit is max-pooled to about this longer side to be thickened
LOOP_MIN = 1.0  # px in the 20-px box: thickening may close loops of a smaller inner radius...
LOOP_KEEP = 0.5  # ...and keeps this share of the inner radius of larger ones


class NotAnImageError(InputImageError):
    pass


class ImageTooLargeError(InputImageError):
    pass


class NoInkError(InputImageError):
    pass


class BadArrayError(InputImageError):
    pass


class NotAFileError(InputImageError):
    """A folder, FIFO, device or socket where an image file was expected."""


# ---------------------------------------------------------------- reading images

def read_image_file(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W) float32 grayscale, 0 = black, 1 = white. OSError if unreadable."""
    return read_image_bytes(read_file_bytes(path, MAX_BYTES))


def read_file_bytes(path: str | Path, limit: int) -> bytes:
    """The bytes of the regular file at `path` (links followed), refusing anything over `limit` bytes.

    Only regular files are read: a FIFO would block for ever, and /dev/zero (or a .png link to it)
    never ends. The limit holds while reading, whatever size the file system reports (0 for those).
    NotAFileError or ImageTooLargeError say why a file is refused; OSError if it can't be opened.
    """
    # O_NONBLOCK: opening a FIFO must not wait for a writer before fstat can tell what it is.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        check_regular_file(info.st_mode)
        if info.st_size > limit:  # the reported size, when it says too much: refused before reading
            raise ImageTooLargeError(_too_many_bytes(info.st_size))
        os.set_blocking(fd, True)
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:  # the file grew, or the file system reported the size wrong
        raise ImageTooLargeError(f"file is over the limit of {limit / 2**20:.0f} MiB: shrink or crop the image "
                                 "around the digit")
    return data


def check_regular_file(mode: int) -> None:
    """NotAFileError unless `mode` (an st_mode) is a regular file's."""
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise NotAFileError("this is a folder, not a file")
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
    raise NotAFileError(f"this is {kind}, not an image file: pass PNG, JPEG, BMP, GIF, WebP or TIFF files, "
                        "or .npy arrays")


def read_image_bytes(data: bytes) -> np.ndarray:
    """Decode PNG/JPEG/BMP/GIF/WebP/TIFF bytes to (H, W) float32 grayscale, 0 = black, 1 = white.

    The first frame of an animation is used, EXIF orientation is applied, and transparency is
    composited onto a background that contrasts with the visible strokes (so black strokes on a
    transparent PNG read as ink, and so do white ones). Images whose longer side exceeds
    WORK_MAX_SIDE are shrunk to it with area averaging.
    """
    if len(data) > MAX_BYTES:
        raise ImageTooLargeError(_too_many_bytes(len(data)))
    if not data:
        raise NotAnImageError("the file is empty: expected a PNG, JPEG, BMP, GIF, WebP or TIFF image")
    try:
        # open() reads only the header; the pixels are decoded by load() below, after the size check.
        im = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{exc}; refusing to decode it (a decompression bomb?)") from None
    except Image.UnidentifiedImageError:
        raise NotAnImageError(
            f"not an image Pillow can read (starts with {data[:8]!r}): use a PNG, JPEG, BMP, GIF, WebP "
            f"or TIFF file, or a .npy array of 28x28 digits") from None
    except Exception as exc:  # malformed headers make decoders raise all kinds of errors
        raise NotAnImageError(f"corrupt {_kind(data)} header ({exc}): re-export or re-save the image") from None
    width, height = im.size
    if width * height > MAX_PIXELS:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height / 1e6:.0f} megapixels, over the limit of "
            f"{MAX_PIXELS / 1e6:.0f}: shrink it (a digit needs only a few hundred pixels)")
    if width == 0 or height == 0:
        raise NotAnImageError(f"image has no pixels ({width}x{height})")
    if im.format == "JPEG":
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale: big photos decode fast and small.
        im.draft(im.mode, (WORK_MAX_SIDE, WORK_MAX_SIDE))
    try:
        im.load()
        im = _upright(im)
        return _to_gray(im)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{exc}; refusing to decode it") from None
    except Exception as exc:  # truncated or corrupt data: Pillow raises OSError, SyntaxError, ValueError...
        raise NotAnImageError(
            f"corrupt or truncated {im.format or 'image'} data ({exc}): re-export or re-save the image") from None


def _too_many_bytes(n: int) -> str:
    return (f"file is {n / 2**20:.1f} MiB, over the limit of {MAX_BYTES / 2**20:.0f} MiB: "
            f"shrink or crop the image around the digit")


def _kind(data: bytes) -> str:
    return "PNG" if data.startswith(b"\x89PNG") else "JPEG" if data.startswith(b"\xff\xd8") else "image"


def _upright(im: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # a broken EXIF block should not cost the user the image: keep it as stored
        return im


def _to_gray(im: Image.Image) -> np.ndarray:
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # 16-bit PNG/TIFF, float TIFF
        a = np.asarray(im, dtype=np.float32)
        top = 1.0 if im.mode == "F" else 255.0 if a.max(initial=0) <= 255 else 65535.0
        gray = Image.fromarray(np.clip(a / top, 0, 1).astype(np.float32))
        return np.asarray(_shrink(gray), dtype=np.float32)
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        return _composite(_shrink(im.convert("RGBA")))
    # "1" and "P" are converted first: Pillow resizes them with nearest-neighbour only.
    return np.asarray(_shrink(im.convert("L")), dtype=np.float32) / 255.0


def _shrink(im: Image.Image) -> Image.Image:
    w, h = im.size
    if max(w, h) <= WORK_MAX_SIDE:
        return im
    k = WORK_MAX_SIDE / max(w, h)
    # BOX = area averaging; Pillow premultiplies alpha for RGBA, so transparent pixels don't bleed.
    return im.resize((max(1, round(w * k)), max(1, round(h * k))), Image.Resampling.BOX)


def _composite(rgba: Image.Image) -> np.ndarray:
    lum = np.asarray(rgba.convert("L"), dtype=np.float32) / 255.0  # RGBA -> L ignores alpha
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
    visible = float(alpha.sum())
    if visible == 0:
        return np.ones_like(lum)  # fully transparent: blank, to_mnist will say so
    # Put the strokes on a background of the opposite shade: black strokes on a transparent PNG
    # go onto white, white ones onto black. The colour stored under alpha = 0 is ignored.
    background = 1.0 if float((lum * alpha).sum()) / visible < 0.5 else 0.0
    return lum * alpha + background * (1.0 - alpha)


# ---------------------------------------------------------------- arrays that are already digits

def from_pixels(arr) -> np.ndarray:
    """Validate an array that is already an MNIST digit (28x28, ink bright on black); float32 [0, 1].

    Accepts uint8/integers 0..255 or floats in [0, 1]; nothing is re-centred or inverted.
    """
    x = _unit_float(arr, "pixel array")
    if x.shape != (SIZE, SIZE):
        raise BadArrayError(
            f"pixel array has shape {x.shape}, expected ({SIZE}, {SIZE}): send one 28x28 MNIST-style digit, "
            f"or an image file to have it normalised")
    return x


def read_npy(path: str | Path) -> np.ndarray:
    """Load a .npy of MNIST digits: (28, 28) or (n, 28, 28), returned as float32 [0, 1], same shape.

    Pickled (object) arrays are refused: loading them can run arbitrary code.
    """
    check_regular_file(os.stat(path).st_mode)  # np.load would block on a FIFO; a device is never an array
    try:
        # mmap reads only the header, so shape and dtype are checked before any data is read.
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
            raise BadArrayError(
                "the .npy holds Python objects (a pickle), which are not loaded for safety: "
                "save a numeric array with np.save(path, x.astype('uint8'))") from None
        raise BadArrayError(f"not a readable .npy file ({exc}): save digits with np.save") from None
    if not isinstance(a, np.ndarray):  # an .npz archive opens as a mapping of arrays
        raise BadArrayError("this is an .npz archive, not an .npy array: save one array with np.save")
    if a.ndim == 2:
        return from_pixels(a)
    if a.ndim != 3 or a.shape[1:] != (SIZE, SIZE) or a.shape[0] == 0:
        raise BadArrayError(
            f".npy array has shape {a.shape}, expected ({SIZE}, {SIZE}) or (n, {SIZE}, {SIZE}) MNIST-style "
            f"digits: other pictures should be saved as PNG to be normalised")
    if a.shape[0] > MAX_NPY_DIGITS:
        raise BadArrayError(f".npy holds {a.shape[0]} digits, over the limit of {MAX_NPY_DIGITS}: split it")
    return _unit_float(np.array(a), ".npy array")


def _unit_float(arr, what: str) -> np.ndarray:
    try:
        a = np.asarray(arr)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise BadArrayError(f"{what} is not a rectangular array of numbers ({exc})") from None
    if a.dtype == bool:
        return a.astype(np.float32)
    if a.dtype.kind in "ui":
        if a.size and (a.min() < 0 or a.max() > 255):
            raise BadArrayError(f"{what} has integer values {a.min()}..{a.max()}: expected 0..255")
        return scale(a)  # the scaling every model is trained with
    if a.dtype.kind != "f":
        raise BadArrayError(f"{what} has dtype {a.dtype}: expected uint8 0..255 or floats in [0, 1]")
    if not np.isfinite(a).all():
        raise BadArrayError(f"{what} contains NaN or infinite values: send finite numbers in [0, 1]")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo < -1e-6 or hi > 1 + 1e-6:  # tolerance: values computed as k/255 in float64 round slightly
        raise BadArrayError(
            f"{what} has values {lo:g}..{hi:g}: expected floats in [0, 1] (divide 0..255 values by 255)")
    return np.clip(a, 0, 1).astype(np.float32)


# ---------------------------------------------------------------- the MNIST recipe

def to_mnist(gray) -> np.ndarray:
    """Normalise a grayscale picture of one digit as MNIST was: (28, 28) float32 in [0, 1].

    `gray` is 2-D, floats in [0, 1] or integers 0..255, either polarity (dark ink on paper or light
    ink on a dark ground: the ground is the median of the picture's outer frame). Raises NoInkError
    when nothing stands out from the background.
    """
    x = _unit_float(gray, "image")
    if x.ndim != 2 or min(x.shape) == 0:
        raise BadArrayError(f"image has shape {x.shape}: expected a 2-D grayscale picture")
    x = _ink_bright(x)
    rows, cols = _ink_box(x)
    digit = _fit_box(_thicken(x[rows, cols], DIGIT_BOX), DIGIT_BOX)
    return _place_by_mass(digit)


def _ink_bright(x: np.ndarray) -> np.ndarray:
    """Ink 1, background 0: subtract the background, invert dark ink, stretch the contrast."""
    b = max(1, round(BORDER_FRACTION * min(x.shape)))
    frame = np.concatenate([x[:b].ravel(), x[-b:].ravel(), x[:, :b].ravel(), x[:, -b:].ravel()])
    background = float(np.median(frame))
    # Extremes from a lightly smoothed copy: one hot pixel in a photo must not decide the polarity
    # or the contrast. Small pictures keep their 1-px strokes unsmoothed.
    probe = imageops.uniform_filter(x, 3) if min(x.shape) >= 64 else x
    dark, bright = background - float(probe.min()), float(probe.max()) - background
    if dark > bright:
        x, contrast = background - x, dark
    else:
        x, contrast = x - background, bright
    if contrast < MIN_INK_CONTRAST:
        raise NoInkError("no digit found: the image is blank (nothing stands out from the background); "
                         "draw the digit darker or larger, or check that this is the right file")
    lo, hi = NOISE_FLOOR * contrast, INK_FULL * contrast
    return np.clip((x - lo) / (hi - lo), 0, 1).astype(np.float32)


def _ink_box(x: np.ndarray) -> tuple[slice, slice]:
    """Bounding box of the ink, ignoring specks of dust; specks are erased from `x` in place."""
    labels, n = imageops.label(x > 0, imageops.SQUARE)  # 8-connected, as a pen stroke is
    mass = imageops.sum_labels(x, labels, np.arange(1, n + 1))
    specks = np.flatnonzero(mass < SPECK_FRACTION * mass.max()) + 1
    if len(specks):
        x[np.isin(labels, specks)] = 0
    rows, cols = np.flatnonzero(x.any(axis=1)), np.flatnonzero(x.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def stroke_width(ink: np.ndarray) -> float:
    """Mean width of the strokes in a boolean ink mask, pixels; 0 when there is no ink.

    Across a stroke w px wide the distance to the nearest background pixel rises from 1 at the
    edges to about w/2 + 0.5 in the middle, so its mean over the stroke is w/4 + 0.5. Ends and
    crossings nudge it by a few percent, orientation and curvature hardly at all. Strokes 1 and 2 px
    wide both read as 2: on a pixel grid their distances are the same.
    """
    if not ink.any():
        return 0.0
    inside = imageops.distance_transform_edt(np.pad(ink, 1))  # padded: the crop's edge is background
    return 4.0 * (float(inside[1:-1, 1:-1][ink].mean()) - 0.5)


def _thicken(digit: np.ndarray, box: int) -> np.ndarray:
    """Widen strokes that would be thinner than STROKE_MIN once the digit is scaled to `box` px.

    The ink is grown by a disk of radius r source pixels, with anti-aliased edges: a grey dilation
    done with a distance transform, so its cost doesn't grow with r (a 3 px pen on a 2000 px
    digit needs r of about 120). The picture grows by r on each side; r is solved so that the
    stroke is STROKE_TARGET px wide after the grown box is scaled to `box`.

    A digit larger than THICKEN_SIDE is max-pooled down to about that size first (a hairline
    stays a full-strength line, one pixel wide): the distance transforms then take milliseconds
    instead of a second on a photo, and 128 px is still six times the final resolution.
    """
    f = max(1, max(digit.shape) // THICKEN_SIDE)
    work = _max_pool(digit, f) if f > 1 else digit
    ink = work >= 0.5
    width = stroke_width(ink)
    if width == 0 or width * box / max(work.shape) >= STROKE_MIN:  # bold strokes are never thinned
        return digit
    t = STROKE_TARGET / box
    r = (t * max(work.shape) - width) / (2 * (1 - t))  # from (width + 2r) / (side + 2r) = t
    if r < 0.25:  # a digit a few pixels tall: a quarter-pixel change is noise
        return digit
    pad = int(np.ceil(r)) + 1
    digit, ink = np.pad(work, pad), np.pad(ink, pad)
    outside = imageops.distance_transform_edt(~ink)  # to the nearest ink pixel centre; 0 on the ink
    # Grown by r everywhere but inside loops: the loop of a small 0, 6, 8 or 9 drawn with a fine
    # pen would fill up, making a blob of the digit (or a 1 of a 9). A loop keeps LOOP_KEEP of its
    # inner radius, its stroke growing outwards instead. Loops under LOOP_MIN may close, as they
    # would have under a pen of MNIST's width.
    radius = np.full(ink.shape, r)
    holes, n = imageops.label(imageops.binary_fill_holes(ink) & ~ink)
    if n:
        inner = imageops.maximum_labels(outside, holes, np.arange(1, n + 1))  # inner radius per loop, px
        keep = inner * box / max(digit.shape) >= LOOP_MIN
        limit = np.concatenate([[r], np.where(keep, np.minimum(r, (1 - LOOP_KEEP) * inner), r)])
        radius = limit[holes]  # label 0 (not in a loop) -> r
    # The ink mask's edge lies half a pixel past the last ink pixel's centre, so the grown stroke
    # covers a pixel at distance d to the extent of radius + 1 - d (clipped to 0..1).
    grown = np.maximum(digit, np.clip(radius + 1 - outside, 0, 1)).astype(np.float32)
    rows, cols = np.flatnonzero(grown.any(axis=1)), np.flatnonzero(grown.any(axis=0))
    return grown[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _max_pool(x: np.ndarray, f: int) -> np.ndarray:
    """Each f x f block (zero-padded at the far edges) replaced by its brightest pixel."""
    h, w = -(-x.shape[0] // f) * f, -(-x.shape[1] // f) * f
    x = np.pad(x, ((0, h - x.shape[0]), (0, w - x.shape[1])))
    return x.reshape(h // f, f, w // f, f).max(axis=(1, 3))


def _fit_box(digit: np.ndarray, box: int) -> np.ndarray:
    """Scale so the longer side is `box` px, keeping the aspect ratio, with anti-aliasing."""
    h, w = digit.shape
    k = box / max(h, w)
    size = (max(1, round(w * k)), max(1, round(h * k)))
    # BOX (area averaging) when shrinking reproduces what MNIST's anti-aliasing did to the bilevel
    # NIST scans; BICUBIC when enlarging a small drawing avoids blocky pixels. Clip bicubic overshoot.
    method = Image.Resampling.BOX if k < 1 else Image.Resampling.BICUBIC
    out = np.clip(np.asarray(Image.fromarray(digit).resize(size, method), dtype=np.float32), 0, 1)
    # A pen line thinner than a pixel at 20 px fades to grey when shrunk; every MNIST digit
    # reaches full ink, so stretch back to it.
    return out / out.max() if 0 < out.max() < 1 else out


def _place_by_mass(digit: np.ndarray) -> np.ndarray:
    """Paste into the 28x28 field with the centre of mass on CENTRE (whole-pixel shift, no blur)."""
    h, w = digit.shape
    cy, cx = imageops.center_of_mass(digit)
    # Clamped so the whole box stays in the field: a lopsided digit (a 7) loses no ink, at the cost
    # of its centre of mass sitting up to a pixel or two off centre.
    top = int(np.clip(round(CENTRE[0] - cy), 0, SIZE - h))
    left = int(np.clip(round(CENTRE[1] - cx), 0, SIZE - w))
    out = np.zeros((SIZE, SIZE), dtype=np.float32)
    out[top:top + h, left:left + w] = digit
    return out


# ---------------------------------------------------------------- output

def to_png_bytes(img28, scale: int = 1) -> bytes:
    """A 28x28 digit as a grayscale PNG (ink white, as the model sees it), enlarged `scale` times."""
    gray = np.round(from_pixels(img28) * 255).astype(np.uint8)
    if scale != 1:
        gray = gray.repeat(scale, axis=0).repeat(scale, axis=1)  # nearest neighbour: crisp pixels to inspect
    return gray_png(gray)


def gray_png(gray: np.ndarray) -> bytes:
    """A 2-D uint8 array as a grayscale PNG. Written here with zlib, not by Pillow: the server sends one with every
    prediction, on its event loop, and Pillow's plugin machinery costs more than the compression (a 28x28 digit:
    21 against 36 us with the validation)."""
    height, width = gray.shape
    rows = np.zeros((height, width + 1), dtype=np.uint8)  # each row starts with its filter type: 0, none
    rows[:, 1:] = gray

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows.tobytes())) + chunk(b"IEND", b""))
