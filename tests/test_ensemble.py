"""Ensembles: the saved committee averages its members' probabilities and is a run like any other."""
from __future__ import annotations

import json

import numpy as np
import pytest

from digitlab.config import TrainConfig
from digitlab.predictor import Predictor


def _proba(run, x):
    """The model's own probabilities (each run's trust model calibrates them differently: not the point here)."""
    return Predictor.from_run(run).outputs(x).proba


@pytest.fixture(scope="module")
def members(tmp_path_factory, mnist):
    """Two quick seed-ann runs that differ only by seed."""
    from digitlab.training import train
    root = tmp_path_factory.mktemp("members")
    return [train(TrainConfig(model="seed-ann", epochs=1, batch_size=64, train_size=3000, val="500", seed=s),
                  run_dir=root / f"s{s}", dataset=mnist, verbose=0) for s in (0, 1)]


def test_ensemble_probabilities_are_the_mean_of_the_members(tmp_path, mnist, members):
    from digitlab.data import scale
    from digitlab.ensemble import make_ensemble
    from digitlab.runs import open_run
    run = make_ensemble([m.path for m in members], out=tmp_path / "ens", dataset=mnist)
    x = scale(mnist.x_test[:500])
    expected = np.mean([_proba(m, x) for m in members], axis=0)
    again = open_run(tmp_path / "ens")  # loads model.keras in safe mode, like predict and serve
    np.testing.assert_allclose(_proba(again, x), expected, atol=1e-6)
    assert run.metrics.test_accuracy == pytest.approx(
        float(np.mean(_proba(again, scale(mnist.x_test)).argmax(1) == mnist.y_test)))
    cfg = json.loads((tmp_path / "ens" / "config.json").read_text())
    assert cfg["model"] == "ensemble" and cfg["members"] == [str(m.path) for m in members]
    assert (tmp_path / "ens" / "report.html").exists()


def test_tta_averages_over_one_pixel_shifts(tmp_path, mnist, members):
    from digitlab.data import scale
    from digitlab.ensemble import TTA_SHIFTS, make_ensemble
    run = make_ensemble([members[0].path], out=tmp_path / "tta", tta=True, evaluate=False)
    x = scale(mnist.x_test[:200])

    def shift(img, dy, dx):  # independent reference: numpy slicing with zeros coming in
        out = np.zeros_like(img)
        h, w = img.shape[1:]
        out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            img[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
        return out

    expected = np.mean([_proba(members[0], shift(x, dy, dx)) for dy, dx in TTA_SHIFTS], axis=0)
    np.testing.assert_allclose(_proba(run, x), expected, atol=1e-6)


def test_members_of_different_datasets_are_refused(tmp_path, members):
    import shutil

    from digitlab.ensemble import open_members
    from digitlab.errors import RunError
    other = tmp_path / "other"
    shutil.copytree(members[1].path, other)
    data = json.loads((other / "data.json").read_text())
    (other / "data.json").write_text(json.dumps({**data, "dataset": "fashion-mnist", "sha256": "something else"}))
    with pytest.raises(RunError, match="different datasets"):
        open_members([members[0].path, other])
    with pytest.raises(RunError, match="listed twice"):
        open_members([members[0].path, members[0].path])


def test_cli_trains_seeds_then_ensembles_the_group(tmp_path, capsys):
    from digitlab.cli import main
    group = tmp_path / "g"
    assert main(["train", "--model", "seed-ann", "--epochs", "1", "--batch-size", "64", "--train-size", "2000",
                 "--val", "0", "--seeds", "2", "--seed", "3", "--quiet", "--no-export", "--out", str(group)]) == 0
    out = capsys.readouterr().out
    summary = json.loads((group / "seeds.json").read_text())["summary"]
    assert summary["seeds"] == [3, 4] and f"{summary['test_accuracy_mean']:.4f}" in out and "std" in out
    assert main(["ensemble", str(group), "--no-export", "--out", str(tmp_path / "ens")]) == 0  # export: test_export.py
    out = capsys.readouterr().out
    assert "ensemble of 2 runs" in out and "test accuracy:" in out
    assert json.loads((tmp_path / "ens" / "config.json").read_text())["members"] == [str(group / "s3"), str(group / "s4")]
    assert main(["ensemble", str(tmp_path / "missing")]) == 2


def test_cli_ensemble_with_tta(tmp_path, mnist, members, capsys):
    """`digitlab ensemble RUN RUN --tta` (README): one model averaging both members over 1-pixel shifts."""
    from digitlab.cli import main
    from digitlab.data import scale
    from digitlab.ensemble import TTA_SHIFTS
    from digitlab.runs import open_run
    out = tmp_path / "ens"
    assert main(["ensemble", *(str(m.path) for m in members), "--tta", "--no-export", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ensemble of 2 runs with test-time augmentation" in printed and "test accuracy:" in printed
    run = open_run(out)
    assert run.config.tta and sorted(map(tuple, run.config.tta_shifts)) == sorted(map(tuple, TTA_SHIFTS))
    x = scale(mnist.x_test)
    proba = _proba(run, x)  # the saved model, loaded as predict and serve load it
    members_alone = np.mean([_proba(m, x) for m in members], axis=0)
    assert not np.allclose(proba, members_alone, atol=1e-3), "--tta changed nothing"
    assert run.metrics.test_accuracy == pytest.approx(float(np.mean(proba.argmax(1) == mnist.y_test)))
    assert (out / "report.html").exists()
