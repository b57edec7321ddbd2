"""The cloud service as an AWS Lambda function: ``bentoedge.cloud.aws_lambda.handler``.

Lambda has no server to mount the contract app in: it hands the function one event per
request.  ``handler(event, context)`` answers API Gateway HTTP API events (payload format
2.0) and Lambda function URL events (the same shape) with the prediction contract the two
servers answer (docs/design.md, the prediction API): the framing rule, the parsing, every
answer and the OpenAPI text are ``bentos.api``/``bentos.openapi``'s, and the model is
brought up by the cloud service's own ``cloud.service_model.open_cloud_model`` (signature,
key unwrap, decryption in memory, ``InferenceSession``, golden samples).  This module only
moves bytes between events and those functions: a direct adapter, thinner than an ASGI
bridge (no event loop, no Starlette request per call, nothing of BentoML imported).

Routes, as on the BentoML service: POST /predict and /invocations; GET (and HEAD) /ping and
/readyz (200 once the model is open and passed its golden samples, else 503 with a reason),
/livez (the function runs) and /docs.json (the contract's OpenAPI, with the model's inputs).
Under a named API Gateway stage the ``/<stage>`` prefix of the path is dropped.

Where Lambda differs from a socket, and what this adapter does about it:

- Bodies: an ``isBase64Encoded`` body is decoded (AWS encodes binary bodies such as
  ``application/x-npz``); a binary answer (an .npz of outputs) goes back base64-encoded.
- Framing: AWS has read the whole body before the function runs, so a POST whose event
  carries no Content-Length is taken at its body's length; one with neither a header nor
  a body is refused (411) as the contract says, and so is a Transfer-Encoding other than
  identity, a malformed Content-Length (400) or one over the limit (413).
- Size: Lambda takes at most 6 MiB per request and answer (``LAMBDA_MAX_BODY``), so the
  body limit is the smaller of that and ``BENTOEDGE_MAX_PAYLOAD``; a larger event body is a
  413, and an answer that would not fit is a 413 that says to send fewer rows.
- Errors: an event of any other shape (a direct invoke, payload format 1.0) is a 400 in
  the contract's JSON form; a model that cannot be opened is a 503 (``reason:
  model_unavailable``) with the cause logged as one line (``bentoedge: refusing to serve``);
  any other failure is a 500 whose cause is logged as one line.  Nothing raises out of
  ``handler``.

The model (``BENTOEDGE_MODEL``: a sealed folder, an exported ``.sealed`` file, or
``name[:version]`` found under ``$BENTO_PATH/models`` in a Bento image or
``$BENTOML_HOME/models``; other settings as ``cloud.service_core`` lists them) is opened
once per execution environment, on its first request (the cold start), and kept in the
one piece of module state, the default ``LambdaHandler``'s cache, keyed by the model tag.
A failed open is retried no more than every ``RETRY_OPEN_S`` seconds.  ``LambdaHandler``
takes the opener, the environment and the clock, so tests and benchmarks build their own.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bentoedge.bentos.api import (
    JSON,
    Reply,
    declared_length,
    error_reply,
    json_reply,
    media_type,
    method_not_allowed,
    not_found,
    parse_request,
    prediction_reply,
)
from bentoedge.bentos.auth import Verdict, credentials
from bentoedge.bentos.errors import BentoEdgeError, NotFoundError, RequestError, UnavailableError
from bentoedge.bentos.openapi import TAG
from bentoedge.bentos.sealed import SealedModel
from bentoedge.cloud.auth import OPEN_PATHS, Gate, gate_from_env, refusal
from bentoedge.cloud.service_core import CloudSettings
from bentoedge.cloud.service_model import Loaded, open_cloud_model

logger = logging.getLogger("bentoedge.cloud.aws_lambda")

#: AWS Lambda's limit on a synchronous request and on its answer (6 MB, in bytes).
LAMBDA_MAX_BODY = 6 * 1024 * 1024
#: Room left in an answer for the envelope around its body (status, headers).
ENVELOPE = 4096
#: Seconds before a model that failed to open is tried again in the same environment.
RETRY_OPEN_S = 30.0

GET = "GET, HEAD"
#: Path -> the methods it takes, as the ``Allow`` header says them.
ROUTES: Mapping[str, str] = {
    "/predict": "POST",
    "/invocations": "POST",
    "/ping": GET,
    "/readyz": GET,
    "/livez": GET,
    "/docs.json": GET,
}

Opener = Callable[[str, CloudSettings, Mapping[str, str]], Loaded]


# -- events in, answers out (pure) -------------------------------------------------------------


@dataclass(frozen=True)
class HttpRequest:
    """The HTTP request an event carries: header names in lower case, the body decoded."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    has_body: bool  # the event carried a body (an empty string counts), so its length is known
    sent_path: str = ""  # the path as the client sent it (stage prefix kept): what a signature covers
    iam_caller: str = ""  # the caller AWS IAM authenticated (function URL with AuthType AWS_IAM), if any

    @property
    def content_length(self) -> str | None:
        """The declared length, else the body's own: AWS read the whole body already."""
        declared = self.headers.get("content-length")
        if declared is None and self.has_body:
            return str(len(self.body))
        return declared


def parse_event(event: object) -> HttpRequest:
    """The request in an HTTP API (2.0) or function URL event; RequestError 400/413 otherwise."""
    if not isinstance(event, Mapping):
        raise RequestError(
            f"the event is a JSON {type(event).__name__}, not an HTTP request; {_INVOKE_HINT}"
        )
    ctx = event.get("requestContext")
    http = ctx.get("http") if isinstance(ctx, Mapping) else None
    if (
        event.get("version") != "2.0"
        or not isinstance(http, Mapping)
        or not isinstance(http.get("method"), str)
    ):
        if "httpMethod" in event:
            raise RequestError(
                "the event is API Gateway payload format 1.0; set the integration's payload "
                "format version to 2.0 (an HTTP API) or call the function URL"
            )
        raise RequestError(f"the event is not an HTTP request; {_INVOKE_HINT}")
    assert isinstance(ctx, Mapping)
    path = event.get("rawPath") or http.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise RequestError("the event has no request path (rawPath); " + _INVOKE_HINT)
    sent_path = path
    stage = ctx.get("stage")
    if isinstance(stage, str) and stage and stage != "$default":
        prefix = f"/{stage}"
        if path == prefix or path.startswith(prefix + "/"):
            path = path[len(prefix) :] or "/"
    raw_headers = event.get("headers") or {}
    if not isinstance(raw_headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw_headers.items()
    ):
        raise RequestError("the event's headers are not a JSON object of strings; " + _INVOKE_HINT)
    headers = {k.lower(): v for k, v in raw_headers.items()}
    return HttpRequest(http["method"].upper(), path, headers, *_body(event), sent_path=sent_path,
                       iam_caller=_iam_caller(ctx))


def _iam_caller(ctx: Mapping[str, Any]) -> str:
    """Who AWS IAM says sent the request: Lambda fills ``requestContext.authorizer.iam`` only
    after it checked a SigV4 signature (AuthType AWS_IAM); with AuthType NONE it is absent."""
    authorizer = ctx.get("authorizer")
    iam = authorizer.get("iam") if isinstance(authorizer, Mapping) else None
    if not isinstance(iam, Mapping):
        return ""
    for field_name in ("userArn", "callerId", "accessKey"):
        value = iam.get(field_name)
        if isinstance(value, str) and value:
            return value
    return ""


_INVOKE_HINT = (
    "call this function through its function URL or an API Gateway HTTP API (payload format 2.0)"
)


def _body(event: Mapping[str, Any]) -> tuple[bytes, bool]:
    body = event.get("body")
    if body is None:
        return b"", False
    if not isinstance(body, str):
        raise RequestError("the event's body is not a string; " + _INVOKE_HINT)
    encoded = event.get("isBase64Encoded", False)
    if not isinstance(encoded, bool):
        raise RequestError("the event's isBase64Encoded is not true or false; " + _INVOKE_HINT)
    if encoded:
        # Four characters carry three bytes: refuse what cannot fit before decoding any of it.
        _check_lambda_size(len(body) // 4 * 3)
        try:
            raw = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(
                "the event's body is marked base64 but is not valid base64"
            ) from None
    else:
        _check_lambda_size(len(body))  # a character is at least one byte
        try:
            raw = body.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestError("the event's body is not valid text") from None
    _check_lambda_size(len(raw))
    return raw, True


def _check_lambda_size(size: int) -> None:
    if size > LAMBDA_MAX_BODY:
        raise RequestError(
            f"the request body is {size} bytes; AWS Lambda takes at most {LAMBDA_MAX_BODY}",
            status=413,
        )


def to_response(reply: Reply, head: bool = False) -> dict[str, Any]:
    """The Lambda (payload format 2.0) answer for ``reply``: a binary body goes base64-encoded."""
    binary = media_type(reply.content_type) != JSON
    data = b"" if head else reply.body
    body = base64.b64encode(data).decode("ascii") if binary else data.decode("utf-8")
    if len(body) + ENVELOPE > LAMBDA_MAX_BODY:
        over = json_reply(
            413,
            {
                "error": f"the answer is {len(body)} bytes, over AWS Lambda's {LAMBDA_MAX_BODY}-byte "
                "limit on answers; send fewer rows per request"
            },
        )
        return to_response(over)
    return {
        "statusCode": reply.status,
        "headers": {"Content-Type": reply.content_type, **reply.headers},
        "body": body,
        "isBase64Encoded": binary,
    }


def openapi_document(signature: Any, version: str) -> dict[str, Any]:
    """The OpenAPI text this function serves: the cloud's contract routes plus its health routes."""
    # Loaded here: the /ping text lives with the cloud service's HTTP face, whose module
    # imports Starlette, a cost a cold start need not pay for a prediction.
    from bentoedge.cloud.service_http import openapi_paths

    health = {
        "/livez": {
            "get": {"tags": [TAG], "summary": "the function runs",
                    "responses": {"200": {"description": "alive"}}}
        },
        "/readyz": {
            "get": {
                "tags": [TAG],
                "summary": "the model is open and passed its golden samples",
                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
            }
        },
    }
    return {
        "openapi": "3.0.2",
        "info": {
            "title": "bentoedge cloud (AWS Lambda)",
            "version": version,
            "description": "The bentoedge prediction API, the same /predict as the device and the BentoML service.",
        },
        "paths": {**openapi_paths(signature), **health},
    }


# -- the model, opened once per execution environment ------------------------------------------


def open_model(spec: str, settings: CloudSettings, env: Mapping[str, str]) -> Loaded:
    """Open ``BENTOEDGE_MODEL`` as the cloud service does (``open_cloud_model``)."""
    path = Path(spec)
    if path.is_file():  # an exported .sealed file: unpacked aside only until it is in memory
        from bentoedge.bentos.store import unpacked

        with unpacked(path) as sealed:
            return open_cloud_model(sealed, settings, env)
    return open_cloud_model(SealedModel.open(locate(spec, env)), settings, env)


def locate(spec: str, env: Mapping[str, str]) -> Path:
    """The sealed folder ``spec`` names: a folder, or ``name[:version]`` in a model store.

    A store is a BentoML ``models/`` folder (``<name>/<version>/sealed/``, where
    ``bentos.store`` keeps sealed models): the Bento's own (``$BENTO_PATH/models``) in an
    image, else ``$BENTOML_HOME/models``.  They are read as folders, so a cold start does not
    import BentoML (a second or so); without a version, the newest release is taken.
    """
    path = Path(spec)
    if path.is_dir():
        return path
    name, _, version = spec.partition(":")
    if "/" in spec or not name:
        raise NotFoundError(
            f"BENTOEDGE_MODEL={spec!r}: no such folder; give a sealed folder or NAME[:VERSION]"
        )
    roots = [Path(env["BENTO_PATH"]) / "models"] if env.get("BENTO_PATH") else []
    roots.append(Path(env.get("BENTOML_HOME") or Path.home() / "bentoml") / "models")
    for root in roots:
        found = _in_store(root / name, None if version in ("", "latest") else version)
        if found is not None:
            return found
    raise NotFoundError(
        f"BENTOEDGE_MODEL={spec!r} is not under {' or '.join(str(r) for r in roots)}; "
        "build it into the image, or point BENTOEDGE_MODEL at a sealed folder"
    )


def _in_store(folder: Path, version: str | None) -> Path | None:
    if version is not None:
        sealed = folder / version / "sealed"
        return sealed if (sealed / "manifest.json").is_file() else None
    if not folder.is_dir():
        return None
    best: tuple[int, str, Path] | None = None
    for candidate in folder.iterdir():
        sealed = candidate / "sealed"
        if not (sealed / "manifest.json").is_file():
            continue
        try:
            manifest = SealedModel.open(sealed).manifest
        except BentoEdgeError:
            continue  # not a sealed model of ours: BentoML keeps other models here too
        key = (manifest.release, manifest.version, sealed)
        if best is None or key[:2] > best[:2]:
            best = key
    return None if best is None else best[2]


@dataclass(frozen=True)
class _Failed:
    why: str
    at: float


class LambdaHandler:
    """``handler`` with its parts given: the opener, the environment, the clock.

    The one state it keeps is its cache of opened models (or the last failure to open
    one), keyed by ``BENTOEDGE_MODEL``; settings are read from ``env`` on each call.
    """

    def __init__(
        self,
        opener: Opener = open_model,
        env: Mapping[str, str] = os.environ,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._opener = opener
        self._env = env
        self._clock = clock
        self._models: dict[str, Loaded | _Failed] = {}
        self._gate: tuple[tuple[object, ...], Gate] | None = None
        # Lambda sends one request at a time; a local server in front of the handler may not.
        self._opening = threading.Lock()

    def __call__(self, event: object, context: object = None) -> dict[str, Any]:
        head = False
        try:
            request = parse_event(event)
            head = request.method == "HEAD"
            reply = self._answer(request)
        except (RequestError, UnavailableError) as exc:
            reply = error_reply(exc)
        except Exception as exc:
            # A bug or a runtime failure: one line in the log, a 500 to the client.
            logger.error(
                "bentoedge: request %s failed: %s: %s",
                _request_id(context),
                type(exc).__name__,
                _line(exc),
            )
            reply = json_reply(
                500, {"error": f"internal error ({type(exc).__name__}); see the function's log"}
            )
        return to_response(reply, head)

    def _answer(self, request: HttpRequest) -> Reply:
        allowed = ROUTES.get(request.path)
        if allowed is None:
            return not_found(request.path)
        if request.method not in allowed.split(", "):
            return method_not_allowed(request.path, allowed)
        if request.path == "/livez":
            return json_reply(200, {"status": "alive"})
        settings = self._settings()
        if request.path not in OPEN_PATHS:
            refused = self._authenticate(request, settings)
            if refused is not None:
                return refused
        if request.path in ("/ping", "/readyz"):
            self.model(settings)
            return json_reply(200, {"status": "ready"})
        if request.path == "/docs.json":
            try:
                manifest = self.model(settings).model.manifest
                return json_reply(200, openapi_document(manifest.signature, manifest.version))
            except UnavailableError:
                # Document the generic shape, as the service does before it is up.
                return json_reply(200, openapi_document(None, "unknown"))
        limit = min(settings.max_payload, LAMBDA_MAX_BODY)
        headers = request.headers
        declared_length(
            request.method, request.content_length, headers.get("transfer-encoding"), limit
        )
        model = self.model(settings).model
        manifest = model.manifest
        arrays = parse_request(request.body, headers.get("content-type"), manifest.signature, limit)
        try:
            outputs = model.predict(arrays)
        except Exception as exc:
            # The model failed on this request: say so in one line, keep serving.
            logger.error(
                "bentoedge: %s failed on a request: %s: %s",
                manifest.tag,
                type(exc).__name__,
                _line(exc),
            )
            return json_reply(
                500,
                {
                    "error": f"the model failed on this request ({type(exc).__name__}); see the function's log"
                },
            )
        return prediction_reply(
            outputs, manifest.name, manifest.version, "cloud", headers.get("accept")
        )

    def _authenticate(self, request: HttpRequest, settings: CloudSettings) -> Reply | None:
        """The service's own check (``cloud.auth.Gate``); the registry is refreshed here when
        due, since a Lambda environment has no time between requests for a thread."""
        if settings.auth_by_iam:
            if request.iam_caller:
                return None
            # The function trusts IAM, yet IAM did not vouch for this event: its URL's AuthType
            # is NONE, or it was invoked some other way.  Refuse rather than serve everyone.
            logger.warning("bentoedge: refused %s %s: BENTOEDGE_AUTH=iam but the event names no IAM caller",
                           request.method, request.path)
            return refusal(Verdict(401, "this function takes only requests AWS IAM signed (SigV4); "
                                        "call its function URL with AuthType AWS_IAM"))
        key = (settings.auth, settings.api_keys_file, settings.channel, settings.channel_root,
               settings.channel_root_sha256, settings.registry, settings.registry_refresh_s, settings.auth_window_s,
               self._env.get("BENTOEDGE_HOME"))
        if self._gate is None or self._gate[0] != key:
            try:
                self._gate = (key, gate_from_env(settings, self._env, shared_replay=False))
            except BentoEdgeError as exc:
                logger.error("bentoedge: refusing to serve: %s", _line(exc))
                raise UnavailableError("this function is misconfigured; see its log", "model_unavailable") from None
            self._gate[1].announce()
        gate = self._gate[1]
        gate.refresh_if_due()
        limit = min(settings.max_payload, LAMBDA_MAX_BODY)
        if credentials(request.headers) == "signature":
            declared_length(request.method, request.content_length, request.headers.get("transfer-encoding"), limit)
        verdict = gate.check(request.method, request.sent_path or request.path, request.headers, request.body)
        if verdict.ok:
            return None
        logger.info("bentoedge: refused %s %s: %d %s", request.method, request.path, verdict.status, verdict.reason)
        return refusal(verdict)

    def _settings(self) -> CloudSettings:
        try:
            return CloudSettings.from_env(self._env)
        except BentoEdgeError as exc:
            logger.error("bentoedge: refusing to serve: %s", _line(exc))
            raise UnavailableError(
                "this function is misconfigured; see its log", "model_unavailable"
            ) from None

    def model(self, settings: CloudSettings) -> Loaded:
        """The opened model of ``settings.model``: opened on first use, then kept."""
        cached = self._models.get(settings.model or "")
        if isinstance(cached, Loaded):
            return cached
        with self._opening:
            return self._open(settings)

    def _open(self, settings: CloudSettings) -> Loaded:
        tag = settings.model
        if not tag:
            logger.error(
                "bentoedge: refusing to serve: BENTOEDGE_MODEL is not set; set it to a sealed model"
            )
            raise UnavailableError(
                "this function has no model configured; see its log", "model_unavailable"
            )
        cached = self._models.get(tag)
        if isinstance(cached, _Failed) and self._clock() - cached.at < RETRY_OPEN_S:
            raise _unopened(tag)
        if isinstance(cached, Loaded):
            return cached
        try:
            loaded = self._opener(tag, settings, self._env)
        except BentoEdgeError as exc:
            logger.error("bentoedge: refusing to serve %s: %s", tag, _line(exc))
            self._models[tag] = _Failed(_line(exc), self._clock())
            raise _unopened(tag) from None
        self._models[tag] = loaded
        p = loaded.placement
        logger.info(
            "bentoedge: serving %s with %s on %s; %d golden samples passed; decrypt %.3fs, ready %.3fs",
            loaded.model.manifest.tag,
            p.artifact.id,
            ",".join(loaded.model.providers),
            loaded.golden_count,
            loaded.decrypt_seconds,
            loaded.load_seconds,
        )
        return loaded


def _unopened(tag: str) -> UnavailableError:
    return UnavailableError(
        f"the model {tag} could not be opened; see the function's log", "model_unavailable"
    )


def _line(exc: BaseException) -> str:
    """An exception's message on one line (ONNX Runtime's span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _request_id(context: object) -> str:
    return str(getattr(context, "aws_request_id", "-"))


# This execution environment's handler: its cache is the module's one state.
_DEFAULT = LambdaHandler()


def handler(event: object, context: object) -> dict[str, Any]:
    """The Lambda entry point (``bentoedge.cloud.aws_lambda.handler``)."""
    return _DEFAULT(event, context)
