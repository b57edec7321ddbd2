"""Attacks on the update channel, after python-tuf's RepositorySimulator tests.

Each test runs a real folder channel with real sealed models (a 1 KB TFLite model and
its golden samples), lets a device take v1 (or v2), then plays the attacker by editing
or re-signing the channel's files, and checks two things: the attack is refused, and
the old version is still active and answering.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner
from sync_support import Device, make_device, seal_tiny, signer_pub
from tuf.api.metadata import Metadata

from bentoedge.bentos.errors import UsageError
from bentoedge.bentos.sealed import SealedModel
from bentoedge.cloud.channel import Channel, repo
from bentoedge.cloud.channel.channel import hashed_name
from bentoedge.edge.sync import SyncAgent
from bentoedge.edge.sync.machine import FULL_REFRESH_S

X = {"x": np.ones((1, 4), np.float32)}


@dataclass
class World:
    tmp: Path
    home: Path
    ch: Channel
    dev: Device
    agent: SyncAgent

    @property
    def meta(self) -> Path:
        return self.tmp / "chan" / "metadata"

    def publish(self, version: str, release: int, **kw: object) -> None:
        seal_kw = {k: kw.pop(k) for k in ("broken_golden", "signer") if k in kw}
        sealed = seal_tiny(self.tmp / f"sealed-{version}-{os.urandom(3).hex()}", self.home, version, release,
                           **seal_kw)  # type: ignore[arg-type]
        self.ch.publish(sealed, **kw)  # type: ignore[arg-type]

    def serving(self) -> str | None:
        m = self.dev.active.get()
        if m is None:
            return None
        assert m.predict(X)["y"].shape == (1, 3)  # it still answers
        return m.version

    def target_file(self, version: str, rel: str) -> Path:
        md = self.ch.load()
        path = f"tiny/{version}/{rel}"
        sha = md.targets.signed.targets[path].hashes["sha256"]
        return self.tmp / "chan" / "targets" / hashed_name(path, sha)

    def resign(self, role: str, md: Metadata, signer: CryptoSigner | None = None, name: str | None = None) -> None:
        md.signatures.clear()
        md.sign(signer or self.ch._signer(role))
        file = name or (f"{md.signed.version}.{role}.json" if role != "timestamp" else "timestamp.json")
        (self.meta / file).write_bytes(md.to_bytes())


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    home = tmp_path / "home"
    ch = Channel.init((tmp_path / "chan").as_uri(), home=home)
    dev = make_device(tmp_path / "dev", ch.url, ch.root_bytes(), signer_pub(home))
    ch.enroll("dev-1", dev.pub_pem)
    agent = SyncAgent(dev.config, dev.active)
    w = World(tmp_path, home, ch, dev, agent)
    w.publish("v1", 1)
    assert agent.sync_once().result == "updated"
    assert w.serving() == "v1"
    yield w
    agent.close()


def refused(w: World, still: str = "v1") -> str:
    r = w.agent.sync_once()
    assert r.result == "refused", r
    assert w.serving() == still
    assert w.agent.status()["last_error"]
    assert w.agent.state.pointer().active == still
    return r.reason


def test_normal_update_then_up_to_date(world: World) -> None:
    world.publish("v2", 2)
    assert world.agent.sync_once().result == "updated"
    assert world.serving() == "v2"
    r = world.agent.sync_once()
    assert r.result == "up_to_date" and r.requests == 1 and r.bytes < 2048  # one small GET: timestamp.json


def test_tampered_target_ciphertext(world: World) -> None:
    world.publish("v2", 2)
    f = world.target_file("v2", "artifacts/edge-fp32.tflite.enc")
    good = f.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 1
    f.write_bytes(bytes(data))
    for _ in range(3):
        r = world.agent.sync_once()
        assert r.result == "error" and "LengthOrHashMismatch" in r.reason and "not installed" in r.reason, r
        assert world.serving() == "v1" and world.agent.state.pointer().active == "v1"
    # The bytes are a mirror's doing, not the signed version's: an attacker on the path must
    # not be able to block an update for good.  Once the mirror serves the real bytes, v2 comes.
    assert "tiny:v2" not in world.agent.status()["failed"]
    f.write_bytes(good)
    assert world.agent.sync_once().result == "updated" and world.serving() == "v2"


def test_arbitrary_target_not_in_metadata_is_never_fetched(world: World) -> None:
    world.publish("v2", 2)
    md = world.ch.load()
    fake = "tiny/v2/artifacts/evil.bin"
    manifest = md.targets.signed.targets["tiny/v2/manifest.json"]
    manifest.unrecognized_fields["custom"]["bentoedge"]["files"].append(fake)
    # Without the targets key the attacker can only edit the file: the signature breaks.
    (world.meta / f"{md.targets.signed.version}.targets.json").write_bytes(md.targets.to_bytes())
    assert refused(world)
    assert "tiny:v2" not in world.agent.status()["failed"]  # metadata attack, not the version's fault


def test_timestamp_rollback(world: World) -> None:
    old = (world.meta / "timestamp.json").read_bytes()
    world.publish("v2", 2)
    assert world.agent.sync_once().result == "updated"
    (world.meta / "timestamp.json").write_bytes(old)
    assert "BadVersionNumber" in refused(world, still="v2")


def test_snapshot_rollback_with_stolen_timestamp_key(world: World) -> None:
    md1 = world.ch.load()
    world.publish("v2", 2)
    assert world.agent.sync_once().result == "updated"
    ts = world.ch.load().timestamp
    ts.signed.version += 1
    ts.signed.snapshot_meta.version = md1.snapshot.signed.version
    world.resign("timestamp", ts)
    assert "snapshot" in refused(world, still="v2").lower()


def test_targets_rollback_with_stolen_online_keys(world: World) -> None:
    md1 = world.ch.load()
    world.publish("v2", 2)
    assert world.agent.sync_once().result == "updated"
    md = world.ch.load()
    snap = md.snapshot
    snap.signed.version += 1
    snap.signed.meta["targets.json"].version = md1.targets.signed.version
    world.resign("snapshot", snap)
    ts = md.timestamp
    ts.signed.version += 1
    ts.signed.snapshot_meta.version = snap.signed.version
    world.resign("timestamp", ts)
    assert refused(world, still="v2")


def test_release_counter_rollback_is_not_taken(world: World) -> None:
    world.publish("v2", 2)
    assert world.agent.sync_once().result == "updated"
    world.publish("v0", 1, check_release=False)  # signed, newer channel state, older release
    assert world.agent.sync_once().result == "up_to_date"
    assert world.serving() == "v2"


def test_release_mismatch_between_channel_and_manifest(world: World) -> None:
    sealed = seal_tiny(world.tmp / "s-mix", world.home, "v2", 2)
    world.ch.publish(sealed)
    md = world.ch.load()
    md.targets.signed.targets["tiny/v2/manifest.json"].unrecognized_fields["custom"]["bentoedge"]["release"] = 9
    world.ch._commit_targets(md)  # a compromised targets key claims release 9
    assert "refusing the mix" in refused(world)


def test_freeze_with_expired_timestamp(world: World) -> None:
    world.publish("v2", 2)
    ts = world.ch.load().timestamp
    ts.signed.version += 1
    ts.signed.expires = repo.utcnow() - timedelta(hours=1)
    world.resign("timestamp", ts)
    assert "expired" in refused(world).lower()


def test_mix_and_match_targets(world: World) -> None:
    md1_targets = (world.meta / f"{world.ch.load().targets.signed.version}.targets.json").read_bytes()
    world.publish("v2", 2)
    v = world.ch.load().targets.signed.version
    (world.meta / f"{v}.targets.json").write_bytes(md1_targets)  # an older, validly signed targets
    assert refused(world)


def test_endless_metadata(world: World) -> None:
    world.publish("v2", 2)
    ts = world.meta / "timestamp.json"
    ts.write_bytes(ts.read_bytes() + b" " * 40_000)
    assert refused(world)


def test_endless_target(world: World) -> None:
    world.publish("v2", 2)
    f = world.target_file("v2", "artifacts/edge-fp32.tflite.enc")
    good = f.read_bytes()
    f.write_bytes(good + os.urandom(1 << 20))
    for _ in range(3):  # the download stops at the signed length each time
        r = world.agent.sync_once()
        assert r.result == "error" and "longer than" in r.reason and r.bytes < 1 << 20
        assert world.serving() == "v1"
    assert "tiny:v2" not in world.agent.status()["failed"]
    f.write_bytes(good)
    assert world.agent.sync_once().result == "updated" and world.serving() == "v2"


def test_timestamp_signed_by_wrong_key(world: World) -> None:
    world.publish("v2", 2)
    ts = world.ch.load().timestamp
    ts.signed.version += 1
    world.resign("timestamp", ts, signer=CryptoSigner(Ed25519PrivateKey.generate()))
    assert refused(world)


def _root_signers(w: World) -> list[CryptoSigner]:
    root = w.ch.load().root.signed
    return w.ch._root_signers(root, None)  # type: ignore[return-value]


def test_root_below_threshold_is_refused(world: World) -> None:
    md = world.ch.load()
    root = md.root
    root.signed.version += 1
    repo.replace_role_key(root.signed, "timestamp", CryptoSigner(Ed25519PrivateKey.generate()).public_key)
    root.signatures.clear()
    root.sign(_root_signers(world)[0])  # 1 of the 2 needed
    (world.meta / f"{root.signed.version}.root.json").write_bytes(root.to_bytes())
    world.publish("v2", 2)
    assert "root" in refused(world).lower()


def test_root_rotation_done_right_is_followed(world: World) -> None:
    world.ch.rotate("root")
    world.ch.rotate("timestamp")
    world.publish("v2", 2)
    assert world.agent.sync_once().result == "updated"
    assert world.serving() == "v2"
    updater = world.agent._updater()
    updater.refresh()
    assert updater._trusted_set.root.version == 3


def test_root_rotation_signed_only_by_new_keys_is_refused(world: World) -> None:
    md = world.ch.load()
    root = md.root
    root.signed.version += 1
    new = [CryptoSigner(Ed25519PrivateKey.generate()) for _ in range(3)]
    repo.rotate_root(root.signed, [s.public_key for s in new], 2)
    root.signatures.clear()
    for s in new[:2]:
        root.sign(s, append=True)
    (world.meta / f"{root.signed.version}.root.json").write_bytes(root.to_bytes())
    world.publish("v2", 2)
    assert refused(world)


def test_version_for_another_device_class(world: World) -> None:
    world.publish("v2", 2, device_classes=("jetson",))
    r = world.agent.sync_once()
    assert r.result == "up_to_date" and "tiny:v1" in r.reason
    assert world.serving() == "v1"
    assert not (world.agent.state.versions / "v2").exists()


def test_manifest_signed_by_untrusted_model_key(world: World) -> None:
    world.publish("v2", 2, signer=Ed25519PrivateKey.generate())
    assert "not trusted" in refused(world)
    assert "tiny:v2" in world.agent.status()["failed"]


def test_failed_health_check_keeps_old_version(world: World) -> None:
    world.publish("v2", 2, broken_golden=True)
    assert "health" in refused(world)
    assert not (world.agent.state.versions / "v2").exists()


def test_restart_rolls_back_when_active_version_fails_its_check(world: World) -> None:
    world.publish("v2", 2)
    assert world.agent.sync_once().result == "updated"
    world.agent.close()
    enc = world.agent.state.versions / "v2" / "artifacts" / "edge-fp32.tflite.enc"
    data = bytearray(enc.read_bytes())
    data[-5] ^= 1
    enc.write_bytes(bytes(data))
    from bentoedge.edge.active import ActiveModel

    active = ActiveModel()
    with SyncAgent(world.dev.config, active) as again:
        again.start_up()
        assert active.get() is not None and active.get().version == "v1"  # type: ignore[union-attr]
        assert again.state.pointer().active == "v1"
        assert "tiny:v2" in again.state.failed()
    world.agent.state.lock()  # give the fixture's agent its lock back for teardown


def test_one_agent_per_state_folder(world: World) -> None:
    from bentoedge.edge.active import ActiveModel

    with pytest.raises(UsageError, match="another agent"):
        SyncAgent(world.dev.config, ActiveModel())


# ---- the one-GET poll must not skip what a full TUF refresh would catch ----------------------

def test_frozen_timestamp_cannot_hide_a_key_rotation_past_the_full_refresh(world: World) -> None:
    frozen = (world.meta / "timestamp.json").read_bytes()  # what a stolen timestamp key signed
    world.ch.rotate("timestamp")  # the publisher revokes that key: a new root, a new timestamp
    (world.meta / "timestamp.json").write_bytes(frozen)  # a mirror keeps serving the old one
    now = time.time()
    world.agent.clock = lambda: now + 60
    assert world.agent.sync_once().result == "up_to_date"  # within the bound, as documented
    world.agent.clock = lambda: now + FULL_REFRESH_S + 1
    refused(world)  # the full refresh finds the new root, which no longer trusts that key


def test_one_get_poll_notices_expired_targets(world: World) -> None:
    md = world.ch.load()
    soon = repo.utcnow() + timedelta(seconds=2)
    md.targets.signed.version += 1
    md.targets.signed.expires = soon
    world.resign("targets", md.targets)
    md.snapshot.signed.version += 1
    md.snapshot.signed.meta["targets.json"].version = md.targets.signed.version
    world.resign("snapshot", md.snapshot)
    md.timestamp.signed.version += 1
    md.timestamp.signed.snapshot_meta.version = md.snapshot.signed.version
    world.resign("timestamp", md.timestamp)
    assert world.agent.sync_once().result == "up_to_date"  # a full refresh verified the new set
    time.sleep(max(0.0, (soon - repo.utcnow()).total_seconds()) + 0.5)
    # The timestamp itself is unchanged and unexpired; the targets it leads to are not.
    assert "expired" in refused(world).lower()


def test_one_get_poll_never_trusts_a_forged_cache(world: World) -> None:
    forged = world.ch.load().timestamp
    forged.signed.version += 1
    forged.signed.expires = repo.utcnow() + timedelta(days=3650)
    forged.signatures.clear()
    forged.sign(CryptoSigner(Ed25519PrivateKey.generate()))
    for where in (world.meta / "timestamp.json", world.agent.state.tuf / "timestamp.json"):
        where.write_bytes(forged.to_bytes())
    assert refused(world)
    world.agent.close()  # a restarted agent has verified nothing yet: it never takes the shortcut
    again = SyncAgent(world.dev.config, world.dev.active)
    try:
        r = again.sync_once()
        assert r.result == "refused" and world.serving() == "v1"
    finally:
        again.close()


# ---- strikes: only a death during the health check counts ------------------------------------

def test_a_device_enrolled_late_keeps_trying_and_takes_the_version_once_enrolled(world: World) -> None:
    late = make_device(world.tmp / "dev2", world.ch.url, world.ch.root_bytes(), signer_pub(world.home),
                       device_id="dev-2")
    agent = SyncAgent(late.config, late.active)
    try:
        results = [agent.sync_once() for _ in range(5)]  # no key wrapped for this device yet
        assert all(r.result == "error" and "health" in r.reason for r in results), results
        files = 5  # manifest.json, manifest.sig, keys.json, the model, the golden samples
        assert results[1].requests <= results[0].requests - files  # installed files kept, not fetched again
        assert "tiny:v1" not in agent.status()["failed"] and not agent.state._strikes()
        world.ch.enroll("dev-2", late.pub_pem)
        (v1,) = world.tmp.glob("sealed-v1-*")
        world.ch.publish(SealedModel.open(v1))  # the same v1, now also wrapped for dev-2
        r = agent.sync_once()
        assert r.result == "updated", r
        assert r.requests <= results[0].requests - files + 1 + 2  # keys.json is new (and snapshot, targets)
        assert late.active.get().version == "v1"  # type: ignore[union-attr]
    finally:
        agent.close()


@pytest.mark.parametrize("damage", [b'{"tiny:v2|health": 1e309}', b'{"tiny:v2|health": Infinity}',
                                    b"[1, 2]", b"\xff\xfe", b'{"tiny:v2|health": "3"}', None])
def test_a_damaged_strikes_file_never_stops_updates(world: World, damage: bytes | None) -> None:
    strikes = world.agent.state.strikes_file
    if damage is None:
        strikes.unlink(missing_ok=True)
        strikes.mkdir()  # not even a file
    else:
        strikes.write_bytes(damage)
    world.publish("v2", 2)
    r = world.agent.sync_once()
    if damage is None:  # the count cannot be written either: the health stage fails, v1 serves
        assert r.result == "error" and world.serving() == "v1"
        strikes.rmdir()
        r = world.agent.sync_once()
    assert r.result == "updated", r
    assert world.serving() == "v2"
