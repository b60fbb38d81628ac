"""The CLI in-process: exit codes and what it prints."""
from __future__ import annotations

import subprocess
import sys

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


def test_evaluate_rewrites_the_report(trained_run, capsys):
    (trained_run.path / "report.html").unlink()
    assert main(["evaluate", str(trained_run.path)]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert (trained_run.path / "report.html").exists()


def test_python_dash_m_works():
    proc = subprocess.run([sys.executable, "-m", "digitlab", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "train" in proc.stdout
