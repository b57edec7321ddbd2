"""The device API on loopback: a real AgentServer, the real runtime, and a stub cloud.

Covers the contract (same routes, bodies, errors and headers as the cloud), each fallback
reason (forwarded, and said so), a cloud that is down, slow, trickling or answering
garbage (cut off by the deadline and the breaker), and overload.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from api_support import StubCloud

from bentoedge.bentos.api import (
    HEADER_DEGRADED,
    HEADER_REASON,
    HEADER_SERVED_BY,
    HEADER_VERSION,
    NPZ,
)
from bentoedge.edge.breaker import CircuitBreaker
from bentoedge.edge.runtime import EdgeModel
from bentoedge.edge.server import AgentServer

pytestmark = pytest.mark.slow  # starts servers (fast ones: in-process, loopback)

X = [[0.5, -1.0, 2.0, 0.25]]


def post(server: AgentServer, body: Any, content_type: str = "application/json", accept: str | None = None,
         path: str = "/predict", method: str = "POST") -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    headers = {"Content-Type": content_type}
    if accept:
        headers["Accept"] = accept
    conn.request(method, path, body=data, headers=headers)
    resp = conn.getresponse()
    out = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, out


def get(server: AgentServer, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    conn.request("GET", path)
    resp = conn.getresponse()
    out = resp.read()
    conn.close()
    return resp.status, out


def predict(server: AgentServer, x: Any = None) -> tuple[int, dict[str, str], dict[str, Any]]:
    status, headers, body = post(server, {"inputs": {"x": X if x is None else x}})
    return status, headers, json.loads(body)


# -- contract -----------------------------------------------------------------------------

def test_local_answer_matches_the_runtime_and_says_where_it_ran(make_agent: Callable[..., AgentServer],
                                                                  load: Callable[..., EdgeModel]) -> None:
    model = load("tiny", "edge-fp32")
    server = make_agent(model)
    status, headers, doc = predict(server)
    assert status == 200
    assert doc["served_by"] == "edge" and doc["model"] == {"name": "tiny", "version": "1"}
    assert headers[HEADER_SERVED_BY] == "edge" and headers[HEADER_VERSION] == "1"
    assert HEADER_REASON not in headers and "fallback_reason" not in doc
    want = model.predict({"x": np.asarray(X, np.float32)})["y"]
    np.testing.assert_allclose(np.asarray(doc["outputs"]["y"], np.float32), want, rtol=1e-6)


def test_npz_in_and_out_and_multi_io(make_agent: Callable[..., AgentServer], load: Callable[..., EdgeModel]) -> None:
    server = make_agent(load("multi"))
    a, b = np.ones((3, 4), np.float32), np.full((3, 2), 2.0, np.float32)
    buf = io.BytesIO()
    np.savez(buf, a=a, b=b)
    status, headers, body = post(server, buf.getvalue(), NPZ, accept=NPZ)
    assert status == 200 and headers["content-type"] == NPZ and headers[HEADER_SERVED_BY] == "edge"
    with np.load(io.BytesIO(body)) as z:
        np.testing.assert_allclose(z["total"], np.full((3, 1), 8.0), atol=1e-5)
        assert z["joined"].shape == (3, 6)


@pytest.mark.parametrize("body, content_type, status, input_name", [
    (b"{not json", "application/json", 400, None),
    ({"inputs": {"z": X}}, "application/json", 400, "z"),
    ({"inputs": {}}, "application/json", 400, "x"),
    ({"inputs": {"x": [[1, 2, 3]]}}, "application/json", 422, "x"),
    ({"inputs": {"x": [[1, 2, "a", 4]]}}, "application/json", 422, "x"),
    ({"inputs": {"x": [[1, 2, 3, float("nan")]]}}, "application/json", 422, "x"),
    ({"inputs": {"x": X}}, "text/csv", 415, None),
    (b"PK\x03\x04garbage", NPZ, 400, None),
    (b"", "application/json", 400, None),
])
def test_bad_requests_get_the_contracts_4xx_without_touching_the_model(
        make_agent: Callable[..., AgentServer], load: Callable[..., EdgeModel], stub_cloud: StubCloud,
        body: Any, content_type: str, status: int, input_name: str | None) -> None:
    server = make_agent(load("tiny"), cloud=stub_cloud.url)
    got, _, out = post(server, body, content_type)
    doc = json.loads(out)
    assert got == status and doc["error"]
    assert doc.get("input") == input_name
    assert stub_cloud.hits == 0  # a malformed request is not the cloud's problem either


def test_transport_errors(make_agent: Callable[..., AgentServer], load: Callable[..., EdgeModel]) -> None:
    server = make_agent(load("tiny"), max_body=1000)
    assert post(server, {"inputs": {"x": [[0.0] * 4] * 200}})[0] == 413
    assert post(server, {}, path="/nope")[0] == 404
    assert post(server, b"", method="GET")[0] == 405
    assert post(server, b"", path="/status")[0] == 405
    # No Content-Length, and a body shorter than it says: clear 4xx, the server lives on.
    for raw in (b"POST /predict HTTP/1.1\r\nHost: x\r\n\r\n",
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"inputs\""):
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
            answer = s.recv(4096)
        assert answer.split(b" ")[1] in (b"411", b"400")
    assert predict(server)[0] == 200


def test_keep_alive_serves_many_requests_on_one_connection(make_agent: Callable[..., AgentServer],
                                                             load: Callable[..., EdgeModel]) -> None:
    server = make_agent(load("tiny"))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    body = json.dumps({"inputs": {"x": X}}).encode()
    for _ in range(20):
        conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200 and not resp.will_close
        resp.read()
    conn.close()


def test_health_readiness_metrics_status_and_openapi(make_agent: Callable[..., AgentServer],
                                                      load: Callable[..., EdgeModel], stub_cloud: StubCloud) -> None:
    server = make_agent(load("tiny"), cloud=stub_cloud.url, max_batch=1,
                        status_provider=lambda: {"last_sync": "2026-01-01T00:00:00Z", "version": "1"})
    assert get(server, "/livez")[0] == 200 and get(server, "/readyz")[0] == 200
    predict(server)
    predict(server, X * 2)  # batch 2 > max_batch 1: forwarded
    status = json.loads(get(server, "/status")[1])
    assert status["model"]["version"] == "1" and status["model"]["artifact"] == "edge-int8"
    assert status["sync"]["last_sync"] == "2026-01-01T00:00:00Z"
    assert status["served"]["requests"] == {"edge": {"200": 1}, "cloud": {"200": 1}}
    assert status["served"]["fallback_reasons"] == {"batch_limit": 1}
    assert {"p50", "p99"} <= set(status["served"]["latency_ms"]["edge"])
    metrics = get(server, "/metrics")[1].decode()
    assert 'bentoedge_requests_total{served_by="edge",status="200"} 1' in metrics
    assert 'bentoedge_fallback_total{reason="batch_limit"} 1' in metrics
    assert 'bentoedge_request_duration_seconds_count{served_by="cloud"} 1' in metrics
    assert "bentoedge_model_active 1" in metrics
    docs = json.loads(get(server, "/docs.json")[1])
    schema = docs["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["inputs"]["required"] == ["x"]


def test_readiness_follows_the_documented_rule(make_agent: Callable[..., AgentServer], stub_cloud: StubCloud,
                                               dead_cloud_url: str) -> None:
    assert get(make_agent(None, cloud=stub_cloud.url), "/readyz")[0] == 200  # cloud usable
    assert get(make_agent(None, cloud=stub_cloud.url, mode="edge_only"), "/readyz")[0] == 503
    assert get(make_agent(None), "/readyz")[0] == 503  # no cloud configured
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=60)
    server = make_agent(None, cloud=dead_cloud_url, breaker=breaker)
    assert predict(server)[0] == 503
    status, body = get(server, "/readyz")
    assert status == 503 and "cloud_circuit_open" in json.loads(body)["reason"]


# -- fallback reasons ---------------------------------------------------------------------

def _forwarded(server: AgentServer, stub: StubCloud, reason: str, x: Any = None) -> None:
    before = stub.hits
    status, headers, doc = predict(server, x)
    assert status == 200, doc
    assert doc["served_by"] == "cloud" and headers[HEADER_SERVED_BY] == "cloud"
    assert doc["fallback_reason"] == reason and headers[HEADER_REASON] == reason
    assert headers[HEADER_VERSION] == "cloud-7" and doc["outputs"] == {"y": [[0.25, 0.5, 0.25]]}
    assert stub.hits == before + 1


def test_a_request_forwarded_for_load_is_not_parsed_here_and_one_that_runs_here_is(
        make_agent: Callable[..., AgentServer], load: Callable[..., EdgeModel], stub_cloud: StubCloud,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An overloaded device spends nothing on what it forwards but the copy: the router's
    load, memory, size and mode facts decide before the body is read, and the body goes on as
    it came; parsing starts once the route is this device (here: the cloud failed)."""
    from bentoedge.edge import gateway

    parsed: list[bytes] = []
    real_parse = gateway.parse_request
    monkeypatch.setattr(gateway, "parse_request", lambda body, *a, **k: parsed.append(body) or real_parse(body, *a, **k))
    busy = make_agent(load("tiny"), cloud=stub_cloud.url, max_inflight=0)
    body = json.dumps({"inputs": {"x": X}}).encode()
    status, headers, out = post(busy, body)
    assert status == 200 and headers[HEADER_REASON] == "overloaded" and parsed == []
    assert stub_cloud.bodies[-1] == body  # byte for byte what the client sent
    for mode in ("prefer_cloud", "cloud_only"):
        assert post(make_agent(load("tiny"), cloud=stub_cloud.url, mode=mode), body)[0] == 200 and parsed == []
    stub_cloud.mode = "error"  # the cloud fails: the overloaded request now runs here, parsed first
    status, headers, out = post(busy, body)
    assert status == 200 and headers[HEADER_SERVED_BY] == "edge" and parsed == [body], out
    assert headers[HEADER_DEGRADED].startswith("overloaded"), headers
    status, _, out = post(busy, b'{"inputs": {"x": "not an array"}}')  # and is judged here
    assert status == 422 and b"rectangular array" in out, out


def test_each_fallback_reason_forwards_and_says_so(make_agent: Callable[..., AgentServer],
                                                   load: Callable[..., EdgeModel], stub_cloud: StubCloud) -> None:
    url = stub_cloud.url
    _forwarded(make_agent(None, cloud=url), stub_cloud, "no_model")
    _forwarded(make_agent(load("tiny"), cloud=url, max_payload_bytes=10), stub_cloud, "payload_limit")
    _forwarded(make_agent(load("tiny"), cloud=url, max_batch=2), stub_cloud, "batch_limit", X * 3)
    # A batch-of-one artifact answers a batch locally, one sample at a time ...
    assert predict(make_agent(load("fixed"), cloud=url), X * 2)[1][HEADER_SERVED_BY] == "edge"
    # ... so the shape limit is for an artifact whose fixed dims cannot take the request at all.
    narrow = load("fixed", workers=2)
    narrow.fixed_shapes = {"x": (1, 3)}
    _forwarded(make_agent(narrow, cloud=url), stub_cloud, "shape_limit", X * 2)
    _forwarded(make_agent(load("reshape"), cloud=url), stub_cloud, "local_error", X * 2)
    _forwarded(make_agent(load("tiny"), cloud=url, memory=lambda: 10.0), stub_cloud, "low_memory")
    _forwarded(make_agent(load("tiny"), cloud=url, max_inflight=0), stub_cloud, "overloaded")
    budget = make_agent(load("tiny"), cloud=url, latency_budget_ms=0.0)
    for _ in range(2):  # an idle device always runs locally: only a queue predicts a wait
        assert predict(budget)[1][HEADER_SERVED_BY] == "edge"
    _forwarded(make_agent(load("tiny"), cloud=url, mode="prefer_cloud"), stub_cloud, "mode_prefer_cloud")
    _forwarded(make_agent(load("tiny"), cloud=url, mode="cloud_only"), stub_cloud, "mode_cloud_only")
    # The fixed-shape and reshape models still answer what they can locally.
    assert predict(make_agent(load("fixed"), cloud=url))[1][HEADER_SERVED_BY] == "edge"


def test_npz_forwarded_comes_back_as_sent(make_agent: Callable[..., AgentServer], stub_cloud: StubCloud) -> None:
    server = make_agent(None, cloud=stub_cloud.url)
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((1, 4), np.float32))
    post(server, buf.getvalue(), NPZ)
    with np.load(io.BytesIO(stub_cloud.bodies[-1])) as z:
        assert z["x"].shape == (1, 4)


def test_cloud_4xx_is_relayed_with_its_placement(make_agent: Callable[..., AgentServer], stub_cloud: StubCloud) -> None:
    stub_cloud.mode = "reject"
    status, headers, body = post(make_agent(None, cloud=stub_cloud.url), {"inputs": {"x": "nonsense"}})
    assert status == 422 and json.loads(body)["input"] == "x"
    assert headers[HEADER_SERVED_BY] == "cloud" and headers[HEADER_REASON] == "no_model"


def test_a_swap_to_no_model_forwards_and_back_serves_locally(make_agent: Callable[..., AgentServer],
                                                             load: Callable[..., EdgeModel], stub_cloud: StubCloud) -> None:
    server = make_agent(load("tiny"), cloud=stub_cloud.url)
    assert predict(server)[1][HEADER_SERVED_BY] == "edge"
    server.active.swap(None)
    _forwarded(server, stub_cloud, "no_model")
    server.active.swap(load("tiny"))
    assert predict(server)[1][HEADER_SERVED_BY] == "edge"


# -- a cloud that is down, slow or broken ---------------------------------------------------

def test_cloud_down_serves_locally_what_it_can_and_503_with_the_reason_otherwise(
        make_agent: Callable[..., AgentServer], load: Callable[..., EdgeModel], dead_cloud_url: str) -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=60)
    server = make_agent(load("reshape"), cloud=dead_cloud_url, breaker=breaker, max_batch=1)
    status, _, doc = predict(server, X * 2)  # batch 2: over the limit *and* fails locally
    assert status == 503 and doc["reason"] == "local_error,cloud_unreachable" and doc["error"]
    # A soft reason (batch over the limit) with the cloud down: answered locally after all.
    ok = make_agent(load("tiny"), cloud=dead_cloud_url, breaker=breaker, max_batch=1)
    status, headers, doc = predict(ok, X * 2)
    assert status == 200 and headers[HEADER_SERVED_BY] == "edge"
    # ... and it says it is degraded, and why: it wanted the cloud, which could not answer.
    assert headers[HEADER_DEGRADED] == doc["degraded"] == "batch_limit,cloud_unreachable", doc
    assert breaker.state == "open"
    assert json.loads(get(ok, "/status")[1])["served"]["degraded"] == {"batch_limit,cloud_unreachable": 1}
    assert 'bentoedge_degraded_total{reason="batch_limit,cloud_unreachable"} 1' in get(ok, "/metrics")[1].decode()
    # A plain request on a healthy path is not marked.
    status, headers, doc = predict(ok)
    assert status == 200 and HEADER_DEGRADED not in headers and "degraded" not in doc
    # prefer_cloud with the cloud down: answered here, and marked.
    pc = make_agent(load("tiny"), cloud=dead_cloud_url, breaker=breaker, mode="prefer_cloud")
    status, headers, doc = predict(pc)
    assert status == 200 and headers[HEADER_DEGRADED] == "mode_prefer_cloud,cloud_circuit_open", headers
    status, _, doc = predict(server, X * 2)  # now the breaker answers without trying
    assert status == 503 and doc["reason"] == "local_error,cloud_circuit_open"
    nomodel = make_agent(None, cloud=dead_cloud_url, breaker=breaker)
    assert predict(nomodel)[2]["reason"] == "no_model,cloud_circuit_open"
    assert predict(make_agent(None))[2]["reason"] == "no_model,cloud_not_configured"
    assert predict(make_agent(load("reshape"), mode="edge_only"), X * 2)[2]["reason"] == "local_error,mode_edge_only"


@pytest.mark.parametrize("mode, kind", [("slow", "cloud_timeout"), ("trickle", "cloud_timeout"),
                                        ("garbage", "cloud_bad_answer"), ("error", "cloud_error")])
def test_a_cloud_that_hangs_or_answers_garbage_is_cut_off(make_agent: Callable[..., AgentServer],
                                                          stub_cloud: StubCloud, mode: str, kind: str) -> None:
    stub_cloud.mode = "ok" if mode == "slow" else mode
    stub_cloud.sleep_s = 3.0 if mode == "slow" else 0.0
    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=60)
    server = make_agent(None, cloud=stub_cloud.url, timeout=0.5, breaker=breaker)
    for _ in range(2):
        status, _, doc = predict(server)
        assert status == 503 and doc["reason"] == f"no_model,{kind}"
    hits = stub_cloud.hits
    status, _, doc = predict(server)
    assert doc["reason"] == "no_model,cloud_circuit_open" and stub_cloud.hits == hits
    assert json.loads(get(server, "/status")[1])["served"]["cloud_errors"] == {kind: 2}


def test_overload_offloads_and_every_request_is_answered(make_agent: Callable[..., AgentServer],
                                                         load: Callable[..., EdgeModel], stub_cloud: StubCloud) -> None:
    server = make_agent(load("tiny", "edge-fp32"), cloud=stub_cloud.url, max_inflight=1)
    results: list[tuple[int, str, str]] = []
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
        body = json.dumps({"inputs": {"x": X * 4}}).encode()
        for _ in range(40):
            conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            with lock:
                results.append((resp.status, resp.getheader(HEADER_SERVED_BY) or "",
                                resp.getheader(HEADER_REASON) or ""))
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 240 and all(s == 200 for s, _, _ in results)
    for _, where, reason in results:
        assert (where, reason) in {("edge", ""), ("cloud", "overloaded"), ("cloud", "latency_budget")}
    assert json.loads(get(server, "/status")[1])["local"]["inflight"] == 0


def test_connections_beyond_the_bound_are_closed_and_the_rest_are_served(tmp_path: Any) -> None:
    import socket as _socket

    from bentoedge.edge import server as server_mod
    from bentoedge.edge.active import ActiveModel
    from bentoedge.edge.config import AgentConfig

    cfg = AgentConfig(device_id="d", channel="file:///nowhere", cloud="", state=str(tmp_path), port=0)
    old = server_mod._HTTPServer.max_connections
    server_mod._HTTPServer.max_connections = 2
    try:
        with server_mod.AgentServer(cfg, ActiveModel()) as srv:
            idle = [_socket.create_connection(("127.0.0.1", srv.port)) for _ in range(2)]  # slow clients
            try:
                extra = _socket.create_connection(("127.0.0.1", srv.port))
                extra.settimeout(5)
                extra.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
                assert extra.recv(100) == b""  # refused by closing, not queued forever
                extra.close()
            finally:
                for s in idle:
                    s.close()
            for _ in range(50):  # once the slow clients leave, the agent answers again
                try:
                    with _socket.create_connection(("127.0.0.1", srv.port), timeout=5) as ok:
                        ok.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        if ok.recv(100).startswith(b"HTTP/1.1 200"):
                            break
                except OSError:
                    pass
                time.sleep(0.1)
            else:
                raise AssertionError("the agent never answered again")
    finally:
        server_mod._HTTPServer.max_connections = old
