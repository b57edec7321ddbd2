"""The TUF repository of an update channel, as pure functions over ``tuf.api.metadata``.

No files, no network: the channel shell (``cloud.channel.channel``) loads the current
metadata from storage, calls these functions to compute the next state, and writes the
result.  Every change follows TUF's order: targets first, then a snapshot that names the
new targets version, then a timestamp that names the new snapshot, so a device that reads
the timestamp at any moment sees a complete, consistent repository.

Roles: root (offline keys, a threshold), targets (the publisher), snapshot and timestamp
(online keys; the timestamp expires after a day and ``channel refresh`` re-signs it).
Consistent snapshots are on: metadata is published as ``N.role.json`` and target files
under ``<dir>/<sha256>.<name>``, so files of an old and a new state never collide.

A version's files are targets ``<model>/<version>/<file>``; its ``manifest.json`` target
carries the decision data in ``custom["bentoedge"]`` (release counter, device classes,
rollout percentage, minimum agent version, pinned), which the device's pure selection
(``edge.sync.select``) reads.  Those paths and that record are ``bentos.channel_layout``,
shared with the device, so publisher and device cannot disagree on the format.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

from securesystemslib.signer import Key, Signer
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Role,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from bentoedge.bentos import channel_layout as layout
from bentoedge.bentos.errors import ChannelError, NotFoundError, UsageError

ROLES = ("root", "targets", "snapshot", "timestamp")
ONLINE = ("targets", "snapshot", "timestamp")
EXPIRY = {
    "root": timedelta(days=365),
    "targets": timedelta(days=90),
    "snapshot": timedelta(days=7),
    "timestamp": timedelta(days=1),
}
#: Re-exported: the publisher's callers (``Channel.publish``, the CLI) name it ``repo.Release``.
Release = layout.Release


def expires(role: str, now: datetime) -> datetime:
    return (now + EXPIRY[role]).replace(microsecond=0)


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def new_repository(root_keys: Sequence[Key], threshold: int, online: Mapping[str, Key],
                   now: datetime) -> dict[str, Metadata[Any]]:
    """Version-1 metadata of every top-level role (unsigned)."""
    if not 1 <= threshold <= len(root_keys):
        raise UsageError(f"root threshold {threshold} must be between 1 and the {len(root_keys)} root keys")
    root = Root(expires=expires("root", now), consistent_snapshot=True)
    for key in root_keys:
        root.add_key(key, "root")
    root.roles["root"].threshold = threshold
    for role in ONLINE:
        root.add_key(online[role], role)
    targets = Targets(expires=expires("targets", now))
    snapshot = Snapshot(expires=expires("snapshot", now))
    timestamp = Timestamp(expires=expires("timestamp", now))
    return {"root": Metadata(root), "targets": Metadata(targets),
            "snapshot": Metadata(snapshot), "timestamp": Metadata(timestamp)}


def bump(md: Metadata[Any], role: str, now: datetime) -> None:
    md.signed.version += 1
    md.signed.expires = expires(role, now)
    md.signatures.clear()


def sign(md: Metadata[Any], signers: Iterable[Signer]) -> Metadata[Any]:
    for signer in signers:
        md.sign(signer, append=True)
    return md


def version_files(targets: Targets, model: str, version: str) -> dict[str, TargetFile]:
    prefix = layout.version_prefix(model, version)
    return {p: t for p, t in targets.targets.items() if p.startswith(prefix)}


def set_version(targets: Targets, release: Release, files: Mapping[str, tuple[int, str]]) -> list[str]:
    """Replace the targets of ``release`` with ``files`` (relative name -> (length, sha256)).

    Returns the target paths.  Unpins every other version when ``release`` is pinned,
    because a channel pins at most one version of a model.
    """
    if layout.MANIFEST not in files:
        raise UsageError(f"a published version needs its {layout.MANIFEST}")
    for path in version_files(targets, release.model, release.version):
        del targets.targets[path]
    paths = [layout.target_path(release.model, release.version, name) for name in sorted(files)]
    record = replace(release, files=tuple(paths))
    for name, (length, sha) in sorted(files.items()):
        path = layout.target_path(release.model, release.version, name)
        custom = record.to_custom() if name == layout.MANIFEST else layout.file_custom(release.model, release.version)
        targets.targets[path] = TargetFile(length, {"sha256": sha}, path, unrecognized_fields={"custom": custom})
    if release.pinned:
        _unpin_others(targets, release.model, release.version)
    return paths


def releases(targets: Targets) -> list[Release]:
    """Every release record on the channel, oldest release first.

    The publisher wrote them all, so one that does not parse means the channel was
    edited behind its back: said plainly rather than skipped, as a device would.
    """
    out, skipped = layout.releases_in(targets.targets)
    if skipped:
        raise ChannelError(f"the channel's targets metadata holds malformed release records: {'; '.join(skipped)}")
    return sorted(out, key=lambda r: (r.model, r.release, r.version))


def find_release(targets: Targets, model: str, version: str) -> Release:
    for r in releases(targets):
        if r.model == model and r.version == version:
            return r
    have = ", ".join(r.key for r in releases(targets)) or "none"
    raise NotFoundError(f"{model}:{version} is not published on this channel (published: {have})")


def withdraw(targets: Targets, model: str, version: str) -> list[str]:
    """Remove a version's targets; devices stop being offered it at their next poll."""
    find_release(targets, model, version)
    paths = list(version_files(targets, model, version))
    for path in paths:
        del targets.targets[path]
    return paths


def pin(targets: Targets, model: str, version: str) -> Release:
    rel = find_release(targets, model, version)
    _set_pinned(targets, rel, True)
    _unpin_others(targets, model, version)
    return rel


def _set_pinned(targets: Targets, rel: Release, pinned: bool) -> None:
    # The record is rewritten whole from its parsed form, so a pin cannot leave it in a
    # shape the device would refuse.
    targets.targets[rel.manifest_path].unrecognized_fields["custom"] = replace(rel, pinned=pinned).to_custom()


def _unpin_others(targets: Targets, model: str, version: str) -> None:
    for rel in releases(targets):
        if rel.model == model and rel.version != version and rel.pinned:
            _set_pinned(targets, rel, False)


def link(snapshot: Snapshot, targets_version: int) -> None:
    snapshot.meta["targets.json"] = MetaFile(version=targets_version)


def link_timestamp(timestamp: Timestamp, snapshot_version: int) -> None:
    timestamp.snapshot_meta = MetaFile(version=snapshot_version)


def replace_role_key(root: Root, role: str, new_key: Key) -> None:
    """Swap every key of ``role`` for ``new_key`` (root keys rotate through ``rotate_root``)."""
    for keyid in list(root.roles[role].keyids):
        root.revoke_key(keyid, role)
    root.add_key(new_key, role)


def rotate_root(root: Root, new_keys: Sequence[Key], threshold: int) -> None:
    if not 1 <= threshold <= len(new_keys):
        raise UsageError(f"root threshold {threshold} must be between 1 and the {len(new_keys)} new root keys")
    for keyid in list(root.roles["root"].keyids):
        root.revoke_key(keyid, "root")
    for key in new_keys:
        root.add_key(key, "root")
    root.roles["root"].threshold = threshold


def role_of(root: Root, role: str) -> Role:
    return root.roles[role]
