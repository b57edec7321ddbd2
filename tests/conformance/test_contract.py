"""Every case of the contract table against a real device agent and a real `bentoml serve`.

One check for both servers: the status, the headers the case names, and the answer's
shape as the contract defines it (``bentos.api.read_answer``, what the device's cloud
client accepts), then the case's particulars.  The cloud half starts a BentoML server,
so it is marked slow.
"""

from __future__ import annotations

import http.client
import json

import numpy as np
import pytest
from contract_cases import CASES, ERROR, NPZ_OUT, OPENAPI, OUTPUTS, Case, Server

from bentoedge.bentos.api import (
    HEADER_MODEL,
    HEADER_REASON,
    HEADER_SERVED_BY,
    HEADER_VERSION,
    JSON,
    NPZ,
    decode_npz,
    media_type,
    read_answer,
)


@pytest.fixture(params=["edge", pytest.param("cloud", marks=pytest.mark.slow)])
def server(request: pytest.FixtureRequest) -> Server:
    """Each server in turn: the same table runs against both."""
    served: Server = request.getfixturevalue(f"{request.param}_server")
    return served


def send(server: Server, case: Case) -> tuple[int, dict[str, str], bytes]:
    """The case's request, framed exactly as it says (http.client would add a Content-Length)."""
    body = case.body(server.model)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest(case.method, case.path)
        if case.content_type is not None:
            conn.putheader("Content-Type", case.content_type)
        if case.accept is not None:
            conn.putheader("Accept", case.accept)
        if case.framing == "length":
            conn.putheader("Content-Length", str(len(body)))
        elif case.framing == "chunked":
            conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        try:
            if case.framing == "length" and body:
                conn.send(body)
            elif case.framing == "chunked":
                conn.send(f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before it was read (413, 411): the answer is still on its way
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_contract(server: Server, case: Case) -> None:
    status, headers, body = send(server, case)
    assert status == case.status, body[:300]
    for key, value in case.headers.items():
        assert headers.get(key.lower()) == value, key
    kind = media_type(headers.get("content-type"))
    model = server.model
    if case.answer in (OUTPUTS, NPZ_OUT):
        assert case.served_by is not None
        where = case.served_by[server.name]
        assert headers[HEADER_SERVED_BY] == where
        assert headers[HEADER_VERSION] == model.version and headers[HEADER_MODEL] == model.name
        assert HEADER_REASON not in headers  # answered where it was asked: nothing to explain
    if case.answer in (OUTPUTS, NPZ_OUT, ERROR):
        doc = read_answer(status, body, headers.get("content-type"))  # the contract's shape, or AnswerError
    if case.answer == OUTPUTS:
        assert kind == JSON and doc is not None
        assert doc["served_by"] == where and "fallback_reason" not in doc
        assert doc["model"] == {"name": model.name, "version": model.version}
        assert set(doc["outputs"]) == {model.output}
        assert np.asarray(doc["outputs"][model.output]).shape == (case.rows, model.out_width)
    elif case.answer == NPZ_OUT:
        assert kind == NPZ and doc is None
        outputs = decode_npz(body)
        assert set(outputs) == {model.output} and outputs[model.output].shape == (case.rows, model.out_width)
    elif case.answer == ERROR:
        assert kind == JSON and doc is not None
        assert doc.get("input") == case.input
        assert case.says in doc["error"]
    elif case.answer == OPENAPI:
        _check_openapi(json.loads(body), server, case)


def _check_openapi(doc: dict, server: Server, case: Case) -> None:
    """Both servers document the same contract: both routes, every error, the headers, the inputs."""
    assert case.served_by is not None
    for path in ("/predict", "/invocations"):
        op = doc["paths"][path]["post"]
        assert {"200", "400", "411", "413", "415", "422", "503"} <= set(op["responses"]), path
        ok = op["responses"]["200"]
        assert {HEADER_SERVED_BY, HEADER_VERSION, HEADER_MODEL, HEADER_REASON} <= set(ok["headers"])
        assert ok["content"][JSON]["schema"]["properties"]["served_by"]["enum"] == case.served_by[server.name]
        inputs = op["requestBody"]["content"][JSON]["schema"]["properties"]["inputs"]
        assert inputs["required"] == [server.model.input]
        assert NPZ in op["requestBody"]["content"]
