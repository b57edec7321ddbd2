"""Who may call the cloud: the device registry, API keys, and the one decision (pure).

No files, no network, no clock: the cloud service's shell (``cloud.auth``) reads the
registry and the API key file, keeps the replay cache and passes ``now``; the device's
client (``edge.cloud_client``) signs with ``sign_request``.

The enrolled-device registry is a TUF target of the channel (``channel_layout.DEVICES_TARGET``,
signed like every target), so one publish revokes everywhere:

    {"format": "bentoedge.devices/1",
     "devices": {"<identity key id>": {"ed25519": "<64 hex>", "revoked": false}, ...}}

It is keyed by the identity key's id (``identity_id``: the first 16 hex digits of the
SHA-256 of the raw public key), not by the device id: the channel is public, and a list of
device names is the publisher's business (its private ``devices.json``).  The same id is
the ``keyid`` a device signs with.

A request is let in (``authenticate``) when it carries

- an API key (``Authorization: Bearer bek_...`` or ``X-Api-Key``) whose SHA-256 is in the
  key file and not revoked; or
- an RFC 9421 signature (``bentos.httpsig``) by a registered, unrevoked identity key,
  whose ``created`` is within the window (not older than ``window_s``, not more than
  ``skew_s`` ahead), whose Content-Digest is the body's, and whose nonce this service has
  not seen from that key within the window.

The answer is 401 without usable credentials (none, malformed, a bad signature, a stale
or replayed one, a body that is not the signed one) and 403 for credentials that are
well formed but not allowed (an unknown or revoked device, an unknown or revoked API key).
The replay cache holds at most ``MAX_NONCES`` pairs (about 600 signed requests a second
sustained over the default window); past that a valid signature gets 503 ``overloaded``
rather than a cache that forgets.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bentoedge.bentos import httpsig
from bentoedge.bentos.errors import FormatError, SignatureError

REGISTRY_FORMAT = "bentoedge.devices/1"
API_KEY_PREFIX = "bek_"
DEFAULT_WINDOW_S = 300
DEFAULT_SKEW_S = 30
MAX_NONCES = 200_000


def identity_raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def identity_id(raw: bytes) -> str:
    """The id a device signs with and the registry is keyed by."""
    return hashlib.sha256(raw).hexdigest()[:16]


# ---- the registry -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    public: bytes  # raw Ed25519 public key
    revoked: bool = False


def registry_document(devices: Mapping[str, Device]) -> bytes:
    """The registry as canonical JSON (sorted keys, no whitespace)."""
    doc = {"format": REGISTRY_FORMAT,
           "devices": {k: {"ed25519": d.public.hex(), "revoked": d.revoked} for k, d in sorted(devices.items())}}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def parse_registry(data: bytes) -> dict[str, Device]:
    """A registry document, strictly: FormatError for anything but the exact shape."""
    try:
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"the device registry is not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != REGISTRY_FORMAT or not isinstance(doc.get("devices"), dict):
        raise FormatError(f"the device registry is not a {REGISTRY_FORMAT} document")
    out: dict[str, Device] = {}
    for kid, entry in doc["devices"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("ed25519"), str) \
                or not isinstance(entry.get("revoked"), bool):
            raise FormatError(f"device registry entry {kid[:16]!r} is malformed")
        try:
            raw = bytes.fromhex(entry["ed25519"])
        except ValueError:
            raw = b""
        if len(raw) != 32 or identity_id(raw) != kid:
            raise FormatError(f"device registry entry {kid[:16]!r} does not hold the key its id names")
        out[kid] = Device(raw, entry["revoked"])
    return out


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("a name appears twice")
    return out


# ---- API keys ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    revoked: bool = False


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def api_key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def api_key_id(key_hash: str) -> str:
    return key_hash[:12]


# ---- replay -----------------------------------------------------------------------------------


class NonceStore(Protocol):
    """Where the (key id, nonce) pairs seen within the window live: ``NonceCache`` in one
    process, ``cloud.replay.SharedNonceStore`` across the workers of one host."""

    def room(self, now: float) -> bool: ...

    def add(self, keyid: str, nonce: str, until: float, now: float) -> bool: ...


@dataclass
class NonceCache:
    """(key id, nonce) pairs seen, each kept until its signature's window has passed."""

    max_entries: int = MAX_NONCES
    _until: dict[tuple[str, str], float] = field(default_factory=dict)
    _heap: list[tuple[float, tuple[str, str]]] = field(default_factory=list)

    def room(self, now: float) -> bool:
        """Whether another pair fits once the expired ones are gone."""
        self._expire(now)
        return len(self._until) < self.max_entries

    def add(self, keyid: str, nonce: str, until: float, now: float) -> bool:
        """Record a pair; False when it is already recorded (a replay) or the cache is full."""
        self._expire(now)
        key = (keyid, nonce)
        if key in self._until:
            return False
        if len(self._until) >= self.max_entries:
            return False
        self._until[key] = until
        heapq.heappush(self._heap, (until, key))
        return True

    def _expire(self, now: float) -> None:
        while self._heap and self._heap[0][0] < now:
            until, key = heapq.heappop(self._heap)
            if self._until.get(key) == until:
                del self._until[key]

    def __len__(self) -> int:
        return len(self._until)


# ---- the decision -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    status: int  # 200 let in, 401 no usable credentials, 403 not allowed, 503 replay cache full
    reason: str
    principal: str = ""  # "device:<key id>" or "apikey:<id>"

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: Mapping[str, str]  # names in lower case
    body: bytes


def credentials(headers: Mapping[str, str]) -> str:
    """Which kind of credentials a request carries: "apikey", "signature" or ""."""
    if "x-api-key" in headers or headers.get("authorization", "")[:7].lower() == "bearer ":
        return "apikey"
    if "signature-input" in headers or "signature" in headers:
        return "signature"
    return ""


def authenticate(req: Request, devices: Mapping[str, Device], api_keys: Mapping[str, ApiKey],
                 nonces: NonceStore, now: float, window_s: float = DEFAULT_WINDOW_S,
                 skew_s: float = DEFAULT_SKEW_S) -> Verdict:
    """Let ``req`` in or say why not (see the module text); records the nonce it accepts."""
    kind = credentials(req.headers)
    if kind == "apikey":
        return _api_key(req.headers, api_keys)
    if kind == "signature":
        return _signature(req, devices, nonces, now, window_s, skew_s)
    return Verdict(401, "this service needs credentials: a device signature (RFC 9421) or an API key "
                        "(Authorization: Bearer ...)")


def _api_key(headers: Mapping[str, str], api_keys: Mapping[str, ApiKey]) -> Verdict:
    auth = headers.get("authorization", "")
    key = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "").strip()
    if not key:
        return Verdict(401, "the API key is empty")
    found = api_keys.get(api_key_hash(key))
    if found is None:
        return Verdict(403, "unknown API key")
    if found.revoked:
        return Verdict(403, f"API key {found.id} is revoked")
    return Verdict(200, "api key", f"apikey:{found.id}")


def _signature(req: Request, devices: Mapping[str, Device], nonces: NonceStore, now: float,
               window_s: float, skew_s: float) -> Verdict:
    h = req.headers
    try:
        parsed = httpsig.parse(h.get("signature-input", ""), h.get("signature", ""))
    except SignatureError as exc:
        return Verdict(401, str(exc))
    if parsed.created < now - window_s:
        return Verdict(401, f"the signature was created {int(now - parsed.created)}s ago, over the "
                            f"{int(window_s)}s window: sign each request afresh (is the device clock right?)")
    if parsed.created > now + skew_s:
        return Verdict(401, "the signature was created in the future: is the device clock right?")
    if parsed.expires is not None and parsed.expires < now:
        return Verdict(401, "the signature has expired")
    if not 16 <= len(parsed.nonce) <= 128:
        return Verdict(401, "the signature nonce must be 16 to 128 characters")
    device = devices.get(parsed.keyid)
    if device is None:
        return Verdict(403, f"device key {parsed.keyid[:16]} is not enrolled")
    if device.revoked:
        return Verdict(403, f"device key {parsed.keyid[:16]} is revoked")
    digest = h.get("content-digest", "")
    if not httpsig.digest_matches(digest, req.body):
        return Verdict(401, "Content-Digest is missing or does not match the body")
    try:
        httpsig.verify(parsed, device.public, req.method, req.path, digest)
    except SignatureError as exc:
        return Verdict(401, str(exc))
    if not nonces.room(now):
        # Only verified signatures fill the cache, so this is real load, not an attack on it:
        # refusing for a moment beats forgetting nonces (which would let replays through).
        return Verdict(503, "too many signed requests within the replay window; retry shortly")
    if not nonces.add(parsed.keyid, parsed.nonce, parsed.created + window_s + skew_s, now):
        return Verdict(401, "this signature was already used (a replay): sign each request afresh")
    return Verdict(200, "device signature", f"device:{parsed.keyid}")


def sign_request(key: Ed25519PrivateKey, method: str, path: str, body: bytes, now: float) -> dict[str, str]:
    """The headers a device adds to one call (a fresh nonce each time)."""
    kid = identity_id(identity_raw(key.public_key()))
    return httpsig.sign(key, kid, method, path, body, int(now), secrets.token_urlsafe(18))

