"""The HTTP side: Open Inference Protocol v2 REST routes on FastAPI, /metrics, and the protocol's errors.

Every error is ``{"error": "..."}``: 400 a bad request, 404 an unknown model or version,
413 a body over the limit, 503 not ready or a full queue.
"""

from __future__ import annotations

import re
import time
import zlib
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from tl.runtime.serve.batcher import QueueFull
from tl.runtime.serve.metrics import Metrics
from tl.runtime.serve.model import ServedModel
from tl.runtime.serve.protocol import BadRequest, encode_response, parse_request

EXTENSIONS = ["binary_tensor_data", "classification"]
OFFLOAD_BYTES = 256 * 1024


class NotFound(Exception):
    """Answered 404."""


class TooLarge(Exception):
    """Answered 413."""


def create_app(models: list[ServedModel], *, max_body: int, version: str = "0") -> FastAPI:
    """The app for already loaded models; their batchers start and drain with the app's lifespan."""
    metrics, by_name = Metrics(), {m.name: m for m in models}
    state = {"ready": False}

    @asynccontextmanager
    async def lifespan(app):
        for m in models:
            m.batcher.on_batch = metrics.on_batch(m.name, m.version)
            m.batcher.start()
            metrics.pending.labels(m.name, m.version).set_function(lambda b=m.batcher: b.waiting)
        state["ready"] = True
        yield
        state["ready"] = False  # drain: uvicorn has answered every open request; finish what is queued
        for m in models:
            await m.batcher.close()

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    _errors(app)

    def model(name: str, version: str | None = None) -> ServedModel:
        m = by_name.get(name)
        if m is None:
            raise NotFound(f"unknown model '{name}'; this server has: {', '.join(sorted(by_name))}")
        if version not in (None, "", m.version):
            raise NotFound(f"model '{name}' has no version '{version}' here (serving version {m.version})")
        return m

    _routes(app, model, metrics, state, max_body=max_body, version=version)
    return app


def _routes(app: FastAPI, model, metrics: Metrics, state: dict, *, max_body: int, version: str) -> None:
    @app.get("/v2/health/live")
    async def live():
        return Response(status_code=200)

    @app.get("/v2/health/ready")
    async def ready():
        return Response(status_code=200 if state["ready"] else 503)

    @app.get("/v2")
    async def server_metadata():
        return {"name": "tl", "version": version, "extensions": EXTENSIONS}

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{ver}")
    async def model_metadata(name: str, ver: str | None = None):
        return model(name, ver).metadata()

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{ver}/ready")
    async def model_ready(name: str, ver: str | None = None):
        model(name, ver)
        return Response(status_code=200 if state["ready"] else 503)

    async def infer(name: str, ver: str | None, request: Request) -> Response:
        return await _infer(model(name, ver), request, metrics, max_body, state)

    async def infer_route(request: Request) -> Response:
        return await infer(request.path_params["name"], request.path_params.get("ver"), request)

    # The hot route is a plain Starlette route (FastAPI's per-request dependency solving for the path
    # parameters took a fifth of the event loop's time under load, py-spy at 32 clients); `tl serve`
    # goes further and answers it in front of the middleware stack (with_fast_infer).
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{ver}/infer"):
        app.add_route(path, infer_route, methods=["POST"])
    app.state.infer = infer

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)


INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")


def with_fast_infer(app: FastAPI):
    """ASGI app: POST .../infer answered directly (same handler, same errors), everything else by ``app``.

    Under load the middleware and routing layers around each request cost the event loop about as
    much as the handler itself, and on a small box the event loop shares the cores with the model.
    """
    infer = app.state.infer

    async def asgi(scope, receive, send):
        hit = INFER_PATH.fullmatch(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if hit is None:
            return await app(scope, receive, send)
        try:
            response = await infer(hit[1], hit[2], Request(scope, receive))
        except Exception as e:  # noqa: BLE001 - the protocol's error body, as the app's handlers give it
            response = error_response(e)
        await response(scope, receive, send)

    return asgi


async def _infer(m: ServedModel, request: Request, metrics: Metrics, max_body: int, state: dict) -> Response:
    """Read, parse, batch, answer; count the request, its failure and its time."""
    labels = (m.name, m.version)
    metrics.requests.labels(*labels).inc()
    start = time.perf_counter()
    try:
        if not state["ready"]:
            raise QueueFull("the server is not ready")
        body = await _read_body(request, max_body)
        args = (body, request.headers.get("inference-header-content-length"))
        # A large body (a JSON tensor of many floats) is parsed off the event loop; a small one is not worth the hop.
        parsed = await run_in_threadpool(parse_request, *args) if len(body) > OFFLOAD_BYTES else parse_request(*args)
        header, outputs = await m.infer(parsed)
    except Exception as e:
        metrics.failures.labels(*labels, str(_status(e))).inc()
        raise
    body, header_length = encode_response(header, outputs)
    metrics.latency.labels(*labels).observe(time.perf_counter() - start)
    if header_length is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(header_length)})


async def _read_body(request: Request, max_body: int) -> bytes:
    """The body, refused as soon as it passes ``max_body`` (whether or not Content-Length says so)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise TooLarge(f"the request body of {int(declared)} bytes is over the server's limit of {max_body} bytes")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in WBITS:
        raise BadRequest(f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or no encoding")
    inflate = zlib.decompressobj(WBITS[encoding]) if WBITS[encoding] else None
    chunks, size = [], 0
    async for chunk in request.stream():
        if inflate is not None:  # tritonclient's request_compression_algorithm; bounded, so no zip bomb
            try:
                chunk = inflate.decompress(chunk, max_body + 1 - size)
            except zlib.error as e:
                raise BadRequest(f"the {encoding} request body does not decompress ({e})") from None
        size += len(chunk)
        if size > max_body:
            raise TooLarge(f"the request body is over the server's limit of {max_body} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


WBITS = {"identity": 0, "": 0, "gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


STATUS = {BadRequest: 400, NotFound: 404, TooLarge: 413, QueueFull: 503}


def _status(e: Exception) -> int:
    return next((code for cls, code in STATUS.items() if isinstance(e, cls)), 500)


def error_response(e: Exception) -> JSONResponse:
    """The protocol's error body, with the status STATUS gives ``e`` (500 for a bug)."""
    return JSONResponse({"error": str(e)}, status_code=_status(e))


def _errors(app: FastAPI) -> None:
    """The protocol's error body for our errors, for unknown routes, and for bugs (500, still JSON)."""
    async def ours(request, e):
        return error_response(e)

    async def http(request, e: HTTPException):
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code)

    for cls in STATUS:
        app.add_exception_handler(cls, ours)
    app.add_exception_handler(HTTPException, http)
    app.add_exception_handler(Exception, ours)
