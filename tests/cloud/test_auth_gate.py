"""The cloud's authentication shell (cloud.auth.Gate), API key files and their CLI, serve --no-auth."""

from __future__ import annotations

import json
import logging
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from service_support import free_port

from bentoedge.bentos import auth
from bentoedge.bentos.apikeys import ApiKeyStore
from bentoedge.bentos.errors import ConfigError, UsageError
from bentoedge.cli import cli
from bentoedge.cloud.auth import Gate, gate_from_env
from bentoedge.cloud.service_core import CloudSettings

KEY = Ed25519PrivateKey.generate()
RAW = auth.identity_raw(KEY.public_key())
KID = auth.identity_id(RAW)
DOC = auth.registry_document({KID: auth.Device(RAW)})


class Clock:
    now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _gate(tmp_path: Path, fetch: Any, clock: Clock | None = None, **env: str) -> Gate:
    settings = CloudSettings.from_env({"BENTOEDGE_REGISTRY_REFRESH_S": "10", **env})
    return Gate(settings, tmp_path, clock=clock or Clock(), fetch=fetch)


def _signed(clock: Clock) -> dict[str, str]:
    return {k.lower(): v for k, v in auth.sign_request(KEY, "POST", "/predict", b"{}", clock.now).items()}


def test_the_registry_is_refreshed_and_a_failed_refresh_keeps_the_last_good_copy(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    answers: list[Any] = [DOC, OSError("unreachable"), b"garbage", None]
    clock = Clock()

    def fetch() -> bytes | None:
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    gate = _gate(tmp_path, fetch, clock)
    assert gate.check("POST", "/predict", _signed(clock), b"{}").status == 403  # nothing fetched yet
    gate.refresh_if_due()
    assert gate.check("POST", "/predict", _signed(clock), b"{}").ok
    with caplog.at_level(logging.WARNING, logger="bentoml.bentoedge"):
        for _ in range(2):  # the network fails, then the file is damaged: the last good copy stays
            clock.now += 10
            gate.refresh_if_due()
            assert gate.check("POST", "/predict", _signed(clock), b"{}").ok
    assert sum("keeping the last good copy (1 keys)" in r.getMessage() for r in caplog.records) == 2
    clock.now += 5
    gate.refresh_if_due()  # not due yet
    assert answers == [None]
    clock.now += 5
    gate.refresh_if_due()  # the channel now has no registry at all: nobody is enrolled
    assert gate.check("POST", "/predict", _signed(clock), b"{}").status == 403


def test_open_paths_and_auth_off(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gate = _gate(tmp_path, lambda: DOC)
    assert gate.check("GET", "/readyz", {}, b"").ok and gate.check("GET", "/metrics", {}, b"").ok
    assert gate.check("POST", "/infer", {}, b"").status == 401
    off = _gate(tmp_path, None, BENTOEDGE_AUTH="off")
    with caplog.at_level(logging.WARNING, logger="bentoml.bentoedge"):
        off.announce()
    assert off.check("POST", "/predict", {}, b"").ok
    assert "AUTHENTICATION IS OFF" in caplog.text


@pytest.mark.parametrize("env,why", [
    ({"BENTOEDGE_AUTH": "maybe"}, "use on, off or iam"),
    ({"BENTOEDGE_CHANNEL": "file:///nowhere"}, "needs BENTOEDGE_CHANNEL_ROOT"),
    ({"BENTOEDGE_CHANNEL": "file:///nowhere", "BENTOEDGE_CHANNEL_ROOT": "/no/such/root.json"}, "CHANNEL_ROOT"),
])
def test_auth_settings_mistakes_are_one_line(env: dict[str, str], why: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=why):
        gate_from_env(CloudSettings.from_env(env), {"BENTOEDGE_HOME": str(tmp_path)})


def test_a_file_registry_is_read(tmp_path: Path) -> None:
    (tmp_path / "devices.json").write_bytes(DOC)
    gate = gate_from_env(CloudSettings.from_env({"BENTOEDGE_DEVICE_REGISTRY": (tmp_path / "devices.json").as_uri()}),
                         {"BENTOEDGE_HOME": str(tmp_path)})
    gate.refresh()
    clock = Clock()
    clock.now = time.time()
    assert gate.check("POST", "/predict", _signed(clock), b"{}").ok


def test_the_api_key_store(tmp_path: Path) -> None:
    store = ApiKeyStore(tmp_path / "keys" / "api_keys.json")
    key, rec = store.create("app")
    assert key.startswith("bek_") and key not in store.path.read_text()
    assert oct(store.path.stat().st_mode & 0o777) == "0o600"
    assert store.hashes()[auth.api_key_hash(key)] == auth.ApiKey(rec["id"], "app")
    with pytest.raises(UsageError, match="exists"):
        store.create("app")
    with pytest.raises(UsageError, match="use letters"):
        store.create("bad name")
    store.revoke(rec["id"])
    assert store.hashes()[auth.api_key_hash(key)].revoked
    with pytest.raises(UsageError, match="no live API key"):
        store.revoke("app")
    store.create("app")  # the name is free again once revoked
    store.path.write_text("{not json")
    assert store.hashes() == {}  # a damaged file lets no key in


def test_the_keys_api_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENTOEDGE_HOME", str(tmp_path))
    monkeypatch.delenv("BENTOEDGE_API_KEYS_FILE", raising=False)
    run = CliRunner().invoke
    r = run(cli, ["keys", "api", "create", "dashboard"])
    assert r.exit_code == 0 and r.stdout.strip().startswith("bek_"), r.output
    key = r.stdout.strip()
    assert (tmp_path / "keys" / "api_keys.json").exists()
    listed = json.loads(run(cli, ["keys", "api", "list", "--json"]).stdout)
    assert [(k["name"], k["revoked"]) for k in listed] == [("dashboard", False)] and key not in json.dumps(listed)
    r = run(cli, ["keys", "api", "revoke", "dashboard"])
    assert r.exit_code == 0 and "revoked API key" in r.output
    r = run(cli, ["keys", "api", "revoke", "dashboard"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "no live API key" in r.output
    assert "REVOKED" in run(cli, ["keys", "api", "list"]).output


def test_serve_no_auth_turns_auth_off_for_the_server_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  tiny_sealed: Any) -> None:
    seen: dict[str, Any] = {}

    class FakePopen:
        def __init__(self, cmd: list[str], env: dict[str, str], **_: Any) -> None:
            seen["env"] = env
            self.stdout: list[bytes] = []
            self.pid = 0

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    r = CliRunner().invoke(cli, ["serve", tiny_sealed.tag, "--port", str(free_port()), "--no-auth"])
    assert seen["env"]["BENTOEDGE_AUTH"] == "off" and "authentication is off" in r.output, r.output
    r = CliRunner().invoke(cli, ["serve", tiny_sealed.tag, "--port", str(free_port())])
    assert seen["env"].get("BENTOEDGE_AUTH") != "off"


def test_a_channel_anchored_by_fingerprint_lets_its_devices_in_and_a_wrong_one_lets_nobody(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """BENTOEDGE_CHANNEL_ROOT_SHA256 (what a Lambda environment can hold): the gate takes the
    channel's 1.root.json only when its SHA-256 matches, then reads the signed registry."""
    import hashlib

    from keys_support import identity_pem, x25519_pem

    from bentoedge.cloud.channel import Channel

    ch = Channel.init((tmp_path / "chan").as_uri(), home=tmp_path / "publisher")
    ch.enroll("dev-a", x25519_pem(), identity_pem(KEY))
    good = hashlib.sha256(ch.root_bytes(1)).hexdigest()
    for sha, known in ((good.upper(), True), ("00" * 32, False)):
        settings = CloudSettings.from_env({"BENTOEDGE_CHANNEL": ch.url, "BENTOEDGE_CHANNEL_ROOT_SHA256": sha})
        gate = Gate(settings, tmp_path / f"home-{known}")
        with caplog.at_level(logging.WARNING, logger="bentoml.bentoedge"):
            assert gate.refresh() is known
        assert (gate.device(KID) is not None) is known
        clock = Clock()
        clock.now = time.time()
        verdict = gate.check("POST", "/predict", _signed(clock), b"{}")
        assert verdict.ok is known, verdict
    assert "not the --root-sha256 given" in caplog.text
