"""Switch `digitlab serve` to another run while it serves, dropping no request (Service.switch_to).

    curl -d '{"run": "runs/fastcnn-mine"}' -H 'Content-Type: application/json' http://127.0.0.1:8000/api/admin/reload
    curl -H 'Authorization: Bearer TOKEN' -d '{"run": "..."}' ...      # with `digitlab serve --admin-token TOKEN`

Who may: with a token given at start-up (app.state.admin_token), whoever sends it; without one, only clients
on this machine (loopback). /api/model then shows the new run. The path is read on the server's machine.
"""
from __future__ import annotations

import hmac
import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from digitlab.errors import DigitlabError
from digitlab.runs import open_run

LOOPBACK_CLIENTS = ("127.0.0.1", "::1")
MAX_ADMIN_BODY = 16 * 1024

router = APIRouter(include_in_schema=False)  # an operator's route, not part of the public API document


def _error(status: int, error: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


def allowed(request: Request) -> bool:
    token = getattr(request.app.state, "admin_token", None)
    if token:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(given.encode(), token.encode())
    return request.client is not None and request.client.host in LOOPBACK_CLIENTS


@router.post("/api/admin/reload", summary="Serve another run from now on (loopback or the start-up token)")
async def reload_run(request: Request):
    if not allowed(request):
        return _error(403, "forbidden", "reloading needs the token given to `digitlab serve --admin-token`, "
                      "or a client on the server's own machine")
    body = await request.body()
    if len(body) > MAX_ADMIN_BODY:
        return _error(413, "too_large", f"send {{\"run\": PATH}}, at most {MAX_ADMIN_BODY} bytes")
    try:
        doc = json.loads(body)
    except ValueError as exc:
        return _error(400, "bad_json", f"the body is not valid JSON ({exc}): send {{\"run\": PATH}}")
    if not isinstance(doc, dict) or not isinstance(doc.get("run"), str):
        return _error(422, "bad_request", 'send {"run": "path/to/run"}: the run directory to serve')
    service = request.app.state.service
    try:
        await service.switch_to(open_run(doc["run"]))
    except DigitlabError as exc:  # not a run, a model that can't load or answers NaN: the old one keeps serving
        return _error(422, "bad_run", str(exc))
    request.app.state.feedback_model = None  # corrections now name the new model
    return {"run": service.run_name, "model": service.model_name}
