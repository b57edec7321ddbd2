"""``POST /fleet/reports``: what the cloud does with a device's signed report.

The request itself has already passed the service's authentication (``cloud.auth``): it was
signed by an enrolled identity key, and its principal names that key (``device:<key id>``).
``FleetIntake.receive`` then checks the report's own envelope with the *same* key (reports
are signed end to end, so a report relayed or replayed later still proves its device), that
the device id it claims is not already reporting under another key, that it was sent within
a day of now, and stores it only when newer than the stored one (``FleetStore.put_report``):

- 413 an envelope over ``MAX_ENVELOPE_BYTES``; 400 a malformed one or a stale one;
- 403 no device principal (an API key, or authentication switched off: the service cannot
  tell which device sent it), a revoked or unknown key, a signature that does not verify,
  a device id taken by another key;
- 200 ``{"stored": true}``, or ``{"stored": false}`` for a replay or a late report (the
  device drops it from its buffer either way).

Shared by the BentoML service (``cloud.service_http``) and usable by any other front.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bentoedge.bentos import fleet_report as rp
from bentoedge.bentos.api import Reply, json_reply
from bentoedge.bentos.auth import Device
from bentoedge.bentos.errors import FormatError, SignatureError
from bentoedge.cloud.fleet.store import FleetStore

PATH = "/fleet/reports"
PRINCIPAL_KEY = "bentoedge.principal"  # where the authentication layer leaves who sent a request


class FleetIntake:
    """Checks and stores device reports; ``device(key_id)`` is the registry's lookup."""

    def __init__(self, store: FleetStore, device: Callable[[str], Device | None],
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._device = device
        self._clock = clock

    def receive(self, body: bytes, principal: str) -> Reply:
        if len(body) > rp.MAX_ENVELOPE_BYTES:
            return _refuse(413, f"a report envelope is at most {rp.MAX_ENVELOPE_BYTES} bytes, this one {len(body)}")
        if not principal.startswith("device:"):
            return _refuse(403, "fleet reports come from enrolled devices: sign the request with the device's "
                                "identity key (authentication must be on)")
        key_id = principal.removeprefix("device:")
        device = self._device(key_id)
        if device is None or device.revoked:
            return _refuse(403, f"device key {key_id} is not enrolled, or revoked")
        key = Ed25519PublicKey.from_public_bytes(device.public)
        try:
            signed = rp.open_envelope(body, key)
            rp.check_fresh(signed.report, self._clock())
        except SignatureError as exc:
            return _refuse(403, str(exc))
        except FormatError as exc:
            return _refuse(400, str(exc))
        current = self.store.latest(signed.report.device_id)
        if current is not None and not _signed_by(current.envelope, key):
            return _refuse(403, f"device id {signed.report.device_id} already reports under another key")
        stored = self.store.put_report(signed)
        return json_reply(200, {"stored": stored, "device_id": signed.report.device_id, "seq": signed.report.seq})


def _signed_by(envelope: bytes, key: Ed25519PublicKey) -> bool:
    try:
        rp.open_envelope(envelope, key)
    except (SignatureError, FormatError, InvalidSignature):
        return False
    return True


def _refuse(status: int, why: str) -> Reply:
    return json_reply(status, {"error": why, "reason": "fleet_report"})
