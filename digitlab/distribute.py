"""Data-parallel training on several devices of one machine, through Keras 3's distribution API (JAX only).

    use_devices(2, batch_size=128)    # before the model is built: weights replicated, each batch split in 2
    train(cfg, ...)                   # digitlab.training, unchanged: Keras shards every batch it is given

On a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N makes JAX show N CPU devices (the tests
use it); on a machine with GPUs the same call spreads the batch over the GPUs. TensorFlow's
MirroredStrategy is not wired: --devices asks for the JAX backend.
"""
from __future__ import annotations

import keras

from digitlab.errors import ConfigError

CPU_DEVICES_HINT = "XLA_FLAGS=--xla_force_host_platform_device_count=N (CPU devices for testing)"


def use_devices(n: int, batch_size: int) -> list[str]:
    """Set Keras' global distribution to DataParallel over the first `n` devices; return their names."""
    backend = keras.backend.backend()
    if backend != "jax":
        raise ConfigError(f"--devices needs the JAX backend (this run uses {backend}): only JAX's data-parallel "
                          "training is supported; run with KERAS_BACKEND=jax")
    if n < 1:
        raise ConfigError(f"--devices must be at least 1, got {n}")
    devices = keras.distribution.list_devices()
    if n > len(devices):
        raise ConfigError(f"--devices {n}: this machine shows {len(devices)} device(s) ({', '.join(devices)}); "
                          f"ask for fewer, or on a CPU set {CPU_DEVICES_HINT}")
    if batch_size % n:
        raise ConfigError(f"the batch of {batch_size} images cannot be split evenly over {n} devices: "
                          f"choose a --batch-size that is a multiple of {n}")
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices[:n]))
    return devices[:n]


def batch_split(batch_size: int) -> list[tuple[str, tuple[int, ...]]]:
    """How the current distribution places a batch of `batch_size` images: (device, shard shape) per shard."""
    import jax
    import numpy as np

    dist = keras.distribution.distribution()
    if dist is None:
        return []
    x = np.zeros((batch_size, 28, 28), dtype="float32")
    placed = jax.device_put(x, dist.get_data_layout(x.shape).backend_layout)
    return [(str(s.device), tuple(s.data.shape)) for s in placed.addressable_shards]
