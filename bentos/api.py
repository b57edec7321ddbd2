"""The prediction API contract shared by the cloud service and the device agent.

Both servers accept the same requests and answer the same way (docs/design.md, the prediction API):

    POST /predict  application/json     {"inputs": {"<name>": <nested list>, ...}}
                   application/x-npz    an .npz archive, one array per input name
    200            {"outputs": {...}, "model": {"name", "version"}, "served_by": "edge"|"cloud"}
                   (an .npz of outputs when the client sends ``Accept: application/x-npz``;
                    the model and placement are then in the x-bentoedge-* headers)
    4xx            {"error": "...", "input": "<name>"}

This module is the contract, written once; the device (``edge.server``, ``edge.gateway``)
and the cloud (``cloud.service_http``) are thin adapters that move bytes between their
sockets and these functions:

- framing: ``declared_length`` (411 no Content-Length or chunked, 400 a bad one, 413 over
  the limit, before a byte is read) and ``check_size``, the one place the limit is said;
- requests: ``parse_request`` turns a body into validated arrays, or a ``RequestError``
  that names the input and what was expected, without ever touching a model;
- answers: ``Reply`` (status, body, media type, headers) and its makers:
  ``prediction_reply`` (Accept negotiation, JSON or .npz, and the placement headers),
  ``error_reply``, ``not_found``, ``method_not_allowed``;
- checking an answer: ``read_answer``, what a client (``edge.cloud_client``, the
  conformance tests) accepts as the contract's shape.

The OpenAPI text for the same routes is ``bentos.openapi``.  Pure: no sockets, no model,
nothing heavier than numpy, because the device imports it.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np

from bentoedge.bentos.channel_layout import valid_name
from bentoedge.bentos.errors import RequestError, UnavailableError
from bentoedge.bentos.manifest import Signature, TensorSpec

JSON = "application/json"
NPZ = "application/x-npz"
DEFAULT_MAX_PAYLOAD = 16 << 20

HEADER_SERVED_BY = "x-bentoedge-served-by"
HEADER_VERSION = "x-bentoedge-model-version"
HEADER_MODEL = "x-bentoedge-model"
HEADER_REASON = "x-bentoedge-fallback-reason"
HEADER_DEGRADED = "x-bentoedge-degraded"  # served by the device though the cloud was wanted, and why


# -- framing: how long a body may be, decided before it is read ------------------------------

def check_size(size: int, limit: int) -> None:
    """RequestError 413 when a body of ``size`` bytes is over ``limit``: the one statement of the limit."""
    if size > limit:
        raise RequestError(f"the request body is {size} bytes; the limit is {limit}", status=413)


def declared_length(method: str, content_length: str | None, transfer_encoding: str | None,
                    limit: int) -> int:
    """The body length a request declares, refused (411/400/413) before any of it is read.

    A body must come with a Content-Length: a server can then refuse one that is too large
    without reading it, and a device needs no chunked decoder.  A GET may send none (0).
    """
    if (transfer_encoding or "").strip().lower() not in ("", "identity"):
        raise RequestError("chunked bodies are not accepted; send a Content-Length", status=411)
    if content_length is None:
        if method == "POST":
            raise RequestError("send a Content-Length header with the request body", status=411)
        return 0
    # Digits only: int() would take "5_0", " 50", "+50" and other digits than ASCII, and a
    # repeated header (sent joined with a comma) must not be read as either of its values.
    if not _DIGITS.fullmatch(content_length):
        raise RequestError(f"Content-Length {content_length[:40]!r} is not one byte count")
    length = int(content_length)
    check_size(length, limit)
    return length


_DIGITS = re.compile(r"[0-9]{1,18}")


def media_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json`` (lower case, no parameters)."""
    return (content_type or "").split(";")[0].strip().lower()


# -- requests -----------------------------------------------------------------------------

def parse_request(body: bytes, content_type: str | None, signature: Signature,
                  max_payload: int = DEFAULT_MAX_PAYLOAD) -> dict[str, np.ndarray]:
    """Validated input arrays from a request body, or RequestError (400/413/415/422)."""
    if not body:
        raise RequestError("the request body is empty; send {\"inputs\": {...}} as JSON or an .npz archive")
    check_size(len(body), max_payload)
    kind = media_type(content_type or JSON)
    if kind in (NPZ, "application/octet-stream"):
        raw = _parse_npz(body, max_payload)
    elif kind in (JSON, "text/json", ""):
        doc, by_orjson = _parse_json(body)
        raw = doc["inputs"]
        if by_orjson:
            exact = _arrays_unless_rounded(_numeric_inputs_as_arrays(body, doc, signature), signature)
            raw = exact if exact is not None else _parse_json(body, orjson_first=False)[0]["inputs"]
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


def _parse_json(body: bytes, orjson_first: bool = True) -> tuple[Mapping[str, Any], bool]:
    """The request document, and whether orjson read it (then there is no NaN token, what
    ``_numeric_inputs_as_arrays`` relies on; see ``_arrays_unless_rounded`` for integers)."""
    doc = None
    if _orjson is not None and orjson_first:
        try:
            doc = _orjson.loads(body)
        except ValueError:
            doc = None  # malformed, NaN tokens or huge integers: the standard parser below says exactly what
    by_orjson = doc is not None
    try:
        if doc is None:
            doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise RequestError("the request body nests JSON too deeply") from None
    except ValueError:  # e.g. an integer of more digits than Python converts (4300)
        raise RequestError("the request body holds a number too long to read") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), dict):
        raise RequestError("the request must be a JSON object with an \"inputs\" object mapping input names to arrays")
    return doc, by_orjson


#: orjson reads an integer below -2**63 or above 2**64 - 1 as the nearest double, where the
#: standard parser keeps it exact (and numpy then refuses it); any such double is this large.
_ROUNDED_INTEGER_MAGNITUDE = 2.0 ** 63


def _arrays_unless_rounded(inputs: Mapping[str, Any], signature: Signature) -> dict[str, Any] | None:
    """``inputs`` (as orjson read them) with each of the signature's numeric inputs as the
    array ``np.asarray`` makes of it, or None when one may hold an integer orjson rounded:
    then the body must be read again by the standard parser, or a 64-bit input could be fed
    -2**63 for -2**63 - 1 (hypothesis found the difference).  A value ``asarray`` cannot
    convert is left as it is, for ``validate_inputs`` to refuse the same way either way."""
    out = dict(inputs)
    for spec in signature.inputs:
        value = inputs.get(spec.name)
        if value is None:
            continue
        try:
            arr = value if isinstance(value, np.ndarray) else np.asarray(value)
        except (ValueError, TypeError):
            continue
        if arr.dtype.kind == "f" and arr.size and float(np.max(np.abs(arr))) >= _ROUNDED_INTEGER_MAGNITUDE:
            return None
        out[spec.name] = arr
    return out


def _numeric_inputs_as_arrays(body: bytes, doc: Mapping[str, Any], signature: Signature) -> Mapping[str, Any]:
    """``doc["inputs"]``, with each float input that is a rectangular nested list of numbers
    already an array; anything else is left as parsed, for ``validate_inputs`` to judge.

    Why: numpy's ``asarray`` of a nested list inspects every element's type and the nesting
    again, which cost more than parsing the JSON itself (4.0 ms for a 96x96x3 image against
    1.5 ms here).  ``np.fromiter`` over the chained lists skips that, but it would read a
    string such as "1.5" as a number and ``null`` as NaN, where the contract says 422.  So it
    runs only when the body can hold neither: every JSON string opens and closes with an
    unescaped quote, so a body with exactly the quotes of its keys (top level and inputs)
    holds no string value anywhere, and one without ``null`` no null.  Keys that escape a
    quote, nested objects or the word null in a name only send the request the slow way, and
    so does a body orjson could not read (integers past 64 bits, NaN tokens).  The result is
    then the float64 array ``asarray`` would give, and the same checks (finite, in range,
    shape) follow; ``tests/bentos/test_api_contract.py`` holds both ways equal.  (An integer
    past 2**53 in a float input is rounded to float64 first, as JSON numbers are doubles.)
    """
    inputs: Mapping[str, Any] = doc["inputs"]
    if body.count(b'"') != 2 * (len(doc) + len(inputs)) or b"null" in body:
        return inputs
    out = dict(inputs)
    for spec in signature.inputs:
        value = inputs.get(spec.name)
        if isinstance(value, list) and np.dtype(spec.dtype).kind == "f":
            arr = rectangular_numbers(value, len(spec.shape))
            if arr is not None:
                out[spec.name] = arr
    return out


def rectangular_numbers(value: list[Any], rank: int) -> np.ndarray | None:
    """``value`` as a float64 array of ``rank`` dimensions when it is a rectangular nested list
    of numbers (bools count, as in ``asarray``) with no empty dimension; None otherwise, and
    for a string or null inside (see above: the caller has ruled those out)."""
    shape: list[int] = []
    probe: Any = value
    for _ in range(rank):
        if not isinstance(probe, list) or not probe:
            return None
        shape.append(len(probe))
        probe = probe[0]
    if isinstance(probe, list) or rank == 0:
        return None
    try:
        level: Iterable[Any] = (value,)
        for depth in range(1, rank):  # every list at each depth has that depth's length
            level = tuple(chain.from_iterable(level))
            if set(map(len, level)) != {shape[depth]}:
                return None
        leaves = chain.from_iterable(level)
        # A leaf that is a list or an object raises; one too many or too few cannot happen
        # once every length is checked, but ``count`` refuses a short one all the same.
        return np.fromiter(leaves, dtype=np.float64, count=math.prod(shape)).reshape(shape)
    except (TypeError, ValueError):
        return None


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
    """Arrays of the signature's dtypes for ``raw`` inputs, or RequestError naming the input."""
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
    """``float32[?, 4]``: how error messages and the OpenAPI text write a tensor's type."""
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
    """The batch of a request: the largest first dimension among its arrays (1 for scalars)."""
    return max((a.shape[0] for a in arrays.values() if a.ndim), default=1)


# -- answers ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reply:
    """One answer of the contract before a server writes it: each server only puts it on its wire."""

    status: int
    body: bytes
    content_type: str = JSON
    headers: Mapping[str, str] = field(default_factory=dict)


def json_reply(status: int, doc: Any, headers: Mapping[str, str] | None = None) -> Reply:
    """A JSON answer."""
    return Reply(status, json_dumps(doc), JSON, headers or {})


def error_reply(exc: RequestError | UnavailableError) -> Reply:
    """The answer to a refused request: ``{"error", "input"}`` (4xx) or ``{"error", "reason"}`` (503)."""
    # A 503 is temporary by definition (overload, no model yet, cloud down): say when to retry.
    headers = {"Retry-After": "1"} if exc.status == 503 else {}
    return json_reply(exc.status, exc.to_body(), headers)


def not_found(path: str) -> Reply:
    """404 for a path neither server serves."""
    return json_reply(404, {"error": f"no route {path}; see /docs.json"})


def method_not_allowed(path: str, allowed: str) -> Reply:
    """405 with ``Allow`` (``"POST"``, ``"GET, HEAD"``), for a served path called with another method."""
    # Sorted: a framework may list a route's methods in set order, which changes per process.
    allowed = ", ".join(sorted({m.strip().upper() for m in allowed.split(",") if m.strip()}))
    hint = ' with {"inputs": {...}}' if allowed == "POST" else ""
    return json_reply(405, {"error": f"{path} takes {allowed}{hint}"}, {"Allow": allowed})


def wants_npz(accept: str | None) -> bool:
    """Accept negotiation: an .npz answer only when the client names it; JSON otherwise (also ``*/*``)."""
    return bool(accept) and NPZ in (accept or "")


def placement_headers(served_by: str, version: str, name: str = "",
                      fallback_reason: str | None = None) -> dict[str, str]:
    """The x-bentoedge-* headers that say where and what answered (also on .npz answers and relayed 4xx)."""
    # Name and version may come from a cloud's answer body: a header carries them only when
    # they follow the name rule, so no CR/LF, no non-latin-1 text, nothing to inject.
    headers = {HEADER_SERVED_BY: served_by, HEADER_VERSION: version if valid_name(version) else "unknown"}
    if name and valid_name(name):
        headers[HEADER_MODEL] = name
    if fallback_reason is not None:
        headers[HEADER_REASON] = fallback_reason
    return headers


def prediction_reply(outputs: Mapping[str, np.ndarray], name: str, version: str, served_by: str,
                     accept: str | None, degraded: str = "") -> Reply:
    """The 200 for outputs a server computed itself: JSON or .npz as the client accepts, placement in
    headers.  ``degraded`` (the device only) says why a request that wanted the cloud ran here."""
    headers = placement_headers(served_by, version, name)
    if degraded:
        headers[HEADER_DEGRADED] = degraded
    if wants_npz(accept):
        return Reply(200, encode_npz(outputs), NPZ, headers)
    body = response_json(outputs, name, version, served_by)
    if degraded:
        body["degraded"] = degraded
    return json_reply(200, body, headers)


def response_json(outputs: Mapping[str, np.ndarray], name: str, version: str, served_by: str,
                  fallback_reason: str | None = None) -> dict[str, Any]:
    """The JSON body of a 200: outputs by name, the model, where it ran (and why, when forwarded)."""
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
    """An .npz archive of ``arrays`` (uncompressed: answers are small, and speed matters more)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})  # type: ignore[arg-type]
    return buf.getvalue()


def decode_npz(body: bytes, max_bytes: int = DEFAULT_MAX_PAYLOAD) -> dict[str, np.ndarray]:
    """Arrays from an .npz body (RequestError if unreadable or expanding past ``max_bytes``)."""
    return dict(_parse_npz(body, max_bytes))


# -- checking an answer ---------------------------------------------------------------------

class AnswerError(ValueError):
    """An answer without the contract's shape: what a client must not pass on as an answer."""


def read_answer(status: int, body: bytes, content_type: str | None) -> dict[str, Any] | None:
    """The parsed JSON of an answer with the contract's shape, None for an .npz of outputs.

    The shape: a 2xx is a JSON object with an ``outputs`` object, or (as application/x-npz)
    a readable .npz archive; an error (4xx, 5xx) is a JSON object with an ``error`` string.
    Anything else raises AnswerError.
    """
    if media_type(content_type) == NPZ and 200 <= status < 300:
        try:
            decode_npz(body)
        except RequestError:
            raise AnswerError("the .npz answer is unreadable") from None
        return None
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise AnswerError(f"the answer ({status}) is not JSON") from None
    if not isinstance(doc, dict):
        raise AnswerError("the answer is not a JSON object")
    if 200 <= status < 300 and not isinstance(doc.get("outputs"), dict):
        raise AnswerError("the answer has no \"outputs\" object")
    if status >= 400 and not isinstance(doc.get("error"), str):
        raise AnswerError(f"the {status} answer has no \"error\"")
    return doc
