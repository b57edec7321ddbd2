"""Thousands of random and malformed requests against a real agent: no crash, no stray 5xx.

The only 5xx the contract allows is 503 (neither device nor cloud could answer, with the
reason); the cloud here is a port nobody listens on, so requests the device cannot answer
must end in exactly that.  After the run the agent still answers a good request.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from api_support import agent_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bentoedge.edge.active import ActiveModel
from bentoedge.edge.runtime import EdgeModel
from bentoedge.edge.server import AgentServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fuzz_agent(load: Callable[..., EdgeModel]) -> Iterator[AgentServer]:
    from api_support import free_port

    config = agent_config(cloud=f"http://127.0.0.1:{free_port()}", timeout=0.5, max_batch=4,
                          max_payload_bytes=4096)
    with AgentServer(config, ActiveModel(load("multi")), max_body=64 << 10) as server:
        yield server


class Client:
    """One keep-alive connection, reopened when the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def send(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            self.conn.request(method, path, body=body, headers=headers)
            resp = self.conn.getresponse()
            data = resp.read()
        except (ConnectionError, http.client.HTTPException):
            self.conn.close()
            self.conn = None
            raise
        if resp.will_close:
            self.conn.close()
            self.conn = None
        return resp.status, data


numbers = st.one_of(st.integers(-2**40, 2**40), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                    st.none(), st.text(max_size=5))
json_values = st.recursive(numbers, lambda inner: st.one_of(st.lists(inner, max_size=6),
                                                           st.dictionaries(st.text(max_size=5), inner, max_size=4)),
                           max_leaves=40)
arrays = st.builds(lambda rows, cols, fill: [[fill] * cols] * rows, st.integers(0, 6), st.integers(0, 7),
                   st.floats(-1e6, 1e6))
inputs = st.dictionaries(st.sampled_from(["a", "b", "c", ""]), st.one_of(arrays, json_values), max_size=3)
json_docs = st.one_of(st.builds(lambda i: {"inputs": i}, inputs), json_values)


def _npz(draw_arrays: dict[str, Any]) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **draw_arrays)
    return buf.getvalue()


npz_bodies = st.builds(_npz, st.dictionaries(
    st.sampled_from(["a", "b", "x"]),
    st.builds(lambda shape, kind: np.zeros(shape, dtype=kind),
              st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple),
              st.sampled_from(["float32", "float64", "int8", "uint8", "bool", "U3"])),
    max_size=3))
bodies = st.one_of(
    json_docs.map(lambda d: ("application/json", json.dumps(d, allow_nan=True).encode())),
    st.binary(max_size=300).map(lambda b: ("application/json", b)),
    npz_bodies.map(lambda b: ("application/x-npz", b)),
    npz_bodies.map(lambda b: ("application/x-npz", b[: len(b) // 2])),
    st.tuples(st.sampled_from(["text/plain", "", "application/x-npz; q=1", "multipart/form-data", "\x7f"]),
              st.binary(max_size=64)),
)
requests = st.tuples(
    st.sampled_from(["POST"] * 8 + ["GET", "PUT", "DELETE"]),
    st.sampled_from(["/predict"] * 8 + ["/invocations", "/readyz", "/status", "/metrics", "/docs.json", "/x",
                                        "/predict?x=1", "//predict"]),
    bodies,
    st.sampled_from([None, "application/json", "application/x-npz", "*/*", "garbage"]),
)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.function_scoped_fixture])
@given(requests)
def test_random_requests_never_crash_the_agent(fuzz_agent: AgentServer, request: Any) -> None:
    method, path, (content_type, body), accept = request
    client = getattr(fuzz_agent, "_fuzz_client", None) or Client(fuzz_agent.port)
    fuzz_agent._fuzz_client = client  # type: ignore[attr-defined]
    headers = {"Content-Type": content_type} if content_type else {}
    if accept:
        headers["Accept"] = accept
    status, data = client.send(method, path, body, headers)
    assert status < 500 or status == 503, (status, data[:200])
    if status == 503 and path.startswith(("/predict", "/invocations")):
        doc = json.loads(data)
        assert doc["reason"] and doc["error"]
    if 400 <= status < 500:
        assert json.loads(data)["error"]


def test_the_agent_still_serves_after_the_fuzz(fuzz_agent: AgentServer) -> None:
    body = json.dumps({"inputs": {"a": [[1, 2, 3, 4]], "b": [[5, 6]]}}).encode()
    status, data = Client(fuzz_agent.port).send("POST", "/predict", body, {"Content-Type": "application/json"})
    assert status == 200 and json.loads(data)["served_by"] == "edge"
    summary = json.loads(Client(fuzz_agent.port).send("GET", "/status", b"", {})[1])["served"]
    assert "500" not in json.dumps(summary["requests"])
