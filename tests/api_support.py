"""Fixtures and helpers for the device API tests: committed tiny models, a stub cloud, agents.

Everything here runs with only ``bentoedge[edge]`` installed (no TensorFlow, BentoML,
ONNX Runtime or boto3), on LiteRT or on tflite-runtime 2.14 with numpy < 2: the models
are files under ``data/`` made once by ``data/make_data.py``.

The stub cloud is a real HTTP server on loopback whose behaviour a test sets (answer,
sleep, trickle, garbage, 500, 4xx); it stands in for the cloud where the test is about
the device's handling of a cloud that misbehaves.  The real ``bentoml serve`` cloud is in
tests/e2e/test_e2e_fallback.py.  Tests import helpers from here by this unique name
(``from conftest import`` is ambiguous when several test folders have a conftest).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bentoedge.bentos.keystore import LocalKeys
from bentoedge.bentos.recipients import Keyring
from bentoedge.bentos.sealed import SealedModel
from bentoedge.edge.active import ActiveModel
from bentoedge.edge.breaker import CircuitBreaker
from bentoedge.edge.config import AgentConfig, Limits
from bentoedge.edge.runtime import EdgeModel, load_edge_model
from bentoedge.edge.server import AgentServer

DATA = Path(__file__).resolve().parent / "edge" / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def keyring() -> Keyring:
    return Keyring().add_kek(LocalKeys(DATA).kek())


@pytest.fixture(scope="session")
def trusted() -> dict[str, bytes]:
    return LocalKeys(DATA).trusted_signers()


def sealed(name: str) -> SealedModel:
    return SealedModel.open(DATA / "sealed" / f"{name}-1")


@pytest.fixture(scope="session")
def load(keyring: Keyring) -> Callable[..., EdgeModel]:
    cache: dict[tuple[Any, ...], EdgeModel] = {}

    def _load(name: str, artifact_id: str | None = None, workers: int = 1) -> EdgeModel:
        key = (name, artifact_id, workers)
        if key not in cache:
            cache[key] = load_edge_model(sealed(name), keyring, workers=workers, artifact_id=artifact_id)
        return cache[key]

    return _load


# -- the stub cloud -----------------------------------------------------------------------

@dataclass
class StubCloud:
    """What the stub answers; tests change ``mode`` (ok|slow|garbage|error|reject|trickle|inject|unicode)."""

    mode: str = "ok"
    sleep_s: float = 0.0
    hits: int = 0
    bodies: list[bytes] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, body: bytes) -> tuple[int, bytes, dict[str, str]]:
        with self.lock:
            self.hits += 1
            self.bodies.append(body)
        if self.sleep_s:
            time.sleep(self.sleep_s)
        headers = {"Content-Type": "application/json", "x-bentoedge-served-by": "cloud",
                   "x-bentoedge-model-version": "cloud-7", "x-bentoedge-model": "tiny"}
        if self.mode == "garbage":
            return 200, b"\x00\xffnot json at all", {"Content-Type": "application/json"}
        if self.mode == "error":
            return 500, b'{"error": "boom"}', headers
        if self.mode in ("inject", "unicode"):  # a cloud (or a man in the middle) writing headers through the body
            version = "v1\r\nSet-Cookie: session=attacker" if self.mode == "inject" else "v\u0150\u4e00"
            doc = {"outputs": {"y": [[0.25, 0.5, 0.25]]}, "model": {"name": "tiny\r\nX-Evil: 1", "version": version},
                   "served_by": "cloud"}
            return 200, json.dumps(doc).encode(), {"Content-Type": "application/json"}
        if self.mode == "reject":
            return 422, b'{"error": "input x is wrong", "input": "x"}', headers
        doc = {"outputs": {"y": [[0.25, 0.5, 0.25]]}, "model": {"name": "tiny", "version": "cloud-7"},
               "served_by": "cloud"}
        return 200, json.dumps(doc).encode(), headers


class _StubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def do_POST(self) -> None:
        stub: StubCloud = self.server.stub
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, data, headers = stub.answer(body)
        try:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if stub.mode == "trickle":  # a byte at a time, forever slower than any deadline
                for i in range(len(data)):
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
                    time.sleep(0.2)
            else:
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture()
def stub_cloud() -> Iterator[StubCloud]:
    stub = StubCloud()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _StubHandler)
    httpd.daemon_threads = True
    httpd.stub = stub  # type: ignore[attr-defined]
    stub.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield stub
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture()
def dead_cloud_url() -> str:
    """A loopback port nobody listens on: connections are refused at once."""
    return f"http://127.0.0.1:{free_port()}"


# -- agents -------------------------------------------------------------------------------

def agent_config(cloud: str = "", mode: str = "prefer_edge", timeout: float = 2.0, **limits: Any) -> AgentConfig:
    return AgentConfig(device_id="test-device", channel="file:///nowhere", cloud=cloud, state="/nonexistent",
                       port=0, mode=mode, cloud_timeout_s=timeout, limits=Limits(**limits))


@pytest.fixture()
def make_agent() -> Iterator[Callable[..., AgentServer]]:
    started: list[AgentServer] = []

    def _make(model: Any = None, cloud: str = "", mode: str = "prefer_edge", timeout: float = 2.0,
              breaker: CircuitBreaker | None = None, memory: Callable[[], float | None] | None = None,
              status_provider: Callable[[], dict[str, Any]] = dict, max_body: int | None = None,
              **limits: Any) -> AgentServer:
        kwargs: dict[str, Any] = {"breaker": breaker, "memory": memory}
        if max_body is not None:
            kwargs["max_body"] = max_body
        server = AgentServer(agent_config(cloud, mode, timeout, **limits), ActiveModel(model),
                             status_provider, **kwargs)
        started.append(server.start())
        return server

    yield _make
    for server in started:
        server.stop()
