"""Issue 15, the command line, training and data: each probe that broke digitlab, kept as a bounded test.

D7 what `predict` reads, D8 non-finite numbers, D9 --out, D10 the run lock, D11 stale temporaries,
D12 unloadable models, D13 broken caches, D15 file modes, --val and a run killed while evaluating;
the durability of atomic writes; and the image decoder under fuzzed bytes. `kill -9` is in
test_crash.py.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from digitlab.cli import main
from digitlab.config import TrainConfig
from digitlab.errors import ConfigError, InputImageError, RunError, TrainingError
from digitlab.predictor import Predictor

TINY = ["--train-size", "500", "--val", "100", "--epochs", "1", "--batch-size", "64", "--quiet", "--no-export"]


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def within(seconds: float, fn, *args):
    """fn(*args), failing the test if it takes longer than `seconds` (a hang is the bug being tested)."""
    box = {}

    def target():
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def copy_run(run, dest: Path) -> Path:
    shutil.copytree(run.path, dest)
    return dest


def png_of(digit: np.ndarray) -> bytes:
    """An MNIST digit as a user's file: dark ink on white, enlarged."""
    buf = io.BytesIO()
    Image.fromarray(255 - digit).resize((84, 84), Image.Resampling.BICUBIC).save(buf, format="PNG")
    return buf.getvalue()


FLAT = Predictor(lambda x: np.full((len(x), 10), 0.1, np.float32), name="flat", runtime="numpy")


# ---------------------------------------------------------------- D7: what predict reads

@pytest.fixture
def odd_folder(tmp_path, mnist):
    d = tmp_path / "scans"
    d.mkdir()
    (d / "a_seven.png").write_bytes(png_of(mnist.x_test[0]))
    os.mkfifo(d / "b_fifo.png")
    (d / "c_broken.png").symlink_to(tmp_path / "nowhere.png")
    (d / "d_loop.png").symlink_to(d / "d_loop.png")
    (d / "e_zero.png").symlink_to("/dev/zero")
    (d / "f_sub").mkdir()
    (d / "f_sub" / "x.png").write_bytes(png_of(mnist.x_test[1]))
    (d / "g_empty").mkdir()
    (d / "h_pipe").symlink_to(d / "b_fifo.png")  # no image suffix: a special entry is reported whatever its name
    (d / "notes.txt").write_text("not an input: passed over")
    (d / ".a_seven.png.abcd1234.png").write_bytes(b"half-written temporary")
    return d


def test_predict_reports_each_special_entry_of_a_folder_and_never_blocks(odd_folder):
    tracemalloc.start()
    try:
        results = within(20, predict_paths_of, FLAT, [odd_folder])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    errors = {Path(r.path).name: r.error for r in results}
    assert list(errors) == ["a_seven.png", "b_fifo.png", "c_broken.png", "d_loop.png", "e_zero.png", "f_sub",
                            "g_empty", "h_pipe"]
    assert errors["a_seven.png"] is None
    assert "FIFO" in errors["b_fifo.png"] and "FIFO" in errors["h_pipe"]
    assert "broken symbolic link" in errors["c_broken.png"] and "nowhere.png" in errors["c_broken.png"]
    assert "symbolic link loop" in errors["d_loop.png"]
    assert "device" in errors["e_zero.png"]
    assert "subfolder" in errors["f_sub"] and "no images" in errors["g_empty"]
    assert peak < 30 * 2**20, f"reading the folder allocated {peak / 2**20:.0f} MiB"


def predict_paths_of(predictor, paths):
    from digitlab.prediction import predict_paths
    return predict_paths(predictor, paths)


def test_files_named_explicitly_are_refused_the_same_way(odd_folder):
    for name, words in [("b_fifo.png", "FIFO"), ("e_zero.png", "device"), ("d_loop.png", "loop")]:
        result, = within(10, predict_paths_of, FLAT, [odd_folder / name])
        assert words in result.error
    result, = within(10, predict_paths_of, FLAT, ["/dev/zero"])
    assert "device" in result.error
    fifo_npy = odd_folder / "digits.npy"
    os.mkfifo(fifo_npy)
    result, = within(10, predict_paths_of, FLAT, [fifo_npy])
    assert "FIFO" in result.error


def test_the_byte_limit_holds_whatever_size_the_file_reports():
    from digitlab.preprocessing import ImageTooLargeError, read_file_bytes
    assert os.stat("/proc/self/status").st_size == 0  # a regular file that reports no size
    with pytest.raises(ImageTooLargeError, match="over the limit"):
        read_file_bytes("/proc/self/status", 64)
    assert read_file_bytes("/proc/self/status", 1 << 20).startswith(b"Name:")


def test_cli_predict_on_a_fifo_ends_with_a_clear_error(trained_run, odd_folder, capsys):
    code, out, err = within(60, cli, capsys, "predict", trained_run.path, odd_folder / "b_fifo.png",
                            odd_folder / "a_seven.png")
    assert code == 1 and "b_fifo.png: ERROR this is a FIFO" in err and "a_seven.png: digit" in out


# ---------------------------------------------------------------- D8: NaN and infinity

def _float_flags():
    from digitlab.cli.train import GROUPS, MODEL_FLAGS
    flags = [(flag, "seed-ann") for group in GROUPS.values() for flag, _, kind, _ in group if kind is float]
    return flags + [(flag, "mlp") for flag, _, parse, _ in MODEL_FLAGS if parse in (float, None)]


@pytest.mark.parametrize("flag, model", _float_flags())
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_every_float_option_refuses_non_finite_numbers(flag, model, value, tmp_path, capsys):
    code, _, err = cli(capsys, "train", "--model", model, f"{flag}={value}", "--out", tmp_path / "run",
                       "--runs-root", tmp_path / "runs")
    assert code == 2 and "must be a finite number" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("param", ["l2=NaN", "l2=Infinity", "l2=-Infinity", "dropout=[0.1, NaN]"])
def test_param_refuses_non_finite_json(param, tmp_path, capsys):
    code, _, err = cli(capsys, "train", "--model", "mlp", "--param", param, "--out", tmp_path / "run")
    assert code == 2 and "must be a finite number" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_library_refuses_non_finite_settings_before_any_folder(tmp_path, mnist):
    from digitlab.training import train
    for cfg in (TrainConfig(lr=math.nan), TrainConfig(aug_rotate=math.inf),
                TrainConfig(model="mlp", model_params={"l2": math.nan}),
                TrainConfig(model="mlp", model_params={"dropout": [0.1, math.inf]})):
        with pytest.raises(ConfigError, match="finite"):
            train(cfg, run_dir=tmp_path / "run", dataset=mnist, verbose=0)
    assert not (tmp_path / "run").exists()


def test_json_files_are_strict(tmp_path):
    from digitlab.atomic import write_json_atomic
    with pytest.raises(ValueError, match=r"lr = nan"):
        write_json_atomic(tmp_path / "config.json", {"model": "x", "opt": {"lr": np.float32("nan")}})
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary


def _poison_at(epoch: int, batch: int | None):
    """A Keras callback that sets the output layer's weights to NaN before `batch` of `epoch` (0-based), or
    at the end of the epoch (batch None, after its losses): what a diverging run does to itself, at a
    moment the test chooses."""
    import keras

    class Poison(keras.callbacks.Callback):
        def on_epoch_begin(self, e, logs=None):
            self.epoch = e

        def on_train_batch_begin(self, b, logs=None):
            if (self.epoch, b) == (epoch, batch):
                self.poison()

        def on_epoch_end(self, e, logs=None):
            if (e, batch) == (epoch, None):
                self.poison()

        def poison(self):
            w = self.model.trainable_variables[-2]
            w.assign(np.full(w.shape, np.nan, dtype="float32"))

    return Poison()


@pytest.mark.parametrize("batch, words", [
    (3, r"the loss became nan at batch 4 of epoch 2"),  # stopped at the batch, not at the end of the epoch
    (None, r"the weights .* became non-finite in epoch 2"),  # NaN weights whose losses were finite are caught too
])
def test_a_diverging_run_stops_at_once_and_is_marked_failed(tmp_path, mnist, batch, words):
    from digitlab.runs import open_run
    from digitlab.training import resume, train
    cfg = TrainConfig(model="seed-ann", epochs=3, train_size=1280, val="200", batch_size=64)  # 20 batches an epoch
    with pytest.raises(TrainingError, match=words):
        train(cfg, run_dir=tmp_path / "run", dataset=mnist, verbose=0, callbacks=[_poison_at(1, batch)])
    run = open_run(tmp_path / "run")
    assert (run.state.status, run.state.epochs_completed) == ("failed", 1)
    assert "diverged" in run.state.error and len(run.history) == 1
    for name in ("config.json", "state.json", "data.json", "environment.json"):
        json.loads((run.path / name).read_text())  # strict JSON
    proba = Predictor.from_run(run).predict_proba(mnist.x_test[:50] / np.float32(255))
    assert np.isfinite(proba).all()  # model.keras stays the last finite epoch's
    with pytest.raises(RunError, match="failed"):
        resume(run.path, dataset=mnist, verbose=0)


def test_cli_a_huge_learning_rate_fails_the_run(tmp_path, capsys):
    code, _, err = cli(capsys, "train", "--lr", "1e30", "--out", tmp_path / "run", *TINY)
    assert code == 1 and "diverged" in err and "Traceback" not in err
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["status"] == "failed" and "diverged" in state["error"]
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_ensemble_refuses_a_failed_or_non_finite_member(trained_run, tmp_path, capsys):
    from digitlab.runs import Run
    good, failed, nan = (copy_run(trained_run, tmp_path / n) for n in ("good", "failed", "nan"))
    Run(failed).write_state(dataclasses.replace(Run(failed).state, status="failed", error="the loss became nan"))
    metrics = json.loads((nan / "metrics.json").read_text())
    (nan / "metrics.json").write_text(json.dumps({**metrics, "test_loss": math.nan}))  # as an older digitlab wrote
    for bad, words in ((failed, "failed"), (nan, "non-finite")):
        code, _, err = cli(capsys, "ensemble", good, bad, "--out", tmp_path / "ens")
        assert code == 2 and words in err and str(bad) in err
        assert not (tmp_path / "ens").exists()


def test_evaluate_refuses_a_model_with_nan_weights(trained_run, tmp_path, capsys):
    from digitlab.predictor import load_keras_model
    from digitlab.training import save_model
    broken = copy_run(trained_run, tmp_path / "broken")
    model = load_keras_model(broken / "model.keras")
    model.set_weights([np.full(w.shape, np.nan, w.dtype) for w in model.get_weights()])
    save_model(model, broken / "model.keras")
    (broken / "metrics.json").unlink()
    code, _, err = cli(capsys, "evaluate", broken)
    assert code == 2 and "non-finite probabilities" in err
    assert not (broken / "metrics.json").exists()


# ---------------------------------------------------------------- D9: --out

def test_out_refuses_a_folder_with_files_of_the_user(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    code, _, err = cli(capsys, "train", "--out", out, *TINY)
    assert code == 2 and "not empty" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_out_refuses_another_run_and_leaves_it_as_it_was(trained_run, tmp_path, capsys):
    other = copy_run(trained_run, tmp_path / "other")
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    code, _, err = cli(capsys, "train", "--out", other, *TINY)
    assert code == 2 and "seed-ann run, completed" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before


def test_overwrite_replaces_the_run_and_keeps_the_users_files(trained_run, tmp_path, capsys):
    other = copy_run(trained_run, tmp_path / "other")
    (other / "notes.txt").write_text("mine")
    (other / "model.onnx").write_bytes(b"an export of the old model")  # digitlab's: it goes with the old run
    code, out, err = cli(capsys, "train", "--out", other, "--overwrite", *TINY)
    assert code == 0, err
    assert (other / "notes.txt").read_text() == "mine" and not (other / "model.onnx").exists()
    assert json.loads((other / "config.json").read_text())["train_size"] == 500
    assert json.loads((other / "metrics.json").read_text())["test_accuracy"] == pytest.approx(
        float(out.split("test accuracy:")[1].split()[0]), abs=1e-4)


def test_overwrite_never_replaces_a_file_digitlab_did_not_write(tmp_path, capsys):
    out = tmp_path / "site"
    out.mkdir()
    (out / "report.html").write_text("<p>the user's page</p>")
    code, _, err = cli(capsys, "train", "--out", out, "--overwrite", *TINY)
    assert code == 2 and "not written by digitlab" in err
    assert (out / "report.html").read_text() == "<p>the user's page</p>"


def test_ensemble_out_follows_the_same_rule(trained_run, tmp_path, capsys):
    out = tmp_path / "committee"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = cli(capsys, "ensemble", trained_run.path, "--out", out, "--no-export")
    assert code == 2 and "not empty" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_an_overwrite_killed_early_leaves_no_mislabelled_run(trained_run, tmp_path, mnist, capsys):
    import keras

    from digitlab.training import train

    class CtrlC(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raise KeyboardInterrupt

    other = copy_run(trained_run, tmp_path / "other")
    cfg = TrainConfig(model="mlp", model_params={"hidden": [16]}, epochs=1, train_size=500, val="100")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run_dir=other, dataset=mnist, verbose=0, overwrite=True, callbacks=[CtrlC()])
    assert not (other / "model.keras").exists() and not (other / "metrics.json").exists()
    code, _, err = cli(capsys, "evaluate", other)
    assert code == 2 and "has no model.keras" in err


@pytest.mark.parametrize("config_change, resume_words", [
    ({"model": "mlp", "model_params": {"hidden": [16]}}, "does not fit this run's mlp model"),
    ({}, "holds 3 epochs but"),  # same architecture: the epoch count gives it away
])
def test_a_folder_mixing_two_runs_is_refused_cleanly(trained_run, tmp_path, capsys, config_change, resume_words):
    """What a run killed in another run's folder left behind (before --out refused that)."""
    mixed = copy_run(trained_run, tmp_path / "mixed")
    cfg = json.loads((mixed / "config.json").read_text())
    (mixed / "config.json").write_text(json.dumps({**cfg, **config_change}))
    state = json.loads((mixed / "state.json").read_text())
    (mixed / "state.json").write_text(json.dumps({**state, "status": "running", "epochs_completed": 0}))
    code, _, err = cli(capsys, "evaluate", mixed)
    assert code == 2 and "is not this run's model" in err
    code, _, err = cli(capsys, "train", "--resume", mixed, "--quiet")
    assert code == 2 and resume_words in err and "another run's" in err
    assert "Traceback" not in err and "array" not in err


# ---------------------------------------------------------------- D10: one process per run folder

@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of a run folder, as a `digitlab train` does."""
    procs = []

    def hold(folder: Path) -> subprocess.Popen:
        code = "import sys; from digitlab.runs import lock_run; lock = lock_run(sys.argv[1]); lock.__enter__(); " \
               "print('held', flush=True); sys.stdin.read()"
        proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait(10)


def test_a_second_process_gets_the_holders_pid(trained_run, tmp_path, holder, capsys):
    busy = copy_run(trained_run, tmp_path / "busy")
    proc = holder(busy)
    for argv in (["train", "--out", busy, "--overwrite", *TINY], ["evaluate", busy], ["train", "--resume", busy]):
        code, _, err = cli(capsys, *argv)
        assert code == 2 and f"in use by another digitlab process (PID {proc.pid})" in err, argv
    assert (busy / "metrics.json").read_bytes() == (trained_run.path / "metrics.json").read_bytes()
    proc.kill()  # kill -9: the kernel drops the lock; the lock file stays behind, harmless
    proc.wait(10)
    assert (busy / ".digitlab.lock").exists()
    code, _, err = cli(capsys, "evaluate", busy)
    assert code == 0, err
    assert not (busy / ".digitlab.lock").exists()


def _locked_by_someone(folder: Path) -> bool:
    import fcntl
    fd = os.open(folder / ".digitlab.lock", os.O_RDWR)
    try:  # flock locks belong to an open file: this one conflicts with any other, even in this process
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def test_train_holds_the_lock_while_training_and_evaluating(tmp_path, mnist, monkeypatch, capsys):
    import keras

    from digitlab import evaluation
    from digitlab.training import train
    seen = []

    class Check(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if not seen:
                seen.append(("training", _locked_by_someone(tmp_path / "lib")))

    train(TrainConfig(epochs=1, train_size=500, val="100"), run_dir=tmp_path / "lib", dataset=mnist, verbose=0,
          callbacks=[Check()])
    real = evaluation.evaluate_run

    def evaluate_run(run, **kwargs):
        seen.append(("evaluating", _locked_by_someone(run.path)))
        return real(run, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_run", evaluate_run)
    code, _, err = cli(capsys, "train", "--out", tmp_path / "cli", *TINY)
    assert code == 0, err
    assert seen == [("training", True), ("evaluating", True)]
    assert not (tmp_path / "lib" / ".digitlab.lock").exists() and not (tmp_path / "cli" / ".digitlab.lock").exists()


def test_the_lock_nests_in_one_process_and_cleans_up(tmp_path):
    from digitlab.runs import lock_run
    with lock_run(tmp_path / "a" / "run") as path:
        with lock_run(path):
            assert (path / ".digitlab.lock").read_text().strip() == str(os.getpid())
        assert (path / ".digitlab.lock").exists()  # still held by the outer block
    assert not (tmp_path / "a").exists()  # created by the lock, left empty: removed


# ---------------------------------------------------------------- D11 + D15: leftovers of a killed process

def test_evaluate_removes_the_temporaries_of_a_killed_save(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path / "run")
    stale = [run / ".model.keras.k2x9_q0a.keras", run / ".state.json.a1b2c3d4.json"]
    for path in stale:
        path.write_bytes(b"\0" * 1000)
    (run / ".keep-me").write_text("the user's hidden file")
    code, _, err = cli(capsys, "evaluate", run)
    assert code == 0, err
    assert not any(p.exists() for p in stale) and (run / ".keep-me").exists()


def test_resume_of_a_run_killed_while_evaluating_points_to_evaluate(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path / "run")
    (run / "metrics.json").unlink()  # state.json says completed: the kill came during the evaluation
    (run / ".model.keras.zzzzzzzz.keras").write_bytes(b"\0" * 1000)
    code, _, err = cli(capsys, "train", "--resume", run)
    assert code == 2 and f"digitlab evaluate {run}" in err and "nothing to resume" not in err
    assert not (run / ".model.keras.zzzzzzzz.keras").exists()


def test_a_bad_val_leaves_no_folder_and_names_the_flag(tmp_path, capsys):
    for where in (["--out", tmp_path / "out" / "run"], ["--runs-root", tmp_path / "runs"]):
        code, _, err = cli(capsys, "train", "--val", "2.0", *where)
        assert code == 2 and "--val" in err
        assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    from digitlab.atomic import atomic_path, write_text_atomic
    old = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "a.json", "{}")
        with atomic_path(tmp_path / "model.keras") as tmp:
            tmp.write_bytes(b"zip")
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {"a.json": mode, "model.keras": mode}


def test_run_and_cache_files_follow_the_umask(tmp_path, mnist):
    from digitlab.data import Source, load_dataset
    from digitlab.training import train
    arrays = (mnist.x_train, mnist.y_train, mnist.x_test, mnist.y_test)
    old = os.umask(0o022)
    try:
        load_dataset("mnist", cache_dir=tmp_path / "cache", sources=[Source("good", lambda: (arrays, "memory"))])
        run = train(TrainConfig(epochs=1, train_size=500, val="100"), run_dir=tmp_path / "run", dataset=mnist,
                    verbose=0)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [*run.path.iterdir(), tmp_path / "cache" / "mnist.npz"]}
    assert set(modes.values()) == {0o644}, modes


# ---------------------------------------------------------------- D12: one loader, one message

@pytest.fixture
def unloadable(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path / "unloadable")
    (run / "model.keras").write_bytes(b"this is not a zip archive")
    return run


def _one_clear_error(code: int, err: str, run: Path) -> None:
    assert code == 2 and f"cannot load the model {run / 'model.keras'}" in err, err[-2000:]
    assert "not a .keras (zip) archive" in err and "Traceback" not in err and "File not found" not in err


@pytest.mark.parametrize("command", ["evaluate", "ensemble", "predict"])
def test_an_unloadable_model_is_one_clear_error(command, unloadable, trained_run, tmp_path, mnist, capsys):
    argv = {"evaluate": [unloadable], "ensemble": [trained_run.path, unloadable, "--out", tmp_path / "ens"],
            "predict": [unloadable, tmp_path / "x.png"]}[command]
    (tmp_path / "x.png").write_bytes(png_of(mnist.x_test[0]))
    code, _, err = within(120, cli, capsys, command, *argv)
    _one_clear_error(code, err, unloadable)
    assert not (tmp_path / "ens").exists()


def test_serve_an_unloadable_model_is_one_clear_error(unloadable):
    # A process of its own: uvicorn reconfigures logging and exits the interpreter when start-up fails.
    proc = subprocess.run([sys.executable, "-m", "digitlab", "serve", str(unloadable), "--port", "0"],
                          capture_output=True, text=True, timeout=120)
    _one_clear_error(proc.returncode, proc.stderr, unloadable)


# ---------------------------------------------------------------- D13: caches heal

def _good_source(mnist):
    from digitlab.data import Source
    return Source("good", lambda: ((mnist.x_train, mnist.y_train, mnist.x_test, mnist.y_test), "memory"))


def test_a_cache_that_is_a_folder_is_reported_and_passed_over(tmp_path, mnist, caplog):
    from digitlab.data import load_dataset
    from digitlab.errors import DataUnavailableError
    (tmp_path / "mnist.npz").mkdir()
    with pytest.raises(DataUnavailableError, match=r"mnist.npz is a folder, not a cache file"):
        load_dataset("mnist", cache_dir=tmp_path, sources=[])
    ds = load_dataset("mnist", cache_dir=tmp_path, sources=[_good_source(mnist)])
    assert ds.provenance["source"] == "good" and ds.provenance["cache"] is None
    assert "could not write the data cache" in caplog.text
    assert (tmp_path / "mnist.npz").is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["mnist.npz"]


def test_a_corrupt_cache_that_cannot_be_removed_does_not_stop_the_other_sources(tmp_path, mnist, caplog,
                                                                                 monkeypatch):
    from digitlab import data
    cache = tmp_path / "mnist.npz"
    cache.write_bytes(b"PK\3\4 truncated")
    real_unlink = Path.unlink

    # A read-only folder, simulated: root (as CI often runs) writes through chmod 555.
    def read_only_unlink(self, missing_ok=False):
        if self == cache:
            raise PermissionError(13, "Permission denied", str(self))
        return real_unlink(self, missing_ok=missing_ok)

    def read_only_atomic_path(path, suffix=None):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Path, "unlink", read_only_unlink)
    monkeypatch.setattr(data, "atomic_path", read_only_atomic_path)
    with pytest.raises(data.DataUnavailableError, match="could not be removed: Permission denied"):
        data.load_dataset("mnist", cache_dir=tmp_path, sources=[])
    ds = data.load_dataset("mnist", cache_dir=tmp_path, sources=[_good_source(mnist)])
    assert ds.provenance["source"] == "good" and ds.provenance["cache"] is None
    assert "could not write the data cache" in caplog.text and "Permission denied" in caplog.text


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_cache_folder_really(tmp_path, mnist, caplog):
    from digitlab.data import load_dataset
    (tmp_path / "mnist.npz").write_bytes(b"garbage")
    tmp_path.chmod(0o555)
    try:
        ds = load_dataset("mnist", cache_dir=tmp_path, sources=[_good_source(mnist)])
    finally:
        tmp_path.chmod(0o755)
    assert ds.provenance["source"] == "good" and "could not write the data cache" in caplog.text


# ---------------------------------------------------------------- durability

def test_files_are_fsynced_before_the_rename_and_the_folder_after(tmp_path, mnist, monkeypatch):
    from digitlab.training import train
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    run = train(TrainConfig(epochs=2, train_size=500, val="100"), run_dir=tmp_path / "run", dataset=mnist, verbose=0)
    monkeypatch.undo()
    published = [(i, e) for i, e in enumerate(events) if e[0] == "replace" and Path(e[2]).parent == run.path]
    assert {Path(e[2]).name for _, e in published} >= {"model.keras", "state.json", "history.csv", "config.json"}
    for i, (_, src, dst) in published:
        assert ("fsync", src) in events[:i], f"{dst} renamed before its data was flushed"
        assert events[i + 1] == ("fsync", str(run.path)), f"the folder was not flushed after {dst}"


# ---------------------------------------------------------------- decoder fuzzing

def _samples(mnist) -> dict[str, bytes]:
    """Real files of each kind the reader meets, from an MNIST digit: PNG (gray, RGBA, palette,
    interlaced), JPEG (baseline, progressive) and GIF (one frame and animated)."""
    digit = Image.fromarray(255 - mnist.x_test[0]).resize((56, 56))
    out = {}

    def save(name, im, **kw):
        buf = io.BytesIO()
        im.save(buf, **kw)
        out[name] = buf.getvalue()

    save("png-gray", digit, format="PNG")
    rgba = digit.convert("RGBA")
    rgba.putalpha(Image.eval(digit, lambda v: 255 - v))
    save("png-rgba", rgba, format="PNG")
    save("png-palette", digit.convert("P"), format="PNG", interlace=1)
    save("jpeg", digit.convert("RGB"), format="JPEG", quality=90)
    save("jpeg-progressive", digit, format="JPEG", progressive=True)
    save("gif", digit, format="GIF")
    save("gif-animated", digit, format="GIF", save_all=True, append_images=[digit.rotate(10)], duration=50)
    return out


def _decode(data: bytes):
    """The shared reader and normaliser; returns the digit, or None for the project's input error."""
    from digitlab.preprocessing import read_image_bytes, to_mnist
    try:
        x = to_mnist(read_image_bytes(data))
    except InputImageError:
        return None
    assert x.shape == (28, 28) and x.dtype == np.float32 and np.isfinite(x).all() and 0 <= x.min() <= x.max() <= 1
    return x


FUZZ = settings(derandomize=True, max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_are_an_image_or_an_input_error(data):
    _decode(data)


@FUZZ
@given(st.binary(max_size=64))
def test_random_bytes_after_a_real_header_are_an_image_or_an_input_error(tail):
    for magic in (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"RIFF\0\0\0\0WEBP", b"II*\0"):
        _decode(magic + tail)


MUTATION = st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "repeat"]),
                     st.floats(0, 1, exclude_max=True), st.integers(0, 255), st.integers(1, 64))


@pytest.fixture(scope="module")
def samples(mnist):
    return _samples(mnist)


@settings(FUZZ, max_examples=600)
@given(kind=st.sampled_from(["png-gray", "png-rgba", "png-palette", "jpeg", "jpeg-progressive", "gif",
                             "gif-animated"]),
       mutations=st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_real_files_are_an_image_or_an_input_error(samples, kind, mutations):
    data = bytearray(samples[kind])
    for op, where, value, length in mutations:
        i = int(where * len(data)) if data else 0
        if op == "flip" and data:
            data[i] ^= 1 << (value % 8)
        elif op == "set" and data:
            data[i] = value
        elif op == "insert":
            data[i:i] = bytes([value]) * length
        elif op == "delete":
            del data[i:i + length]
        elif op == "truncate":
            del data[i:]
        elif op == "repeat":
            data[i:i] = data[i:i + length]
    _decode(bytes(data))


def test_the_fuzzing_samples_decode_unmutated(samples):
    assert all(_decode(data) is not None for data in samples.values())
