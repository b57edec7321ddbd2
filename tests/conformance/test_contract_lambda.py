"""The contract table against the AWS Lambda handler, checked by the very check the servers get.

``test_contract.test_the_contract`` sends a case over HTTP (its ``send``) and checks the
answer.  Here ``send`` is swapped for a harness (``lambda_support``) that does what a Lambda
function URL does with that HTTP request: it builds the event AWS would deliver (headers in lower case, the
Content-Length and Transfer-Encoding headers as the case frames them, a text body for JSON
and text media types, a base64 one otherwise), calls ``cloud.aws_lambda``'s handler, and
turns the handler's answer back into a status, headers and body.  The same check then runs
unchanged, with the handler in the place of the cloud (``Server("cloud", ...)``), so every
case holds for all three: device, BentoML service, Lambda.

The handler (``lambda_server``, in conftest.py) serves the cloud server's tiny sealed ONNX
model, under its own name, with the table's body limit.  No process is started: the table
runs in about a second.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("bentoml")

import test_contract  # noqa: E402  (the table's one check, reused as it is)
from contract_cases import CASES, Case, Model, Server  # noqa: E402
from lambda_support import function_url_event, http_answer  # noqa: E402

from bentoedge.cloud.aws_lambda import LambdaHandler  # noqa: E402


def contract_event(case: Case, model: Model) -> dict[str, Any]:
    """The event AWS builds from the case's HTTP request, framed as the case says."""
    body = case.body(model)
    headers: dict[str, str] = {}
    if case.content_type is not None:
        headers["content-type"] = case.content_type
    if case.accept is not None:
        headers["accept"] = case.accept
    if case.framing == "length":
        headers["content-length"] = str(len(body))
    elif case.framing == "chunked":
        headers["transfer-encoding"] = "chunked"
    # An empty body with a Content-Length is still a body (of length 0); without one it is none.
    sent = body if body or case.framing == "length" else None
    return function_url_event(case.method, case.path, headers, sent, request_id=case.id)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_contract_through_lambda(
    lambda_server: tuple[LambdaHandler, Server], case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler, server = lambda_server

    def send(srv: Server, c: Case) -> tuple[int, dict[str, str], bytes]:
        return http_answer(handler(contract_event(c, srv.model), None))

    monkeypatch.setattr(test_contract, "send", send)
    test_contract.test_the_contract(server, case)
