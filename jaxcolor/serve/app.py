"""The HTTP service: FastAPI routes over a model from ``jaxcolor.load``.

- ``GET /``: the page (static HTML/JS/CSS shipped in ``jaxcolor/serve/static``, read into
  memory at start; ``/static/<name>`` picks from that table, never from the file system).
- ``POST /api/colorize``: an image as the raw body or as multipart field ``file`` -> the
  colorized image, same size, upright; PNG (16-bit for 16-bit input) or ``?format=jpeg``;
  ``?render_size=N``; ``?colour_strength=s`` (predicted chroma times s, 0 to 2; default: the
  model's calibrated strength).
- ``GET /api/health``: the model's metadata (its default ``colour_strength`` too), batch size,
  device calls and the service's limits.

Errors are JSON ``{"detail": "<words>"}``: 400 for input that is not an image (empty, truncated,
corrupt, bad parameters), 413 over the upload or pixel limit, 503 when ``max_waiting`` requests
are already in progress. Uploads are decoded by ``data.load_image`` from memory: the service never
opens a path taken from a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.resources
import io
import logging
from collections.abc import AsyncIterator
from typing import Any

import cv2
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from jaxcolor import colour, data
from jaxcolor.evaluation.reports import json_safe
from jaxcolor.inference.predictor import MAX_COLOUR_STRENGTH, check_colour_strength
from jaxcolor.serve.batching import Batcher

log = logging.getLogger(__name__)

FORMATS = {"png": ("image/png", ".png"), "jpeg": ("image/jpeg", ".jpg"),
           "jpg": ("image/jpeg", ".jpg")}
JPEG_QUALITY = 92
MIB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask of the service; each is a command-line flag."""

    max_upload_bytes: int = 50 * MIB
    max_pixels: int = 50_000_000
    max_waiting: int = 64  # requests in progress (receiving, decoding, queued, colorizing)
    max_render_size: int = 1024
    batch_delay_ms: float = 5.0


class HTTPError(Exception):
    """An answer in words with a 4xx status."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


def encode(rgb: np.ndarray, fmt: str) -> bytes:
    """RGB (H, W, 3) uint8/uint16/float in [0, 1] -> PNG or JPEG bytes (OpenCV's encoders).

    PNG keeps 16-bit depth; JPEG and float inputs are written in 8 bits.
    """
    if rgb.dtype == np.uint16 and fmt == "png":
        pixels = rgb
    elif rgb.dtype == np.uint16:
        pixels = np.round(rgb / 257.0).astype(np.uint8)
    elif rgb.dtype == np.uint8:
        pixels = rgb
    else:
        pixels = colour.rgb_to_uint8(rgb)
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if fmt != "png" else []
    ok, buf = cv2.imencode(FORMATS[fmt][1], np.ascontiguousarray(pixels[..., ::-1]), params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {pixels.shape} {pixels.dtype} image")
    return buf.tobytes()


async def _limited(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body's chunks; 413 as soon as more than ``limit`` bytes arrive."""
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise HTTPError(413, f"upload larger than the limit of {limit / MIB:g} MiB")
        yield chunk


async def _read_upload(request: Request, limit: int) -> tuple[bytes, str]:
    """The uploaded file's bytes and a name for messages: multipart field ``file`` or the body."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPError(413, f"upload of {int(declared) / MIB:.1f} MiB is over the limit of "
                             f"{limit / MIB:g} MiB")
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        parser = MultiPartParser(request.headers, _limited(request, limit), max_files=1,
                                 max_fields=8)
        parser.spool_max_size = limit + 1  # keep the upload in memory: no temporary files
        try:
            form = await parser.parse()
        except MultiPartException as e:
            raise HTTPError(400, f"malformed multipart upload: {e.message}") from None
        upload = form.get("file")
        try:
            if upload is None or isinstance(upload, str):
                raise HTTPError(400, "multipart upload needs the image in a file field named "
                                     "'file'")
            raw = await upload.read()
            name = (upload.filename or "upload")[:200]
        finally:
            await form.close()
    else:
        raw = b"".join([chunk async for chunk in _limited(request, limit)])
        name = "request body"
    if not raw:
        raise HTTPError(400, f"{name}: empty upload; send an image as the request body or as "
                             "multipart field 'file'")
    return raw, name


def _decode(raw: bytes, name: str, max_pixels: int) -> np.ndarray:
    buf = io.BytesIO(raw)
    buf.name = name  # how data.decode names the source in its messages
    return data.load_image(buf, max_pixels=max_pixels)


# The page's files, read once from the package: requests pick one by name from this table and
# never name a file-system path.
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8"}


def _static_files() -> dict[str, tuple[bytes, str]]:
    folder = importlib.resources.files("jaxcolor.serve").joinpath("static")
    return {f.name: (f.read_bytes(), STATIC_TYPES[f.name[f.name.rindex("."):]])
            for f in folder.iterdir() if f.name[f.name.rfind("."):] in STATIC_TYPES}


def create_app(model: Any, limits: Limits = Limits()) -> FastAPI:
    """The service for ``model`` (``jaxcolor.load``'s). Its device worker starts with the app's
    lifespan and finishes the queued requests when the server stops."""
    state: dict[str, Any] = {"in_progress": 0, "batcher": None}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        state["batcher"] = Batcher(model, limits.batch_delay_ms / 1000.0)
        try:
            yield
        finally:
            await run_in_threadpool(state["batcher"].close)

    # No /docs or /redoc: their pages load scripts from a CDN. /openapi.json stays.
    app = FastAPI(title="jaxcolor", lifespan=lifespan, docs_url=None, redoc_url=None)
    static = _static_files()

    @app.exception_handler(HTTPError)
    async def _http_error(_request: Request, e: HTTPError) -> JSONResponse:
        return JSONResponse({"detail": e.detail}, e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _bad_parameter(_request: Request, e: RequestValidationError) -> JSONResponse:
        words = "; ".join(f"{'.'.join(str(p) for p in err['loc'][1:])}: {err['msg']}"
                          for err in e.errors())
        return JSONResponse({"detail": words}, 400)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse({"detail": f"internal error ({type(e).__name__}); see the server "
                                       "log"}, 500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> Response:
        body, kind = static["index.html"]
        return Response(body, media_type=kind)

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str) -> Response:
        if name not in static:
            raise HTTPError(404, f"no static file {name!r}")
        body, kind = static[name]
        return Response(body, media_type=kind)

    @app.get("/api/health")
    async def health() -> JSONResponse:
        """The model's metadata and the service's limits."""
        return JSONResponse(json_safe({
            "status": "ok",
            "model": model.metadata,
            "image_size": model.image_size,
            "colour_strength": model.colour_strength,
            "max_colour_strength": MAX_COLOUR_STRENGTH,
            "batch_size": model.batch_size,
            "max_programs": getattr(model, "max_programs", None),
            "device_calls": model.device_calls,
            "in_progress": state["in_progress"],
            "limits": dataclasses.asdict(limits),
        }))

    @app.post("/api/colorize", response_class=Response, responses={
        200: {"content": {"image/png": {}, "image/jpeg": {}}},
        400: {"description": "not an image, or a bad parameter"},
        413: {"description": "over the upload or pixel limit"},
        503: {"description": "too many requests in progress"}})
    async def colorize(request: Request, format: str = "png",  # the query parameter's name
                       render_size: int | None = None,
                       colour_strength: float | None = None) -> Response:
        """Colorizes the image sent as the raw body or as multipart field ``file``."""
        fmt = format.lower()
        if fmt not in FORMATS:
            raise HTTPError(400, f"format must be png or jpeg, got {format!r}")
        if colour_strength is not None:
            try:
                check_colour_strength(colour_strength)
            except ValueError as e:
                raise HTTPError(400, str(e)) from None
        if render_size is not None and not 1 <= render_size <= limits.max_render_size:
            raise HTTPError(400, f"render_size must be between 1 and {limits.max_render_size}, "
                                 f"got {render_size}")
        if state["in_progress"] >= limits.max_waiting:
            raise HTTPError(503, f"busy: {limits.max_waiting} requests in progress; retry soon",
                            headers={"Retry-After": "1"})
        state["in_progress"] += 1  # the event loop is one thread: no lock needed
        try:
            try:
                raw, name = await _read_upload(request, limits.max_upload_bytes)
            except ClientDisconnect:  # nobody is left to answer
                raise HTTPError(400, "the client disconnected during the upload") from None
            try:
                image = await run_in_threadpool(_decode, raw, name, limits.max_pixels)
            except data.ImageTooLargeError as e:
                raise HTTPError(413, str(e)) from None
            except data.BadImageError as e:
                raise HTTPError(400, str(e)) from None
            del raw
            try:
                out = await asyncio.wrap_future(
                    state["batcher"].submit(image, render_size, colour_strength))
            except ValueError as e:  # the model refuses this input or render size
                raise HTTPError(400, f"{name}: {e}") from None
            body = await run_in_threadpool(encode, out, fmt)
        finally:
            state["in_progress"] -= 1
        return Response(body, media_type=FORMATS[fmt][0])

    return app
