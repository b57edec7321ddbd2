"""Device identities in the channel: enrolling both keys, the signed registry, revocation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sync_support import make_device, seal_tiny, signer_pub

from bentoedge.bentos import auth
from bentoedge.bentos.channel_layout import DEVICES_TARGET, hashed_target_key
from bentoedge.bentos.errors import KeyMissingError, UsageError
from bentoedge.bentos.recipients import parse_keys_document, x25519_id
from bentoedge.cli import cli
from bentoedge.cloud.channel import Channel


@pytest.fixture
def chan(tmp_path: Path) -> tuple[Channel, Path]:
    home = tmp_path / "home"
    return Channel.init((tmp_path / "chan").as_uri(), home=home), home


def _registry(ch: Channel, folder: Path) -> dict[str, auth.Device]:
    """The registry as the channel's signed targets metadata pins it."""
    tf = ch.load().targets.signed.targets[DEVICES_TARGET]
    data = (folder / "chan" / hashed_target_key(DEVICES_TARGET, tf.hashes["sha256"])).read_bytes()
    assert hashlib.sha256(data).hexdigest() == tf.hashes["sha256"] and len(data) == tf.length
    assert b"dev-" not in data  # keyed by identity key id, not by device name
    return auth.parse_registry(data)


def _kid(pem: bytes) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key = serialization.load_pem_public_key(pem)
    assert isinstance(key, Ed25519PublicKey)
    return auth.identity_id(auth.identity_raw(key))


def _public_wraps(ch: Channel, folder: Path, tag: str = "tiny/v1") -> list[str]:
    tf = ch.load().targets.signed.targets[f"{tag}/keys.json"]
    data = (folder / "chan" / hashed_target_key(f"{tag}/keys.json", tf.hashes["sha256"])).read_bytes()
    return sorted({str(w["keyid"]) for ws in parse_keys_document(data).values() for w in ws})


def test_enrolling_both_keys_publishes_the_identity_in_the_signed_registry(chan: tuple[Channel, Path],
                                                                            tmp_path: Path) -> None:
    ch, home = chan
    a = make_device(tmp_path / "a", ch.url, ch.root_bytes(), signer_pub(home), device_id="dev-a")
    before = ch.load().targets.signed.version
    ch.enroll("dev-a", a.pub_pem, a.identity_pem)
    assert ch.load().targets.signed.version == before + 1
    assert _registry(ch, tmp_path) == {_kid(a.identity_pem): auth.Device(bytes.fromhex(
        ch.devices()["dev-a"].ed25519_hex or ""))}
    # The device still syncs: the registry target is no model and selection skips it.
    ch.publish(seal_tiny(tmp_path / "s1", home, "v1", 1))
    with a.agent() as agent:
        r = agent.sync_once()
    assert r.result == "updated", r


def test_an_x25519_only_enrollment_still_decrypts_and_is_not_in_the_registry(chan: tuple[Channel, Path],
                                                                               tmp_path: Path) -> None:
    ch, home = chan
    a = make_device(tmp_path / "a", ch.url, ch.root_bytes(), signer_pub(home))
    ch.enroll("dev-1", a.pub_pem)
    assert DEVICES_TARGET not in ch.load().targets.signed.targets
    assert ch.registry() == {}


def test_revoked_devices_get_no_later_wraps_and_are_marked_in_the_registry(chan: tuple[Channel, Path],
                                                                            tmp_path: Path) -> None:
    ch, home = chan
    a = make_device(tmp_path / "a", ch.url, ch.root_bytes(), signer_pub(home), device_id="dev-a")
    b = make_device(tmp_path / "b", ch.url, ch.root_bytes(), signer_pub(home), device_id="dev-b")
    ch.enroll("dev-a", a.pub_pem, a.identity_pem)
    ch.enroll("dev-b", b.pub_pem, b.identity_pem)
    ch.publish(seal_tiny(tmp_path / "s1", home, "v1", 1))
    ka, kb = x25519_id(a.key.public_key()), x25519_id(b.key.public_key())
    assert _public_wraps(ch, tmp_path) == sorted([ka, kb])
    ch.revoke("dev-b")
    reg = _registry(ch, tmp_path)
    assert (reg[_kid(b.identity_pem)].revoked, reg[_kid(a.identity_pem)].revoked) == (True, False)
    ch.publish(seal_tiny(tmp_path / "s2", home, "v2", 2))
    assert _public_wraps(ch, tmp_path, "tiny/v2") == [ka]
    # Republishing the old version drops the revoked wrap too.
    ch.publish(seal_tiny(tmp_path / "s1b", home, "v1", 1), check_release=False)
    assert _public_wraps(ch, tmp_path) == [ka]
    with b.agent() as agent:
        r = agent.sync_once()
    assert r.result == "error" and "not enrolled for tiny:v2" in r.reason, r
    with a.agent() as agent:
        assert agent.sync_once().result == "updated"
    st = ch.status()
    assert (st["devices"], st["revoked"], st["identities"]) == (["dev-a"], ["dev-b"], ["dev-a"])


def test_a_build_time_wrap_for_a_revoked_key_is_not_published(chan: tuple[Channel, Path], tmp_path: Path) -> None:
    ch, home = chan
    a = make_device(tmp_path / "a", ch.url, ch.root_bytes(), signer_pub(home))
    ch.enroll("dev-1", a.pub_pem, a.identity_pem)
    sealed = seal_tiny(tmp_path / "s1", home, "v1", 1)
    ch.publish(sealed)
    # The store's sealed model gets a wrap for the device's key itself (as --recipient x25519:... would).
    from bentoedge.bentos.keystore import LocalKeys
    from bentoedge.bentos.recipients import Keyring, X25519Recipient

    sealed.add_wraps([X25519Recipient(a.key.public_key(), label="dev-1")], Keyring().add_kek(LocalKeys(home).kek()),
                     "edge")
    ch.revoke("dev-1")
    ch.publish(sealed, check_release=False)
    assert _public_wraps(ch, tmp_path) == []


def test_enrollment_mistakes_are_one_line_usage_errors(chan: tuple[Channel, Path], tmp_path: Path) -> None:
    ch, home = chan
    a = make_device(tmp_path / "a", ch.url, ch.root_bytes(), signer_pub(home))
    b = make_device(tmp_path / "b", ch.url, ch.root_bytes(), signer_pub(home))
    ch.enroll("dev-a", a.pub_pem, a.identity_pem)
    with pytest.raises(UsageError, match="already enrolled as device dev-a"):
        ch.enroll("dev-b", b.pub_pem, a.identity_pem)
    with pytest.raises(KeyMissingError, match="identity key file"):
        ch.enroll("dev-b", b.pub_pem, b.pub_pem)  # the X25519 key given as the identity
    with pytest.raises(UsageError, match="no device 'dev-z' is enrolled"):
        ch.revoke("dev-z")
    ch.revoke("dev-a")
    with pytest.raises(UsageError, match="dev-a is revoked"):
        ch.enroll("dev-a", a.pub_pem, a.identity_pem)
    with pytest.raises(UsageError, match="belongs to revoked device dev-a"):
        ch.enroll("dev-c", a.pub_pem)


def test_cli_init_enroll_revoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("BENTOEDGE_HOME", str(home))
    url = (tmp_path / "chan").as_uri()
    run = CliRunner().invoke
    r = run(cli, ["channel", "init", url, "--root-keys-dir", str(tmp_path / "offline")])
    fingerprint = next(line.split()[-1] for line in r.output.splitlines() if line.startswith("root fingerprint:"))
    seal_tiny(tmp_path / "s1", home, "v1", 1)
    dev = tmp_path / "dev"
    r = run(cli, ["agent", "init", "--channel", url, "--cloud", "http://127.0.0.1:9", "--state", str(dev),
                  "--device-id", "d1", "--root-sha256", fingerprint])
    assert r.exit_code == 0, r.output
    assert f"--identity {dev / 'identity.pub'}" in r.output
    for name in ("device.key", "identity.key", "api.token"):
        assert oct((dev / name).stat().st_mode & 0o777) == "0o600"
    assert b"BEGIN PRIVATE KEY" in (dev / "identity.key").read_bytes()
    r = run(cli, ["channel", "enroll", "d1", str(dev / "device.pub"), "--identity", str(dev / "identity.pub"),
                  "--channel", url])
    assert r.exit_code == 0 and "device registry" in r.output, r.output
    r = run(cli, ["channel", "enroll", "d2", str(dev / "identity.pub"), "--channel", url])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "not an X25519 key" in r.output, r.output
    r = run(cli, ["channel", "revoke", "nobody", "--channel", url])
    assert r.exit_code == 2 and "no device 'nobody'" in r.output, r.output
    r = run(cli, ["channel", "revoke", "d1", "--channel", url])
    assert r.exit_code == 0 and "revoked d1" in r.output, r.output
    st = json.loads(run(cli, ["channel", "status", url, "--json"]).output)
    assert (st["devices"], st["revoked"]) == ([], ["d1"])
    # A second init keeps both keys (the device stays the enrolled one).
    key_before = (dev / "identity.key").read_bytes()
    token_before = (dev / "api.token").read_bytes()
    r = run(cli, ["agent", "init", "--channel", url, "--cloud", "http://127.0.0.1:9", "--state", str(dev),
                  "--device-id", "d1", "--root-sha256", fingerprint, "--force"])
    assert r.exit_code == 0 and (dev / "identity.key").read_bytes() == key_before, r.output
    assert (dev / "api.token").read_bytes() == token_before
