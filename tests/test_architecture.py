"""The codebase's own rules, checked: layers (import-linter), no import cycle, lint, typed run files, one
inference path, and no Keras where a command doesn't need it."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from digitlab.errors import RunError
from digitlab.predictor import Predictor
from digitlab.runs import SCHEMA_VERSION, Run, open_run

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_import_linter_contracts_hold():
    proc = subprocess.run([str(BIN / "lint-imports"), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "BROKEN" not in proc.stdout and " KEPT" in proc.stdout


def test_no_import_cycle_in_the_package():
    import grimp
    graph = grimp.build_graph("digitlab")
    modules = sorted(m for m in graph.modules if m.startswith("digitlab"))
    cycles = []
    for importer in modules:
        for imported in graph.find_modules_directly_imported_by(importer):
            if imported.startswith("digitlab") and imported != importer and not importer.startswith(imported + ".") \
                    and graph.find_shortest_chain(importer=imported, imported=importer):
                cycles.append((importer, imported))
    # a package's __init__ importing its submodules is not a cycle between stages
    cycles = [(a, b) for a, b in cycles if not b.startswith(a + ".")]
    assert cycles == []


def test_ruff_is_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "digitlab", "tests", "bench"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]


@pytest.mark.parametrize("argv", [["--help"], ["models"], ["train", "--help"], ["predict", "--help"]])
def test_tables_and_help_never_import_the_training_stack(argv):
    code = ("import sys\nfrom digitlab.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('keras', 'tensorflow', 'jax', 'sklearn') if m in sys.modules)\n"
            "print('HEAVY', heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]


# ---------------------------------------------------------------- typed run files

def _copy_run(trained_run, tmp_path) -> Path:
    dest = tmp_path / "run"
    shutil.copytree(trained_run.path, dest)
    return dest


def test_run_files_are_typed(trained_run):
    run = open_run(trained_run.path)
    assert run.kind == "train" and run.config.model == "seed-ann" and run.state.status == "completed"
    assert run.metrics.test_images == 10_000 and run.history[-1].epoch == 3 and run.data.dataset == "mnist"
    saved = json.loads((trained_run.path / "config.json").read_text())
    assert saved["kind"] == "train" and saved["schema_version"] == SCHEMA_VERSION


@pytest.mark.parametrize("file, change, words", [
    ("metrics.json", lambda d: {**d, "test_acuracy": 0.9}, ["metrics.json", "'test_acuracy'"]),
    ("state.json", lambda d: {**d, "mystery": 1}, ["state.json", "'mystery'"]),
    ("data.json", lambda d: {k: v for k, v in d.items() if k != "sha256"}, ["data.json", "'sha256'"]),
    ("config.json", lambda d: {**d, "schema_version": SCHEMA_VERSION + 1}, ["config.json", "upgrade digitlab"]),
    ("config.json", lambda d: {**d, "kind": "bagel"}, ["config.json", "'bagel'"]),
])
def test_an_unknown_or_missing_field_names_the_file_and_field(trained_run, tmp_path, file, change, words):
    path = _copy_run(trained_run, tmp_path)
    doc = json.loads((path / file).read_text())
    (path / file).write_text(json.dumps(change(doc)))
    run = Run(path)
    with pytest.raises(RunError) as err:
        run.config, run.state, run.data, run.metrics  # noqa: B018 - reading is the test
    assert all(w in str(err.value) for w in words), str(err.value)


def test_a_run_written_before_schema_versions_still_opens(trained_run, tmp_path):
    """Runs of the previous digitlab: config.json without kind or schema_version, state with epochs_planned,
    metrics with epochs_completed and status (fields that now live elsewhere)."""
    path = _copy_run(trained_run, tmp_path)
    config = json.loads((path / "config.json").read_text())
    del config["kind"], config["schema_version"]
    (path / "config.json").write_text(json.dumps(config))
    state = json.loads((path / "state.json").read_text())
    (path / "state.json").write_text(json.dumps({**state, "epochs_planned": 3}))
    metrics = json.loads((path / "metrics.json").read_text())
    (path / "metrics.json").write_text(json.dumps({**metrics, "epochs_completed": 3, "status": "completed"}))
    run = open_run(path)
    assert run.kind == "train" and run.config.epochs == 3 and run.state.epochs_completed == 3
    assert run.metrics.test_accuracy == trained_run.metrics.test_accuracy


# ---------------------------------------------------------------- one inference path

@pytest.fixture
def spy(monkeypatch):
    """Counts the images that go through Predictor.outputs, the one forward pass (predict_proba and judge, the
    probabilities and the verdicts, both go through it), whoever calls it."""
    seen = []
    real = Predictor.outputs

    def counting(self, x, features=True):
        seen.append(len(x))
        return real(self, x, features)

    monkeypatch.setattr(Predictor, "outputs", counting)
    return seen


def test_evaluate_scores_through_the_predictor(trained_run, tmp_path, mnist, spy):
    from digitlab.evaluation import evaluate_run
    metrics = evaluate_run(open_run(_copy_run(trained_run, tmp_path)), dataset=mnist, with_diagnostics=False)
    assert spy[0] == 10_000 and metrics.test_accuracy == trained_run.metrics.test_accuracy
    assert sum(spy) > 10_000  # then the trust model's fitting and its out-of-distribution sets, through it too


def test_predict_reads_through_the_predictor(trained_run, tmp_path, spy, capsys):
    from digitlab.cli import main
    np.save(tmp_path / "digits.npy", np.zeros((3, 28, 28), np.float32))
    assert main(["predict", str(trained_run.path), str(tmp_path / "digits.npy")]) == 0
    assert spy == [3]


def test_serve_answers_through_the_predictor(trained_run, mnist, spy):
    from fastapi.testclient import TestClient

    from digitlab.serving import create_app
    with TestClient(create_app(trained_run.path, max_batch=4)) as client:
        spy.clear()  # start-up warms every batch size up
        r = client.post("/api/predict", json={"pixels": mnist.x_test[0].tolist()})
    assert r.status_code == 200 and spy == [1]  # padded to a bucket of 1


def test_ensemble_is_built_and_scored_through_the_predictor(trained_run, tmp_path, mnist, spy):
    from digitlab.ensemble import make_ensemble
    run = make_ensemble([trained_run.path], out=tmp_path / "ens", dataset=mnist)
    assert run.kind == "ensemble" and sum(spy) >= 10_000
    assert run.metrics.test_accuracy == pytest.approx(trained_run.metrics.test_accuracy, abs=1e-4)


def test_compare_scores_through_the_predictor(tmp_path, mnist, spy):
    from digitlab import comparison as cmp
    cfg = cmp.CompareConfig(models=("logreg",), train_size=500, test_size=200)
    cmp.run_comparison(cfg, tmp_path / "cmp", dataset=mnist)
    assert spy == [200, cmp.CALIBRATION_IMAGES]  # the test images, then the held-out images it is calibrated on
