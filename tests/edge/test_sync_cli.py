"""The agent's process-level contract: device imports stay light, ``agent sync`` exit codes,
``agent run`` stops cleanly on SIGTERM with its status written."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sync_support import make_device, seal_tiny, signer_pub

from bentoedge.cloud.channel import Channel
from bentoedge.edge import config as agent_config
from bentoedge.edge.sync.machine import Result

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("tensorflow", "onnxruntime", "bentoml", "boto3", "botocore", "onnx", "bentoedge.cloud")


def _env() -> dict[str, str]:
    return dict(os.environ)  # the installed bentoedge, as on a device


BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in HEAVY or name.startswith('bentoedge.cloud'):
            raise ImportError(f'blocked {name}', name=name)
sys.meta_path.insert(0, Block())
"""


def test_device_modules_import_without_heavy_packages() -> None:
    # A device has none of these installed; blocking them proves the agent does not need
    # them (securesystemslib probes boto3 itself, which is why it is blocked, not absent).
    code = (f"HEAVY = {HEAVY!r}\n{BLOCK}\nimport bentoedge.edge.sync, bentoedge.edge.sync.agent, bentoedge.edge.fetchers, "
            "bentoedge.edge.state, bentoedge.edge.cli, bentoedge.edge.wiring\n"
            "import sys; print([m for m in HEAVY if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def _device(tmp_path: Path, poll_seconds: float) -> tuple[Channel, Path, Path]:
    """A channel, its publisher home, and an enrolled device's agent.toml."""
    home = tmp_path / "home"
    ch = Channel.init((tmp_path / "chan").as_uri(), home=home)
    dev = make_device(tmp_path / "dev", ch.url, ch.root_bytes(), signer_pub(home), poll_seconds=poll_seconds)
    agent_config.save(dev.config)
    ch.enroll("dev-1", dev.pub_pem)
    return ch, home, tmp_path / "dev" / "agent.toml"


@pytest.fixture
def device(tmp_path: Path) -> tuple[Channel, Path, Path]:
    return _device(tmp_path, poll_seconds=0.2)


def _agent_run(cfg: Path) -> subprocess.Popen[bytes]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return subprocess.Popen([sys.executable, "-m", "bentoedge", "agent", "run", "--config", str(cfg), "--port",
                             str(port)], env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for_status(proc: subprocess.Popen[bytes], status: Path, done: Callable[[dict[str, Any]], bool],
                     what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if status.exists() and done(json.loads(status.read_text())):
            return
        time.sleep(0.1)
    pytest.fail(f"agent run did not {what} within 60 s")


@pytest.mark.slow
def test_agent_sync_exit_codes(device: tuple[Channel, Path, Path], tmp_path: Path) -> None:
    ch, home, cfg = device
    cmd = [sys.executable, "-m", "bentoedge", "agent", "sync", "--config", str(cfg), "--json"]
    ch.publish(seal_tiny(tmp_path / "s1", home, "v1", 1, broken_golden=True))
    r = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and json.loads(r.stdout.splitlines()[-1])["result"] == Result.REFUSED.value, r.stdout + r.stderr
    ch.publish(seal_tiny(tmp_path / "s2", home, "v2", 2))
    r = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[-1])["result"] == Result.UPDATED.value, r.stdout + r.stderr
    st = subprocess.run([sys.executable, "-m", "bentoedge", "agent", "status", "--config", str(cfg), "--json"],
                        env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=60)
    data = json.loads(st.stdout)
    assert data["pointer"]["active"] == "v2" and "tiny:v1" in data["failed"]


@pytest.mark.slow
def test_agent_run_takes_updates_and_stops_on_sigterm(device: tuple[Channel, Path, Path], tmp_path: Path) -> None:
    ch, home, cfg = device
    ch.publish(seal_tiny(tmp_path / "s1", home, "v1", 1))
    proc = _agent_run(cfg)
    try:
        _wait_for_status(proc, tmp_path / "dev" / "status.json",
                         lambda st: (st.get("active") or {}).get("version") == "v1", "take v1")
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 0, out


def test_agent_run_on_a_busy_port_says_so_in_one_line(device: tuple[Channel, Path, Path]) -> None:
    import socket

    _, _, cfg = device
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "bentoedge", "agent", "run", "--config", str(cfg), "--port", str(port)],
                           env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and f"port {port} is already in use" in r.stderr and "--port" in r.stderr


@pytest.mark.slow
def test_agent_sync_now_makes_a_running_agent_check_at_once(tmp_path: Path) -> None:
    ch, home, cfg = _device(tmp_path, poll_seconds=3600)
    proc = _agent_run(cfg)
    status = tmp_path / "dev" / "status.json"
    try:  # its first cycle: nothing published yet
        _wait_for_status(proc, status, lambda st: st.get("cycles", 0) >= 1, "finish its first cycle")
        ch.publish(seal_tiny(tmp_path / "s1", home, "v1", 1))
        sync = [sys.executable, "-m", "bentoedge", "agent", "sync", "--config", str(cfg)]
        r = subprocess.run(sync, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and f"pid {proc.pid}" in r.stderr and "--now" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
        r = subprocess.run([*sync, "--now", "--json"], env=_env(), cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout.splitlines()[-1])["result"] == Result.UPDATED.value
        # Woken, not polled: its second cycle came long before the hour-long poll period.
        assert json.loads(status.read_text())["cycles"] == 2
        assert (json.loads(status.read_text()).get("active") or {}).get("version") == "v1"
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 0, out
    # With no agent running, --now runs the cycle here, as plain 'agent sync' does.
    r = subprocess.run([sys.executable, "-m", "bentoedge", "agent", "sync", "--config", str(cfg), "--now", "--json"],
                       env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[-1])["result"] == Result.UP_TO_DATE.value, r.stderr
