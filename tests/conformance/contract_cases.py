"""The HTTP prediction contract as one table: a request, and what every bentoedge server answers.

``test_contract.py`` sends each case to a real device agent (``edge.server.AgentServer``)
and to a real ``bentoml serve`` of the cloud service, and checks the answer the same way
on both.  The table is the contract of docs/design.md (the prediction API) written as data; the code that
answers it is ``bentos.api`` (and ``bentos.openapi`` for /docs.json), shared by both.

The two servers serve different small models (the device a LiteRT ``tiny``, x float32[?, 4];
the cloud an ONNX model, x float32[?, 64]), so a case builds its body from a ``Model``
(the input's name and width) rather than holding bytes.  What legitimately differs between
the servers is said in the case, keyed by server name: ``served_by`` (each server names
itself on what it ran; the device documents that it may also forward to the cloud).
Both servers run with a body limit of ``LIMIT`` bytes.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from bentoedge.bentos.api import JSON, NPZ

LIMIT = 64 << 10  # both servers' body limit in these tests: small, so 413 costs little to send

# What an answer must be (``Case.answer``).
OUTPUTS = "outputs"  # 200, JSON {"outputs", "model", "served_by"} and the placement headers
NPZ_OUT = "npz"      # 200, an .npz of the outputs and the placement headers
ERROR = "error"      # JSON {"error": ..., "input": ...}
OPENAPI = "openapi"  # the OpenAPI document of the contract
STATUS = "status"    # only the status matters (health routes, whose bodies are each server's own)

# The one legitimate difference in a prediction: each server names itself on what it ran.
BY_ITSELF: Mapping[str, object] = {"edge": "edge", "cloud": "cloud"}
# ...and in the document: the device may forward to the cloud, the cloud answers alone.
MAY_SERVE: Mapping[str, object] = {"edge": ["edge", "cloud"], "cloud": ["cloud"]}


@dataclass(frozen=True)
class Model:
    """What a case needs of the served model: identity, its one input and its one output.

    Both servers' models name their input ``x``, so errors about it name ``x`` in the table.
    """

    name: str
    version: str
    input: str
    width: int
    output: str
    out_width: int

    def rows(self, n: int = 1, width: int | None = None) -> list[list[float]]:
        """``n`` rows of small numbers, ``width`` wide (the model's width by default)."""
        w = self.width if width is None else width
        return [[round(0.1 * ((i + j) % 7) - 0.3, 2) for j in range(w)] for i in range(n)]

    def json(self, value: object = None, **inputs: object) -> bytes:
        """``{"inputs": {<input>: value, **inputs}}``; one good row when ``value`` is None."""
        doc = {self.input: self.rows() if value is None else value, **inputs}
        return json.dumps({"inputs": doc}, allow_nan=True).encode()

    def npz(self, arrays: Mapping[str, np.ndarray] | None = None, compressed: bool = False) -> bytes:
        """An .npz archive; two good rows of the input when ``arrays`` is None."""
        if arrays is None:
            arrays = {self.input: np.asarray(self.rows(2), np.float32)}
        buf = io.BytesIO()
        save = np.savez_compressed if compressed else np.savez
        save(buf, **dict(arrays))  # type: ignore[arg-type]  # numpy types the keywords as its own flags
        return buf.getvalue()


@dataclass(frozen=True)
class Server:
    """A server under test: which one (``edge`` or ``cloud``), where it listens, what it serves."""

    name: str
    port: int
    model: Model


Body = Callable[[Model], bytes]


@dataclass(frozen=True)
class Case:
    """One request and the answer the contract requires of it."""

    id: str
    body: Body
    status: int
    answer: str = ERROR
    method: str = "POST"
    path: str = "/predict"
    content_type: str | None = JSON  # None: no Content-Type header
    accept: str | None = None
    framing: str = "length"  # "length": a Content-Length; "none": no length header; "chunked"
    rows: int = 1  # the batch of the outputs, for OUTPUTS and NPZ_OUT
    input: str | None = None  # the input an error names
    says: str = ""  # a fragment of the error message
    headers: Mapping[str, str] = field(default_factory=dict)  # headers the answer carries, exactly
    served_by: Mapping[str, object] | None = None  # per server, where it says it served this


def _empty(m: Model) -> bytes:
    return b""


def _wrong_dtype_npz(m: Model) -> bytes:
    return m.npz({m.input: np.zeros((1, m.width), np.complex64)})


def _npz_bomb(m: Model) -> bytes:
    # A few hundred bytes of compressed zeros that expand past the limit.
    return m.npz({m.input: np.zeros((LIMIT // (4 * m.width) + 1, m.width), np.float32)}, compressed=True)


CASES: tuple[Case, ...] = (
    # -- answered ---------------------------------------------------------------------------
    Case("json", lambda m: m.json(m.rows(2)), 200, OUTPUTS, rows=2, served_by=BY_ITSELF),
    Case("json-charset", lambda m: m.json(), 200, OUTPUTS, content_type="application/json; charset=utf-8",
         served_by=BY_ITSELF),
    Case("no-content-type-is-json", lambda m: m.json(), 200, OUTPUTS, content_type=None, served_by=BY_ITSELF),
    Case("accept-anything-is-json", lambda m: m.json(), 200, OUTPUTS, accept="*/*", served_by=BY_ITSELF),
    Case("integers-for-floats", lambda m: m.json([[1] * m.width]), 200, OUTPUTS, served_by=BY_ITSELF),
    Case("npz-in-json-out", lambda m: m.npz(), 200, OUTPUTS, content_type=NPZ, rows=2, served_by=BY_ITSELF),
    Case("npz-in-npz-out", lambda m: m.npz(), 200, NPZ_OUT, content_type=NPZ, accept=NPZ, rows=2,
         served_by=BY_ITSELF),
    Case("json-in-npz-out", lambda m: m.json(), 200, NPZ_OUT, accept=NPZ, served_by=BY_ITSELF),
    Case("invocations", lambda m: m.json(), 200, OUTPUTS, path="/invocations", served_by=BY_ITSELF),
    # -- malformed: 400 ------------------------------------------------------------------------
    Case("empty", _empty, 400, says="empty"),
    Case("not-json", lambda m: b"{not json", 400, says="not valid JSON"),
    Case("5000-digit-integer", lambda m: b'{"inputs": {"%s": [[%s]]}}' % (m.input.encode(), b"9" * 5000), 400,
         says="too long"),
    Case("no-inputs-object", lambda m: json.dumps({m.input: m.rows()}).encode(), 400, says='"inputs"'),
    Case("unknown-input", lambda m: m.json(z=m.rows()), 400, input="z", says="unknown input"),
    Case("missing-input", lambda m: json.dumps({"inputs": {}}).encode(), 400, input="x", says="missing"),
    Case("npz-unreadable", lambda m: b"PK\x03\x04 not an archive", 400, content_type=NPZ, says=".npz"),
    Case("npz-unknown-input", lambda m: m.npz({"z": np.zeros((1, m.width), np.float32)}), 400,
         content_type=NPZ, input="z", says="unknown input"),
    # -- wrong dtype, shape or values: 422 ------------------------------------------------------
    Case("narrow", lambda m: m.json(m.rows(1, m.width - 1)), 422, input="x", says="expected float32[?, "),
    Case("one-dimensional", lambda m: m.json(m.rows()[0]), 422, input="x", says="shape"),
    Case("empty-batch", lambda m: m.json([]), 422, input="x", says="shape"),
    Case("ragged", lambda m: m.json([m.rows()[0], m.rows()[0][:2]]), 422, input="x", says="rectangular"),
    Case("strings", lambda m: m.json([["a"] * m.width]), 422, input="x", says="numbers"),
    Case("nan", lambda m: m.json([[float("nan")] * m.width]), 422, input="x", says="NaN"),
    Case("beyond-float32", lambda m: m.json([[1e300] * m.width]), 422, input="x", says="outside float32"),
    Case("npz-complex", _wrong_dtype_npz, 422, content_type=NPZ, input="x", says="numbers"),
    # -- media type, size and framing -------------------------------------------------------------
    Case("media-type", lambda m: m.json(), 415, content_type="text/csv", says="unsupported content type"),
    Case("too-large", lambda m: b"0" * (LIMIT + 1), 413, says=f"the limit is {LIMIT}"),
    Case("npz-bomb", _npz_bomb, 413, content_type=NPZ, says="expands"),
    Case("no-content-length", _empty, 411, framing="none", says="Content-Length"),
    Case("chunked", lambda m: m.json(), 411, framing="chunked", says="chunked"),
    # -- routes and methods ---------------------------------------------------------------------
    Case("get-predict", _empty, 405, method="GET", content_type=None, headers={"Allow": "POST"},
         says="/predict takes POST"),
    Case("put-invocations", lambda m: m.json(), 405, method="PUT", path="/invocations", headers={"Allow": "POST"},
         says="/invocations takes POST"),
    Case("no-such-route", lambda m: m.json(), 404, path="/predictions", says="no route /predictions"),
    Case("get-no-such-route", _empty, 404, method="GET", path="/nowhere", content_type=None,
         says="no route /nowhere"),
    # Allow is not compared: the cloud's health routes also take HEAD, the device's do not.
    Case("post-readyz", _empty, 405, path="/readyz", says="/readyz takes GET"),
    Case("openapi", _empty, 200, OPENAPI, method="GET", path="/docs.json", content_type=None, served_by=MAY_SERVE),
    Case("livez", _empty, 200, STATUS, method="GET", path="/livez", content_type=None),
    Case("readyz", _empty, 200, STATUS, method="GET", path="/readyz", content_type=None),
    # Last, after every refusal above: the server still answers (pytest keeps the table's order).
    Case("still-answers", lambda m: m.json(), 200, OUTPUTS, served_by=BY_ITSELF),
)
