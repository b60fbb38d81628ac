"""The web app and HTTP API: a trained run served with FastAPI, digits normalised as MNIST was made.

    app = create_app("runs/20261126-071500-seed-ann-s0")     # then: uvicorn, or TestClient(app)
    digitlab serve runs/... --port 8000                       # the same, from the command line

    curl -F file=@seven.png http://127.0.0.1:8000/api/predict
    curl --data-binary @seven.png -H 'Content-Type: image/png' http://127.0.0.1:8000/api/predict
    curl -d '{"pixels": [[0, 0, ...28 x 28...]]}' -H 'Content-Type: application/json' .../api/predict

Routes: `/` the drawing page (digitlab/static), `POST /api/predict`, `GET /api/model`, `GET /api/health`,
`GET /api/sample` (a random test digit and the model's answer), `/report` (the run's report.html),
`/docs` (OpenAPI). Every bad input gets a 4xx `{"error": kind, "detail": what to do}`.

    curl --data-binary @meter.png -H 'Content-Type: image/png' '.../api/predict?mode=number'   # "1207", boxes

`mode` (query): `digit`, the default, reads the picture as one digit and answers a Prediction, as before,
plus its `verdict` (issue 11: digit / unsure with best guess and runner-up / not_a_digit, from the run's
trust model through Predictor.judge, in the same batched forward pass). `number` reads the digits left to
right (digitlab.numbers, at most MAX_DIGITS) and `auto` decides by the ink; both answer a NumberPrediction
(text, confidence, per digit its box in the picture's pixels, probabilities and verdict) with the content
type NUMBER_MEDIA_TYPE, so that application/json keeps the single-digit schema. A picture with no ink stays
a 422 `no_digit`, as it always was here, with `"verdict": "blank"` added: `digitlab predict` calls it blank.

Speed: the model (a digitlab.predictor.Predictor) runs in one worker thread, so the event loop keeps
reading requests while it works, and requests that arrive during a forward pass share the next one
(micro-batching; batches are padded to a few fixed sizes so JAX and TensorFlow compile each size once,
at start-up). Image decoding and normalisation run in other threads, at most PREPROCESS_CONCURRENCY at
a time: that bounds the CPU decoding takes and the memory of decoded images, not the upload bytes.
The run is read once, at start-up (config, metrics, report): what /api/model, /api/health and /report
show is what is loaded and serving, whatever happens to the run folder afterwards.

Limits (Limits; an adversarial probe found each one missing, issue 15): the request bodies held in memory,
all requests together, are at most Limits.body_memory bytes (beyond it: 503 with Retry-After); a body must
arrive within body_timeout_s (else 408 and the connection closes); a connection waiting on its client
(a request head, the rest of a body the app did not read) closes after idle_timeout_s; a request line and
headers over max_head_bytes get 431, cut off as they arrive (GuardedHttpToolsProtocol: uvicorn's httptools
protocol, whose parser alone has no limit and costs quadratic CPU on a huge header; h11, which has one, is
pure Python and served a quarter fewer requests); at most max_connections connections are served (uvicorn's
limit_concurrency).
`server_config(app)` gives uvicorn these settings: `digitlab serve` and the tests run the app through it.

What a client sees of the server: the run as /api/model shows it (file names, not paths), the report
without the run state and the environment (library versions, the kernel), and generic error details; the
specifics go to the server log. With allowed_hosts (on by default for a loopback bind), a request whose
Host header names another host is refused with 400: a web page whose name resolves to 127.0.0.1 (DNS
rebinding) cannot use a server on this machine.
"""
from __future__ import annotations

import asyncio
import base64
import functools
import gc
import json
import logging
import math
import re
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.middleware.trustedhost import TrustedHostMiddleware
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from digitlab import preprocessing as pp
from digitlab.admin_api import router as admin_router
from digitlab.data import load_dataset, scale
from digitlab.environment import keras_backend
from digitlab.errors import DigitlabError, ModelLoadError, RunError
from digitlab.feedback_api import router as feedback_router
from digitlab.numbers import MAX_DIGITS, MODES, NumberReading, TooManyDigitsError, read_number
from digitlab.pages import esc
from digitlab.predictor import Predictor
from digitlab.runs import Run, open_run, to_json
from digitlab.trust import Verdict

STATIC_DIR = Path(__file__).parent / "static"
MAX_BATCH = 64  # images per forward pass at most; a full queue is drained in several passes
PREPROCESS_CONCURRENCY = 2  # image decodes at once: a 50-MP upload decodes to ~200 MB
MULTIPART_OVERHEAD = 64 * 1024  # bytes of form framing allowed on top of MAX_BYTES of image
MAX_JSON_BYTES = 1024 * 1024  # 784 numbers fit in ~20 KB; anything far larger is not a digit
IMAGE_TYPES = ("image/", "application/octet-stream")  # raw-body content types taken as image bytes
DATA_RETRY_S = 60.0  # after the test set failed to load, /api/sample answers 503 at once for this long
BUSY_RETRY_S = 2  # Retry-After (seconds) when the server holds as many request bodies as it may
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")  # Host names a loopback server answers by default
# The content type of a NumberPrediction (mode=number or auto): JSON, apart from application/json, whose 200
# schema stays the single-digit Prediction it always was (clients generated from the document keep working).
NUMBER_MEDIA_TYPE = "application/vnd.digitlab.number+json"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """What clients can take of one server: memory, time, connections. A drawn digit is a few KB, a photo a few MB."""
    body_memory: int = 64 * 2**20  # bytes of request bodies held at once, all requests together; beyond: 503
    body_timeout_s: float = 30.0  # a request body must arrive within this, from its head; else 408 (and close)
    idle_timeout_s: float = 10.0  # a connection waiting on its client (a request head, say) is closed after this
    max_head_bytes: int = 32 * 1024  # request line and headers (nginx allows 32 KB); more: 431 and close
    max_connections: int = 512  # open connections at most (uvicorn's limit_concurrency); beyond: 503

    def __post_init__(self):
        for name, value in vars(self).items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"Limits.{name} must be a positive number, got {value!r}")


# ---------------------------------------------------------------- schemas

Rows = functools.partial(Field, min_length=pp.SIZE, max_length=pp.SIZE)  # 28 of them
Pixels01 = Annotated[list[Annotated[list[Annotated[float, Field(ge=0, le=1)]], Rows()]], Rows()]
Pixels255 = Annotated[list[Annotated[list[Annotated[int, Field(ge=0, le=255)]], Rows()]], Rows()]


# Documentation only: parse_pixels reads the body, and says what is wrong with one that doesn't fit.
class PixelsRequest(BaseModel):
    """A digit that is already MNIST-style: 28 rows of 28 numbers, ink bright on black."""
    pixels: Pixels01 | Pixels255 = Field(
        description="28x28: floats in [0, 1], or integers 0..255 if every value is an integer")


class TopClass(BaseModel):
    digit: int = Field(description="class index, 0..9")
    label: str = Field(description="class name (the digit for MNIST, a garment for Fashion-MNIST)")
    probability: float


VerdictKind = Literal["digit", "unsure", "not_a_digit", "blank"]


class VerdictOut(BaseModel):
    """What the answer is worth (issue 11, digitlab.trust): a confident digit, a guess, or not a digit at all."""
    kind: VerdictKind = Field(description="digit: confident; unsure: below the confidence threshold; "
                              "not_a_digit: out of distribution (a letter, a shape, a scribble)")
    digit: int | None = Field(description="the answer, set only when kind is digit")
    best: int | None = Field(description="the best guess, whatever the kind")
    runner_up: int | None = Field(description="the second guess (\"unsure: 7 or 1?\")")
    confidence: float | None = Field(description="the calibrated probability of the best guess")
    text: str = Field(description='what a person reads: "7", "unsure: 7 or 1?", "not a digit"')


class Prediction(BaseModel):
    digit: int = Field(description="the most probable class index (also when the verdict is not digit)")
    label: str = Field(description="the most probable class name")
    probabilities: list[float] = Field(description="10 class probabilities, by class index (calibrated when "
                                       "the run has a trust model)")
    top3: list[TopClass]
    verdict: VerdictOut
    image: str = Field(description="the 28x28 image the model saw, ink white, as a PNG data URL")
    time_ms: float = Field(description="server time for this request: reading, normalising, the model")
    preprocess_ms: float = Field(description="decoding and MNIST normalisation")
    model_ms: float = Field(description="the forward pass this image was part of")
    batch_size: int = Field(description="images in that forward pass (requests that arrived together)")


class BoxOut(BaseModel):
    left: int = Field(description="first column, in the input picture's pixels")
    top: int = Field(description="first row")
    width: int
    height: int


class NumberDigit(BaseModel):
    digit: int = Field(description="the most probable class index")
    label: str = Field(description="its class name")
    confidence: float = Field(description="its probability")
    runner_up: int | None = Field(description="the second most probable class")
    verdict: VerdictKind = Field(description="digit, unsure or not_a_digit")
    box: BoxOut = Field(description="where the digit is, in the input picture's pixels")
    probabilities: list[float] = Field(description="10 class probabilities, by class index")


class NumberPrediction(BaseModel):
    """A whole number (issue 12, digitlab.numbers): the digits left to right, with their boxes."""
    mode: Literal["digit", "number"] = Field(description="how the picture was read (what mode=auto chose)")
    text: str = Field(description='the digits left to right, "1207"')
    confidence: float = Field(description="the product of the digits' confidences")
    unsure_positions: list[int] = Field(description="0-based positions of digits whose verdict is not digit")
    digits: list[NumberDigit]
    marks: list[BoxOut] = Field(description="small marks left out of the text (dots, dashes)")
    width: int = Field(description="the input picture's width in pixels (the boxes' frame)")
    height: int = Field(description="the input picture's height in pixels")
    time_ms: float = Field(description="server time for this request")


class Sample(BaseModel):
    index: int = Field(description="index in the dataset's test set")
    true_digit: int
    true_label: str
    pixels: list[list[int]] = Field(description="the 28x28 test image, 0..255, ink bright on black")
    prediction: Prediction


class ModelInfo(BaseModel):
    name: str = Field(description="registered model name")
    run: str = Field(description="run directory name")
    test_accuracy: float | None
    test_loss: float | None
    test_errors: int | None
    test_images: int | None
    parameters: int
    runtime: str = Field(description="what runs the model: onnxruntime (the run's checked model.onnx) or keras")
    keras_backend: str | None = Field(description="the Keras backend running the model; null on ONNX Runtime")
    class_names: list[str]
    config: dict = Field(description="the run's resolved training configuration")
    data: dict = Field(description="data provenance: dataset, source, content sha256, split sizes")
    report_url: str | None = Field(description="the run's report.html, if it has one")


class Health(BaseModel):
    status: str
    model: str = Field(description="the registered model name of the run loaded")
    run: str = Field(description="the run directory name of the model loaded (read once, at start-up)")
    uptime_s: float


class ErrorResponse(BaseModel):
    error: str = Field(description="a short machine-readable kind, e.g. not_an_image, no_digit")
    detail: str = Field(description="what was wrong and how to fix it")
    verdict: Literal["blank"] | None = Field(None, description="with no_digit only: \"blank\", the verdict "
                                             "`digitlab predict` gives a picture with no ink (a state, not a fault)")


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None,
                 verdict: str | None = None):
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers
        self.verdict = verdict  # "blank" for no_digit: what the CLI calls it


class ClientGone(Exception):
    """The client closed the connection while sending its request body: nobody is left to answer."""


# InputImageError subclass -> (status, kind); the most specific class is looked up first.
INPUT_ERRORS = [
    (pp.ImageTooLargeError, 413, "image_too_large"),
    (pp.NoInkError, 422, "no_digit"),
    (TooManyDigitsError, 422, "too_many_digits"),
    (pp.BadArrayError, 422, "bad_pixels"),
    (pp.NotAnImageError, 422, "not_an_image"),
    (pp.InputImageError, 422, "bad_input"),
]


def input_error(exc: pp.InputImageError) -> ApiError:
    status, kind = next((s, k) for cls, s, k in INPUT_ERRORS if isinstance(exc, cls))
    return ApiError(status, kind, str(exc), verdict="blank" if kind == "no_digit" else None)


# ---------------------------------------------------------------- the model, batched

def bucket(n: int) -> int:
    """The padded batch size for n images: the next power of two (so few shapes are ever compiled)."""
    return 1 << max(0, n - 1).bit_length()


class BatchedModel:
    """Runs a Predictor in one worker thread; requests that queue up meanwhile share a forward pass.

        batched = BatchedModel(Predictor.from_run(run)); batched.warm_up()
        proba, model_ms, batch_size = await batched.predict(x28)    # inside the event loop
        proba, verdict, model_ms, batch_size = await batched.judge(x28)   # with the trust model's verdict
        reading = await batched.call(read_number, gray, batched.predictor)  # anything else, in the model's thread

    Every forward pass is Predictor.judge: calibrated probabilities and a verdict per image, in one pass.
    """

    def __init__(self, predictor: Predictor, max_batch: int = MAX_BATCH):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.predictor = predictor
        self.max_batch = max_batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="digitlab-model")
        self._queue: list[tuple[np.ndarray, asyncio.Future]] = []
        self._drainer: asyncio.Task | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        """(n, 28, 28) float32 -> (n, 10) probabilities, padded to a bucket size for the model."""
        n = len(x)
        size = bucket(n)
        if size > n:
            x = np.concatenate([x, np.zeros((size - n, *x.shape[1:]), dtype=np.float32)])
        return self.predictor.predict_proba(x)[:n]

    def forward_judged(self, x: np.ndarray) -> tuple[np.ndarray, list[Verdict]]:
        """(n, 28, 28) float32 -> (n, 10) calibrated probabilities and n verdicts, padded as forward() is."""
        n = len(x)
        size = bucket(n)
        if size > n:
            x = np.concatenate([x, np.zeros((size - n, *x.shape[1:]), dtype=np.float32)])
        judged = self.predictor.judge(x)
        return judged.proba[:n], judged.verdicts[:n]

    def warm_up(self) -> None:
        """Compile every batch size once now, not on the first requests that need it; a model whose answers
        are not finite numbers (NaN weights) is refused here, before it serves anyone."""
        size = 1
        while size <= bucket(self.max_batch):
            proba, _ = self.forward_judged(np.zeros((size, pp.SIZE, pp.SIZE), dtype=np.float32))
            if not np.isfinite(proba).all():
                raise ModelLoadError(f"the model {self.predictor.name or ''} answers NaN or infinity (on a blank "
                                     "image): it did not train; train the run again (a smaller --lr?)")
            size *= 2

    async def predict(self, x28: np.ndarray) -> tuple[np.ndarray, float, int]:
        """Probabilities for one (28, 28) image, the forward pass time (ms) and its batch size."""
        proba, _, ms, n = await self.judge(x28)
        return proba, ms, n

    async def judge(self, x28: np.ndarray) -> tuple[np.ndarray, Verdict, float, int]:
        """Probabilities and the verdict for one (28, 28) image, the forward pass time (ms) and its batch size."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((x28, future))
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
        return await future

    async def call(self, fn, *args):
        """fn(*args) in the model's thread, between forward passes: the predictor is only ever used from it."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
                batch = [(x, f) for x, f in batch if not f.done()]  # clients that went away
                if not batch:
                    continue
                x = np.stack([x for x, _ in batch])  # (n, 28, 28)
                start = time.perf_counter()
                try:
                    proba, verdicts = await loop.run_in_executor(self._executor, self.forward_judged, x)
                except Exception as exc:  # noqa: BLE001 - every waiting request gets the error
                    for _, f in batch:
                        if not f.done():
                            f.set_exception(exc)
                    continue
                ms = (time.perf_counter() - start) * 1e3
                for (_, f), p, v in zip(batch, proba, verdicts):
                    if not f.done():
                        f.set_result((p, v, ms, len(batch)))
        finally:
            self._drainer = None

    def close(self) -> None:
        self._executor.shutdown(wait=True)


# ---------------------------------------------------------------- the service

class Service:
    """What the app holds while it runs: the run as read at start-up, its model and the test set (on demand).

        service = Service(open_run(path)); service.load()     # or, inside the serving loop: await service.start()
    """

    def __init__(self, run: Run, max_batch: int = MAX_BATCH, limits: Limits = Limits()):
        # Everything a request may show is read now, once: later edits of the run folder change nothing here.
        refuse_non_finite(run)
        self.run_name = run.path.name
        self.max_batch = max_batch
        self.limits = limits
        self.class_names = run.class_names
        self.model_name = run.config.model
        self.dataset = run.config.dataset
        self.report = read_public_report(run)
        self._run = run  # for the model, loaded by load()
        self._metrics = run.metrics
        self._info_fields = dict(name=self.model_name, run=self.run_name, class_names=list(self.class_names),
                                 config=public(to_json(run.config)), data=public(to_json(run.data)))
        self.started = time.monotonic()
        self.bodies = BodyBudget(limits.body_memory)
        self.batched: BatchedModel | None = None
        self._info: ModelInfo | None = None
        self._test_set: tuple[np.ndarray, np.ndarray] | None = None
        self._data_failed_at: float | None = None

    def load(self) -> None:
        """Load the model and compile it (blocking): a model that can't load, or answers NaN, fails here."""
        if self.batched is not None:
            return
        predictor = Predictor.from_run(self._run)
        batched = BatchedModel(predictor, self.max_batch)
        try:
            batched.warm_up()
        except BaseException:
            batched.close()
            raise
        m = self._metrics
        self._info = ModelInfo(
            **self._info_fields,
            test_accuracy=m.test_accuracy if m else None, test_loss=m.test_loss if m else None,
            test_errors=m.test_errors if m else None, test_images=m.test_images if m else None,
            parameters=predictor.parameters or 0, runtime=predictor.runtime,
            keras_backend=(keras_backend() or "unknown") if predictor.runtime == "keras" else None,
            report_url="/report" if self.report else None)
        self.batched = batched

    async def start(self) -> None:
        """load(), in a thread, unless done already (the CLI loads before it starts the server); the locks
        are made here, for the loop that will serve."""
        self.preprocess_slots = asyncio.Semaphore(PREPROCESS_CONCURRENCY)
        self._test_set_lock = asyncio.Lock()
        if self.batched is None:
            await asyncio.to_thread(self.load)

    def close(self) -> None:
        """Stop the model's thread; a later start() loads the model again (an app's lifespan may run twice)."""
        if self.batched is not None:
            self.batched.close()
            self.batched = None

    async def switch_to(self, run: Run) -> None:
        """Serve `run` from now on, dropping no request: its model is loaded and warmed up aside (a model that
        can't load, or answers NaN, raises here and the old one keeps serving); then, in one step of the event
        loop, requests start going to it; requests queued on the old model finish there before its thread stops."""
        new = Service(run, self.max_batch, self.limits)
        await asyncio.to_thread(new.load)
        old = self.batched
        kept = {"started", "bodies", "preprocess_slots", "_test_set_lock"}  # the server's, not the run's
        self.__dict__.update({k: v for k, v in vars(new).items() if k not in kept})
        while old is not None and (old._queue or old._drainer is not None):
            await asyncio.sleep(0.01)
        if old is not None:
            await asyncio.to_thread(old.close)  # waits for a call() still running in its thread

    async def predict(self, x28: np.ndarray, started: float, preprocess_ms: float) -> Prediction:
        proba, verdict, model_ms, batch_size = await self.batched.judge(x28)
        refuse_nan(proba)
        top = [TopClass(digit=c, label=self.class_names[c], probability=p) for c, p in Predictor.top_k(proba, 3)]
        png = pp.to_png_bytes(x28)
        return Prediction(
            digit=top[0].digit, label=top[0].label, probabilities=[float(p) for p in proba], top3=top,
            verdict=self.verdict_out(verdict),
            image="data:image/png;base64," + base64.b64encode(png).decode(),
            time_ms=(time.perf_counter() - started) * 1e3, preprocess_ms=preprocess_ms,
            model_ms=model_ms, batch_size=batch_size)

    def verdict_out(self, v: Verdict) -> VerdictOut:
        return VerdictOut(kind=v.kind, digit=v.digit, best=v.best, runner_up=v.runner_up, confidence=v.confidence,
                          text=v.text(self.class_names))

    async def read_number(self, gray: np.ndarray, mode: str, started: float) -> NumberPrediction:
        """A picture read as a number (digitlab.numbers), in the model's thread: the segmentation search runs
        the predictor on its candidate digits, and the verdicts are the trust model's (Predictor.judge)."""
        predictor = self.batched.predictor

        def judge(images: np.ndarray, proba: np.ndarray) -> list[str]:
            return [v.kind for v in self.batched.forward_judged(images)[1]]  # padded: few shapes to compile

        try:
            reading: NumberReading = await self.batched.call(functools.partial(read_number, judge=judge),
                                                             gray, predictor, mode)
        except pp.InputImageError as exc:
            raise input_error(exc) from None
        digits = []
        for d in reading.digits:
            refuse_nan(d.probabilities)
            runner_up = Predictor.top_k(d.probabilities, 2)[1:]
            digits.append(NumberDigit(digit=d.digit, label=self.class_names[d.digit], confidence=d.confidence,
                                      runner_up=runner_up[0][0] if runner_up else None, verdict=d.verdict,
                                      box=BoxOut(**d.box.to_json()),
                                      probabilities=[float(p) for p in d.probabilities]))
        return NumberPrediction(mode=reading.mode, text=reading.text, confidence=reading.confidence,
                                unsure_positions=reading.unsure_positions, digits=digits,
                                marks=[BoxOut(**b.to_json()) for b in reading.marks],
                                width=int(gray.shape[1]), height=int(gray.shape[0]),
                                time_ms=(time.perf_counter() - started) * 1e3)

    async def normalise_image(self, data: bytes) -> np.ndarray:
        async with self.preprocess_slots:
            return await asyncio.to_thread(_image_to_mnist, data)

    async def decode_image(self, data: bytes) -> np.ndarray:
        """The picture as grayscale (H, W), not normalised: for reading a number."""
        async with self.preprocess_slots:
            return await asyncio.to_thread(pp.read_image_bytes, data)

    async def test_set(self) -> tuple[np.ndarray, np.ndarray]:
        """The run's test images and labels, loaded once, on first use (start-up must not wait for data).
        A failure is remembered for DATA_RETRY_S: meanwhile every request gets its 503 at once."""
        async with self._test_set_lock:
            if self._test_set is None:
                if self._data_failed_at is not None and time.monotonic() - self._data_failed_at < DATA_RETRY_S:
                    raise self._data_unavailable()
                try:
                    ds = await asyncio.to_thread(load_dataset, self.dataset)
                except (DigitlabError, OSError) as exc:
                    self._data_failed_at = time.monotonic()
                    log.warning("/api/sample: the %s test set could not be loaded (answering 503 for the next "
                                "%.0f s): %s", self.dataset, DATA_RETRY_S, exc)
                    raise self._data_unavailable() from None
                self._test_set = (ds.x_test, ds.y_test)
            return self._test_set

    def _data_unavailable(self) -> ApiError:
        wait = max(1, math.ceil(DATA_RETRY_S - (time.monotonic() - self._data_failed_at)))
        return ApiError(503, "data_unavailable", f"the {self.dataset} test set is not available on this server; "
                        "the server log says why", headers={"Retry-After": str(wait)})

    def info(self) -> ModelInfo:
        return self._info


def refuse_nan(proba: np.ndarray) -> None:
    """Never null probabilities in a 200 (the schema says numbers): a model answering NaN is a 500."""
    if not np.isfinite(proba).all():
        log.error("the model answered non-finite probabilities %s", np.asarray(proba).tolist())
        raise ApiError(500, "model_error", "the model gave no valid answer for this image (NaN); "
                       "the server log has the details")


def refuse_non_finite(run: Run) -> None:
    """A run whose metrics are NaN or infinite did not train (a NaN learning rate, say): never serve it."""
    m = run.metrics
    if m is None:
        return
    bad = [f"{name} {value}" for name, value in
           (("test accuracy", m.test_accuracy), ("test loss", m.test_loss), ("macro F1", m.macro_f1))
           if not (isinstance(value, (int, float)) and math.isfinite(value))]
    if bad:
        raise RunError(f"{run.path} has non-finite metrics ({', '.join(bad)}): its model did not train, and would "
                       "answer NaN; train the run again (a smaller --lr?) and evaluate it")


def public(value):
    """JSON-like `value` without the server's folders: a path keeps its file name; URLs, hashes, numbers stay."""
    if isinstance(value, dict):
        return {key: public(v) for key, v in value.items()}
    if isinstance(value, list):
        return [public(v) for v in value]
    if isinstance(value, str) and "/" in value and "://" not in value and Path(value).name:
        return Path(value).name
    return value


# The details report.html ends with (digitlab.evaluation): shown as /api/model shows them, or not at all.
REPORT_DETAILS = re.compile(r"<h2>(Configuration|Data provenance|Run state|Environment)</h2><pre>.*?</pre>", re.S)


def read_public_report(run: Run) -> str | None:
    """The run's report.html as a client may see it, or None (logged) if it has none or it can't be cleaned.

    The configuration and the data provenance are shown as /api/model gives them; the run state and the
    environment (library versions, the kernel, the machine) are left out. What is left is checked for the
    server's folders and the environment's strings: if any is still there, the report is not served."""
    path = run.path / "report.html"
    try:
        html = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        log.info("%s has no report.html: /report answers 404 (`digitlab evaluate` writes one)", run.path)
        return None
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("cannot read %s (%s): /report answers 404", path, exc)
        return None
    shown = {"Configuration": public(to_json(run.config)), "Data provenance": public(to_json(run.data))}

    def section(m: re.Match) -> str:
        heading = m.group(1)
        return f"<h2>{heading}</h2><pre>{esc(json.dumps(shown[heading], indent=2))}</pre>" if heading in shown else ""
    html = REPORT_DETAILS.sub(section, html)
    leaked = [s for s in private_strings(run) if s in html or esc(s) in html]
    if leaked:
        log.warning("%s still shows local details after cleaning (%s): /report answers 404", path, leaked[0])
        return None
    return html


def private_strings(run: Run) -> list[str]:
    """Strings a client must not see: the server's folders, the kernel, library and Python versions."""
    out = {str(run.path.resolve()), str(run.path.absolute()), str(Path.home())}
    out |= {v for v in to_json(run.data).values() if isinstance(v, str) and Path(v).is_absolute()}
    env = run.environment
    if env is not None:
        out |= {env.platform, env.python, *env.versions.values()}
    # short strings (a version "1.5", the home "/") could match innocent text: versions need two dots
    return sorted(s for s in out if len(s) >= 4 and (s.count(".") >= 2 or "/" in s or "-" in s))


def _image_to_mnist(data: bytes) -> np.ndarray:
    return pp.to_mnist(pp.read_image_bytes(data))


# ---------------------------------------------------------------- reading requests

class BodyBudget:
    """The bytes of request bodies held in memory, all requests together, and the most there may be.

        with budget.hold() as hold:      # per request: hold.take(n) for every chunk read, given back at the end
            body = await read_body(request, limit, hold, timeout_s)
    """

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0

    def room(self) -> int:
        return self.limit - self.used

    @contextmanager
    def hold(self):
        hold = BodyHold(self)
        try:
            yield hold
        finally:
            self.used -= hold.bytes


class BodyHold:
    """One request's share of a BodyBudget (the event loop is the only writer: no lock)."""

    def __init__(self, budget: BodyBudget):
        self.budget, self.bytes = budget, 0

    def take(self, n: int) -> None:
        if n > self.budget.room():
            raise busy()
        self.budget.used += n
        self.bytes += n


def busy() -> ApiError:
    return ApiError(503, "busy", "the server is receiving as many uploads as it can hold right now: "
                    f"retry in {BUSY_RETRY_S} s", headers={"Retry-After": str(BUSY_RETRY_S)})


async def read_body(request: Request, limit: int, hold: BodyHold, timeout_s: float) -> bytes:
    """The request body, counted against the server's BodyBudget as it arrives. Refused with 413 as soon as it
    is known to exceed `limit` bytes, with 503 when the budget has no room for it, with 408 (and the connection
    closed) when it has not all arrived within `timeout_s`. A client that leaves midway raises ClientGone."""
    declared = request.headers.get("content-length")
    size = int(declared) if declared and declared.isdigit() else None
    if size is not None and size > limit:
        raise ApiError(413, "too_large", f"request body is {size} bytes, over the limit of {limit}: "
                       f"send an image file of at most {pp.MAX_BYTES // 2**20} MiB")
    if size is not None and size > hold.budget.room():
        raise busy()  # it would not fit: say so now, not after it has been sent
    chunks, received = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone(f"after {received} of {size if size is not None else '?'} bytes")
                chunk = message.get("body", b"")
                if chunk:
                    received += len(chunk)
                    if received > limit:
                        raise ApiError(413, "too_large", f"request body is over the limit of {limit} bytes: "
                                       f"send an image file of at most {pp.MAX_BYTES // 2**20} MiB")
                    hold.take(len(chunk))
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise ApiError(408, "body_timeout", f"the request body did not arrive within {timeout_s:g} s "
                       f"({received} bytes came): send it at once", headers={"Connection": "close"}) from None
    return b"".join(chunks)


async def read_upload(request: Request, hold: BodyHold, timeout_s: float) -> bytes:
    """The one file in a multipart/form-data body (any field name)."""
    body = await read_body(request, pp.MAX_BYTES + MULTIPART_OVERHEAD, hold, timeout_s)

    async def stream():
        yield body
        yield b""

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=1, max_fields=16).parse()
    except MultiPartException as exc:
        raise ApiError(400, "bad_form", f"malformed multipart form ({exc}): send one file, "
                       f"e.g. curl -F file=@digit.png") from None
    try:
        files = [v for _, v in form.multi_items() if not isinstance(v, str)]
        if not files:
            raise ApiError(400, "no_file", "the form has no file: send the image as a file field, "
                           "e.g. curl -F file=@digit.png")
        return await files[0].read()  # over MAX_BYTES: read_image_bytes refuses it
    finally:
        await form.close()


def parse_pixels(body: bytes) -> np.ndarray:
    try:
        doc = json.loads(body, parse_constant=_refuse_constant)
    except NonFiniteError as exc:
        raise ApiError(422, "bad_pixels", f"{exc} (NaN and Infinity are not pixel values): "
                       "send finite numbers, floats in [0, 1] or integers 0..255") from None
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "bad_json", f"the body is not valid JSON ({exc}): "
                       'send {"pixels": [[...28 numbers...], ...28 rows...]}') from None
    if not isinstance(doc, dict) or "pixels" not in doc:
        raise ApiError(422, "bad_pixels", 'JSON must be an object with a "pixels" key holding 28 rows '
                       "of 28 numbers (floats in [0, 1] or integers 0..255)")
    pixels = doc["pixels"]
    if not isinstance(pixels, list):  # from_pixels refuses ragged rows, strings, nulls, wrong shapes
        raise ApiError(422, "bad_pixels", '"pixels" must be a list of 28 rows, each a list of 28 numbers '
                       "(floats in [0, 1] or integers 0..255)")
    if _may_hold_booleans(body) and any(  # JSON true is not 1
            isinstance(v, bool) for row in pixels if isinstance(row, list) for v in row):
        raise ApiError(422, "bad_pixels", '"pixels" holds true/false: send numbers, floats in [0, 1] or integers '
                       "0..255")
    try:
        x = pp.from_pixels(pixels)
    except pp.InputImageError as exc:
        raise input_error(exc) from None
    if float(x.max()) < pp.MIN_INK_CONTRAST:  # as to_mnist decides for pictures
        raise ApiError(422, "no_digit", "no digit found: every pixel is (nearly) black; send ink bright on "
                       "black, as MNIST digits are (integers are read as 0..255, so 0/1 values need to be 0.0/1.0)",
                       verdict="blank")
    return x


def _may_hold_booleans(body: bytes) -> bool:
    """False when the JSON surely holds no true/false: a UTF-8 body (what clients send) spells them out in its
    bytes, and looking for them there costs a twentieth of looking at the 784 values one by one."""
    return json.detect_encoding(body) != "utf-8" or b"true" in body or b"false" in body


class NonFiniteError(ValueError):
    pass


def _refuse_constant(name: str):
    raise NonFiniteError(f"the JSON holds {name}")


# ---------------------------------------------------------------- the app

ERROR_RESPONSES = {code: {"model": ErrorResponse, "description": why} for code, why in [
    (400, "malformed body: bad JSON, a broken form, no file in the form"),
    (408, "the body did not arrive within the server's body timeout (the connection is closed)"),
    (413, "the body or the image is over the byte or pixel limits (a decompression bomb)"),
    (415, "a content type other than multipart/form-data, image/*, application/octet-stream or JSON"),
    (422, "not an image, a truncated file, no digit found, pixels of the wrong shape or range"),
    (500, "the model gave no valid answer (details in the server log)"),
    (503, "the server holds as many uploads as it may: retry after the Retry-After header's seconds"),
]}

PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "an image file of one digit"}}}},
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "application/json": {"schema": PixelsRequest.model_json_schema()},
}}}


# `mode` is described here, not as a declared parameter: the document's schema-driven clients and the fuzz test
# (tests/test_fuzz_api.py) then keep the single-digit contract they were written for.
MODE_DOC = (f"Query parameter `mode` (optional): `digit` (the default) reads the picture as one digit and answers a "
            f"Prediction (application/json); `number` reads the digits in it, left to right, with their boxes (at most "
            f"{MAX_DIGITS}), and `auto` reads one digit unless the ink clearly holds several: both answer a "
            f"NumberPrediction as {NUMBER_MEDIA_TYPE}. Another value is a 422 invalid_request.")


MODE_VALUES = TypeAdapter(Literal[MODES])  # type: ignore[valid-type]


def query_mode(request: Request) -> str:
    """The `mode` query parameter, "digit" if absent, checked as FastAPI checks a declared Literal (the same 422,
    the last value of a repeated one). Read here, not declared: FastAPI's parameter machinery took an eighth
    of the event loop's time per prediction."""
    value = request.query_params.get("mode")
    if value is None:
        return "digit"
    try:
        return MODE_VALUES.validate_python(value)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("query", "mode", *e["loc"])} for e in exc.errors()]) from None


def one_blas_thread():
    """Limits OpenBLAS (numpy's matrix products: the trust model's, in the model's thread) to one thread, until
    the returned limit's restore_original_limits(). Its threads spin while they wait for the next product: with
    two, 50 clients flat out (in-process, on the shared 2-core machine) took 0.92-0.97 ms of CPU per prediction,
    0.27 ms with one."""
    from threadpoolctl import threadpool_limits
    return threadpool_limits(1, user_api="blas")


def create_app(run_path: str | Path, max_batch: int = MAX_BATCH, limits: Limits = Limits(),
               allowed_hosts: list[str] | None = None, preload: bool = False) -> FastAPI:
    """The FastAPI app serving one run. The run is read now; the model is loaded at start-up (lifespan), or
    now with `preload` (the CLI: a model that can't load is an error message, not a server that fails to start).
    allowed_hosts: the Host header names served (["*"] or None: any); run it with uvicorn.Config(**server_config(app))
    for the connection limits."""
    run = open_run(run_path)  # a bad path fails now, before a server binds a port
    service = Service(run, max_batch=max_batch, limits=limits)
    if preload:
        service.load()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        # Keras and its backend leave ~0.3-0.5 M long-lived Python objects; a full garbage collection
        # walks them all (0.15-0.35 s here: a latency spike). Frozen, the collector skips them.
        gc.collect()
        gc.freeze()
        blas = one_blas_thread()
        yield
        service.close()
        blas.restore_original_limits()

    # docs_url=None: FastAPI's own /docs pulls Swagger UI from a CDN; ours serves a bundled copy (offline).
    # redoc_url=None: ReDoc too loads its script from a CDN, and /docs says the same.
    app = FastAPI(title="digitlab", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Draw a digit and watch the network read it. Images are normalised as MNIST "
                              "was made (ink bright on black, 20 px box, centred by mass) before the model sees them.")
    app.state.limits, app.state.service = limits, service
    app.include_router(feedback_router)  # /api/feedback: corrections, stored in app.state.feedback_db
    app.include_router(admin_router)  # /api/admin/reload: switch to another run (loopback or a token)
    if allowed_hosts and "*" not in allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts), www_redirect=False)
    app.add_middleware(HeadLimit, limit=limits.max_head_bytes)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        body = {"error": exc.error, "detail": exc.detail} | ({"verdict": exc.verdict} if exc.verdict else {})
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(ClientGone)
    async def _client_gone(request: Request, exc: ClientGone):
        client = request.client
        log.info("%s closed the connection while sending its request body (%s)",
                 f"{client.host}:{client.port}" if client else "a client", exc)
        return Response(status_code=400)  # never sent: nobody is listening

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
        return JSONResponse({"error": kind, "detail": str(exc.detail)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        what = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": "invalid_request", "detail": what}, status_code=422)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):  # a bug: uvicorn logs its traceback; the client learns nothing
        return JSONResponse({"error": "internal_error", "detail": "the server failed on this request; "
                             "its log has the details"}, status_code=500)

    @app.post("/api/predict", response_model=Prediction, openapi_extra=PREDICT_BODY,
              responses={200: {"description": f"mode=digit: a Prediction (application/json); mode=number or auto: "
                                             f"a NumberPrediction ({NUMBER_MEDIA_TYPE}, JSON too)",
                               "content": {NUMBER_MEDIA_TYPE: {
                                   "schema": {"$ref": "#/components/schemas/NumberPrediction"}}}},
                         **ERROR_RESPONSES},
              summary="Read one digit, or a whole number (mode): an image upload, raw image bytes, or 28x28 "
                      "pixels as JSON", description=MODE_DOC)
    async def predict(request: Request) -> Response:
        mode = query_mode(request)
        started = time.perf_counter()
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        with service.bodies.hold() as hold:  # the body's bytes count against Limits.body_memory until we answer
            if ctype == "application/json":
                x = parse_pixels(await read_body(request, MAX_JSON_BYTES, hold, limits.body_timeout_s))
            elif ctype == "multipart/form-data" or ctype.startswith(IMAGE_TYPES):
                data = await (read_upload(request, hold, limits.body_timeout_s) if ctype == "multipart/form-data"
                              else read_body(request, pp.MAX_BYTES, hold, limits.body_timeout_s))
                try:
                    x = await (service.normalise_image(data) if mode == "digit" else service.decode_image(data))
                except pp.InputImageError as exc:
                    raise input_error(exc) from None
                del data
            else:
                raise ApiError(415, "unsupported_media_type",
                               f"content type {ctype or '(none)'!r} is not accepted: upload a file as "
                               "multipart/form-data, send image bytes as image/png (or another image/* type), "
                               'or JSON {"pixels": [[...]]} as application/json')
        if mode != "digit":
            number = await service.read_number(x, mode, started)
            return Response(number.model_dump_json(), media_type=NUMBER_MEDIA_TYPE)
        prediction = await service.predict(x, started, (time.perf_counter() - started) * 1e3)
        # Serialised by pydantic-core directly: FastAPI would validate the model a second time.
        return Response(prediction.model_dump_json(), media_type="application/json")

    @app.get("/api/model", response_model=ModelInfo, summary="The run: model, test accuracy, config, data provenance")
    async def model_info() -> ModelInfo:
        return service.info()

    @app.get("/api/health", response_model=Health, summary="The model loaded and serving, and the server's uptime")
    async def health() -> Health:
        return Health(status="ok", model=service.model_name, run=service.run_name,
                      uptime_s=round(time.monotonic() - service.started, 3))

    @app.get("/api/sample", response_model=Sample,
             responses={422: {"model": ErrorResponse, "description": "an index outside the test set, or not a number"},
                        503: {"model": ErrorResponse, "description": "the test set is not available on this server"}},
             summary="A random test image (or the one at `index`), its true label and the model's answer")
    async def sample(index: int | None = Query(None, ge=0, description="test-set index; random if absent")) -> Sample:
        started = time.perf_counter()
        x_test, y_test = await service.test_set()
        if index is None:
            index = int(np.random.default_rng().integers(len(y_test)))
        elif index >= len(y_test):
            raise ApiError(422, "bad_index", f"index {index} is out of range: the test set has {len(y_test)} images")
        raw = x_test[index]  # uint8, already an MNIST digit: scaled as in training, not re-normalised
        prediction = await service.predict(scale(raw), started, 0.0)
        label = int(y_test[index])
        return Sample(index=index, true_digit=label, true_label=service.class_names[label],
                      pixels=raw.tolist(), prediction=prediction)

    @app.get("/report", include_in_schema=False)
    async def report():
        if service.report is None:  # why is in the server log (read_public_report)
            raise ApiError(404, "not_found", "this run's report is not available here: "
                           "`digitlab evaluate` on the run writes one")
        return HTMLResponse(service.report)

    @app.get("/", include_in_schema=False)
    async def index():
        # The page loads nothing from elsewhere; the policy makes sure it never will.
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers={
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'",
            "Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _add_offline_docs(app)
    _add_number_schemas(app)
    return app


def _add_number_schemas(app: FastAPI) -> None:
    """NumberPrediction and the models it holds in the OpenAPI document's components: the 200 of /api/predict
    refers to it for its NUMBER_MEDIA_TYPE content, which FastAPI does not generate from a response_model."""
    from pydantic.json_schema import models_json_schema

    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = generate()  # caches it in app.openapi_schema
            _, defs = models_json_schema([(NumberPrediction, "serialization")],
                                         ref_template="#/components/schemas/{model}")
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
        return app.openapi_schema

    app.openapi = openapi


# ---------------------------------------------------------------- the server: uvicorn, with the limits

def server_config(app: FastAPI, **options) -> dict:
    """uvicorn.Config keyword arguments that enforce the app's Limits: uvicorn.Config(**server_config(app)).

    uvicorn's httptools protocol (C), guarded (GuardedHttpToolsProtocol): httptools alone has no head-size limit
    (a 100 MiB header took 9.6 s of CPU and stalled every other client for its 25 s), and h11, which has one,
    is pure Python and serves fewer requests per second."""
    limits: Limits = app.state.limits
    http = functools.partial(GuardedHttpToolsProtocol, idle_timeout_s=limits.idle_timeout_s,
                             max_head_bytes=limits.max_head_bytes)
    return dict(app=app, http=http, limit_concurrency=limits.max_connections, **options)


def log_config() -> dict:
    """uvicorn's logging, plus this module's lines (a client that left midway, a failed test set) beside its own."""
    import copy

    from uvicorn.config import LOGGING_CONFIG
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["digitlab"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (a C parser) plus two guards. A request head (line and headers) over
    `max_head_bytes` is answered 431 and the connection closed as soon as that many bytes of it came in:
    the parser is never fed more of a head than that (httptools has no limit of its own, and a huge header
    costs it quadratic CPU). And a connection waiting on its client for `idle_timeout_s` is closed: a head
    that trickles in (slowloris), a connection that never sends one, the rest of a body the app answered
    without reading (an endless chunked body). While a request is in the app's hands the app times it
    (read_body).

    A head counts from the end of the request before it (or the connection's start); a pipelined one that
    begins in the piece of input that ends the request before it is counted from the next piece on (so it is
    cut off by twice the limit at most): HeadLimit measures it exactly once it is parsed."""

    def __init__(self, *args, idle_timeout_s: float, max_head_bytes: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.idle_timeout_s, self.max_head_bytes = idle_timeout_s, max_head_bytes
        self._idle_timer: asyncio.TimerHandle | None = None
        self._head_bytes: int | None = 0  # bytes of the head on its way, fed to the parser; None: between heads
        self._head_refused = False  # a head went over the limit: 431 once the requests before it are answered

    def data_received(self, data: bytes) -> None:
        # Fed to the parser in pieces of at most the limit, and while a head is on its way no further than
        # the limit: the parser never holds more of a head than that (twice that, for the head of a request
        # that begins in the piece ending the one before it). A small request is one piece, as it was read.
        if self._head_refused:
            return  # read and dropped until the 431 goes out
        while data:
            room = self.max_head_bytes if self._head_bytes is None else self.max_head_bytes - self._head_bytes
            if room <= 0:
                self._head_refused = True
                if self._waiting_for_client():  # else a pipelined request is still in the app: after its answer
                    self._send_431()
                return
            piece, data = data[:room], data[room:]
            if self._head_bytes is not None:
                self._head_bytes += len(piece)  # first: the parser may end this request and start the next one
            super().data_received(piece)
            if self.transport.is_closing():
                return

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        super().on_headers_complete()
        if not self._waiting_for_client():  # a request has started: the app has it
            self._stop_waiting()

    def on_message_complete(self) -> None:
        self._head_bytes = 0  # the next request's head starts here
        super().on_message_complete()

    def _send_431(self) -> None:
        body = head_too_large(self.max_head_bytes)
        head = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
                 b"connection: close\r\n\r\n"]
        self.transport.write(b"".join(head) + body)
        self.transport.close()

    def _wait_for_client(self) -> None:
        self._stop_waiting()
        self._idle_timer = self.loop.call_later(self.idle_timeout_s, self._idle_expired)

    def _stop_waiting(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _waiting_for_client(self) -> bool:  # self.cycle is the latest request parsed (pipelined ones too)
        return self.cycle is None or self.cycle.response_complete

    def _idle_expired(self) -> None:
        self._idle_timer = None
        if self._waiting_for_client() and not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._wait_for_client()

    def connection_lost(self, exc) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request
        if self._waiting_for_client() and not self.transport.is_closing():
            if self._head_refused:
                self._send_431()
            else:
                self._wait_for_client()


def head_too_large(limit: int) -> bytes:
    return json.dumps({"error": "header_too_large", "detail": f"the request line and headers are over {limit} "
                       "bytes: send fewer or shorter headers (cookies?)"}).encode()


class HeadLimit:
    """ASGI middleware: 431 for a request whose line and headers are over `limit` bytes. The protocol
    (GuardedHttpToolsProtocol) stops a head while it arrives, without parsing it all; a pipelined one that
    began in the piece of input that ended the request before it is counted from the next piece on (it may
    reach twice the limit before the protocol stops it) and is measured here."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            size = len(scope["method"]) + len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
            size += sum(len(name) + len(value) + 4 for name, value in scope["headers"])  # "name: value\r\n"
            if size > self.limit:
                response = Response(head_too_large(self.limit), status_code=431, media_type="application/json",
                                    headers={"Connection": "close"})
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def _add_offline_docs(app: FastAPI) -> None:
    """/docs with the Swagger UI 5 files that the fastapi-offline package ships, so the docs work offline.

    (Swagger UI 4 can't read FastAPI's OpenAPI 3.1 documents; fastapi-offline is used only for its files.)
    """
    from importlib.resources import files

    from fastapi.openapi.docs import get_swagger_ui_html

    app.mount("/docs-assets", StaticFiles(directory=str(files("fastapi_offline") / "static")), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="digitlab API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="data:,")


def _version() -> str:
    from digitlab import __version__
    return __version__
