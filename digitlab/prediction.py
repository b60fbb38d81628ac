"""Predict digits in image files and .npy arrays: each file on its own, one batch through the model.

    results = predict_paths(Predictor.from_run(run), ["my_7.png", "scans/"], save_input_dir="seen/",
                            explain_dir="why/")
    [r.to_json() for r in results]   # path, index, verdict, digit, best, runner_up, probability, top3, ...
    results[0].verdict.text()        # "7", "unsure: 7 or 1?", "not a digit", "blank"

Every input that could be read gets a verdict (digitlab.trust): `digit` (then `digit` is the answer),
`unsure` (the best guess and the runner-up are below the confidence threshold), `not_a_digit` (out of
distribution), or `blank` (preprocessing found no ink: no model runs). `digit` is None unless the
verdict is `digit`; the calibrated probabilities (top3) are kept whatever the verdict, except for a
blank input, which has none. A verdict is not an error.

A bad file gets an entry with `error` set (the message says what is wrong and what to do); the
other files are still predicted. Inside a folder, what can't be an input (a subfolder, a FIFO, a
broken link) gets such an entry too; only hidden files and other file types are passed over.
Images go through `digitlab.preprocessing.to_mnist`; `.npy` files must already hold MNIST-style
digits, (28, 28) or (n, 28, 28), one entry per digit (taken as they are: an all-dark one is judged by
the model, not called blank). With `explain_dir`, an occlusion map of each input (digitlab.explain)
is written there as a PNG: red where the ink supports the best guess, blue where it speaks against it.
"""
from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from digitlab.atomic import write_bytes_atomic
from digitlab.errors import InputImageError
from digitlab.explain import explanation_png, occlusion_map
from digitlab.predictor import TOP_K, Predictor
from digitlab.preprocessing import NoInkError, read_image_file, read_npy, to_mnist, to_png_bytes
from digitlab.trust import BLANK, Verdict

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
INPUT_SUFFIXES = IMAGE_SUFFIXES + (".npy",)


@dataclass
class FilePrediction:
    path: str
    index: int | None = None  # position inside a multi-digit .npy, else None
    verdict: Verdict | None = None  # digit / unsure / not_a_digit / blank; None when `error` is set
    digit: int | None = None  # the answer: set only when the verdict is `digit`
    best: int | None = None  # the best guess, whatever the verdict (None for blank)
    runner_up: int | None = None
    probability: float | None = None  # the calibrated probability of `best`
    top3: list[tuple[int, float]] = field(default_factory=list)  # (class, calibrated probability), best first
    error: str | None = None
    explanation: str | None = None  # with explain_dir: the occlusion-map PNG written for this input
    input28: np.ndarray | None = field(default=None, repr=False)  # what the model saw, (28, 28)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict:
        v = self.verdict
        return {"path": self.path, "index": self.index, "verdict": v.kind if v else None, "digit": self.digit,
                "best": self.best, "runner_up": self.runner_up, "probability": self.probability,
                "top3": [[d, p] for d, p in self.top3], "ood_score": v.ood_score if v else None,
                "explanation": self.explanation, "error": self.error}


def collect_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Expand folders into their entries (sorted, not recursive); keep everything else.

    Files named explicitly are kept whatever their extension, and missing paths are kept too, so
    that each fails on its own with a clear message. In a folder, regular files (links followed)
    are kept when they have an input extension, and every entry that is no regular file (a
    subfolder, FIFO, device, broken link or link loop) is kept to fail on its own; hidden entries,
    which include half-written temporaries, are skipped. A folder where nothing is kept is kept as itself.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            out.append(p)
            continue
        found = sorted(f for f in p.iterdir() if not f.name.startswith(".")
                       and (not f.is_file() or f.suffix.lower() in INPUT_SUFFIXES))
        out.extend(found or [p])
    return out


def load_digits(path: Path) -> list[tuple[int | None, np.ndarray]]:
    """The 28x28 digits in one file as (index, image) pairs. Raises InputImageError or OSError."""
    if path.is_dir():
        if any(f.suffix.lower() in INPUT_SUFFIXES for f in path.iterdir()):
            raise InputImageError("a subfolder: predict does not look inside the folders of a folder; pass it "
                                  "by name to predict its images")
        raise InputImageError(f"folder holds no images ({', '.join(INPUT_SUFFIXES)})")
    if path.suffix.lower() == ".npy":
        x = read_npy(path)
        return [(None, x)] if x.ndim == 2 else list(enumerate(x))
    return [(None, to_mnist(read_image_file(path)))]


def predict_paths(predictor: Predictor, paths: Iterable[str | Path], save_input_dir: str | Path | None = None,
                  explain_dir: str | Path | None = None) -> list[FilePrediction]:
    """One FilePrediction per digit found (several per multi-digit .npy), in input order, each with its verdict."""
    for folder in (save_input_dir, explain_dir):
        if folder is not None:
            Path(folder).mkdir(parents=True, exist_ok=True)  # fail before the model runs, not after
    results: list[FilePrediction] = []
    for path in collect_inputs(paths):
        try:
            digits = load_digits(path)
        except NoInkError:  # a verdict, not an error: nothing was written or drawn
            results.append(FilePrediction(str(path), verdict=BLANK))
            continue
        except InputImageError as exc:
            results.append(FilePrediction(str(path), error=str(exc)))
            continue
        except OSError as exc:  # no such file, no permission, a link loop...
            results.append(FilePrediction(str(path), error=unreadable(path, exc)))
            continue
        results += [FilePrediction(str(path), index=i, input28=x) for i, x in digits]

    seen = [r for r in results if r.input28 is not None]
    if seen:
        x = np.stack([r.input28 for r in seen]).astype(np.float32)  # (n, 28, 28)
        judged = predictor.judge(x)
        for r, p, v in zip(seen, np.asarray(judged.proba, dtype=np.float64), judged.verdicts, strict=True):
            r.verdict, r.digit, r.best, r.runner_up = v, v.digit, v.best, v.runner_up
            r.top3 = Predictor.top_k(p, TOP_K)
            r.probability = r.top3[0][1]

    avoid = {_real(r.path) for r in results}
    if save_input_dir is not None:
        save_inputs(seen, save_input_dir, avoid=avoid)
    if explain_dir is not None:
        for r, dest in zip(seen, write_per_input(seen, explain_dir, "explain", lambda r: _explanation(predictor, r),
                                                 avoid=avoid)):
            r.explanation = str(dest)
    return results


def _explanation(predictor: Predictor, r: FilePrediction) -> bytes:
    """The occlusion map of r's input for its best guess, over the input (explain.explanation_png)."""
    return explanation_png(r.input28, occlusion_map(predictor.predict_proba, r.input28, target=r.best))


def unreadable(path: Path, exc: OSError) -> str:
    """Why `path` could not be opened, in words."""
    if exc.errno == errno.ELOOP:
        return "a symbolic link loop: following its links never reaches a file"
    if isinstance(exc, FileNotFoundError) and path.is_symlink():
        return f"a broken symbolic link: it points to {os.readlink(path)}, which does not exist"
    if isinstance(exc, FileNotFoundError):
        return "no such file: check the path"
    return f"cannot read the file: {exc.strerror or exc}"  # no permission...: exc.strerror is the readable part


def save_inputs(results: list[FilePrediction], folder: str | Path,
                avoid: set[Path] = frozenset()) -> list[Path]:
    """Write each result's 28x28 input as `<stem>[-index]-28x28.png`; names are made unique."""
    return write_per_input(results, folder, "28x28", lambda r: to_png_bytes(r.input28), avoid)


def write_per_input(results: list[FilePrediction], folder: str | Path, tag: str, render,
                    avoid: set[Path] = frozenset()) -> list[Path]:
    """Write render(result) (PNG bytes) for each result as `<stem>[-index]-<tag>.png`; names are made unique."""
    folder = Path(folder)
    used: set[Path] = set()
    written = []
    for r in results:
        stem = Path(r.path).stem + (f"-{r.index}" if r.index is not None else "")
        dest, n = folder / f"{stem}-{tag}.png", 1
        # Two inputs may share a stem (a/7.png, b/7.png); and never overwrite an input.
        while dest in used or _real(dest) in avoid:
            n += 1
            dest = folder / f"{stem}-{tag}-{n}.png"
        used.add(dest)
        write_bytes_atomic(dest, render(r))
        written.append(dest)
    return written


def _real(path) -> Path:
    # os.path.realpath, not Path.resolve(): on Python 3.11 resolve() raises RuntimeError for a link loop,
    # and a loop among the inputs is reported per file, not a crash here.
    return Path(os.path.realpath(path))
