"""digitlab.sweep: the search space's checks, trials as run directories in a shared SQLite study, two
worker processes, pruning, failures recorded, Ctrl-C and resume, and the results written at the end.

Trials train an mlp of 16 units for one epoch on 300 images: seconds each; the network's accuracy is not
the point here, the study's bookkeeping is.
"""
from __future__ import annotations

import pytest

from digitlab.config import TrainConfig, apply_overrides
from digitlab.errors import ConfigError

optuna = pytest.importorskip("optuna")  # the `sweep` extra; scripts/setup.sh installs it, so CI runs these

TINY = {"epochs": 1, "train_size": 300, "val": "200", "batch_size": 64, "model_params": {"hidden": [16]}}


def tiny_base() -> TrainConfig:
    from digitlab.registry import get_model_info
    return apply_overrides(apply_overrides(TrainConfig(model="mlp"), get_model_info("mlp").defaults), TINY)


def make_sweep(folder, items, trials=3, **kw):
    from digitlab.sweep import Sweep, parse_space
    return Sweep(base=tiny_base(), space=parse_space(items, "mlp"), folder=folder, trials=trials, **kw)


# ---------------------------------------------------------------- the search space, checked up front

@pytest.mark.parametrize("item, message", [
    ("lr", "should read NAME=KIND:ARGS"),
    ("nope=uniform:0:1", "unknown search parameter 'nope' for model 'mlp'; searchable:"),
    ("lr=normal:0:1", "unknown kind 'normal'"),
    ("lr=uniform:0.1:0.01", "finite LOW < HIGH"),
    ("lr=loguniform:0:0.1", "needs LOW > 0"),
    ("lr=uniform:a:b", "needs two numbers"),
    ("epochs=uniform:1:5", "takes whole numbers: use epochs=int:LOW:HIGH"),
    ("epochs=int:1.5:3", "needs whole numbers"),
    ("hidden=choice:64", "at least two values"),
    ("optimizer=uniform:0:1", "is not a number"),
    ("seed=int:0:3", "fixed for a whole sweep"),
    ("batch_size=choice:32,big", "batch_size must be of type int"),
])
def test_bad_search_space_is_a_clear_config_error(item, message):
    from digitlab.sweep import parse_space
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_space([item], "mlp")


def test_space_corners_are_validated_before_any_trial(tmp_path):
    from digitlab.sweep import check_space, parse_space
    with pytest.raises(ConfigError, match="at its low end: lr must be positive"):
        check_space(tiny_base(), parse_space(["lr=uniform:-1:1"], "mlp"))
    assert not list(tmp_path.iterdir())


def test_params_go_to_config_fields_or_builder_parameters():
    from digitlab.sweep import parse_space, trial_config
    space = parse_space(["lr=loguniform:1e-4:1e-2", "dropout=uniform:0:0.5", "hidden=choice:128,256"], "mlp")
    assert [(p.name, p.target) for p in space] == [("lr", "config"), ("dropout", "model"), ("hidden", "model")]
    cfg = trial_config(tiny_base(), {"lr": 0.005, "dropout": 0.25, "hidden": 256}, space)
    assert cfg.lr == 0.005 and cfg.model_params == {"hidden": 256, "dropout": 0.25}


def test_a_choice_of_layer_stacks_builds_each_stack():
    """512x512 is one value among the commas: the registered mlp's 1024x1024 can be in a search space."""
    from digitlab.models import create_model
    from digitlab.sweep import parse_space
    hidden, = parse_space(["hidden=choice:256,512x512,1024x1024"], "mlp")
    assert hidden.choices == (256, "512x512", "1024x1024")
    dense = [layer.units for layer in create_model("mlp", hidden="1024x1024").layers if hasattr(layer, "units")]
    assert dense == [1024, 1024, 10]


def test_space_file_and_cli_error(tmp_path, capsys):
    from digitlab.cli import main
    from digitlab.sweep import load_space_file
    good = tmp_path / "space.toml"
    good.write_text('[params]\nlr = "loguniform:1e-4:1e-2"\n[fixed]\nepochs = 2\n')
    space, fixed = load_space_file(good, "mlp")
    assert [p.kind for p in space] == ["loguniform"] and fixed == {"epochs": 2}
    assert main(["sweep", "--model", "fastcnn", "--param", "hidden=choice:1,2", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "unknown search parameter 'hidden' for model 'fastcnn'" in err and "widths" in err
    assert not (tmp_path / "s").exists()


def test_a_sweep_never_chooses_by_test(tmp_path):
    from digitlab.sweep import run_sweep
    sweep = make_sweep(tmp_path / "s", ["lr=loguniform:1e-4:1e-2"])
    from dataclasses import replace
    with pytest.raises(ConfigError, match="never test"):
        run_sweep(replace(sweep, base=replace(sweep.base, val="test")))


# ---------------------------------------------------------------- studies

def trials_of(sweep):
    from digitlab.sweep import open_study
    return open_study(sweep).get_trials()


@pytest.mark.slow  # two fresh interpreters import Keras and JAX: ~20 s on 2 idle cores
def test_two_workers_share_one_sqlite_study(tmp_path, mnist):
    """3 trials, 2 worker processes: each trial is recorded once, each in its own completed run folder."""
    from digitlab.runs import Run
    from digitlab.sweep import finish, remaining, run_sweep
    sweep = make_sweep(tmp_path / "sweep", ["lr=loguniform:1e-3:1e-2", "dropout=uniform:0:0.3"])
    assert run_sweep(sweep, jobs=2, timeout=300) == 3
    trials = trials_of(sweep)
    assert sorted(t.number for t in trials) == [0, 1, 2]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    folders = sorted((sweep.folder / "trials").iterdir())
    assert [f.name for f in folders] == ["trial-0000", "trial-0001", "trial-0002"]
    for t in trials:
        run = Run(sweep.folder / t.user_attrs["run"])
        assert run.state.status == "completed"
        assert run.config.lr == pytest.approx(t.params["lr"])
        assert t.value == max(r.val_accuracy for r in run.history)  # the objective: validation, not test
        assert run.metrics is None  # no trial is scored on test
    assert remaining(sweep) == 0

    result = finish(sweep)
    best = max(trials, key=lambda t: t.value)
    assert result.best.number == best.number
    best_run = Run(sweep.folder / best.user_attrs["run"])
    assert result.test_accuracy == best_run.metrics.test_accuracy  # scored once, at the end
    assert sum(Run(f).metrics is not None for f in folders) == 1
    board = (sweep.folder / "leaderboard.md").read_text()
    assert board.count("| complete |") == 3 and f"trial {best.number}," in board
    assert (sweep.folder / "leaderboard.html").read_text().count("<tr>") == 4
    assert (sweep.folder / "history.png").stat().st_size > 1000
    assert (sweep.folder / "importances.png").exists()
    assert (sweep.folder / "best.json").exists()


class InterruptSecondTrial:
    """Stands in for the pruning callback: Ctrl-C during trial 1."""

    def __new__(cls, trial):
        import keras

        class Interrupt(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if trial.number == 1:
                    raise KeyboardInterrupt
        return Interrupt()


def test_ctrl_c_stops_cleanly_and_rerunning_resumes(tmp_path, mnist, monkeypatch):
    from digitlab import sweep as sweep_mod
    from digitlab.runs import Run
    sweep = make_sweep(tmp_path / "sweep", ["lr=loguniform:1e-3:1e-2"], trials=2)
    monkeypatch.setattr(sweep_mod, "PruningCallback", InterruptSecondTrial)
    with pytest.raises(KeyboardInterrupt):
        sweep_mod.run_sweep(sweep)
    trials = trials_of(sweep)
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL"]
    assert trials[1].user_attrs["error"] == sweep_mod.INTERRUPTED
    assert Run(sweep.folder / "trials" / "trial-0001").state.status == "interrupted"
    assert sweep_mod.remaining(sweep) == 1  # the interrupted trial does not count

    monkeypatch.undo()
    assert sweep_mod.run_sweep(sweep) == 1
    trials = trials_of(sweep)
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert Run(sweep.folder / "trials" / "trial-0002").state.status == "completed"
    assert sweep_mod.run_sweep(sweep) == 0  # done: the same command again starts nothing
    assert len(trials_of(sweep)) == 3


def test_joining_a_study_with_other_settings_is_refused(tmp_path):
    from dataclasses import replace

    from digitlab.sweep import check_same_study, parse_space
    sweep = make_sweep(tmp_path / "sweep", ["lr=loguniform:1e-3:1e-2"], trials=1)
    check_same_study(sweep)  # the first start records the settings
    check_same_study(replace(sweep, trials=5))  # a bigger budget is the same study
    with pytest.raises(ConfigError, match="was started with another base configuration"):
        check_same_study(replace(sweep, base=replace(sweep.base, epochs=2)))
    with pytest.raises(ConfigError, match="was started with another search space"):
        check_same_study(replace(sweep, space=parse_space(["lr=loguniform:1e-4:1e-2"], "mlp")))


def test_failed_trial_is_recorded_and_the_sweep_goes_on(tmp_path, mnist):
    from digitlab.runs import Run
    from digitlab.sweep import finish, open_study, run_sweep
    sweep = make_sweep(tmp_path / "sweep", ["activation=choice:relu,bogus"], trials=2)
    open_study(sweep).enqueue_trial({"activation": "bogus"})  # the builder refuses it
    open_study(sweep).enqueue_trial({"activation": "relu"})
    run_sweep(sweep)
    first, second = trials_of(sweep)
    assert first.state.name == "FAIL" and "unknown activation 'bogus'" in first.user_attrs["error"]
    assert Run(sweep.folder / first.user_attrs["run"]).state.status == "failed"
    assert second.state.name == "COMPLETE"
    finish(sweep, evaluate_best=False)
    assert "unknown activation" in (sweep.folder / "leaderboard.md").read_text()


def test_pruning_callback_stops_the_trial_and_marks_the_run(tmp_path, mnist):
    from digitlab.runs import Run
    from digitlab.sweep import PruningCallback, objective, open_study
    sweep = make_sweep(tmp_path / "sweep", ["lr=loguniform:1e-3:1e-2"], trials=1)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned, match="pruned at epoch 1"):
        PruningCallback(trial).on_epoch_end(0, {"val_accuracy": 0.5})
    trial = study.ask()  # a whole trial: train() stops at the callback, the run says "pruned"
    with pytest.raises(optuna.TrialPruned):
        objective(sweep, mnist)(trial)
    state = Run(sweep.folder / "trials" / f"trial-{trial.number:04d}").state
    assert state.status == "pruned" and "pruned at epoch 1" in state.error
    assert open_study(sweep).get_trials() == []  # this study was not touched
