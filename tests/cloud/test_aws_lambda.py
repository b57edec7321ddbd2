"""The AWS Lambda handler (``cloud.aws_lambda``) on real-looking events, without Docker or AWS.

The events under ``data/`` have the shape AWS sends: a function URL POST with a JSON body,
an API Gateway HTTP API POST under a named stage with a base64 ``.npz`` body, and a GET
/readyz.  The model is the cloud tests' tiny sealed ONNX model in the BentoML store
(``service_support.seal_tiny``), opened by the handler's own opener (``open_model``) wrapped
in one that counts, so "opened once" is a count, not a guess.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("bentoml")

from service_support import CountingOpener, TinySealed, run_onnx  # noqa: E402

from bentoedge.bentos.api import (  # noqa: E402
    HEADER_MODEL,
    HEADER_SERVED_BY,
    HEADER_VERSION,
    NPZ,
    Reply,
    decode_npz,
)
from bentoedge.cloud.aws_lambda import (  # noqa: E402
    LAMBDA_MAX_BODY,
    RETRY_OPEN_S,
    LambdaHandler,
    to_response,
)
from bentoedge.cloud.service_core import CloudSettings  # noqa: E402
from bentoedge.cloud.service_model import Loaded  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
CONTEXT = SimpleNamespace(aws_request_id="8f2c1b7e-0000-4a1b-9c3d-2e4f6a8b0c1d")


def fixture_event(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((DATA / f"{name}.json").read_text())
    return event


def make_event(
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    b64: bool = False,
) -> dict[str, Any]:
    """A function URL event as AWS builds it (headers in lower case)."""
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"host": "abc.lambda-url.eu-west-1.on.aws", **(headers or {})},
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "abc",
            "stage": "$default",
            "requestId": "r",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.1",
                "userAgent": "test",
            },
        },
        "isBase64Encoded": b64,
    }
    if body is not None:
        event["body"] = base64.b64encode(body).decode() if b64 else body.decode()
    return event


def json_post(path: str, doc: object) -> dict[str, Any]:
    body = json.dumps(doc).encode()
    return make_event(
        "POST", path, body, {"content-type": "application/json", "content-length": str(len(body))}
    )


def body_of(resp: Mapping[str, Any]) -> bytes:
    return base64.b64decode(resp["body"]) if resp["isBase64Encoded"] else str(resp["body"]).encode()


def doc_of(resp: Mapping[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(body_of(resp))
    return doc


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def env(tiny_sealed: TinySealed) -> dict[str, str]:
    return {
        **os.environ,
        "BENTOEDGE_MODEL": tiny_sealed.tag,
        "BENTOEDGE_HOME": str(tiny_sealed.home),
        "BENTOEDGE_AUTH": "off",  # authentication has its own tests (test_auth_lambda.py)
    }


@pytest.fixture()
def opener() -> CountingOpener:
    return CountingOpener()


@pytest.fixture()
def lam(env: dict[str, str], opener: CountingOpener) -> LambdaHandler:
    return LambdaHandler(opener=opener, env=env)


def test_function_url_event_with_a_json_body(lam: LambdaHandler, tiny_sealed: TinySealed) -> None:
    event = fixture_event("function_url_predict_json")
    resp = lam(event, CONTEXT)
    assert resp["statusCode"] == 200, resp["body"][:300]
    assert resp["isBase64Encoded"] is False
    headers = resp["headers"]
    assert headers["Content-Type"] == "application/json"
    assert (headers[HEADER_SERVED_BY], headers[HEADER_MODEL], headers[HEADER_VERSION]) == (
        "cloud",
        "tiny",
        "v1",
    )
    doc = doc_of(resp)
    assert doc["served_by"] == "cloud" and doc["model"] == {"name": "tiny", "version": "v1"}
    x = np.asarray(json.loads(event["body"])["inputs"]["x"], np.float32)
    np.testing.assert_allclose(
        doc["outputs"]["probs"], run_onnx(tiny_sealed.onnx_fp32, x), rtol=1e-5, atol=1e-6
    )


def test_http_api_event_base64_npz_in_and_out(lam: LambdaHandler, tiny_sealed: TinySealed) -> None:
    event = fixture_event("http_api_predict_npz")
    x = decode_npz(base64.b64decode(event["body"]))["x"]
    np.testing.assert_array_equal(x, (np.arange(128, dtype=np.float32).reshape(2, 64) % 17) / 16)
    resp = lam(event, CONTEXT)  # rawPath /prod/predict under stage "prod": routed as /predict
    assert resp["statusCode"] == 200, resp["body"][:300]
    assert resp["isBase64Encoded"] is True and resp["headers"]["Content-Type"] == NPZ
    assert resp["headers"][HEADER_SERVED_BY] == "cloud" and resp["headers"][HEADER_VERSION] == "v1"
    outputs = decode_npz(body_of(resp))
    assert set(outputs) == {"probs"}
    np.testing.assert_allclose(
        outputs["probs"], run_onnx(tiny_sealed.onnx_fp32, x), rtol=1e-5, atol=1e-6
    )


def test_health_routes_and_the_openapi_document(lam: LambdaHandler) -> None:
    resp = lam(fixture_event("function_url_readyz"), CONTEXT)
    assert resp["statusCode"] == 200 and doc_of(resp) == {"status": "ready"}
    assert lam(make_event("GET", "/ping"), CONTEXT)["statusCode"] == 200
    live = lam(make_event("GET", "/livez"), CONTEXT)
    assert live["statusCode"] == 200 and doc_of(live) == {"status": "alive"}
    head = lam(make_event("HEAD", "/livez"), CONTEXT)
    assert head["statusCode"] == 200 and head["body"] == ""
    doc = doc_of(lam(make_event("GET", "/docs.json"), CONTEXT))
    assert {"/predict", "/invocations", "/ping", "/readyz", "/livez"} <= set(doc["paths"])
    op = doc["paths"]["/predict"]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"]["properties"]["inputs"][
        "required"
    ] == ["x"]
    assert {"400", "411", "413", "415", "422", "503"} <= set(op["responses"])
    assert doc["info"]["version"] == "v1"


def test_the_model_is_opened_once_per_tag(
    lam: LambdaHandler, opener: CountingOpener, env: dict[str, str], tiny_sealed: TinySealed
) -> None:
    for event in (
        fixture_event("function_url_readyz"),
        fixture_event("function_url_predict_json"),
        fixture_event("http_api_predict_npz"),
        make_event("GET", "/docs.json"),
        fixture_event("function_url_predict_json"),
    ):
        assert lam(event, CONTEXT)["statusCode"] == 200
    assert opener.opened == ["tiny:v1"]
    # Another model named (here the same sealed folder, by its path) is opened once too.
    env["BENTOEDGE_MODEL"] = str(tiny_sealed.path)
    for _ in range(2):
        assert lam(fixture_event("function_url_predict_json"), CONTEXT)["statusCode"] == 200
    env["BENTOEDGE_MODEL"] = tiny_sealed.tag
    assert lam(fixture_event("function_url_predict_json"), CONTEXT)["statusCode"] == 200
    assert opener.opened == ["tiny:v1", str(tiny_sealed.path)]


UNKNOWN_SHAPES: dict[str, object] = {
    "not-an-object": ["a", "list"],
    "null": None,
    "direct-invoke": {"inputs": {"x": [[0.0] * 64]}},
    "payload-1.0": {
        "httpMethod": "POST",
        "path": "/predict",
        "headers": {},
        "body": "{}",
        "isBase64Encoded": False,
    },
    "no-request-context": {"version": "2.0", "rawPath": "/predict"},
    "no-method": {
        "version": "2.0",
        "rawPath": "/predict",
        "requestContext": {"http": {"path": "/predict"}},
    },
    "headers-not-strings": {
        **make_event("POST", "/predict", b"{}"),
        "headers": {"content-length": 2},
    },
    "body-not-a-string": {**make_event("POST", "/predict"), "body": {"inputs": {}}},
    "bad-base64": {**make_event("POST", "/predict", b"x", b64=True), "body": "not base64!"},
    "base64-flag-not-bool": {**make_event("POST", "/predict", b"{}"), "isBase64Encoded": "yes"},
    "relative-path": {**make_event("GET", "/livez"), "rawPath": "livez"},
}


@pytest.mark.parametrize("event", UNKNOWN_SHAPES.values(), ids=UNKNOWN_SHAPES.keys())
def test_an_event_of_unknown_shape_is_a_400(
    lam: LambdaHandler, opener: CountingOpener, event: object
) -> None:
    resp = lam(event, CONTEXT)
    assert resp["statusCode"] == 400
    assert resp["headers"]["Content-Type"] == "application/json"
    doc = doc_of(resp)
    assert isinstance(doc["error"], str) and "\n" not in doc["error"]
    assert opener.opened == []  # refused before the model was needed


def test_payload_format_1_says_how_to_fix_it(lam: LambdaHandler) -> None:
    doc = doc_of(lam(UNKNOWN_SHAPES["payload-1.0"], CONTEXT))
    assert "payload format 1.0" in doc["error"] and "2.0" in doc["error"]


@pytest.mark.parametrize("b64", [False, True], ids=["text", "base64"])
def test_an_event_body_over_6_mb_is_a_413(
    lam: LambdaHandler, opener: CountingOpener, b64: bool
) -> None:
    body = b"0" * (LAMBDA_MAX_BODY + 1)
    resp = lam(
        make_event("POST", "/predict", body, {"content-type": "application/json"}, b64=b64), CONTEXT
    )
    assert resp["statusCode"] == 413
    assert "AWS Lambda takes at most" in doc_of(resp)["error"]
    assert opener.opened == []


def test_the_contract_limit_is_the_smaller_one(env: dict[str, str]) -> None:
    env["BENTOEDGE_MAX_PAYLOAD"] = "1000"
    lam = LambdaHandler(env=env)
    resp = lam(json_post("/predict", {"inputs": {"x": [[0.5] * 64] * 4}}), CONTEXT)
    assert resp["statusCode"] == 413 and "the limit is 1000" in doc_of(resp)["error"]
    # Under both limits, the same route answers.
    assert lam(json_post("/predict", {"inputs": {"x": [[0.5] * 64]}}), CONTEXT)["statusCode"] == 200


def test_framing_as_the_contract_says(lam: LambdaHandler) -> None:
    body = json.dumps({"inputs": {"x": [[0.25] * 64]}}).encode()
    # No Content-Length in the event, but a body: AWS read it whole, so its length is known.
    assert (
        lam(make_event("POST", "/predict", body, {"content-type": "application/json"}), CONTEXT)[
            "statusCode"
        ]
        == 200
    )
    # Neither a length nor a body: the contract's 411.
    resp = lam(make_event("POST", "/predict"), CONTEXT)
    assert resp["statusCode"] == 411 and "Content-Length" in doc_of(resp)["error"]
    chunked = make_event("POST", "/predict", body, {"transfer-encoding": "chunked"})
    assert lam(chunked, CONTEXT)["statusCode"] == 411
    bad = make_event("POST", "/predict", body, {"content-length": "12abc"})
    assert lam(bad, CONTEXT)["statusCode"] == 400
    # A 4xx names the input, as on both servers.
    resp = lam(json_post("/predict", {"inputs": {"x": [[0.25] * 3]}}), CONTEXT)
    assert resp["statusCode"] == 422 and doc_of(resp)["input"] == "x"


def test_routes_and_methods(lam: LambdaHandler) -> None:
    resp = lam(make_event("GET", "/nowhere"), CONTEXT)
    assert resp["statusCode"] == 404 and "no route /nowhere" in doc_of(resp)["error"]
    resp = lam(make_event("PUT", "/predict", b"{}", {"content-length": "2"}), CONTEXT)
    assert resp["statusCode"] == 405 and resp["headers"]["Allow"] == "POST"
    resp = lam(make_event("POST", "/readyz", b"", {"content-length": "0"}), CONTEXT)
    assert resp["statusCode"] == 405 and resp["headers"]["Allow"] == "GET, HEAD"
    resp = lam(json_post("/invocations", {"inputs": {"x": [[0.1] * 64]}}), CONTEXT)
    assert resp["statusCode"] == 200 and doc_of(resp)["served_by"] == "cloud"


def test_a_model_that_cannot_open_is_a_503_logged_in_one_line(
    env: dict[str, str], opener: CountingOpener, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env["BENTOEDGE_HOME"] = str(
        tmp_path / "no-keys"
    )  # no trusted signer: the signature cannot be checked
    env.pop("BENTOEDGE_TRUSTED_SIGNERS", None)
    clock = Clock()
    lam = LambdaHandler(opener=opener, env=env, clock=clock)
    with caplog.at_level(logging.ERROR, logger="bentoedge.cloud.aws_lambda"):
        resp = lam(fixture_event("function_url_predict_json"), CONTEXT)
    assert resp["statusCode"] == 503 and resp["headers"]["Retry-After"] == "1"
    assert doc_of(resp)["reason"] == "model_unavailable"
    [record] = caplog.records
    assert (
        "refusing to serve tiny:v1" in record.getMessage()
        and "trusted signer" in record.getMessage()
    )
    assert "\n" not in record.getMessage()
    assert lam(fixture_event("function_url_readyz"), CONTEXT)["statusCode"] == 503
    assert opener.opened == ["tiny:v1"]  # not retried at once
    clock.now += RETRY_OPEN_S + 1
    assert lam(fixture_event("function_url_readyz"), CONTEXT)["statusCode"] == 503
    assert opener.opened == ["tiny:v1", "tiny:v1"]


def test_an_internal_failure_is_a_500_logged_in_one_line(
    env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    def broken(tag: str, settings: CloudSettings, env: Mapping[str, str]) -> Loaded:
        raise RuntimeError("boom\n  in a library that writes two lines")

    lam = LambdaHandler(opener=broken, env=env)
    with caplog.at_level(logging.ERROR, logger="bentoedge.cloud.aws_lambda"):
        resp = lam(fixture_event("function_url_predict_json"), CONTEXT)
    assert resp["statusCode"] == 500 and "RuntimeError" in doc_of(resp)["error"]
    [record] = caplog.records
    message = record.getMessage()
    assert (
        CONTEXT.aws_request_id in message and "boom in a library" in message and "\n" not in message
    )


def test_an_answer_too_large_for_lambda_is_a_413() -> None:
    resp = to_response(Reply(200, b"\0" * LAMBDA_MAX_BODY, NPZ))
    assert resp["statusCode"] == 413 and resp["isBase64Encoded"] is False
    assert "send fewer rows" in json.loads(resp["body"])["error"]
    small = to_response(Reply(200, b"\0\1\2", NPZ, {"x-bentoedge-served-by": "cloud"}))
    assert small["statusCode"] == 200 and base64.b64decode(small["body"]) == b"\0\1\2"
    assert small["headers"] == {"Content-Type": NPZ, "x-bentoedge-served-by": "cloud"}


def test_the_module_entry_point(tiny_sealed: TinySealed, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENTOEDGE_MODEL", tiny_sealed.tag)
    monkeypatch.setenv("BENTOEDGE_HOME", str(tiny_sealed.home))
    monkeypatch.setenv("BENTOEDGE_AUTH", "off")
    from bentoedge.cloud.aws_lambda import handler

    resp = handler(fixture_event("function_url_predict_json"), CONTEXT)
    assert resp["statusCode"] == 200 and resp["headers"][HEADER_SERVED_BY] == "cloud"


@pytest.mark.parametrize("spec", ["bare-name", "exported-file"])
def test_the_model_by_bare_name_or_exported_file(
    env: dict[str, str], tiny_sealed: TinySealed, tmp_path: Path, spec: str
) -> None:
    from bentoedge.bentos.sealed import SealedModel
    from bentoedge.bentos.store import export_file

    if spec == "bare-name":
        env["BENTOEDGE_MODEL"] = "tiny"  # the newest release in the store folder
    else:
        env["BENTOEDGE_MODEL"] = str(
            export_file(SealedModel.open(tiny_sealed.path), tmp_path / "t.sealed")
        )
    resp = LambdaHandler(env=env)(fixture_event("function_url_predict_json"), CONTEXT)
    assert resp["statusCode"] == 200, resp["body"][:300]
    assert resp["headers"][HEADER_VERSION] == "v1"


@pytest.mark.parametrize("model", ["", "nosuchmodel:v9"], ids=["unset", "unknown"])
def test_no_model_to_serve_is_a_503_that_says_why_in_the_log(
    env: dict[str, str], model: str, caplog: pytest.LogCaptureFixture
) -> None:
    env["BENTOEDGE_MODEL"] = model
    with caplog.at_level(logging.ERROR, logger="bentoedge.cloud.aws_lambda"):
        resp = LambdaHandler(env=env)(fixture_event("function_url_readyz"), CONTEXT)
    assert resp["statusCode"] == 503 and doc_of(resp)["reason"] == "model_unavailable"
    [record] = caplog.records
    assert ("not set" if not model else "is not under") in record.getMessage()
