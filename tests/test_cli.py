"""The CLI in-process: exit codes and what it prints."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from digitlab.cli import main


def test_data_command_prints_provenance_and_writes_grid(tmp_path, capsys, mnist):
    out_png = tmp_path / "samples.png"
    assert main(["data", "--out", str(out_png)]) == 0
    out = capsys.readouterr().out
    assert mnist.provenance["sha256"] in out and "5923" in out and "1135" in out
    assert out_png.read_bytes()[:4] == b"\x89PNG"


def test_unknown_model_lists_known_ones(capsys):
    assert main(["train", "--model", "resnet-9000"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'resnet-9000'" in err and "seed-ann" in err


def test_bad_setting_is_a_clear_error(capsys):
    assert main(["train", "--epochs", "ten"]) == 2
    assert "epochs must be of type int" in capsys.readouterr().err


def test_evaluate_rejects_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "no model.keras" in capsys.readouterr().err


def test_evaluate_rewrites_the_report(trained_run, tmp_path, capsys):
    # a copy: evaluating rewrites trust.json, which other tests compare with the session run's as first written
    run = tmp_path / "run"
    shutil.copytree(trained_run.path, run)
    (run / "report.html").unlink()
    assert main(["evaluate", str(run)]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert (run / "report.html").exists()


def test_python_dash_m_works():
    proc = subprocess.run([sys.executable, "-m", "digitlab", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "train" in proc.stdout


# ---------------------------------------------------------------- README claims about the commands

def _digit_png(mnist, index: int, path) -> None:
    """A test digit as a user's file: dark ink on white paper, enlarged."""
    from PIL import Image
    Image.fromarray(255 - mnist.x_test[index]).resize((84, 84), Image.Resampling.BICUBIC).save(path)


def test_predict_reports_an_unreadable_file_and_reads_the_others(trained_run, mnist, tmp_path, capsys):
    """README: an unreadable file gets a clear error for that file, the others are still read, exit status 1."""
    import os
    import shutil
    good, secret = tmp_path / "seven.png", tmp_path / "secret.png"
    _digit_png(mnist, 0, good)  # the first test digit, a 7
    shutil.copy(good, secret)
    secret.chmod(0)
    argv = ["predict", str(trained_run.path), str(good), str(secret)]
    if os.geteuid() == 0:  # root reads any file whatever its mode: run the command without that power
        setpriv = shutil.which("setpriv")
        if not setpriv:
            pytest.skip("setpriv (util-linux) not found: as root a chmod-000 file stays readable")
        proc = subprocess.run([setpriv, "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-m",
                               "digitlab", *argv], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    else:
        code = main(argv)
        out, err = capsys.readouterr()
    assert code == 1, err
    assert f"{secret}: ERROR cannot read the file: Permission denied" in err
    assert out.startswith(f"{good}: digit 7 (p=") and str(secret) not in out


def test_compare_quick_trains_on_ten_thousand_images(tmp_path, capsys):
    """`digitlab compare --quick` (README: "10,000 training images"), on two fast models and 200 test images."""
    assert main(["compare", "--quick", "--models", "knn,kmeans-10", "--set", "kmeans-10.n_init=1",
                 "--test-size", "200", "--quiet", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| knn |" in out and "| kmeans-10 |" in out
    assert re.search(r"leaderboard: .*; total \d+ s", out), "compare prints its total time (the README's figure)"
    board = json.loads((tmp_path / "leaderboard.json").read_text())
    rows = board["rows"]
    assert {r["model"] for r in rows} == {"knn", "kmeans-10"}
    assert all(r["train_images"] == 10_000 and r["test_images"] == 200 for r in rows)


@pytest.mark.network  # Fashion-MNIST comes from Debian (apt-get download) the first time, then from the cache
def test_train_on_fashion_mnist_names_its_classes(tmp_path, capsys):
    from digitlab.data import SPECS
    from digitlab.runs import open_run
    out = tmp_path / "run"
    assert main(["train", "--dataset", "fashion-mnist", "--epochs", "1", "--train-size", "2000", "--val", "0",
                 "--batch-size", "64", "--quiet", "--no-export", "--out", str(out)]) == 0
    assert "training seed-ann on fashion-mnist" in capsys.readouterr().out
    run = open_run(out)
    assert run.data.dataset == "fashion-mnist" and run.data.sha256 == SPECS["fashion-mnist"].content_sha256
    assert run.class_names[9] == "Ankle boot"
    assert 0.6 <= run.metrics.test_accuracy < 0.95  # one epoch on 2,000 images; MNIST would be far easier
    assert "Ankle boot" in (out / "report.html").read_text()
