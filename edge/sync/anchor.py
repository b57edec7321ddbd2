"""The channel root a device or the cloud starts from: anchored by the operator, verified root by root.

``agent init`` embeds the root this returns in the device; the cloud service takes it to read
the channel's signed device registry when it is given only the fingerprint
(``BENTOEDGE_CHANNEL_ROOT_SHA256``, small enough for a Lambda environment).  Either way the
anchor is a root file the operator brings or the channel's ``1.root.json`` whose SHA-256 is
the one ``channel init`` printed, and every newer root must be signed by the threshold of the
one before: a forged ``2.root.json`` is refused here, not discovered later as updates that
never verify.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from tuf.api import exceptions as tuf_exc

from bentoedge.bentos.channel_layout import METADATA_DIR
from bentoedge.bentos.errors import BentoEdgeError, ChannelError, VerificationError
from bentoedge.edge.fetchers import fetcher_for
from bentoedge.edge.sync.tuf_access import verified_root_chain

#: The most root versions walked from the anchor: a bound on what a channel can make us fetch.
MAX_ROOTS = 256


def fetch_root(channel: str) -> Callable[[int], bytes | None]:
    """``n -> n.root.json`` of the channel, None where there is none."""
    fetcher = fetcher_for(channel)
    base = channel.rstrip("/") + f"/{METADATA_DIR}/"

    def fetch(n: int) -> bytes | None:
        try:
            return fetcher.download_bytes(f"{base}{n}.root.json", 512_000)
        except tuf_exc.DownloadHTTPError as exc:
            if exc.status_code in (403, 404):
                return None
            raise ChannelError(f"cannot read {base}{n}.root.json: {exc}") from None
        except tuf_exc.DownloadError as exc:
            raise ChannelError(f"cannot reach channel {channel}: {exc.__cause__ or exc}") from None
    return fetch


def trusted_root(channel: str, root_sha256: str | None, root_file: Path | None) -> tuple[bytes, int]:
    """The channel root to embed: anchored by the operator, then verified root by root.

    The anchor is a root file the operator brings, or the channel's ``1.root.json`` when its
    SHA-256 matches the fingerprint ``channel init`` printed.  Every newer root must be
    signed by the threshold of the one before (and of itself): a forged ``2.root.json`` is
    refused here, at provisioning, not discovered later as updates that never verify.
    """
    fetch = fetch_root(channel)
    if root_file is not None:
        anchor = root_file.read_bytes()
    else:
        assert root_sha256 is not None
        first = fetch(1)
        if first is None:
            raise ChannelError(f"{channel} has no {METADATA_DIR}/1.root.json; is it a bentoedge channel (channel init)?")
        if hashlib.sha256(first).hexdigest() != root_sha256.strip().lower():
            raise VerificationError(f"the channel's 1.root.json has SHA-256 {hashlib.sha256(first).hexdigest()[:16]}..., "
                                    "not the --root-sha256 given: do not provision against this channel")
        anchor = first
    try:
        return verified_root_chain(anchor, fetch, MAX_ROOTS)
    except BentoEdgeError:
        raise
    except Exception as exc:  # tuf's RepositoryError kinds, or bytes that are no root
        raise VerificationError(f"the channel's roots do not verify from the trusted one: {exc}; "
                                "do not provision against this channel") from None
