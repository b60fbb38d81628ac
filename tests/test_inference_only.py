"""The inference path without the training stack: `predict` and `serve` on a run's checked model.onnx import
neither TensorFlow, JAX, Keras, scikit-learn nor SciPy, and `pip install digitlab` (no extras) is enough for them."""
from __future__ import annotations

import json
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TRAINING_STACK = ("keras", "tensorflow", "jax", "sklearn", "matplotlib", "xgboost", "tf2onnx", "onnx", "scipy")
HEAVY = f"sorted(m for m in {TRAINING_STACK!r} if m in sys.modules)"
PREDICT = ("import sys\nfrom digitlab.cli import main\ncode = main(['predict', *sys.argv[1:]])\n"
           f"print('HEAVY', {HEAVY}, 'EXIT', code)")
SERVE = ("import sys\nfrom digitlab.cli import main\ntry:\n    main(['serve', sys.argv[1], '--port', '0'])\n"
         f"finally:\n    print('HEAVY', {HEAVY}, flush=True)")
# Measured 233 MB (onnxruntime 78, numpy 73, pillow 23, pip 17) once SciPy (143 MB) left for the train extra;
# the budget is 300 MB, and this leaves ~10% for dependencies to grow. The training stack adds ~2 GB.
INFERENCE_ONLY_MAX_MB = 260


@pytest.fixture(scope="module")
def exported_run(trained_run, tmp_path_factory, mnist):
    """A copy of the session's seed-ann run with its checked model.onnx."""
    from digitlab.export import export_run
    from digitlab.runs import open_run
    dest = tmp_path_factory.mktemp("inference") / "run"
    shutil.copytree(trained_run.path, dest)
    export_run(open_run(dest), dataset=mnist)
    return dest


@pytest.fixture(scope="module")
def seven_png(tmp_path_factory, mnist) -> Path:
    """The first test digit (a 7) as a photo would have it: dark ink on white, 4x larger."""
    path = tmp_path_factory.mktemp("png") / "seven.png"
    Image.fromarray(255 - mnist.x_test[0]).resize((112, 112)).save(path)
    assert mnist.y_test[0] == 7
    return path


def predict(python: str | Path, run: Path, png: Path) -> tuple[str, list[str]]:
    proc = subprocess.run([str(python), "-c", PREDICT, str(run), str(png)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "EXIT 0" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout, _heavy(proc.stdout)


def serve_and_ask(python: str | Path, run: Path, png: Path) -> tuple[dict, dict, list[str]]:
    """`digitlab serve RUN --port 0` in a process of its own: /api/health, one image to /api/predict, then Ctrl-C;
    returns both answers and the training-stack modules the server had imported."""
    proc = subprocess.Popen([str(python), "-c", SERVE, str(run)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        url = None
        while url is None:  # "serving RUN at http://127.0.0.1:PORT/ ...", printed once the port is bound
            seen.append(lines.get(timeout=60))
            found = re.search(r" at (http://\S+/) ", seen[-1])
            url = found and found.group(1)
        health = _wait_for_json(url + "api/health", seen)
        request = urllib.request.Request(url + "api/predict", data=png.read_bytes(),
                                         headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.load(response)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    reader.join(timeout=10)  # the process has ended: its output is complete
    while not lines.empty():
        seen.append(lines.get())
    return health, answer, _heavy("".join(seen))


def _wait_for_json(url: str, seen: list[str], timeout_s: float = 60) -> dict:
    """GET `url` once the server answers (it binds the port before the model has loaded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.load(response)
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise AssertionError("the server never answered: " + "".join(seen)[-3000:]) from None
            time.sleep(0.1)


def _heavy(output: str) -> list[str]:
    found = re.search(r"^HEAVY (\[.*?\])", output, re.M)
    assert found, output[-3000:]
    return json.loads(found.group(1).replace("'", '"'))


# ---------------------------------------------------------------- in this environment (training stack installed)

def test_predict_on_onnx_imports_no_training_stack(exported_run, seven_png):
    out, heavy = predict(sys.executable, exported_run, seven_png)
    assert f"{seven_png}: digit 7 " in out
    assert heavy == []  # installed here, so only the inference path can keep them out


def test_serve_on_onnx_imports_no_training_stack(exported_run, seven_png):
    health, answer, heavy = serve_and_ask(sys.executable, exported_run, seven_png)
    assert health["status"] == "ok" and answer["digit"] == 7
    assert heavy == []


def test_a_run_without_an_export_still_predicts_on_keras_and_says_so(trained_run, seven_png):
    proc = subprocess.run([sys.executable, "-m", "digitlab", "predict", str(trained_run.path), str(seven_png)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and f"{seven_png}: digit 7 " in proc.stdout, proc.stderr[-2000:]
    told = [line for line in proc.stderr.splitlines() if "running model.keras on Keras instead" in line]
    assert len(told) == 1 and "no model.onnx has been exported" in told[0]


# ---------------------------------------------------------------- `pip install digitlab` in a fresh environment

@pytest.fixture(scope="module")
def inference_venv(tmp_path_factory) -> Path:
    """A new virtual environment with `pip install digitlab`, no extras, from a copy of this source tree (pip
    would otherwise build inside the checkout). Needs PyPI or pip's cache; about 20-60 s."""
    base = tmp_path_factory.mktemp("venv")
    src = base / "src"
    shutil.copytree(ROOT / "digitlab", src / "digitlab", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                           "-q", str(src)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return venv


@pytest.mark.slow
@pytest.mark.network  # pip install from the package registry
def test_the_inference_only_install_predicts_and_serves_an_exported_run(inference_venv, exported_run, seven_png):
    python = inference_venv / "bin" / "python"
    missing = subprocess.run([str(python), "-c", "import importlib.util as u; print([m for m in "
                              f"{TRAINING_STACK!r} if u.find_spec(m)])"], capture_output=True, text=True, timeout=60)
    assert missing.stdout.strip() == "[]", "the plain install pulled in part of the training stack"
    out, heavy = predict(python, exported_run, seven_png)
    assert f"{seven_png}: digit 7 " in out and heavy == []
    health, answer, heavy = serve_and_ask(python, exported_run, seven_png)
    assert health["status"] == "ok" and answer["digit"] == 7 and heavy == []

    size_mb = sum(f.stat().st_size for f in inference_venv.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20
    print(f"inference-only environment: {size_mb:.0f} MB")
    assert size_mb <= INFERENCE_ONLY_MAX_MB


@pytest.mark.slow
@pytest.mark.network  # pip install from the package registry
def test_the_inference_only_install_says_which_extra_trains(inference_venv, trained_run, seven_png):
    digitlab = str(inference_venv / "bin" / "digitlab")
    train = subprocess.run([digitlab, "train", "--model", "seed-ann"], capture_output=True, text=True, timeout=120)
    assert train.returncode == 1 and "pip install 'digitlab[train]'" in train.stderr, train.stderr[-2000:]
    assert "Traceback" not in train.stderr
    # a run without model.onnx needs Keras to predict: the same advice, and how to avoid needing it
    keras_only = subprocess.run([digitlab, "predict", str(trained_run.path), str(seven_png)], capture_output=True,
                                text=True, timeout=120)
    assert keras_only.returncode == 2 and "digitlab[train]" in keras_only.stderr
    assert "digitlab export" in keras_only.stderr and "Traceback" not in keras_only.stderr
