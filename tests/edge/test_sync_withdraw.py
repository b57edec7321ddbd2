"""A version withdrawn from a real folder channel (a rollout's abort) rolls back on the devices
that took it, at their next poll, and never reaches the rest.

Devices are wired as ``agent run`` wires them (``edge.wiring.wire`` with the local API) and
the check is made where a client sees it: ``POST /predict`` names the version that answered.
The device's next fleet report (``edge.reporter.build_report``) carries the rollback.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
from sync_support import Device, make_device, seal_tiny, signer_pub

from bentoedge.bentos import fleet_report as rp
from bentoedge.cloud.channel import Channel
from bentoedge.edge.reporter import build_report
from bentoedge.edge.sync import Result
from bentoedge.edge.wiring import wire


def _predict(url: str) -> str:
    req = urllib.request.Request(f"{url}/predict", data=json.dumps({"inputs": {"x": [[0.1, 0.2, 0.3, 0.4]]}}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        doc = json.loads(r.read())
    assert doc["served_by"] == "edge"
    return str(doc["model"]["version"])


@pytest.fixture
def channel(tmp_path: Path) -> tuple[Channel, Path]:
    home = tmp_path / "home"
    ch = Channel.init((tmp_path / "chan").as_uri(), home=home)
    return ch, home


def _device(tmp_path: Path, ch: Channel, home: Path, name: str) -> Device:
    dev = make_device(tmp_path / name, ch.url, ch.root_bytes(), signer_pub(home), device_id=name)
    ch.enroll(name, dev.pub_pem)
    return dev


def test_withdrawn_version_rolls_back_on_devices_that_took_it_and_reaches_no_other(
        tmp_path: Path, channel: tuple[Channel, Path]) -> None:
    ch, home = channel
    took, never = _device(tmp_path, ch, home, "took"), _device(tmp_path, ch, home, "never")
    ch.publish(seal_tiny(tmp_path / "s1", home, "v1", 1))
    with wire(took.config, active=took.active, serve=True) as a, wire(never.config, active=never.active) as b:
        a.server.start()
        assert a.agent.sync_once().result is Result.UPDATED
        assert b.agent.sync_once().result is Result.UPDATED
        ch.publish(seal_tiny(tmp_path / "s2", home, "v2", 2))
        assert a.agent.sync_once().result is Result.UPDATED
        assert _predict(a.server.url) == "v2"
        assert a.agent.status()["previous"] == ["v1"]

        ch.withdraw("tiny", "v2")  # what `bentoedge rollout abort` does to the channel
        r = a.agent.sync_once()
        assert r.result is Result.ROLLED_BACK and r.ok
        assert r.reason == "tiny:v2 was withdrawn from the channel: rolled back to tiny:v1"
        assert _predict(a.server.url) == "v1"
        p = a.agent.state.pointer()
        assert (p.active, p.previous) == ("v1", ())
        assert not a.agent.state.version_dir("v2").exists()  # pruned: no rollback target any more
        assert "tiny:v2" not in a.agent.state.failed()  # withdrawn is not this device's failure
        status = a.agent.status()
        assert status["last_result"] == "rolled_back" and status["active"]["version"] == "v1"
        assert status["active_since"] is not None and status["active_since"] <= time.time() + 1

        # The device's next report says so: v1 active, the rollback as the last sync and its cause.
        report = build_report(took.config, status, a.server.metrics.summary(), seq=1, now=time.time(), uptime_s=1.0)
        assert (report.active, report.previous, report.sync.outcome) == ("v1", None, "rolled_back")
        assert "tiny:v2 was withdrawn" in report.sync.cause and report.health.result == "passed"
        assert rp.Report.from_bytes(report.to_bytes()) == report  # the cloud parses it

        # The next poll finds nothing to do; the device that never took v2 never takes it.
        assert a.agent.sync_once().result is Result.UP_TO_DATE
        assert _predict(a.server.url) == "v1"
        rb = b.agent.sync_once()
        assert rb.result is Result.UP_TO_DATE and never.active.get().version == "v1"  # type: ignore[union-attr]
        assert not b.agent.state.version_dir("v2").exists()


def test_no_previous_version_keeps_serving_and_says_so(tmp_path: Path, channel: tuple[Channel, Path]) -> None:
    ch, home = channel
    dev = _device(tmp_path, ch, home, "late")
    ch.publish(seal_tiny(tmp_path / "s1", home, "v1", 1))
    ch.publish(seal_tiny(tmp_path / "s2", home, "v2", 2))  # its first poll is after v2: it never installs v1
    with dev.agent() as agent:
        assert agent.sync_once().result is Result.UPDATED and dev.active.get().version == "v2"  # type: ignore[union-attr]
        ch.withdraw("tiny", "v2")
        r = agent.sync_once()
        assert r.result is Result.UP_TO_DATE
        assert "tiny:v2 was withdrawn" in r.reason and "still serving" in r.reason
        assert dev.active.get().version == "v2"  # type: ignore[union-attr]
        assert agent.state.pointer().active == "v2"


def test_a_previous_version_also_withdrawn_is_no_rollback_target(tmp_path: Path, channel: tuple[Channel, Path]) -> None:
    ch, home = channel
    dev = _device(tmp_path, ch, home, "dev")
    with dev.agent() as agent:
        ch.publish(seal_tiny(tmp_path / "s1", home, "v1", 1))
        assert agent.sync_once().result is Result.UPDATED
        ch.publish(seal_tiny(tmp_path / "s2", home, "v2", 2))
        assert agent.sync_once().result is Result.UPDATED
        ch.withdraw("tiny", "v1")
        ch.withdraw("tiny", "v2")
        r = agent.sync_once()
        assert r.result is Result.UP_TO_DATE and "still serving" in r.reason
        assert dev.active.get().version == "v2"  # type: ignore[union-attr]


def test_a_previous_version_that_fails_its_checks_is_refused_and_the_withdrawn_one_serves(
        tmp_path: Path, channel: tuple[Channel, Path]) -> None:
    ch, home = channel
    dev = _device(tmp_path, ch, home, "dev")
    with dev.agent() as agent:
        ch.publish(seal_tiny(tmp_path / "s1", home, "v1", 1))
        assert agent.sync_once().result is Result.UPDATED
        ch.publish(seal_tiny(tmp_path / "s2", home, "v2", 2))
        assert agent.sync_once().result is Result.UPDATED
        enc = agent.state.version_dir("v1") / "artifacts" / "edge-fp32.tflite.enc"
        data = bytearray(enc.read_bytes())
        data[len(data) // 2] ^= 1  # the installed copy of v1 went bad on disk
        enc.write_bytes(bytes(data))
        ch.withdraw("tiny", "v2")
        r = agent.sync_once()
        assert r.result is Result.UP_TO_DATE and "tiny:v1 failed its checks" in r.reason
        assert dev.active.get().version == "v2"  # type: ignore[union-attr]
        assert "tiny:v1" in agent.state.failed()
        # Reported by version, as the rollout controller compares it with the version it rolls out.
        report = build_report(dev.config, agent.status(), {}, seq=1, now=time.time(), uptime_s=1.0)
        assert report.refused == ("v1",) and report.active == "v2"
