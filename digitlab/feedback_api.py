"""The corrections API of `digitlab serve`: tell the model what a digit really was, see the tally, take it back.

    curl -d '{"label": 7, "image": "data:image/png;base64,iVBOR..."}' -H 'Content-Type: application/json' \
        http://127.0.0.1:8000/api/feedback                      # -> {"id": 12, "label": 7, "predicted": 1, ...}
    curl -d '{"label": 7, "pixels": [[0, ...28 x 28...]]}' ...  /api/feedback
    curl http://127.0.0.1:8000/api/feedback/stats               # counts per label, the model's accuracy on them
    curl -X DELETE http://127.0.0.1:8000/api/feedback/12

The server reads the input as /api/predict does and runs the model on it itself: what is stored as the
model's answer is what the live model said, not what a client claims. The row is on disk (digitlab.feedback:
WAL, synchronous=FULL, one transaction) before the 200 goes out.

The database is app.state.feedback_db (set by `digitlab serve --feedback-db PATH`), else the user's
default (digitlab.feedback.default_db_path()); it is opened on the first request that needs it.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import threading
import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from digitlab import preprocessing as pp
from digitlab.errors import DataError
from digitlab.feedback import MAX_ORIGINAL_BYTES, Correction, FeedbackStore

MAX_FEEDBACK_BODY = MAX_ORIGINAL_BYTES * 4 // 3 + 64 * 1024  # the original, base64'd, and the JSON around it

MAX_ROW_ID = 2**63 - 1  # SQLite's largest integer: a larger id is a 422, not an overflow
router = APIRouter()  # in the OpenAPI document: tests/test_fuzz_api.py fuzzes these with a temporary database

Rows = functools.partial(Field, min_length=pp.SIZE, max_length=pp.SIZE)  # as /api/predict's pixels
Pixels01 = Annotated[list[Annotated[list[Annotated[float, Field(ge=0, le=1)]], Rows()]], Rows()]
Pixels255 = Annotated[list[Annotated[list[Annotated[int, Field(ge=0, le=255)]], Rows()]], Rows()]


# Documentation only (the request body's two forms): parse_feedback reads the body, and says what is wrong.
class PixelsFeedback(BaseModel):
    label: int = Field(ge=0, le=9, description="the digit it really is")
    pixels: Pixels01 | Pixels255 = Field(
        description="the digit as /api/predict takes it: 28x28, floats in [0, 1] or integers 0..255")


class ImageFeedback(BaseModel):
    label: int = Field(ge=0, le=9, description="the digit it really is")
    image: str = Field(description=f"an image file's bytes (at most {MAX_ORIGINAL_BYTES}), base64, "
                                   "or as a data: URL; normalised as /api/predict does")


FEEDBACK_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "oneOf": [PixelsFeedback.model_json_schema(), ImageFeedback.model_json_schema()]}}}}}


class FeedbackErrorResponse(BaseModel):
    error: str = Field(description="a short machine-readable kind, e.g. bad_label, no_image, too_large")
    detail: str = Field(description="what was wrong and how to fix it")


def _errors(*codes: tuple[int, str]) -> dict:
    return {code: {"model": FeedbackErrorResponse, "description": why} for code, why in codes}


UNAVAILABLE = (503, "the feedback database cannot be opened or written (the detail says why and what to do)")


class FeedbackAck(BaseModel):
    id: int = Field(description="the stored correction's id (DELETE /api/feedback/{id} removes it)")
    label: int
    predicted: int = Field(description="what the live model answered for this input")
    correct: bool = Field(description="the model's answer was already the label")
    model_sha256: str


class FeedbackStats(BaseModel):
    total: int
    per_label: dict[str, int] = Field(description="corrections per label, '0'..'9'")
    model_correct: int
    model_accuracy: float | None = Field(description="share of the corrections the model already read right")


class FeedbackDeleted(BaseModel):
    deleted: int = Field(description="the id of the correction removed")


class FeedbackError(Exception):
    def __init__(self, status: int, error: str, detail: str):
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.error, "detail": self.detail}, status_code=self.status)


_open_lock = threading.Lock()


def store_of(app) -> FeedbackStore:
    """The app's feedback database, opened once (in a worker thread: opening may create and migrate it)."""
    with _open_lock:
        store = getattr(app.state, "feedback_store", None)
        if store is None:
            store = FeedbackStore.open(getattr(app.state, "feedback_db", None))
            app.state.feedback_store = store
        return store


def model_identity(app) -> tuple[str, str]:
    """(content hash of the served model, run name), computed once."""
    ident = getattr(app.state, "feedback_model", None)
    if ident is None:
        service = app.state.service
        run = service._run  # the Run the service was made from: its model file is the identity
        ident = (run.model_sha256(), service.run_name)
        app.state.feedback_model = ident
    return ident


async def _body(request: Request) -> bytes:
    """The body, at most MAX_FEEDBACK_BODY bytes, counted against the server's body memory (Limits.body_memory:
    beyond it the server's own 503 "busy") while it is read."""
    with request.app.state.service.bodies.hold() as hold:
        return await _read(request, hold)


async def _read(request: Request, hold) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_FEEDBACK_BODY:
        raise FeedbackError(413, "too_large", f"request body is {declared} bytes, over the limit of "
                            f"{MAX_FEEDBACK_BODY}: send an image of at most {MAX_ORIGINAL_BYTES} bytes")
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > MAX_FEEDBACK_BODY:
            raise FeedbackError(413, "too_large", f"request body is over the limit of {MAX_FEEDBACK_BODY} bytes")
        hold.take(len(chunk))
        chunks.append(chunk)
    return b"".join(chunks)


def parse_feedback(body: bytes) -> tuple[int, str, object]:
    """(label, kind, payload): kind "image" with the image's bytes, or "pixels" with the 28x28 list."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise FeedbackError(400, "bad_json", f"the body is not valid JSON ({exc}): send "
                            '{"label": 7, "image": "<base64 PNG or data: URL>"} or {"label": 7, "pixels": [[...]]}') \
            from None
    if not isinstance(doc, dict):
        raise FeedbackError(422, "bad_feedback", 'send a JSON object: {"label": 7, "image": "..."}')
    label = doc.get("label")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= 9:
        raise FeedbackError(422, "bad_label", f'"label" must be the digit it really is, an integer 0..9; got {label!r}')
    if ("image" in doc) == ("pixels" in doc):
        raise FeedbackError(422, "no_image", 'send the digit as "image" (base64 image bytes, or a data: URL) '
                            'or as "pixels" (28 rows of 28 numbers), one of the two')
    if "pixels" in doc:
        pixels = doc["pixels"]
        rows = pixels if isinstance(pixels, list) else []
        if any(isinstance(v, bool) for row in rows if isinstance(row, list) for v in row):  # JSON true is not 1
            raise FeedbackError(422, "bad_image", '"pixels" holds true/false: send numbers, floats in [0, 1] or '
                                "integers 0..255 (as /api/predict takes them)")
        return label, "pixels", pixels
    image = doc["image"]
    if not isinstance(image, str):
        raise FeedbackError(422, "bad_image", '"image" must be a string: base64 image bytes or a data: URL')
    if image.startswith("data:"):
        image = image.partition(",")[2]
    try:
        data = base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        raise FeedbackError(422, "bad_image", '"image" is not valid base64') from None
    if len(data) > MAX_ORIGINAL_BYTES:
        raise FeedbackError(413, "too_large", f"the image is {len(data)} bytes, over the {MAX_ORIGINAL_BYTES} kept")
    return label, "image", data


@router.post("/api/feedback", response_model=FeedbackAck, openapi_extra=FEEDBACK_BODY,
             responses=_errors((400, "the body is not valid JSON"),
                               (413, f"the body or the image is over the limits ({MAX_ORIGINAL_BYTES} bytes kept)"),
                               (422, "a label that is not 0..9, no image (or both), an unreadable image or pixels"),
                               (500, "the model gave no valid answer (details in the server log)"),
                               (503, "the database cannot be written, or the server holds as many request "
                                     "bodies as it may: retry")),
             summary="Store a correction: the digit as sent, what the model saw and said, and the true label")
async def post_feedback(request: Request):
    started = time.perf_counter()
    try:
        label, kind, payload = parse_feedback(await _body(request))
        service = request.app.state.service
        try:
            if kind == "image":
                x = await service.normalise_image(payload)
                original = payload
            else:
                x = pp.from_pixels(payload)
                original = json.dumps(payload, separators=(",", ":")).encode()
        except pp.ImageTooLargeError as exc:
            raise FeedbackError(413, "image_too_large", str(exc)) from None
        except pp.InputImageError as exc:
            raise FeedbackError(422, "bad_image", str(exc)) from None
        if len(original) > MAX_ORIGINAL_BYTES:
            raise FeedbackError(413, "too_large", f"the pixels are {len(original)} bytes as JSON, over the "
                                f"{MAX_ORIGINAL_BYTES} kept")
        prediction = await service.predict(x, started, 0.0)
        sha, run_name = await asyncio.to_thread(model_identity, request.app)
        correction = Correction(label=label, predicted=prediction.digit, probabilities=prediction.probabilities,
                                x28=np.asarray(x), original=original, original_kind=kind, model_sha256=sha,
                                run_name=run_name)
        row_id = await asyncio.to_thread(lambda: store_of(request.app).add(correction))
    except FeedbackError as exc:
        return exc.response()
    except DataError as exc:
        return FeedbackError(503, "feedback_unavailable", str(exc)).response()
    return FeedbackAck(id=row_id, label=label, predicted=prediction.digit, correct=label == prediction.digit,
                       model_sha256=sha)


@router.get("/api/feedback/stats", response_model=FeedbackStats, responses=_errors(UNAVAILABLE),
            summary="Corrections per label, and the model's accuracy on them")
async def feedback_stats(request: Request):
    try:
        stats = await asyncio.to_thread(lambda: store_of(request.app).stats())
    except DataError as exc:
        return FeedbackError(503, "feedback_unavailable", str(exc)).response()
    return FeedbackStats(total=stats.total, per_label={str(k): v for k, v in stats.per_label.items()},
                         model_correct=stats.model_correct, model_accuracy=stats.model_accuracy)


@router.delete("/api/feedback/{row_id}", response_model=FeedbackDeleted,
               responses=_errors((404, "no correction with that id"),
                                 (422, f"the id is not an integer 1..{MAX_ROW_ID}"), UNAVAILABLE),
               summary="Remove one correction (the id POST /api/feedback answered)")
async def delete_feedback(request: Request, row_id: int = Path(ge=1, le=MAX_ROW_ID,
                                                               description="the id POST /api/feedback answered")):
    try:
        gone = await asyncio.to_thread(lambda: store_of(request.app).delete(row_id))
    except DataError as exc:
        return FeedbackError(503, "feedback_unavailable", str(exc)).response()
    if not gone:
        return FeedbackError(404, "not_found", f"no correction with id {row_id}").response()
    return FeedbackDeleted(deleted=row_id)
