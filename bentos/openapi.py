"""The OpenAPI text of the prediction contract, built once for the device and the cloud.

``bentos.api`` is the contract in code; this is the same contract in words, so that both
servers document exactly what they answer: /predict and /invocations (SageMaker's name
for it), JSON or .npz in and out, the x-bentoedge-* placement headers, and every error
(400, 411, 413, 415, 422, 503).

- ``prediction_paths`` is the /predict and /invocations part; the cloud merges it into
  the document BentoML serves at /docs.json (``cloud.service``).
- ``device_document`` is the whole document the device agent serves (``edge.server``),
  the same paths plus the agent's health and status routes.
- ``fleet_reports_operation`` is the cloud's ``POST /fleet/reports``, where devices post
  their signed reports (``bentos.fleet_report``, ``cloud.fleet.intake``); the BentoML
  service adds it to its document (``cloud.service_http.service_paths``).

What legitimately differs is a parameter: ``served_by`` lists where a server's answers
may come from (the device forwards, so ``edge`` or ``cloud``; the cloud only ``cloud``).
Pure and free of web frameworks, because the device imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bentoedge.bentos import fleet_report as rp
from bentoedge.bentos.api import (
    HEADER_DEGRADED,
    HEADER_MODEL,
    HEADER_REASON,
    HEADER_SERVED_BY,
    HEADER_VERSION,
    JSON,
    NPZ,
    describe,
)
from bentoedge.bentos.manifest import Signature, TensorSpec

TAG = "bentoedge"



def _inputs_schema(signature: Signature | None) -> dict[str, Any]:
    """The ``inputs`` object: the model's input names and types when known, any arrays otherwise."""
    if signature is None:
        return {"type": "object", "additionalProperties": {"type": "array", "items": {}}}
    props = {t.name: {"type": "array", "items": {}, "description": _text(t)} for t in signature.inputs}
    return {"type": "object", "required": sorted(props), "properties": props, "additionalProperties": False}


def _text(t: TensorSpec) -> str:
    """The tensor's type, and for a model with integer I/O how floats are quantized for it."""
    if t.quantized is None:
        return describe(t)
    q = t.quantized
    return (f"{describe(t)}; the model holds it as {q.dtype} (scale {q.scale:g}, zero point {q.zero_point}): "
            "send and receive float32, quantized at the boundary")


def _error(description: str, field: str = "input", required: bool | None = None) -> dict[str, Any]:
    """An error answer: ``{"error", "input"}`` for a 4xx, ``{"error", "reason"}`` for a 503.

    ``field`` is the answer's second member, required when ``required`` says so (by default
    only a 503's ``reason`` is: an error names an input only when one is at fault).
    """
    # Built fresh each time: a caller may edit its document, and must not edit the next one.
    names = ["error", field] if (field == "reason" if required is None else required) else ["error"]
    schema = {"type": "object", "required": names,
              "properties": {"error": {"type": "string"}, field: {"type": "string"}}}
    return {"description": description, "content": {JSON: {"schema": schema}}}


def predict_operation(signature: Signature | None, served_by: Sequence[str]) -> dict[str, Any]:
    """The POST operation of /predict: request body, 200 with its headers, every error."""
    header = {"schema": {"type": "string"}}
    outputs: dict[str, Any] = {"type": "object"}
    if signature is not None:
        outputs["properties"] = {t.name: {"type": "array", "items": {}, "description": _text(t)}
                                 for t in signature.outputs}
    return {
        "tags": [TAG],
        "summary": "Predict on named inputs (the bentoedge API, the same on devices and in the cloud)",
        "description": (
            "Body: JSON {\"inputs\": {\"<input name>\": <nested list>}} or an application/x-npz archive with "
            "one array per input name, with a Content-Length. Answers {\"outputs\": {...}, \"model\": "
            "{\"name\", \"version\"}, \"served_by\": ...}, or an .npz of outputs with Accept: application/x-npz; "
            f"the headers {HEADER_SERVED_BY} and {HEADER_VERSION} name where and what answered."),
        "requestBody": {"required": True, "content": {
            JSON: {"schema": {"type": "object", "required": ["inputs"],
                              "properties": {"inputs": _inputs_schema(signature)}}},
            NPZ: {"schema": {"type": "string", "format": "binary"}}}},
        "responses": {
            "200": {"description": "outputs by name",
                    "headers": {HEADER_SERVED_BY: {**header, "description": "edge or cloud"},
                                HEADER_VERSION: header, HEADER_MODEL: header,
                                HEADER_REASON: {**header, "description": "why it was forwarded (forwarded answers)"},
                                HEADER_DEGRADED: {**header, "description": "device answers only: why a request that "
                                                  "wanted the cloud ran here (the cloud could not answer)"}},
                    "content": {
                        JSON: {"schema": {"type": "object", "required": ["outputs", "model", "served_by"],
                                          "properties": {
                                              "outputs": outputs, "model": {"type": "object"},
                                              "served_by": {"type": "string", "enum": list(served_by)},
                                              "fallback_reason": {"type": "string"},
                                              "degraded": {"type": "string"}}}},
                        NPZ: {"schema": {"type": "string", "format": "binary"}}}},
            "400": _error("malformed body, or an unknown or missing input"),
            "401": _error("no usable credentials: the cloud takes a device's RFC 9421 signature or an API key "
                          "(Authorization: Bearer); a device bound beyond loopback takes its local token"),
            "403": _error("cloud: the device or the API key is unknown or revoked"),
            "404": _error("no such route"),
            "405": _error("the route takes another method (see Allow)"),
            "411": _error("no Content-Length (or a chunked body)"),
            "413": _error("body too large"),
            "415": _error("unsupported media type"),
            "422": _error("an input has the wrong dtype, shape or values"),
            "503": _error("cannot be answered now (overloaded, no model, cloud unreachable); "
                          "the reason says why; retry after Retry-After", field="reason")}}


def prediction_paths(signature: Signature | None, served_by: Sequence[str]) -> dict[str, Any]:
    """/predict and /invocations, the same operation under both names."""
    op = predict_operation(signature, served_by)
    return {"/predict": {"post": op},
            "/invocations": {"post": {**op, "summary": "SageMaker's name for POST /predict: the same call"}}}


def device_document(signature: Signature | None, version: str) -> dict[str, Any]:
    """The OpenAPI document the device agent serves at /docs.json."""
    return {
        "openapi": "3.0.2",
        "info": {"title": "bentoedge device agent", "version": version,
                 "description": "The bentoedge prediction API, served on the device; the same /predict as the cloud."},
        "paths": {
            **prediction_paths(signature, ("edge", "cloud")),
            "/livez": {"get": {"tags": [TAG], "summary": "the process is up",
                               "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"tags": [TAG], "summary": "a model is active, or the cloud is usable in this mode",
                                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
            "/metrics": {"get": {"tags": [TAG], "summary": "Prometheus text exposition",
                                 "responses": {"200": {"description": "metrics"}}}},
            "/status": {"get": {"tags": [TAG], "summary": "active version, last sync, counts, latency, fallback reasons",
                                "responses": {"200": {"description": "status JSON"},
                                              "401": {"description": "send the local token (STATE/api.token)"}}}},
        },
    }


def fleet_reports_operation() -> dict[str, Any]:
    """The POST operation of /fleet/reports: a device's signed report envelope in, stored or refused.

    What it answers is ``cloud.fleet.intake.FleetIntake.receive``'s, behind the service's
    authentication (``cloud.auth``) and framing check (``bentos.api.declared_length``).
    """
    b64 = "(standard base64, padded)"
    device_id = rp.DEVICE_ID_RE.pattern.removesuffix("\\Z") + "$"  # JSON Schema patterns end with $
    envelope = {
        "type": "object", "additionalProperties": False,
        "required": ["format", "alg", "device_id", "payload", "signature"],
        "properties": {
            "format": {"type": "string", "enum": [rp.ENVELOPE_FORMAT]},
            "alg": {"type": "string", "enum": ["ed25519"]},
            "device_id": {"type": "string", "pattern": device_id,
                          "description": "the device the report is from; the report inside names it too"},
            "payload": {"type": "string", "format": "byte",
                        "description": f"the report, {rp.FORMAT}, as canonical JSON bytes {b64}; "
                                       f"at most {rp.MAX_REPORT_BYTES} bytes (and the whole envelope at most "
                                       f"{rp.MAX_ENVELOPE_BYTES})"},
            "signature": {"type": "string", "format": "byte",
                          "description": f"Ed25519 signature {b64}, 64 bytes, by the device's identity key over "
                                         f"{rp.DOMAIN.decode()!r} followed by the payload bytes"}}}
    stored = {"type": "object", "required": ["stored", "device_id", "seq"],
              "properties": {"stored": {"type": "boolean"}, "device_id": {"type": "string"},
                             "seq": {"type": "integer"}}}
    return {
        "tags": [TAG],
        "summary": "A device's signed report (fleet status, health, drift) for the fleet store",
        "description": (
            "The request is signed by an enrolled device (RFC 9421: Signature, Signature-Input, "
            "Content-Digest), and the report inside is signed again by the same identity key, so it proves "
            "its device wherever it is kept. Stored when its seq is above the stored report's; a replay or "
            f"a late report is answered {{\"stored\": false}}. At most {rp.MAX_ENVELOPE_BYTES} bytes, "
            "with a Content-Length."),
        "requestBody": {"required": True, "content": {JSON: {"schema": envelope}}},
        "responses": {
            "200": {"description": "checked; stored, or not (a replay or late)", "content": {JSON: {"schema": stored}}},
            "400": _error("a malformed Content-Length, envelope or report, or a report sent over a day "
                          "away from the service's clock", "reason", required=False),
            "401": _error("no usable device signature (none, malformed, stale, replayed, or over another body)"),
            "403": _error("not an enrolled device: an API key, authentication off, an unknown or revoked key, "
                          "an envelope signature that does not verify, a device id another key reports under",
                          "reason", required=False),
            "404": _error("this service keeps no fleet store (BENTOEDGE_FLEET=off)"),
            "411": _error("no Content-Length (or a chunked body)"),
            "413": _error(f"over {rp.MAX_ENVELOPE_BYTES} bytes"),
            "503": _error("cannot be taken now (the service is starting, or too many signed requests); "
                          "retry after Retry-After", field="reason")}}
