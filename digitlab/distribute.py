"""Data-parallel training through Keras 3's distribution API (JAX only): several devices of one
machine, or several processes (machines) training one model together.

    use_devices(2, batch_size=128)    # before the model is built: weights replicated, each batch split in 2
    train(cfg, ...)                   # digitlab.training, unchanged: Keras shards every batch it is given

    join_cluster(Cluster("10.0.0.1:7777", 2, process_id), batch_size=128)   # every process, before JAX works
    train(cfg, ...)                   # each process feeds its part of every global batch (local_part)
    leave_cluster()                   # all together; then process 0 alone evaluates and exports

On a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N makes JAX show N CPU devices (the tests
use it); on a machine with GPUs the same call spreads the batch over the GPUs. TensorFlow's
MirroredStrategy is not wired: --devices and --coordinator ask for the JAX backend.

Several processes: JAX's distributed runtime (coordination service on process 0's HOST:PORT, gloo
collectives on CPUs) under Keras' DataParallel over every device of every process. Keras'
`keras.distribution.initialize` is a thin wrapper of `jax.distributed.initialize` without its timeouts,
so we call JAX's directly. JAX ends a process it cannot connect, or whose peer died, with a fatal abort
(no Python exception), so a rendezvous of our own on the same port comes first: a process that cannot
reach the coordinator, or a coordinator whose peers do not all arrive, fails with a ClusterError
within the timeout, before JAX is involved.
"""
from __future__ import annotations

import hashlib
import json
import socket
import time
from dataclasses import dataclass

import keras
import numpy as np

from digitlab.errors import ConfigError, TrainingError
from digitlab.runs import Distribution

DEFAULT_TIMEOUT = 60.0  # seconds a process waits for the others, at the start and at every collective's failure
HELLO = "digitlab-cluster"


class ClusterError(TrainingError):
    """The processes of a multi-process training could not meet, or one of them failed."""

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


def describe() -> Distribution | None:
    """The current distribution (--devices or --coordinator), for the run's config.json; None without one."""
    dist = keras.distribution.distribution()
    if dist is None:
        return None
    devices = tuple(str(d) for d in np.asarray(dist.device_mesh.devices).ravel())
    return Distribution(strategy="data-parallel", num_processes=dist.num_processes, devices=devices)


# ---------------------------------------------------------------- several processes

@dataclass(frozen=True)
class Cluster:
    coordinator: str  # HOST:PORT of process 0
    num_processes: int
    process_id: int
    timeout: float = DEFAULT_TIMEOUT
    job: str = "-"  # a digest of the training settings and data (job_digest): every process must have the same

    @property
    def writes(self) -> bool:
        """Only process 0 writes the run directory."""
        return self.process_id == 0

    def check(self, batch_size: int) -> tuple[str, int]:
        """(host, port), or a ConfigError before anything is started."""
        if self.num_processes < 1:
            raise ConfigError(f"--num-processes must be at least 1, got {self.num_processes}")
        if not 0 <= self.process_id < self.num_processes:
            raise ConfigError(f"--process-id must be 0 to {self.num_processes - 1} (--num-processes "
                              f"{self.num_processes}), got {self.process_id}")
        if not self.timeout > 0:
            raise ConfigError(f"--timeout must be a positive number of seconds, got {self.timeout}")
        if batch_size % self.num_processes:
            raise ConfigError(f"the global batch of {batch_size} images cannot be split evenly over "
                              f"{self.num_processes} processes: choose a --batch-size that is a multiple of "
                              f"{self.num_processes}")
        host, _, port = self.coordinator.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"--coordinator must be HOST:PORT (process 0's address and a free port, e.g. "
                              f"10.0.0.1:7777), got {self.coordinator!r}")
        backend = keras.backend.backend()
        if backend != "jax":
            raise ConfigError(f"--coordinator needs the JAX backend (this run uses {backend}): only JAX's "
                              "multi-process training is supported; run every process with KERAS_BACKEND=jax")
        return host.strip("[]"), int(port)


def job_digest(config: dict, data_sha256: str) -> str:
    """What every process of a job must agree on, in a word: the training settings and the data's content."""
    text = json.dumps({"config": config, "data": data_sha256}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def join_cluster(cluster: Cluster, batch_size: int) -> list[str]:
    """Meet the other processes, start JAX's distributed runtime and set Keras' DataParallel over every
    device of every process; return the devices. Call it in every process, before any JAX work."""
    import jax

    host, port = cluster.check(batch_size)
    deadline = time.monotonic() + cluster.timeout
    if cluster.num_processes > 1:
        (_gather if cluster.writes else _report_to)(cluster, host, port, deadline)
        wait = max(5, int(deadline - time.monotonic()))
        jax.distributed.initialize(coordinator_address=cluster.coordinator, num_processes=cluster.num_processes,
                                   process_id=cluster.process_id, initialization_timeout=wait,
                                   heartbeat_timeout_seconds=max(10, int(cluster.timeout)),
                                   shutdown_timeout_seconds=max(10, int(cluster.timeout)))
    devices = keras.distribution.list_devices()
    if batch_size % len(devices):
        raise ConfigError(f"the global batch of {batch_size} images cannot be split evenly over the job's "
                          f"{len(devices)} devices: choose a --batch-size that is a multiple of {len(devices)}")
    # auto_shard_dataset=False: each process gives Keras its own part of each batch (local_part), already cut.
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False))
    return devices


def leave_cluster() -> None:
    """Every process, once training is over: JAX's shutdown barrier, then the model is local again."""
    import jax

    if jax.distributed.is_initialized():
        jax.distributed.shutdown()
    keras.distribution.set_distribution(None)


def local_part(x: np.ndarray, y: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """This process's part of every global batch of (x, y), in order, and the per-process batch size.

    Keras (on JAX) builds each global batch from the processes' local batches, so every process is
    given the same number of images per batch: the last, short batch loses the few images (fewer than
    the number of devices) that do not divide over the devices. Unchanged in a single process."""
    dist = keras.distribution.distribution()
    if dist is None or dist.num_processes == 1:
        return x, y, batch_size
    import jax

    n_devices, n_local, rank = jax.device_count(), jax.local_device_count(), jax.process_index()
    keep = []
    for start in range(0, len(y), batch_size):
        per_device = (min(batch_size, len(y) - start)) // n_devices
        first = start + rank * n_local * per_device
        keep.append(np.arange(first, first + n_local * per_device))
    index = np.concatenate(keep)
    return x[index], y[index], batch_size // dist.num_processes


def peer_failed(exc: BaseException) -> bool:
    """Whether `exc` is a collective that failed because another process went away (gloo or the runtime)."""
    text = f"{type(exc).__name__}: {exc}"
    return any(mark in text for mark in ("Gloo", "gloo", "JaxRuntimeError", "XlaRuntimeError", "Connection reset",
                                         "heartbeat", "coordination service"))


# ---------------------------------------------------------------- the rendezvous, before JAX

def _gather(cluster: Cluster, host: str, port: int, deadline: float) -> None:
    """Process 0: wait on the coordinator's port for every other process's hello, then free the port."""
    server = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.bind(("", port))
    except OSError as exc:
        server.close()
        raise ClusterError(f"process 0 cannot listen on port {port} for --coordinator {cluster.coordinator} "
                           f"({exc.strerror}): choose a free port and give every process the same "
                           "--coordinator") from None
    arrived: set[int] = set()
    with server:
        server.listen(cluster.num_processes)
        while len(arrived) < cluster.num_processes - 1:
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(set(range(1, cluster.num_processes)) - arrived)
                raise ClusterError(
                    f"process 0 waited {cluster.timeout:g} s on {cluster.coordinator} for the other processes; "
                    f"process(es) {', '.join(map(str, missing))} did not arrive. Start them with the same "
                    f"--coordinator {cluster.coordinator} --num-processes {cluster.num_processes} and their "
                    "--process-id (or raise --timeout)")
            server.settimeout(left)
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                _welcome(conn, cluster, arrived, deadline)


def _welcome(conn: socket.socket, cluster: Cluster, arrived: set[int], deadline: float) -> None:
    conn.settimeout(max(1.0, deadline - time.monotonic()))
    try:
        words = conn.makefile("r").readline().split()
        if len(words) != 4 or words[0] != HELLO:
            return  # not one of ours (a port scanner, a stray client)
        num, pid = int(words[1]), int(words[2])
        if words[3] != cluster.job:
            reply = (f"process {pid} was started with other training settings or data than process 0 at "
                     f"{cluster.coordinator}: give every process the same training flags and dataset")
        elif num != cluster.num_processes:
            reply = (f"process 0 at {cluster.coordinator} runs with --num-processes {cluster.num_processes}, "
                     f"this process with {num}: give every process the same --num-processes")
        elif pid in arrived or not 0 < pid < cluster.num_processes:
            reply = (f"--process-id {pid} is taken or out of range at {cluster.coordinator} (process 0 has "
                     f"{', '.join(map(str, sorted(arrived))) or 'none'} of 1..{cluster.num_processes - 1}): "
                     "give each process its own --process-id")
        else:
            arrived.add(pid)
            reply = "ok"
        conn.sendall((reply + "\n").encode())
        conn.recv(1)  # the peer closes first, so the port is not left in TIME_WAIT for JAX's service
    except (OSError, ValueError):
        return


def _report_to(cluster: Cluster, host: str, port: int, deadline: float) -> None:
    """Process 1..N-1: say hello to process 0 on the coordinator's port, retrying until the deadline."""
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=max(0.5, min(5.0, deadline - time.monotonic()))) \
                    as conn:
                conn.sendall(f"{HELLO} {cluster.num_processes} {cluster.process_id} {cluster.job}\n".encode())
                reply = conn.makefile("r").readline().strip()
        except OSError as exc:
            last = exc.strerror or type(exc).__name__
            time.sleep(0.5)
            continue
        if reply == "ok":
            return
        if reply:
            raise ClusterError(reply)
        last = "the port answered, but not as digitlab's process 0"
        time.sleep(0.5)
    raise ClusterError(
        f"process {cluster.process_id} could not reach the coordinator {cluster.coordinator} within "
        f"{cluster.timeout:g} s ({last}): start process 0 there first (digitlab train ... --coordinator "
        f"{cluster.coordinator} --num-processes {cluster.num_processes} --process-id 0), check the address "
        "and that the port is open between the machines, or raise --timeout")
