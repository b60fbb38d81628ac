"""manifest.json: what one compared model was trained on, how long it took, the SHA-256 of its file.

    write_manifest(folder, Manifest("knn", "classic", "model.joblib", sha, 1.234, fit_key, saved))
    manifest = read_manifest(folder)        # None when absent or unreadable: the model is trained again

Only this module reads or writes the file. It is written last, after the model: a manifest implies a
complete model, and a run that dies mid-training removes it first (`forget`), so none is stale.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from digitlab.atomic import write_json_atomic

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Manifest:
    model: str
    kind: str  # "classic", "clustering" or "neural"
    model_file: str  # beside the manifest: model.joblib, model.ubj or model.keras
    model_sha256: str  # of model_file when it was saved; checked before every load
    train_seconds: float | None  # as measured when it was trained (a re-use reports this one)
    fit_key: dict  # everything the fitted model depends on (plan.fit_key)
    saved: str = dataclasses.field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S"))


def read_manifest(folder: Path) -> Manifest | None:
    """The folder's manifest; None when there is none, or one this version can't read (a refit follows)."""
    try:
        return Manifest(**json.loads((folder / MANIFEST).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def write_manifest(folder: Path, manifest: Manifest) -> None:
    write_json_atomic(folder / MANIFEST, dataclasses.asdict(manifest))


def forget(folder: Path) -> None:
    """Remove the manifest before training over a model: a run that dies mid-way leaves no stale claim."""
    (folder / MANIFEST).unlink(missing_ok=True)
