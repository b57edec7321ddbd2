"""Ten real agent processes on loopback, a channel and a fleet store on S3 (a real
``moto_server``), reports through a real ``bentoml serve``: a rollout in waves that completes,
then one that aborts itself and rolls back.

- Every agent is ``bentoedge agent run`` (tests/e2e/fleet_agent.py), polling the S3 channel
  every second and sending signed reports after every cycle to the cloud service, which
  checks them against the channel's device registry and writes them to the S3 fleet store.
- ``bentoedge rollout start tiny:v2 --waves 10,100`` and ``rollout run`` steps take v2 to
  every device from the reports alone.
- v3 fails its health check on three of the ten devices (their runtime, as the entry point
  makes it): ``rollout run`` aborts it (failure share over 20 %), the channel withdraws it,
  and the devices that took it roll back to v2 at their next poll.
- ``bentoedge fleet status --json`` then lists every agent with its active version and health.

One test, bounded by pytest-timeout; the devices are chosen so that the first wave holds
exactly two of them (the cohort is a hash of the device id), which makes the run the same
every time.  The service starts while the agents are provisioned.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from service_support import free_port
from service_support import seal_tiny as seal_cloud_tiny
from sync_support import make_device, seal_tiny, signer_pub

from bentoedge.cli import cli
from bentoedge.cloud.channel import Channel
from bentoedge.cloud.fleet.store import open_fleet_store
from bentoedge.edge import config as agent_config
from bentoedge.edge.sync.select import cohort

pytest.importorskip("bentoml")
pytest.importorskip("boto3")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

AGENT = Path(__file__).with_name("fleet_agent.py")
BUCKET = "fleet-agents"
DEVICES = 10
FAULTY = 3  # devices on which v3 fails its health check


def _pick_devices() -> tuple[list[str], list[str]]:
    """Two devices in the first 10 % wave, eight outside it."""
    ids = [f"agent-{i:03d}" for i in range(400)]
    first = [d for d in ids if cohort(d, "tiny") < 10][:2]
    rest = [d for d in ids if cohort(d, "tiny") >= 10][: DEVICES - 2]
    return first, rest


def _cli(*args: str) -> str:
    res = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def _until(what: str, check: Callable[[], bool], timeout: float, every: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


@contextmanager
def _processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def _predict(port: int) -> str:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/predict",
                                 data=json.dumps({"inputs": {"x": [[0.1, 0.2, 0.3, 0.4]]}}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return str(json.loads(r.read())["model"]["version"])


@pytest.mark.longest
def test_ten_agents_a_wave_rollout_then_an_abort_that_rolls_back(tmp_path: Path, aws_env: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    from bentoedge.cloud.serve import start_server, stop_server, wait_ready

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    channel_url, store_url = f"s3://{BUCKET}/chan", f"s3://{BUCKET}/store"
    home = tmp_path / "publisher"
    monkeypatch.setenv("BENTOEDGE_HOME", str(home))  # the publisher's keys, for `bentoedge rollout`
    ch = Channel.init(channel_url, home=home)
    (tmp_path / "root.json").write_bytes(ch.root_bytes(1))

    first, rest = _pick_devices()
    ids = first + rest
    faulty = set(rest[:FAULTY])
    devices = {d: make_device(tmp_path / d, ch.url, ch.root_bytes(), signer_pub(home), device_id=d) for d in ids}
    for d, dev in devices.items():
        ch.enroll(d, dev.pub_pem, dev.identity_pem)

    cloud = seal_cloud_tiny(tmp_path / "cloud-home", name="fleet-agents-tiny")
    port, log = free_port(), tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "BENTOEDGE_AUTH"}
    server = start_server(cloud.tag, port, log=log, env={
        **env, "BENTOEDGE_HOME": str(cloud.home), "BENTOEDGE_CHANNEL": channel_url,
        "BENTOEDGE_CHANNEL_ROOT": str(tmp_path / "root.json"), "BENTOEDGE_REGISTRY_REFRESH_S": "1",
        "BENTOEDGE_FLEET_STORE": store_url})
    try:
        sealed = {v: seal_tiny(tmp_path / f"s-{v}", home, v, r) for v, r in (("v1", 1), ("v2", 2), ("v3", 3))}
        ch.publish(sealed["v1"])
        ports: dict[str, int] = {}
        for d, dev in devices.items():
            ports[d] = free_port()
            cfg = agent_config.with_overrides(dev.config, cloud=f"http://127.0.0.1:{port}", port=ports[d],
                                              poll_seconds=1.0, report_seconds=5.0, cloud_timeout_s=5.0)
            agent_config.save(cfg)
        wait_ready(f"http://127.0.0.1:{port}", timeout=120, proc=server, log=log)
        store = open_fleet_store(store_url)

        def fleet() -> dict[str, Any]:
            return {r.device_id: r for r in store.latest_all("tiny").reports}

        def all_on(version: str) -> Callable[[], bool]:
            return lambda: (len(f := fleet()) == DEVICES
                            and all(r.active == version and r.health.result == "passed" for r in f.values()))

        with _processes() as procs:
            for d in ids:
                argv = [sys.executable, str(AGENT), str(tmp_path / d / "agent.toml"), *(["v3"] if d in faulty else [])]
                with open(tmp_path / f"{d}.log", "wb") as log:  # the child keeps its own copy of the descriptor
                    procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log))
            _until("every agent to report v1", all_on("v1"), 90)

            # A good version in two waves, decided from the reports alone.
            common = ["--channel", channel_url, "--store", store_url, "--waves", "10,100", "--soak", "1s",
                      "--min-devices", "8", "--max-failure-rate", "0.2", "--quiet-after", "10m"]
            ch.publish(sealed["v2"], rollout=0)
            _cli("rollout", "start", "tiny:v2", *common, "--source", str(sealed["v2"].path))

            def phase(model: str = "tiny") -> str:
                out = json.loads(_cli("rollout", "run", "--model", model, "--store", store_url, "--json"))
                return str(out[0]["phase"])

            _until("the v2 rollout to finish", lambda: phase() == "done", 90, every=1.0)
            _until("every agent to report v2", all_on("v2"), 60)

            # v3 fails its health check on three devices: the rollout aborts itself.
            ch.publish(sealed["v3"], rollout=0)
            _cli("rollout", "start", "tiny:v3", *common, "--source", str(sealed["v3"].path))
            _until("the v3 rollout to abort", lambda: phase() == "aborted", 90, every=1.0)
            _until("every agent back on v2", all_on("v2"), 60)

            status = json.loads(_cli("fleet", "status", "--model", "tiny", "--store", store_url, "--json"))
            listed = {d["device_id"]: d for d in status["device_list"]}
            assert status["devices"] == DEVICES and sorted(listed) == sorted(ids)
            assert {(d["active"], d["health"]) for d in listed.values()} == {("v2", "passed")}
            assert status["health"]["passed"] == DEVICES

            refusers: set[str] = set()
            for d in ids:
                history = store.history(d).reports
                on_v3 = [r for r in history if r.active == "v3"]
                if d in faulty:  # never served it (those the waves reached refused it at their health check)
                    assert not on_v3
                    if any("v3" in r.refused for r in history):
                        refusers.add(d)
            assert refusers  # the abort came from faulty devices' refusals, in their reports
            assert all(_predict(ports[d]) == "v2" for d in ids)  # and every device serves v2 again
            rollout = json.loads(_cli("rollout", "status", "tiny", "--store", store_url, "--json"))[0]
            assert rollout["phase"] == "aborted" and "tiny:v3" in json.dumps(rollout), rollout
            assert all(p.poll() is None for p in procs)  # no agent died on the way
    finally:
        stop_server(server)
