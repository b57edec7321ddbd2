"""The HTTP face of the cloud service: /predict (and SageMaker's /invocations, /ping).

Why a mounted ASGI app rather than a plain ``@bentoml.api`` for /predict: BentoML's own
request handling parses bodies with pydantic and answers errors in its own shape
(``{"error": "1 validation error ..."}``, 500 for anything it does not know), while the
contract (docs/design.md, the prediction API; ``bentos.api``) needs JSON *and* ``.npz`` bodies on the
same route, a 4xx that names the input and the expected shape, a body-size limit that
stops reading early, and the model name/version in headers.  So this small Starlette app,
mounted into the BentoML server with ``@bentoml.asgi_app``, is a thin adapter: the framing
check, parsing, every answer and the OpenAPI text are ``bentos.api``/``bentos.openapi``'s,
the same code the device runs; this module moves them between Starlette and the service,
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
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bentoedge.bentos.api import (
    DEFAULT_MAX_PAYLOAD,
    Reply,
    declared_length,
    error_reply,
    json_reply,
    method_not_allowed,
    not_found,
    parse_request,
    prediction_reply,
)
from bentoedge.bentos.auth import credentials
from bentoedge.bentos.errors import RequestError, UnavailableError
from bentoedge.bentos.fleet_report import MAX_ENVELOPE_BYTES
from bentoedge.bentos.manifest import Signature
from bentoedge.bentos.openapi import TAG, fleet_reports_operation, prediction_paths
from bentoedge.cloud.auth import OPEN_PATHS, Gate, refusal
from bentoedge.cloud.fleet.intake import PATH as FLEET_PATH
from bentoedge.cloud.fleet.intake import PRINCIPAL_KEY

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
    """The contract app; remembers the BentoML server app it is mounted in (for batching)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault(SERVER_KEY, scope.get("app"))  # the BentoML server app, before Starlette overwrites it
        await super().__call__(scope, receive, send)


def make_app(backend: Callable[[], Backend]) -> Starlette:
    """The mounted app; ``backend()`` returns the live service instance at request time."""

    async def predict(request: Request) -> Response:
        return await _predict(request, backend())

    async def fleet_reports(request: Request) -> Response:
        intake = getattr(backend(), "intake", None)
        if intake is None:
            return _send(json_reply(404, {"error": "this service keeps no fleet store (BENTOEDGE_FLEET=off)"}))
        try:
            declared_length(request.method, request.headers.get("content-length"),
                            request.headers.get("transfer-encoding"), MAX_ENVELOPE_BYTES)
            body = await request.body()
        except RequestError as exc:
            return _send(error_reply(exc))
        except ClientDisconnect:
            return Response(status_code=499)
        return _send(await anyio.to_thread.run_sync(intake.receive, body, str(request.scope.get(PRINCIPAL_KEY, ""))))

    async def ping(request: Request) -> Response:
        try:
            ready = backend().is_ready()
        except Exception:  # not started yet
            ready = False
        return _send(json_reply(200 if ready else 503, {"status": "ready"} if ready else {"status": "starting"}))

    async def http_error(request: Request, exc: Exception) -> Response:
        # Starlette's own 404/405 are plain text; the contract answers every error in JSON.
        status = getattr(exc, "status_code", 500)
        path = request.url.path
        if status == 404:
            return _send(not_found(path))
        if status == 405:
            allow = (getattr(exc, "headers", None) or {}).get("Allow", "POST")
            return _send(method_not_allowed(path, allow))
        return _send(json_reply(status, {"error": f"{request.method} {path}: {getattr(exc, 'detail', exc)}"}))

    return _Mounted(exception_handlers={HTTPException: http_error}, routes=[
        Route("/predict", predict, methods=["POST"]),
        Route("/invocations", predict, methods=["POST"]),  # SageMaker's name for the same call
        Route("/ping", ping, methods=["GET"]),  # SageMaker's health check
        Route(FLEET_PATH, fleet_reports, methods=["POST"]),  # signed device reports (cloud.fleet.intake)
    ])


async def _predict(request: Request, svc: Backend) -> Response:
    """One prediction: the contract's framing check, parse, the model, the contract's answer."""
    headers = request.headers
    try:
        # Refused before a byte is read; the server (uvicorn) then never delivers more
        # than the declared length, so the body read below is bounded by the limit.
        declared_length(request.method, headers.get("content-length"), headers.get("transfer-encoding"),
                        svc.max_payload)
        body = await request.body()
        arrays = parse_request(body, headers.get("content-type"), svc.signature, svc.max_payload)
        outputs = await svc.run(arrays, request.scope.get(SERVER_KEY))
    except (RequestError, UnavailableError) as exc:
        return _send(error_reply(exc))
    except ClientDisconnect:
        return Response(status_code=499)
    except Exception as exc:  # the model failed: say so in one line, keep serving
        logger.exception("prediction failed")
        return _send(json_reply(500, {"error": f"the model failed on this request ({type(exc).__name__}); "
                                               "see the server log"}))
    return _send(prediction_reply(outputs, svc.name, svc.version, "cloud", headers.get("accept")))


def _send(reply: Reply) -> Response:
    """The contract's answer as a Starlette response."""
    return Response(reply.body, status_code=reply.status, media_type=reply.content_type,
                    headers=dict(reply.headers))


def find_batcher(server: Any, api_name: str) -> Callable[[np.ndarray], Awaitable[Any]] | None:
    """BentoML's ``batch_infer`` for ``api_name`` on the server app's factory, if reachable."""
    for route in getattr(getattr(server, "router", None), "routes", ()):
        factory = getattr(getattr(route, "endpoint", None), "__self__", None)
        if factory is not None and api_name in getattr(factory, "dispatchers", {}):
            return functools.partial(_call_batched, factory.batch_infer, api_name)
    return None


async def _call_batched(batch_infer: Callable[..., Awaitable[Any]], api_name: str, x: np.ndarray) -> Any:
    return await batch_infer(api_name, (x,), {})


def openapi_paths(signature: Signature | None) -> dict[str, Any]:
    """The contract's routes, as every cloud front documents them (also ``cloud.aws_lambda``'s)."""
    return {
        **prediction_paths(signature, ("cloud",)),
        "/ping": {"get": {"tags": [TAG], "summary": "SageMaker health check: 200 once the golden samples passed",
                          "responses": {"200": {"description": "ready"}, "503": {"description": "starting"}}}},
    }


def service_paths(signature: Signature | None) -> dict[str, Any]:
    """What this service adds to the document BentoML serves: the contract's routes and the
    fleet intake, which only this front serves (the Lambda handler keeps no fleet store)."""
    return {**openapi_paths(signature), FLEET_PATH: {"post": fleet_reports_operation()}}


class ContractMiddleware:
    """Around the whole BentoML server app, so what BentoML answers itself keeps the contract.

    First, authentication (``cloud.auth.Gate``, deciding with ``bentos.auth``): every
    route but the open ones (health, metrics, /docs.json) needs a device signature or an
    API key, BentoML's own /infer included, and a refusal is the contract's JSON (401 or
    403) before the app sees the request.  A signed request's body is read here, bounded
    by the framing check and the payload limit, to check its Content-Digest, and handed on
    to the app as it came.

    Two answers are BentoML's, not this module's: /docs.json, which gains the contract's
    routes and the fleet intake (``service_paths``; the contract's text is the device's),
    and the plain-text 404/405 of its router for a path or method nobody serves, which
    become the contract's JSON (``bentos.api.not_found``, ``method_not_allowed``), as the
    device answers them.  Every other answer passes through unbuffered.
    """

    def __init__(self, app: ASGIApp, signature: Callable[[], Signature | None] = lambda: None,
                 gate: Callable[[], Gate] | None = None, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.app = app
        self.signature = signature
        self.gate = gate
        self.max_payload = max_payload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        if self.gate is not None and path not in OPEN_PATHS:
            passed = await self._authenticate(scope, receive, send)
            if passed is None:
                return
            receive = passed
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def rewrite(message: Message) -> None:
            if message["type"] == "http.response.start":
                if self._wants(path, message):
                    start.update(message)  # held until the whole body is here
                    return
                await send(message)
            elif message["type"] == "http.response.body" and start:
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    await self._send_rewritten(path, start, b"".join(chunks), send)
            else:
                await send(message)

        await self.app(scope, receive, rewrite)

    async def _authenticate(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """The receive to hand on when the request may pass; None once a refusal was sent."""
        assert self.gate is not None
        method = str(scope.get("method", "GET"))
        raw_path = scope.get("raw_path")
        path = raw_path.decode("latin-1") if isinstance(raw_path, bytes) else str(scope.get("path", ""))
        try:
            gate = self.gate()
        except Exception:  # the worker's service is not up: refuse rather than let anyone in
            await _send_asgi(send, json_reply(503, {"error": "the service is starting", "reason": "starting"},
                                              {"Retry-After": "1"}))
            return None
        if not gate.enabled:
            return receive
        headers: dict[str, str] = {}
        for k, v in scope.get("headers", []):
            name, value = k.decode("latin-1").lower(), v.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        body = b""
        signed = credentials(headers) == "signature"
        if signed:
            try:
                length = declared_length(method, headers.get("content-length"), headers.get("transfer-encoding"),
                                         self.max_payload)
                body = await _read_body(receive, length)
            except RequestError as exc:
                await _send_asgi(send, error_reply(exc))
                return None
            except ClientDisconnect:
                return None
        verdict = gate.check(method, path, headers, body)
        if not verdict.ok:
            logger.info("bentoedge: refused %s %s: %d %s", method, path, verdict.status, verdict.reason)
            await _send_asgi(send, refusal(verdict))
            return None
        scope[PRINCIPAL_KEY] = verdict.principal  # who it is, for routes that act on it (fleet reports)
        if not signed:
            return receive
        # The body was read here, even an empty one: the app must be handed it again, or its
        # read would wait on a request that has nothing more to send (a signed empty POST hung).
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        return replay

    @staticmethod
    def _wants(path: str, start: Message) -> bool:
        status = start["status"]
        if path == "/docs.json":
            return bool(status == 200)
        kind = dict(start.get("headers", [])).get(b"content-type", b"")
        return status in (404, 405) and kind.startswith(b"text/plain")

    async def _send_rewritten(self, path: str, start: dict[str, Any], body: bytes, send: Send) -> None:
        headers: list[tuple[bytes, bytes]] = list(start.get("headers", []))
        new: dict[bytes, bytes] = {}
        if start["status"] == 200:  # /docs.json
            try:
                doc = json.loads(body)
                doc.setdefault("paths", {}).update(service_paths(self.signature()))
                body = json.dumps(doc).encode()
            except (ValueError, AttributeError):
                pass  # not JSON: pass BentoML's answer through untouched
        else:
            allow = dict(headers).get(b"allow", b"").decode("latin-1")
            reply = not_found(path) if start["status"] == 404 else method_not_allowed(path, allow or "GET")
            body = reply.body
            new[b"content-type"] = reply.content_type.encode()
        new[b"content-length"] = str(len(body)).encode()
        kept = [(k, v) for k, v in headers if k.lower() not in new]
        await send({**start, "headers": kept + list(new.items())})
        await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive, length: int) -> bytes:
    """Exactly the declared body (the server never delivers more); 400 when it ends short."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > length:
            raise RequestError("the body is longer than its Content-Length", status=400)
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    if size != length:
        raise RequestError("the body is shorter than its Content-Length", status=400)
    return b"".join(chunks)


async def _send_asgi(send: Send, reply: Reply) -> None:
    headers = [(b"content-type", reply.content_type.encode()), (b"content-length", str(len(reply.body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})
