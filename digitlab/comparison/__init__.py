"""`digitlab compare`: classic models and registered networks on the same data, in one leaderboard.

    cfg = CompareConfig(models=("logreg", "knn", "seed-ann"), train_size=10_000)
    board = run_comparison(cfg, "runs/compare", progress=lambda event, **info: ...)
    board.rows[0].model, board.rows[0].test_accuracy, board.total_seconds

Every model trains on the same training images (the full 60,000 by default, as the published figures
do; `train_size` or a per-model `max_train` takes the same seeded, stratified subset that
`digitlab train --train-size` takes) and is scored on the same test images. Each gets a folder
out_dir/<model>/ holding the saved model, manifest.json (what it was trained on, how long it took,
the SHA-256 of the saved model, signed with this machine's key) and the core evaluation (confusion
matrix, classification report, report.html). A second run with the same settings loads the saved
models, after checking their SHA-256 against a manifest this machine signed, and only re-evaluates;
a model whose manifest this machine did not sign (a folder copied in) is trained again, never loaded,
unless `trust_folder`. The leaderboard is written as leaderboard.{md,csv,json,html} and
leaderboard.png in out_dir.

The stages, one module each, in the order they run:
    plan.py         the config, its checks (once, before any data loads), each model's plan and re-use
    running.py      training or loading each model, scoring it through a Predictor
    leaderboard.py  the rows and what they were measured on; the Wilson interval
    render.py       Markdown, CSV, JSON, PNG and HTML
    references.py   LeCun's published figures; manifest.py: each model's manifest.json
    signing.py      this machine's key (outside out_dir), which signs and checks the manifests

Importing this package imports neither Keras nor scikit-learn: the CLI reads its tables to build
its parser, and chooses the Keras backend before any network is trained.
"""
from __future__ import annotations

from digitlab.comparison.leaderboard import (
    ROW_FIELDS,
    Z95,
    Leaderboard,
    LoadAverage,
    Meta,
    Row,
    ranked,
    wilson_interval,
)
from digitlab.comparison.manifest import MANIFEST, Manifest, read_manifest, signed_here
from digitlab.comparison.plan import (
    ALIASES,
    CALIBRATION_IMAGES,
    DEFAULT_MODELS,
    QUICK_TRAIN_SIZE,
    CheckedConfig,
    CompareConfig,
    CompareError,
    ModelPlan,
    check_config,
    expand_models,
    model_kind,
    neural_train_config,
    parse_max_train,
    parse_settings,
    plan_comparison,
    plan_models,
)
from digitlab.comparison.references import LECUN_TABLE, NO_REFERENCE, REFERENCES, Reference, published
from digitlab.comparison.render import (
    human_seconds,
    human_size,
    leaderboard_csv,
    leaderboard_html,
    leaderboard_markdown,
    leaderboard_png,
    notes,
    table_rows,
    write_leaderboard,
)
from digitlab.comparison.running import (
    CalibrationSet,
    Fitted,
    Job,
    Progress,
    TestSet,
    calibrate,
    calibration_set,
    clustering_scores,
    run_comparison,
    test_set,
    training_data,
)

__all__ = [
    "ALIASES", "CALIBRATION_IMAGES", "DEFAULT_MODELS", "LECUN_TABLE", "MANIFEST", "NO_REFERENCE", "QUICK_TRAIN_SIZE",
    "REFERENCES", "ROW_FIELDS", "Z95", "CalibrationSet", "CheckedConfig", "CompareConfig", "CompareError", "Fitted",
    "Job", "Leaderboard", "LoadAverage", "Manifest", "Meta", "ModelPlan", "Progress", "Reference", "Row", "TestSet",
    "calibrate", "calibration_set", "check_config", "clustering_scores", "expand_models", "human_seconds",
    "human_size", "leaderboard_csv", "leaderboard_html", "leaderboard_markdown", "leaderboard_png", "model_kind",
    "neural_train_config", "notes", "parse_max_train", "parse_settings", "plan_comparison", "plan_models",
    "published", "ranked", "read_manifest", "run_comparison", "signed_here", "table_rows", "test_set",
    "training_data", "wilson_interval", "write_leaderboard",
]
