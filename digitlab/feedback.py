"""The user's corrections, kept in SQLite: what they drew, what the model saw and said, and the right label.

    store = FeedbackStore.open("~/.local/share/digitlab/feedback.sqlite")   # or default_db_path()
    row_id = store.add(Correction(label=7, predicted=1, probabilities=[...], x28=x, original=b"...",
                                  original_kind="image", model_sha256=run.model_sha256()))
    store.stats(); store.delete(row_id); list(store.corrections())

Durability: WAL journal, synchronous=FULL and one transaction per write, so a row whose add() returned
is on disk before the server answers 200: a kill -9 the moment after loses nothing (WAL with NORMAL
would only be safe against a process crash, not a power cut; FULL costs one fsync per correction, and
corrections come by the handful). Writers in other processes wait on busy_timeout rather than failing with
"database is locked"; writers in this process share one connection behind a lock.

The schema carries its version in PRAGMA user_version; MIGRATIONS upgrade an older file in place, and a
file from a newer digitlab is refused with a message saying so.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from digitlab.errors import DataError

SIZE = 28  # the model's input field, pixels
MAX_ORIGINAL_BYTES = 2 * 2**20  # an original input kept at most this large (a drawn digit is a few KB)
BUSY_TIMEOUT_MS = 30_000  # a writer waits this long for another process's transaction before giving up
DB_NAME = "feedback.sqlite"

# Each entry upgrades the schema from version i to i + 1 (user_version counts the entries applied).
MIGRATIONS: list[str] = [
    """CREATE TABLE corrections (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created TEXT NOT NULL,                  -- ISO time, UTC
        label INTEGER NOT NULL CHECK (label BETWEEN 0 AND 9),   -- what the user says it is
        predicted INTEGER NOT NULL,             -- the model's answer
        probabilities TEXT NOT NULL,            -- JSON list of 10 floats
        x28 BLOB NOT NULL,                      -- the 28x28 the model saw, uint8, row-major
        original BLOB,                          -- the input as sent: image bytes, or the pixels' JSON
        original_kind TEXT NOT NULL,            -- "image" | "pixels"
        model_sha256 TEXT NOT NULL,             -- the run's identity (Run.model_sha256)
        run_name TEXT NOT NULL DEFAULT ''
    )""",
    "CREATE INDEX corrections_label ON corrections(label)",
]
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class Correction:
    label: int  # the digit the user says it is
    predicted: int  # what the model answered
    probabilities: list[float]  # the model's, per class
    x28: np.ndarray  # (28, 28) float32 in [0, 1] or uint8: what the model saw
    original: bytes | None = None  # the input as sent
    original_kind: str = "image"  # "image" | "pixels"
    model_sha256: str = ""
    run_name: str = ""
    created: str = ""  # ISO time; filled in by add()
    id: int | None = None  # the row, once stored

    @property
    def correct(self) -> bool:
        return self.label == self.predicted


@dataclass(frozen=True)
class Stats:
    total: int
    per_label: dict[int, int] = field(default_factory=dict)  # label -> corrections
    model_correct: int = 0  # corrections where the model's answer was already the label
    model_accuracy: float | None = None  # model_correct / total; None when there are none


def default_db_path() -> Path:
    """$DIGITLAB_DATA_HOME/feedback.sqlite, else $XDG_DATA_HOME/digitlab/..., else ~/.local/share/digitlab/...:
    the user's data, never inside the installed package."""
    if os.environ.get("DIGITLAB_DATA_HOME"):
        return Path(os.environ["DIGITLAB_DATA_HOME"]) / DB_NAME
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "digitlab" / DB_NAME


def to_uint8(x28) -> bytes:
    x = np.asarray(x28)
    if x.shape != (SIZE, SIZE):
        raise DataError(f"a correction's image must be {SIZE}x{SIZE}, got shape {x.shape}")
    if x.dtype != np.uint8:
        x = np.round(np.clip(x.astype(np.float64), 0, 1) * 255).astype(np.uint8)
    return x.tobytes()


class FeedbackStore:
    """One SQLite file of corrections. Thread-safe; several processes may write at once."""

    def __init__(self, path: Path, conn: sqlite3.Connection):
        self.path, self._conn, self._lock = path, conn, threading.Lock()

    @classmethod
    def open(cls, path: str | Path | None = None) -> FeedbackStore:
        path = Path(path).expanduser() if path else default_db_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise DataError(f"cannot open the feedback database {path}: {exc}; pass another with --feedback-db") \
                from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            _migrate(conn, path)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise DataError(f"{path} is not a digitlab feedback database ({exc}): pass another with --feedback-db") \
                from None
        except BaseException:
            conn.close()
            raise
        return cls(path, conn)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, c: Correction) -> int:
        """Store one correction in its own transaction; the row id, once it is on disk."""
        if not (isinstance(c.label, int) and 0 <= c.label <= 9):
            raise DataError(f"a correction's label must be a digit 0..9, got {c.label!r}")
        if c.original is not None and len(c.original) > MAX_ORIGINAL_BYTES:
            raise DataError(f"the original input is {len(c.original)} bytes, over the {MAX_ORIGINAL_BYTES} kept")
        created = c.created or dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        row = (created, c.label, int(c.predicted), json.dumps([float(p) for p in c.probabilities]),
               to_uint8(c.x28), c.original, c.original_kind, c.model_sha256, c.run_name)
        with self._lock:
            cur = self._conn.execute("BEGIN IMMEDIATE")
            try:
                cur.execute("INSERT INTO corrections (created, label, predicted, probabilities, x28, original, "
                            "original_kind, model_sha256, run_name) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
                row_id = cur.lastrowid
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return int(row_id)

    def delete(self, row_id: int) -> bool:
        """Remove one correction; False when there was none with that id."""
        with self._lock:
            cur = self._conn.execute("DELETE FROM corrections WHERE id = ?", (int(row_id),))
            return cur.rowcount > 0

    def get(self, row_id: int) -> Correction | None:
        with self._lock:
            row = self._conn.execute(f"SELECT {_COLUMNS} FROM corrections WHERE id = ?", (int(row_id),)).fetchone()
        return None if row is None else _correction(row)

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM corrections").fetchone()[0])

    def corrections(self) -> Iterator[Correction]:
        """Every correction, oldest first."""
        with self._lock:
            rows = self._conn.execute(f"SELECT {_COLUMNS} FROM corrections ORDER BY id").fetchall()
        for row in rows:
            yield _correction(row)

    def stats(self) -> Stats:
        with self._lock:
            rows = self._conn.execute("SELECT label, COUNT(*), SUM(label = predicted) FROM corrections "
                                      "GROUP BY label").fetchall()
        per_label = {d: 0 for d in range(10)}
        correct = 0
        for label, n, ok in rows:
            per_label[int(label)] = int(n)
            correct += int(ok or 0)
        total = sum(per_label.values())
        return Stats(total=total, per_label=per_label, model_correct=correct,
                     model_accuracy=correct / total if total else None)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, y): the corrections as the model saw them, (n, 28, 28) float32 in [0, 1], and their labels."""
        items = list(self.corrections())
        if not items:
            return np.zeros((0, SIZE, SIZE), np.float32), np.zeros((0,), np.int64)
        x = np.stack([c.x28 for c in items]).astype(np.float32) / 255.0
        return x, np.array([c.label for c in items], np.int64)


_COLUMNS = "id, created, label, predicted, probabilities, x28, original, original_kind, model_sha256, run_name"


def _correction(row) -> Correction:
    rid, created, label, predicted, proba, x28, original, kind, sha, run_name = row
    return Correction(label=int(label), predicted=int(predicted), probabilities=json.loads(proba),
                      x28=np.frombuffer(x28, np.uint8).reshape(SIZE, SIZE), original=original, original_kind=kind,
                      model_sha256=sha, run_name=run_name, created=created, id=int(rid))


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the file to SCHEMA_VERSION, each step in one transaction; refuse a newer file."""
    conn.execute("BEGIN IMMEDIATE")  # two processes opening a new file at once: one migrates, the other waits
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise DataError(f"{path} has feedback schema version {version}; this digitlab reads up to "
                            f"{SCHEMA_VERSION}: upgrade digitlab to open it")
        for step in MIGRATIONS[version:]:
            conn.execute(step)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
