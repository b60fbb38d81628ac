"""Evaluation artefacts agree with independent references (scikit-learn) and the report stands alone."""
from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix
from sklearn.metrics import log_loss as sk_log_loss

from digitlab.evaluation import classification_metrics, confused_pairs, misclassified_order, write_evaluation


def _fake_predictions(n=600, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    logits = rng.normal(size=(n, 10))
    logits[np.arange(n), y] += 2.0  # mostly right, with real mistakes
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, proba.astype(np.float32)


def test_metrics_match_scikit_learn():
    y, proba = _fake_predictions()
    m = classification_metrics(y, proba, [str(i) for i in range(10)])
    pred = proba.argmax(1)
    assert m["test_accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["test_loss"] == pytest.approx(sk_log_loss(y, proba, labels=range(10)), rel=1e-4)
    assert np.array_equal(np.array(m["confusion_matrix"]), confusion_matrix(y, pred, labels=range(10)))
    assert m["test_errors"] == int((pred != y).sum())


def test_confused_pairs_ranked():
    cm = np.eye(3, dtype=int) * 10
    cm[0, 2], cm[1, 0], cm[2, 1] = 5, 7, 1
    pairs = confused_pairs(cm, ["a", "b", "c"])
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("b", "a", 7), ("a", "c", 5), ("c", "b", 1)]


def test_misclassified_most_confident_first():
    y = np.array([0, 1, 2, 0])
    proba = np.array([[0.1, 0.9, 0], [0, 1, 0], [0.6, 0, 0.4], [0.95, 0.05, 0]], dtype=np.float32)
    assert misclassified_order(y, proba).tolist() == [0, 2]


def test_trained_run_artefacts(trained_run, trained_predictor, mnist):
    path = trained_run.path
    metrics = json.loads((path / "metrics.json").read_text())
    assert 0.93 <= metrics["test_accuracy"] < 1.0, "a 3-epoch seed-ann on 12k images reaches about 96%"
    with (path / "confusion_matrix.csv").open() as f:
        rows = list(csv.reader(f))[1:]
    cm = np.array([[int(v) for v in r[1:]] for r in rows])
    assert cm.sum() == len(mnist.y_test) == 10000
    pred = trained_predictor.predict_proba(mnist.x_test / np.float32(255)).argmax(1)
    assert np.array_equal(cm, confusion_matrix(mnist.y_test, pred))
    assert metrics["test_errors"] == cm.sum() - np.trace(cm)
    report = json.loads((path / "classification_report.json").read_text())
    assert report["7"]["support"] == int((mnist.y_test == 7).sum())
    for name in ("loss.png", "accuracy.png", "confusion_matrix.png", "misclassified.png"):
        assert (path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (path / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "report must open from disk with no network"
    assert "Data provenance" in html and metrics["test_accuracy"] > 0


def test_write_evaluation_for_any_model(tmp_path):
    y, proba = _fake_predictions(200)
    x = np.random.default_rng(0).integers(0, 255, (200, 28, 28), dtype=np.uint8)
    summary = write_evaluation(tmp_path, y, proba, x, [str(i) for i in range(10)])
    assert (tmp_path / "report.html").exists() and not (tmp_path / "loss.png").exists()
    assert summary.test_images == 200
    assert "->" in (tmp_path / "confused_pairs.txt").read_text()


def test_report_text_is_scikit_learns_layout():
    from sklearn.metrics import classification_report

    from digitlab.evaluation import report_text
    y, proba = _fake_predictions(300)
    pred = proba.argmax(1)
    names = [str(i) for i in range(10)]
    expected = classification_report(y, pred, target_names=names, digits=4, zero_division=0)
    as_dict = classification_report(y, pred, target_names=names, output_dict=True, zero_division=0)
    assert report_text(as_dict, names) == expected
