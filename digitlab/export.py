"""Export a run's model to ONNX (and LiteRT), keeping each file only if it answers as Keras does.

    checks = export_run(open_run("runs/20261126-071500-fastcnn-s0"), formats=("onnx", "litert"))
    checks["onnx"].same_argmax, checks["onnx"].max_abs_diff     # also in the run's export.json
    Predictor.from_run(run)                                      # now runs on ONNX Runtime, without Keras
    export_run(run, quantize=True)["onnx"].quantized             # and an int8 copy's check (model.int8.onnx)

The check: the exported model and the Keras model score the run's whole test set (10,000 images for
MNIST); the export is kept only if they give the same top class on at least MIN_SAME_ARGMAX of the
images and no probability differs by more than MAX_PROBA_DIFF. Either way the figures go to
export.json; a failed export keeps no file and raises ExportError.

The ONNX file has two outputs when the model ends in a Dense(softmax) head (every registered model; not an
ensemble): the probabilities first, then the penultimate features, which the trust model's Mahalanobis
score needs (digitlab.predictor.features_model). The features are checked too: none may differ by more
than MAX_FEATURE_DIFF of the largest feature. LiteRT files keep the probabilities only.

Who converts: a chain of dense layers (seed-ann, mlp) is written to ONNX directly by digitlab.onnx_writer, in
this process, whatever the backend. Everything else goes through Keras' `model.export` (tf2onnx for ONNX, the
TF Lite converter for LiteRT), which runs on the TensorFlow backend only (Keras on JAX would need jax2onnx and
its large dependency tree); a .keras file loads on either backend, so a process whose Keras runs on JAX exports
those in a fresh `digitlab export` process on TensorFlow (ExportWorker; `start_export` starts it early, so
that `digitlab train` evaluates while it converts; ExportHere is the in-process case). export.json records
which converter made each file.

int8 (--quantize, issue 10): after model.onnx passes its check, ONNX Runtime's own quantizer makes an int8 copy,
model.int8.onnx. A graph without convolutions gets `quantize_dynamic` (int8 weights, activations quantised image
batch by image batch at run time: no calibration data, and the features stay within ~1% of the float ones); a
CNN gets `quantize_static` (int8 weights per output channel, uint8 activations whose ranges come from
CALIBRATION_IMAGES training images, as QLinearConv nodes), because dynamic quantisation's ConvInteger runs a CNN
~7x slower than the float model on one image and ~14x in a batch (fastcnn: 165 against 25 us an image), where
the static copy is ~1.3x slower (docs/export.md has the figures). The copy is scored on the whole test set
and kept only if its accuracy is at most MAX_INT8_ACCURACY_DROP below model.onnx's and it still outputs the
features; its size, accuracy, agreement with model.onnx and its speed beside model.onnx's go to export.json
(QuantizedCheck, in the onnx record). A copy not kept does not fail the export: the float model.onnx stands.
Predictor.from_run keeps running model.onnx: the trust model's thresholds were fitted on the float features.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import io
import logging
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from digitlab.atomic import atomic_path
from digitlab.data import Dataset, load_dataset, scale
from digitlab.environment import versions
from digitlab.errors import ConfigError, DigitlabError
from digitlab.predictor import TRAIN_EXTRA, Predictor, features_model, load_keras_model
from digitlab.runs import EXPORT_FILES, INT8_ONNX_FILE, ExportCheck, QuantizedCheck, Run
from digitlab.scoring import accuracy

FORMATS = tuple(EXPORT_FILES)  # ("onnx", "litert")
MIN_SAME_ARGMAX = 0.9999  # share of test images on which the exported model must pick Keras' top class
MAX_PROBA_DIFF = 1e-4  # largest allowed |exported - Keras| class probability, any image, any class
MAX_FEATURE_DIFF = 1e-4  # largest allowed |exported - Keras| penultimate feature, over the largest |feature|
EXPORT_PACKAGES = ("keras", "tensorflow-cpu", "tensorflow", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert")
MAX_INT8_ACCURACY_DROP = 0.001  # the int8 copy is kept if its test accuracy is at most 0.1 points below model.onnx's
CALIBRATION_IMAGES = 300  # training images, spread over the split, that set the int8 copy's activation ranges
QUANTIZE_PACKAGES = ("onnx", "onnxruntime")
TIMED_BATCH = 256  # the batch the int8 and float models are timed on, beside one image alone
WORKER_TIMEOUT_S = 1800  # a worker slower than this is stuck: bestcnn took 13 s; a 3-member TTA ensemble, ~15x that


class ExportError(DigitlabError):
    """An export that failed its check, or could not be made; nothing was kept."""


def export_run(run: Run, formats=("onnx",), dataset: Dataset | None = None,
               quantize: bool = False) -> dict[str, ExportCheck]:
    """Export `run`'s model.keras in each format, check it, keep it and record the check; with `quantize`, an int8
    copy of model.onnx too (checks["onnx"].quantized, kept or not); see the module doc."""
    return export_runs([run], formats, dataset, quantize)[0]


def export_runs(runs: list[Run], formats=("onnx",), dataset: Dataset | None = None,
                quantize: bool = False) -> list[dict[str, ExportCheck]]:
    """export_run for several runs of one dataset (a --seeds group): one worker process at most, data loaded once.
    Every run is tried; ExportError at the end names those that failed."""
    with start_export(runs, formats, dataset, quantize) as export:
        return export.result()


def start_export(runs: list[Run], formats=("onnx",), dataset: Dataset | None = None,
                 quantize: bool = False) -> ExportWorker | ExportHere:
    """Start exporting `runs`; result() waits for the checks. Where Keras' converters are needed and Keras does not
    run on TensorFlow here (a format other than ONNX, or a model onnx_writer does not write), a worker process on
    TensorFlow starts converting at once, while this process goes on (train evaluates meanwhile); otherwise the
    models are loaded now and converted in this process by result(). Leaving a `with` block stops a worker."""
    formats = _known(formats)
    if quantize and "onnx" not in formats:
        raise ConfigError("--quantize makes an int8 copy of model.onnx: export the onnx format too (--format onnx)")
    sources = _sources_here(runs, formats)
    if sources is None:
        return ExportWorker(runs, formats, quantize)
    return ExportHere(runs, formats, dataset, sources, quantize)


def _sources_here(runs: list[Run], formats: tuple[str, ...]) -> list[tuple] | None:
    """For each run, (its model.keras's SHA-256, the loaded Keras model, onnx_writer's ONNX bytes or None) when this
    process can export them all; None when a TensorFlow worker must."""
    from digitlab.onnx_writer import dense_chain_onnx  # here: onnx is in the training extra, like Keras
    tensorflow = _keras_backend() == "tensorflow"
    if not tensorflow and formats != ("onnx",):
        return None
    sources = []
    for run in runs:
        sha256 = run.model_sha256()  # before loading: a file replaced meanwhile makes the export stale, not wrong
        try:
            model = load_keras_model(run.model_path)
        except DigitlabError:
            if tensorflow:
                raise
            return None  # the worker reports it, as for any export
        written = dense_chain_onnx(model) if "onnx" in formats else None  # a dense chain: no converter needed
        if written is None and not tensorflow:
            return None
        sources.append((sha256, model, written))
    return sources


def _known(formats) -> tuple[str, ...]:
    formats = tuple(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ConfigError(f"unknown export format {unknown[0] if unknown else ''!r}; known: {', '.join(FORMATS)}")
    return formats


def _keras_backend() -> str:
    try:
        import keras
    except ModuleNotFoundError as exc:
        raise ExportError(f"exporting needs the training stack ({exc.name} is not installed): {TRAIN_EXTRA}") from exc
    return keras.backend.backend()


def _export_checked(run: Run, formats: tuple[str, ...], ds: Dataset, source: tuple,
                    quantize: bool = False) -> dict[str, ExportCheck]:
    """Export one run in this process; source: (model.keras's SHA-256, the loaded model, onnx_writer's bytes or
    None), as _sources_here gives them; with `quantize`, model.onnx's int8 copy too (_quantized)."""
    source_sha256, model, written = source
    x, y = scale(ds.x_test), ds.y_test.astype(int)
    keras_predictor = Predictor.from_keras(model)
    reference = keras_predictor.outputs(x)  # (n, classes) probabilities and (n, d) features: what the export must give
    checks, failed = {}, []
    for fmt in formats:
        # ONNX also outputs the penultimate features (the trust model's Mahalanobis score); LiteRT, probabilities only
        exported_model = (features_model(model) or model) if fmt == "onnx" else model
        check = _export_one(run, exported_model, fmt, (x, y), (reference, source_sha256),
                            written if fmt == "onnx" else None)
        run.write_export(check)
        if fmt == "onnx":
            # An int8 copy left from an earlier export is not what export.json now vouches for.
            (run.path / INT8_ONNX_FILE).unlink(missing_ok=True)
            if quantize and check.passed:
                spread = np.linspace(0, len(ds.x_train) - 1, CALIBRATION_IMAGES).astype(int)
                check = dataclasses.replace(check, quantized=_quantized(run, (x, y), scale(ds.x_train[spread])))
                run.write_export(check)
        checks[fmt] = check
        if not check.passed:
            failed.append(f"{run.path}: the {fmt} export failed its check against Keras and was not kept: "
                          f"{describe(check)} (needs >= {check.min_same_argmax:.2%} and <= "
                          f"{check.max_diff_allowed:g}); the figures are in {run.path / 'export.json'}")
    if failed:
        raise ExportError("\n".join(failed))
    return checks


def _export_one(run: Run, model, fmt: str, test: tuple[np.ndarray, np.ndarray], source: tuple,
                written: bytes | None = None) -> ExportCheck:
    """Convert (or take `written`, the file's bytes made already), check and (if it passed) publish one format; the
    check is returned either way. test: (x, y); source: (predictor.Outputs of model.keras on x, its SHA-256)."""
    (x, y), (keras_out, source_sha256) = test, source
    reference = keras_out.proba
    started = time.perf_counter()
    final = run.export_path(fmt)
    try:
        with atomic_path(final) as tmp:  # published under its name only if the block ends without an exception
            try:
                if written is None:
                    _convert(model, fmt, tmp, x[:1])
                else:
                    tmp.write_bytes(written)
                exported = _load_exported(fmt, tmp)
            except ModuleNotFoundError as exc:
                raise ExportError(f"exporting to {fmt} needs {exc.name}, which is not installed: "
                                  f"{TRAIN_EXTRA}") from exc
            except (ValueError, RuntimeError, TypeError, OSError) as exc:  # the converters' ways of refusing
                raise ExportError(f"{run.path}: could not convert model.keras to {fmt}: "
                                  f"{type(exc).__name__}: {exc}") from exc
            out = exported.outputs(x)
            proba = out.proba
            same = float(np.mean(proba.argmax(axis=1) == reference.argmax(axis=1)))
            diff = float(np.max(np.abs(proba - reference)))
            passed = bool(same >= MIN_SAME_ARGMAX and diff <= MAX_PROBA_DIFF)  # a NaN difference fails
            feature_diff = None
            if out.features is not None:
                scale_ = max(float(np.max(np.abs(keras_out.features))), 1e-12)
                feature_diff = float(np.max(np.abs(out.features - keras_out.features))) / scale_
                passed = passed and bool(feature_diff <= MAX_FEATURE_DIFF)
            data = tmp.read_bytes()
            check = ExportCheck(
                format=fmt, file=final.name, passed=passed, sha256=hashlib.sha256(data).hexdigest() if passed else None,
                size_bytes=len(data) if passed else None, source_sha256=source_sha256, images=len(x),
                same_argmax=same, max_abs_diff=diff, keras_accuracy=accuracy(y, reference),
                exported_accuracy=accuracy(y, proba), min_same_argmax=MIN_SAME_ARGMAX,
                max_diff_allowed=MAX_PROBA_DIFF, parameters=int(model.count_params()),
                features=out.features is not None, max_feature_diff=feature_diff,
                seconds=round(time.perf_counter() - started, 3), versions=versions(EXPORT_PACKAGES),
                created=dt.datetime.now().isoformat(timespec="seconds"),
                converter="keras" if written is None else "onnx_writer")
            if not passed:
                raise _Rejected(check)  # leaves the block by an exception: atomic_path deletes the file
    except _Rejected as rejected:
        final.unlink(missing_ok=True)  # an earlier export of this format would no longer match export.json
        return rejected.check
    return check


class _Rejected(Exception):
    def __init__(self, check: ExportCheck | QuantizedCheck):
        self.check = check


def _quantized(run: Run, test: tuple[np.ndarray, np.ndarray], calibration: np.ndarray) -> QuantizedCheck:
    """Quantise the run's checked model.onnx to int8 (activation ranges from `calibration`, training images), score
    the copy on the test set against it, time both, and keep the copy as model.int8.onnx only if it passes; the
    check is returned either way (see the module doc)."""
    x, y = test
    started = time.perf_counter()
    source, final = run.export_path("onnx"), run.path / INT8_ONNX_FILE
    float_bytes = source.read_bytes()
    method = "static" if _has_convolutions(float_bytes) else "dynamic"
    base = dict(file=final.name, method=method, calibration_images=len(calibration) if method == "static" else None,
                source_sha256=hashlib.sha256(float_bytes).hexdigest(), max_accuracy_drop=MAX_INT8_ACCURACY_DROP,
                float_size_bytes=len(float_bytes), versions=versions(QUANTIZE_PACKAGES),
                created=dt.datetime.now().isoformat(timespec="seconds"))
    try:
        with atomic_path(final) as tmp:  # published under its name only if the block ends without an exception
            try:
                if method == "static":
                    _quantize_static(source, tmp, calibration)
                else:
                    _quantize_dynamic(source, tmp)
                int8 = Predictor.from_onnx(tmp.read_bytes(), name=final.name)
            except Exception as exc:  # the quantizer has many ways of refusing; none may fail the float export
                raise _Rejected(QuantizedCheck(passed=False, why=_could_not(exc), **base)) from exc
            floating = Predictor.from_onnx(float_bytes, name=source.name)
            out, ref = int8.outputs(x), floating.outputs(x)
            acc, float_acc = accuracy(y, out.proba), accuracy(y, ref.proba)
            drop = float_acc - acc
            feature_diff = None
            if out.features is not None and ref.features is not None:
                scale_ = max(float(np.max(np.abs(ref.features))), 1e-12)
                feature_diff = _finite(float(np.max(np.abs(out.features - ref.features))) / scale_)
            why = ""
            if drop > MAX_INT8_ACCURACY_DROP + 1e-9:  # 1e-9: a drop of exactly 0.1 points, in floating point
                why = (f"its accuracy {acc:.2%} is {drop * 100:.2f} points below model.onnx's {float_acc:.2%} "
                       f"(at most {MAX_INT8_ACCURACY_DROP * 100:g} allowed)")
            elif ref.features is not None and out.features is None:
                why = "it lost the penultimate features output, which the trust model needs"
            timings = _timings(floating, int8, x) if not why else {}
            data = tmp.read_bytes()
            check = QuantizedCheck(
                passed=not why, why=why, sha256=hashlib.sha256(data).hexdigest() if not why else None,
                size_bytes=len(data), images=len(x), accuracy=acc, float_accuracy=float_acc, accuracy_drop=drop,
                same_argmax=float(np.mean(out.proba.argmax(axis=1) == ref.proba.argmax(axis=1))),
                max_proba_diff=_finite(float(np.max(np.abs(out.proba - ref.proba)))),
                features=out.features is not None, max_feature_diff=feature_diff, **timings,
                seconds=round(time.perf_counter() - started, 3), **base)
            if why:
                raise _Rejected(check)  # leaves the block by an exception: atomic_path deletes the file
    except _Rejected as rejected:
        final.unlink(missing_ok=True)
        return dataclasses.replace(rejected.check, seconds=round(time.perf_counter() - started, 3))
    return check


def _could_not(exc: BaseException) -> str:
    return f"onnxruntime.quantization could not make or run it: {type(exc).__name__}: {exc}"


def _has_convolutions(onnx_bytes: bytes) -> bool:
    import onnx  # here: only --quantize needs it
    return any(node.op_type == "Conv" for node in onnx.load_from_string(onnx_bytes).graph.node)


def _quantize_dynamic(source: Path, dest: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic  # here: only --quantize needs it
    with _quiet_root_logger():
        quantize_dynamic(source, dest, weight_type=QuantType.QInt8)


def _quantize_static(source: Path, dest: Path, calibration: np.ndarray) -> None:
    """quantize_static: QOperator nodes (QLinearConv, QLinearMatMul: ORT's fast CPU kernels; its QDQ format ran
    seed-ann 10x slower on one image), int8 weights per channel, uint8 activations (what those kernels take)."""
    import onnx  # here: only --quantize needs these
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    input_name = onnx.load(source).graph.input[0].name

    class Calibration(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{input_name: calibration[i:i + 100]} for i in range(0, len(calibration), 100)])

        def get_next(self):
            return next(self.batches, None)

    with _quiet_root_logger():
        quantize_static(source, dest, Calibration(), quant_format=QuantFormat.QOperator, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


@contextlib.contextmanager
def _quiet_root_logger():
    """The quantizer logs advice (run its pre-processing first) at WARNING on the root logger for every model; the
    check on the test set is what decides, so that advice is not the user's."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _timings(floating: Predictor, int8: Predictor, x: np.ndarray) -> dict[str, float | int]:
    """Per-image microseconds of both models, a batch of TIMED_BATCH and one image alone, both outputs as serve asks
    for them; the models alternate call by call, so that a busy machine slows both alike. Medians: ~1 s in all."""
    batch, one = x[:TIMED_BATCH], x[:1]
    figures = {"batch": len(batch)}
    for name, images, repeats in (("batch", batch, 15), ("single", one, 200)):
        times = {"float": [], "int8": []}
        for i in range(repeats + 3):  # the first calls warm the session up
            for kind, predictor in (("float", floating), ("int8", int8)):
                t0 = time.perf_counter()
                predictor.outputs(images)
                if i >= 3:
                    times[kind].append(time.perf_counter() - t0)
        for kind, seconds in times.items():
            figures[f"{kind}_us_{name}"] = round(float(np.median(seconds)) * 1e6 / len(images), 3)
    return figures


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None  # export.json is strict JSON: no NaN


def _convert(model, fmt: str, path: Path, sample: np.ndarray) -> None:
    if fmt == "onnx":
        _teach_tf2onnx_erfc()
    # Keras prints "Saved artifact at ..." and tf2onnx warns about numpy names; a two-output model built on
    # the saved model's input list warns that one tensor is not a list: none of it is for the user.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model(sample)  # a model must have been called once before Keras can trace it for export
        model.export(str(path), format=fmt, verbose=False)


def _teach_tf2onnx_erfc() -> None:
    """TensorFlow's exact GELU (mlp --activation gelu) computes erfc, which tf2onnx 1.17 passes through as an
    "Erfc" node that ONNX does not have: the file would not load. Map it to 1 - Erf (ONNX opset 9); the two
    differ by less than 1e-7 where erfc is tiny, far inside the check's tolerance."""
    from tf2onnx import constants, utils
    from tf2onnx.handler import tf_op

    if any("Erfc" in ops for ops in tf_op.get_opsets().get(constants.ONNX_DOMAIN, [])):
        return  # tf2onnx knows it (a later version), or we taught it already

    class Erfc:
        @classmethod
        def version_9(cls, ctx, node, **kwargs):
            dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
            one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=dtype))
            erf = ctx.make_node("Erf", [node.input[0]], op_name_scope=node.name)
            node.type = "Sub"
            ctx.replace_inputs(node, [one.output[0], erf.output[0]])

    tf_op("Erfc")(Erfc)


def _load_exported(fmt: str, path: Path) -> Predictor:
    if fmt == "onnx":
        return Predictor.from_onnx(path.read_bytes(), name=path.name)
    return _litert_predictor(path)


def _litert_predictor(path: Path) -> Predictor:
    """A .tflite file run by the LiteRT interpreter (ai-edge-litert if installed, else TensorFlow's copy)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ModuleNotFoundError:
        with warnings.catch_warnings():  # TensorFlow's copy warns that it moved to ai-edge-litert
            warnings.simplefilter("ignore")
            from tensorflow.lite.python.interpreter import Interpreter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = Interpreter(model_path=str(path))
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def forward(x: np.ndarray) -> np.ndarray:
        interpreter.resize_tensor_input(inp["index"], list(x.shape))
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"]).copy()

    return Predictor(forward, name=path.name, runtime="litert")


def describe(check: ExportCheck) -> str:
    """One line of figures: "same top class on 10000/10000 test images, largest probability difference 7e-07"."""
    same = round(check.same_argmax * check.images)
    return (f"same top class on {same}/{check.images} test images ({check.same_argmax:.2%}), largest probability "
            f"difference {check.max_abs_diff:.1g}, accuracy {check.exported_accuracy:.2%} "
            f"(Keras {check.keras_accuracy:.2%})"
            + ("" if check.max_feature_diff is None else
               f", with the penultimate features (largest difference {check.max_feature_diff:.1g} of the largest)"))


def describe_quantized(q: QuantizedCheck) -> str:
    """One line for the int8 copy: its accuracy beside model.onnx's, agreement, size and speed; or why not kept."""
    if q.accuracy is None:
        return f"not kept: {q.why}"
    same = round(q.same_argmax * q.images)
    how = q.method + (f", {q.calibration_images} calibration images" if q.calibration_images else "")
    line = (f"int8 ({how}), accuracy {q.accuracy:.2%} (model.onnx {q.float_accuracy:.2%}, "
            f"{'down' if q.accuracy_drop >= 0 else 'up'} {abs(q.accuracy_drop) * 100:.2f} points), same top class on "
            f"{same}/{q.images}" + (", with the penultimate features" if q.features else ""))
    if not q.passed:
        return f"not kept: {q.why}; {line}"
    return (f"{line}; {q.size_bytes / 1024:,.0f} KB (model.onnx {q.float_size_bytes / 1024:,.0f} KB); per image, "
            f"{q.int8_us_batch:.3g} us in a batch of {q.batch} (model.onnx {q.float_us_batch:.3g} us), "
            f"{q.int8_us_single:.3g} us alone (model.onnx {q.float_us_single:.3g} us)")


# ---------------------------------------------------------------- where the export runs

class ExportHere:
    """The export in this process, of models start_export loaded already: result() converts and checks them."""

    def __init__(self, runs: list[Run], formats: tuple[str, ...], dataset: Dataset | None, sources: list[tuple],
                 quantize: bool = False):
        self.runs, self.formats, self.dataset, self.sources = runs, formats, dataset, sources
        self.quantize = quantize

    def __enter__(self) -> ExportHere:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def result(self) -> list[dict[str, ExportCheck]]:
        failures, results, dataset = [], [], self.dataset
        for run, source in zip(self.runs, self.sources, strict=True):
            if dataset is None or dataset.name != run.config.dataset:
                dataset = load_dataset(run.config.dataset)
            try:
                results.append(_export_checked(run, self.formats, dataset, source, self.quantize))
            except ExportError as exc:
                failures.append(str(exc))
        if failures:
            raise ExportError("\n".join(failures))
        return results


class ExportWorker:
    """`digitlab export` on the TensorFlow backend in a fresh process, started at once; result() waits for it and
    reads back what it recorded. Leaving a `with` block without result() stops it (an interrupted command)."""

    def __init__(self, runs: list[Run], formats: tuple[str, ...], quantize: bool = False):
        self.runs, self.formats = runs, formats
        self.argv = [sys.executable, "-m", "digitlab", "export", *[str(r.path) for r in runs]]
        self.argv += [a for fmt in formats for a in ("--format", fmt)] + (["--quantize"] if quantize else [])
        env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.proc = subprocess.Popen(self.argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def __enter__(self) -> ExportWorker:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # its files are written atomically: a killed export leaves none half-written
            self.proc.communicate()

    def result(self) -> list[dict[str, ExportCheck]]:
        try:
            _, stderr = self.proc.communicate(timeout=WORKER_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            self.stop()
            raise ExportError(f"the export worker took over {WORKER_TIMEOUT_S} s and was stopped: "
                              f"{' '.join(self.argv[1:])}") from exc
        if self.proc.returncode != 0:
            prefix = "digitlab: error: "
            lines = [ln.removeprefix(prefix) for ln in stderr.strip().splitlines()]
            told = [ln for ln in lines if ln] if prefix in stderr else lines[-20:]  # a crash: its traceback's end
            raise ExportError("\n".join(told) or f"the export worker failed with exit status {self.proc.returncode}")
        results = []
        for run in self.runs:
            run.__dict__.pop("exports", None)  # written by the worker
            results.append({fmt: run.exports[fmt] for fmt in self.formats})
        return results
