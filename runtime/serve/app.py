"""The HTTP transport: Open Inference Protocol v2 REST routes on FastAPI over an Endpoints object, and /metrics.

Every error is ``{"error": "..."}`` with the HTTP status tl.runtime.serve.errors gives it:
400 a bad request, 404 an unknown model or version, 405 a method the route does not take (with
``Allow``), 413 a body over the limit, 503 not ready or a full queue, 500 a model whose logits
are not finite, or a bug. Health routes answer the protocol's bodies (``{"live": true}``,
``{"ready": ...}``), with 503 while not ready, as KServe does (Triton answers 400; its client
reads only whether the status is 200).
"""

from __future__ import annotations

import asyncio
import json
import re
import zlib
from contextlib import asynccontextmanager
from typing import Protocol, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from tl.runtime.serve.endpoints import Endpoints
from tl.runtime.serve.errors import BadRequest, ServeError, TooLarge, status_of

INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
INDEX_BODY_LIMIT = 4096  # the index request is {"ready": bool}; nothing longer is one
WBITS = {"identity": 0, "": 0, "gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class Companion(Protocol):
    """Another transport over the same endpoints (the gRPC service), started and stopped with the app."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def create_app(endpoints: Endpoints, companions: Sequence[Companion] = ()) -> FastAPI:
    """The routes over ``endpoints``; its batchers, and the ``companions``, start and drain with the app's lifespan."""
    @asynccontextmanager
    async def lifespan(app):
        await endpoints.start()
        for c in companions:
            await c.start()
        yield
        # Drain: uvicorn has answered every open HTTP request; finish what is queued while each
        # companion stops taking calls and answers those it holds.
        await asyncio.gather(endpoints.stop(), *(c.stop() for c in companions))

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    _errors(app)
    _routes(app, endpoints)
    return app


def with_fast_infer(app: FastAPI, endpoints: Endpoints):
    """ASGI app: POST .../infer answered directly (same handler, same errors), everything else by ``app``.

    The middleware and routing layers around each request are event-loop time the infer handler
    does not need, and on a small box the event loop shares the cores with the model.
    """
    async def asgi(scope, receive, send):
        hit = INFER_PATH.fullmatch(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if hit is None:
            return await app(scope, receive, send)
        try:
            response = await infer(endpoints, hit[1], hit[2], Request(scope, receive))
        except Exception as e:  # noqa: BLE001 - the protocol's error body, as the app's handlers give it
            response = error_response(e)
        await response(scope, receive, send)

    return asgi


def _routes(app: FastAPI, endpoints: Endpoints) -> None:
    @app.get("/v2/health/live")
    async def live():
        return _state("live", endpoints.live())

    @app.get("/v2/health/ready")
    async def ready():
        return _state("ready", endpoints.ready())

    @app.get("/v2")
    async def server_metadata():
        return endpoints.server_metadata()

    @app.get("/v2/models/stats")  # before /v2/models/{name}, which would take "stats" as a name
    @app.get("/v2/models/{name}/stats")
    @app.get("/v2/models/{name}/versions/{ver}/stats")
    async def statistics(name: str | None = None, ver: str | None = None):
        return endpoints.statistics(name, ver)

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{ver}")
    async def model_metadata(name: str, ver: str | None = None):
        return endpoints.model_metadata(name, ver)

    @app.get("/v2/models/{name}/config")
    @app.get("/v2/models/{name}/versions/{ver}/config")
    async def model_config(name: str, ver: str | None = None):
        return endpoints.model_config(name, ver)

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{ver}/ready")
    async def model_ready(name: str, ver: str | None = None):
        return _state("ready", endpoints.model_ready(name, ver), name=name)

    @app.post("/v2/repository/index")
    async def repository_index(request: Request):
        return endpoints.repository_index(_ready_only(await _read_body(request, INDEX_BODY_LIMIT)))

    async def infer_route(request: Request) -> Response:
        return await infer(endpoints, request.path_params["name"], request.path_params.get("ver"), request)

    # The hot route is a plain Starlette route: FastAPI's per-request dependency solving for the path
    # parameters is event-loop time under load. `tl serve` goes further and answers it in front of the
    # middleware stack (with_fast_infer).
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{ver}/infer"):
        app.add_route(path, infer_route, methods=["POST"])

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(endpoints.metrics_text(), media_type=CONTENT_TYPE_LATEST)


def _state(key: str, yes: bool, **extra) -> JSONResponse:
    """A health answer: the protocol's body, 200 when ``yes``, else 503."""
    return JSONResponse({**extra, key: yes}, status_code=200 if yes else 503)


def _ready_only(body: bytes) -> bool:
    """The repository index request's optional ``{"ready": true}``: list only the models ready now."""
    if not body.strip():
        return False
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise BadRequest(f"the repository index request is not valid JSON ({e})") from None
    if not isinstance(request, dict) or not isinstance(request.get("ready", False), bool):
        raise BadRequest('the repository index request takes an optional {"ready": true|false}')
    return request.get("ready", False)


async def infer(endpoints: Endpoints, name: str, version: str | None, request: Request) -> Response:
    """One POST .../infer: the body and its header length in, the protocol's response out."""
    body, header_length = await endpoints.infer(name, version, lambda: _read_body(request, endpoints.max_body),
                                                request.headers.get("inference-header-content-length"))
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


def error_response(e: Exception) -> JSONResponse:
    """The protocol's error body, with the HTTP status of ``e``'s row in the error table (500 for a bug)."""
    status = status_of(e)
    return JSONResponse({"error": status.message}, status_code=status.http)


def _errors(app: FastAPI) -> None:
    """The protocol's error body for our errors, for unknown routes, and for bugs (500, still JSON)."""
    async def ours(request, e):
        return error_response(e)

    async def http(request, e: HTTPException):  # a 405 keeps the Allow header routing gave it
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code, headers=getattr(e, "headers", None))

    app.add_exception_handler(ServeError, ours)
    app.add_exception_handler(HTTPException, http)
    app.add_exception_handler(Exception, ours)
