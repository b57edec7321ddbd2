"""Every server fuzzed from the OpenAPI document it serves itself (schemathesis), then asked a good /predict.

The servers: the device agent (``edge_server``), the BentoML service (``cloud_server``, and
``signed_cloud_server``: a second one with authentication on, where an enrolled device signs
every request so that fuzzed fleet reports reach the intake's own checks), and the AWS
Lambda handler (``lambda_server``, in this process, each request turned into a function
URL event by ``lambda_support``).  Each is asked for its /docs.json and schemathesis
generates requests for every bentoedge operation in it (tag ``bentoedge``: the cloud's
document also lists BentoML's own routes, which are BentoML's to test): valid ones
(positive) and, for an operation that takes a body, invalid ones (negative).  A .npz body
is drawn by ``npz_bodies``: real archives of arrays of every dtype and small shape under
assorted names, and random bytes.

``check_answer`` holds every answer to the contract: never a 5xx but the contract's 503
(JSON ``error`` and ``reason``), no Python traceback in a body, and schemathesis's own
checks (``not_a_server_error``, the status, content type, headers and body documented for
it, and a refusal of every invalid request).  A connection the server drops fails the test
where it happens, and so does one that hangs past ``REQUEST_TIMEOUT_S``.  Afterwards the
server must still answer a good /predict with the outputs of the model run directly.

Bounded and reproducible: at most ``EXAMPLES`` requests per operation and mode, derandomized,
with no example database; no per-example deadline, since the time a request takes on a
shared machine says nothing about the server (a hang is caught by the request timeout).
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import schemathesis
from contract_cases import LIMIT, Model, Server
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fleet_support import make_report
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from lambda_support import function_url_event, http_answer
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bentoedge.bentos import auth
from bentoedge.bentos import fleet_report as rp
from bentoedge.bentos.api import JSON, NPZ
from bentoedge.bentos.manifest import canonical_json
from bentoedge.bentos.openapi import TAG
from bentoedge.cloud.fleet.store import open_fleet_store
from bentoedge.edge.runtime import EdgeModel

EXAMPLES = 100  # requests per operation and generation mode
REQUEST_TIMEOUT_S = 30.0  # a bound on one answer: past it the server hangs
FLEET_PATH = "/fleet/reports"
PREDICTION = {"POST /predict", "POST /invocations"}

#: The contract's one 5xx is 503 (overloaded, no model, cloud unreachable): anything else fails.  An
#: invalid request is refused as schemathesis expects, or, too large or unframed, before it is read
#: (413, 411), as the contract refuses any such body.
CONFIG = schemathesis.Config.from_dict({"checks": {
    "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "503"]},
    "negative_data_rejection": {"expected-statuses": [400, 401, 403, 404, 405, 406, 409, 411, 413, 415, 422, 428,
                                                      429]}}})
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection]
TRACEBACK = re.compile(rb'Traceback \(most recent call last\)|File "[^"]*", line [0-9]+')
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                phases=(Phase.explicit, Phase.generate, Phase.shrink),
                suppress_health_check=list(HealthCheck))


# -- the .npz bodies -------------------------------------------------------------------------

_DTYPES = st.one_of(hnp.scalar_dtypes(), hnp.byte_string_dtypes(max_len=4), hnp.unicode_string_dtypes(max_len=4))
_NAMES = st.one_of(st.sampled_from(["x", "z", "", "x.npy", "../x", "a/b"]),
                   st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8))


@st.composite
def npz_archives(draw: st.DrawFn) -> bytes:
    """An .npz as numpy writes one (a zip of ``<name>.npy``), of any arrays, sometimes pickled objects."""
    buf = io.BytesIO()
    compression = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    with zipfile.ZipFile(buf, "w", compression) as zf:
        # Often the one input both servers' models take (x), so the arrays reach the dtype and shape checks.
        for name in draw(st.one_of(st.just(["x"]), st.lists(_NAMES, max_size=3, unique=True))):
            if draw(st.integers(0, 9)) == 0:  # an object array: only numpy's pickle can read it
                array = np.array([draw(st.integers()), draw(st.text(max_size=4))], dtype=object)
            else:
                array = draw(hnp.arrays(draw(_DTYPES), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0,
                                                                        max_side=8)))
            member = io.BytesIO()
            np.lib.format.write_array(member, array, allow_pickle=True)
            zf.writestr(f"{name}.npy", member.getvalue())
    return buf.getvalue()


npz_bodies = st.one_of(npz_archives(), st.binary(max_size=512))
schemathesis.openapi.media_type(NPZ, npz_bodies)


# -- the fleet reports -----------------------------------------------------------------------

_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                     | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                 max_size=3), max_leaves=8)


@st.composite
def report_payloads(draw: st.DrawFn) -> str:
    """base64 of a report-like document: a real report with a field or two replaced by any JSON,
    one dropped, or one of its own added."""
    doc = make_report(sent_at=time.time()).to_dict()
    fields = sorted(doc)
    for name in draw(st.lists(st.sampled_from(fields), max_size=2, unique=True)):
        doc[name] = draw(_JSON)
    for name in draw(st.lists(st.sampled_from(fields), max_size=1)):
        doc.pop(name, None)
    doc.update(draw(st.dictionaries(st.text(max_size=6), _JSON, max_size=1)))
    return base64.b64encode(canonical_json(doc)).decode()  # as a device writes one


# The envelope's payload is base64 (format "byte", the only such field in the documents but for the
# signature, which the device signs anew): random bytes would stop at the report parser's first
# byte, report-like documents reach every field check behind it.
schemathesis.openapi.format("byte", st.one_of(report_payloads(), st.binary(max_size=64).map(
    lambda b: base64.b64encode(b).decode())))


# -- the servers, as targets of the fuzzer -----------------------------------------------------

Answer = tuple[int, dict[str, str], bytes]


@dataclass
class Target:
    """A server under fuzz: its document, how a case reaches it, how a plain request does."""

    name: str
    document: dict[str, Any]
    send: Callable[[Case, GenerationMode], schemathesis.Response]  # one generated case, answered
    request: Callable[[str, str, Mapping[str, str], bytes | None], Answer]  # method, path, headers, body

    def schema(self) -> Any:
        """Its bentoedge operations."""
        return schemathesis.openapi.from_dict(self.document, config=CONFIG).include(tag=TAG)


def over_http(name: str, port: int, auth_: requests.auth.AuthBase | None = None,
              prepare: Callable[[Case, GenerationMode], None] | None = None) -> Iterator[Target]:
    """A server on loopback, called through schemathesis's own transport (``case.call``)."""
    base = f"http://127.0.0.1:{port}"
    with requests.Session() as session:
        def send(case: Case, mode: GenerationMode) -> schemathesis.Response:
            if prepare is not None:
                prepare(case, mode)
            return case.call(base_url=base, session=session, timeout=REQUEST_TIMEOUT_S, auth=auth_)

        def request(method: str, path: str, headers: Mapping[str, str], body: bytes | None) -> Answer:
            resp = session.request(method, base + path, headers=dict(headers), data=body, timeout=REQUEST_TIMEOUT_S,
                                   auth=auth_)
            return resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, resp.content

        doc = session.get(f"{base}/docs.json", timeout=REQUEST_TIMEOUT_S)
        assert doc.status_code == 200, doc.text[:300]
        yield Target(name, doc.json(), send, request)


def through_lambda(handler: Callable[[dict[str, Any], Any], dict[str, Any]]) -> Target:
    """The Lambda handler, each request made into the event a function URL delivers."""
    base = "https://contract.lambda-url.eu-west-1.on.aws"

    def request(method: str, path: str, headers: Mapping[str, str], body: bytes | None) -> Answer:
        return http_answer(handler(function_url_event(method, path, headers, body), None))

    def send(case: Case, mode: GenerationMode) -> schemathesis.Response:
        # The very request schemathesis would send (its serialization, its headers), prepared by requests.
        kwargs = case.as_transport_kwargs(base_url=base)
        prepared = requests.Request(**{k: kwargs[k] for k in ("method", "url", "headers", "params", "cookies",
                                                               "data", "json", "files") if k in kwargs}).prepare()
        body = prepared.body.encode() if isinstance(prepared.body, str) else prepared.body
        started = time.perf_counter()
        status, headers, content = request(str(prepared.method), prepared.path_url, prepared.headers, body)
        return schemathesis.Response(status, {k: [v] for k, v in headers.items()}, content, prepared,
                                     time.perf_counter() - started, verify=True)

    status, _, doc = request("GET", "/docs.json", {}, None)
    assert status == 200, doc[:300]
    return Target("lambda", json.loads(doc), send, request)


# -- the check, and the fuzz ------------------------------------------------------------------

def check_answer(case: Case, response: schemathesis.Response) -> None:
    """What every answer to every generated request must be."""
    status, body = response.status_code, response.content
    where = f"{case.method} {case.formatted_path} -> {status}: {body[:300]!r}"
    assert not TRACEBACK.search(body), where
    if status >= 500:
        assert status == 503, where
        doc = json.loads(body)
        assert isinstance(doc.get("error"), str) and isinstance(doc.get("reason"), str), where
    case.validate_response(response, checks=CHECKS)


def fuzz(target: Target) -> Counter[str]:
    """Every bentoedge operation of the target, positive and (with a body) negative; returns the
    requests sent, by operation."""
    sent: Counter[str] = Counter()
    for result in target.schema().get_all_operations():
        operation = result.ok()
        # Without a body or parameters there is nothing to make invalid: negative is unsatisfiable there.
        modes = [GenerationMode.POSITIVE]
        if len(operation.body) or any(True for _ in operation.iter_parameters()):
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            sent[operation.label] += fuzz_operation(target, operation, mode)
    return sent


def fuzz_operation(target: Target, operation: Any, mode: GenerationMode) -> int:
    """Up to ``EXAMPLES`` generated requests of one operation in one mode; returns how many were sent."""
    sent = 0

    @FUZZ
    @given(case=operation.as_strategy(generation_mode=mode))
    def one(case: Case) -> None:
        nonlocal sent
        response = target.send(case, mode)
        sent += 1
        check_answer(case, response)

    one()
    return sent


def assert_fuzzed(sent: Counter[str], operations: set[str]) -> None:
    """Exactly these operations were fuzzed, each operation with a body to the full count."""
    assert set(sent) == operations
    for label in operations & (PREDICTION | {f"POST {FLEET_PATH}"}):
        assert sent[label] >= EXAMPLES, (label, sent[label])


def assert_predicts(target: Target, model: Model, reference: Callable[[np.ndarray], np.ndarray]) -> None:
    """A good /predict is answered with the model's own outputs."""
    x = np.asarray(model.rows(3), np.float32)
    body = json.dumps({"inputs": {model.input: x.tolist()}}).encode()
    status, _, answer = target.request("POST", "/predict", {"Content-Type": JSON}, body)
    assert status == 200, answer[:300]
    doc = json.loads(answer)
    assert doc["model"] == {"name": model.name, "version": model.version}
    np.testing.assert_allclose(np.asarray(doc["outputs"][model.output], np.float32), reference(x),
                               rtol=1e-5, atol=1e-6)


# -- the device ---------------------------------------------------------------------------------

@pytest.fixture()
def edge(edge_server: Server) -> Iterator[Target]:
    yield from over_http("edge", edge_server.port)


def test_the_device_agent_under_fuzz(edge: Target, edge_server: Server,
                                     load: Callable[..., EdgeModel]) -> None:
    assert_fuzzed(fuzz(edge), PREDICTION | {"GET /livez", "GET /readyz", "GET /metrics", "GET /status"})
    model = load("tiny", "edge-fp32")
    assert_predicts(edge, edge_server.model, lambda x: model.predict({"x": x})["y"])


# -- the cloud: the BentoML service, and the Lambda handler -----------------------------------------

def _onnx_reference() -> Callable[[np.ndarray], np.ndarray]:
    from service_support import run_onnx, tiny_onnx

    model = tiny_onnx()  # what seal_tiny seals: the same weights (a fixed seed)
    return lambda x: run_onnx(model, x)


@pytest.fixture()
def cloud(cloud_server: Server) -> Iterator[Target]:
    yield from over_http("cloud", cloud_server.port)


@pytest.mark.slow
def test_the_cloud_service_under_fuzz(cloud: Target, cloud_server: Server) -> None:
    # Authentication is off here, so /fleet/reports refuses every report (403: no device to take it
    # from); signed_cloud_server fuzzes it with signed reports.
    assert_fuzzed(fuzz(cloud), PREDICTION | {"GET /ping", f"POST {FLEET_PATH}"})
    assert_predicts(cloud, cloud_server.model, _onnx_reference())


def test_the_lambda_handler_under_fuzz(lambda_server: tuple[Any, Server]) -> None:
    handler, server = lambda_server
    target = through_lambda(handler)
    # The Lambda keeps no fleet store, so its document has no /fleet/reports.
    assert_fuzzed(fuzz(target), PREDICTION | {"GET /ping", "GET /readyz", "GET /livez"})
    assert_predicts(target, server.model, _onnx_reference())


# -- the fleet intake, behind authentication -----------------------------------------------------

@dataclass(frozen=True)
class SignedCloud:
    port: int
    key: Ed25519PrivateKey  # the enrolled device's identity key
    store: Path
    model: Model


@pytest.fixture(scope="module")
def signed_cloud_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SignedCloud]:
    """``bentoml serve`` with authentication on, a registry of one device, and a fleet store."""
    pytest.importorskip("bentoml")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from service_support import free_port, seal_tiny

    from bentoedge.cloud.serve import start_server, stop_server, wait_ready

    tmp = tmp_path_factory.mktemp("fuzz-fleet")
    sealed = seal_tiny(tmp / "home", name="contract-fleet")
    key = Ed25519PrivateKey.generate()
    raw = auth.identity_raw(key.public_key())
    (tmp / "devices.json").write_bytes(auth.registry_document({auth.identity_id(raw): auth.Device(raw)}))
    port, log = free_port(), tmp / "serve.log"
    proc = start_server(sealed.tag, port, log=log, env={
        "BENTOEDGE_HOME": str(sealed.home), "BENTOEDGE_AUTH": "on", "BENTOEDGE_MAX_PAYLOAD": str(LIMIT),
        "BENTOEDGE_DEVICE_REGISTRY": str(tmp / "devices.json"), "BENTOEDGE_FLEET_STORE": str(tmp / "store")})
    try:
        wait_ready(f"http://127.0.0.1:{port}", timeout=120, proc=proc, log=log)
        yield SignedCloud(port, key, tmp / "store", Model("contract-fleet", "v1", "x", 64, "probs", 10))
    finally:
        stop_server(proc)


class DeviceSignature(requests.auth.AuthBase):
    """Signs each request as the device's agent does (``bentos.auth.sign_request``, RFC 9421)."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self.key = key

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        body = r.body.encode() if isinstance(r.body, str) else (r.body or b"")
        r.headers.update(auth.sign_request(self.key, str(r.method), r.path_url, body, time.time()))
        return r


def resign_envelope(key: Ed25519PrivateKey) -> Callable[[Case, GenerationMode], None]:
    """A valid envelope is signed by the enrolled key, as a device signs what it sends.

    A generated signature never verifies, so without this every valid envelope would stop at
    the signature check; signed, its payload reaches the report parser.  Invalid (negative)
    envelopes are sent as generated.
    """
    def prepare(case: Case, mode: GenerationMode) -> None:
        body = case.body
        if mode is not GenerationMode.POSITIVE or not isinstance(body, dict):
            return
        try:
            payload = base64.b64decode(body.get("payload", ""), validate=True)
        except (ValueError, TypeError):
            return
        body["signature"] = base64.b64encode(key.sign(rp.DOMAIN + payload)).decode()
    return prepare


@pytest.mark.slow
def test_the_cloud_service_with_authentication_under_fuzz(signed_cloud_server: SignedCloud) -> None:
    """Every request signed by the enrolled device: the fleet intake checks each report, the
    prediction routes get their bodies through the authentication's own read of them."""
    f = signed_cloud_server
    for target in over_http("fleet", f.port, DeviceSignature(f.key), resign_envelope(f.key)):
        assert_fuzzed(fuzz(target), PREDICTION | {"GET /ping", f"POST {FLEET_PATH}"})
        # Still taking reports: a good one from the enrolled device is stored.
        device_id = "fuzz-dev"
        envelope = rp.sign(make_report(device_id, seq=1, sent_at=time.time()), f.key)
        status, _, answer = target.request("POST", FLEET_PATH, {"Content-Type": JSON}, envelope)
        assert status == 200 and json.loads(answer) == {"stored": True, "device_id": device_id, "seq": 1}, answer
        stored = open_fleet_store(str(f.store)).latest(device_id)
        assert stored is not None and stored.envelope == envelope
        # Still predicting, for a signed request.
        assert_predicts(target, f.model, _onnx_reference())


@pytest.mark.slow
def test_the_cloud_documents_fleet_reports(cloud_server: Server, lambda_server: tuple[Any, Server]) -> None:
    """The route devices post reports to is in the document the service serves, and not the Lambda's."""
    for target in over_http("cloud", cloud_server.port):
        op = target.document["paths"][FLEET_PATH]["post"]
        assert op["tags"] == [TAG]
        envelope = op["requestBody"]["content"][JSON]["schema"]
        assert set(envelope["required"]) == {"format", "alg", "device_id", "payload", "signature"}
        assert envelope["properties"]["format"]["enum"] == [rp.ENVELOPE_FORMAT]
        assert {"200", "400", "401", "403", "404", "411", "413", "503"} <= set(op["responses"])
    assert FLEET_PATH not in through_lambda(lambda_server[0]).document["paths"]
