"""digitlab compare: every model on a small real-MNIST subset, the leaderboard files, re-use of saved
models (and refusal of tampered ones), the confidence interval, and bad arguments failing early."""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil

import numpy as np
import pytest

from digitlab import classic
from digitlab import comparison as cmp
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


@pytest.fixture(scope="module")
def small(tmp_path_factory, mnist):
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
