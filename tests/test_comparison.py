"""digitlab compare: every model on a small real-MNIST subset, the leaderboard files, re-use of saved
models (and refusal of tampered ones, and of folders this machine did not write), the confidence
interval, and bad arguments failing early."""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import pickle
import shutil
import stat

import numpy as np
import pytest

from digitlab import classic
from digitlab import comparison as cmp
from digitlab.comparison import manifest as manifest_mod
from digitlab.comparison import signing
from digitlab.data import prepare_split
from digitlab.runs import read_metrics

TRAIN, TEST = 2000, 500
# Fewer trees, rounds, restarts and epochs than the real defaults: the suite must stay fast.
SMALL_PARAMS = {"rf": {"n_estimators": 30}, "xgboost": {"n_estimators": 15},
                "kmeans-10": {"n_init": 1}, "kmeans-64": {"n_init": 1}, "kmeans-256": {"n_init": 1}}
SMALL = cmp.CompareConfig(train_size=TRAIN, test_size=TEST, params=SMALL_PARAMS, neural_epochs=2)

# Accuracy on 500 test images after 2,000 training images (measured: logreg 88%, knn 91%, svm 94%,
# rf 91%, xgboost 88%, kmeans-10 55%, kmeans-64 81%, kmeans-256 88%, seed-ann 88%), with room for noise.
GATES = {"logreg": 0.84, "knn": 0.87, "svm": 0.90, "rf": 0.86, "xgboost": 0.83,
         "kmeans-10": 0.45, "kmeans-64": 0.70, "kmeans-256": 0.78, "seed-ann": 0.80}


class Events:
    """A progress callback that records what happened."""

    def __init__(self):
        self.events = []

    def __call__(self, event, **info):
        self.events.append((event, info))

    def stages(self, stage):
        return [info["model"] for event, info in self.events if event == "stage" and info["stage"] == stage]


@pytest.fixture(scope="module", autouse=True)
def state_dir(tmp_path_factory):
    """This machine's signing key lives here for these tests, never in the user's own state folder."""
    path = tmp_path_factory.mktemp("state")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIGITLAB_STATE_DIR", str(path))
        yield path


@pytest.fixture(scope="module")
def small(tmp_path_factory, mnist, state_dir):
    out = tmp_path_factory.mktemp("compare")
    events = Events()
    board = cmp.run_comparison(SMALL, out, dataset=mnist, progress=events)
    return board, out, events


def test_default_models_cover_the_tutorial_table():
    assert set(cmp.expand_models(cmp.DEFAULT_MODELS)) == set(GATES)


@pytest.mark.parametrize("name", list(GATES))
def test_every_model_trains_scores_and_saves(small, name):
    board, out, events = small
    row = next(r for r in board.rows if r.model == name)
    assert GATES[name] <= row.test_accuracy < 1.0
    assert row.train_images == TRAIN and row.test_images == TEST
    assert row.ci95_low < row.test_accuracy < row.ci95_high
    assert row.train_seconds > 0 and row.predict_seconds_per_10k > 0 and row.size_bytes > 0
    folder = out / name
    for artefact in ("report.html", "confusion_matrix.csv", "confusion_matrix.png", "classification_report.txt",
                     "metrics.json"):
        assert (folder / artefact).is_file(), artefact
    manifest = cmp.read_manifest(folder)
    assert classic.sha256_file(folder / manifest.model_file) == manifest.model_sha256
    assert (folder / manifest.model_file).stat().st_size == row.size_bytes
    # The evaluation's own count agrees with the leaderboard.
    assert read_metrics(folder).test_errors == row.test_errors
    assert name in events.stages("train")


def test_leaderboard_files(small):
    board, out, _ = small
    names = [r.model for r in board.rows]
    accs = [r.test_accuracy for r in board.rows]
    assert accs == sorted(accs, reverse=True) and [r.rank for r in board.rows] == list(range(1, len(names) + 1))
    with open(out / "leaderboard.csv") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == cmp.ROW_FIELDS
        assert [r["model"] for r in reader] == names
    md = (out / "leaderboard.md").read_text()
    assert all(f"| {n} |" in md for n in names)
    assert "LeCun" in md and "Machine:" in md and "smoke run" in md  # sources, machine, subset warning
    page = (out / "leaderboard.html").read_text()
    assert "data:image/png;base64," in page and all(f"href='{n}/report.html'" in page for n in names)
    assert (out / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "leaderboard.json").read_text())["meta"]["test_images"] == TEST


def test_published_figures_are_attached_to_their_models(small):
    rows = {r.model: r for r in small[0].rows}
    assert rows["svm"].published_accuracy == pytest.approx(0.986)
    assert rows["knn"].published_accuracy == pytest.approx(0.9691)
    assert rows["rf"].published_accuracy is None  # not in LeCun's table: the notes say so
    assert any("random forest" in n for n in cmp.notes(small[0]))


def test_kmeans_reports_clustering_scores(small):
    rows = {r.model: r for r in small[0].rows}
    for k in ("kmeans-10", "kmeans-64", "kmeans-256"):
        assert 0 < rows[k].ari_test < 1 and 0 < rows[k].nmi_test < 1
        assert rows[k].kind == "clustering"
    # More clusters capture more writing styles: majority-vote accuracy rises with k.
    assert rows["kmeans-10"].test_accuracy < rows["kmeans-64"].test_accuracy < rows["kmeans-256"].test_accuracy


def test_svm_scores_argmax_is_its_prediction(small, mnist):
    _, out, _ = small
    manifest = cmp.read_manifest(out / "svm")
    model = classic.load_classic(out / "svm" / manifest.model_file, manifest.model_sha256)
    x = classic.flatten(mnist.x_test[:300] / 255.0)
    proba = classic.predict_proba(model, x)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert np.mean(proba.argmax(axis=1) == model.predict(x)) >= 0.99  # ties may break differently


def test_second_run_only_reevaluates(small, mnist, tmp_path):
    board, first_out, _ = small
    out = tmp_path / "copy"  # a copy, so that the other tests' leaderboard stays as written
    shutil.copytree(first_out, out)
    events = Events()
    # One model per saved format (joblib, XGBoost's own, .keras) keeps this quick; the rule is the same.
    again_models = ("logreg", "kmeans-10", "xgboost", "seed-ann")
    cfg = dataclasses.replace(SMALL, models=again_models,
                              params={k: v for k, v in SMALL_PARAMS.items() if k in again_models})
    again = cmp.run_comparison(cfg, out, dataset=mnist, progress=events)
    assert events.stages("train") == []
    assert sorted(events.stages("load")) == sorted(again_models)
    before = {r.model: r for r in board.rows}
    for r in again.rows:
        assert r.reused is True
        assert r.test_accuracy == before[r.model].test_accuracy
        assert r.train_seconds == before[r.model].train_seconds  # as recorded at training time


def test_tampered_model_is_refused_before_anything_trains(tmp_path, mnist):
    cfg = cmp.CompareConfig(models=("logreg", "knn"), train_size=300, test_size=100)
    cmp.run_comparison(cfg, tmp_path, dataset=mnist)
    with open(tmp_path / "knn" / classic.JOBLIB_FILE, "ab") as f:
        f.write(b"\0")
    events = Events()
    with pytest.raises(classic.ModelIntegrityError, match="--retrain"):
        cmp.run_comparison(cfg, tmp_path, dataset=mnist, progress=events)
    assert events.events == []  # refused at planning time: nothing trained, nothing loaded
    # --retrain replaces it; a changed setting retrains that model alone.
    events = Events()
    cmp.run_comparison(cmp.CompareConfig(models=("knn",), train_size=300, test_size=100, retrain=True), tmp_path,
                       dataset=mnist, progress=events)
    assert events.stages("train") == ["knn"]
    events = Events()
    cmp.run_comparison(cmp.CompareConfig(models=("logreg", "knn"), train_size=300, test_size=100,
                                         params={"logreg": {"C": 0.5}}), tmp_path, dataset=mnist, progress=events)
    assert events.stages("train") == ["logreg"] and events.stages("load") == ["knn"]


def test_load_classic_checks_the_hash(tmp_path):
    model = classic.build_classic("logreg").fit(np.eye(10, 784), np.arange(10))
    path, sha = classic.save_classic(model, tmp_path)
    assert classic.load_classic(path, sha).predict(np.eye(10, 784)).tolist() == list(range(10))
    with pytest.raises(classic.ModelIntegrityError):
        classic.load_classic(path, "0" * 64)


def test_classic_and_networks_get_the_same_training_images(mnist):
    cfg = cmp.CompareConfig()
    x, y = cmp.training_data(mnist, 3000, seed=0)
    split = prepare_split(cmp.neural_train_config(cfg, "seed-ann", 3000, len(mnist.y_train)), mnist)
    np.testing.assert_array_equal(y, split.y_train)
    np.testing.assert_array_equal(x, split.x_train / np.float32(255.0))


def test_max_train_caps_one_model(tmp_path, mnist):
    cfg = cmp.CompareConfig(models=("logreg", "knn"), train_size=600, max_train={"knn": 200})
    plans = {p.name: p for p in cmp.plan_comparison(cfg, tmp_path, mnist)}
    assert plans["logreg"].train_images == 600 and plans["knn"].train_images == 200


@pytest.mark.parametrize("k, n", [(9800, 10000), (0, 50), (50, 50), (1, 3)])
def test_wilson_interval_solves_the_score_equation(k, n):
    # Independent check: Wilson's bounds are the p0 at which the score test sits exactly at z,
    # (k/n - p0)^2 = z^2 p0 (1 - p0) / n; at k=0 (k=n) the lower (upper) bound is 0 (1).
    low, high = cmp.wilson_interval(k, n)
    p = k / n
    for p0 in (low, high):
        if p0 in (0.0, 1.0):
            assert (p0 == 0.0 and k == 0) or (p0 == 1.0 and k == n)
            continue
        assert (p - p0) ** 2 == pytest.approx(cmp.Z95 ** 2 * p0 * (1 - p0) / n, rel=1e-9)
    assert low <= p <= high
    if (k, n) == (9800, 10000):
        assert (low, high) == pytest.approx((0.97707, 0.98257), abs=1e-5)  # worked by hand
    assert not math.isnan(low + high)


@pytest.mark.parametrize("argv, message", [
    (["--models", "logreg,nosuchmodel"], "unknown model 'nosuchmodel'"),
    (["--train-size", "0"], "--train-size must be at least 1"),
    (["--max-train", "svm=0"], "svm=0: a model needs at least 1 training image"),
    (["--max-train", "svm"], "expected NAME=VALUE"),
    (["--models", "knn", "--max-train", "svm=100"], "svm is not among the models compared"),
    (["--set", "svm.degree=3"], "svm has no setting 'degree'"),
    (["--models", "kmeans-4"], "at least 10 clusters"),
    (["--quick", "--train-size", "500"], "not allowed with argument --quick"),
    (["--epochs", "0"], "--epochs must be at least 1"),
])
def test_bad_arguments_fail_before_anything_trains(tmp_path, capsys, argv, message):
    from digitlab.cli import main
    out = tmp_path / "out"
    assert main(["compare", *argv, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_check_config_runs_once_per_compare(tmp_path, mnist, monkeypatch):
    from digitlab.cli import main
    from digitlab.comparison import plan, running
    calls = []
    original = plan.check_config

    def counting(cfg, out_dir):
        calls.append(out_dir)
        return original(cfg, out_dir)

    for module in (cmp, plan, running):  # every name it is called by
        monkeypatch.setattr(module, "check_config", counting)
    cmp.run_comparison(cmp.CompareConfig(models=("logreg",), train_size=300, test_size=100), tmp_path / "lib",
                       dataset=mnist)
    assert len(calls) == 1
    assert main(["compare", "--models", "logreg", "--train-size", "300", "--test-size", "100", "--quiet",
                 "--out", str(tmp_path / "cli")]) == 0
    assert len(calls) == 2


def test_unwritable_output_folder_is_an_error(tmp_path, capsys):
    from digitlab.cli import main
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["compare", "--models", "logreg", "--out", str(blocker / "out")]) == 2
    assert "cannot write to the output folder" in capsys.readouterr().err


def test_cli_small_run_prints_the_leaderboard(tmp_path, capsys):
    from digitlab.cli import main
    rc = main(["compare", "--models", "logreg,kmeans-10", "--train-size", "500", "--test-size", "200",
               "--set", "kmeans-10.n_init=1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "[1/2] logreg" in out and "| 1 |" in out and "leaderboard.html" in out
    assert (tmp_path / "leaderboard.md").is_file()


# ---------------------------------------------------------------- folders this machine did not write

class MarkerPickle:
    """Unpickling this makes a folder at `marker`: the probe's proof that a saved model's code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


TINY = cmp.CompareConfig(models=("logreg",), train_size=300, test_size=100)


def plant_foreign_model(folder, marker, mnist, how, monkeypatch, tmp_path):
    """A logreg folder as the probe made it: a pickle that runs code, and a manifest with its true SHA-256
    and the fit key this comparison will look for, so only the signature stands between it and joblib."""
    folder.mkdir(parents=True)
    (folder / classic.JOBLIB_FILE).write_bytes(pickle.dumps(MarkerPickle(marker)))
    sha = classic.sha256_file(folder / classic.JOBLIB_FILE)
    plan, = cmp.plan_comparison(TINY, folder.parent, mnist)
    claim = cmp.Manifest("logreg", "classic", classic.JOBLIB_FILE, sha, 1.0, plan.fit_key)
    if how == "unsigned":  # hand-made, or from a digitlab before manifests were signed
        (folder / cmp.MANIFEST).write_text(json.dumps(dataclasses.asdict(claim)))
    elif how == "signed-elsewhere":  # copied from another machine (another key) with its manifest
        with monkeypatch.context() as mp:
            mp.setenv("DIGITLAB_STATE_DIR", str(tmp_path / "other-machine"))
            manifest_mod.write_manifest(folder, claim)
    else:  # "edited": a manifest this machine signed, its hash then changed to the planted file's
        manifest_mod.write_manifest(folder, dataclasses.replace(claim, model_sha256="0" * 64))
        fields = json.loads((folder / cmp.MANIFEST).read_text())
        (folder / cmp.MANIFEST).write_text(json.dumps({**fields, "model_sha256": sha}))
    return sha


def test_the_planted_pickle_is_a_live_probe(tmp_path):
    # Control for the tests below: loaded the way a saved model is, the planted file does run its code.
    import joblib
    marker = tmp_path / "ran"
    path = tmp_path / classic.JOBLIB_FILE
    path.write_bytes(pickle.dumps(MarkerPickle(marker)))
    joblib.load(path)
    assert marker.is_dir()


@pytest.mark.parametrize("how", ["unsigned", "edited"])  # "signed-elsewhere": through the CLI, below
def test_foreign_folder_is_retrained_never_unpickled(tmp_path, mnist, monkeypatch, how):
    out, marker = tmp_path / "out", tmp_path / "code-ran"
    planted = plant_foreign_model(out / "logreg", marker, mnist, how, monkeypatch, tmp_path)
    events = Events()
    board = cmp.run_comparison(TINY, out, dataset=mnist, progress=events)
    assert not marker.exists()
    assert events.stages("load") == [] and events.stages("train") == ["logreg"]
    plan, = next(info["plans"] for event, info in events.events if event == "plan")
    assert plan.foreign and not plan.reuse
    assert board.rows[0].reused is False and board.rows[0].test_accuracy > 0.6
    # The planted file is gone, replaced by a model this machine trained and signed (so the next run
    # re-uses it: test_trust_folder_loads_a_copied_folder_and_adopts_it runs that case).
    saved = cmp.read_manifest(out / "logreg")
    assert cmp.signed_here(saved) and saved.model_sha256 != planted
    assert classic.sha256_file(out / "logreg" / classic.JOBLIB_FILE) == saved.model_sha256


def test_cli_says_why_a_foreign_model_is_retrained(tmp_path, mnist, monkeypatch, capsys):
    from digitlab.cli import main
    out, marker = tmp_path / "out", tmp_path / "code-ran"
    planted = plant_foreign_model(out / "logreg", marker, mnist, "signed-elsewhere", monkeypatch, tmp_path)
    assert main(["compare", "--models", "logreg", "--train-size", "300", "--test-size", "100",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "not re-using saved models this machine did not write: logreg" in printed
    assert "--trust-folder" in printed and "logreg: training on 300 images" in printed
    assert not marker.exists()
    assert classic.sha256_file(out / "logreg" / classic.JOBLIB_FILE) != planted


def test_trust_folder_loads_a_copied_folder_and_adopts_it(tmp_path, mnist, monkeypatch):
    out = tmp_path / "out"
    with monkeypatch.context() as mp:  # trained on "another machine" of the user's, with its own key
        mp.setenv("DIGITLAB_STATE_DIR", str(tmp_path / "other-machine"))
        first = cmp.run_comparison(TINY, out, dataset=mnist)
    events = Events()
    cmp.run_comparison(dataclasses.replace(TINY, trust_folder=True), out, dataset=mnist, progress=events)
    plan, = next(info["plans"] for event, info in events.events if event == "plan")
    assert plan.reuse and plan.adopt and not plan.foreign
    assert events.stages("load") == ["logreg"] and events.stages("train") == []
    # Vouched for once, it is this machine's now: re-used without the flag, same model, same score.
    assert cmp.signed_here(cmp.read_manifest(out / "logreg"))
    events = Events()
    again = cmp.run_comparison(TINY, out, dataset=mnist, progress=events)
    assert events.stages("load") == ["logreg"]
    assert again.rows[0].test_accuracy == first.rows[0].test_accuracy


def test_trust_folder_still_refuses_a_changed_model(tmp_path, mnist, monkeypatch):
    out, marker = tmp_path / "out", tmp_path / "code-ran"
    plant_foreign_model(out / "logreg", marker, mnist, "unsigned", monkeypatch, tmp_path)
    with open(out / "logreg" / classic.JOBLIB_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(classic.ModelIntegrityError, match="--retrain"):
        cmp.run_comparison(dataclasses.replace(TINY, trust_folder=True), out, dataset=mnist)
    assert not marker.exists()


def test_signing_key_is_private_and_outside_the_results(tmp_path, monkeypatch):
    monkeypatch.setenv("DIGITLAB_STATE_DIR", str(tmp_path / "state"))
    old_umask = os.umask(0o022)
    try:
        assert signing.verify(b"payload", "hmac-sha256:" + "0" * 64) is False  # no key yet: nothing signed here
        assert not signing.key_path().exists()  # checking never creates it
        signature = signing.sign(b"payload")
    finally:
        os.umask(old_umask)
    key = tmp_path / "state" / signing.KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.stat().st_size == signing.KEY_BYTES
    assert signing.verify(b"payload", signature) and not signing.verify(b"payload!", signature)
    assert signing.sign(b"payload") == signature  # the same key on every later use
    key.chmod(0o644)  # readable by others: anyone could sign a pickle for us to load
    with pytest.raises(signing.SigningKeyError, match="chmod 600"):
        signing.verify(b"payload", signature)


def test_unwritable_state_folder_fails_before_anything_trains(tmp_path, monkeypatch, capsys):
    from digitlab.cli import main
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("DIGITLAB_STATE_DIR", str(blocker / "state"))
    assert main(["compare", "--models", "logreg", "--out", str(tmp_path / "out")]) == 2
    assert "DIGITLAB_STATE_DIR" in capsys.readouterr().err


def test_xgboost_models_load_without_unpickling(tmp_path, monkeypatch):
    import joblib
    model = classic.build_classic("xgboost", overrides={"n_estimators": 2})
    classic.fit_classic(model, np.tile(np.eye(10, 784), (3, 1)), np.tile(np.arange(10), 3))
    path, sha = classic.save_classic(model, tmp_path)
    assert path.name == classic.XGBOOST_FILE

    def no_pickles(*args, **kwargs):
        raise AssertionError("joblib.load called for an XGBoost model")

    monkeypatch.setattr(joblib, "load", no_pickles)
    loaded = classic.load_classic(path, sha)
    np.testing.assert_allclose(classic.predict_proba(loaded, np.eye(10, 784)),
                               classic.predict_proba(model, np.eye(10, 784)), rtol=1e-6)
