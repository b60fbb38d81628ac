"""Predict digits in image files and .npy arrays: each file on its own, one batch through the model.

    results = predict_paths(Predictor.from_run(run), ["my_7.png", "scans/"], save_input_dir="seen/")
    [r.to_json() for r in results]   # path, index, digit, probability, top3, error

A bad file gets an entry with `error` set (the message says what is wrong and what to do); the
other files are still predicted. Images go through `digitlab.preprocessing.to_mnist`; `.npy`
files must already hold MNIST-style digits, (28, 28) or (n, 28, 28), one entry per digit.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from digitlab.atomic import write_bytes_atomic
from digitlab.errors import InputImageError
from digitlab.predictor import TOP_K, Predictor
from digitlab.preprocessing import read_image_file, read_npy, to_mnist, to_png_bytes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
INPUT_SUFFIXES = IMAGE_SUFFIXES + (".npy",)


@dataclass
class FilePrediction:
    path: str
    index: int | None = None  # position inside a multi-digit .npy, else None
    digit: int | None = None  # predicted class index; None when `error` is set
    probability: float | None = None  # the model's probability for `digit`
    top3: list[tuple[int, float]] = field(default_factory=list)  # (class, probability), best first
    error: str | None = None
    input28: np.ndarray | None = field(default=None, repr=False)  # what the model saw, (28, 28)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict:
        return {"path": self.path, "index": self.index, "digit": self.digit, "probability": self.probability,
                "top3": [[d, p] for d, p in self.top3], "error": self.error}


def collect_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Expand folders into their image and .npy files (sorted, not recursive); keep everything else.

    Files named explicitly are kept whatever their extension, and missing paths are kept too, so
    that each fails on its own with a clear message. A folder with no inputs is kept as itself.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            out.append(p)
            continue
        found = sorted(f for f in p.iterdir()
                       if f.is_file() and f.suffix.lower() in INPUT_SUFFIXES
                       and not f.name.startswith("."))  # hidden files include half-written temporaries
        out.extend(found or [p])
    return out


def load_digits(path: Path) -> list[tuple[int | None, np.ndarray]]:
    """The 28x28 digits in one file as (index, image) pairs. Raises InputImageError or OSError."""
    if path.is_dir():
        raise InputImageError(f"folder holds no images ({', '.join(INPUT_SUFFIXES)})")
    if path.suffix.lower() == ".npy":
        x = read_npy(path)
        return [(None, x)] if x.ndim == 2 else list(enumerate(x))
    return [(None, to_mnist(read_image_file(path)))]


def predict_paths(predictor: Predictor, paths: Iterable[str | Path],
                  save_input_dir: str | Path | None = None) -> list[FilePrediction]:
    """One FilePrediction per digit found (several per multi-digit .npy), in input order."""
    if save_input_dir is not None:
        Path(save_input_dir).mkdir(parents=True, exist_ok=True)  # fail before the model runs, not after
    results: list[FilePrediction] = []
    for path in collect_inputs(paths):
        try:
            digits = load_digits(path)
        except InputImageError as exc:
            results.append(FilePrediction(str(path), error=str(exc)))
            continue
        except FileNotFoundError:
            results.append(FilePrediction(str(path), error="no such file: check the path"))
            continue
        except OSError as exc:  # no permission, a device...: exc.strerror is the readable part
            results.append(FilePrediction(str(path), error=f"cannot read the file: {exc.strerror or exc}"))
            continue
        results += [FilePrediction(str(path), index=i, input28=x) for i, x in digits]

    good = [r for r in results if r.ok]
    if good:
        x = np.stack([r.input28 for r in good]).astype(np.float32)  # (n, 28, 28)
        proba = np.asarray(predictor.predict_proba(x), dtype=np.float64)
        for r, p in zip(good, proba, strict=True):
            r.top3 = Predictor.top_k(p, TOP_K)
            r.digit, r.probability = r.top3[0]

    if save_input_dir is not None:
        save_inputs(good, save_input_dir, avoid={Path(r.path).resolve() for r in results})
    return results


def save_inputs(results: list[FilePrediction], folder: str | Path,
                avoid: set[Path] = frozenset()) -> list[Path]:
    """Write each result's 28x28 input as `<stem>[-index]-28x28.png`; names are made unique."""
    folder = Path(folder)
    used: set[Path] = set()
    written = []
    for r in results:
        stem = Path(r.path).stem + (f"-{r.index}" if r.index is not None else "")
        dest, n = folder / f"{stem}-28x28.png", 1
        # Two inputs may share a stem (a/7.png, b/7.png); and never overwrite an input.
        while dest in used or dest.resolve() in avoid:
            n += 1
            dest = folder / f"{stem}-28x28-{n}.png"
        used.add(dest)
        write_bytes_atomic(dest, to_png_bytes(r.input28))
        written.append(dest)
    return written
