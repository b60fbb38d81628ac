"""Inference cost, side by side: digitlab on Keras, digitlab on ONNX Runtime, and the tutorial's model.predict.

    python bench/infer.py --run runs/quickstart-seed-ann                    # the whole table, about 2 minutes
    python bench/infer.py --run runs/... --repeats 5 --duration 20          # steadier figures
    python bench/infer.py --run runs/... --skip-env --skip-load             # the process rows only

Rows, each a fresh process (the median wall time and the largest peak RSS over --repeats):
- `digitlab predict RUN one.png` on the Keras path (a copy of the run without its model.onnx) and on the
  ONNX path (the run with its checked model.onnx; exported first if it has none);
- the tutorial's way: `tf.keras.models.load_model` then `model.predict` on the same image (TensorFlow).
Then `digitlab serve` at rest (RSS after start-up and one request) on both paths, the server under 50 clients
as fast as they can (bench/load.py, ONNX path), ONNX Runtime in-process (one image, batches of 256), and the
size on disk of a fresh virtual environment with `pip install digitlab` (no extras). Goals from issue 10.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL_PREDICT = """
import sys
import numpy as np
import tensorflow as tf
from PIL import Image
model = tf.keras.models.load_model(sys.argv[1])
image = np.asarray(Image.open(sys.argv[2]).convert("L").resize((28, 28)), dtype=np.float32)
print(int(model.predict((255 - image)[None] / 255.0, verbose=0).argmax()))
"""
GOALS = {  # issue 10, measured on the 2-core machine
    "predict_s": 0.5, "predict_mb": 150.0, "serve_rest_mb": 200.0, "req_per_s": 3327.0, "p99_ms": 23.0,
    "env_mb": 300.0,
}


def measured(argv: list[str], env: dict | None = None, timeout_s: float = 300) -> tuple[float, float, float, str]:
    """Run argv; its wall seconds, CPU seconds (user + system) and peak RSS in MB, and its stdout.

    The peak is the process's own VmHWM, read from /proc while it runs (it only grows, so the last reading
    is the peak). Not getrusage's maxrss: Linux carries a parent's high-water mark across fork and exec, so
    a child of this (larger) process would report this process's memory. CPU time is unaffected by that,
    and unlike the wall time it hardly changes when other work shares the cores."""
    with tempfile.TemporaryFile("w+") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL, env=env)
        status, peak_kb = Path(f"/proc/{proc.pid}/status"), 0
        while True:
            pid, code, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - started > timeout_s:
                proc.kill()
                raise SystemExit(f"{' '.join(argv)} took over {timeout_s} s")
            try:
                found = re.search(r"VmHWM:\s+(\d+)", status.read_text())
            except OSError:  # it is exiting
                found = None
            if found:
                peak_kb = max(peak_kb, int(found.group(1)))
            time.sleep(0.005)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(code)
        if proc.returncode != 0:
            raise SystemExit(f"exit status {proc.returncode}: {' '.join(argv)}")
        out.seek(0)
        return wall, usage.ru_utime + usage.ru_stime, peak_kb / 1024, out.read()


def process_row(name: str, argv: list[str], repeats: int, env: dict | None = None) -> dict:
    walls, cpus, peaks, answer = [], [], [], ""
    for _ in range(repeats):
        wall, cpu, peak, out = measured(argv, env)
        walls.append(wall)
        cpus.append(cpu)
        peaks.append(peak)
        found = re.search(r"digit (\d+)|^(\d+)$", out, re.M)  # digitlab's line, or the tutorial's bare answer
        answer = found.group(found.lastindex) if found else "?"
    return {"row": name, "wall s": statistics.median(walls), "cpu s": statistics.median(cpus), "peak MB": max(peaks),
            "answer": answer}


def serve_at_rest(run: Path, png: Path, env: dict) -> float:
    """RSS in MB of `digitlab serve RUN` after start-up and one prediction."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "digitlab", "serve", str(run), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url + "/api/health", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"`digitlab serve {run}` did not start") from None
                time.sleep(0.1)
        request = urllib.request.Request(url + "/api/predict", data=png.read_bytes(),
                                         headers={"Content-Type": "image/png"})
        urllib.request.urlopen(request, timeout=30).read()
        time.sleep(1.0)  # at rest: let the worker threads settle before reading the memory
        status = Path(f"/proc/{proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_row(run: Path, duration: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        rows = Path(tmp) / "rows.json"
        proc = subprocess.run([sys.executable, "-P", str(ROOT / "bench" / "load.py"), "--run", str(run), "--scenario",
                               "50xmax", "--duration", str(duration), "--json", str(rows)],
                              capture_output=True, text=True, timeout=duration + 300)
        if proc.returncode != 0 or not rows.exists():
            raise SystemExit(f"bench/load.py failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        return json.loads(rows.read_text())[0]


def onnx_in_process(run: Path) -> dict:
    """ONNX Runtime in this process: one image, and batches of 256 (median of many calls)."""
    from digitlab.data import load_mnist, scale
    from digitlab.predictor import Predictor
    from digitlab.runs import open_run
    predictor = Predictor.from_run(open_run(run), runtime="onnx")
    x = scale(load_mnist().x_test[:256])
    one = []
    for i in range(300):
        started = time.perf_counter()
        predictor.predict_proba(x[i % 256:i % 256 + 1])
        one.append(time.perf_counter() - started)
    batch = []
    for _ in range(30):
        started = time.perf_counter()
        predictor.predict_proba(x)
        batch.append(time.perf_counter() - started)
    return {"one image ms": 1e3 * statistics.median(one), "images/s at 256": 256 / statistics.median(batch)}


def inference_env_mb() -> tuple[float, float]:
    """A fresh venv with `pip install digitlab` (no extras) from a copy of this tree: (its size in MB, install s)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, venv = Path(tmp) / "src", Path(tmp) / "venv"
        shutil.copytree(ROOT / "digitlab", src / "digitlab", ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / name, src / name)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        str(src)], check=True, timeout=900, capture_output=True)
        seconds = time.perf_counter() - started
        size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink())
        return size / 2**20, seconds


def one_png(run: Path, dest: Path) -> Path:
    """The first test digit as a photo would have it: dark on white, 112x112."""
    from PIL import Image

    from digitlab.data import load_dataset
    from digitlab.runs import open_run
    ds = load_dataset(open_run(run).config.dataset)
    Image.fromarray(255 - ds.x_test[0]).resize((112, 112)).save(dest)
    return dest


def keras_only_copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("model.onnx", "model.tflite", "export.json"))
    return dest


def met(value: float | None, goal: float, at_most: bool = True) -> str:
    if value is None:
        return "not measured"
    return "met" if (value <= goal if at_most else value >= goal) else "not met"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, type=Path, help="a trained run (exported to ONNX first if it isn't)")
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per row (default 3)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of the 50-client load (default 10)")
    p.add_argument("--skip-load", action="store_true", help="no load test")
    p.add_argument("--skip-env", action="store_true", help="don't build the inference-only environment")
    p.add_argument("--json", dest="json_out", type=Path, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

    from digitlab.predictor import checked_onnx
    from digitlab.runs import open_run
    if checked_onnx(open_run(args.run))[0] is None:
        print(f"exporting {args.run} to ONNX first", flush=True)
        subprocess.run([sys.executable, "-m", "digitlab", "export", str(args.run)], check=True, env=env)

    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} at the start", flush=True)
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        png = one_png(args.run, Path(tmp) / "one.png")
        keras_run = keras_only_copy(args.run, Path(tmp) / "keras-run")
        predict = [sys.executable, "-m", "digitlab", "predict"]
        rows = [
            process_row("digitlab predict, Keras path", [*predict, str(keras_run), str(png)], args.repeats, env),
            process_row("digitlab predict, ONNX path", [*predict, str(args.run), str(png)], args.repeats, env),
            process_row("tutorial: load_model + model.predict (TensorFlow)",
                        [sys.executable, "-c", TUTORIAL_PREDICT, str(args.run / "model.keras"), str(png)],
                        args.repeats, {**env, "KERAS_BACKEND": "tensorflow"}),
        ]
        figures["processes"] = rows
        print("\n| one image, fresh process | wall s (median) | CPU s (median) | peak RSS MB (max) | digit read |\n"
              "|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['row']} | {r['wall s']:.2f} | {r['cpu s']:.2f} | {r['peak MB']:.0f} | {r['answer']} |")
        rest = {"Keras path": serve_at_rest(keras_run, png, env), "ONNX path": serve_at_rest(args.run, png, env)}
        figures["serve_rest_mb"] = rest
        print("\n| `digitlab serve` at rest | RSS MB |\n|---|---|")
        for name, mb in rest.items():
            print(f"| {name} | {mb:.0f} |")
    onnx_rt = onnx_in_process(args.run)
    figures["onnx_in_process"] = onnx_rt
    print(f"\nONNX Runtime in-process: one image {onnx_rt['one image ms']:.3f} ms (median), "
          f"{onnx_rt['images/s at 256']:,.0f} images/s in batches of 256")

    load = None
    if not args.skip_load:
        with tempfile.TemporaryDirectory() as tmp:  # both paths, one after the other, under the same conditions
            loads = {"Keras path": load_row(keras_only_copy(args.run, Path(tmp) / "keras-run"), args.duration),
                     "ONNX path": load_row(args.run, args.duration)}
        load = loads["ONNX path"]
        figures["load_50xmax"] = loads
        print(f"\n| `digitlab serve`, 50 clients as fast as they can, {args.duration:g} s | req/s | p50 ms | p99 ms "
              "| max ms | errors | server CPU | server RSS MB before -> after |\n|---|---|---|---|---|---|---|---|")
        for name, r in loads.items():
            print(f"| {name} | {r['req/s']:,.0f} | {r['p50 ms']:.1f} | {r['p99 ms']:.1f} | {r['max ms']:.0f} | "
                  f"{r['errors']} | {r['server CPU %']:.0f}% | {r['RSS MB before']:.0f} -> {r['RSS MB after']:.0f} |")
    env_mb = None
    if not args.skip_env:
        env_mb, seconds = inference_env_mb()
        figures["inference_env_mb"] = env_mb
        print(f"\n`pip install digitlab` (no extras) in a fresh venv: {env_mb:.0f} MB on disk "
              f"({seconds:.0f} s to install)")

    onnx_row = rows[1]
    checks = [
        ("predict wall time, ONNX path", f"{onnx_row['wall s']:.2f} s (CPU {onnx_row['cpu s']:.2f} s)",
         f"<= {GOALS['predict_s']} s", met(onnx_row["wall s"], GOALS["predict_s"])),
        ("predict peak memory, ONNX path", f"{onnx_row['peak MB']:.0f} MB", f"<= {GOALS['predict_mb']:.0f} MB",
         met(onnx_row["peak MB"], GOALS["predict_mb"])),
        ("server at rest, ONNX path", f"{rest['ONNX path']:.0f} MB", f"<= {GOALS['serve_rest_mb']:.0f} MB",
         met(rest["ONNX path"], GOALS["serve_rest_mb"])),
        ("server throughput, 50 clients flat out", f"{load['req/s']:,.0f} req/s" if load else "-",
         f">= {GOALS['req_per_s']:,.0f} req/s", met(load and load["req/s"], GOALS["req_per_s"], at_most=False)),
        ("server p99, 50 clients flat out", f"{load['p99 ms']:.1f} ms" if load else "-",
         f"<= {GOALS['p99_ms']:.0f} ms", met(load and load["p99 ms"], GOALS["p99_ms"])),
        ("inference-only environment", f"{env_mb:.0f} MB" if env_mb else "-", f"<= {GOALS['env_mb']:.0f} MB",
         met(env_mb, GOALS["env_mb"])),
    ]
    figures["goals"] = [dict(zip(("goal", "measured", "target", "verdict"), c)) for c in checks]
    print("\n| goal (issue 10) | measured | target | verdict |\n|---|---|---|---|")
    for c in checks:
        print("| " + " | ".join(c) + " |")
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    if args.json_out:
        args.json_out.write_text(json.dumps(figures, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
