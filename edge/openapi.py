"""The OpenAPI document the device agent serves at /docs.json.

The /predict schema is the cloud service's (DESIGN.md section 10) with the device's
additions: ``served_by`` may be ``edge`` or ``cloud``, a forwarded answer carries
``fallback_reason``, and 503 names why neither the device nor the cloud could answer.
Kept here, not imported from ``cloud``, because a device has no BentoML or Starlette.
"""

from __future__ import annotations

from typing import Any

from bentoedge.bentos.api import (
    HEADER_MODEL,
    HEADER_REASON,
    HEADER_SERVED_BY,
    HEADER_VERSION,
    JSON,
    NPZ,
)
from bentoedge.bentos.manifest import Signature


def _tensor_schema(signature: Signature | None) -> dict[str, Any]:
    if signature is None:
        return {"type": "object", "additionalProperties": {"type": "array", "items": {}}}
    props = {t.name: {"type": "array", "items": {},
                      "description": f"{t.dtype}[{', '.join('?' if d is None else str(d) for d in t.shape)}]"}
             for t in signature.inputs}
    return {"type": "object", "required": sorted(props), "properties": props, "additionalProperties": False}


def document(signature: Signature | None, version: str) -> dict[str, Any]:
    header = {"schema": {"type": "string"}}
    error = {"type": "object", "required": ["error"], "properties": {
        "error": {"type": "string"}, "input": {"type": "string"}}}
    return {
        "openapi": "3.0.2",
        "info": {"title": "bentoedge device agent", "version": version,
                 "description": "The bentoedge prediction API, served on the device; the same /predict as the cloud."},
        "paths": {
            "/predict": {"post": {
                "summary": "Predict on named inputs (answered locally, or forwarded to the cloud)",
                "requestBody": {"required": True, "content": {
                    JSON: {"schema": {"type": "object", "required": ["inputs"],
                                      "properties": {"inputs": _tensor_schema(signature)}}},
                    NPZ: {"schema": {"type": "string", "format": "binary"}}}},
                "responses": {
                    "200": {"description": "outputs by name",
                            "headers": {HEADER_SERVED_BY: header, HEADER_VERSION: header, HEADER_MODEL: header,
                                        HEADER_REASON: header},
                            "content": {
                                JSON: {"schema": {"type": "object", "required": ["outputs", "model", "served_by"],
                                                  "properties": {
                                                      "outputs": {"type": "object"}, "model": {"type": "object"},
                                                      "served_by": {"type": "string", "enum": ["edge", "cloud"]},
                                                      "fallback_reason": {"type": "string"}}}},
                                NPZ: {"schema": {"type": "string", "format": "binary"}}}},
                    "400": {"description": "malformed body", "content": {JSON: {"schema": error}}},
                    "411": {"description": "no Content-Length", "content": {JSON: {"schema": error}}},
                    "413": {"description": "body too large", "content": {JSON: {"schema": error}}},
                    "415": {"description": "unsupported media type", "content": {JSON: {"schema": error}}},
                    "422": {"description": "an input has the wrong name, dtype, shape or values",
                            "content": {JSON: {"schema": error}}},
                    "503": {"description": "neither the device nor the cloud could answer",
                            "content": {JSON: {"schema": {"type": "object", "required": ["error", "reason"],
                                                          "properties": {"error": {"type": "string"},
                                                                         "reason": {"type": "string"}}}}}}}}},
            "/livez": {"get": {"summary": "the process is up", "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"summary": "a model is active, or the cloud is usable in this mode",
                                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
            "/metrics": {"get": {"summary": "Prometheus text exposition",
                                 "responses": {"200": {"description": "metrics"}}}},
            "/status": {"get": {"summary": "active version, last sync, counts, latency, fallback reasons",
                                "responses": {"200": {"description": "status JSON"}}}},
        },
    }
