"""An int8 copy of a run's checked model.onnx (digitlab export --quantize, issue 10), kept only if it passes its check.

    check = quantize_checked(run, (x_test, y_test), calibration_images)   # a QuantizedCheck, kept or not
    describe_quantized(check)                                             # one line for the user

After model.onnx passes its check (digitlab.export), ONNX Runtime's own quantizer makes an int8 copy,
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
import logging
import time
from pathlib import Path

import numpy as np

from digitlab.atomic import atomic_path
from digitlab.environment import versions
from digitlab.predictor import Predictor
from digitlab.runs import INT8_ONNX_FILE, QuantizedCheck, Run
from digitlab.scoring import accuracy

MAX_INT8_ACCURACY_DROP = 0.001  # the int8 copy is kept if its test accuracy is at most 0.1 points below model.onnx's
QUANTIZE_PACKAGES = ("onnx", "onnxruntime")
TIMED_BATCH = 256  # the batch the int8 and float models are timed on, beside one image alone


class _NotKept(Exception):
    def __init__(self, check: QuantizedCheck):
        self.check = check


def quantize_checked(run: Run, test: tuple[np.ndarray, np.ndarray], calibration: np.ndarray) -> QuantizedCheck:
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
                raise _NotKept(QuantizedCheck(passed=False, why=_could_not(exc), **base)) from exc
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
                raise _NotKept(check)  # leaves the block by an exception: atomic_path deletes the file
    except _NotKept as rejected:
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
