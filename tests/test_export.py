"""Export (digitlab.export): ONNX and LiteRT files kept only when they answer as Keras does on the whole test set,
and Predictor.from_run running a checked model.onnx on ONNX Runtime, falling back to Keras when it can't."""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil

import numpy as np
import pytest

from digitlab.data import scale
from digitlab.errors import RunError
from digitlab.predictor import Predictor
from digitlab.registry import model_names
from digitlab.runs import Run, open_run


def _copy(run, dest) -> Run:
    shutil.copytree(run.path, dest)
    return open_run(dest)


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory, mnist):
    """A copy of the session's seed-ann run, exported to ONNX."""
    from digitlab.export import export_run
    run = _copy(trained_run, tmp_path_factory.mktemp("exported") / "run")
    export_run(run, dataset=mnist)
    return run


def test_the_export_is_checked_on_the_whole_test_set_and_recorded(exported):
    check = open_run(exported.path).exports["onnx"]  # read back from export.json
    onnx = exported.path / "model.onnx"
    assert check.passed and check.images == 10_000 and check.file == "model.onnx"
    assert check.same_argmax >= 0.9999 and check.max_abs_diff <= 1e-4
    assert check.exported_accuracy == pytest.approx(check.keras_accuracy, abs=1e-4)
    assert check.keras_accuracy == pytest.approx(exported.metrics.test_accuracy, abs=1e-4)  # the run's own figure
    assert check.sha256 == hashlib.sha256(onnx.read_bytes()).hexdigest() and check.size_bytes == onnx.stat().st_size
    assert check.source_sha256 == exported.model_sha256()
    assert check.parameters == 101_770 and {"tf2onnx", "onnxruntime"} <= set(check.versions)


def test_from_run_runs_the_checked_onnx_and_matches_keras(exported, mnist):
    x = scale(mnist.x_test[:300])
    onnx, keras = Predictor.from_run(exported), Predictor.from_run(exported, runtime="keras")
    assert onnx.runtime == "onnxruntime" and onnx.keras_model is None and onnx.parameters == 101_770
    assert keras.runtime == "keras"
    np.testing.assert_allclose(onnx.predict_proba(x), keras.predict_proba(x), atol=1e-5)
    assert onnx.predict_proba(x[:0]).shape == (0, 10) and onnx.predict_proba(x[:1]).shape == (1, 10)


def _damage_onnx(run: Run) -> None:
    data = bytearray(run.export_path("onnx").read_bytes())
    data[-1] ^= 0xFF  # one bit pattern changed: still a plausible file, but not the one that was checked
    run.export_path("onnx").write_bytes(bytes(data))


def _train_further(run: Run) -> None:
    run.write_export(dataclasses.replace(run.exports["onnx"], source_sha256="0" * 64))


def _fail_check(run: Run) -> None:
    run.write_export(dataclasses.replace(run.exports["onnx"], passed=False))


def _remove_onnx(run: Run) -> None:
    run.export_path("onnx").unlink()


@pytest.mark.parametrize("change, why", [
    (_damage_onnx, "not the file that was checked"),
    (_train_further, "exported from an earlier model.keras"),
    (_fail_check, "failed the check"),
    (_remove_onnx, "can't be read"),
])
def test_an_unusable_export_falls_back_to_keras_and_says_why_once(exported, tmp_path, caplog, change, why):
    run = _copy(exported, tmp_path / "run")
    change(run)
    with caplog.at_level(logging.WARNING, logger="digitlab.predictor"):
        first, second = Predictor.from_run(open_run(run.path)), Predictor.from_run(open_run(run.path))
    assert first.runtime == second.runtime == "keras"
    told = [r.getMessage() for r in caplog.records if str(run.path) in r.getMessage()]
    assert len(told) == 1 and why in told[0] and f"digitlab export {run.path}" in told[0]
    with pytest.raises(RunError, match=why):
        Predictor.from_run(open_run(run.path), runtime="onnx")


def test_a_failed_check_keeps_no_file_and_says_why(exported, tmp_path, monkeypatch, mnist):
    """A converter that got 2 of the 10,000 images wrong (99.98% < 99.99%): nothing kept, the figures recorded."""
    from digitlab import export
    run = _copy(exported, tmp_path / "run")
    real = export._load_exported

    def slightly_wrong(fmt, path):
        good, calls = real(fmt, path), []

        def forward(x):
            p = good.predict_proba(x)
            if not calls:  # the first chunk: two images' probabilities moved one class along, top class included
                p[:2] = np.roll(p[:2], 1, axis=1)
            calls.append(len(x))
            return p
        return Predictor(forward)

    monkeypatch.setattr(export, "_load_exported", slightly_wrong)
    with pytest.raises(export.ExportError, match="failed its check") as err:
        export.export_run(run, dataset=mnist)
    assert "9998/10000" in str(err.value)
    assert not run.export_path("onnx").exists()  # the earlier, good export is gone too: export.json no longer says it
    assert not [p for p in run.path.iterdir() if p.name.startswith(".model.onnx")]  # no temporary left behind
    check = open_run(run.path).exports["onnx"]
    assert not check.passed and check.same_argmax == 0.9998 and check.sha256 is None
    assert Predictor.from_run(open_run(run.path)).runtime == "keras"


@pytest.fixture(scope="module")
def quantized(exported, tmp_path_factory, mnist):
    """A copy of the exported run, exported again with an int8 copy of model.onnx (--quantize)."""
    from digitlab.export import export_run
    run = _copy(exported, tmp_path_factory.mktemp("quantized") / "run")
    export_run(run, dataset=mnist, quantize=True)
    return run


def test_quantize_keeps_an_int8_copy_with_both_outputs_and_records_its_figures(quantized, mnist):
    check = open_run(quantized.path).exports["onnx"]  # read back from export.json
    q, int8 = check.quantized, quantized.path / "model.int8.onnx"
    assert check.passed and q.passed and q.file == "model.int8.onnx" and q.method == "dynamic" and not q.why
    assert q.sha256 == hashlib.sha256(int8.read_bytes()).hexdigest() and q.size_bytes == int8.stat().st_size
    assert q.source_sha256 == check.sha256 and q.float_size_bytes == check.size_bytes
    assert q.size_bytes < check.size_bytes / 3  # int8 weights: a quarter of float32's, plus the graph
    assert q.images == 10_000 and q.float_accuracy == pytest.approx(check.exported_accuracy, abs=1e-9)
    assert q.accuracy_drop == pytest.approx(q.float_accuracy - q.accuracy) and q.accuracy_drop <= 0.001
    assert q.same_argmax >= 0.99 and q.features and q.max_feature_diff is not None
    assert min(q.float_us_batch, q.int8_us_batch, q.float_us_single, q.int8_us_single) > 0 and q.batch == 256
    # The recorded accuracy is the file's, with the features output the trust model needs
    out = Predictor.from_onnx(int8.read_bytes()).outputs(scale(mnist.x_test))
    assert float(np.mean(out.proba.argmax(axis=1) == mnist.y_test)) == pytest.approx(q.accuracy, abs=1e-9)
    assert out.features is not None and out.features.shape[0] == 10_000
    assert Predictor.from_run(open_run(quantized.path)).runtime == "onnxruntime"  # still model.onnx, checked


def test_static_quantization_for_cnns_keeps_both_outputs_and_the_answers(quantized, tmp_path, mnist):
    """What a CNN gets (quantize_static, activation ranges from training images), tried on the dense fixture's
    model.onnx: converting a CNN would take tf2onnx and TensorFlow."""
    import onnx

    from digitlab import quantize
    static, source = tmp_path / "static.onnx", quantized.export_path("onnx")
    assert not quantize._has_convolutions(source.read_bytes())  # so --quantize gave the fixture the dynamic kind
    quantize._quantize_static(source, static, scale(mnist.x_train[:300]))
    assert "QLinearMatMul" in {node.op_type for node in onnx.load(static).graph.node}
    assert static.stat().st_size < source.stat().st_size / 3
    x = scale(mnist.x_test[:2000])
    out, ref = Predictor.from_onnx(static.read_bytes()).outputs(x), Predictor.from_onnx(source).outputs(x)
    assert float(np.mean(out.proba.argmax(axis=1) == ref.proba.argmax(axis=1))) >= 0.98
    assert out.features is not None and out.features.shape == ref.features.shape


def test_an_int8_copy_that_fails_its_check_is_not_kept_and_the_float_export_stands(quantized, tmp_path, monkeypatch,
                                                                                    capsys):
    from digitlab import quantize
    from digitlab.cli import main
    run = _copy(quantized, tmp_path / "run")  # it holds a good model.int8.onnx from before
    monkeypatch.setattr(quantize, "MAX_INT8_ACCURACY_DROP", -1.0)  # the copy would have to gain 100 points
    assert main(["export", str(run.path), "--quantize"]) == 0
    out = capsys.readouterr().out
    assert f"exported:      {run.path / 'model.onnx'}" in out
    assert f"int8:          {run.path / 'model.int8.onnx'}: not kept: its accuracy" in out and "points below" in out
    assert not (run.path / "model.int8.onnx").exists()  # the earlier copy too: export.json no longer vouches for it
    assert not [p for p in run.path.iterdir() if p.name.startswith(".model.int8.onnx")]  # no temporary left behind
    check = open_run(run.path).exports["onnx"]
    assert check.passed and not check.quantized.passed and check.quantized.sha256 is None
    assert "points below" in check.quantized.why and check.quantized.int8_us_batch is None
    assert Predictor.from_run(open_run(run.path)).runtime == "onnxruntime"
    assert main(["export", str(run.path), "--format", "litert", "--quantize"]) == 2  # an int8 copy of what?
    assert "--format onnx" in capsys.readouterr().err


def test_a_reevaluated_report_shows_the_check_and_scores_the_keras_model(exported, tmp_path, mnist, monkeypatch):
    from digitlab.evaluation import evaluate_run
    run = _copy(exported, tmp_path / "run")

    def refuse(*args, **kwargs):
        raise AssertionError("evaluation scores the run's model.keras, not its export")

    monkeypatch.setattr(Predictor, "from_onnx", refuse)
    evaluate_run(run, dataset=mnist, with_diagnostics=False)
    report = (run.path / "report.html").read_text()
    assert "Exports, checked against Keras (export.json)" in report and "same_argmax" in report


def test_cli_export_prints_the_figures_and_refuses_unknown_formats(exported, tmp_path, capsys):
    from digitlab.cli import main
    run = _copy(exported, tmp_path / "run")
    (run.path / "model.onnx").unlink()
    (run.path / "export.json").unlink()
    assert main(["export", str(run.path)]) == 0
    out = capsys.readouterr().out
    assert f"exported:      {run.path / 'model.onnx'}" in out and "same top class on 10000/10000" in out
    assert main(["export", str(run.path), "--format", "coreml"]) == 2
    assert main(["export", str(tmp_path / "missing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_train_exports_at_the_end_and_ensemble_no_export_skips_it(tmp_path, capsys):
    from digitlab.cli import main
    run, ens = tmp_path / "run", tmp_path / "ens"
    assert main(["train", "--model", "seed-ann", "--epochs", "1", "--train-size", "1000", "--val", "0",
                 "--batch-size", "64", "--quiet", "--out", str(run)]) == 0
    assert f"exported:      {run / 'model.onnx'}" in capsys.readouterr().out
    assert open_run(run).exports["onnx"].passed and Predictor.from_run(open_run(run)).runtime == "onnxruntime"
    assert main(["ensemble", str(run), "--out", str(ens), "--no-export"]) == 0
    assert "exported:" not in capsys.readouterr().out
    assert not (ens / "model.onnx").exists() and open_run(ens).exports == {}


def test_an_ensemble_with_tta_exports_as_one_graph_in_both_formats(trained_run, tmp_path, mnist):
    from digitlab.ensemble import make_ensemble
    from digitlab.export import export_run
    a, b = _copy(trained_run, tmp_path / "a"), _copy(trained_run, tmp_path / "b")
    run = make_ensemble([a.path, b.path], out=tmp_path / "ens", tta=True, evaluate=False)
    checks = export_run(run, formats=("onnx", "litert"), dataset=mnist)
    assert checks["onnx"].passed and checks["litert"].passed
    assert {c.format for c in open_run(run.path).exports.values()} == {"onnx", "litert"}
    assert (run.path / "model.tflite").exists()
    x = scale(mnist.x_test[:64])
    np.testing.assert_allclose(Predictor.from_run(run).predict_proba(x),
                               Predictor.from_run(run, runtime="keras").predict_proba(x), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name, params", [(name, {}) for name in model_names()] + [
    ("mlp", dict(hidden=[64, 32], activation=act, batchnorm=True, max_norm=3.0, dropout=[0.1, 0.2]))
    for act in ("gelu", "tanh", "sigmoid")])  # TensorFlow's exact GELU needed teaching tf2onnx its erfc
def test_every_registered_model_exports_and_passes_its_check(name, params, trained_run, tmp_path, mnist):
    """Each builder's network, with its initial weights, in place of the run's model (~1-25 s each)."""
    from digitlab.export import export_run
    from digitlab.models import create_model
    from digitlab.training import save_model
    run = _copy(trained_run, tmp_path / "run")
    (run.path / "export.json").unlink(missing_ok=True)
    save_model(create_model(name, **params), run.model_path)
    check = export_run(run, dataset=mnist)["onnx"]
    assert check.passed and check.same_argmax >= 0.9999 and check.max_abs_diff <= 1e-4
    assert Predictor.from_run(open_run(run.path)).runtime == "onnxruntime"


@pytest.mark.slow
def test_on_jax_a_dense_chain_is_written_in_process_and_a_cnn_goes_to_a_tensorflow_worker(trained_run, tmp_path):
    """Training a dense network runs Keras on JAX, where Keras' ONNX converter (tf2onnx) is not: onnx_writer writes
    a dense chain in the same process, without importing TensorFlow; any other model goes to a `digitlab export`
    process on TensorFlow (~10 s: two processes import a Keras backend). Both pass the same check."""
    import os
    import subprocess
    import sys

    from digitlab.models import create_model
    from digitlab.training import save_model
    dense, cnn = _copy(trained_run, tmp_path / "dense"), _copy(trained_run, tmp_path / "cnn")
    save_model(create_model("fastcnn"), cnn.model_path)
    code = ("import sys, keras\nfrom digitlab.export import export_run\nfrom digitlab.runs import open_run\n"
            "for path in sys.argv[1:]:\n"
            "    check = export_run(open_run(path))['onnx']\n"
            "    print('BACKEND', keras.backend.backend(), 'PASSED', check.passed, 'BY', check.converter,\n"
            "          'TF', 'tensorflow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(dense.path), str(cnn.path)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BACKEND")]
    assert lines == ["BACKEND jax PASSED True BY onnx_writer TF False", "BACKEND jax PASSED True BY keras TF False"], \
        proc.stdout[-2000:] + proc.stderr[-3000:]
    for run in (dense, cnn):
        assert Predictor.from_run(open_run(run.path)).runtime == "onnxruntime"


def test_onnx_writer_answers_as_keras_for_every_layer_it_writes_and_declines_the_rest():
    """Batch norm (its moving statistics made non-trivial), each activation, dropout and no-bias layers, against
    Keras on random inputs; a layer it does not write (a convolution) gives None, for tf2onnx to convert."""
    import keras
    import onnxruntime as ort

    from digitlab.models import create_model
    from digitlab.onnx_writer import dense_chain_onnx
    rng = np.random.default_rng(0)
    x = rng.random((64, 28, 28), dtype=np.float32)
    for activation in ("relu", "gelu", "tanh", "sigmoid"):
        model = create_model("mlp", hidden=[32, 16], activation=activation, batchnorm=True, dropout=0.2)
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                gamma, beta, mean, var = layer.get_weights()
                layer.set_weights([rng.normal(1, 0.3, gamma.shape), rng.normal(0, 0.3, beta.shape),
                                   rng.normal(0, 0.5, mean.shape), rng.uniform(0.2, 2, var.shape)])
        session = ort.InferenceSession(dense_chain_onnx(model), providers=["CPUExecutionProvider"])
        proba, features = session.run(None, {session.get_inputs()[0].name: x})
        want = Predictor.from_keras(model).outputs(x)
        np.testing.assert_allclose(proba, want.proba, atol=1e-5)
        np.testing.assert_allclose(features, want.features, atol=1e-4 * float(np.abs(want.features).max()))
    assert dense_chain_onnx(create_model("fastcnn")) is None
