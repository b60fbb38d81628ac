"""What a result was measured with: library versions, the Keras backend, the machine. One probe for all.

    environment_info(seed=0)   # environment.json of a run
    machine_info()             # the machine line of a leaderboard or a bench table
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("numpy", "keras", "tensorflow-cpu", "tensorflow", "jax", "jaxlib", "scikit-learn", "scipy", "pillow",
            "matplotlib", "xgboost", "xgboost-cpu", "onnxruntime")


def versions(packages=PACKAGES) -> dict[str, str]:
    """Installed versions of `packages`; those not installed are left out."""
    out = {}
    for pkg in packages:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def keras_backend() -> str | None:
    """The backend Keras runs (or will run) on, without importing Keras to find out."""
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "backend"):
        return keras.backend.backend()
    return os.environ.get("KERAS_BACKEND")


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {"cpu": cpu, "cores": cpu_count(), "memory_gib": memory_gib, "platform": platform.platform(),
            "python": platform.python_version()}


def environment_info(seed: int | None = None) -> dict:
    """The fields of a run's environment.json (digitlab.runs.Environment)."""
    return {
        "seed": seed,
        "keras_backend": keras_backend(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": cpu_count(),
        "versions": versions(),
        "created": dt.datetime.now().isoformat(timespec="seconds"),
    }
