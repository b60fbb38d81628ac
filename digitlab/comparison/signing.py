"""This machine's key for `digitlab compare`'s manifests, so that a copied-in folder cannot vouch for itself.

    signature = sign(b"...")           # "hmac-sha256:<hex>"; creates the key on first use
    verify(b"...", signature)          # False for a signature made with any other key, or none

A manifest records the SHA-256 of the model beside it, but whoever can write the model can write the
manifest too: a folder copied in from elsewhere can carry a pickle and its matching hash. The key lives
outside every results folder, in the user's state folder ($DIGITLAB_STATE_DIR, else
$XDG_STATE_HOME/digitlab, else ~/.local/state/digitlab), as compare.key, readable by its owner only
(mode 0600). A manifest whose HMAC checks out under it was written by digitlab running as this user on
this machine; one that does not is never trusted. Deleting the key only costs a retraining.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import stat
import tempfile
from pathlib import Path

from digitlab.errors import USAGE, DigitlabError

KEY_FILE = "compare.key"
KEY_BYTES = 32  # HMAC-SHA256's block-sized secret: 256 random bits
PREFIX = "hmac-sha256:"


class SigningKeyError(DigitlabError):
    """The key can't be created or read, or others could read it; the message names the file and the fix."""

    exit_code = USAGE  # the fix is a setting (DIGITLAB_STATE_DIR) or a chmod


def state_dir() -> Path:
    """Where digitlab keeps per-user state: $DIGITLAB_STATE_DIR, $XDG_STATE_HOME/digitlab or ~/.local/state/digitlab."""
    if os.environ.get("DIGITLAB_STATE_DIR"):
        return Path(os.environ["DIGITLAB_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "digitlab"


def key_path() -> Path:
    return state_dir() / KEY_FILE


def machine_key(create: bool = True) -> bytes | None:
    """The key; made (mode 0600) when there is none and `create`, else None. SigningKeyError if unusable."""
    path = key_path()
    try:
        return _read_key(path)
    except (FileNotFoundError, NotADirectoryError):
        if not create:
            return None
    except OSError as exc:
        raise SigningKeyError(f"cannot read the key that signs compare's manifests, {path}: "
                              f"{exc.strerror or exc}. Set DIGITLAB_STATE_DIR to a folder of yours.") from None
    try:
        _create_key(path)
        return _read_key(path)
    except OSError as exc:
        raise SigningKeyError(
            f"cannot create the key that signs compare's manifests at {path}: {exc.strerror or exc}. "
            f"Set DIGITLAB_STATE_DIR to a folder you can write to.") from None


def sign(payload: bytes) -> str:
    return PREFIX + hmac.new(machine_key(), payload, hashlib.sha256).hexdigest()


def verify(payload: bytes, signature: str) -> bool:
    """Whether `signature` is this machine's key's HMAC of `payload`. With no key yet, nothing was signed here."""
    key = machine_key(create=False)
    if key is None or not isinstance(signature, str) or not signature.startswith(PREFIX):
        return False
    expected = hmac.new(key, payload, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature[len(PREFIX):])


def _read_key(path: Path) -> bytes:
    with open(path, "rb") as f:
        info = os.fstat(f.fileno())
        key = f.read(KEY_BYTES + 1)
    # Anyone who can read the key can sign a manifest, and so make this machine unpickle their file.
    if info.st_mode & 0o077 or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
        raise SigningKeyError(
            f"{path} signs compare's saved models, but others can read or own it (mode "
            f"{stat.filemode(info.st_mode)}): run `chmod 600 {path}` if it is yours, else delete it "
            f"(a new one is made; saved comparisons are then trained again).")
    if len(key) != KEY_BYTES:
        raise SigningKeyError(f"{path} is not a digitlab key ({len(key)} bytes, expected {KEY_BYTES}): delete it "
                              f"(a new one is made; saved comparisons are then trained again).")
    return key


def _create_key(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp: mode 0600 whatever the umask
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_BYTES))
            f.flush()
            os.fsync(f.fileno())
        # link() publishes a complete key, and only if no other process published one first (theirs wins).
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
