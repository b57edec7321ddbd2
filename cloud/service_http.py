"""The HTTP face of the cloud service: /predict (and SageMaker's /invocations, /ping).

Why a mounted ASGI app rather than a plain ``@bentoml.api`` for /predict: BentoML's own
request handling parses bodies with pydantic and answers errors in its own shape
(``{"error": "1 validation error ..."}``, 500 for anything it does not know), while the
contract (DESIGN.md section 10, ``bentos.api``) needs JSON *and* ``.npz`` bodies on the
same route, a 4xx that names the input and the expected shape, a body-size limit that
stops reading early, and the model name/version in headers.  So this small Starlette app,
mounted into the BentoML server with ``@bentoml.asgi_app``, owns parsing and the response,
and hands the validated array to the service's *batchable* ``@bentoml.api`` method through
the BentoML server's own adaptive-batching dispatcher (``batch_infer``).  BentoML keeps
what it is good at: the server and its workers, adaptive batching and its
``bentoml_service_adaptive_batch_size`` histogram in /metrics, /readyz, /livez, /docs.json.

Reaching the dispatcher uses one BentoML internal: the server's Starlette app puts itself
in ``scope["app"]`` and its routes' endpoints are bound methods of the app factory that
owns the dispatchers.  ``_Mounted`` saves that app before its own Starlette replaces it.
When the lookup fails (a BentoML that changed this), requests still run, unbatched, and
the service logs that once.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from bentoedge.bentos.api import (
    HEADER_MODEL,
    HEADER_SERVED_BY,
    HEADER_VERSION,
    NPZ,
    encode_npz,
    json_dumps,
    parse_request,
    response_json,
)
from bentoedge.bentos.errors import RequestError, UnavailableError
from bentoedge.bentos.manifest import Signature

logger = logging.getLogger("bentoml.bentoedge")  # under "bentoml" so `bentoml serve` shows it
SERVER_KEY = "bentoedge.server"


class Backend(Protocol):
    """What the HTTP layer needs from the service (``cloud.service.SealedService``)."""

    name: str
    version: str
    signature: Signature
    max_payload: int

    def is_ready(self) -> bool: ...

    async def run(self, arrays: dict[str, np.ndarray], server: Any) -> dict[str, np.ndarray]: ...


class _Mounted(Starlette):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault(SERVER_KEY, scope.get("app"))  # the BentoML server app, before Starlette overwrites it
        await super().__call__(scope, receive, send)


def make_app(backend: Callable[[], Backend]) -> Starlette:
    """The mounted app; ``backend()`` returns the live service instance at request time."""

    async def predict(request: Request) -> Response:
        return await _predict(request, backend())

    async def ping(request: Request) -> Response:
        try:
            ready = backend().is_ready()
        except Exception:  # not started yet
            ready = False
        return _json({"status": "ready"} if ready else {"status": "starting"}, 200 if ready else 503)

    async def http_error(request: Request, exc: Exception) -> Response:
        # Starlette's own 404/405 are plain text; the contract answers every error in JSON.
        status = getattr(exc, "status_code", 500)
        return _json({"error": f"{request.method} {request.url.path}: {getattr(exc, 'detail', exc)}"}, status)

    return _Mounted(exception_handlers={HTTPException: http_error}, routes=[
        Route("/predict", predict, methods=["POST"]),
        Route("/invocations", predict, methods=["POST"]),  # SageMaker's name for the same call
        Route("/ping", ping, methods=["GET"]),  # SageMaker's health check
    ])


async def _predict(request: Request, svc: Backend) -> Response:
    try:
        body = await _read_body(request, svc.max_payload)
        arrays = parse_request(body, request.headers.get("content-type"), svc.signature, svc.max_payload)
        outputs = await svc.run(arrays, request.scope.get(SERVER_KEY))
    except RequestError as exc:
        return _json(exc.to_body(), exc.status)
    except UnavailableError as exc:
        return _json(exc.to_body(), exc.status)
    except ClientDisconnect:
        return Response(status_code=499)
    except Exception as exc:  # the model failed: say so in one line, keep serving
        logger.exception("prediction failed")
        return _json({"error": f"the model failed on this request ({type(exc).__name__}); see the server log"}, 500)
    headers = {HEADER_SERVED_BY: "cloud", HEADER_VERSION: svc.version, HEADER_MODEL: svc.name}
    if NPZ in request.headers.get("accept", ""):
        return Response(encode_npz(outputs), media_type=NPZ, headers=headers)
    return Response(json_dumps(response_json(outputs, svc.name, svc.version, "cloud")),
                    media_type="application/json", headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing early (413) when it is larger than ``limit``."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"the request body is {declared} bytes; the limit is {limit}", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"the request body is over {limit} bytes, the limit", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def _json(body: dict[str, Any], status: int) -> Response:
    return Response(json_dumps(body), status_code=status, media_type="application/json")


def find_batcher(server: Any, api_name: str) -> Callable[[np.ndarray], Awaitable[Any]] | None:
    """BentoML's ``batch_infer`` for ``api_name`` on the server app's factory, if reachable."""
    for route in getattr(getattr(server, "router", None), "routes", ()):
        factory = getattr(getattr(route, "endpoint", None), "__self__", None)
        if factory is not None and api_name in getattr(factory, "dispatchers", {}):
            return functools.partial(_call_batched, factory.batch_infer, api_name)
    return None


async def _call_batched(batch_infer: Callable[..., Awaitable[Any]], api_name: str, x: np.ndarray) -> Any:
    return await batch_infer(api_name, (x,), {})


# OpenAPI text for the contract routes, merged into BentoML's /docs.json by cloud.service.
OPENAPI_PATHS: dict[str, Any] = {
    "/predict": {"post": {
        "tags": ["bentoedge"],
        "summary": "Predict on named inputs (the bentoedge API, same on devices and in the cloud)",
        "description": (
            "Body: JSON {\"inputs\": {\"<input name>\": <nested list>}} or an application/x-npz archive with "
            "one array per input name. Answers {\"outputs\": {...}, \"model\": {\"name\", \"version\"}, "
            "\"served_by\": \"cloud\"}, or an .npz of outputs with Accept: application/x-npz. Headers "
            "x-bentoedge-served-by and x-bentoedge-model-version name where and what answered. Errors: "
            "4xx {\"error\": ..., \"input\": ...} (400 malformed, 413 too large, 415 media type, 422 "
            "wrong name/dtype/shape/NaN)."),
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"type": "object", "required": ["inputs"], "properties": {
                "inputs": {"type": "object", "additionalProperties": {"type": "array", "items": {}}}}}},
            NPZ: {"schema": {"type": "string", "format": "binary"}}}},
        "responses": {
            "200": {"description": "outputs by name", "content": {
                "application/json": {"schema": {"type": "object", "properties": {
                    "outputs": {"type": "object"}, "model": {"type": "object"},
                    "served_by": {"type": "string", "enum": ["cloud"]}}}},
                NPZ: {"schema": {"type": "string", "format": "binary"}}}},
            "400": {"description": "malformed body"}, "413": {"description": "body too large"},
            "415": {"description": "unsupported media type"},
            "422": {"description": "an input has the wrong name, dtype, shape or values"},
            "503": {"description": "overloaded or not ready"}}}},
    "/invocations": {"post": {"tags": ["bentoedge"], "summary": "SageMaker's name for POST /predict",
                              "responses": {"200": {"description": "as /predict"}}}},
    "/ping": {"get": {"tags": ["bentoedge"], "summary": "SageMaker health check: 200 once the golden samples passed",
                      "responses": {"200": {"description": "ready"}, "503": {"description": "starting"}}}},
}
