"""Predict digits in image files and .npy arrays: each file on its own, one batch through the model.

    results = predict_paths(Predictor.from_run(run), ["my_7.png", "scans/"], save_input_dir="seen/",
                            explain_dir="why/")
    [r.to_json() for r in results]   # path, index, verdict, digit, best, runner_up, probability, top3, ...
    results[0].verdict.text()        # "7", "unsure: 7 or 1?", "not a digit", "blank"
    read_paths(predictor, ["meter.png", "my_7.png"], mode="auto")   # [FileNumber "1207", FilePrediction 7]

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

`read_paths` reads whole numbers too (issue 12, digitlab.numbers): in mode "number", or "auto" when
the ink clearly holds several digits, an image gets a FileNumber (its text, and per digit the box,
probabilities and the trust model's verdict) instead of a FilePrediction. `.npy` entries are 28x28
digits already and stay single digits in every mode.
"""
from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from digitlab.atomic import write_bytes_atomic
from digitlab.errors import ConfigError, InputImageError
from digitlab.explain import explanation_png, occlusion_map
from digitlab.numbers import MODES, NumberReading, read_number, trust_judge
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
    _make_folders(save_input_dir, explain_dir)
    results: list[FilePrediction] = []
    for path in collect_inputs(paths):
        results += _load(path)
    return _finish(predictor, results, save_input_dir, explain_dir)


def read_paths(predictor: Predictor, paths: Iterable[str | Path], mode: str = "auto",
               save_input_dir: str | Path | None = None,
               explain_dir: str | Path | None = None) -> list[FilePrediction | FileNumber]:
    """predict_paths with whole numbers: each image is read by digitlab.numbers in `mode` (MODES).

    An image read as one digit ("digit" mode, or "auto" finding one) gets a FilePrediction exactly as
    predict_paths gives it; an image read as a number gets a FileNumber, each digit judged by the trust
    model. `.npy` files hold 28x28 digits already: they are read as single digits in every mode. A blank
    image is a `blank` verdict in every mode; a number past MAX_DIGITS is an error for that file.
    Saved inputs and explanations of a number's digits are named `<stem>-<position>-<tag>.png`, from 1.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown reading mode {mode!r}: use one of {', '.join(MODES)}")
    if mode == "digit":
        return predict_paths(predictor, paths, save_input_dir, explain_dir)
    _make_folders(save_input_dir, explain_dir)
    judge = trust_judge(predictor)
    results: list[FilePrediction | FileNumber] = []
    for path in collect_inputs(paths):
        if path.suffix.lower() == ".npy" or path.is_dir():
            results += _load(path)
            continue
        try:
            reading = read_number(read_image_file(path), predictor, mode, judge=judge)
        except NoInkError:
            results.append(FilePrediction(str(path), verdict=BLANK))
        except InputImageError as exc:  # not an image, too many digits...
            results.append(FilePrediction(str(path), error=str(exc)))
        except OSError as exc:
            results.append(FilePrediction(str(path), error=unreadable(path, exc)))
        else:
            # One digit: its 28x28 is to_mnist's of the whole picture, judged below with the others as in predict_paths.
            results.append(FilePrediction(str(path), input28=reading.digits[0].input28) if reading.mode == "digit"
                           else FileNumber(str(path), reading))
    return _finish(predictor, results, save_input_dir, explain_dir)


@dataclass
class FileNumber:
    """An image read as a number (digitlab.numbers): its digits left to right, each with box and verdict."""
    path: str
    reading: NumberReading
    explanations: list[str] = field(default_factory=list)  # with explain_dir: one occlusion map per digit

    error = None  # a file that could not be read is a FilePrediction with its error

    @property
    def ok(self) -> bool:
        return True

    def to_json(self) -> dict:
        item = {"path": self.path, **self.reading.to_json(), "error": None}
        for digit, explanation in zip(item["digits"], self.explanations, strict=False):
            digit["explanation"] = explanation
        return item


@dataclass
class _NumberDigit:
    """One digit of a FileNumber, named and rendered like a FilePrediction by write_per_input."""
    path: str
    index: int  # its position in the number, from 1
    input28: np.ndarray
    best: int
    owner: FileNumber


def _make_folders(*folders: str | Path | None) -> None:
    for folder in folders:
        if folder is not None:
            Path(folder).mkdir(parents=True, exist_ok=True)  # fail before the model runs, not after


def _load(path: Path) -> list[FilePrediction]:
    """The digits of one input file, not yet judged; or its blank verdict, or its error."""
    try:
        digits = load_digits(path)
    except NoInkError:  # a verdict, not an error: nothing was written or drawn
        return [FilePrediction(str(path), verdict=BLANK)]
    except InputImageError as exc:
        return [FilePrediction(str(path), error=str(exc))]
    except OSError as exc:  # no such file, no permission, a link loop...
        return [FilePrediction(str(path), error=unreadable(path, exc))]
    return [FilePrediction(str(path), index=i, input28=x) for i, x in digits]


def _finish(predictor: Predictor, results: list, save_input_dir, explain_dir) -> list:
    """Judge the single digits in one batch; write the inputs and explanations asked for."""
    seen = [r for r in results if isinstance(r, FilePrediction) and r.input28 is not None]
    if seen:
        x = np.stack([r.input28 for r in seen]).astype(np.float32)  # (n, 28, 28)
        judged = predictor.judge(x)
        for r, p, v in zip(seen, np.asarray(judged.proba, dtype=np.float64), judged.verdicts, strict=True):
            r.verdict, r.digit, r.best, r.runner_up = v, v.digit, v.best, v.runner_up
            r.top3 = Predictor.top_k(p, TOP_K)
            r.probability = r.top3[0][1]
    # In input order, single digits and numbers' digits together, so that written names stay unique.
    shown = [item for r in results for item in (
        [_NumberDigit(r.path, k + 1, d.input28, d.digit, r) for k, d in enumerate(r.reading.digits)]
        if isinstance(r, FileNumber) else [r] if r.input28 is not None else [])]

    avoid = {_real(r.path) for r in results}
    if save_input_dir is not None:
        save_inputs(shown, save_input_dir, avoid=avoid)
    if explain_dir is not None:
        for r, dest in zip(shown, write_per_input(shown, explain_dir, "explain", lambda r: _explanation(predictor, r),
                                                  avoid=avoid)):
            if isinstance(r, _NumberDigit):
                r.owner.explanations.append(str(dest))
            else:
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


def save_inputs(results: list[FilePrediction | _NumberDigit], folder: str | Path,
                avoid: set[Path] = frozenset()) -> list[Path]:
    """Write each result's 28x28 input as `<stem>[-index]-28x28.png` (a number's digits: index = position,
    from 1); names are made unique."""
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
