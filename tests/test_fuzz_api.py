"""Property-based fuzzing of the HTTP API against its own OpenAPI document (schemathesis, in-process ASGI).

Every operation gets generated requests in two modes: positive (what the schema allows: JSON pixels of
every shape the schema admits, random bytes as image uploads, any `index`) and negative (what it forbids:
wrong types, missing fields, bad query values). Whatever comes in, the server must answer without a 5xx,
with a status code, content type, headers and body that its document declares; a 200 prediction holds
10 finite probabilities (the schema says numbers, so a NaN sent as `null` fails it).
The corrections routes (/api/feedback) write to a temporary database of this module's app: each of their
runs must leave it sound (SQLite's integrity check, every row readable) and changed by exactly the rows
the 200s say were stored or deleted.

Seeded and bounded: EXAMPLES per operation and mode, a few hundred requests in all.
(schemathesis.pytest.from_fixture needs a pytest internal that pytest 9 dropped, so the strategies are
drawn with hypothesis directly.)
"""
from __future__ import annotations

import sqlite3

import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from digitlab.feedback import FeedbackStore
from digitlab.feedback_api import store_of
from digitlab.serving import create_app

EXAMPLES = 80  # per operation and mode: 7 operations x 2 modes x 80 - 2 -> about 1,000 requests
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
OPERATIONS = [("/api/predict", "POST"), ("/api/sample", "GET"), ("/api/model", "GET"), ("/api/health", "GET"),
              ("/api/feedback", "POST"), ("/api/feedback/stats", "GET"), ("/api/feedback/{row_id}", "DELETE")]
NO_INPUTS = {("/api/model", "GET"), ("/api/health", "GET"), ("/api/feedback/stats", "GET")}  # positive mode only


@pytest.fixture(scope="module")
def app(trained_run, tmp_path_factory):
    app = create_app(trained_run.path, max_batch=8)
    app.state.feedback_db = tmp_path_factory.mktemp("fuzz-feedback") / "feedback.sqlite"  # never the user's
    return app


@pytest.fixture(scope="module")
def api(app):
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def sound_rows(store: FeedbackStore) -> int:
    """The database passes SQLite's integrity check and every row reads back as a correction; how many."""
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    rows = list(store.corrections())
    assert all(0 <= c.label <= 9 and 0 <= c.predicted <= 9 and c.x28.shape == (28, 28) for c in rows)
    assert len({c.id for c in rows}) == len(rows) == store.stats().total
    return len(rows)


def test_every_operation_is_fuzzed(api):
    assert {(op.ok().path, op.ok().method.upper()) for op in api.get_all_operations()} == set(OPERATIONS)


@pytest.mark.parametrize(("path", "method", "mode"), [
    (path, method, mode) for path, method in OPERATIONS for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if not (mode is GenerationMode.NEGATIVE and (path, method) in NO_INPUTS)], ids=str)
def test_generated_requests_get_declared_answers(app, api, path, method, mode):
    operation = api[path][method]
    seen = []
    store = store_of(app)  # the module's temporary feedback database
    rows_before = sound_rows(store)

    @seed(15)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case):
        response = case.call()
        seen.append(response.status_code)
        case.validate_response(response, checks=CHECKS)  # no 5xx; status, type, headers, body as declared
        if response.status_code == 200 and path == "/api/predict":
            assert len(response.json()["probabilities"]) == 10

    check()
    assert seen and max(seen) < 500
    stored = seen.count(200) if (path, method) == ("/api/feedback", "POST") else 0
    deleted = seen.count(200) if method == "DELETE" else 0
    assert sound_rows(store) == rows_before + stored - deleted  # each 200 one row in or out, nothing else
    if path == "/api/predict":
        if mode is GenerationMode.POSITIVE:
            assert 200 in seen  # the fuzzing reached the model, not only the input checks
        else:
            assert min(seen) >= 400  # a request the schema forbids is never read as a digit
    if (path, method, mode) == ("/api/feedback", "POST", GenerationMode.POSITIVE):
        assert 200 in seen  # the fuzzing reached the database, not only the input checks
