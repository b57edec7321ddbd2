"""The prediction API contract shared by the cloud service and the device agent.

Both servers accept the same requests and answer the same way (DESIGN.md section 10):

    POST /predict  application/json     {"inputs": {"<name>": <nested list>, ...}}
                   application/x-npz    an .npz archive, one array per input name
    200            {"outputs": {...}, "model": {"name", "version"}, "served_by": "edge"|"cloud"}
                   (an .npz of outputs when the client sends ``Accept: application/x-npz``;
                    the model and placement are then in the x-bentoedge-* headers)
    4xx            {"error": "...", "input": "<name>"}

This module turns a request body into validated arrays, or a ``RequestError`` that names
the input and what was expected, without ever touching a model.  Pure: bytes and the
manifest's signature in, arrays or an error out.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from bentoedge.bentos.errors import RequestError
from bentoedge.bentos.manifest import Signature, TensorSpec

JSON = "application/json"
NPZ = "application/x-npz"
DEFAULT_MAX_PAYLOAD = 16 << 20

HEADER_SERVED_BY = "x-bentoedge-served-by"
HEADER_VERSION = "x-bentoedge-model-version"
HEADER_MODEL = "x-bentoedge-model"
HEADER_REASON = "x-bentoedge-fallback-reason"


def parse_request(body: bytes, content_type: str | None, signature: Signature,
                  max_payload: int = DEFAULT_MAX_PAYLOAD) -> dict[str, np.ndarray]:
    """Validated input arrays from a request body, or RequestError (400/413/415/422)."""
    if not body:
        raise RequestError("the request body is empty; send {\"inputs\": {...}} as JSON or an .npz archive")
    if len(body) > max_payload:
        raise RequestError(f"the request body is {len(body)} bytes; the limit is {max_payload}", status=413)
    kind = (content_type or JSON).split(";")[0].strip().lower()
    if kind in (NPZ, "application/octet-stream"):
        raw = _parse_npz(body, max_payload)
    elif kind in (JSON, "text/json", ""):
        raw = _parse_json(body)
    else:
        raise RequestError(f"unsupported content type {kind!r}; use {JSON} or {NPZ}", status=415)
    return validate_inputs(raw, signature)


_orjson: Any
try:  # orjson parses a large tensor three times faster and writes answers twenty times faster
    import orjson as _orjson
except ImportError:  # a minimal device install: the standard library does the same, slower
    _orjson = None


def json_dumps(doc: Any) -> bytes:
    """Compact JSON bytes for a response body (non-finite floats become null)."""
    if _orjson is not None:
        return _orjson.dumps(doc, option=_orjson.OPT_SERIALIZE_NUMPY)
    return json.dumps(doc, separators=(",", ":")).encode()


def _parse_json(body: bytes) -> Mapping[str, Any]:
    doc = None
    if _orjson is not None:
        try:
            doc = _orjson.loads(body)
        except ValueError:
            doc = None  # malformed, or NaN tokens: the standard parser below says exactly what
    try:
        if doc is None:
            doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise RequestError("the request body nests JSON too deeply") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), dict):
        raise RequestError("the request must be a JSON object with an \"inputs\" object mapping input names to arrays")
    return doc["inputs"]


def _parse_npz(body: bytes, max_payload: int) -> Mapping[str, Any]:
    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("not an archive")
            # A compressed archive can expand a thousandfold: bound what it unpacks to.
            members = z.zip.infolist() if z.zip is not None else []
            expanded = sum(int(info.file_size) for info in members)
            if expanded > max_payload:
                raise RequestError(f"the .npz expands to {expanded} bytes; the limit is {max_payload}", status=413)
            return {k: z[k] for k in z.files}
    except RequestError:
        raise
    except Exception:  # numpy raises several kinds for a bad archive
        raise RequestError("the request body is not a readable .npz archive of arrays") from None


def validate_inputs(raw: Mapping[str, Any], signature: Signature) -> dict[str, np.ndarray]:
    expected = {t.name: t for t in signature.inputs}
    unknown = sorted(set(raw) - set(expected))
    if unknown:
        raise RequestError(f"unknown input {unknown[0]!r}; this model takes {sorted(expected)}", input_name=unknown[0])
    arrays: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        if spec.name not in raw:
            raise RequestError(f"input {spec.name!r} is missing; expected {describe(spec)}", input_name=spec.name)
        arrays[spec.name] = _to_array(raw[spec.name], spec)
    _check_batch(arrays, signature)
    return arrays


def describe(spec: TensorSpec) -> str:
    dims = ", ".join("?" if d is None else str(d) for d in spec.shape)
    return f"{spec.dtype}[{dims}]"


def _to_array(value: Any, spec: TensorSpec) -> np.ndarray:
    want = np.dtype(spec.dtype)
    try:
        arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    except (ValueError, TypeError):
        arr = None
    if arr is None or arr.dtype.kind not in "biuf":
        raise RequestError(f"input {spec.name!r} must be a rectangular array of numbers, {describe(spec)}",
                           input_name=spec.name, status=422)
    if arr.dtype.kind == "f" and want.kind in "iub" and (
            not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr))):
        raise RequestError(f"input {spec.name!r} must hold integers ({spec.dtype})", input_name=spec.name, status=422)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise RequestError(f"input {spec.name!r} contains NaN or infinity", input_name=spec.name, status=422)
    if arr.ndim != len(spec.shape):
        raise RequestError(f"input {spec.name!r} has shape {list(arr.shape)}, expected {describe(spec)}",
                           input_name=spec.name, status=422)
    for got, dim in zip(arr.shape, spec.shape, strict=True):
        if (dim is not None and got != dim) or got == 0:
            raise RequestError(f"input {spec.name!r} has shape {list(arr.shape)}, expected {describe(spec)}",
                               input_name=spec.name, status=422)
    if want.kind in "iu":
        info = np.iinfo(want)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise RequestError(f"input {spec.name!r} has values outside {spec.dtype}", input_name=spec.name, status=422)
    out = np.ascontiguousarray(arr, dtype=want)
    if want.kind == "f" and arr.dtype != want and not np.all(np.isfinite(out)):
        raise RequestError(f"input {spec.name!r} has values outside {spec.dtype}", input_name=spec.name, status=422)
    return out


def _check_batch(arrays: Mapping[str, np.ndarray], signature: Signature) -> None:
    batches = {spec.name: arrays[spec.name].shape[0] for spec in signature.inputs
               if spec.shape and spec.shape[0] is None}
    if len(set(batches.values())) > 1:
        raise RequestError(f"inputs disagree on the batch size: {batches}", status=422)


def batch_size(arrays: Mapping[str, np.ndarray]) -> int:
    return max((a.shape[0] for a in arrays.values() if a.ndim), default=1)


def response_json(outputs: Mapping[str, np.ndarray], name: str, version: str, served_by: str,
                  fallback_reason: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "outputs": {k: _json_array(v) for k, v in outputs.items()},
        "model": {"name": name, "version": version},
        "served_by": served_by,
    }
    if fallback_reason is not None:
        body["fallback_reason"] = fallback_reason
    return body


def _json_array(value: Any) -> Any:
    """A nested list; non-finite floats become null, since JSON has no NaN or infinity."""
    arr = np.asarray(value)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        as_objects = arr.astype(object)
        as_objects[~np.isfinite(arr)] = None
        return as_objects.tolist()
    return arr.tolist()


def encode_npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})  # type: ignore[arg-type]
    return buf.getvalue()


def decode_npz(body: bytes, max_bytes: int = DEFAULT_MAX_PAYLOAD) -> dict[str, np.ndarray]:
    """Arrays from an .npz body (RequestError if unreadable or expanding past ``max_bytes``)."""
    return dict(_parse_npz(body, max_bytes))
