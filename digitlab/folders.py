"""A folder of the user's own labelled digits, laid out as Keras' image_dataset_from_directory reads them:

    my_digits/0/a.png  my_digits/0/b.jpg  ...  my_digits/9/z.png

    digits = read_digit_folder("my_digits")   # digits.x (n, 28, 28) float32 in [0, 1], digits.y, digits.bad
    write_digit_folder("out", x, y)            # the same layout, one PNG per digit (ink white on black)

Every image goes through preprocessing.to_mnist, as predict and the server read a picture, except a 28x28
one that is already MNIST-style (ink bright on a black frame), which is taken as it is (see as_mnist). A file that is
not a readable image of a digit is reported by name in `bad` and skipped; it never stops the rest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from digitlab import preprocessing as pp
from digitlab.errors import DataError, InputImageError

CLASS_DIRS = tuple(str(d) for d in range(10))
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class DigitFolder:
    path: Path
    x: np.ndarray  # (n, 28, 28) float32 in [0, 1], ink bright
    y: np.ndarray  # (n,) int64 labels from the subfolder names
    files: list[str] = field(default_factory=list)  # each digit's file, relative to path
    bad: list[tuple[str, str]] = field(default_factory=list)  # (file, why) for the files skipped


def read_digit_folder(path: str | Path) -> DigitFolder:
    """The digits under `path`/0 ... `path`/9; DataError when there are no such subfolders or no digit at all."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder: give a folder with subfolders 0/ ... 9/ of digit images")
    dirs = [root / d for d in CLASS_DIRS if (root / d).is_dir()]
    if not dirs:
        raise DataError(f"{root} has no subfolders named 0 ... 9: put each digit's images in the folder named "
                        f"for the digit, e.g. {root}/7/my_seven.png")
    xs, ys, files, bad = [], [], [], []
    for d in dirs:
        for f in sorted(d.iterdir()):
            name = str(f.relative_to(root))
            if f.name.startswith(".") or f.is_dir():
                continue
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                bad.append((name, f"not an image file name (expected one of {', '.join(IMAGE_SUFFIXES)})"))
                continue
            try:
                xs.append(as_mnist(pp.read_image_file(f)))
            except (InputImageError, OSError) as exc:
                bad.append((name, str(exc)))
                continue
            ys.append(int(d.name))
            files.append(name)
    if not xs:
        raise DataError(f"{root} holds no readable digit image" + (f" ({len(bad)} bad files, e.g. {bad[0][0]}: "
                                                                   f"{bad[0][1]})" if bad else ""))
    return DigitFolder(root, np.stack(xs).astype(np.float32), np.array(ys, np.int64), files, bad)


def as_mnist(gray: np.ndarray) -> np.ndarray:
    """A picture as the model sees it. A 28x28 picture that is ink bright on a black frame is already an MNIST
    digit (what write_digit_folder and `digitlab feedback export` write) and is taken as it is: normalising it
    again would move and thicken it. Anything else goes through preprocessing.to_mnist."""
    if gray.shape == (pp.SIZE, pp.SIZE):
        frame = np.concatenate([gray[:2].ravel(), gray[-2:].ravel(), gray[:, :2].ravel(), gray[:, -2:].ravel()])
        if frame.max() < pp.NOISE_FLOOR and gray.max() >= pp.MIN_INK_CONTRAST:
            return pp.from_pixels(gray)
    return pp.to_mnist(gray)


def write_digit_folder(path: str | Path, x: np.ndarray, y: np.ndarray, names: list[str] | None = None) -> list[Path]:
    """Write digits as `path`/<label>/<name>.png (28x28 grayscale); the files written."""
    root = Path(path)
    out = []
    for i, (img, label) in enumerate(zip(x, y)):
        folder = root / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        f = folder / f"{names[i] if names else i:>06}.png"
        f.write_bytes(pp.to_png_bytes(img))
        out.append(f)
    return out
