"""The contract table against the AWS Lambda handler, checked by the very check the servers get.

``test_contract.test_the_contract`` sends a case over HTTP (its ``send``) and checks the
answer.  Here ``send`` is swapped for a harness that does what a Lambda function URL does
with that HTTP request: it builds the event AWS would deliver (headers in lower case, the
Content-Length and Transfer-Encoding headers as the case frames them, a text body for JSON
and text media types, a base64 one otherwise), calls ``cloud.aws_lambda``'s handler, and
turns the handler's answer back into a status, headers and body.  The same check then runs
unchanged, with the handler in the place of the cloud (``Server("cloud", ...)``), so every
case holds for all three: device, BentoML service, Lambda.

The model is the cloud server's tiny sealed ONNX model, under its own name, with the table's
body limit.  No process is started: the table runs in about a second.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from typing import Any

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("bentoml")

import test_contract  # noqa: E402  (the table's one check, reused as it is)
from contract_cases import CASES, LIMIT, Case, Model, Server  # noqa: E402

from bentoedge.bentos.api import JSON, media_type  # noqa: E402
from bentoedge.cloud.aws_lambda import LambdaHandler  # noqa: E402

#: Media types a function URL hands over as text; AWS base64-encodes every other body.
TEXT_TYPES = (JSON, "text/json", "text/csv", "text/plain")


def function_url_event(case: Case, model: Model) -> dict[str, Any]:
    """The event AWS builds from the case's HTTP request."""
    body = case.body(model)
    headers = {"host": "contract.lambda-url.eu-west-1.on.aws", "x-forwarded-proto": "https"}
    if case.content_type is not None:
        headers["content-type"] = case.content_type
    if case.accept is not None:
        headers["accept"] = case.accept
    if case.framing == "length":
        headers["content-length"] = str(len(body))
    elif case.framing == "chunked":
        headers["transfer-encoding"] = "chunked"
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": case.path,
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "contract",
            "domainName": "contract.lambda-url.eu-west-1.on.aws",
            "http": {
                "method": case.method,
                "path": case.path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.9",
                "userAgent": "contract-table",
            },
            "requestId": case.id,
            "routeKey": "$default",
            "stage": "$default",
        },
        "isBase64Encoded": False,
    }
    if body or case.framing == "length":
        text = media_type(case.content_type) in TEXT_TYPES
        try:
            event["body"] = body.decode("utf-8") if text else base64.b64encode(body).decode("ascii")
        except UnicodeDecodeError:  # not text after all: AWS sends such bytes base64-encoded
            text = False
            event["body"] = base64.b64encode(body).decode("ascii")
        event["isBase64Encoded"] = not text
    return event


def http_answer(resp: Mapping[str, Any]) -> tuple[int, dict[str, str], bytes]:
    """The HTTP answer AWS makes of the handler's response."""
    assert set(resp) == {"statusCode", "headers", "body", "isBase64Encoded"}
    body = (
        base64.b64decode(resp["body"])
        if resp["isBase64Encoded"]
        else str(resp["body"]).encode("utf-8")
    )
    return (
        int(resp["statusCode"]),
        {str(k).lower(): str(v) for k, v in resp["headers"].items()},
        body,
    )


@pytest.fixture(scope="module")
def lambda_server(tmp_path_factory: pytest.TempPathFactory) -> tuple[LambdaHandler, Server]:
    from service_support import seal_tiny

    # Its own name, so it does not collide with the cloud server's "contract" in the same store.
    sealed = seal_tiny(tmp_path_factory.mktemp("contract-lambda-home"), name="contract-lambda")
    env = {
        **os.environ,
        "BENTOEDGE_MODEL": sealed.tag,
        "BENTOEDGE_HOME": str(sealed.home),
        "BENTOEDGE_MAX_PAYLOAD": str(LIMIT),
        "BENTOEDGE_AUTH": "off",
    }
    return LambdaHandler(env=env), Server(
        "cloud", 0, Model("contract-lambda", "v1", "x", 64, "probs", 10)
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_contract_through_lambda(
    lambda_server: tuple[LambdaHandler, Server], case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler, server = lambda_server

    def send(srv: Server, c: Case) -> tuple[int, dict[str, str], bytes]:
        return http_answer(handler(function_url_event(c, srv.model), None))

    monkeypatch.setattr(test_contract, "send", send)
    test_contract.test_the_contract(server, case)
