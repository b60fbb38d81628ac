"""Classic (non-neural) models for `digitlab compare`: scikit-learn and XGBoost on flattened pixels.

    model = build_classic("knn", seed=0)                  # an unfitted estimator, hyperparameters from CLASSIC
    model = fit_classic(model, flatten(x_train), y_train)
    proba = predict_proba(model, flatten(x_test))         # (n, 10) class probabilities (the svm's: see there)
    path, sha = save_classic(model, folder)               # model.joblib or model.ubj, and its SHA-256
    model = load_classic(path, sha)                       # refuses a file whose SHA-256 differs

Every model sees the pixels the network sees (`digitlab.data.scale`: float32 in [0, 1]), flattened
to 784 features. `digitlab compare` calibrates each model's probabilities on held-out images:

    calibrator = fit_calibrator(predict_proba(model, x_cal), y_cal)   # isotonic, one class against the rest
    calibrated = calibrator(predict_proba(model, x_test))             # (n, 10), rows summing to 1

Isotonic regression (scikit-learn's CalibratedClassifierCV on the frozen model), not temperature
scaling: kNN's and the forest's probabilities are vote shares, and the SVM's a softmax of vote counts,
which one temperature cannot calibrate (measured in docs/trust.md).

All hyperparameters live in CLASSIC below, one comment each; `k-means-N` names any
number of clusters. The models use at most N_JOBS cores. On shared cores set OMP_WAIT_POLICY=PASSIVE
before scikit-learn is imported (`digitlab compare` does): OpenMP threads that spin while waiting
made XGBoost 5x slower on this project's busy 2-core machine.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digitlab.atomic import atomic_path
from digitlab.data import NUM_CLASSES
from digitlab.errors import USAGE, ConfigError, DigitlabError
from digitlab.scoring import softmax_rows

N_JOBS = 2  # worker threads per model (trees, neighbour search, OpenMP loops): the project's machines have 2
# BLAS threads (matrix products inside L-BFGS and k-means). One, because OpenBLAS threads spin while they
# wait: with 2 of them on 2 cores shared with other work, logistic regression on 2,000 images took 7.8 s
# instead of 0.17 s (measured on this project's machine under a load of 3). Both apply at fit and predict.
BLAS_THREADS = 1


@dataclass(frozen=True)
class ClassicSpec:
    name: str
    description: str
    estimator: str  # which constructor build_classic uses (see _constructors)
    params: dict  # constructor keyword arguments: the hyperparameters, each commented where defined


CLASSIC: dict[str, ClassicSpec] = {
    "logreg": ClassicSpec("logreg", "multinomial logistic regression (softmax), L2 penalty", "logreg", dict(
        C=1.0,          # inverse L2 strength; on [0, 1] pixels 0.1-10 all land within 0.2 points
        solver="lbfgs",
        max_iter=200,   # L-BFGS iterations; accuracy is flat from ~100, full convergence takes minutes more
    )),
    "knn": ClassicSpec("knn", "k-nearest neighbours, k=3, Euclidean distance, majority vote", "knn", dict(
        n_neighbors=3,       # k=3: the usual choice for MNIST; k=1 and k=5 lose about 0.1 point
        metric="euclidean",  # L2 on raw pixels, as in LeCun's table
        algorithm="brute",   # trees do not help in 784 dimensions; brute force is BLAS matrix products
        n_jobs=N_JOBS,
    )),
    "svm": ClassicSpec("svm", "support vector machine, Gaussian (RBF) kernel, one-vs-one", "svm", dict(
        kernel="rbf",
        C=10.0,             # soft-margin penalty; 5-10 is the known sweet spot on [0, 1] MNIST pixels
        gamma="scale",      # 1 / (784 * pixel variance) ~= 0.013 on MNIST
        cache_size=2000,    # MB of kernel cache: libsvm is single-threaded, caching is what speeds it up
    )),
    "rf": ClassicSpec("rf", "random forest, 100 fully grown trees, sqrt(784) features per split", "rf", dict(
        n_estimators=100,   # trees; 300 adds ~0.2 point for 3x the time and size
        max_features="sqrt",
        n_jobs=N_JOBS,
    )),
    "xgboost": ClassicSpec("xgboost", "gradient-boosted trees (XGBoost, histogram method), softmax objective",
                           "xgboost", dict(
        n_estimators=200,   # boosting rounds (each builds 10 trees, one per class)
        max_depth=6,        # XGBoost's default depth
        learning_rate=0.3,  # XGBoost's default shrinkage; with 200 rounds it has converged
        tree_method="hist",
        max_bin=64,         # histogram bins per pixel; 256 is slower and no better on 8-bit pixels
        n_jobs=N_JOBS,
    )),
}

# k-means with k clusters, each labelled by the majority vote of its training labels.
KMEANS_DEFAULT_CLUSTERS = (10, 64, 256)  # 10: one per digit; more clusters capture writing styles
KMEANS_PARAMS = dict(
    n_init=3,      # k-means++ restarts, the best (lowest inertia) kept
    max_iter=100,  # Lloyd iterations per restart; MNIST converges in well under 100
)
_KMEANS_NAME = re.compile(r"^kmeans-(\d+)$")


def kmeans_name(n_clusters: int) -> str:
    return f"kmeans-{n_clusters}"


def classic_spec(name: str) -> ClassicSpec | None:
    """The spec for a classic model name ("knn", "kmeans-64", ...), or None if it is not one."""
    if name in CLASSIC:
        return CLASSIC[name]
    match = _KMEANS_NAME.match(name)
    if not match:
        return None
    k = int(match.group(1))
    if k < NUM_CLASSES:
        raise ConfigError(f"{name}: k-means needs at least {NUM_CLASSES} clusters (one per class), got {k}")
    return ClassicSpec(name, f"k-means, {k} clusters, each labelled by majority vote (unsupervised)",
                       "kmeans", dict(n_clusters=k, **KMEANS_PARAMS))


def classic_names() -> list[str]:
    return list(CLASSIC) + [kmeans_name(k) for k in KMEANS_DEFAULT_CLUSTERS]


def is_clustering(name: str) -> bool:
    spec = classic_spec(name)
    return spec is not None and spec.estimator == "kmeans"


def flatten(x: np.ndarray) -> np.ndarray:
    """(n, 28, 28) images already scaled to [0, 1] -> (n, 784) float32 feature rows."""
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(len(x), -1))


# ---------------------------------------------------------------- building and fitting

class ClusterClassifier:
    """k-means on the training images; a cluster predicts the label distribution of its training images.

    The argmax of that distribution is the cluster's majority label, so accuracy is the usual
    "label each cluster by majority vote" figure; the distribution itself gives honest probabilities.
    """

    def __init__(self, n_clusters: int = 10, n_init: int = 3, max_iter: int = 100, random_state: int = 0):
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, x: np.ndarray, y: np.ndarray) -> ClusterClassifier:
        from sklearn.cluster import KMeans
        self.kmeans_ = KMeans(n_clusters=self.n_clusters, n_init=self.n_init, max_iter=self.max_iter,
                              random_state=self.random_state).fit(x)  # the labels are not used here
        counts = np.zeros((self.n_clusters, NUM_CLASSES))
        np.add.at(counts, (self.kmeans_.labels_, np.asarray(y, dtype=int)), 1)
        # Add-one smoothing: an unseen label in a cluster is unlikely, not impossible (finite log loss).
        smoothed = counts + 1.0
        self.cluster_proba_ = smoothed / smoothed.sum(axis=1, keepdims=True)  # (k, 10)
        self.cluster_label_ = counts.argmax(axis=1)  # majority vote; same argmax as the smoothed rows
        self.classes_ = np.arange(NUM_CLASSES)
        return self

    def clusters(self, x: np.ndarray) -> np.ndarray:
        return self.kmeans_.predict(x)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.cluster_proba_[self.clusters(x)]

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.cluster_label_[self.clusters(x)]


def _constructors() -> dict[str, Callable]:
    # Imported here: scikit-learn and XGBoost take a second or two to import, and the CLI starts fast.
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC
    from xgboost import XGBClassifier
    return {"logreg": LogisticRegression, "knn": KNeighborsClassifier, "svm": SVC,
            "rf": RandomForestClassifier, "xgboost": XGBClassifier, "kmeans": ClusterClassifier}


SEEDED = {"logreg", "rf", "xgboost", "kmeans", "svm"}  # estimators with a random_state


def resolved_params(name: str, overrides: dict | None = None) -> dict:
    """The spec's hyperparameters with `overrides` applied; an unknown name or key is a ConfigError."""
    spec = classic_spec(name)
    if spec is None:
        raise ConfigError(f"{name!r} is not a classic model; known: {', '.join(classic_names())}")
    params = dict(spec.params)
    for key, value in (overrides or {}).items():
        if key not in params:
            raise ConfigError(f"{name} has no setting {key!r}; settable: {', '.join(params)}")
        params[key] = value
    return params


def build_classic(name: str, seed: int = 0, overrides: dict | None = None):
    """An unfitted estimator for classic model `name`, seeded where it has randomness."""
    spec = classic_spec(name)
    params = resolved_params(name, overrides)
    if spec.estimator in SEEDED:
        params["random_state"] = seed
    return _constructors()[spec.estimator](**params)


def fit_classic(model, x: np.ndarray, y: np.ndarray, on_round: Callable[[int, int], None] | None = None):
    """Fit `model` on (n, 784) features; `on_round(done, total)` reports XGBoost's boosting rounds."""
    if _is_xgboost(model) and on_round is not None:
        model.set_params(callbacks=[_round_callback(on_round, model.get_params()["n_estimators"])])
    with thread_limits(), _quiet_convergence():
        model.fit(x, y)
    if _is_xgboost(model):
        model.set_params(callbacks=None)  # a callback object must not travel into the saved model
    return model


def predict_proba(model, x: np.ndarray) -> np.ndarray:
    """(n, 784) -> (n, 10). An SVM without Platt scaling has no probabilities: its one-vs-rest
    decision values (vote counts plus a confidence below 1/3) go through a softmax. Their argmax is
    the SVM's prediction, but they are scores, not probabilities, until calibrated (fit_calibrator)."""
    with thread_limits():
        if hasattr(model, "predict_proba"):
            return np.asarray(model.predict_proba(x), dtype=np.float32)
        scores = np.asarray(model.decision_function(x), dtype=np.float64)
    return softmax_rows(scores).astype(np.float32)


CALIBRATION = "isotonic"  # CalibratedClassifierCV's method for the classic models: see fit_calibrator


def fit_calibrator(proba: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A calibration map fitted on held-out probabilities (n, classes) and their labels: per class, an isotonic
    regression of "is this class" on its probability (one against the rest), the rows renormalised. The map may
    change the top class of a near tie: the model's own predictions stay the ones to score accuracy on."""
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    class GivenProbabilities(ClassifierMixin, BaseEstimator):
        """A classifier whose input is its probabilities: the model's, computed once (the SVM and kNN are slow)."""

        def fit(self, x, y):
            self.classes_ = np.arange(x.shape[1])
            return self

        def predict_proba(self, x):
            return x

        def predict(self, x):
            return x.argmax(axis=1)

    proba = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y).astype(int)
    frozen = FrozenEstimator(GivenProbabilities().fit(proba, y))
    calibrated = CalibratedClassifierCV(frozen, method=CALIBRATION).fit(proba, y)
    return lambda p: calibrated.predict_proba(np.asarray(p, dtype=np.float64)).astype(np.float32)


@contextlib.contextmanager
def thread_limits():
    """BLAS_THREADS for BLAS, N_JOBS for OpenMP, for the duration of a fit or a prediction."""
    from threadpoolctl import threadpool_limits
    with threadpool_limits(BLAS_THREADS, user_api="blas"), threadpool_limits(N_JOBS, user_api="openmp"):
        yield


def _is_xgboost(model) -> bool:
    return type(model).__module__.startswith("xgboost")


def _round_callback(on_round, total: int):
    import xgboost

    class RoundProgress(xgboost.callback.TrainingCallback):
        def after_iteration(self, model, epoch, evals_log):
            on_round(epoch + 1, total)
            return False  # False: keep training

    return RoundProgress()


@contextlib.contextmanager
def _quiet_convergence():
    # L-BFGS stops at max_iter by design (see CLASSIC["logreg"]); the warning would only alarm users.
    from sklearn.exceptions import ConvergenceWarning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


# ---------------------------------------------------------------- saving and loading

JOBLIB_FILE = "model.joblib"
XGBOOST_FILE = "model.ubj"  # XGBoost's own format (universal binary JSON): data, not code
JOBLIB_COMPRESS = 3  # zlib level: kNN stores its 60,000 training images; this shrinks them ~6x


class ModelIntegrityError(DigitlabError, RuntimeError):
    """A saved model's bytes differ from the SHA-256 recorded when it was saved; the message names --retrain."""

    exit_code = USAGE  # as before the common base: the fix is an argument (--retrain)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_classic(model, folder: str | Path) -> tuple[Path, str]:
    """Save a fitted model into `folder`; return its path and SHA-256 (for the manifest)."""
    folder = Path(folder)
    if _is_xgboost(model):
        path = folder / XGBOOST_FILE
        with atomic_path(path) as tmp:
            model.save_model(str(tmp))
    else:
        import joblib
        path = folder / JOBLIB_FILE
        with atomic_path(path) as tmp:
            joblib.dump(model, tmp, compress=JOBLIB_COMPRESS)
    return path, sha256_file(path)


def load_classic(path: str | Path, expected_sha256: str):
    """Load a model saved by save_classic, only if its SHA-256 matches the one recorded at save time.

    joblib files are pickles, and unpickling runs code: a file swapped or altered since we wrote it
    must never reach joblib.load. The bytes are read once, hashed, and loaded from memory, so the file
    can't change between the check and the load. The check is only as good as `expected_sha256`:
    `digitlab compare` takes it from a manifest signed with this machine's key
    (digitlab.comparison.signing), never from an unsigned one beside the model. model.ubj is
    XGBoost's own format, parsed as data by XGBoost, never unpickled.
    """
    path = Path(path)
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise ModelIntegrityError(
            f"{path} has SHA-256 {actual[:16]}..., but {expected_sha256[:16]}... was recorded when it was saved: "
            f"the file changed since. Refusing to load it; pass --retrain to train it again (or delete {path.parent}).")
    if path.name == XGBOOST_FILE:
        from xgboost import XGBClassifier
        model = XGBClassifier()
        model.load_model(bytearray(data))  # a bytearray is read as a model in memory, its format detected
        return model
    import joblib
    return joblib.load(io.BytesIO(data))  # runs pickle code: only bytes whose hash was recorded by us
