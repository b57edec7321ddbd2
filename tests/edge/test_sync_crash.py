"""Crash consistency: SIGKILL the agent at every stage of an update, and at random moments.

The agent runs as a real subprocess: ``python -m bentoedge agent sync``, or, to die at a
chosen point, ``crashing_agent.py``, which injects a crash hook that SIGKILLs it right
after a stage, mid health check or mid download.  After each kill the state folder must
name a whole, valid active version (signature, hashes, decryption and golden samples all
pass), and a restart must finish the update.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from sync_support import make_device, seal_tiny, signer_pub

from bentoedge.bentos.recipients import Keyring
from bentoedge.bentos.sealed import SealedModel
from bentoedge.cloud.channel import Channel
from bentoedge.edge import config as agent_config
from bentoedge.edge.state import DeviceState
from bentoedge.edge.sync.agent import load_and_check, trusted_signers
from bentoedge.edge.sync.machine import Stage
from bentoedge.edge.wiring import wire

ROOT = Path(__file__).resolve().parents[2]
CRASHING_AGENT = Path(__file__).with_name("crashing_agent.py")
pytestmark = pytest.mark.slow


def agent_sync(cfg_path: Path, crash_at: str | None = None) -> subprocess.Popen[bytes]:
    """``agent sync`` in a process of its own; with ``crash_at``, one that kills itself there."""
    env = dict(os.environ)  # the installed bentoedge, as on a device
    cmd = ([sys.executable, str(CRASHING_AGENT), str(cfg_path), crash_at] if crash_at
           else [sys.executable, "-m", "bentoedge", "agent", "sync", "--config", str(cfg_path)])
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def assert_valid_active(state_dir: Path, expect: set[str]) -> str:
    cfg = agent_config.load(state_dir / "agent.toml")
    st = DeviceState(state_dir)
    p = st.pointer()
    assert p.active in expect, p
    sealed = SealedModel.open(st.version_dir(p.active))
    sealed.verify(trusted_signers(cfg), target="edge")
    key = serialization.load_pem_private_key(st.key_file.read_bytes(), password=None)
    load_and_check(sealed, Keyring().add_x25519(key), cfg)  # type: ignore[arg-type]
    return p.active


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A device at v1 (its state folder, as a template) and a channel offering v2."""
    tmp = tmp_path_factory.mktemp("crash")
    home = tmp / "home"
    ch = Channel.init((tmp / "chan").as_uri(), home=home)
    dev = make_device(tmp / "template", ch.url, ch.root_bytes(), signer_pub(home))
    agent_config.save(dev.config)
    ch.enroll("dev-1", dev.pub_pem)
    ch.publish(seal_tiny(tmp / "s1", home, "v1", 1))
    proc = agent_sync(tmp / "template" / "agent.toml")
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 0, out
    assert_valid_active(tmp / "template", {"v1"})
    ch.publish(seal_tiny(tmp / "s2", home, "v2", 2))
    return tmp, tmp / "template"


def fresh_device(tmp: Path, template: Path, name: str) -> Path:
    state = tmp / name
    shutil.copytree(template, state)
    cfg = agent_config.load(template / "agent.toml")
    agent_config.save(agent_config.with_overrides(cfg, state=str(state)), state / "agent.toml")
    return state


@pytest.mark.parametrize("stage", [s.value for s in Stage] + ["download-chunk"])
def test_kill_at_each_stage_leaves_a_valid_active_version(provisioned: tuple[Path, Path], stage: str) -> None:
    tmp, template = provisioned
    state = fresh_device(tmp, template, f"dev-{stage}")
    proc = agent_sync(state / "agent.toml", crash_at=stage)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    before = assert_valid_active(state, {"v1", "v2"})
    if Stage.COMMIT.value == stage:
        assert before == "v2"  # the pointer was written before the kill
    restart = agent_sync(state / "agent.toml")
    out = restart.communicate(timeout=120)[0].decode()
    assert restart.returncode == 0, out
    assert assert_valid_active(state, {"v2"}) == "v2"
    assert DeviceState(state).failed() == {}


def test_kill_at_random_moments(provisioned: tuple[Path, Path]) -> None:
    tmp, template = provisioned
    rng = random.Random(1234)
    for trial in range(6):
        state = fresh_device(tmp, template, f"dev-random-{trial}")
        proc = agent_sync(state / "agent.toml")
        time.sleep(rng.uniform(0.2, 2.5))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        assert_valid_active(state, {"v1", "v2"})
        restart = agent_sync(state / "agent.toml")
        out = restart.communicate(timeout=120)[0].decode()
        assert restart.returncode == 0, out
        assert assert_valid_active(state, {"v2"}) == "v2"


@pytest.mark.parametrize("where", ["health-check", Stage.SWAP.value])
def test_a_version_that_keeps_killing_the_agent_before_its_commit_is_refused(provisioned: tuple[Path, Path],
                                                                             where: str) -> None:
    tmp, template = provisioned
    state = fresh_device(tmp, template, f"dev-crashloop-{where}")
    for _ in range(3):  # a model that takes the agent down while checked or once serving, three times
        proc = agent_sync(state / "agent.toml", crash_at=where)
        proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL
        assert assert_valid_active(state, {"v1"}) == "v1"
    last = agent_sync(state / "agent.toml")
    out = last.communicate(timeout=120)[0].decode()
    assert last.returncode == 1, out
    assert "took the agent down 3 times between its health check" in DeviceState(state).failed()["tiny:v2"]
    assert assert_valid_active(state, {"v1"}) == "v1"


def test_a_misconfigured_start_up_blames_no_version(provisioned: tuple[Path, Path]) -> None:
    tmp, template = provisioned
    state = fresh_device(tmp, template, "dev-misconfig")
    cfg = agent_config.load(state / "agent.toml")
    broken = agent_config.with_overrides(cfg, trusted_signers=())  # the operator dropped the signer keys
    agent = wire(broken).agent
    try:
        agent.start_up()
        assert agent.active.get() is None and "trusted" in str(agent.status()["last_error"])
    finally:
        agent.close()
    st = DeviceState(state)
    assert st.failed() == {} and st.pointer().active == "v1"  # fixed config: v1 serves again
    fixed = wire(cfg).agent
    try:
        fixed.start_up()
        model = fixed.active.get()
        assert model is not None and model.version == "v1"
    finally:
        fixed.close()
