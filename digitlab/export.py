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

int8 (--quantize): digitlab.quantize makes and checks an int8 copy of model.onnx once it passed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import io
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
from digitlab.quantize import quantize_checked
from digitlab.runs import EXPORT_FILES, INT8_ONNX_FILE, ExportCheck, Run
from digitlab.scoring import accuracy

FORMATS = tuple(EXPORT_FILES)  # ("onnx", "litert")
MIN_SAME_ARGMAX = 0.9999  # share of test images on which the exported model must pick Keras' top class
MAX_PROBA_DIFF = 1e-4  # largest allowed |exported - Keras| class probability, any image, any class
MAX_FEATURE_DIFF = 1e-4  # largest allowed |exported - Keras| penultimate feature, over the largest |feature|
EXPORT_PACKAGES = ("keras", "tensorflow-cpu", "tensorflow", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert")
CALIBRATION_IMAGES = 300  # training images, spread over the split, that set the int8 copy's activation ranges
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
    None), as _sources_here gives them; with `quantize`, model.onnx's int8 copy too (digitlab.quantize)."""
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
                check = dataclasses.replace(check, quantized=quantize_checked(run, (x, y), scale(ds.x_train[spread])))
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
    def __init__(self, check: ExportCheck):
        self.check = check


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
