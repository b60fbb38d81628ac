"""The web app and HTTP API: a trained run served with FastAPI, digits normalised as MNIST was made.

    app = create_app("runs/20261126-071500-seed-ann-s0")     # then: uvicorn, or TestClient(app)
    digitlab serve runs/... --port 8000                       # the same, from the command line

    curl -F file=@seven.png http://127.0.0.1:8000/api/predict
    curl --data-binary @seven.png -H 'Content-Type: image/png' http://127.0.0.1:8000/api/predict
    curl -d '{"pixels": [[0, 0, ...28 x 28...]]}' -H 'Content-Type: application/json' .../api/predict

Routes: `/` the drawing page (digitlab/static), `POST /api/predict`, `GET /api/model`, `GET /api/health`,
`GET /api/sample` (a random test digit and the model's answer), `/report` (the run's report.html),
`/docs` (OpenAPI). Every bad input gets a 4xx `{"error": kind, "detail": what to do}`.

Speed: the model (a digitlab.predictor.Predictor) runs in one worker thread, so the event loop keeps
reading requests while it works, and requests that arrive during a forward pass share the next one
(micro-batching; batches are padded to a few fixed sizes so JAX and TensorFlow compile each size once,
at start-up). Image decoding and normalisation run in other threads, at most PREPROCESS_CONCURRENCY at
a time, which bounds the CPU and the decoded-image memory that uploads can take. The run is read once,
at start-up: what /api/model and /api/health report is what is loaded and serving.
"""
from __future__ import annotations

import asyncio
import base64
import gc
import json
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from digitlab import preprocessing as pp
from digitlab.data import DataUnavailableError, load_dataset, scale
from digitlab.environment import keras_backend
from digitlab.predictor import Predictor
from digitlab.runs import Run, open_run, to_json

STATIC_DIR = Path(__file__).parent / "static"
MAX_BATCH = 64  # images per forward pass at most; a full queue is drained in several passes
PREPROCESS_CONCURRENCY = 2  # image decodes at once: a 50-MP upload decodes to ~200 MB
MULTIPART_OVERHEAD = 64 * 1024  # bytes of form framing allowed on top of MAX_BYTES of image
MAX_JSON_BYTES = 1024 * 1024  # 784 numbers fit in ~20 KB; anything far larger is not a digit
IMAGE_TYPES = ("image/", "application/octet-stream")  # raw-body content types taken as image bytes


# ---------------------------------------------------------------- schemas

class PixelsRequest(BaseModel):
    """A digit that is already MNIST-style: 28 rows of 28 numbers, ink bright on black."""
    pixels: list[list[float]] = Field(
        description="28x28: floats in [0, 1], or integers 0..255 if every value is an integer")


class TopClass(BaseModel):
    digit: int = Field(description="class index, 0..9")
    label: str = Field(description="class name (the digit for MNIST, a garment for Fashion-MNIST)")
    probability: float


class Prediction(BaseModel):
    digit: int = Field(description="the predicted class index")
    label: str = Field(description="the predicted class name")
    probabilities: list[float] = Field(description="10 class probabilities, by class index")
    top3: list[TopClass]
    image: str = Field(description="the 28x28 image the model saw, ink white, as a PNG data URL")
    time_ms: float = Field(description="server time for this request: reading, normalising, the model")
    preprocess_ms: float = Field(description="decoding and MNIST normalisation")
    model_ms: float = Field(description="the forward pass this image was part of")
    batch_size: int = Field(description="images in that forward pass (requests that arrived together)")


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
    keras_backend: str
    class_names: list[str]
    config: dict = Field(description="the run's resolved training configuration")
    data: dict = Field(description="data provenance: dataset, source, content sha256, split sizes")
    report_url: str | None = Field(description="the run's report.html, if it has one")


class Health(BaseModel):
    status: str
    model: str
    uptime_s: float


class ErrorResponse(BaseModel):
    error: str = Field(description="a short machine-readable kind, e.g. not_an_image, no_digit")
    detail: str = Field(description="what was wrong and how to fix it")


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str):
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


# InputImageError subclass -> (status, kind); the most specific class is looked up first.
INPUT_ERRORS = [
    (pp.ImageTooLargeError, 413, "image_too_large"),
    (pp.NoInkError, 422, "no_digit"),
    (pp.BadArrayError, 422, "bad_pixels"),
    (pp.NotAnImageError, 422, "not_an_image"),
    (pp.InputImageError, 422, "bad_input"),
]


def input_error(exc: pp.InputImageError) -> ApiError:
    status, kind = next((s, k) for cls, s, k in INPUT_ERRORS if isinstance(exc, cls))
    return ApiError(status, kind, str(exc))


# ---------------------------------------------------------------- the model, batched

def bucket(n: int) -> int:
    """The padded batch size for n images: the next power of two (so few shapes are ever compiled)."""
    return 1 << max(0, n - 1).bit_length()


class BatchedModel:
    """Runs a Predictor in one worker thread; requests that queue up meanwhile share a forward pass.

        batched = BatchedModel(Predictor.from_run(run)); batched.warm_up()
        proba, model_ms, batch_size = await batched.predict(x28)    # inside the event loop
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

    def warm_up(self) -> None:
        """Compile every batch size once now, not on the first requests that need it."""
        size = 1
        while size <= bucket(self.max_batch):
            self.forward(np.zeros((size, pp.SIZE, pp.SIZE), dtype=np.float32))
            size *= 2

    async def predict(self, x28: np.ndarray) -> tuple[np.ndarray, float, int]:
        """Probabilities for one (28, 28) image, the forward pass time (ms) and its batch size."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((x28, future))
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
        return await future

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
                    proba = await loop.run_in_executor(self._executor, self.forward, x)
                except Exception as exc:  # noqa: BLE001 - every waiting request gets the error
                    for _, f in batch:
                        if not f.done():
                            f.set_exception(exc)
                    continue
                ms = (time.perf_counter() - start) * 1e3
                for (_, f), p in zip(batch, proba):
                    if not f.done():
                        f.set_result((p, ms, len(batch)))
        finally:
            self._drainer = None

    def close(self) -> None:
        self._executor.shutdown(wait=True)


# ---------------------------------------------------------------- the service

class Service:
    """What the app holds while it runs: the run, its model (loaded once) and the test set (on demand)."""

    def __init__(self, run: Run, max_batch: int = MAX_BATCH):
        self.run = run
        self.max_batch = max_batch
        self.class_names = run.class_names
        self.model_name = run.config.model
        self.has_report = (run.path / "report.html").exists()
        self.started = time.monotonic()
        self.batched: BatchedModel | None = None
        self._info: ModelInfo | None = None
        self._test_set: tuple[np.ndarray, np.ndarray] | None = None

    async def start(self) -> None:
        """Load the model and compile it (in a thread); made inside the loop that will serve."""
        self.preprocess_slots = asyncio.Semaphore(PREPROCESS_CONCURRENCY)
        self._test_set_lock = asyncio.Lock()
        self.batched = await asyncio.to_thread(self._load_model)

    def _load_model(self) -> BatchedModel:
        predictor = Predictor.from_run(self.run)
        batched = BatchedModel(predictor, self.max_batch)
        batched.warm_up()
        self._info = self._describe(predictor)  # read once: later edits of the run folder change nothing here
        return batched

    def close(self) -> None:
        if self.batched is not None:
            self.batched.close()

    async def predict(self, x28: np.ndarray, started: float, preprocess_ms: float) -> Prediction:
        proba, model_ms, batch_size = await self.batched.predict(x28)
        top = [TopClass(digit=c, label=self.class_names[c], probability=p) for c, p in Predictor.top_k(proba, 3)]
        png = pp.to_png_bytes(x28)
        return Prediction(
            digit=top[0].digit, label=top[0].label, probabilities=[float(p) for p in proba], top3=top,
            image="data:image/png;base64," + base64.b64encode(png).decode(),
            time_ms=(time.perf_counter() - started) * 1e3, preprocess_ms=preprocess_ms,
            model_ms=model_ms, batch_size=batch_size)

    async def normalise_image(self, data: bytes) -> np.ndarray:
        async with self.preprocess_slots:
            return await asyncio.to_thread(_image_to_mnist, data)

    async def test_set(self) -> tuple[np.ndarray, np.ndarray]:
        """The run's test images and labels, loaded on first use (start-up must not wait for data)."""
        async with self._test_set_lock:
            if self._test_set is None:
                name = self.run.config.dataset
                try:
                    ds = await asyncio.to_thread(load_dataset, name)
                except DataUnavailableError as exc:
                    raise ApiError(503, "data_unavailable", str(exc)) from None
                self._test_set = (ds.x_test, ds.y_test)
            return self._test_set

    def info(self) -> ModelInfo:
        return self._info

    def _describe(self, predictor: Predictor) -> ModelInfo:
        metrics = self.run.metrics
        return ModelInfo(
            name=self.model_name, run=self.run.path.name,
            test_accuracy=metrics.test_accuracy if metrics else None,
            test_loss=metrics.test_loss if metrics else None,
            test_errors=metrics.test_errors if metrics else None,
            test_images=metrics.test_images if metrics else None,
            parameters=predictor.parameters or 0, keras_backend=keras_backend() or "unknown",
            class_names=list(self.class_names), config=to_json(self.run.config),
            data=public_provenance(to_json(self.run.data)),
            report_url="/report" if self.has_report else None)


def public_provenance(data: dict) -> dict:
    """The run's data provenance without local paths: a client need not learn the server's folders
    (the cache lives under the user's home). A path keeps its file name; URLs and hashes stay."""
    def strip(value):
        if isinstance(value, str) and Path(value).is_absolute():
            return Path(value).name
        return value
    return {key: strip(value) for key, value in data.items()}


def _image_to_mnist(data: bytes) -> np.ndarray:
    return pp.to_mnist(pp.read_image_bytes(data))


# ---------------------------------------------------------------- reading requests

async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"request body is {int(declared)} bytes, over the limit of {limit}: "
                       f"send an image file of at most {pp.MAX_BYTES // 2**20} MiB")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"request body is over the limit of {limit} bytes: "
                           f"send an image file of at most {pp.MAX_BYTES // 2**20} MiB")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_upload(request: Request) -> bytes:
    """The one file in a multipart/form-data body (any field name)."""
    body = await read_body(request, pp.MAX_BYTES + MULTIPART_OVERHEAD)

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
    try:
        x = pp.from_pixels(pixels)
    except pp.InputImageError as exc:
        raise input_error(exc) from None
    if float(x.max()) < pp.MIN_INK_CONTRAST:  # as to_mnist decides for pictures
        raise ApiError(422, "no_digit", "no digit found: every pixel is (nearly) black; send ink bright on "
                       "black, as MNIST digits are (integers are read as 0..255, so 0/1 values need to be 0.0/1.0)")
    return x


class NonFiniteError(ValueError):
    pass


def _refuse_constant(name: str):
    raise NonFiniteError(f"the JSON holds {name}")


# ---------------------------------------------------------------- the app

ERROR_RESPONSES = {code: {"model": ErrorResponse, "description": why} for code, why in [
    (400, "malformed body: bad JSON, a broken form, no file in the form"),
    (413, "the body or the image is over the byte or pixel limits (a decompression bomb)"),
    (415, "a content type other than multipart/form-data, image/*, application/octet-stream or JSON"),
    (422, "not an image, a truncated file, no digit found, pixels of the wrong shape or range"),
]}

PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "an image file of one digit"}}}},
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "application/json": {"schema": PixelsRequest.model_json_schema()},
}}}


def create_app(run_path: str | Path, max_batch: int = MAX_BATCH) -> FastAPI:
    """The FastAPI app serving one run; the model is loaded at start-up (lifespan), not here."""
    run = open_run(run_path)  # a bad path fails now, before a server binds a port
    service = Service(run, max_batch=max_batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        # Keras and its backend leave ~0.3-0.5 M long-lived Python objects; a full garbage collection
        # walks them all (0.15-0.35 s here: a latency spike). Frozen, the collector skips them.
        gc.collect()
        gc.freeze()
        yield
        service.close()

    # docs_url=None: FastAPI's own /docs pulls Swagger UI from a CDN; ours serves a bundled copy (offline).
    app = FastAPI(title="digitlab", version=_version(), lifespan=lifespan, docs_url=None,
                  description="Draw a digit and watch the network read it. Images are normalised as MNIST "
                              "was made (ink bright on black, 20 px box, centred by mass) before the model sees them.")

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse({"error": exc.error, "detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
        return JSONResponse({"error": kind, "detail": str(exc.detail)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        what = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": "invalid_request", "detail": what}, status_code=422)

    @app.post("/api/predict", response_model=Prediction, responses=ERROR_RESPONSES, openapi_extra=PREDICT_BODY,
              summary="Read one digit: an image upload, raw image bytes, or 28x28 pixels as JSON")
    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json":
            x = parse_pixels(await read_body(request, MAX_JSON_BYTES))
        elif ctype == "multipart/form-data" or ctype.startswith(IMAGE_TYPES):
            data = await (read_upload(request) if ctype == "multipart/form-data"
                          else read_body(request, pp.MAX_BYTES))
            try:
                x = await service.normalise_image(data)
            except pp.InputImageError as exc:
                raise input_error(exc) from None
        else:
            raise ApiError(415, "unsupported_media_type",
                           f"content type {ctype or '(none)'!r} is not accepted: upload a file as "
                           "multipart/form-data, send image bytes as image/png (or another image/* type), "
                           'or JSON {"pixels": [[...]]} as application/json')
        prediction = await service.predict(x, started, (time.perf_counter() - started) * 1e3)
        # Serialised by pydantic-core directly: FastAPI would validate the model a second time.
        return Response(prediction.model_dump_json(), media_type="application/json")

    @app.get("/api/model", response_model=ModelInfo, summary="The run: model, test accuracy, config, data provenance")
    async def model_info() -> ModelInfo:
        return service.info()

    @app.get("/api/health", response_model=Health)
    async def health() -> Health:
        return Health(status="ok", model=service.model_name, uptime_s=round(time.monotonic() - service.started, 3))

    @app.get("/api/sample", response_model=Sample, responses={503: {"model": ErrorResponse}},
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
        path = run.path / "report.html"
        if not path.exists():
            raise ApiError(404, "not_found", f"run {run.path.name} has no report.html: "
                           f"run `digitlab evaluate {run.path}` to write one")
        return FileResponse(path, media_type="text/html")

    @app.get("/", include_in_schema=False)
    async def index():
        # The page loads nothing from elsewhere; the policy makes sure it never will.
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers={
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'",
            "Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _add_offline_docs(app)
    return app


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
