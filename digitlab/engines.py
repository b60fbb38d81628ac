"""How an epoch runs: Keras' `fit`, or one compiled JAX program per epoch (`--engine scan`).

For a network as small as the tutorial's, `fit` on JAX spends most of an epoch between steps: Python
calls one compiled step per batch of 32, 1,719 times an epoch. The scan engine compiles the whole epoch
instead: `jax.lax.scan` over the epoch's batches of Keras' own `train_step`, the one `fit` calls, with
the model's variables (weights, optimiser slots and step counter, dropout seed states, metric totals)
as the loop's state. So it computes what `fit` computes, batch for batch, with the same dropout masks:
the model stays a normal Keras model (model.keras, the optimiser state a resume needs, the history).

    engine = ScanEngine(model)
    logs, bad_batch = engine.run_epoch(x, y, batch_size)   # x, y in training order; logs as fit's history has them

`fit` stays for everything the scan engine does not do: the TensorFlow backend, per-batch Keras
callbacks (TensorBoard, tests that interrupt mid-epoch), distributed training. `resolve_engine` chooses.
Callbacks marked `epoch_level = True` run under either: the scan engine calls their on_train_begin and
on_epoch_end once an epoch, as digitlab's one-fit-per-epoch loop does.
"""
from __future__ import annotations

import keras
import numpy as np


def needs_batches(callbacks) -> bool:
    """Whether a Keras callback needs fit's batch loop: any but those marked `epoch_level = True`, which only look
    at whole epochs (on_train_begin, on_epoch_end: a sweep's pruning, the MLflow logger) and the scan engine calls."""
    return any(not getattr(cb, "epoch_level", False) for cb in callbacks or [])


def resolve_engine(asked: str, callbacks=None, family: str = "dense") -> str:
    """The engine that will run: `asked` unless it can't; "auto" is scan for dense networks where scan can run.

    Only dense networks: for them Python's per-batch work is most of fit's time; a CNN's batches are compute-bound,
    and XLA on these CPUs ran fastcnn's epoch as one scan about 6x slower than fit."""
    if asked == "fit" or (asked == "auto" and family != "dense") or scan_unavailable_reason(callbacks) is not None:
        return "fit"
    return "scan"


def scan_unavailable_reason(callbacks=None) -> str | None:
    """Why --engine scan can't run here, in words; None when it can."""
    if keras.backend.backend() != "jax":
        return f"it needs the JAX backend (this process runs {keras.backend.backend()})"
    if needs_batches(callbacks):
        return "Keras callbacks that watch batches (--tensorboard) need fit's batch loop"
    if keras.distribution.distribution() is not None:
        return "distributed training (--devices, several processes) runs on fit"
    return None


class ScanEngine:
    """Runs epochs of a compiled Keras model as one jitted `lax.scan` each (JAX backend only)."""

    def __init__(self, model):
        import jax  # here, not at module top: only the JAX backend gets this far

        self.model = model
        self._jax = jax
        self._epoch = jax.jit(self._scan, donate_argnums=0)
        # The last, smaller batch of an epoch (55,000 = 1,718 x 32 + 24) is one more step, as in fit.
        self._step = jax.jit(lambda state, batch: model.train_step(state, batch)[::-1], donate_argnums=0)
        self.training_set = None  # (x, y) on the device, when kept there (keep)

    def keep(self, x: np.ndarray, y: np.ndarray) -> None:
        """Put the (unshuffled) training set on the device once; epochs then pass only their order (run_epoch):
        no 170 MB shuffled copy made and sent each epoch."""
        self.training_set = (self._jax.device_put(x), self._jax.device_put(y))

    def _scan(self, state, x, y, batches):
        def body(carry, rows):  # rows: the indices of one batch into x and y
            logs, carry = self.model.train_step(carry, (x[rows], y[rows]))
            return carry, logs["loss"]

        return self._jax.lax.scan(body, state, batches)

    def run_epoch(self, x, y, batch_size: int, order: np.ndarray | None = None) -> tuple[dict[str, float], int | None]:
        """Train one epoch on the images x[order] with targets y[order] (x, y as given when `order` is None), in
        batches. Returns the epoch's logs as fit reports them (loss and metrics averaged over the epoch) and the
        first batch (0-based) whose running loss was not finite, or None; like fit with a TerminateOnNaN, the
        caller must not keep such an epoch."""
        model = self.model
        order = np.arange(len(y)) if order is None else np.asarray(order)
        # What fit does before its first batch: build the layers, the loss and metric variables and the optimiser's
        # slots (each only if missing), all of which the state below carries.
        model._symbolic_build(data_batch=(np.asarray(x[order[:batch_size]]), np.asarray(y[order[:batch_size]])))
        for metric in model.metrics:
            metric.reset_state()  # fit's logs are this epoch's averages
        groups = (model.trainable_variables, model.non_trainable_variables, model.optimizer.variables,
                  model.metrics_variables)
        state = tuple([v.value for v in group] for group in groups)
        full = len(order) // batch_size
        losses = []
        if full:
            state, loss_trace = self._epoch(state, x, y, order[:full * batch_size].reshape(full, batch_size))
            losses.append(np.asarray(loss_trace))
        if len(order) > full * batch_size:
            rest = order[full * batch_size:]
            state, logs = self._step(state, (x[rest], y[rest]))
            losses.append(np.asarray([logs["loss"]]))
        for group, values in zip(groups, state, strict=True):
            for variable, value in zip(group, values, strict=True):
                variable.assign(value)
        trace = np.concatenate(losses)
        bad = np.flatnonzero(~np.isfinite(trace))
        logs = {name: float(value) for name, value in model.get_metrics_result().items()}
        if bad.size:
            logs["loss"] = float(trace[bad[0]])
        return logs, (int(bad[0]) if bad.size else None)

