"""Training features: schedules, optimisers, label smoothing, augmentation, early stopping, resume, seeds, CLI."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from digitlab.augmentation import (
    PRESETS,
    Augment,
    affine_grid,
    augment_images,
    bilinear_sample,
    gaussian_matrix,
    smooth,
)
from digitlab.config import TrainConfig, apply_overrides, validate
from digitlab.runs import EpochRecord
from digitlab.schedules import ONECYCLE_START, learning_rate_curve, make_learning_rate

TINY = dict(train_size=2000, val="500", batch_size=64)  # ~32 steps per epoch: seconds per run


# ---------------------------------------------------------------- the tutorial stays the tutorial

def test_seed_ann_trains_with_the_tutorials_settings():
    import keras

    from digitlab.cli import build_parser
    from digitlab.cli.train import train_config_from_args
    from digitlab.training import make_loss, make_optimizer
    cfg = train_config_from_args(build_parser().parse_args(["train", "--model", "seed-ann"]))
    assert (cfg.optimizer, cfg.lr, cfg.batch_size, cfg.epochs) == ("adam", 1e-3, 32, 10)
    assert (cfg.schedule, cfg.warmup_epochs, cfg.label_smoothing) == ("constant", 0.0, 0.0)
    assert not any(getattr(cfg, f) for f in ("aug_shift", "aug_rotate", "aug_zoom", "aug_elastic_alpha"))
    assert not cfg.early_stopping and not cfg.save_best
    opt = make_optimizer(cfg, steps=1719)
    assert isinstance(opt, keras.optimizers.Adam) and not isinstance(opt, keras.optimizers.AdamW)
    assert float(np.asarray(opt.learning_rate)) == pytest.approx(1e-3)
    assert make_learning_rate(cfg, 1719) == 1e-3  # a plain float, as in the tutorial: no schedule object
    assert isinstance(make_loss(cfg)[0], keras.losses.SparseCategoricalCrossentropy)


# ---------------------------------------------------------------- schedules

def _sched(**kw):
    return TrainConfig(**{"epochs": 10, "lr": 0.1, **kw})


def test_onecycle_rises_to_the_peak_then_falls_to_zero():
    curve = learning_rate_curve(_sched(schedule="onecycle"), steps_per_epoch=100)  # 1000 steps, 250 rising
    assert len(curve) == 1000
    assert curve[0] == pytest.approx(0.1 * (ONECYCLE_START + (1 - ONECYCLE_START) / 250), rel=1e-4)
    assert curve.max() == pytest.approx(0.1) and int(curve.argmax()) in (249, 250)
    assert np.all(np.diff(curve[:250]) > 0) and np.all(np.diff(curve[250:]) < 0)
    assert curve[-1] == pytest.approx(0.1 / 750, rel=1e-3)  # one step before 0


def test_cosine_step_constant_and_warmup_shapes():
    cos = learning_rate_curve(_sched(schedule="cosine"), 100)
    assert cos[0] == pytest.approx(0.1) and cos[500] == pytest.approx(0.05, rel=1e-3) and cos[-1] < 1e-5
    step = learning_rate_curve(_sched(schedule="step", step_epochs=3, step_gamma=0.5), 100)
    assert (step[299], step[300], step[600], step[999]) == pytest.approx((0.1, 0.05, 0.025, 0.0125))
    warm = learning_rate_curve(_sched(schedule="constant", warmup_epochs=2), 100)
    np.testing.assert_allclose(warm[:200], 0.1 * np.arange(1, 201) / 200, rtol=1e-5)
    assert np.all(warm[200:] == pytest.approx(0.1))
    warm_cos = learning_rate_curve(_sched(schedule="cosine", warmup_epochs=1), 100)
    assert warm_cos[99] == pytest.approx(0.1) and warm_cos[100 + 450] == pytest.approx(0.05, rel=1e-2)


def test_keras_schedule_follows_the_curve_and_survives_save_and_load(tmp_path):
    import keras

    from digitlab.training import build_compiled_model
    cfg = TrainConfig(model="seed-ann", schedule="onecycle", epochs=2, lr=0.01)
    model = build_compiled_model(cfg, steps=5)
    curve = learning_rate_curve(cfg, 5)
    x, y = np.zeros((4, 28, 28), np.float32), np.zeros(4, int)
    for step in range(3):
        assert float(np.asarray(model.optimizer.learning_rate)) == pytest.approx(curve[step], rel=1e-5)
        model.train_on_batch(x, y)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", compile=True)  # needs the registered schedule class
    assert float(np.asarray(again.optimizer.learning_rate)) == pytest.approx(curve[3], rel=1e-5)


# ---------------------------------------------------------------- optimisers and losses

@pytest.mark.parametrize("name, cls", [("adam", "Adam"), ("adamw", "AdamW"), ("sgd", "SGD"), ("rmsprop", "RMSprop")])
def test_each_optimizer_is_built_with_its_settings(name, cls):
    from digitlab.training import ADAMW_WEIGHT_DECAY, make_optimizer
    opt = make_optimizer(TrainConfig(optimizer=name, lr=0.05, momentum=0.8, nesterov=False))
    assert type(opt).__name__ == cls
    if name == "sgd":
        assert (opt.momentum, opt.nesterov) == (0.8, False)
    if name == "adamw":
        assert opt.weight_decay == pytest.approx(ADAMW_WEIGHT_DECAY)
    assert make_optimizer(TrainConfig(optimizer=name, weight_decay=1e-4)).weight_decay == pytest.approx(1e-4)


def test_label_smoothing_matches_the_formula():
    from digitlab.training import make_loss, targets
    cfg = TrainConfig(label_smoothing=0.1)
    loss, _ = make_loss(cfg)
    y = np.array([3, 7])
    proba = np.full((2, 10), 0.05, np.float32)
    proba[0, 3], proba[1, 7] = 0.55, 0.55
    # Independent formula: target = (1 - eps) * one_hot + eps / classes.
    target = 0.9 * np.eye(10)[y] + 0.01
    expected = float(np.mean(-np.sum(target * np.log(proba), axis=1)))
    assert float(loss(targets(y, cfg), proba)) == pytest.approx(expected, rel=1e-5)
    assert targets(y, TrainConfig()) is y  # no smoothing: sparse labels, untouched


@pytest.mark.parametrize("change, match", [
    ({"optimizer": "lbfgs"}, "unknown optimizer"), ({"schedule": "linear"}, "unknown schedule"),
    ({"label_smoothing": 1.0}, "label_smoothing"), ({"aug_zoom": 1.5}, "fraction below 1"),
    ({"warmup_epochs": 10.0}, "warmup_epochs"), ({"early_stopping": 3, "val": "0"}, "no validation set")])
def test_bad_settings_are_refused_with_the_fix(change, match):
    with pytest.raises(ValueError, match=match):
        validate(dataclasses.replace(TrainConfig(), **change))


def test_mixed_precision_computes_in_bfloat16_and_outputs_float32(tmp_path):
    import keras

    from digitlab.predictor import load_keras_model as load_model
    from digitlab.training import build_compiled_model
    model = build_compiled_model(TrainConfig(model="fastcnn", mixed_precision=True))
    assert keras.mixed_precision.global_policy().name == "float32"  # set for the build only
    assert model.get_layer("stage1_conv").compute_dtype == "bfloat16"
    assert model.get_layer("stage1_conv").kernel.dtype == "float32"  # weights stay float32
    x = np.random.default_rng(0).random((8, 28, 28), dtype=np.float32)
    model.train_on_batch(x, np.arange(8))
    proba = np.asarray(model.predict_on_batch(x))
    assert proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    model.save(tmp_path / "m.keras")
    assert load_model(tmp_path / "m.keras").get_layer("stage1_conv").compute_dtype == "bfloat16"


# ---------------------------------------------------------------- augmentation

def _digit(ds_fixture, i=0):
    return ds_fixture.x_train[i:i + 1].astype(np.float32) / 255.0


def test_affine_grid_rotates_and_shifts_like_numpy(mnist):
    img = _digit(mnist)
    ys, xs = affine_grid([90.0], [1.0], [0.0], [0.0])
    np.testing.assert_allclose(bilinear_sample(img, ys, xs)[0], np.rot90(img[0]), atol=1e-5)
    ys, xs = affine_grid([0.0], [1.0], [2.0], [-3.0])  # 2 down, 3 left; zeros come in
    expected = np.zeros_like(img[0])
    expected[2:, :-3] = img[0, :-2, 3:]
    np.testing.assert_allclose(bilinear_sample(img, ys, xs)[0], expected, atol=1e-6)


def test_zoom_scales_about_the_centre(mnist):
    img = _digit(mnist, 1)
    ys, xs = affine_grid([0.0], [0.5], [0.0], [0.0])
    small = bilinear_sample(img, ys, xs)[0]
    rr, cc = np.mgrid[:28, :28] - 13.5

    def spread(a):
        return math.sqrt(float(np.sum(a * (rr ** 2 + cc ** 2)) / np.sum(a)))

    assert spread(small) == pytest.approx(0.5 * spread(img[0]), rel=0.1)


def test_bilinear_sampling_and_smoothing_match_scipy():
    from scipy import ndimage
    rng = np.random.default_rng(0)
    img = rng.random((3, 28, 28), dtype=np.float32)
    ys, xs = rng.uniform(-3, 31, (2, 3, 28, 28)).astype(np.float32)
    ours = bilinear_sample(img, ys, xs)
    ref = np.stack([ndimage.map_coordinates(i, [y, x], order=1, mode="grid-constant") for i, y, x in zip(img, ys, xs)])
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    field = rng.uniform(-1, 1, (2, 28, 28)).astype(np.float32)
    ref = np.stack([ndimage.gaussian_filter(f, 4.0, mode="constant", truncate=3.0) for f in field])
    np.testing.assert_allclose(smooth(field, 4.0), ref, atol=1e-6)
    assert gaussian_matrix(28, 4.0).shape == (28, 28)


def test_augmentation_is_seeded_bounded_and_changes_the_images(mnist):
    x = mnist.x_train[:64]
    aug = Augment(**{k[4:]: v for k, v in PRESETS["elastic"].items()})
    a = augment_images(x, aug, np.random.default_rng([0, 3, 1]))
    b = augment_images(x, aug, np.random.default_rng([0, 3, 1]))
    c = augment_images(x, aug, np.random.default_rng([0, 4, 1]))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1.0 + 1e-6
    clean = x.astype(np.float32) / 255
    assert 0.02 < float(np.mean(np.abs(a - clean))) < 0.3  # moved, not destroyed
    ink = a.reshape(64, -1).sum(1) / clean.reshape(64, -1).sum(1)
    assert np.all((ink > 0.6) & (ink < 1.6))  # zoom changes the ink a little; nothing vanishes
    np.testing.assert_allclose(augment_images(x, Augment(), np.random.default_rng(0)), clean, atol=1e-6)


def test_no_preset_flips_digits():
    # A mirrored digit is another symbol; the toolkit has no flip at all (see digitlab.augmentation).
    assert not any("flip" in k for preset in PRESETS.values() for k in preset)
    assert not any("flip" in f.name for f in dataclasses.fields(Augment))


def test_augmentation_is_training_only_and_the_model_file_stays_plain(tmp_path, mnist):
    from digitlab.predictor import load_keras_model
    from digitlab.training import train
    cfg = TrainConfig(model="seed-ann", epochs=1, **TINY, aug_shift=2, aug_rotate=10, aug_elastic_alpha=30)
    run = train(cfg, run_dir=tmp_path / "r", dataset=mnist, verbose=0)
    names = {type(layer).__name__ for layer in load_keras_model(run.model_path).layers}
    assert names == {"Flatten", "Dense", "Dropout"}


# ---------------------------------------------------------------- early stopping and the best model

def test_stopping_rule_matches_keras_early_stopping():
    from digitlab.scoring import StopDecision
    from digitlab.training import _stopping
    hist = [EpochRecord(epoch=i + 1, val_loss=v) for i, v in enumerate((0.5, 0.4, 0.45, 0.41, 0.39, 0.42, 0.43))]
    cfg = TrainConfig(early_stopping=2)
    assert _stopping(hist[:4], cfg) == StopDecision(best_epoch=2, best_value=0.4, stop=True)
    assert _stopping(hist[:3], cfg).stop is False
    acc = [EpochRecord(epoch=i + 1, val_accuracy=v) for i, v in enumerate((0.9, 0.95, 0.95))]  # equal is not better, as in Keras
    assert _stopping(acc, TrainConfig(early_stopping=1, monitor="val_accuracy")).stop is True


class _SabotageFromEpoch2:
    """A Keras callback that wrecks the classifier at the end of every epoch from the second on."""

    def __new__(cls):
        import keras

        class Sabotage(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.epoch = epoch

            def on_test_begin(self, logs=None):  # before validation, so val_loss sees the damage
                if getattr(self, "epoch", 0) >= 1:
                    kernel = self.model.layers[-1].kernel
                    kernel.assign(-5.0 * np.asarray(kernel))

        return Sabotage()


def test_early_stopping_stops_and_restores_the_best_epoch(tmp_path, mnist):
    from digitlab.evaluation import evaluate_run
    from digitlab.predictor import load_keras_model as load_model
    from digitlab.training import train
    cfg = TrainConfig(model="seed-ann", epochs=6, early_stopping=2, **TINY)
    run = train(cfg, run_dir=tmp_path / "r", dataset=mnist, verbose=0, callbacks=[_SabotageFromEpoch2()])
    evaluate_run(run, dataset=mnist)  # train() no longer evaluates
    state = run.state
    assert state.best_epoch == 1 and state.stopped_early_at_epoch == 3
    assert len(run.history) == 3 and "restore_best" in state.final_model
    final, best = load_model(run.path / "model.keras"), load_model(run.path / "best.keras")
    for a, b in zip(final.get_weights(), best.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert run.metrics.test_accuracy > 0.8  # the good epoch's model, not the wrecked last one
    diag = json.loads((run.path / "diagnostics.json").read_text())["overfitting"]
    assert diag["best_epoch"] == 1 and diag["stopped_at_epoch"] == 3
    assert "Early stopping (patience 2" in (run.path / "report.html").read_text()


# ---------------------------------------------------------------- resume

class _InterruptAfter:
    def __new__(cls, batches: int):
        import keras

        class Interrupt(keras.callbacks.Callback):
            seen = 0

            def on_train_batch_end(self, batch, logs=None):
                type(self).seen += 1
                if type(self).seen == batches:
                    raise KeyboardInterrupt

        return Interrupt()


@pytest.mark.parametrize("model, extra", [
    ("seed-ann", dict(schedule="onecycle", label_smoothing=0.1, aug_shift=2, aug_elastic_alpha=20)),
    ("fastcnn", dict(widths=None))])
def test_resumed_run_ends_where_an_uninterrupted_run_ends(tmp_path, mnist, model, extra):
    """Ctrl-C in epoch 2, resume: same weights and history as never stopping (README: determinism)."""
    import keras

    from digitlab.predictor import load_keras_model as load_model
    from digitlab.training import resume, train
    extra = {k: v for k, v in extra.items() if v is not None}
    cfg = TrainConfig(model=model, epochs=3, **{**TINY, "train_size": 1280}, **extra)  # 20 steps per epoch
    whole = train(cfg, run_dir=tmp_path / "whole", dataset=mnist, verbose=0)
    keras.backend.clear_session()
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run_dir=tmp_path / "cut", dataset=mnist, verbose=0, callbacks=[_InterruptAfter(25)])
    state = json.loads((tmp_path / "cut" / "state.json").read_text())
    assert (state["status"], state["epochs_completed"]) == ("interrupted", 1)
    keras.backend.clear_session()
    resumed = resume(tmp_path / "cut", dataset=mnist, verbose=0)
    assert resumed.state.status == "completed" and resumed.state.resumed[0]["from_epoch"] == 1
    for a, b in zip(load_model(whole.model_path).get_weights(), load_model(resumed.model_path).get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for ra, rb in zip(whole.history, resumed.history):
        assert ra.val_loss == pytest.approx(rb.val_loss, abs=1e-4)


def test_resume_after_a_kill_trusts_the_model_file(tmp_path, mnist):
    """A kill after history.csv was written but before model.keras: the extra history row is dropped."""
    from digitlab.runs import write_history
    from digitlab.training import resume, train
    cfg = TrainConfig(model="seed-ann", epochs=2, **TINY)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run_dir=tmp_path / "r", dataset=mnist, verbose=0, callbacks=[_InterruptAfter(40)])
    path = tmp_path / "r"
    from digitlab.runs import read_history
    history = read_history(path / "history.csv")
    write_history(path / "history.csv", history + [dataclasses.replace(history[0], epoch=2, val_loss=-1.0)])
    state = json.loads((path / "state.json").read_text())
    (path / "state.json").write_text(json.dumps({**state, "status": "running"}))  # a kill never says "interrupted"
    run = resume(path, dataset=mnist, verbose=0)
    assert [int(r.epoch) for r in run.history] == [1, 2]
    assert run.history[1].val_loss > 0


def test_resume_refuses_a_completed_run(trained_run):
    from digitlab.training import resume
    with pytest.raises(ValueError, match="already completed"):
        resume(trained_run.path)


# ---------------------------------------------------------------- seeds

def test_seeds_train_one_run_each_and_summarise(tmp_path, mnist):
    from digitlab.seeds import train_seeds
    cfg = TrainConfig(model="seed-ann", epochs=1, seed=5, **TINY)
    group = train_seeds(cfg, 2, out=tmp_path / "g", dataset=mnist, verbose=0)
    s = group.summary
    assert s["seeds"] == [5, 6] and [r.path.name for r in group.runs] == ["s5", "s6"]
    acc = [r.metrics.test_accuracy for r in group.runs]
    assert s["test_accuracy"] == acc and acc[0] != acc[1]
    assert s["test_accuracy_mean"] == pytest.approx(np.mean(acc))
    assert s["test_accuracy_std"] == pytest.approx(np.std(acc, ddof=1))
    assert json.loads((tmp_path / "g" / "seeds.json").read_text())["summary"] == s


# ---------------------------------------------------------------- short accuracy checks

@pytest.mark.slow
@pytest.mark.parametrize("model, steps_acc", [("fastcnn", 0.98), ("mlp", 0.955)])  # measured 98.6%, 96.5%
def test_a_few_hundred_steps_reach_a_stated_accuracy(tmp_path, mnist, model, steps_acc):
    """300 steps (batch 128, 12,800 images, 3 epochs) of each recipe, on the whole test set."""
    from digitlab.predictor import Predictor
    from digitlab.registry import get_model_info
    from digitlab.training import train
    cfg = apply_overrides(TrainConfig(model=model), get_model_info(model).defaults)
    cfg = dataclasses.replace(cfg, epochs=3, batch_size=128, train_size=12_800, val="0")
    run = train(cfg, run_dir=tmp_path / model, dataset=mnist, verbose=0)
    from digitlab.data import scale
    from digitlab.evaluation import classification_metrics
    proba = Predictor.from_run(run).predict_proba(scale(mnist.x_test))
    acc = classification_metrics(mnist.y_test, proba, mnist.class_names)["test_accuracy"]
    assert steps_acc <= acc < 1.0


# ---------------------------------------------------------------- the command line

def _main(argv):
    from digitlab.cli import main
    return main(argv)


def test_cli_trains_with_model_and_training_flags(tmp_path, capsys):
    out = tmp_path / "run"
    code = _main(["train", "--model", "mlp", "--hidden", "32,16", "--dropout", "0.1,0.2", "--batchnorm",
                  "--l2", "1e-4", "--max-norm", "3", "--activation", "gelu", "--epochs", "1", "--train-size", "2000",
                  "--val", "500", "--optimizer", "sgd", "--lr", "0.05", "--no-nesterov", "--schedule", "cosine",
                  "--warmup-epochs", "0.5", "--label-smoothing", "0.05", "--augment", "affine", "--rotate", "5",
                  "--save-best", "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_params"] == {"hidden": [32, 16], "dropout": [0.1, 0.2], "batchnorm": True, "l2": 1e-4,
                                   "max_norm": 3.0, "activation": "gelu"}
    assert (cfg["optimizer"], cfg["nesterov"], cfg["schedule"], cfg["warmup_epochs"]) == ("sgd", False, "cosine", 0.5)
    assert (cfg["aug_shift"], cfg["aug_rotate"], cfg["aug_zoom"]) == (2.0, 5.0, 0.1)  # preset, then --rotate
    assert (out / "best.keras").exists()
    assert "test accuracy:" in capsys.readouterr().out


def test_cli_resumes_an_interrupted_run(tmp_path, mnist, capsys):
    from digitlab.training import train
    cfg = TrainConfig(model="seed-ann", epochs=2, early_stopping=5, **TINY)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run_dir=tmp_path / "r", dataset=mnist, verbose=0, callbacks=[_InterruptAfter(40)])
    assert _main(["train", "--resume", str(tmp_path / "r"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "test accuracy:" in out
    state = json.loads((tmp_path / "r" / "state.json").read_text())
    assert state["status"] == "completed" and state["epochs_completed"] == 2 and state["best_epoch"] in (1, 2)
    assert _main(["train", "--resume", str(tmp_path / "r")]) == 2  # completed: nothing to resume
    assert "already completed" in capsys.readouterr().err


def test_cli_resume_takes_no_other_settings(tmp_path, capsys):
    assert _main(["train", "--resume", str(tmp_path), "--lr", "0.1"]) == 2
    assert "drop --lr" in capsys.readouterr().err
    assert _main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_cli_rejects_a_parameter_the_model_does_not_take(capsys):
    assert _main(["train", "--model", "lenet5", "--hidden", "64"]) == 2
    assert "no parameter 'hidden'" in capsys.readouterr().err


def test_cli_lists_the_models_with_their_recipes(capsys):
    from digitlab.registry import model_names
    assert _main(["models"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in model_names()) and "schedule=onecycle" in out
