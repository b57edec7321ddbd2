"""``bentoedge fleet`` and ``bentoedge rollout`` on a real folder channel and fleet store:
waves published with the real Channel.publish, an abort withdrawn, one-line errors, exit 2."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fleet_support import make_report, signed
from sync_support import seal_tiny

from bentoedge.bentos import fleet_report as rp
from bentoedge.bentos.sealed import SealedModel
from bentoedge.cli import cli
from bentoedge.cloud.channel import Channel, repo
from bentoedge.cloud.fleet.cli import parse_duration
from bentoedge.cloud.fleet.store import open_fleet_store
from bentoedge.edge.sync.select import cohort

KEY = Ed25519PrivateKey.generate()


def _run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _rollouts(ch: Channel) -> dict[str, int]:
    return {r.version: r.rollout for r in repo.releases(ch.load().targets.signed)}


def _report_all(store_url: str, devices: list[str], seq: int, **kw: object) -> None:
    store = open_fleet_store(store_url)
    now = time.time()
    for d in devices:
        store.put_report(signed(make_report(d, seq=seq, sent_at=now, model="tiny", active_since=now - 5, **kw), KEY))


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    home = tmp_path / "home"
    monkeypatch.setenv("BENTOEDGE_HOME", str(home))
    url = (tmp_path / "chan").as_uri()
    ch = Channel.init(url, home=home)
    v2 = seal_tiny(tmp_path / "v2", home, "v2", 2)
    v3 = seal_tiny(tmp_path / "v3", home, "v3", 3)
    return {"ch": ch, "url": url, "v2": str(v2.path), "v3": str(v3.path), "store": str(tmp_path / "fleet")}


def test_a_rollout_advances_through_its_waves_then_another_aborts(world: dict[str, Any]) -> None:
    ch, url, store = world["ch"], world["url"], world["store"]
    devices = [f"dev-{i}" for i in range(60)]
    wave1 = [d for d in devices if cohort(d, "tiny") < 10]
    assert len(wave1) >= 3
    common = ["--channel", url, "--store", store, "--soak", "0s", "--min-devices", "3", "--waves", "10,100"]

    res = _run("rollout", "start", "tiny:v2", *common, "--source", world["v2"])
    assert res.exit_code == 2 and "tiny:v2 is not on channel" in res.output and "Traceback" not in res.output

    ch.publish(SealedModel.open(Path(world["v2"])),
               rollout=0)
    res = _run("rollout", "start", "tiny:v2", *common, "--source", world["v2"])
    assert res.exit_code == 0, res.output
    assert "publishing" not in res.output and "soaking, wave 1/2 at 10%" in res.output
    assert _rollouts(ch) == {"v2": 10}

    res = _run("rollout", "start", "tiny:v2", *common, "--source", world["v2"])
    assert res.exit_code == 2 and "already has a rollout running" in res.output

    res = _run("rollout", "run", "--store", store)
    assert res.exit_code == 0 and "wait" in res.output and _rollouts(ch) == {"v2": 10}  # nobody reported yet
    _report_all(store, [d for d in devices if d not in wave1], 1, active="v1")
    _report_all(store, wave1, 1, active="v2")
    res = _run("rollout", "run", "--store", store, "--json")
    out = json.loads(res.output)
    assert out[0]["action"]["kind"] == "publish" and out[0]["rollout"] == 100 and _rollouts(ch) == {"v2": 100}
    _report_all(store, devices, 2, active="v2", previous="v1")
    res = _run("rollout", "watch", "--store", store, "--interval", "0s", "--max-steps", "3")
    assert res.exit_code == 0 and "done" in res.output

    res = _run("fleet", "status", "--store", store, "--json", "--model", "tiny")
    st = json.loads(res.output)
    assert st["devices"] == 60 and st["versions"][0]["version"] == "v2" and st["health"]["passed"] == 60
    res = _run("fleet", "status", "--store", store)
    assert res.exit_code == 0 and "60 devices" in res.output
    res = _run("fleet", "device", "dev-1", "--store", store)
    assert res.exit_code == 0 and "tiny:v2 (previous v1)" in res.output
    assert _run("fleet", "device", "nobody", "--store", store).exit_code == 2

    # v3 fails on every device of its first wave: the rollout withdraws it by itself.
    ch.publish(SealedModel.open(Path(world["v3"])),
               rollout=0)
    res = _run("rollout", "start", "tiny:v3", *common, "--source", world["v3"])
    assert res.exit_code == 0, res.output
    _report_all(store, wave1, 3, active="v2", refused=("v3",))
    res = _run("rollout", "run", "--model", "tiny", "--store", store)
    assert "abort" in res.output and "aborted" in res.output and "refused" in res.output
    assert _rollouts(ch) == {"v2": 100}  # v3 withdrawn
    res = _run("rollout", "run", "--model", "tiny", "--store", store)
    assert res.exit_code == 0 and "aborted" in res.output and _rollouts(ch) == {"v2": 100}
    res = _run("rollout", "status", "tiny", "--store", store, "--json")
    assert json.loads(res.output)[0]["phase"] == "aborted"


def test_abort_by_hand_and_mistakes(world: dict[str, Any]) -> None:
    ch, url, store = world["ch"], world["url"], world["store"]
    ch.publish(SealedModel.open(Path(world["v2"])), rollout=0)
    assert _run("rollout", "start", "tiny:v2", "--channel", url, "--store", store, "--source", world["v2"]).exit_code == 0
    res = _run("rollout", "abort", "tiny", "--store", store)
    assert res.exit_code == 0 and "aborted" in res.output and _rollouts(ch) == {}
    assert _run("rollout", "abort", "tiny", "--store", store).exit_code == 0  # again: nothing left to do
    for args, message in [
        (("rollout", "start", "tiny:v2", "--channel", url, "--waves", "10,5"), "must increase"),
        (("rollout", "start", "tiny:v2", "--channel", url, "--soak", "soon"), "duration"),
        (("rollout", "start", "tiny", "--channel", url), "MODEL:VERSION"),
        (("rollout", "run", "--store", str(Path(store) / "empty")), "no rollout"),
        (("rollout", "abort", "nothing", "--store", store), "no rollout of nothing"),
    ]:
        res = _run(*args)
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, (args, res.output)
    assert "Examples" in _run("rollout", "--help").output and "Examples" in _run("fleet", "--help").output


def test_parse_duration() -> None:
    assert [parse_duration(t) for t in ("90", "90s", "30m", "2h", "1d", "0.5m")] == [90, 90, 1800, 7200, 86400, 30]


def test_status_of_an_empty_store(tmp_path: Path) -> None:
    res = _run("fleet", "status", "--store", str(tmp_path / "none"), "--json")
    assert res.exit_code == 0 and json.loads(res.output)["devices"] == 0
    assert rp.FORMAT  # the module is importable without the cloud's extras
