"""The device's state folder: what is installed, what is active, what failed.

    STATE/agent.toml        configuration (edge.config)
    STATE/device.key|.pub   the device's X25519 key pair (unwraps edge data keys)
    STATE/identity.key|.pub the device's Ed25519 identity (signs its calls to the cloud)
    STATE/api.token         the local API's token (edge.server: /status, and every route off loopback)
    STATE/root.json         the channel root embedded at provisioning (TUF trust anchor)
    STATE/tuf/              ngclient's metadata cache
    STATE/staging/<v>/      a download in progress (kept across crashes, to resume)
    STATE/versions/<v>/     installed versions, still encrypted sealed-model folders
    STATE/active            pointer: {"model", "active", "previous": [...]}
    STATE/failed.json       {"model:version": "why"}: never retried automatically
    STATE/strikes.json      {"model:version|health": n}: health checks the agent died in
    STATE/status.json       the agent's last status, for `agent status` and the API
    STATE/agent.lock        one agent per state folder (fcntl)

Crash safety comes from ordering, not from recovery code: a version folder appears by one
``os.replace`` only when complete, and the pointer (written aside, fsynced, renamed, folder
fsynced) only ever names installed folders.  So after a kill at any instant the pointer is
either the old one or the new one, and both name whole versions.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bentoedge.bentos.channel_layout import valid_name
from bentoedge.bentos.errors import UsageError
from bentoedge.bentos.keystore import fsync_dir, write_private
from bentoedge.bentos.manifest import canonical_json

KEEP = 2  # the active version and one previous good one, for rollback


@dataclass(frozen=True)
class Pointer:
    model: str | None = None
    active: str | None = None
    previous: tuple[str, ...] = ()

    def to_bytes(self) -> bytes:
        return canonical_json({"model": self.model, "active": self.active, "previous": list(self.previous)})

    @classmethod
    def from_bytes(cls, data: bytes) -> Pointer:
        """The pointer in ``data``; ValueError unless every name in it follows the name rule.

        The names become paths under versions/: a hand-damaged ``{"previous": 7}`` or an
        ``"active": "../../x/versions/v2"`` must neither crash the agent nor reach outside
        the state folder (and so be served, or pruned).
        """
        d = json.loads(data)
        if not isinstance(d, dict):
            raise ValueError("the active pointer is not a JSON object")
        model, active, previous = d.get("model"), d.get("active"), d.get("previous") or []
        if not isinstance(previous, list):
            raise ValueError("the active pointer's 'previous' is not a list")
        for value in (model, active, *previous):
            if value is not None and not valid_name(value):
                raise ValueError(f"the active pointer names {str(value)[:80]!r}, which is no model or version name")
        return cls(model, active, tuple(previous))

    def activated(self, model: str, version: str, keep: int = KEEP) -> Pointer:
        """The pointer after ``version`` becomes active (pure)."""
        history = [v for v in ((self.active,) + self.previous) if v and v != version]
        if self.model not in (None, model):
            history = []  # a different model: its versions are no rollback target
        return Pointer(model, version, tuple(history[: keep - 1]))

    @property
    def versions(self) -> tuple[str, ...]:
        return tuple(v for v in (self.active, *self.previous) if v)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    write_private(path, data, mode=mode)


class DeviceState:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tuf = root / "tuf"
        self.versions = root / "versions"
        self.staging = root / "staging"
        self.pointer_file = root / "active"
        self.failed_file = root / "failed.json"
        self.strikes_file = root / "strikes.json"
        self.status_file = root / "status.json"
        self.lock_file = root / "agent.lock"
        self.root_file = root / "root.json"
        self.key_file = root / "device.key"
        self.pub_file = root / "device.pub"
        self.identity_file = root / "identity.key"
        self.identity_pub_file = root / "identity.pub"
        self.token_file = root / "api.token"
        self._lock_fd: int | None = None

    def ensure(self) -> None:
        for d in (self.root, self.tuf, self.versions, self.staging):
            d.mkdir(parents=True, exist_ok=True)

    # ---- the one-agent lock ------------------------------------------------------------------

    def lock(self) -> None:
        self.ensure()
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UsageError(f"another agent is using {self.root} (lock {self.lock_file} is held); "
                             "stop it first or give this one another --state") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def holder(self) -> int | None:
        """The pid of the agent holding this folder's lock, or None when no agent holds it."""
        try:
            fd = os.open(self.lock_file, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.read(fd, 32).decode("ascii", "replace").strip()
                return int(text) if text.isdigit() else None
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---- pointer, failures, status -----------------------------------------------------------

    def pointer(self) -> Pointer:
        # A damaged file cannot happen through os.replace; a hand-edited one must not brick
        # the device: it serves nothing local (the cloud still answers) until a sync installs one.
        return self._read_pointer() or Pointer()

    def _read_pointer(self) -> Pointer | None:
        """The pointer (empty when there is none yet), or None when the file is damaged."""
        try:
            return Pointer.from_bytes(self.pointer_file.read_bytes())
        except FileNotFoundError:
            return Pointer()
        except (ValueError, AttributeError, TypeError):
            return None

    def set_pointer(self, p: Pointer) -> None:
        atomic_write(self.pointer_file, p.to_bytes())

    def failed(self) -> dict[str, str]:
        try:
            data = json.loads(self.failed_file.read_bytes())
            return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
        except (FileNotFoundError, ValueError):
            return {}

    def record_failure(self, key: str, reason: str) -> None:
        failed = self.failed()
        failed[key] = reason
        atomic_write(self.failed_file, canonical_json(failed))

    def strike(self, key: str) -> int:
        """Count one more health-check strike against version ``key``; returns the new count."""
        strikes = self._strikes()
        name = f"{key}|health"
        strikes[name] = strikes.get(name, 0) + 1
        atomic_write(self.strikes_file, canonical_json(strikes))
        return strikes[name]

    def unstrike(self, key: str) -> None:
        """Take back the last strike against ``key``."""
        strikes = self._strikes()
        name = f"{key}|health"
        if strikes.get(name, 0) > 1:
            strikes[name] -= 1
        else:
            strikes.pop(name, None)
        atomic_write(self.strikes_file, canonical_json(strikes))

    def clear_strikes(self, key: str) -> None:
        strikes = {k: v for k, v in self._strikes().items() if not k.startswith(f"{key}|")}
        atomic_write(self.strikes_file, canonical_json(strikes))

    def _strikes(self) -> dict[str, int]:
        """The counts on disk; entries that are not small whole numbers are dropped, so a
        damaged file costs at most some counts, never the ability to update."""
        try:
            data = json.loads(self.strikes_file.read_bytes())
        except (OSError, ValueError):  # missing, unreadable, not JSON
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): v for k, v in data.items() if type(v) is int and 0 < v < 1000}

    def clear_failure(self, key: str) -> bool:
        failed = self.failed()
        if failed.pop(key, None) is None:
            return False
        atomic_write(self.failed_file, canonical_json(failed))
        return True

    def write_status(self, status: Mapping[str, Any]) -> None:
        atomic_write(self.status_file, json.dumps(status, indent=2, sort_keys=True).encode())

    def read_status(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.status_file.read_bytes()))
        except (FileNotFoundError, ValueError):
            return {}

    # ---- version folders ---------------------------------------------------------------------

    def version_dir(self, version: str) -> Path:
        if not valid_name(version):  # every path below versions/ is one plain name
            raise ValueError(f"{version[:80]!r} is no version name")
        return self.versions / version

    def staging_dir(self, version: str) -> Path:
        return self.staging / version

    def install(self, version: str) -> Path:
        """Move a complete, verified staging folder into ``versions/`` in one rename."""
        src, dest = self.staging_dir(version), self.version_dir(version)
        for path in src.rglob("*"):
            if path.is_dir():
                fsync_dir(path)
        fsync_dir(src)
        if dest.exists():  # left by a crash before the pointer named it: not in use
            if version in self.pointer().versions:
                raise UsageError(f"version {version} is installed and in use; refusing to replace it")
            shutil.rmtree(dest)
        self.versions.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
        fsync_dir(self.versions)
        fsync_dir(self.staging)
        return dest

    def discard(self, version: str) -> None:
        """Remove a version that failed (staged or installed), unless the pointer names it."""
        shutil.rmtree(self.staging_dir(version), ignore_errors=True)
        if version not in self.pointer().versions:
            shutil.rmtree(self.version_dir(version), ignore_errors=True)

    def restage(self, version: str) -> None:
        """Move ``versions/<version>`` back to staging if no pointer names it: an earlier cycle
        of this process installed it and then failed before the commit (this device's keys,
        say), and its files, checked again against the signed hashes, spare a download.
        (After a restart ``prune`` has already removed such a folder.)"""
        src, dest = self.version_dir(version), self.staging_dir(version)
        if src.is_dir() and not dest.exists() and version not in self.pointer().versions:
            self.staging.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
            fsync_dir(self.staging)
            fsync_dir(self.versions)

    def prune(self, keep_staging: str | None = None) -> list[str]:
        """Delete installed versions the pointer no longer names, and stale staging folders."""
        current = self._read_pointer()
        if current is None:  # which versions are in use is unknown: delete none of them
            return []
        keep = set(current.versions)
        removed = []
        for d in sorted(self.versions.iterdir()) if self.versions.exists() else []:
            if d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d.name)
        for d in sorted(self.staging.iterdir()) if self.staging.exists() else []:
            if d.name != keep_staging:
                shutil.rmtree(d, ignore_errors=True) if d.is_dir() else d.unlink(missing_ok=True)
        return removed
