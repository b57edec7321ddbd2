"""Attacks on the device API's HTTP layer (security findings 4 and 10), each shown failing
while the device goes on answering correctly.

- Header injection: a cloud answer without x-bentoedge-* headers whose JSON body carries CR/LF
  or non-latin-1 text in model.name / model.version must not reach the device's own headers.
- Framing: duplicate Content-Length headers and lengths such as ``5_0`` or ``+5`` are refused
  (400) and the connection closed, never read as some other number.
- A 5000-digit integer in a JSON body is a 4xx, not a 500.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

import pytest
from api_support import StubCloud

from bentoedge.edge.runtime import EdgeModel
from bentoedge.edge.server import AgentServer

X = [[0.5, -1.0, 2.0, 0.25]]


def raw(port: int, request: bytes) -> tuple[int, bytes, bytes]:
    """Send bytes as they are; the status, the header block and the body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep and b"content-length:" in head.lower():
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    break
    if not data:
        raise ConnectionResetError("the server closed the connection without an answer")
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), head, body


def post(port: int, body: bytes, extra: bytes = b"", length: bytes | None = None) -> tuple[int, bytes, bytes]:
    length = str(len(body)).encode() if length is None else length
    return raw(port, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
               + extra + b"Content-Length: " + length + b"\r\n\r\n" + body)


GOOD = json.dumps({"inputs": {"x": X}}).encode()


@pytest.mark.parametrize("mode", ["inject", "unicode"])
def test_a_cloud_body_cannot_write_the_device_headers(mode: str, make_agent: Callable[..., AgentServer],
                                                      stub_cloud: StubCloud) -> None:
    stub_cloud.mode = mode
    agent = make_agent(None, cloud=stub_cloud.url)  # no model: every request is forwarded
    status, head, body = post(agent.port, GOOD)
    assert status == 200, body
    assert b"set-cookie" not in head.lower() and b"x-evil" not in head.lower()
    assert b"x-bentoedge-model-version: unknown" in head.lower()
    assert json.loads(body)["outputs"] == {"y": [[0.25, 0.5, 0.25]]}  # the answer itself still arrives
    stub_cloud.mode = "ok"
    status, head, _ = post(agent.port, GOOD)
    assert status == 200 and b"x-bentoedge-model-version: cloud-7" in head.lower()


@pytest.mark.parametrize("length", [b"5_0", b"+45", b"4\xd9\xa5", b"45, 45", b"-1", b"0x2d"])
def test_odd_content_lengths_are_refused(length: bytes, make_agent: Callable[..., AgentServer],
                                         load: Callable[..., EdgeModel]) -> None:
    agent = make_agent(load("tiny"))
    status, _, body = post(agent.port, GOOD, length=length)
    assert status == 400, body
    assert post(agent.port, GOOD)[0] == 200  # and the device still answers


def test_duplicate_content_length_headers_are_refused(make_agent: Callable[..., AgentServer],
                                                      load: Callable[..., EdgeModel]) -> None:
    agent = make_agent(load("tiny"))
    status, _, _ = post(agent.port, GOOD, extra=b"Content-Length: 5\r\n")
    assert status == 400
    assert post(agent.port, GOOD)[0] == 200


def test_a_huge_integer_is_a_client_error(make_agent: Callable[..., AgentServer],
                                          load: Callable[..., EdgeModel]) -> None:
    agent = make_agent(load("tiny"))
    body = b'{"inputs": {"x": [[' + b"9" * 5000 + b', 1, 2, 3]]}}'
    status, _, answer = post(agent.port, body)
    assert 400 <= status < 500, answer
    assert "error" in json.loads(answer)
    assert post(agent.port, GOOD)[0] == 200


def test_a_body_far_over_the_payload_limit_is_never_parsed(make_agent: Callable[..., AgentServer],
                                                           load: Callable[..., EdgeModel], stub_cloud: StubCloud,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Security finding 7: parsing JSON multiplies its size; a body beyond what the device
    would ever run itself is forwarded as it came (or refused), never parsed here."""
    from bentoedge.edge import gateway

    parsed: list[int] = []
    real = gateway.parse_request

    def spy(body: bytes, *args: object, **kwargs: object) -> object:
        parsed.append(len(body))
        return real(body, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(gateway, "parse_request", spy)
    big = json.dumps({"inputs": {"x": X * 400}}).encode()  # ~10 KB: over 4 x the 1 KB limit
    agent = make_agent(load("tiny"), cloud=stub_cloud.url, max_payload_bytes=1000)
    status, head, _ = post(agent.port, big)
    assert status == 200 and b"x-bentoedge-fallback-reason: payload_limit" in head.lower()
    assert stub_cloud.bodies[-1] == big and not parsed
    dead = make_agent(load("tiny"), max_payload_bytes=1000)  # no cloud at all
    status, _, answer = post(dead.port, big)
    assert status == 503 and json.loads(answer)["reason"].startswith("payload_limit") and not parsed
    assert post(dead.port, GOOD)[0] == 200 and parsed  # a small body is parsed and served as before


def test_slow_clients_cannot_hold_every_slot(make_agent: Callable[..., AgentServer], load: Callable[..., EdgeModel],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Security finding 5 (slowloris): clients that trickle a request's head a byte at a time,
    under the idle timeout, once held every connection slot for as long as they liked.  Each
    request now has a deadline from its first byte, so the slots come back and real clients
    are answered while the attack goes on."""
    import threading
    import time

    from bentoedge.edge import server as server_module

    monkeypatch.setattr(server_module, "HEAD_DEADLINE_S", 1.0)
    monkeypatch.setattr(server_module._HTTPServer, "max_connections", 16)
    agent = make_agent(load("tiny"))
    stop = threading.Event()
    slow: list[socket.socket] = []
    for _ in range(16):  # every slot
        s = socket.create_connection(("127.0.0.1", agent.port), timeout=5)
        s.sendall(b"POST /predict HTTP/1.1\r\n")
        slow.append(s)

    def trickle() -> None:
        deadline = time.monotonic() + 6
        while not stop.is_set() and time.monotonic() < deadline:
            for s in slow:
                try:
                    s.sendall(b"X")
                except OSError:
                    pass
            time.sleep(0.3)

    worker = threading.Thread(target=trickle, daemon=True)
    worker.start()
    try:
        answered, started = 0, time.monotonic()
        while time.monotonic() - started < 6 and answered < 3:
            try:
                if post(agent.port, GOOD)[0] == 200:
                    answered += 1
            except OSError:  # refused while the slots are full: a client retries
                time.sleep(0.2)
        assert answered == 3, "no real client was answered while slow clients held the slots"
    finally:
        stop.set()
        worker.join(5)
        for s in slow:
            s.close()
