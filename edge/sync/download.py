"""Resumable, verified download of one TUF target into the device's staging folder.

The sync agent (``edge.sync.agent``) decides what to fetch and where; this module fetches
one target through the device's fetcher (``edge.fetchers``, the only door to the network),
resuming a ``.part`` file left by an earlier attempt with ``fetch_from``, stopping at the
signed length, and renaming into place only once the signed hashes match.  A file already
in place with the right hashes costs no request.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import TargetFile

from bentoedge.bentos.channel_layout import hashed_name

#: ``progress(path, total_bytes, already_have)`` when a target download starts; returns a
#: callback for each chunk's size (``bentoedge agent sync`` draws a bar with it).
DownloadProgress = Callable[[str, int, int], Callable[[int], None]]

#: How far into a file ``checkpoint`` is called: past the first chunk, so a resume has
#: something to resume, and within any file, however small.
CHECKPOINT_BYTES = 1 << 16


class ResumingFetcher(Protocol):
    """What a download needs of a fetcher (``edge.fetchers.CountingFetcher`` is one)."""

    def fetch_from(self, url: str, offset: int) -> tuple[Iterator[bytes], int]: ...


def target_url(targets_url: str, info: TargetFile) -> str:
    """Where the channel keeps ``info`` under consistent snapshots: ``DIR/SHA256.NAME``, so
    a republished path is a new object and no cache serves the old bytes for it."""
    return targets_url + hashed_name(info.path, info.hashes["sha256"])


def fetch_target(fetcher: ResumingFetcher, url: str, info: TargetFile, dest: Path, *,
                 progress: DownloadProgress | None = None,
                 checkpoint: Callable[[], None] | None = None) -> None:
    """Fetch ``info`` from ``url`` into ``dest``, resuming a ``.part`` file, then check its
    TUF length and hashes (raising ``LengthOrHashMismatchError`` and dropping the part file
    if they miss).  ``checkpoint`` (tests only) runs once per file, as soon as the part file
    holds ``CHECKPOINT_BYTES`` (or all of a smaller file) durably on disk."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        try:
            with open(dest, "rb") as f:
                info.verify_length_and_hashes(f)
            return
        except tuf_exc.LengthOrHashMismatchError:
            dest.unlink()
    # Named after the signed hash: a partial file of another publication of this path
    # (say a republished keys.json) is never resumed into this one.
    part = dest.with_name(f"{dest.name}.{info.hashes['sha256'][:16]}.part")
    have = part.stat().st_size if part.exists() else 0
    if have > info.length:
        part.unlink()
        have = 0
    if have < info.length:
        _append(fetcher, url, info, part, have, progress, checkpoint)
    try:
        with open(part, "rb") as f:
            info.verify_length_and_hashes(f)
    except tuf_exc.LengthOrHashMismatchError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)


def _append(fetcher: ResumingFetcher, url: str, info: TargetFile, part: Path, have: int,
            progress: DownloadProgress | None, checkpoint: Callable[[], None] | None) -> None:
    chunks, start = fetcher.fetch_from(url, have)
    advance = progress(info.path, info.length, start) if progress is not None else None
    written = start
    checkpoint_at = min(info.length, CHECKPOINT_BYTES) if checkpoint is not None else None
    with open(part, "r+b" if start else "wb") as f:
        f.truncate(start)  # the server resumes where it says it does, not where we hoped
        f.seek(start)
        for chunk in chunks:
            written += len(chunk)
            if written > info.length:  # endless data: stop at the signed length
                raise tuf_exc.DownloadLengthMismatchError(f"{info.path} is longer than its signed {info.length} bytes")
            f.write(chunk)
            if advance is not None:
                advance(len(chunk))
            if checkpoint is not None and checkpoint_at is not None and written >= checkpoint_at:
                # Durable first: a test that dies here must find these bytes to resume from.
                f.flush()
                os.fsync(f.fileno())
                checkpoint_at = None  # once per file
                checkpoint()
        f.flush()
        os.fsync(f.fileno())
