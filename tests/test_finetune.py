"""Fine-tuning on a user's handwriting (digitlab.finetune, `digitlab finetune`): the generated writer of
bench/finetune.py, tiny settings (seconds)."""
from __future__ import annotations

import numpy as np
import pytest
from bench_support import bench_module

from digitlab.cli import main
from digitlab.errors import ConfigError, DataError
from digitlab.finetune import FinetuneConfig, UserDigits, finetune, stratified_holdout, user_digits
from digitlab.folders import write_digit_folder
from digitlab.predictor import Predictor
from digitlab.runs import open_run
from digitlab.scoring import accuracy


@pytest.fixture(scope="module")
def writer():
    """bench/finetune.py: its generated writer (continental 1s, crossed 7s, open 4s, straight-stemmed 9s)."""
    return bench_module("finetune")


def test_stratified_holdout_keeps_every_label_on_both_sides():
    y = np.array([1] * 8 + [7] * 4 + [9] * 2 + [4])
    train, held = stratified_holdout(y, 0.25, seed=0)
    assert sorted(np.concatenate([train, held])) == list(range(len(y)))
    assert sorted(y[held]) == [1, 1, 7, 9]  # round(0.25 * n) per label, at least one when there are two
    assert sorted(set(y[train])) == [1, 4, 7, 9]


def test_finetune_on_a_writer_improves_them_and_keeps_mnist(trained_run, mnist, writer, tmp_path):
    x_fix, y_fix = writer.writer_digits(writer.AFFECTED, 12, seed=1)
    x_held, y_held = writer.writer_digits(range(10), 8, seed=2)
    before = accuracy(y_held, Predictor.from_run(trained_run, runtime="keras", trust=False).predict_proba(x_held))
    cfg = FinetuneConfig(epochs=3, replay=1500, seed=0)
    new = finetune(trained_run, UserDigits(x_fix, y_fix, "test writer"), tmp_path / "ft", cfg, dataset=mnist)
    s = new.metrics.extra["finetune"]
    after = accuracy(y_held, Predictor.from_run(open_run(new.path), runtime="keras", trust=False)
                     .predict_proba(x_held))
    assert before < 0.95 and after > before + 0.03, (before, after)  # the writer's style is learnt
    assert s["mnist_drop_points"] <= 0.5  # MNIST is not forgotten (tiny settings: a looser bound than the 0.2 goal)
    assert new.metrics.test_accuracy == s["after"]["mnist_test_accuracy"]
    assert (s["user_train"], s["user_held_out"]) == (36, 12) and s["held_out_per_label"] == {
        "1": 3, "4": 3, "7": 3, "9": 3}
    assert s["promoted"] == (not s["not_promoted_because"])
    assert new.state.status == "completed" and len(new.history) == 3 and new.config.lr == cfg.lr
    report = (new.path / "report.html").read_text()
    assert "accuracy on your held-out digits" in report and "MNIST test accuracy" in report


def test_cli_finetunes_from_a_folder_and_says_whether_it_is_promoted(trained_run, writer, tmp_path, capsys):
    x_fix, y_fix = writer.writer_digits((1, 7), 6, seed=3)
    write_digit_folder(tmp_path / "mine", x_fix, y_fix)
    (tmp_path / "mine" / "7" / "junk.png").write_bytes(b"junk")
    code = main(["finetune", str(trained_run.path), "--data", f"folder:{tmp_path / 'mine'}", "--out",
                 str(tmp_path / "new"), "--epochs", "1", "--replay", "500"])
    out = capsys.readouterr().out
    s = open_run(tmp_path / "new").metrics.extra["finetune"]
    assert code == (0 if s["promoted"] else 3)
    assert "skipped: 7/junk.png" in out and "12 (8 trained on, 4 held out, stratified)" in out
    assert ("promoted:" in out) == s["promoted"]


def test_bad_data_specs_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="feedback:DB or folder:PATH"):
        user_digits("mnist")
    with pytest.raises(DataError, match="no feedback database"):
        user_digits(f"feedback:{tmp_path / 'none.sqlite'}")
