"""Devices' signed reports reach the fleet store through a real ``bentoml serve``, and
``bentoedge fleet status`` shows them; every forgery is refused and nothing good is lost.

The service runs with authentication on, its device registry read from a real TUF channel
(file://) every second, and a fleet store folder.  Devices ``dev-a`` and ``dev-b`` are
enrolled with identity keys; ``dev-b`` is revoked while the server runs.  Each device's
``edge.reporter.Reporter`` builds, signs, buffers and sends its reports through the same
signed ``CloudClient`` the fallback uses.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cli_support import run_cli
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from keys_support import identity_pem, x25519_pem
from service_support import free_port, seal_tiny

from bentoedge.bentos import auth
from bentoedge.bentos import fleet_report as rp
from bentoedge.cloud.channel import Channel
from bentoedge.cloud.fleet.store import open_fleet_store
from bentoedge.edge.cloud_client import CloudClient
from bentoedge.edge.config import AgentConfig
from bentoedge.edge.reporter import MAX_BUFFERED, Reporter

pytest.importorskip("bentoml")
pytestmark = pytest.mark.slow


@dataclass
class Fleet:
    url: str
    port: int
    channel: Channel
    store: Path
    a: Ed25519PrivateKey
    b: Ed25519PrivateKey
    tmp: Path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    import os

    from bentoedge.cloud.serve import start_server, stop_server, wait_ready

    tmp = tmp_path_factory.mktemp("fleet")
    tiny_sealed = seal_tiny(tmp / "cloud-home", name="fleet-tiny")
    ch = Channel.init((tmp / "chan").as_uri(), home=tmp / "publisher")
    a, b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    ch.enroll("dev-a", x25519_pem(), identity_pem(a))
    ch.enroll("dev-b", x25519_pem(), identity_pem(b))
    (tmp / "root.json").write_bytes(ch.root_bytes(1))
    port, log = free_port(), tmp / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "BENTOEDGE_AUTH"}
    proc = start_server(tiny_sealed.tag, port, log=log, env={
        **env, "BENTOEDGE_HOME": str(tiny_sealed.home), "BENTOEDGE_CHANNEL": ch.url,
        "BENTOEDGE_CHANNEL_ROOT": str(tmp / "root.json"), "BENTOEDGE_REGISTRY_REFRESH_S": "1",
        "BENTOEDGE_FLEET_STORE": str(tmp / "store")})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout=90, proc=proc, log=log)
        yield Fleet(url, port, ch, tmp / "store", a, b, tmp)
    finally:
        stop_server(proc)


def _config(device_id: str, cloud: str, state: Path) -> AgentConfig:
    return AgentConfig(device_id=device_id, channel="file:///none", cloud=cloud, state=str(state),
                       device_class="kiosk", agent_version="0.1.0")


STATUS = {"active": {"model": "tiny", "version": "v1", "release": 1}, "previous": [], "last_result": "updated",
          "last_reason": "now serving tiny:v1 release 1", "failed": [], "cycles": 1}
SERVED = {"requests": {"edge": {"200": 40, "500": 1}, "cloud": {"200": 9}}, "latency_ms": {"edge": {"p50": 1.2, "p99": 4.5}},
          "fallback_reasons": {"batch_limit": 9}}


def _reporter(f: Fleet, device_id: str, key: Ed25519PrivateKey, status: dict[str, Any] = STATUS) -> Reporter:
    from bentoedge.bentos.auth import sign_request

    client = CloudClient(f.url, timeout_s=10, path="/fleet/reports",
                         signer=lambda m, p, body: sign_request(key, m, p, body, time.time()))
    config = _config(device_id, f.url, f.tmp / device_id)
    return Reporter(config, f.tmp / device_id / "reports", key, lambda: status, lambda: SERVED,
                    lambda env: client.post(env, "application/json", time.monotonic() + 10)[0])


def _post(f: Fleet, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", f.port, timeout=30)
    conn.request("POST", "/fleet/reports", body, {"Content-Type": "application/json", **headers})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read() or b"{}")


def _signed_headers(key: Ed25519PrivateKey, body: bytes) -> dict[str, str]:
    return dict(auth.sign_request(key, "POST", "/fleet/reports", body, time.time()))


def test_reports_reach_the_store_and_fleet_status(fleet: Fleet) -> None:
    assert _reporter(fleet, "dev-a", fleet.a).report() == 1
    latest = open_fleet_store(str(fleet.store)).latest("dev-a")
    assert latest is not None and latest.report.active == "v1" and latest.report.health.result == "passed"
    assert latest.report.requests.local == 40 and latest.report.requests.forwarded == {"batch_limit": 9}

    shown = run_cli("fleet", "status", "--store", str(fleet.store), "--json")
    assert shown.returncode == 0, shown.stderr[-2000:]
    doc = json.loads(shown.stdout)
    assert "dev-a" in json.dumps(doc) and "v1" in json.dumps(doc)


def test_forged_replayed_and_unsigned_reports_are_refused(fleet: Fleet) -> None:
    good = _reporter(fleet, "dev-a", fleet.a)
    assert good.report() == 1
    store = open_fleet_store(str(fleet.store))
    before = store.latest("dev-a")
    assert before is not None

    envelope = rp.sign(rp.Report("dev-a", before.report.seq + 5, time.time(), active="v9"), fleet.a)
    assert _post(fleet, envelope, {})[0] == 401  # no HTTP signature at all
    stranger = Ed25519PrivateKey.generate()
    assert _post(fleet, envelope, _signed_headers(stranger, envelope))[0] == 403  # not enrolled
    # dev-b is enrolled, but signs a report in dev-a's name: the envelope is dev-b's, dev-a's is not
    hijack = rp.sign(rp.Report("dev-a", before.report.seq + 6, time.time(), active="v9"), fleet.b)
    status, doc = _post(fleet, hijack, _signed_headers(fleet.b, hijack))
    assert status == 403 and "another key" in doc["error"]
    # an envelope signed by another key than the request's
    status, doc = _post(fleet, envelope, _signed_headers(fleet.b, envelope))
    assert status == 403 and "does not verify" in doc["error"]
    big = b"{" + b" " * (rp.MAX_ENVELOPE_BYTES + 10) + b"}"
    assert _post(fleet, big, _signed_headers(fleet.a, big))[0] == 413
    junk = b'{"format": "nope"}'
    assert _post(fleet, junk, _signed_headers(fleet.a, junk))[0] == 400
    stale = rp.sign(rp.Report("dev-a", before.report.seq + 7, time.time() - 3 * 86400, active="v9"), fleet.a)
    assert _post(fleet, stale, _signed_headers(fleet.a, stale))[0] == 400
    replay = before.envelope
    status, doc = _post(fleet, replay, _signed_headers(fleet.a, replay))
    assert status == 200 and doc["stored"] is False  # a replay is taken and ignored

    after = store.latest("dev-a")
    assert after is not None and after.report == before.report  # nothing bad overwrote the good one


def test_a_revoked_device_is_refused_within_a_refresh_and_its_reports_wait(fleet: Fleet) -> None:
    reporter = _reporter(fleet, "dev-b", fleet.b)
    assert reporter.report() == 1
    fleet.channel.revoke("dev-b")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        envelope = rp.sign(rp.Report("dev-b", int(time.time() * 1e6), time.time()), fleet.b)
        if _post(fleet, envelope, _signed_headers(fleet.b, envelope))[0] == 403:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the revoked device was still let in after 30 s")
    assert reporter.report() == 0 and reporter.buffered() == 0  # refused as forbidden: dropped, not retried


def test_reports_wait_in_a_bounded_buffer_while_the_cloud_is_away(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()

    def away(envelope: bytes) -> int:
        raise OSError("connection refused")

    reporter = Reporter(_config("dev-c", "http://127.0.0.1:9", tmp_path), tmp_path / "reports", key,
                        lambda: STATUS, lambda: SERVED, away)
    for _ in range(MAX_BUFFERED + 5):
        assert reporter.report() == 0
    assert reporter.buffered() == MAX_BUFFERED  # the oldest were dropped
    seqs = sorted(int(p.stem) for p in (tmp_path / "reports").glob("*.json"))
    assert seqs == sorted(set(seqs)) and len(seqs) == MAX_BUFFERED

    taken: list[bytes] = []
    reporter._send = lambda envelope: taken.append(envelope) or 200  # the cloud is back
    assert reporter.flush() == MAX_BUFFERED and reporter.buffered() == 0
    got = [rp.open_envelope(e, key.public_key()).report.seq for e in taken]
    assert got == seqs  # oldest first, every one signed by the device
