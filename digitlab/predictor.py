"""One inference path: images in, class probabilities and a verdict out, whatever holds the model.

    predictor = Predictor.from_run(open_run("runs/..."))    # a trained run or an ensemble, with its trust model
    proba = predictor.predict_proba(x)     # (n, 28, 28) float32 in [0, 1] -> (n, 10) float32, calibrated
    judged = predictor.judge(x)            # .proba (calibrated), .verdicts: digit / unsure / not_a_digit
    judged.verdicts[0].text()              # "7", "unsure: 7 or 1?", "not a digit"
    out = predictor.outputs(x)             # the model's own probabilities (uncalibrated) and penultimate features
    predictor.top_k(proba[0])              # [(7, 0.98), (1, 0.01), (9, 0.004)]

`evaluate`, `predict`, `serve` (which batches requests around it), `ensemble` and `compare` all
score through a Predictor, so the runtime is chosen here once: ONNX Runtime when the run holds a
model.onnx that passed its check against Keras (digitlab.export) and still matches it, else Keras.
The ONNX path imports neither TensorFlow, JAX nor Keras: it needs only `pip install digitlab`.

Trust (issue 11, docs/trust.md): `from_run` attaches the run's fitted TrustModel (trust.json, fitted by
`digitlab evaluate`), so `predict_proba` gives calibrated probabilities and `judge` a verdict per image. The
verdict's OOD score (Mahalanobis distance) needs the penultimate features, the input of the model's final
Dense(softmax) layer: on Keras a two-output sub-model gives them in the same forward pass; an exported
model.onnx outputs them second. A run without a trust model is judged by trust.UNFITTED (its own
probabilities, `unsure` below p = 0.5, never `not_a_digit`), and `from_run` says so once.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import os
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digitlab.errors import ModelLoadError, RunError
from digitlab.runs import DIGITS, Run
from digitlab.scoring import top_k
from digitlab.trust import UNFITTED, TrustModel, Verdict

PREDICT_CHUNK = 2048  # images per forward pass when scoring many: bounds the activations' memory
TOP_K = 3

Forward = Callable[[np.ndarray], np.ndarray]  # (n, 28, 28) float32 -> (n, classes) probabilities
# (n, 28, 28) float32 -> ((n, classes) probabilities, (n, d) penultimate features), one forward pass
FeatureForward = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
RUNTIMES = ("auto", "onnx", "keras")  # Predictor.from_run: the checked ONNX file if there is one / it / model.keras
TRAIN_EXTRA = "pip install 'digitlab[train]'"  # what brings Keras, TensorFlow and JAX

log = logging.getLogger(__name__)
_told: set[str] = set()  # what this process has already explained, once per run: a fallback to Keras, no trust model


@dataclass(frozen=True)
class Outputs:
    """One forward pass over a batch: the model's own probabilities, and its penultimate features when asked for
    and the runtime has them."""
    proba: np.ndarray  # (n, classes) float32, uncalibrated
    features: np.ndarray | None = None  # (n, d) float32: the input of the final Dense(softmax) layer


@dataclass(frozen=True)
class Judgement:
    """What the product shows for a batch: calibrated probabilities and one verdict per image."""
    proba: np.ndarray  # (n, classes) float32, calibrated by the trust model
    verdicts: list[Verdict]


class Predictor:
    """A model as a function from a batch of 28x28 images to class probabilities (and verdicts)."""

    def __init__(self, forward: Forward, class_names=DIGITS, name: str = "model", runtime: str = "keras",
                 parameters: int | None = None, keras_model=None, features: FeatureForward | None = None,
                 trust: TrustModel | None = None):
        self._forward = forward
        self._features = features  # None: this runtime gives no penultimate features
        self.class_names = list(class_names)
        self.name = name
        self.runtime = runtime  # "keras", "sklearn", ...: what runs the forward pass
        self.parameters = parameters
        self.keras_model = keras_model  # the Keras model when there is one (diagnostics, export)
        self.trust = trust  # the fitted trust model (from_run attaches the run's); None: trust.UNFITTED judges

    @classmethod
    def from_run(cls, run: Run, runtime: str = "auto", trust: bool = True) -> Predictor:
        """The run's model: with "auto", ONNX Runtime when the run has a checked model.onnx, else Keras (saying
        why once per run and process); "keras" always runs model.keras (evaluation, diagnostics); "onnx" never.
        With `trust`, the run's fitted trust model is attached (calibrated probabilities, verdicts)."""
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        fitted = run_trust(run) if trust else None
        if runtime != "keras":
            onnx, why = checked_onnx(run)
            if onnx is not None:
                try:
                    predictor = cls.from_onnx(onnx, class_names=run.class_names, name=run.config.model,
                                              parameters=run.exports["onnx"].parameters, trust=fitted)
                except ModuleNotFoundError as exc:  # installed without its dependencies (pip --no-deps)
                    why = f"{exc.name} is not installed (pip install onnxruntime)"
                else:
                    if fitted is None or not fitted.needs_features or predictor.has_features:
                        return predictor
                    why = (f"its model.onnx does not output the penultimate features, which the trust model's "
                           f"{fitted.method} score needs (it was exported before issue 11)")
            if runtime == "onnx":
                raise RunError(f"cannot run {run.path} on ONNX Runtime: {why}")
        try:
            model = load_keras_model(run.model_path)
        except ModelLoadError as exc:
            if runtime == "auto" and run.export_path("onnx").exists():  # say too why the ONNX file was not used
                raise ModelLoadError(f"{exc} (its model.onnx was not used: {why})") from exc
            raise
        if runtime == "auto":
            _tell_once(f"onnx:{run.path}", f"{run.path}: {why}; running model.keras on Keras instead (slower to "
                       f"start: it loads TensorFlow or JAX). `digitlab export {run.path}` writes a checked model.onnx.")
        return cls.from_keras(model, class_names=run.class_names, name=run.config.model, trust=fitted)

    @classmethod
    def from_onnx(cls, model: bytes | str | Path, class_names=DIGITS, name: str = "model",
                  parameters: int | None = None, trust: TrustModel | None = None) -> Predictor:
        """An ONNX model (its bytes or path) taking (n, 28, 28) float32 images, run by ONNX Runtime on the CPU.
        Its first output is the probabilities; a second one, when there is one, the penultimate features
        (digitlab.export writes both)."""
        import onnxruntime as ort  # here: a Keras-only caller need not load it

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: its warnings are about graph optimisations, not the user's
        # One thread that sleeps when idle: these networks are small (fastcnn, a batch of 64: 1.2 ms on one
        # thread, 2.4 ms on two, on the shared 2-core machine), and a spinning pool takes the CPU that the
        # server's event loop and image decoding need.
        options.intra_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                           providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NoSuchFile types
            raise ModelLoadError(f"cannot load the ONNX model {name} ({type(exc).__name__}: {exc}); "
                                 f"export the run again with `digitlab export RUN`") from exc
        input_name = session.get_inputs()[0].name
        names = [o.name for o in session.get_outputs()]

        def both(x):
            proba, feats = session.run(names[:2], {input_name: x})
            return proba, feats

        return cls(lambda x: session.run(names[:1], {input_name: x})[0], class_names, name, "onnxruntime",
                   parameters, features=both if len(names) >= 2 else None, trust=trust)

    @classmethod
    def from_keras(cls, model, class_names=DIGITS, name: str | None = None,
                   trust: TrustModel | None = None) -> Predictor:
        # predict_on_batch, not predict(): the latter costs ~30 ms a call on TensorFlow.
        two = []  # the two-output model [probabilities, features], built on first use (None: no softmax head)

        def both(x):
            if not two:
                two.append(features_model(model))
            return _in_bucket(two[0].predict_on_batch, x)

        return cls(lambda x: _in_bucket(model.predict_on_batch, x), class_names, name or model.name, "keras",
                   int(model.count_params()), keras_model=model,
                   features=both if head_layer(model) is not None else None, trust=trust)

    @classmethod
    def from_estimator(cls, predict_proba: Forward, class_names=DIGITS, name: str = "model") -> Predictor:
        """A scikit-learn style model whose predict_proba takes (n, 28, 28) images (digitlab.classic)."""
        return cls(predict_proba, class_names, name, "sklearn")

    @property
    def has_features(self) -> bool:
        """Whether outputs() can give the penultimate features (a softmax-headed model, on Keras or ONNX)."""
        return self._features is not None

    @property
    def trust_model(self) -> TrustModel:
        """The trust model verdicts come from: the fitted one, else trust.UNFITTED."""
        return self.trust if self.trust is not None else UNFITTED

    def outputs(self, x: np.ndarray, features: bool = True) -> Outputs:
        """(n, 28, 28) images scaled to [0, 1] -> the model's own (uncalibrated) probabilities, and its features
        when `features` and the runtime has them; in chunks of PREDICT_CHUNK, one forward pass each."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 3:
            raise ValueError(f"expected a batch of 2-D images (n, 28, 28), got shape {x.shape}")
        want = features and self._features is not None
        if len(x) == 0:
            return Outputs(np.zeros((0, len(self.class_names)), dtype=np.float32),
                           np.zeros((0, 0), dtype=np.float32) if want else None)
        probs, feats = [], []
        for i in range(0, len(x), PREDICT_CHUNK):
            if want:
                p, f = self._features(x[i:i + PREDICT_CHUNK])
                feats.append(np.asarray(f, dtype=np.float32))
            else:
                p = self._forward(x[i:i + PREDICT_CHUNK])
            probs.append(np.asarray(p))
        return Outputs(np.concatenate(probs).astype(np.float32), np.concatenate(feats) if want else None)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(n, 28, 28) images scaled to [0, 1] -> (n, classes) float32 probabilities, calibrated by the trust
        model when there is one (the model's own otherwise: outputs() gives those always)."""
        proba = self.outputs(x, features=False).proba
        return proba if self.trust is None else self.trust.calibrate(proba)

    __call__ = predict_proba

    def judge(self, x: np.ndarray) -> Judgement:
        """Calibrated probabilities and a verdict (digit / unsure / not_a_digit) per image, from one forward pass.
        (`blank` is decided before any model runs: preprocessing's NoInkError, trust.BLANK.)"""
        trust = self.trust_model
        out = self.outputs(x, features=trust.needs_features)
        if len(out.proba) == 0:
            return Judgement(out.proba, [])
        if trust.needs_features and out.features is None:
            raise RunError(f"the trust model's {trust.method} score needs the penultimate features, which this "
                           f"{self.runtime} model does not give: export the run again (`digitlab export RUN`)")
        return Judgement(trust.calibrate(out.proba), trust.judge(out.proba, out.features))

    def with_thresholds(self, confidence: float | None = None, ood: float | None = None) -> Predictor:
        """A copy judging with user-chosen thresholds (`--threshold`, `--ood-threshold`); None keeps the fitted."""
        other = copy.copy(self)
        other.trust = self.trust_model.with_thresholds(confidence, ood)
        return other

    @staticmethod
    def top_k(p: np.ndarray, k: int = TOP_K) -> list[tuple[int, float]]:
        return top_k(p, k)


def run_trust(run: Run) -> TrustModel | None:
    """The run's fitted trust model, or None (saying why once per run and process) when it has none that fits
    its model.keras: not evaluated since issue 11, or trained since it was fitted."""
    try:
        trust = run.trust
    except RunError as exc:
        why = str(exc)
    else:
        if trust is not None and (trust.model_sha256 is None or trust.model_sha256 == run.model_sha256()):
            return trust
        why = ("it has no trust model (trust.json): it was evaluated by a digitlab before issue 11, or not at all"
               if trust is None else "its trust.json was fitted for an earlier model.keras (the run changed since)")
    _tell_once(f"trust:{run.path}", f"{run.path}: {why}; its probabilities are not calibrated and no input is called "
               f"'not a digit'. `digitlab evaluate {run.path}` fits a trust model.")
    return None


def _tell_once(key: str, message: str) -> None:
    if key not in _told:
        _told.add(key)
        log.warning(message)


def head_layer(keras_model):
    """The model's final Dense layer with a softmax activation, whose input is the penultimate features; else None
    (an ensemble ends in an Average)."""
    import keras
    layer = keras_model.layers[-1] if keras_model.layers else None
    if isinstance(layer, keras.layers.Dense) and getattr(layer.activation, "__name__", "") == "softmax":
        return layer
    return None


def features_model(keras_model):
    """A Keras model with outputs [probabilities, penultimate features] (one forward pass gives both; the export
    writes it to ONNX), or None when the model has no softmax head."""
    import keras
    head = head_layer(keras_model)
    if head is None:
        return None
    return keras.Model(keras_model.inputs, [keras_model.outputs[0], head.input], name=f"{keras_model.name}_features")


def checked_onnx(run: Run) -> tuple[bytes | None, str]:
    """The run's model.onnx as bytes if export.json says it passed its check and both it and model.keras are
    still the files that were checked; else None and why not. The bytes hashed are the bytes loaded."""
    try:
        check = run.exports.get("onnx")
    except RunError as exc:
        return None, str(exc)
    if check is None:
        return None, "no model.onnx has been exported"
    if not check.passed:
        return None, (f"its ONNX export failed the check against Keras (same top class on {check.same_argmax:.4%} "
                      f"of {check.images} test images, largest probability difference {check.max_abs_diff:.2g})")
    path = run.export_path("onnx")
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"export.json lists {path.name} but it can't be read ({exc.strerror or exc})"
    if hashlib.sha256(data).hexdigest() != check.sha256:
        return None, f"{path.name} is not the file that was checked (its SHA-256 differs from export.json's)"
    if run.model_sha256() != check.source_sha256:
        return None, f"{path.name} was exported from an earlier model.keras (the run has been trained since)"
    return data, "checked"


def load_keras_model(path: str | Path):
    """A .keras file, loaded with safe_mode (no embedded code); ModelLoadError says why one can't be."""
    try:
        import keras  # here, not at the top: the inference path imports Keras only when it runs a Keras model
    except ModuleNotFoundError as exc:
        raise ModelLoadError(f"running {path} needs Keras, which this installation lacks ({exc.name} is not "
                             f"installed): {TRAIN_EXTRA}, or export the run to ONNX where Keras is installed "
                             "(`digitlab export RUN`)") from exc

    keep_tensorflow_unimported()
    path = Path(path)
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras and h5py raise ValueError, OSError, JSONDecodeError, KeyError...
        raise ModelLoadError(unloadable_message(path, exc)) from exc


def _in_bucket(forward, x: np.ndarray):
    """forward(x), run on x padded with blank images to the next power of two: Keras compiles its forward pass
    once per batch shape (0.1-0.2 s each on JAX), and an evaluation's sets and last chunks came in a dozen sizes;
    in buckets a process compiles a handful. Padding rows change no other row's output (inference mode)."""
    n = len(x)
    size = 1 << max(n - 1, 0).bit_length()
    if size == n:
        return forward(x)
    padded = np.concatenate([x, np.zeros((size - n, *x.shape[1:]), dtype=x.dtype)])
    out = forward(padded)
    return [o[:n] for o in out] if isinstance(out, (list, tuple)) else out[:n]


def keep_tensorflow_unimported() -> None:
    """Keras asks its lazy `tf.available` before checking whether an object is a TensorFlow one (reading a layer's
    config, saving, seeding); that imports TensorFlow whenever it is installed: 1.8 s and 500 MB in a process whose
    Keras runs on JAX. No TensorFlow object exists before TensorFlow is imported, so until then the answer is no."""
    import keras
    from keras.src.utils import module_utils

    class TensorflowOnceImported(module_utils.LazyModule):
        @property
        def available(self):
            return "tensorflow" in sys.modules and super().available

    if keras.backend.backend() != "tensorflow" and type(module_utils.tensorflow) is module_utils.LazyModule:
        module_utils.tensorflow.__class__ = TensorflowOnceImported  # the one object every Keras module shares


def unloadable_message(path: Path, exc: Exception) -> str:
    # Keras answers "File not found" for any file that isn't a zip archive, even one that exists.
    if not path.exists():
        why = "no such file"
    elif path.is_dir():
        why = "it is a folder, not a model file"
    elif not os.access(path, os.R_OK):
        why = "no permission to read it"
    elif not zipfile.is_zipfile(path):
        why = "it is not a .keras (zip) archive: truncated, overwritten or not a model"
    else:
        why = f"{type(exc).__name__}: {exc}"
    return (f"cannot load the model {path} ({why}); train the run again with `digitlab train`, "
            f"or pass another run directory")
