"""The publisher's side of an update channel: create it, enroll devices, publish, maintain.

This is the imperative shell around ``cloud.channel.repo``: it reads the current TUF
metadata from a ``Storage`` (folder or S3), asks the pure core for the next state, signs
it with the channel's keys, and writes files in the order that keeps the public channel
consistent at every instant (target files, then ``N.targets.json``, ``N.snapshot.json``,
and ``timestamp.json`` last).

Keys and private state never go into the public channel.  They live in
``$BENTOEDGE_HOME/channels/<hash of url>/``:

    keys/targets.pem, keys/snapshot.pem, keys/timestamp.pem   online keys (0600)
    devices.json                                               device id -> X25519 key, Ed25519 identity, revoked
    channel.json                                               url, where the root keys went

Root keys are generated into a separate ``offline-root/`` folder (or ``root_keys_dir``)
that the user is told to move to offline storage; only ``rotate`` needs them back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, Key, Signer, SSlibKey
from tuf.api.metadata import Metadata, Root, Snapshot, TargetFile, Targets, Timestamp

from bentoedge.bentos import auth
from bentoedge.bentos import channel_layout as layout
from bentoedge.bentos.api_compat import api_major, breaking_changes, describe
from bentoedge.bentos.errors import ChannelError, ConfigError, KeyMissingError, UsageError
from bentoedge.bentos.keystore import LocalKeys, default_home, load_ed25519_public, write_private
from bentoedge.bentos.manifest import Manifest, canonical_json
from bentoedge.bentos.recipients import (
    Keyring,
    X25519Recipient,
    keys_document,
    load_x25519_public,
    x25519_id,
)
from bentoedge.bentos.sealed import SealedModel
from bentoedge.cloud.channel import repo
from bentoedge.cloud.channel.storage import Storage, open_storage

#: Kept under its old name here: tests and tools find a target's channel object with it.
hashed_name = layout.hashed_name

#: Called once per uploaded file with (target path, size); returns a per-chunk byte callback.
UploadProgress = Callable[[str, int], Callable[[int], None]]


def _new_key() -> tuple[Ed25519PrivateKey, CryptoSigner]:
    priv = Ed25519PrivateKey.generate()
    return priv, CryptoSigner(priv, SSlibKey.from_crypto(priv.public_key()))


def _pem(priv: Ed25519PrivateKey) -> bytes:
    return priv.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())


def _load_signer(path: Path) -> CryptoSigner:
    try:
        priv = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise KeyMissingError(f"channel key {path} is missing; the channel's private state is incomplete") from None
    if not isinstance(priv, Ed25519PrivateKey):
        raise KeyMissingError(f"{path} is not an Ed25519 private key")
    return CryptoSigner(priv, SSlibKey.from_crypto(priv.public_key()))


log = logging.getLogger("bentoedge.channel")


def state_dir_for(url: str, home: Path) -> Path:
    return home / "channels" / hashlib.sha256(url.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Enrolled:
    """One device in the publisher's private ``devices.json``."""

    x25519_pem: str
    ed25519_hex: str | None = None
    revoked: bool = False


@dataclass
class Loaded:
    root: Metadata[Root]
    targets: Metadata[Targets]
    snapshot: Metadata[Snapshot]
    timestamp: Metadata[Timestamp]


class Channel:
    """One update channel, opened with its private publisher state."""

    def __init__(self, storage: Storage, home: Path) -> None:
        self.storage = storage
        self.home = home
        self.url = storage.url
        self.state_dir = state_dir_for(self.url, home)

    # ---- opening and creating ------------------------------------------------------------

    @classmethod
    def open(cls, url: str, home: Path | None = None, storage: Storage | None = None) -> Channel:
        ch = cls(storage or open_storage(url), home or default_home())
        if not (ch.state_dir / "channel.json").exists():
            raise ConfigError(f"no publisher state for channel {ch.url} under {ch.state_dir}; "
                              "run 'bentoedge channel init' on this machine first")
        return ch

    @classmethod
    def init(cls, url: str, home: Path | None = None, root_keys: int = 3, threshold: int = 2,
             root_keys_dir: Path | None = None, storage: Storage | None = None) -> Channel:
        ch = cls(storage or open_storage(url), home or default_home())
        if ch.storage.get(layout.TIMESTAMP_KEY) is not None or (ch.state_dir / "channel.json").exists():
            raise UsageError(f"channel {ch.url} already exists; use 'bentoedge channel status' to inspect it")
        if not 1 <= threshold <= root_keys:
            raise UsageError(f"--threshold {threshold} must be between 1 and --root-keys {root_keys}")
        offline = root_keys_dir or ch.state_dir / "offline-root"
        root_signers = []
        for _ in range(root_keys):
            priv, signer = _new_key()
            write_private(offline / f"{signer.public_key.keyid}.pem", _pem(priv))
            root_signers.append(signer)
        online: dict[str, Key] = {}
        for role in repo.ONLINE:
            priv, signer = _new_key()
            write_private(ch.state_dir / "keys" / f"{role}.pem", _pem(priv))
            online[role] = signer.public_key
        now = repo.utcnow()
        mds = repo.new_repository([s.public_key for s in root_signers], threshold, online, now)
        repo.sign(mds["root"], root_signers)
        repo.link(mds["snapshot"].signed, mds["targets"].signed.version)
        repo.link_timestamp(mds["timestamp"].signed, mds["snapshot"].signed.version)
        ch.storage.put(layout.metadata_key("root", 1), mds["root"].to_bytes())
        ch._write_online(Loaded(mds["root"], mds["targets"], mds["snapshot"], mds["timestamp"]),
                         ("targets", "snapshot", "timestamp"))
        write_private(ch.state_dir / "channel.json",
                      canonical_json({"url": ch.url, "root_keys_dir": str(offline.resolve())}), mode=0o644)
        ch.root_keys_dir = offline
        return ch

    root_keys_dir: Path | None = None

    # ---- reading ---------------------------------------------------------------------------

    def _get_md(self, key: str) -> Metadata[Any]:
        data = self.storage.get(key)
        if data is None:
            raise ChannelError(f"channel {self.url} lacks {key}; it is not a bentoedge channel or is damaged")
        return Metadata.from_bytes(data)

    def root_version(self) -> int:
        versions = [v for k in self.storage.list(layout.METADATA_DIR) if (v := layout.root_version_of(k)) is not None]
        if not versions:
            raise ChannelError(f"channel {self.url} has no root metadata; run 'bentoedge channel init'")
        return max(versions)

    def root_bytes(self, version: int | None = None) -> bytes:
        v = version or self.root_version()
        key = layout.metadata_key("root", v)
        data = self.storage.get(key)
        if data is None:
            raise ChannelError(f"channel {self.url} lacks {key}")
        return data

    def load(self) -> Loaded:
        root = Metadata[Root].from_bytes(self.root_bytes())
        ts = self._get_md(layout.TIMESTAMP_KEY)
        snap = self._get_md(layout.metadata_key("snapshot", ts.signed.snapshot_meta.version))
        targets = self._get_md(layout.metadata_key("targets", snap.signed.meta["targets.json"].version))
        return Loaded(root, targets, snap, ts)

    def _signer(self, role: str) -> CryptoSigner:
        return _load_signer(self.state_dir / "keys" / f"{role}.pem")

    # ---- writing ---------------------------------------------------------------------------

    def _write_online(self, md: Loaded, changed: Sequence[str]) -> None:
        """Sign and write the roles in ``changed`` in TUF order (timestamp last)."""
        if "targets" in changed:
            repo.sign(md.targets, [self._signer("targets")])
            self.storage.put(layout.metadata_key("targets", md.targets.signed.version), md.targets.to_bytes())
        if "snapshot" in changed:
            repo.link(md.snapshot.signed, md.targets.signed.version)
            repo.sign(md.snapshot, [self._signer("snapshot")])
            self.storage.put(layout.metadata_key("snapshot", md.snapshot.signed.version), md.snapshot.to_bytes())
        repo.link_timestamp(md.timestamp.signed, md.snapshot.signed.version)
        repo.sign(md.timestamp, [self._signer("timestamp")])
        self.storage.put(layout.TIMESTAMP_KEY, md.timestamp.to_bytes())

    def _commit_targets(self, md: Loaded) -> None:
        now = repo.utcnow()
        for role, m in (("targets", md.targets), ("snapshot", md.snapshot), ("timestamp", md.timestamp)):
            repo.bump(m, role, now)
        self._write_online(md, ("targets", "snapshot", "timestamp"))

    # ---- devices ---------------------------------------------------------------------------

    def devices(self) -> dict[str, Enrolled]:
        """The publisher's private record: device id -> its keys and whether it is revoked."""
        path = self.state_dir / "devices.json"
        if not path.exists():
            return {}
        out: dict[str, Enrolled] = {}
        for dev, entry in json.loads(path.read_text()).items():
            if isinstance(entry, str):  # written before device identities: an X25519 key alone
                out[dev] = Enrolled(entry)
            else:
                out[dev] = Enrolled(entry["x25519"], entry.get("ed25519"), bool(entry.get("revoked", False)))
        return out

    def _save_devices(self, devices: dict[str, Enrolled]) -> None:
        write_private(self.state_dir / "devices.json", canonical_json(
            {dev: {"x25519": e.x25519_pem, "ed25519": e.ed25519_hex, "revoked": e.revoked}
             for dev, e in devices.items()}))

    def enroll(self, device_id: str, pub_pem: bytes, identity_pem: bytes | None = None) -> str:
        """Record a device's X25519 key (the next publish wraps for it) and its Ed25519
        identity key (published at once in the channel's device registry, so the cloud lets
        its signed calls in).  Without an identity key (a fleet group's shared X25519 key,
        or a device provisioned before identities) it can decrypt but not call the cloud."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", device_id):
            raise UsageError(f"device id {device_id!r}: use letters, digits, '.', '_' or '-'")
        key = load_x25519_public(pub_pem)
        identity = None if identity_pem is None else load_ed25519_public(
            identity_pem, "the identity key file (identity.pub from 'bentoedge agent init')")
        devices = self.devices()
        old = devices.get(device_id)
        if old is not None and old.revoked:
            raise UsageError(f"device {device_id} is revoked; provision the device again and enroll it "
                             "under a new device id")
        for dev, e in devices.items():
            if dev == device_id:
                continue
            if identity is not None and e.ed25519_hex == identity.hex():
                raise UsageError(f"that identity key is already enrolled as device {dev}")
            if e.revoked and x25519_id(load_x25519_public(e.x25519_pem.encode())) == x25519_id(key):
                raise UsageError(f"that X25519 key belongs to revoked device {dev}; provision the device again")
        devices[device_id] = Enrolled(pub_pem.decode(), identity.hex() if identity is not None else None)
        self._save_devices(devices)
        if identity is not None or (old is not None and old.ed25519_hex):
            self._publish_registry(devices)
        return x25519_id(key)

    def revoke(self, device_id: str) -> int:
        """Un-enroll a device: no later publish wraps a key for it, and the channel's device
        registry marks its identity revoked (the cloud refuses it at its next refresh).
        Returns the targets version that carries the revocation."""
        devices = self.devices()
        if device_id not in devices:
            known = ", ".join(sorted(devices)) or "none"
            raise UsageError(f"no device {device_id!r} is enrolled on {self.url} (enrolled: {known})")
        e = devices[device_id]
        devices[device_id] = Enrolled(e.x25519_pem, e.ed25519_hex, revoked=True)
        self._save_devices(devices)
        return self._publish_registry(devices)

    def registry(self, devices: dict[str, Enrolled] | None = None) -> dict[str, auth.Device]:
        """The public registry: identity key id -> key and revoked flag (no device names)."""
        out: dict[str, auth.Device] = {}
        for e in (devices if devices is not None else self.devices()).values():
            if e.ed25519_hex:
                raw = bytes.fromhex(e.ed25519_hex)
                out[auth.identity_id(raw)] = auth.Device(raw, e.revoked)
        return out

    def _publish_registry(self, devices: dict[str, Enrolled]) -> int:
        doc = auth.registry_document(self.registry(devices))
        sha = hashlib.sha256(doc).hexdigest()
        md = self.load()
        self.storage.put(layout.hashed_target_key(layout.DEVICES_TARGET, sha), doc)
        md.targets.signed.targets[layout.DEVICES_TARGET] = TargetFile(len(doc), {"sha256": sha},
                                                                       layout.DEVICES_TARGET)
        self._commit_targets(md)
        return int(md.targets.signed.version)

    def recipients(self) -> list[X25519Recipient]:
        """The X25519 keys of every unrevoked device; wraps carry no device name."""
        return [X25519Recipient(load_x25519_public(e.x25519_pem.encode()))
                for _, e in sorted(self.devices().items()) if not e.revoked]

    def revoked_x25519(self) -> set[str]:
        return {x25519_id(load_x25519_public(e.x25519_pem.encode())) for e in self.devices().values() if e.revoked}

    # ---- publishing ------------------------------------------------------------------------

    def publish(self, sealed: SealedModel, rollout: int = 100, device_classes: Sequence[str] = (),
                min_agent: str = "0", pinned: bool = False, kek: bytes | None = None,
                progress: UploadProgress | None = None, check_release: bool = True,
                breaking: bool = False) -> repo.Release:
        """Upload the edge part of ``sealed`` and make it the channel's newest state.

        Data keys are rewrapped for every enrolled device on a staged copy; the store's
        sealed model is not touched.  Publishing a version again refreshes its wraps (for
        devices enrolled since) and its rollout settings.
        """
        m = sealed.manifest
        if not 0 <= rollout <= 100:
            raise UsageError(f"--rollout {rollout} must be a percentage between 0 and 100")
        edge = [a for a in m.artifacts if a.target == "edge"]
        if not any(a.is_model for a in edge):
            raise UsageError(f"{m.tag} has no edge artifact to publish; build it with --edge int8|fp16|dynamic|fp32")
        md = self.load()
        if check_release:
            for r in repo.releases(md.targets.signed):
                if r.model == m.name and r.version != m.version and r.release >= m.release:
                    raise UsageError(f"{r.model}:{r.version} has release {r.release} >= {m.release} of {m.tag}; "
                                     "devices never go back in release: build a newer release")
        declared = self._api_change(md, sealed, breaking)
        recipients = self.recipients()
        release = repo.Release(m.name, m.version, m.release, tuple(device_classes), rollout, min_agent, pinned,
                               breaking=declared)
        with tempfile.TemporaryDirectory(prefix="bentoedge-publish-") as tmp:
            staged = self._stage(sealed, Path(tmp), recipients, kek)
            files: dict[str, tuple[int, str]] = {}
            for rel in [*layout.REQUIRED_FILES, *(a.file for a in edge)]:
                data_path = staged / rel
                h = hashlib.sha256()
                with open(data_path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                files[rel] = (data_path.stat().st_size, h.hexdigest())
            for rel, (size, sha) in files.items():
                path = layout.target_path(m.name, m.version, rel)
                cb = progress(path, size) if progress else None
                self.storage.put_file(layout.hashed_target_key(path, sha), staged / rel, cb)
        repo.set_version(md.targets.signed, release, files)
        self._commit_targets(md)
        return release

    def _api_change(self, md: Loaded, sealed: SealedModel, breaking: bool) -> bool:
        """Whether this publish changes the API of the model's newest other release on the
        channel (True: declared, by ``--breaking`` here or at build); UsageError when it does
        and nobody declared it.  A republish of a version keeps its own record's flag."""
        m = sealed.manifest
        others = [r for r in repo.releases(md.targets.signed) if r.model == m.name]
        same = next((r for r in others if r.version == m.version), None)
        older = [r for r in others if r.version != m.version and r.release < m.release]
        if not older:
            return breaking or (same.breaking if same else False)
        newest = max(older, key=lambda r: r.release)
        previous = self._published_manifest(md, newest)
        changes = breaking_changes(previous.signature, m.signature)
        if not changes:
            return False
        declared = breaking or api_major(m) > api_major(previous)
        if not declared:
            raise UsageError(f"{m.tag} changes the API of {previous.tag}, published on this channel: {describe(changes)}; "
                             f"devices would swap it in behind a running endpoint: rebuild with --breaking, or "
                             "publish with --breaking to declare it")
        return True

    def _published_manifest(self, md: Loaded, release: repo.Release) -> Manifest:
        target = md.targets.signed.targets.get(release.manifest_path)
        data = self.storage.get(layout.hashed_target_key(release.manifest_path, target.hashes["sha256"])) if target else None
        if data is None:
            raise ChannelError(f"the channel lists {release.key} but its manifest is missing from storage")
        return Manifest.from_bytes(bytes(data))

    def _stage(self, sealed: SealedModel, tmp: Path, recipients: Sequence[X25519Recipient],
               kek: bytes | None) -> Path:
        staged = tmp / "sealed"
        (staged / layout.ARTIFACTS).mkdir(parents=True)
        for name in layout.REQUIRED_FILES:
            shutil.copyfile(sealed.path / name, staged / name)
        edge = [a for a in sealed.manifest.artifacts if a.target == "edge"]
        for a in edge:
            shutil.copyfile(sealed.path / a.file, staged / a.file)
        copy = SealedModel.open(staged)
        if recipients:
            keyring = Keyring().add_kek(kek if kek is not None else LocalKeys(self.home).kek())
            copy.add_wraps(list(recipients), keyring, "edge")
        # Publish only the device wraps of edge artifacts: the channel is public, and a
        # wrap under the publisher's KEK or a cloud key has no business on it.
        # A revoked device's wrap stays off even when the build itself wrapped for its key, and
        # no wrap names a device: the device finds its own by key id.
        wraps = copy.wraps()
        revoked = self.revoked_x25519()
        public = {a.id: [{k: v for k, v in w.items() if k != "label"} for w in wraps.get(a.id, [])
                         if w.get("type") == "x25519" and w.get("keyid") not in revoked] for a in edge}
        (staged / layout.KEYS).write_bytes(keys_document(public))
        return staged

    # ---- maintenance -----------------------------------------------------------------------

    def refresh(self) -> int:
        """Re-sign the timestamp, and targets and snapshot when they are close to expiring.

        Run it on a schedule shorter than the timestamp's expiry: a channel nobody publishes
        to must not freeze its fleet when the online roles expire.
        """
        md = self.load()
        now = repo.utcnow()
        changed: list[str] = ["timestamp"]
        if md.targets.signed.expires - now < timedelta(days=14):
            repo.bump(md.targets, "targets", now)
            changed.insert(0, "targets")
        if "targets" in changed or md.snapshot.signed.expires - now < timedelta(days=2):
            repo.bump(md.snapshot, "snapshot", now)
            changed.insert(-1, "snapshot")
        root_left = md.root.signed.expires - now
        if root_left < timedelta(days=30):
            log.warning("the channel's root metadata expires in %d days: sign a new root with the offline keys",
                        root_left.days)
        repo.bump(md.timestamp, "timestamp", now)
        self._write_online(md, changed)
        return int(md.timestamp.signed.version)

    def withdraw(self, model: str, version: str) -> list[str]:
        md = self.load()
        paths = repo.withdraw(md.targets.signed, model, version)
        self._commit_targets(md)
        return paths

    def pin(self, model: str, version: str) -> repo.Release:
        md = self.load()
        rel = repo.pin(md.targets.signed, model, version)
        self._commit_targets(md)
        return rel

    def _root_signers(self, root: Root, root_keys_dir: Path | None) -> list[Signer]:
        folder = root_keys_dir or self._recorded_root_dir()
        signers: list[Signer] = []
        for path in sorted(folder.glob("*.pem")) if folder.exists() else []:
            signer = _load_signer(path)
            if signer.public_key.keyid in root.roles["root"].keyids:
                signers.append(signer)
        need = root.roles["root"].threshold
        if len(signers) < need:
            raise KeyMissingError(f"rotating needs {need} of the offline root keys; found {len(signers)} in {folder}: "
                                  "bring the offline root key folder back and pass --root-keys DIR")
        return signers[:need]

    def _recorded_root_dir(self) -> Path:
        info = json.loads((self.state_dir / "channel.json").read_text())
        return Path(info["root_keys_dir"])

    def rotate(self, role: str, root_keys_dir: Path | None = None, new_root_keys: int = 3,
               threshold: int = 2) -> int:
        """Replace the keys of ``role`` with fresh ones; returns the new root version.

        A new root is signed by a threshold of the current root keys (and, for a root
        rotation, by the new root keys too), so devices follow the chain of trust.
        """
        if role not in repo.ROLES:
            raise UsageError(f"unknown role {role!r}; rotate one of {', '.join(repo.ROLES)}")
        md = self.load()
        root = md.root
        old_signers = self._root_signers(root.signed, root_keys_dir)
        repo.bump(root, "root", repo.utcnow())
        extra: list[Signer] = []
        if role == "root":
            folder = root_keys_dir or self._recorded_root_dir()
            for _ in range(new_root_keys):
                priv, signer = _new_key()
                write_private(folder / f"{signer.public_key.keyid}.pem", _pem(priv))
                extra.append(signer)
            repo.rotate_root(root.signed, [s.public_key for s in extra], threshold)
        else:
            priv, signer = _new_key()
            repo.replace_role_key(root.signed, role, signer.public_key)
            pending = self.state_dir / "keys" / f"{role}.pem.next"
            write_private(pending, _pem(priv))
        repo.sign(root, old_signers + extra[:threshold])
        self.storage.put(layout.metadata_key("root", root.signed.version), root.to_bytes())
        if role != "root":
            (self.state_dir / "keys" / f"{role}.pem.next").replace(self.state_dir / "keys" / f"{role}.pem")
        # Re-sign what the rotated key signs, so the new root and the online roles agree.
        now = repo.utcnow()
        changed = {"root": ["timestamp"], "timestamp": ["timestamp"], "snapshot": ["snapshot", "timestamp"],
                   "targets": ["targets", "snapshot", "timestamp"]}[role]
        for r in changed:
            repo.bump(getattr(md, r), r, now)
        self._write_online(md, changed)
        return int(root.signed.version)

    def status(self) -> dict[str, Any]:
        md = self.load()
        return {
            "url": self.url,
            "root": {"version": md.root.signed.version, "threshold": md.root.signed.roles["root"].threshold,
                     "fingerprint": hashlib.sha256(self.root_bytes(1)).hexdigest(),
                     "keys": len(md.root.signed.roles["root"].keyids),
                     "expires": md.root.signed.expires.isoformat()},
            "targets": {"version": md.targets.signed.version, "expires": md.targets.signed.expires.isoformat()},
            "snapshot": {"version": md.snapshot.signed.version, "expires": md.snapshot.signed.expires.isoformat()},
            "timestamp": {"version": md.timestamp.signed.version,
                          "expires": md.timestamp.signed.expires.isoformat()},
            "releases": [{"model": r.model, "version": r.version, "release": r.release, "rollout": r.rollout,
                          "device_classes": list(r.device_classes), "min_agent": r.min_agent, "pinned": r.pinned}
                         for r in repo.releases(md.targets.signed)],
            "devices": sorted(d for d, e in self.devices().items() if not e.revoked),
            "revoked": sorted(d for d, e in self.devices().items() if e.revoked),
            "identities": sorted(d for d, e in self.devices().items() if e.ed25519_hex and not e.revoked),
        }
