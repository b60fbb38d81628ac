"""manifest.json: what one compared model was trained on, how long it took, the SHA-256 of its file.

    write_manifest(folder, Manifest("knn", "classic", "model.joblib", sha, 1.234, fit_key))  # signs it
    manifest = read_manifest(folder)        # None when absent or unreadable: the model is trained again
    signed_here(manifest)                   # written by digitlab on this machine? (signing.py)

Only this module reads or writes the file. It is written last, after the model: a manifest implies a
complete model, and a run that dies mid-training removes it first (`forget`), so none is stale.

The SHA-256 alone proves nothing about a folder copied in from elsewhere, which can carry a model and a
manifest that matches it. So every manifest is signed with this machine's key (an HMAC of its fields,
kept outside the results folder), and only a manifest whose signature checks out is believed.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from digitlab.atomic import write_json_atomic
from digitlab.comparison import signing

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
    signature: str = ""  # this machine's HMAC of the fields above (write_manifest); "" in older manifests


def read_manifest(folder: Path) -> Manifest | None:
    """The folder's manifest; None when there is none, or one this version can't read (a refit follows)."""
    try:
        return Manifest(**json.loads((folder / MANIFEST).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def write_manifest(folder: Path, manifest: Manifest) -> Manifest:
    """Sign `manifest` with this machine's key and write it; return it as written (signature included)."""
    fields = json.loads(json.dumps(_fields(manifest)))  # signed in the form it will be read back
    signed = Manifest(**fields, signature=signing.sign(_payload(fields)))
    write_json_atomic(folder / MANIFEST, dataclasses.asdict(signed))
    return signed


def signed_here(manifest: Manifest) -> bool:
    """Whether digitlab on this machine (this user's key) wrote `manifest`, unchanged since."""
    return signing.verify(_payload(_fields(manifest)), manifest.signature)


def _fields(manifest: Manifest) -> dict:
    fields = dataclasses.asdict(manifest)
    del fields["signature"]
    return fields


def _payload(fields: dict) -> bytes:
    # The purpose comes first, so a signature made for anything else with the same key never passes here.
    return b"digitlab compare manifest v1\n" + json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def forget(folder: Path) -> None:
    """Remove the manifest before training over a model: a run that dies mid-way leaves no stale claim."""
    (folder / MANIFEST).unlink(missing_ok=True)
