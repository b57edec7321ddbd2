"""Ed25519 signatures over manifest bytes: ``manifest.sig`` and the trust decision.

A signature file names the algorithm, the signer's key id and public key, and the
signature.  Carrying the public key lets ``inspect`` say who signed without any key
installed; ``verify_signature`` then accepts it only when that key id is in the caller's
trusted set, so a model re-signed by anybody else fails as "untrusted signer".

Pure: keys and bytes in, a result or a ``SignatureError`` out.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bentoedge.bentos.errors import SignatureError
from bentoedge.bentos.manifest import canonical_json

ALG = "ed25519"


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: Ed25519PublicKey | bytes) -> str:
    raw = public if isinstance(public, bytes) else raw_public(public)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class SignatureInfo:
    alg: str
    keyid: str
    public_key: bytes
    sig: bytes

    def to_bytes(self) -> bytes:
        return canonical_json({"alg": self.alg, "keyid": self.keyid,
                               "public_key": self.public_key.hex(), "sig": self.sig.hex()})

    @classmethod
    def from_bytes(cls, data: bytes) -> SignatureInfo:
        try:
            d = json.loads(data.decode("utf-8"))
            if not isinstance(d, Mapping) or d.get("alg") != ALG:
                raise ValueError("unknown algorithm")
            info = cls(d["alg"], str(d["keyid"]), bytes.fromhex(d["public_key"]), bytes.fromhex(d["sig"]))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise SignatureError(f"manifest.sig is malformed ({exc}); the model was damaged or tampered with") from None
        if len(info.public_key) != 32 or len(info.sig) != 64 or key_id(info.public_key) != info.keyid:
            raise SignatureError("manifest.sig is malformed (key id does not match its public key)")
        return info


def sign(private: Ed25519PrivateKey, message: bytes) -> SignatureInfo:
    public = raw_public(private.public_key())
    return SignatureInfo(ALG, key_id(public), public, private.sign(message))


def verify_signature(message: bytes, sig_bytes: bytes, trusted: Mapping[str, bytes]) -> SignatureInfo:
    """Check ``sig_bytes`` over ``message`` against ``trusted`` (key id -> raw public key)."""
    info = SignatureInfo.from_bytes(sig_bytes)
    try:
        Ed25519PublicKey.from_public_bytes(info.public_key).verify(info.sig, message)
    except InvalidSignature:
        raise SignatureError("manifest signature does not match the manifest: it was modified after signing") from None
    known = trusted.get(info.keyid)
    if known is None or known != info.public_key:
        raise SignatureError(
            f"manifest is signed by key {info.keyid}, which is not trusted here; "
            "add the signer's public key (bentoedge keys trust FILE) if you expect it"
        )
    return info
