"""The device API's local token: /status details need it, beyond loopback every route but health
does, and without one the agent will not bind beyond loopback."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest

from bentoedge.bentos.errors import ConfigError
from bentoedge.edge import server as server_mod
from bentoedge.edge.active import ActiveModel
from bentoedge.edge.config import AgentConfig
from bentoedge.edge.server import AgentServer, is_loopback

TOKEN = "t" * 43


def _cfg(state: Path, host: str = "127.0.0.1") -> AgentConfig:
    return AgentConfig(device_id="dev-secret-1", channel="file:///nowhere", cloud="", state=str(state), port=0,
                       host=host, mode="edge_only")


def _ask(srv: AgentServer, method: str, path: str, token: str | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = b'{"inputs": {}}' if method == "POST" else None
    if body is not None:
        headers.update({"Content-Type": "application/json", "Content-Length": str(len(body))})
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if "json" in (resp.getheader("content-type") or "") else {}
    finally:
        conn.close()


@pytest.fixture
def state(tmp_path: Path) -> Path:
    (tmp_path / "api.token").write_text(TOKEN + "\n")
    return tmp_path


def test_on_loopback_status_needs_the_token_and_predictions_do_not(state: Path) -> None:
    with AgentServer(_cfg(state), ActiveModel()) as srv:
        status, body = _ask(srv, "GET", "/status")
        assert status == 401 and "dev-secret-1" not in json.dumps(body) and "api.token" in body["error"]
        assert _ask(srv, "GET", "/status", "wrong-token-wrong-token")[0] == 401
        status, body = _ask(srv, "GET", "/status", TOKEN)
        assert status == 200 and body["device_id"] == "dev-secret-1"
        assert _ask(srv, "GET", "/livez")[0] == 200
        assert _ask(srv, "POST", "/predict")[0] == 503  # served (no model yet), not refused
        assert _ask(srv, "GET", "/metrics")[0] == 200


def test_beyond_loopback_every_route_but_health_needs_the_token(state: Path, monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    # Bound on 127.0.0.1 (tests talk to loopback only), treated as a LAN address.
    monkeypatch.setattr(server_mod, "is_loopback", lambda host: False)
    with AgentServer(_cfg(state), ActiveModel()) as srv:
        for method, path in (("POST", "/predict"), ("POST", "/invocations"), ("GET", "/metrics"),
                             ("GET", "/docs.json"), ("GET", "/status")):
            assert _ask(srv, method, path)[0] == 401, path
        assert _ask(srv, "POST", "/predict", TOKEN)[0] == 503
        assert _ask(srv, "GET", "/metrics", TOKEN)[0] == 200
        for path in ("/livez", "/healthz"):
            assert _ask(srv, "GET", path)[0] == 200
        assert _ask(srv, "GET", "/readyz")[0] == 503  # answered: no model yet


def test_no_token_no_binding_beyond_loopback(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="without a local API token"):
        AgentServer(_cfg(tmp_path, host="0.0.0.0"), ActiveModel())  # refused before any socket is opened


def test_a_device_without_a_token_keeps_its_loopback_api(tmp_path: Path) -> None:
    with AgentServer(_cfg(tmp_path), ActiveModel()) as srv:
        assert _ask(srv, "GET", "/status")[0] == 200


def test_a_damaged_token_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "api.token").write_text("short")
    with pytest.raises(ConfigError, match="too short"):
        AgentServer(_cfg(tmp_path), ActiveModel())


@pytest.mark.parametrize("host,loop", [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True),
                                        ("localhost", True), ("0.0.0.0", False), ("", False), ("::", False),
                                        ("192.168.1.20", False), ("device.local", False)])
def test_what_counts_as_loopback(host: str, loop: bool) -> None:
    assert is_loopback(host) is loop
