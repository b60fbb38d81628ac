"""Pick the Keras backend before keras is imported.

Measured on this project's 2-core CPU machines (bench/seed.py, issue notes): dense networks train
about 2-3x faster on JAX than on TensorFlow, CNNs about 2x faster on TensorFlow
(`bench/accuracy.py --backends`, table in docs/training.md). So a dense model
defaults to JAX and everything else to TensorFlow, unless the user set KERAS_BACKEND.

    choose_backend("dense")   # before the first `import keras`
"""
from __future__ import annotations

import importlib.util
import os
import sys

FASTEST = {"dense": "jax", "conv": "tensorflow"}
DEFAULT = "tensorflow"


def choose_backend(family: str | None) -> str:
    """Set KERAS_BACKEND for `family` unless the user chose one or keras is already loaded."""
    if "keras" in sys.modules:  # too late to switch: keras reads the variable once at import
        return sys.modules["keras"].backend.backend()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    wanted = FASTEST.get(family or "", DEFAULT)
    if wanted == "jax" and importlib.util.find_spec("jax") is None:
        wanted = DEFAULT
    os.environ["KERAS_BACKEND"] = wanted
    return wanted


def cache_compiled_programs(folder: str | os.PathLike) -> None:
    """Let JAX keep the programs it compiles in `folder` (its persistent compilation cache) and reuse them in later
    processes, unless the user set JAX_COMPILATION_CACHE_DIR (an empty value turns it off). The scan engine's
    epoch and the evaluation's forward passes take 1-2 s to compile on these CPUs, a sixth of the main job; the
    cache keys hold the program, the JAX version and the compile options, so a changed model compiles anew."""
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.fspath(folder))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")  # JAX's default, 1 s, skips ours


def quiet_tensorflow_logs() -> None:
    # TensorFlow prints a screenful of C++ info lines at import; keep warnings and errors.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
