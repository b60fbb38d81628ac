"""Learning-rate schedules: constant, step, cosine and one-cycle, each with an optional linear warm-up.

    lr = make_learning_rate(cfg, steps_per_epoch=430)   # what the optimiser gets
    curve = learning_rate_curve(cfg, steps_per_epoch=430)   # numpy, one value per step (plots, tests)

The rate is a function of the optimiser's step counter only, which the model file saves; so a
resumed run continues on exactly the curve it left. A constant rate without warm-up is passed as a
plain float, which keeps the tutorial's `Adam(learning_rate=1e-3)` exactly as it was.

Shapes over a run of T steps with peak rate `lr` and W warm-up steps:
  constant  lr after the warm-up
  step      lr * step_gamma ** (epoch // step_epochs)
  cosine    lr -> COSINE_FINAL * lr along half a cosine
  onecycle  a rise from ONECYCLE_START * lr to lr over W steps (ONECYCLE_RISE of the run when no
            warm-up is set), then a straight line down to 0 at the last step (Smith 2018)
"""
from __future__ import annotations

import math

import keras
import numpy as np

from digitlab.errors import ConfigError

ONECYCLE_RISE = 0.25  # onecycle without --warmup-epochs: share of the run spent rising to the peak
ONECYCLE_START = 0.04  # onecycle starts at this fraction of the peak (fastai's div_factor of 25)
COSINE_FINAL = 0.0  # cosine ends at this fraction of the peak


def schedule_params(cfg, steps_per_epoch: int) -> dict:
    """Everything the curve depends on, in steps; saved with the optimiser inside the model file."""
    total = cfg.epochs * steps_per_epoch
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    start = 0.0
    if cfg.schedule == "onecycle":
        warmup = warmup or max(1, int(round(ONECYCLE_RISE * total)))
        start = ONECYCLE_START
    return {"kind": cfg.schedule, "peak": float(cfg.lr), "total_steps": int(total), "warmup_steps": warmup,
            "warmup_start": start, "step_steps": int(cfg.step_epochs * steps_per_epoch),
            "step_gamma": float(cfg.step_gamma)}


def multiplier(step, p: dict, ops):
    """The rate as a fraction of the peak at optimiser step `step` (0-based); `ops` is numpy or keras.ops."""
    step = ops.cast(step, "float32") if ops is not np else np.asarray(step, dtype=np.float32)
    w = float(p["warmup_steps"])
    rising = p["warmup_start"] + (1.0 - p["warmup_start"]) * ops.minimum((step + 1.0) / max(w, 1.0), 1.0)
    t = ops.clip((step - w) / max(p["total_steps"] - w, 1.0), 0.0, 1.0)  # progress after the warm-up, 0..1
    kind = p["kind"]
    if kind == "constant":
        main = ops.ones_like(t)
    elif kind == "step":
        main = ops.power(p["step_gamma"], ops.floor(step / max(p["step_steps"], 1)))
    elif kind == "cosine":
        main = COSINE_FINAL + (1.0 - COSINE_FINAL) * 0.5 * (1.0 + ops.cos(math.pi * t))
    elif kind == "onecycle":
        main = 1.0 - t
    else:
        raise ConfigError(f"unknown schedule {kind!r}; choose constant, step, cosine or onecycle")
    return ops.where(step < w, rising, main)


def learning_rate_curve(cfg, steps_per_epoch: int) -> np.ndarray:
    p = schedule_params(cfg, steps_per_epoch)
    return (p["peak"] * multiplier(np.arange(p["total_steps"]), p, np)).astype(np.float32)


def make_learning_rate(cfg, steps_per_epoch: int):
    """A float for a constant rate without warm-up, else a serialisable keras schedule."""
    if cfg.schedule == "constant" and cfg.warmup_epochs == 0:
        return cfg.lr
    return Schedule(**schedule_params(cfg, steps_per_epoch))


@keras.saving.register_keras_serializable(package="digitlab")
class Schedule(keras.optimizers.schedules.LearningRateSchedule):
    """The curve above as a Keras schedule; registered, so a model file's optimiser can be rebuilt."""

    def __init__(self, **params):
        self.params = params

    def __call__(self, step):
        return self.params["peak"] * multiplier(step, self.params, keras.ops)

    def get_config(self):
        return dict(self.params)
