"""The sync agent's one door into python-tuf's ngclient, internals included.

``tuf.ngclient.Updater`` verifies the channel's metadata (signatures, versions, expiry,
snapshot consistency) but offers no public view of what it then trusts: the listing of
targets and the expiry dates live in its private ``_trusted_set``.  The agent needs both
(``select`` chooses from the listing; the one-GET poll in ``machine.timestamp_unchanged``
needs the earliest expiry), so they are read here and nowhere else: an ngclient upgrade
that moves them breaks this module only.  The channel's URLs and file names come from the
caller (``edge.sync.agent``), which owns the channel layout.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from tuf.api.metadata import Metadata, TargetFile
from tuf.ngclient import Updater, UpdaterConfig
from tuf.ngclient._internal.trusted_metadata_set import TrustedMetadataSet
from tuf.ngclient.config import EnvelopeType
from tuf.ngclient.fetcher import FetcherInterface

#: The most bytes a timestamp.json may have, as ngclient bounds it: the one-GET poll
#: fetches that file itself and must not accept more than a full refresh would.
TIMESTAMP_MAX_LENGTH: int = UpdaterConfig().timestamp_max_length


def open_updater(metadata_dir: Path, metadata_url: str, targets_url: str, fetcher: FetcherInterface,
                 bootstrap: bytes) -> Updater:
    """An ngclient updater over the device's metadata cache, trusting ``bootstrap`` (the
    root embedded at provisioning) and fetching every byte through ``fetcher``."""
    return Updater(str(metadata_dir), metadata_url, None, targets_url, fetcher=fetcher,
                   config=UpdaterConfig(), bootstrap=bootstrap)


def trusted_targets(updater: Updater) -> Mapping[str, TargetFile]:
    """Every target in the targets metadata the last ``refresh`` verified."""
    return updater._trusted_set.targets.targets


def is_trusted_timestamp(updater: Updater, stored: bytes) -> bool:
    """Whether ``stored`` (the timestamp.json ngclient wrote to its cache) is the version
    the last ``refresh`` verified; any doubt (unparsable bytes) says no."""
    try:
        return bool(Metadata.from_bytes(stored).signed.version == updater._trusted_set.timestamp.version)
    except Exception:  # the refresh itself succeeded: the caller just skips the shortcut
        return False


def earliest_expiry(updater: Updater) -> float:
    """When the first of root, timestamp, snapshot and targets that the last ``refresh``
    verified expires (seconds, ``time.time()``)."""
    trusted = updater._trusted_set
    return min(md.expires for md in (trusted.root, trusted.timestamp, trusted.snapshot,
                                     trusted.targets)).timestamp()


def verified_root_chain(anchor: bytes, fetch_root: Callable[[int], bytes | None], max_roots: int) -> tuple[bytes, int]:
    """The newest root the chain from ``anchor`` reaches, each step checked as ngclient checks
    a root update (signed by the threshold of the previous root and of itself, version + 1),
    and its version.  ``fetch_root(n)`` gives ``n.root.json`` or None past the last one.
    A root that does not verify raises tuf's own error: the caller refuses to provision."""
    trusted = TrustedMetadataSet(anchor, EnvelopeType.METADATA)
    latest = anchor
    for _ in range(max_roots):
        data = fetch_root(trusted.root.version + 1)
        if data is None:
            break
        trusted.update_root(data)
        latest = data
    return latest, trusted.root.version
