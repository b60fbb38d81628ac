"""A committee of trained runs, saved as an ordinary run: its model averages the members' probabilities.

    run = make_ensemble(["runs/a", "runs/b", "runs/c"], out="runs/ens", tta=True)
    run.metrics["test_accuracy"]                  # evaluated like any run (report.html and all)
    open_run("runs/ens").predict_proba(x)         # predict and serve need only the folder

The ensemble's model.keras is one Keras model: the members as sub-models, their outputs averaged
by an Average layer. With test-time augmentation (tta) every member also sees the image shifted
by one pixel up, down, left and right, built from ZeroPadding2D + Cropping2D, so the file holds
only standard layers and loads with safe_mode on both backends.
"""
from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

from digitlab.atomic import write_json_atomic
from digitlab.data import IMAGE_SIZE
from digitlab.runs import MODEL_FILE, Run, RunError, environment_info, open_run

TTA_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))  # (down, right) in pixels; (0, 0) is the image itself


def member_family(run: Run) -> str:
    # an ensemble of ensembles records its family; a model this version doesn't know counts as conv
    return run.family or run.config.get("family", "conv")


def open_members(paths) -> list[Run]:
    """The member runs, checked to be usable together; RunError says which one is not and why."""
    if not paths:
        raise RunError("an ensemble needs at least one run: digitlab ensemble RUN [RUN ...]")
    runs = [open_run(p) for p in paths]
    datasets = {r.data.get("sha256") for r in runs}
    if len(datasets) > 1:
        names = ", ".join(f"{r.path.name}: {r.data.get('dataset')}" for r in runs)
        raise RunError(f"the members were trained on different datasets ({names}); ensemble runs of one dataset")
    if len({str(r.path.resolve()) for r in runs}) < len(runs):
        raise RunError("the same run is listed twice; each member should be a different run")
    return runs


def shifted(x, dy: int, dx: int):
    """x (batch, 28, 28) moved dy pixels down and dx right, zeros coming in; standard layers only."""
    from keras import layers
    if dy == dx == 0:
        return x
    h = layers.Reshape((IMAGE_SIZE, IMAGE_SIZE, 1))(x)
    h = layers.ZeroPadding2D(1)(h)  # 30x30; cropping (1 - dy) rows at the top moves the content down dy
    h = layers.Cropping2D(((1 - dy, 1 + dy), (1 - dx, 1 + dx)))(h)
    return layers.Reshape((IMAGE_SIZE, IMAGE_SIZE))(h)


def ensemble_model(members: list, tta: bool = False):
    """One keras.Model averaging the members' probabilities (over TTA_SHIFTS too when tta)."""
    import keras
    from keras import layers
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
                  evaluate: bool = True, dataset=None) -> Run:
    """Build, save and (by default) evaluate the ensemble of the runs at `paths`; return its Run."""
    from digitlab.training import save_model
    members = open_members(paths)
    path = Path(out) if out else _new_dir(runs_root, members, tta)
    if (path / MODEL_FILE).exists():
        raise RunError(f"{path} already holds a model; choose a new --out folder")
    model = ensemble_model([m.model for m in members], tta=tta)
    path.mkdir(parents=True, exist_ok=True)
    first = members[0]
    write_json_atomic(path / "config.json", {
        "model": "ensemble", "family": "conv" if any(member_family(m) == "conv" for m in members) else "dense",
        "members": [str(m.path) for m in members], "member_models": [m.config.get("model") for m in members],
        "tta": tta, "tta_shifts": [list(s) for s in TTA_SHIFTS] if tta else [],
        "dataset": first.config.get("dataset", "mnist")})
    write_json_atomic(path / "data.json", {**first.data, "val_is_test": any(m.data.get("val_is_test") for m in members)})
    write_json_atomic(path / "environment.json", environment_info(None))
    save_model(model, path / MODEL_FILE)
    seconds = [m.state.get("train_seconds") for m in members]
    write_json_atomic(path / "state.json", {
        "status": "completed", "epochs_completed": None, "members": len(members),
        "train_seconds": round(sum(s or 0 for s in seconds), 3)})  # the committee's cost: all members' training
    run = Run(path)
    if evaluate:
        from digitlab.evaluation import evaluate_run
        evaluate_run(run, dataset=dataset)
    return run


def _new_dir(root, members: list[Run], tta: bool) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    tag = hashlib.sha256("|".join(str(m.path.resolve()) for m in members).encode()).hexdigest()[:6]
    path = Path(root) / f"{stamp}-ensemble{len(members)}{'-tta' if tta else ''}-{tag}"
    n = 1
    while path.exists():
        n += 1
        path = path.with_name(f"{path.name}-{n}")
    return path
