"""README: the server runs the model in one worker thread, "so the event loop stays free".

A live uvicorn server whose model is held mid-forward-pass until the test lets it go: meanwhile a
health request must be answered, and the prediction must still arrive afterwards. Were the model run on
the event loop, the health request would wait for it and time out.
"""
from __future__ import annotations

import socket
import threading
import time

import httpx
import numpy as np
import pytest

from digitlab.predictor import Predictor
from digitlab.serving import create_app

WAIT_S = 30  # generous bounds for a busy machine; the test passes as soon as the conditions hold


@pytest.fixture
def held_model(monkeypatch):
    """A Predictor whose forward pass on a real digit blocks until `release` is set (warm-up passes, all
    zeros, go straight through)."""
    running, release = threading.Event(), threading.Event()

    def forward(x):
        if x.any():
            running.set()
            assert release.wait(WAIT_S), "the test never released the model"
        return np.full((len(x), 10), 0.1, np.float32)

    predictor = Predictor(forward, name="held", runtime="numpy")
    monkeypatch.setattr(Predictor, "from_run", classmethod(lambda cls, run: predictor))
    yield running, release
    release.set()


@pytest.fixture
def server(trained_run, held_model):
    import uvicorn
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(trained_run.path), log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    held_model[1].set()
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def test_health_is_answered_while_the_model_runs(server, held_model, mnist):
    running, release = held_model
    answer = {}

    def predict():
        answer["response"] = httpx.post(server + "/api/predict", json={"pixels": mnist.x_test[0].tolist()},
                                        timeout=WAIT_S)

    client = threading.Thread(target=predict)
    client.start()
    assert running.wait(WAIT_S), "the prediction never reached the model"
    health = httpx.get(server + "/api/health", timeout=5)  # the forward pass is still going on
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert client.is_alive() and "response" not in answer, "the prediction finished before the model was released"
    release.set()
    client.join(WAIT_S)
    assert answer["response"].status_code == 200
    assert answer["response"].json()["probabilities"] == pytest.approx([0.1] * 10)
