"""One inference path: images in, class probabilities out, whatever holds the model.

    predictor = Predictor.from_run(open_run("runs/..."))    # a trained run or an ensemble
    proba = predictor.predict_proba(x)     # (n, 28, 28) float32 in [0, 1] -> (n, 10) float32
    predictor.top_k(proba[0])              # [(7, 0.98), (1, 0.01), (9, 0.004)]

`evaluate`, `predict`, `serve` (which batches requests around it), `ensemble` and `compare` all
score through a Predictor, so a change of runtime (ONNX Runtime, say) happens here once.
"""
from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from digitlab.errors import ModelLoadError
from digitlab.runs import DIGITS, Run
from digitlab.scoring import top_k

PREDICT_CHUNK = 2048  # images per forward pass when scoring many: bounds the activations' memory
TOP_K = 3

Forward = Callable[[np.ndarray], np.ndarray]  # (n, 28, 28) float32 -> (n, classes) probabilities


class Predictor:
    """A model as a function from a batch of 28x28 images to class probabilities."""

    def __init__(self, forward: Forward, class_names=DIGITS, name: str = "model", runtime: str = "keras",
                 parameters: int | None = None, keras_model=None):
        self._forward = forward
        self.class_names = list(class_names)
        self.name = name
        self.runtime = runtime  # "keras", "sklearn", ...: what runs the forward pass
        self.parameters = parameters
        self.keras_model = keras_model  # the Keras model when there is one (diagnostics, export)

    @classmethod
    def from_run(cls, run: Run) -> Predictor:
        model = load_keras_model(run.model_path)
        return cls.from_keras(model, class_names=run.class_names, name=run.config.model)

    @classmethod
    def from_keras(cls, model, class_names=DIGITS, name: str | None = None) -> Predictor:
        # predict_on_batch, not predict(): the latter costs ~30 ms a call on TensorFlow.
        return cls(lambda x: model.predict_on_batch(x), class_names, name or model.name, "keras",
                   int(model.count_params()), keras_model=model)

    @classmethod
    def from_estimator(cls, predict_proba: Forward, class_names=DIGITS, name: str = "model") -> Predictor:
        """A scikit-learn style model whose predict_proba takes (n, 28, 28) images (digitlab.classic)."""
        return cls(predict_proba, class_names, name, "sklearn")

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(n, 28, 28) images scaled to [0, 1] -> (n, classes) float32 probabilities, in chunks."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 3:
            raise ValueError(f"expected a batch of 2-D images (n, 28, 28), got shape {x.shape}")
        if len(x) == 0:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        parts = [np.asarray(self._forward(x[i:i + PREDICT_CHUNK])) for i in range(0, len(x), PREDICT_CHUNK)]
        return np.concatenate(parts).astype(np.float32)

    __call__ = predict_proba

    @staticmethod
    def top_k(p: np.ndarray, k: int = TOP_K) -> list[tuple[int, float]]:
        return top_k(p, k)


def load_keras_model(path: str | Path):
    """A .keras file, loaded with safe_mode (no embedded code); ModelLoadError says why one can't be."""
    import keras  # here, not at the top: the inference path imports Keras only when it runs a Keras model

    path = Path(path)
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras and h5py raise ValueError, OSError, JSONDecodeError, KeyError...
        raise ModelLoadError(unloadable_message(path, exc)) from exc


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
