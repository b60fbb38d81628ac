"""Corrections (digitlab.feedback, /api/feedback): stored as sent, counted, deleted, kept across kill -9,
and never lost or doubled when many clients and processes write at once."""
from __future__ import annotations

import base64
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from digitlab.cli import main
from digitlab.errors import DataError
from digitlab.feedback import MAX_ORIGINAL_BYTES, SCHEMA_VERSION, Correction, FeedbackStore, default_db_path
from digitlab.serving import create_app


def drawn_one_png() -> bytes:
    """A "1" drawn dark on light, as the page's canvas sends it."""
    import io
    im = Image.new("L", (280, 280), 255)
    ImageDraw.Draw(im).line([(140, 40), (140, 240)], fill=0, width=22)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


ONE = drawn_one_png()


def one_correction(label=7, predicted=1) -> Correction:
    x = np.zeros((28, 28), np.float32)
    x[4:24, 13:15] = 1.0
    return Correction(label=label, predicted=predicted, probabilities=[0.1] * 10, x28=x, original=b"png",
                      model_sha256="abc")


# ---------------------------------------------------------------- the store

def test_store_adds_reads_counts_and_deletes(tmp_path):
    with FeedbackStore.open(tmp_path / "fb.sqlite") as store:
        a = store.add(one_correction(label=7, predicted=1))
        b = store.add(one_correction(label=1, predicted=1))
        got = store.get(a)
        assert (got.label, got.predicted, got.original, got.model_sha256) == (7, 1, b"png", "abc")
        assert got.x28.dtype == np.uint8 and got.x28[10, 13] == 255 and got.x28[10, 0] == 0
        stats = store.stats()
        assert (stats.total, stats.per_label[7], stats.per_label[1], stats.model_correct) == (2, 1, 1, 1)
        assert stats.model_accuracy == 0.5
        assert store.delete(a) and not store.delete(a)
        assert store.count() == 1 and store.get(b).label == 1
        x, y = store.arrays()
        assert x.shape == (1, 28, 28) and x.dtype == np.float32 and list(y) == [1]
    db = sqlite3.connect(tmp_path / "fb.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_store_refuses_bad_corrections(tmp_path):
    with FeedbackStore.open(tmp_path / "fb.sqlite") as store:
        with pytest.raises(DataError, match="label"):
            store.add(one_correction(label=10))
        with pytest.raises(DataError, match="over the"):
            store.add(Correction(label=1, predicted=1, probabilities=[0.1] * 10, x28=np.zeros((28, 28)),
                                 original=b"x" * (MAX_ORIGINAL_BYTES + 1)))
        assert store.count() == 0


def test_an_older_database_is_migrated_and_a_newer_one_refused(tmp_path):
    old = tmp_path / "v1.sqlite"
    with FeedbackStore.open(old) as store:
        store.add(one_correction())
    db = sqlite3.connect(old)  # as version 1 left it: the table, no index
    db.execute("DROP INDEX corrections_label")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with FeedbackStore.open(old) as store:
        assert store.count() == 1
    db = sqlite3.connect(old)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'corrections_label'").fetchone()
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(DataError, match="upgrade digitlab"):
        FeedbackStore.open(old)
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(DataError, match="not a digitlab feedback database"):
        FeedbackStore.open(tmp_path / "junk.sqlite")


def test_default_path_is_the_users_data_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("DIGITLAB_DATA_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_db_path() == tmp_path / "xdg" / "digitlab" / "feedback.sqlite"
    monkeypatch.setenv("DIGITLAB_DATA_HOME", str(tmp_path / "mine"))
    assert default_db_path() == tmp_path / "mine" / "feedback.sqlite"


WRITER = """
import sys
from digitlab.feedback import Correction, FeedbackStore
import numpy as np
store = FeedbackStore.open(sys.argv[1])
for i in range(int(sys.argv[2])):
    store.add(Correction(label=i % 10, predicted=0, probabilities=[0.1] * 10, x28=np.zeros((28, 28)),
                         original=f"{sys.argv[3]}-{i}".encode()))
"""


def test_concurrent_processes_and_threads_lose_and_double_nothing(tmp_path):
    db, per = tmp_path / "fb.sqlite", 40
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(per), f"p{k}"], stderr=subprocess.PIPE)
             for k in range(4)]
    with FeedbackStore.open(db) as store, ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: store.add(Correction(label=i % 10, predicted=0, probabilities=[0.1] * 10,
                                                     x28=np.zeros((28, 28)), original=f"t-{i}".encode())),
                      range(per)))
        for p in procs:
            assert p.wait(timeout=120) == 0, p.stderr.read().decode()
        originals = [c.original for c in store.corrections()]
    expected = {f"{who}-{i}".encode() for who in ("t", "p0", "p1", "p2", "p3") for i in range(per)}
    assert len(originals) == len(expected) and set(originals) == expected


# ---------------------------------------------------------------- the API

@pytest.fixture()
def client(trained_run, tmp_path):
    app = create_app(trained_run.path, max_batch=8)
    app.state.feedback_db = tmp_path / "fb.sqlite"
    with TestClient(app) as c:
        yield c


def test_api_stores_what_was_sent_and_what_the_model_said(client, trained_run, trained_predictor, tmp_path):
    r = client.post("/api/feedback", json={"label": 7, "image": base64.b64encode(ONE).decode()})
    assert r.status_code == 200, r.text
    ack = r.json()
    predicted = client.post("/api/predict", content=ONE, headers={"Content-Type": "image/png"}).json()
    assert ack["predicted"] == predicted["digit"] and ack["label"] == 7 and ack["correct"] is (predicted["digit"] == 7)
    assert ack["model_sha256"] == trained_run.model_sha256()
    pixels = (np.eye(28)[::-1] * 255).astype(int).tolist()
    r2 = client.post("/api/feedback", json={"label": 3, "pixels": pixels})
    assert r2.status_code == 200, r2.text
    with FeedbackStore.open(tmp_path / "fb.sqlite") as store:
        row = store.get(ack["id"])
        assert row.original == ONE and row.original_kind == "image" and row.label == 7
        assert np.allclose(row.probabilities, predicted["probabilities"], atol=1e-5)
        assert row.run_name == trained_run.path.name and row.created
        px = store.get(r2.json()["id"])
        assert px.original_kind == "pixels" and json.loads(px.original) == pixels
        assert np.array_equal(px.x28, np.array(pixels, np.uint8))

    stats = client.get("/api/feedback/stats").json()
    assert stats["total"] == 2 and stats["per_label"]["7"] == 1 and stats["per_label"]["3"] == 1
    assert stats["model_correct"] == int(ack["correct"]) + int(r2.json()["correct"])
    assert client.delete(f"/api/feedback/{ack['id']}").status_code == 200
    assert client.delete(f"/api/feedback/{ack['id']}").status_code == 404
    assert client.get("/api/feedback/stats").json()["total"] == 1


@pytest.mark.parametrize("body, status, error", [
    ({"label": 10, "image": base64.b64encode(ONE).decode()}, 422, "bad_label"),
    ({"label": "7", "image": base64.b64encode(ONE).decode()}, 422, "bad_label"),
    ({"label": True, "image": base64.b64encode(ONE).decode()}, 422, "bad_label"),
    ({"image": base64.b64encode(ONE).decode()}, 422, "bad_label"),
    ({"label": 7}, 422, "no_image"),
    ({"label": 7, "image": "@@not base64@@"}, 422, "bad_image"),
    ({"label": 7, "image": base64.b64encode(b"not a picture").decode()}, 422, "bad_image"),
    ({"label": 7, "pixels": [[0, 1]]}, 422, "bad_image"),
    ({"label": 7, "pixels": [[True] * 28] * 28}, 422, "bad_image"),  # JSON true is not the pixel 1, as in /api/predict
    ([1, 2], 422, "bad_feedback"),
])
def test_api_refuses_bad_feedback_and_stores_nothing(client, body, status, error):
    r = client.post("/api/feedback", json=body)
    assert (r.status_code, r.json()["error"]) == (status, error), r.text
    assert r.json()["detail"]
    assert client.get("/api/feedback/stats").json()["total"] == 0


def test_api_refuses_ids_sqlite_cannot_hold(client):
    for bad in ("0", "-3", str(2**63), "seven"):
        r = client.delete(f"/api/feedback/{bad}")
        assert (r.status_code, r.json()["error"]) == (422, "invalid_request"), (bad, r.text)
    assert client.delete(f"/api/feedback/{2**63 - 1}").status_code == 404


def test_routes_are_documented_with_their_models(client):
    paths = client.get("/openapi.json").json()["paths"]
    post = paths["/api/feedback"]["post"]
    forms = post["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    assert [sorted(f["required"]) for f in forms] == [["label", "pixels"], ["image", "label"]]
    assert post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/FeedbackAck")
    assert {"400", "413", "422", "503"} <= set(post["responses"])
    stats = paths["/api/feedback/stats"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert stats["$ref"].endswith("/FeedbackStats")
    delete = paths["/api/feedback/{row_id}"]["delete"]
    assert delete["parameters"][0]["schema"]["minimum"] == 1 and {"200", "404", "422"} <= set(delete["responses"])


def test_api_refuses_bad_json_and_oversize(client):
    r = client.post("/api/feedback", content=b'{"label": 7, "image": ', headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json()["error"]) == (400, "bad_json")
    big = base64.b64encode(b"\0" * (MAX_ORIGINAL_BYTES + 10)).decode()
    r = client.post("/api/feedback", json={"label": 7, "image": big})
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    r = client.post("/api/feedback", content=b"x" * (3 * MAX_ORIGINAL_BYTES), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert client.get("/api/feedback/stats").json()["total"] == 0


# ---------------------------------------------------------------- a real server, many clients, kill -9

def test_acknowledged_corrections_survive_load_and_kill_9(trained_run, tmp_path):
    db = tmp_path / "fb.sqlite"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "digitlab", "serve", str(trained_run.path), "--port", str(port),
                             "--feedback-db", str(db)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    url = f"http://127.0.0.1:{port}"
    body = {"label": 7, "image": base64.b64encode(ONE).decode()}
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "the server did not start"
            try:
                httpx.get(f"{url}/api/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        with httpx.Client(timeout=30) as http, ThreadPoolExecutor(16) as pool:  # 16 clients, 64 corrections
            answers = list(pool.map(lambda i: http.post(f"{url}/api/feedback", json={**body, "label": i % 10}),
                                    range(64)))
            assert [a.status_code for a in answers] == [200] * 64, [a.text for a in answers if a.status_code != 200]
            last = http.post(f"{url}/api/feedback", json=body)
            assert last.status_code == 200
        proc.send_signal(signal.SIGKILL)  # the moment after the acknowledgement
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ids = [a.json()["id"] for a in answers] + [last.json()["id"]]
    assert len(set(ids)) == 65
    with FeedbackStore.open(db) as store:
        rows = {c.id: c.label for c in store.corrections()}
    assert rows == {**{a.json()["id"]: i % 10 for i, a in enumerate(answers)}, last.json()["id"]: 7}


# ---------------------------------------------------------------- the CLI

def test_cli_stats_and_export(tmp_path, capsys):
    db = tmp_path / "fb.sqlite"
    with FeedbackStore.open(db) as store:
        for label in (7, 7, 1):
            store.add(one_correction(label=label, predicted=1))
    assert main(["feedback", "stats", str(db)]) == 0
    out = capsys.readouterr().out
    assert "corrections: 3" in out and "1 of 3 right (33.3%)" in out
    assert main(["feedback", "export", str(db), str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out" / "7").iterdir()) == ["000001.png", "000002.png"]
    assert [p.name for p in (tmp_path / "out" / "1").iterdir()] == ["000003.png"]
    assert main(["feedback", "stats", str(tmp_path / "missing.sqlite")]) == DataError.exit_code
    assert "no feedback database" in capsys.readouterr().err


# ---------------------------------------------------------------- the page

@pytest.mark.browser
def test_page_corrects_a_misread_digit_and_the_stats_change(trained_run, tmp_path, ci):
    """Draw on the page, press the digit key for the right answer: the correction is stored, the stats move."""

    from browser_support import chromium, open_page, served, strokes_on
    app = create_app(trained_run.path)
    app.state.feedback_db = tmp_path / "fb.sqlite"
    with served(app) as url, chromium(ci) as browser:
        _, page, _ = open_page(browser, url)
        assert page.locator("#feedback").is_hidden()  # nothing read yet: nothing to correct
        strokes_on(page, "#canvas", [[(0.5, 0.15), (0.5, 0.85)]], steps=12)
        page.wait_for_function("document.body.dataset.busy === 'false' && +document.body.dataset.answers > 0")
        read = int(page.locator("#digit").get_attribute("data-digit"))
        label = 4 if read != 4 else 9  # whatever it read, the user says it was something else
        assert page.locator("#feedback").is_visible()
        page.locator("#canvas").focus()
        page.keyboard.press(str(label))
        page.wait_for_function("document.querySelector('#feedback').dataset.total === '1'")
        assert f"kept as a {label}" in page.locator("#feedback-status").text_content()
    with FeedbackStore.open(tmp_path / "fb.sqlite") as store:
        rows = list(store.corrections())
    assert [(c.label, c.predicted, c.original_kind) for c in rows] == [(label, read, "image")]
    assert rows[0].original.startswith(b"\x89PNG")
