"""A committee of trained runs, saved as an ordinary run: its model averages the members' probabilities.

    run = make_ensemble(["runs/a", "runs/b", "runs/c"], out="runs/ens", tta=True)
    run.metrics.test_accuracy                     # evaluated like any run (report.html and all)
    run.trust.method                              # "msp": its trust model, fitted on images no member trained on
    Predictor.from_run(open_run("runs/ens"))      # predict and serve need only the folder

The ensemble's model.keras is one Keras model: the members as sub-models, their outputs averaged
by an Average layer. With test-time augmentation (tta) every member also sees the image shifted
by one pixel up, down, left and right, built from ZeroPadding2D + Cropping2D, so the file holds
only standard layers and loads with safe_mode on both backends.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
from pathlib import Path

import keras
from keras import layers

from digitlab.data import IMAGE_SIZE
from digitlab.environment import environment_info
from digitlab.errors import RunError
from digitlab.evaluation import evaluate_run
from digitlab.predictor import load_keras_model
from digitlab.runs import EnsembleConfig, Run, RunState, claim_folder, lock_run, new_run_dir, open_run
from digitlab.training import save_model

TTA_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))  # (down, right) in pixels; (0, 0) is the image itself


def member_family(run: Run) -> str:
    # a model this version doesn't know counts as conv: TensorFlow, the default backend, loads anything
    return run.family or "conv"


def open_members(paths) -> list[Run]:
    """The member runs, checked to be usable together; RunError says which one is not and why."""
    if not paths:
        raise RunError("an ensemble needs at least one run: digitlab ensemble RUN [RUN ...]")
    runs = [open_run(p) for p in paths]
    for run in runs:
        check_member(run)
    datasets = {r.data.sha256 for r in runs}
    if len(datasets) > 1:
        names = ", ".join(f"{r.path.name}: {r.data.dataset}" for r in runs)
        raise RunError(f"the members were trained on different datasets ({names}); ensemble runs of one dataset")
    if len({str(r.path.resolve()) for r in runs}) < len(runs):
        raise RunError("the same run is listed twice; each member should be a different run")
    return runs


def check_member(run: Run) -> None:
    """A run that failed, or whose test figures are not finite numbers, would poison the average."""
    if run.state.status == "failed":
        raise RunError(f"{run.path} failed ({run.state.error}); leave it out of the ensemble")
    metrics = run.metrics
    if metrics is not None and not all(math.isfinite(v) for v in (metrics.test_accuracy, metrics.test_loss)):
        raise RunError(f"{run.path} has non-finite test figures (accuracy {metrics.test_accuracy}, loss "
                       f"{metrics.test_loss}): its model is broken (did training diverge?); leave it out of the "
                       "ensemble")


def shifted(x, dy: int, dx: int):
    """x (batch, 28, 28) moved dy pixels down and dx right, zeros coming in; standard layers only."""
    if dy == dx == 0:
        return x
    h = layers.Reshape((IMAGE_SIZE, IMAGE_SIZE, 1))(x)
    h = layers.ZeroPadding2D(1)(h)  # 30x30; cropping (1 - dy) rows at the top moves the content down dy
    h = layers.Cropping2D(((1 - dy, 1 + dy), (1 - dx, 1 + dx)))(h)
    return layers.Reshape((IMAGE_SIZE, IMAGE_SIZE))(h)


def ensemble_model(members: list, tta: bool = False):
    """One keras.Model averaging the members' probabilities (over TTA_SHIFTS too when tta)."""
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE), name="image")
    views = [shifted(inputs, dy, dx) for dy, dx in (TTA_SHIFTS if tta else TTA_SHIFTS[:1])]
    outputs = []
    for i, member in enumerate(members):
        # Re-wrap under a unique name: two members of one architecture share a model name.
        wrapped = keras.Model(member.inputs, member.outputs[0], name=f"member{i}_{member.name}")
        outputs += [wrapped(v) for v in views]
    mean = layers.Average(name="mean_probability")(outputs) if len(outputs) > 1 else outputs[0]
    return keras.Model(inputs, mean, name="ensemble")


def make_ensemble(paths, out: str | Path | None = None, runs_root: str | Path = "runs", tta: bool = False,
                  evaluate: bool = True, dataset=None, overwrite: bool = False) -> Run:
    """Build, save and (by default) evaluate the ensemble of the runs at `paths`; return its Run.

    `out` must be empty or new; with `overwrite`, a digitlab run in it is replaced (other files are kept)."""
    members = open_members(paths)
    folder = Path(out) if out else None
    with lock_run(folder) if folder else contextlib.nullcontext():
        if folder:  # refused before the members load; a new folder is made only once they have
            claim_folder(folder, overwrite)
        model = ensemble_model([load_keras_model(m.model_path) for m in members], tta=tta)
        path = folder or new_run_dir(runs_root, _name(members, tta))
        with lock_run(path):
            return _save_ensemble(Run(path), members, model, tta, evaluate, dataset)


def _save_ensemble(run: Run, members: list[Run], model, tta: bool, evaluate: bool, dataset) -> Run:
    first = members[0]
    run.write_config(EnsembleConfig(
        members=[str(m.path) for m in members], member_models=[m.config.model for m in members],
        tta=tta, tta_shifts=[list(s) for s in TTA_SHIFTS] if tta else [], dataset=first.config.dataset,
        family="conv" if any(member_family(m) == "conv" for m in members) else "dense"))
    run.write_data(dataclasses.replace(first.data, val_is_test=any(m.data.val_is_test for m in members)))
    run.write_environment(environment_info(None))
    save_model(model, run.model_path)
    seconds = [m.state.train_seconds or 0.0 for m in members]
    run.write_state(RunState(status="completed", epochs_completed=None, members=len(members),
                             train_seconds=round(sum(seconds), 3)))  # the committee's cost: all members' training
    if evaluate:
        evaluate_run(run, dataset=dataset)
    return run


def _name(members: list[Run], tta: bool) -> str:
    tag = hashlib.sha256("|".join(str(m.path.resolve()) for m in members).encode()).hexdigest()[:6]
    return f"ensemble{len(members)}{'-tta' if tta else ''}-{tag}"
