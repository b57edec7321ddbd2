"""Authentication on a real ``bentoml serve`` of the cloud service: each attack refused, the
legitimate calls still answered.

One server for the module, authentication on, reading its device registry from a real TUF
channel (file://) every second, and API keys from a file.  Devices: ``dev-a`` enrolled,
``dev-b`` enrolled and then revoked while the server runs, and one never enrolled.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from keys_support import identity_pem, x25519_pem
from service_support import TinySealed, free_port

from bentoedge.bentos import auth, httpsig
from bentoedge.bentos.apikeys import ApiKeyStore
from bentoedge.cloud.channel import Channel
from bentoedge.edge.cloud_client import CloudClient, identity_signer

BODY = json.dumps({"inputs": {"x": np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 64).tolist()}}).encode()


@dataclass
class World:
    url: str
    port: int
    channel: Channel
    keys: ApiKeyStore
    a: Ed25519PrivateKey
    b: Ed25519PrivateKey
    stranger: Ed25519PrivateKey
    log: Path
    tmp: Path


@pytest.fixture(scope="module")
def world(tiny_sealed: TinySealed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from bentoedge.cloud.serve import start_server, stop_server, wait_ready

    tmp = tmp_path_factory.mktemp("auth")
    ch = Channel.init((tmp / "chan").as_uri(), home=tmp / "publisher")
    a, b, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    ch.enroll("dev-a", x25519_pem(), identity_pem(a))
    ch.enroll("dev-b", x25519_pem(), identity_pem(b))
    (tmp / "root.json").write_bytes(ch.root_bytes(1))
    keys = ApiKeyStore(tmp / "api_keys.json")
    port = free_port()
    log = tmp / "serve.log"
    proc = start_server(tiny_sealed.tag, port, log=log, env={
        "BENTOEDGE_HOME": str(tiny_sealed.home), "BENTOEDGE_CHANNEL": ch.url,
        "BENTOEDGE_CHANNEL_ROOT": str(tmp / "root.json"), "BENTOEDGE_REGISTRY_REFRESH_S": "1",
        "BENTOEDGE_API_KEYS_FILE": str(keys.path), "BENTOEDGE_MAX_PAYLOAD": str(64 << 10),
        "BENTOEDGE_WORKERS": "2"})  # two worker processes: a replay must not find one that never saw it
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout=90, proc=proc, log=log)
        # Ready means one worker answers; the replay tests need both, each of which logs its gate.
        deadline = time.monotonic() + 90
        while log.read_text().count("authentication on") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        yield World(url, port, ch, keys, a, b, stranger, log, tmp)
    finally:
        stop_server(proc)


def _post(w: World, headers: Mapping[str, str], body: bytes = BODY, path: str = "/predict") -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", w.port, timeout=30)
    try:
        return _send(conn, headers, body, path)
    finally:
        conn.close()


def _send(conn: http.client.HTTPConnection, headers: Mapping[str, str], body: bytes = BODY,
          path: str = "/predict") -> tuple[int, dict]:
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json",
                                                  "Content-Length": str(len(body)), **headers})
    resp = conn.getresponse()
    data = resp.read()
    return resp.status, json.loads(data) if data else {}


def _signed(key: Ed25519PrivateKey, body: bytes = BODY, path: str = "/predict", created: float | None = None,
            ) -> dict[str, str]:
    return dict(auth.sign_request(key, "POST", path, body, time.time() if created is None else created))


def test_the_start_up_log_says_authentication_is_on(world: World) -> None:
    text = world.log.read_text()
    assert text.count("authentication on") == 2 and "AUTHENTICATION IS OFF" not in text  # once a worker


def test_no_credentials_is_401_in_the_contracts_json(world: World) -> None:
    status, body = _post(world, {})
    assert status == 401 and "needs credentials" in body["error"], body


def test_bentomls_own_infer_route_is_closed_too(world: World) -> None:
    status, body = _post(world, {}, json.dumps({"x": [[0.0] * 64]}).encode(), path="/infer")
    assert status == 401, body


def test_health_routes_stay_open(world: World) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", world.port, timeout=10)
    for path in ("/readyz", "/livez", "/metrics", "/ping"):
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200, path
    conn.close()


def test_an_enrolled_device_is_answered(world: World) -> None:
    status, body = _post(world, _signed(world.a))
    assert status == 200 and body["served_by"] == "cloud" and len(body["outputs"]["probs"][0]) == 10, body


def test_an_unknown_device_is_403(world: World) -> None:
    status, body = _post(world, _signed(world.stranger))
    assert status == 403 and "not enrolled" in body["error"], body


def test_a_replayed_signature_is_refused_by_every_worker(world: World) -> None:
    # Each call is a new connection, which either worker may accept; after a short pause the
    # one that did not just answer usually wins (with a cache per worker, 23 of 30 such
    # replays were answered), so ten fresh signatures, each replayed, cover both workers.
    for _ in range(10):
        headers = _signed(world.a)
        assert _post(world, headers)[0] == 200
        time.sleep(0.05)
        status, body = _post(world, headers)
        assert status == 401 and "replay" in body["error"], body


def test_a_tampered_body_is_refused(world: World) -> None:
    headers = _signed(world.a)
    other = BODY.replace(b"0.0,", b"0.5,", 1)
    assert other != BODY
    status, body = _post(world, headers, other)
    assert status == 401 and "Content-Digest" in body["error"], body
    # ... and with the digest recomputed for the new body, the signature fails instead.
    status, body = _post(world, {**headers, "Content-Digest": httpsig.content_digest(other)}, other)
    assert status == 401 and "does not verify" in body["error"], body


def test_a_signature_for_another_path_is_refused(world: World) -> None:
    status, _ = _post(world, _signed(world.a, path="/invocations"))
    assert status == 401


def test_a_stale_created_is_refused(world: World) -> None:
    status, body = _post(world, _signed(world.a, created=time.time() - 400))
    assert status == 401 and "window" in body["error"], body


def test_an_oversized_signed_body_is_413_before_it_is_read(world: World) -> None:
    big = b"x" * (65 << 10)
    status, body = _post(world, _signed(world.a, body=big), big)
    assert status == 413, body


def test_a_signed_empty_body_is_answered_not_held(world: World) -> None:
    # Found by the fuzzer (tests/conformance/test_schemathesis.py): the middleware read the
    # empty body to check its digest, then handed the app a receive with nothing left to give,
    # and the request hung until the client gave up.
    for path, says in (("/predict", "body is empty"), ("/fleet/reports", "not JSON")):
        status, body = _post(world, _signed(world.a, body=b"", path=path), b"", path=path)
        assert status == 400 and says in body["error"], (path, body)


def test_api_keys_let_applications_in_until_revoked(world: World) -> None:
    key, rec = world.keys.create("app-1")
    assert oct(world.keys.path.stat().st_mode & 0o777) == "0o600"
    assert key not in world.keys.path.read_text()
    assert _post(world, {"Authorization": f"Bearer {key}"})[0] == 200
    assert _post(world, {"Authorization": "Bearer bek_made_up"})[0] == 403
    world.keys.revoke("app-1")
    status, body = _post(world, {"Authorization": f"Bearer {key}"})
    assert status == 403 and "revoked" in body["error"], body


def test_the_device_client_signs_its_calls(world: World, tmp_path: Path) -> None:
    key_file = tmp_path / "identity.key"
    key_file.write_bytes(world.a.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    client = CloudClient(world.url, timeout_s=20, signer=identity_signer(key_file))
    unsigned = CloudClient(world.url, timeout_s=20)
    try:
        for _ in range(3):  # a fresh nonce each call: none is taken for a replay
            ans = client.predict(BODY, "application/json", None, time.monotonic() + 20)
            assert ans.status == 200 and ans.doc is not None and ans.doc["served_by"] == "cloud"
        assert unsigned.predict(BODY, "application/json", None, time.monotonic() + 20).status == 401
    finally:
        client.close()
        unsigned.close()


def test_a_device_revoked_on_the_channel_is_refused_within_a_refresh(world: World) -> None:
    assert _post(world, _signed(world.b))[0] == 200
    world.channel.revoke("dev-b")
    deadline = time.monotonic() + 15
    status, body = 200, {}
    while time.monotonic() < deadline:
        status, body = _post(world, _signed(world.b))
        if status != 200:
            break
        time.sleep(0.2)
    assert status == 403 and "revoked" in body["error"], body
    assert _post(world, _signed(world.a))[0] == 200  # the others keep being answered


def test_an_unreachable_channel_keeps_the_last_good_registry(world: World) -> None:
    meta = world.tmp / "chan" / "metadata"
    hidden = world.tmp / "chan" / "metadata-away"
    meta.rename(hidden)
    try:
        time.sleep(2.5)  # two refreshes fail
        assert _post(world, _signed(world.a))[0] == 200
        assert "keeping the last good copy" in world.log.read_text()
    finally:
        hidden.rename(meta)


def _until(check: Callable[[], tuple[int, dict]], timeout: float = 15) -> tuple[int, dict]:
    """``check()`` again until it is no 401/403 (the registry not refreshed yet) or time is up."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got[0] not in (401, 403) or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def test_a_device_agent_forwards_signed_calls_and_relays_its_revocation(world: World, tmp_path: Path) -> None:
    from bentoedge.edge.active import ActiveModel
    from bentoedge.edge.config import AgentConfig
    from bentoedge.edge.server import AgentServer

    c = Ed25519PrivateKey.generate()
    (tmp_path / "identity.key").write_bytes(c.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    world.channel.enroll("dev-c", x25519_pem(), identity_pem(c))
    cfg = AgentConfig(device_id="dev-c", channel="file:///nowhere", cloud=world.url, state=str(tmp_path), port=0,
                      cloud_timeout_s=20)
    with AgentServer(cfg, ActiveModel()) as srv:  # no model on the device: every request is forwarded
        def ask() -> tuple[int, dict]:
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
            try:
                conn.request("POST", "/predict", body=BODY, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                return resp.status, json.loads(resp.read())
            finally:
                conn.close()

        status, body = _until(ask)  # the cloud learns of dev-c at its next registry refresh
        assert status == 200 and body["served_by"] == "cloud", body
        world.channel.revoke("dev-c")
        deadline = time.monotonic() + 15
        while status == 200 and time.monotonic() < deadline:
            status, body = ask()
            time.sleep(0.2)
        assert status == 403 and "revoked" in body["error"], body


def test_past_authentication_the_contracts_own_answers_are_unchanged(world: World) -> None:
    bad = b'{"inputs": {"x": "nope"}}'
    status, body = _post(world, _signed(world.a, body=bad), bad)  # the body the middleware read reaches the app
    assert status == 422 and body["input"] == "x", body
    status, body = _post(world, _signed(world.a, body=b"{"), b"{")
    assert status == 400, body
    key, _ = world.keys.create("contract-app")
    status, body = _post(world, {"Authorization": f"Bearer {key}"}, b'{"inputs": {}}')
    assert status == 400 and "missing" in body["error"], body
