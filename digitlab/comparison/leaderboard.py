"""The leaderboard as data: one Row per model, what it was measured on (Meta), best model first.

    board = run_comparison(cfg, "runs/compare")
    board.rows[0].model, board.rows[0].test_accuracy, board.rows[0].ci95_low, board.rows[0].ece, board.total_seconds
    wilson_interval(9800, 10_000)        # (0.97707, 0.98257): the 95% interval of a 98.00% accuracy

The rows' fields, in order, are the columns of leaderboard.csv (ROW_FIELDS); leaderboard.json holds
`{"rows": [...], "meta": {...}}` (digitlab.comparison.render writes both).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from digitlab.comparison.plan import CompareConfig

Z95 = 1.959963984540054  # standard normal quantile for a two-sided 95% interval (scipy's ndtri(0.975))
CLUSTERING_FIELDS = ("train_accuracy", "ari_train", "nmi_train", "ari_test", "nmi_test")


@dataclass(frozen=True)
class Row:
    """One model's line. Rates are fractions (0.98, not 98%); times are seconds."""
    rank: int | None  # 1 = best test accuracy; None until every model has run
    model: str
    kind: str  # "classic", "clustering" or "neural"
    test_accuracy: float
    ci95_low: float  # Wilson 95% interval of test_accuracy
    ci95_high: float
    test_errors: int
    test_images: int
    train_images: int
    train_seconds: float  # as measured when the model was trained, re-used or not
    predict_seconds_per_10k: float
    size_bytes: int  # the saved model file
    published_accuracy: float | None  # digitlab.comparison.references; None where there is none
    published_delta: float | None  # test_accuracy - published_accuracy
    published_method: str
    published_source: str
    reused: bool  # loaded from an earlier run (SHA-256 checked), not trained now
    test_loss: float
    macro_f1: float
    # k-means only: majority-vote accuracy on its own training images, and how well its clusters
    # match the digits (adjusted Rand index, normalised mutual information)
    train_accuracy: float | None = None
    ari_train: float | None = None
    nmi_train: float | None = None
    ari_test: float | None = None
    nmi_test: float | None = None
    description: str = ""
    # calibration, fitted on the held-out calibration images (None without them): top-label ECE (15 bins) on the
    # test images of the calibrated probabilities, and of the model's own; the calibrated test loss; the map
    ece: float | None = None
    ece_uncalibrated: float | None = None
    test_loss_calibrated: float | None = None
    calibration: str | None = None  # "temperature scaling, T = 0.87" (networks), "isotonic regression per class"


ROW_FIELDS = [f.name for f in dataclasses.fields(Row)]


def row_json(row: Row) -> dict:
    """A row as leaderboard.json holds it: the k-means figures only on k-means rows."""
    doc = dataclasses.asdict(row)
    if row.kind != "clustering":
        for key in CLUSTERING_FIELDS:
            doc.pop(key)
    return doc


@dataclass(frozen=True)
class LoadAverage:
    start: list[float] | None  # os.getloadavg() over 1, 5 and 15 minutes, when the comparison started
    end: list[float] | None  # ... and when it ended: the cores are shared, so timings depend on it


@dataclass(frozen=True)
class Meta:
    config: CompareConfig
    models: list[str]  # in the order they ran
    dataset: dict  # the data's provenance (digitlab.data.Dataset.provenance): name, source, sha256
    train_images_full: int  # the whole training set, which the published figures use
    test_images: int
    machine: dict  # digitlab.environment.machine_info()
    load_average: LoadAverage
    versions: dict[str, str]
    keras_backend: str | None  # None when no network ran
    total_seconds: float
    created: str  # local time, "2026-11-26 07:15:00"
    calibration_images: int = 0  # training images held out of every model's training to calibrate it


@dataclass(frozen=True)
class Leaderboard:
    rows: list[Row]  # best test accuracy first
    meta: Meta
    dataset: str  # its name: "mnist", "fashion-mnist"
    total_seconds: float = 0.0


def ranked(rows: list[Row]) -> list[Row]:
    """Best test accuracy first (ties keep the order they ran in), numbered from 1."""
    best_first = sorted(rows, key=lambda r: -r.test_accuracy)
    return [dataclasses.replace(r, rank=rank) for rank, r in enumerate(best_first, 1)]


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion: sound near 0 and 1, unlike p +- z*sqrt(p(1-p)/n)."""
    if n <= 0:
        return 0.0, 1.0
    from scipy.stats import binomtest  # here: scipy.stats takes half a second to import, the CLI's parser imports us

    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)
