"""Atomic, durable file writes: write to a temporary name in the same folder, fsync, then rename.

A crash, a power cut or Ctrl-C mid-write never leaves a half-written file under the final name:
the data is flushed to disk before the rename publishes it, and the folder after, so the rename
itself survives too. Published files get the mode a plain open() would give them (0666 less the
umask), not mkstemp's private 0600.

    write_text_atomic(path, "hello")
    with atomic_path(path) as tmp:   # for writers that need a file name (savez, model.save)
        np.savez(tmp, x=x)
    remove_temporaries(folder, ["model.keras"])   # what a killed writer left behind
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

# mkstemp's random part: 8 characters of [a-z0-9_]; a temporary is ".<name>.<random><suffix>".
_RANDOM_PART = re.compile(r"[a-z0-9_]{8}(\.[A-Za-z0-9]+)?")


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; publish it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the real suffix: some writers (np.savez, keras' model.save) insist on it.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        _publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _publish(tmp: Path, path: Path) -> None:
    os.chmod(tmp, 0o666 & ~current_umask())
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)  # the bytes reach the disk before the name points at them
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(folder: str | Path) -> None:
    """Make a rename (or creation, or removal) in `folder` durable; a no-op where folders can't be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the rename still happened
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (os.umask must set it to read it)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temporaries(folder: str | Path, names: Iterable[str]) -> list[Path]:
    """The temporaries atomic_path left in `folder` for files called `names` (a killed writer's)."""
    folder = Path(folder)
    prefixes = [f".{name}." for name in names]
    found = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in folder.iterdir():
            if any(entry.name.startswith(p) and _RANDOM_PART.fullmatch(entry.name[len(p):]) for p in prefixes):
                found.append(entry)
    return sorted(found)


def remove_temporaries(folder: str | Path, names: Iterable[str]) -> list[Path]:
    """Delete the temporaries of `names` in `folder` and return them. Call it only while no other process
    can be writing there (digitlab holds the run's lock when it does)."""
    removed = []
    for tmp in temporaries(folder, names):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj) -> None:
    """`obj` as strict JSON: NaN and infinity are refused (json would write bare NaN, which no parser reads)."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=False, default=_jsonable, allow_nan=False)
    except ValueError as exc:
        raise ValueError(f"refusing to write {path}: {exc} ({_first_non_finite(obj)})") from None
    write_text_atomic(path, text + "\n")


def _first_non_finite(obj, where: str = "") -> str:
    """Where the first NaN or infinity sits in `obj`, for the error message."""
    if isinstance(obj, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(obj))
    else:
        value = obj.item() if hasattr(obj, "item") else obj
        return f"{where or 'value'} = {value}" if isinstance(value, float) and not math.isfinite(value) else ""
    return next((found for key, value in items if (found := _first_non_finite(value, key))), "")


def _jsonable(value):
    # numpy scalars and paths appear in metrics and configs; json can't encode them natively.
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
