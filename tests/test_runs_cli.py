"""`digitlab runs`: the table of runs under a folder, sorted and filtered, and its --json form.

The run folders are written with digitlab.runs' own writers (no training: the command only reads them).
"""
from __future__ import annotations

import json

import pytest

from digitlab.cli import main
from digitlab.config import TrainConfig
from digitlab.environment import environment_info
from digitlab.runs import DataInfo, EnsembleConfig, EpochRecord, Metrics, Run, RunState


def make_run(path, cfg, status, val_accs, test=None, created="2026-11-30T10:00:00", seconds=10.0):
    run = Run(path)
    path.mkdir(parents=True)
    run.write_config(cfg)
    run.write_data(DataInfo(dataset="mnist", source="cache", sha256="x" * 64, train_images=100, val_images=50))
    run.write_environment({**environment_info(cfg.seed if isinstance(cfg, TrainConfig) else None),
                           "created": created})
    run.write_history([EpochRecord(epoch=i + 1, val_accuracy=v, seconds=1.0) for i, v in enumerate(val_accs)])
    run.write_state(RunState(status=status, epochs_completed=len(val_accs), train_seconds=seconds))
    if test is not None:
        run.write_metrics(Metrics(test_accuracy=test, test_loss=0.1, test_images=10000, test_errors=1, macro_f1=0.9))
    return run


@pytest.fixture
def root(tmp_path):
    make_run(tmp_path / "a-mlp", TrainConfig(model="mlp", lr=0.003, model_params={"hidden": [256]}), "completed",
             [0.95, 0.97, 0.96], test=0.968, created="2026-11-30T10:00:00", seconds=30)
    make_run(tmp_path / "b-seed", TrainConfig(model="seed-ann"), "interrupted", [0.93],
             created="2026-11-30T12:00:00", seconds=5)
    make_run(tmp_path / "group" / "s1", TrainConfig(model="mlp", seed=1), "completed", [0.98], test=0.981,
             created="2026-11-30T11:00:00", seconds=40)
    make_run(tmp_path / "ens", EnsembleConfig(members=["a-mlp", "group/s1"], member_models=["mlp", "mlp"]),
             "completed", [], test=0.985, created="2026-11-30T13:00:00", seconds=70)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    (tmp_path / "not-a-run").mkdir()
    return tmp_path


def rows(capsys, *args):
    assert main(["runs", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_lists_every_run_with_its_figures(root, capsys):
    found = {r["path"]: r for r in rows(capsys, str(root))}
    assert set(found) == {"a-mlp", "b-seed", "group/s1", "ens", "broken"}
    a = found["a-mlp"]
    assert (a["model"], a["state"], a["val_accuracy"], a["test_accuracy"], a["train_seconds"]) == \
        ("mlp", "completed", 0.97, 0.968, 30)  # val: the best epoch's
    assert "lr=0.003" in a["settings"] and "hidden=256" in a["settings"]
    assert found["b-seed"]["test_accuracy"] is None and found["b-seed"]["state"] == "interrupted"
    assert found["ens"]["settings"].startswith("2 members") and found["ens"]["val_accuracy"] is None
    assert found["broken"]["state"] == "unreadable" and "cannot read" in found["broken"]["error"]


def test_sort_and_filter(root, capsys):
    assert [r["path"] for r in rows(capsys, str(root), "--sort", "val")][:3] == ["group/s1", "a-mlp", "b-seed"]
    assert [r["path"] for r in rows(capsys, str(root), "--sort", "test")][:3] == ["ens", "group/s1", "a-mlp"]
    assert [r["path"] for r in rows(capsys, str(root), "--sort", "date")][:4] == ["ens", "b-seed", "group/s1", "a-mlp"]
    assert [r["path"] for r in rows(capsys, str(root), "--sort", "time")][:2] == ["b-seed", "a-mlp"]
    assert [r["path"] for r in rows(capsys, str(root), "--model", "mlp", "--sort", "path")] == ["a-mlp", "group/s1"]
    assert [r["path"] for r in rows(capsys, str(root), "--state", "interrupted")] == ["b-seed"]


def test_table(root, capsys):
    assert main(["runs", str(root), "--model", "mlp", "--sort", "val"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:7] == ["run", "model", "val", "test", "time", "date", "state"]
    assert lines[1].split()[:5] == ["group/s1", "mlp", "98.00%", "98.10%", "40s"]
    assert lines[2].split()[:5] == ["a-mlp", "mlp", "97.00%", "96.80%", "30s"]
    assert len(lines) == 3


def test_missing_root_is_a_clear_error(tmp_path, capsys):
    assert main(["runs", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["runs", str(tmp_path)]) == 0
    assert "no runs under" in capsys.readouterr().out
