"""Switching `digitlab serve` to another run while it serves (POST /api/admin/reload, Service.switch_to)."""
from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from fastapi.testclient import TestClient

from digitlab.serving import create_app


def test_reload_switches_runs_without_dropping_requests(trained_run, mnist, tmp_path):
    newer = tmp_path / "newer-run"
    shutil.copytree(trained_run.path, newer)
    app = create_app(trained_run.path, max_batch=8)
    app.state.admin_token = "s3cret"
    pixels = {"pixels": (mnist.x_test[0]).astype(int).tolist()}
    with TestClient(app) as client:
        assert client.get("/api/model").json()["run"] == trained_run.path.name
        # TestClient's address is not loopback: without the token, no
        r = client.post("/api/admin/reload", json={"run": str(newer)})
        assert r.status_code == 403
        r = client.post("/api/admin/reload", json={"run": str(tmp_path / "nope")},
                        headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 422 and r.json()["error"] == "bad_run"
        assert client.post("/api/predict", json=pixels).status_code == 200  # the old model still serves

        with ThreadPoolExecutor(8) as pool:
            during = [pool.submit(client.post, "/api/predict", json=pixels) for _ in range(120)]
            r = client.post("/api/admin/reload", json={"run": str(newer)}, headers={"Authorization": "Bearer s3cret"})
            answers = [f.result() for f in during]
        assert r.status_code == 200 and r.json()["run"] == "newer-run", r.text
        assert [a.status_code for a in answers] == [200] * 120
        probabilities = {tuple(np.round(a.json()["probabilities"], 5)) for a in answers}
        assert len(probabilities) == 1  # the same weights on both sides of the switch: one answer
        assert client.get("/api/model").json()["run"] == "newer-run"
        assert client.get("/api/health").json()["run"] == "newer-run"
        after = client.post("/api/predict", json=pixels).json()
        assert tuple(np.round(after["probabilities"], 5)) in probabilities


def test_who_may_reload():
    from types import SimpleNamespace

    from digitlab.admin_api import allowed

    def request(host, token=None, header=""):
        return SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(admin_token=token)),
                               headers={"authorization": header} if header else {}, client=SimpleNamespace(host=host))

    assert allowed(request("127.0.0.1")) and allowed(request("::1"))
    assert not allowed(request("192.168.1.20"))
    assert allowed(request("192.168.1.20", "tok", "Bearer tok"))
    assert not allowed(request("127.0.0.1", "tok"))  # with a token, loopback needs it too
    assert not allowed(request("192.168.1.20", "tok", "Bearer wrong"))
