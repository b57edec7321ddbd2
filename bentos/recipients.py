"""Who can read an artifact: wrapping each artifact's data key for its recipients.

Every artifact has its own random 256-bit data key.  The key is wrapped once per
recipient, and the wraps live in ``keys.json`` beside the signed manifest rather than
inside it: enrolling a new device adds a wrap without re-signing the model, and a wrap
cannot be moved to another artifact because each is bound to a context string
(model name, version, artifact id, ciphertext hash).

Recipients:
- ``kek``: a local 256-bit key-encryption key, AES-256-GCM (laptops, tests, the demo);
  reads edge and cloud artifacts.
- ``kms``: an AWS KMS key; ``Encrypt``/``Decrypt`` with an encryption context binding
  name, version and artifact.  Cloud artifacts only.
- ``x25519``: a device's or a fleet group's public key, by RFC 9180 HPKE
  (DHKEM-X25519, HKDF-SHA256, AES-256-GCM) with the context as ``info``.  Edge only.

A ``Keyring`` holds what one process can unwrap with.  boto3 is imported only when a KMS
wrap is actually made or opened, so devices never need it.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bentoedge.bentos.errors import DecryptionError, KeyMissingError
from bentoedge.bentos.manifest import canonical_json

KEYS_FORMAT = "bentoedge.keys/1"
_HPKE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def wrap_context(name: str, version: str, artifact_id: str, sha256: str) -> bytes:
    return f"bentoedge/1|{name}|{version}|{artifact_id}|{sha256}".encode()


def kms_context(name: str, version: str, artifact_id: str) -> dict[str, str]:
    return {"bentoedge:model": name, "bentoedge:version": version, "bentoedge:artifact": artifact_id}


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s.encode(), validate=True)


def kek_id(kek: bytes) -> str:
    return hashlib.sha256(b"bentoedge-kek" + kek).hexdigest()[:16]


def x25519_raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def x25519_id(public: X25519PublicKey) -> str:
    return hashlib.sha256(x25519_raw(public)).hexdigest()[:16]


@dataclass(frozen=True)
class WrapContext:
    name: str
    version: str
    artifact_id: str
    sha256: str

    @property
    def aad(self) -> bytes:
        return wrap_context(self.name, self.version, self.artifact_id, self.sha256)


class Recipient(Protocol):
    @property
    def kind(self) -> str: ...

    @property
    def keyid(self) -> str: ...

    @property
    def targets(self) -> tuple[str, ...]: ...

    def wrap(self, data_key: bytes, ctx: WrapContext) -> dict[str, str]: ...


@dataclass(frozen=True)
class KekRecipient:
    kek: bytes
    kind: str = "kek"
    targets: tuple[str, ...] = ("edge", "cloud")

    @property
    def keyid(self) -> str:
        return kek_id(self.kek)

    def wrap(self, data_key: bytes, ctx: WrapContext) -> dict[str, str]:
        nonce = os.urandom(12)
        ct = AESGCM(self.kek).encrypt(nonce, data_key, ctx.aad)
        return {"type": "kek", "keyid": self.keyid, "nonce": _b64(nonce), "wrapped": _b64(ct)}


@dataclass(frozen=True)
class X25519Recipient:
    public: X25519PublicKey
    label: str = ""
    kind: str = "x25519"
    targets: tuple[str, ...] = ("edge",)

    @property
    def keyid(self) -> str:
        return x25519_id(self.public)

    def wrap(self, data_key: bytes, ctx: WrapContext) -> dict[str, str]:
        ct = _HPKE.encrypt(data_key, self.public, info=ctx.aad)
        wrap = {"type": "x25519", "keyid": self.keyid, "wrapped": _b64(ct)}
        if self.label:  # a build's own note; the channel publishes wraps without one
            wrap["label"] = self.label
        return wrap


@dataclass(frozen=True)
class KmsRecipient:
    key_arn: str
    client_factory: Callable[[], Any] = field(default=lambda: _kms_client(), compare=False)
    kind: str = "kms"
    targets: tuple[str, ...] = ("cloud",)

    @property
    def keyid(self) -> str:
        return self.key_arn

    def wrap(self, data_key: bytes, ctx: WrapContext) -> dict[str, str]:
        try:
            resp = self.client_factory().encrypt(
                KeyId=self.key_arn, Plaintext=data_key,
                EncryptionContext=kms_context(ctx.name, ctx.version, ctx.artifact_id))
        except Exception as exc:  # botocore raises many kinds; all mean the same to the user
            raise KeyMissingError(f"KMS could not wrap the data key with {self.key_arn}: {exc}") from None
        return {"type": "kms", "keyid": self.key_arn, "wrapped": _b64(resp["CiphertextBlob"])}


def _kms_client() -> Any:
    try:
        import boto3
    except ImportError:
        raise KeyMissingError("a kms recipient needs boto3: pip install 'bentoedge[cloud]'") from None
    return boto3.client("kms")


def load_x25519_public(data: bytes) -> X25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise KeyMissingError("not a PEM public key; expected an X25519 key from 'bentoedge agent init'") from None
    if not isinstance(key, X25519PublicKey):
        raise KeyMissingError("the public key is not an X25519 key (device keys come from 'bentoedge agent init')")
    return key


def wrap_for(recipients: Sequence[Recipient], target: str, data_key: bytes, ctx: WrapContext) -> list[dict[str, str]]:
    """Wrap ``data_key`` for every recipient allowed to read ``target`` artifacts."""
    chosen = [r for r in recipients if target in r.targets]
    if not chosen:
        kinds = ", ".join(sorted({r.kind for r in recipients})) or "none"
        raise KeyMissingError(
            f"no recipient may read the {target} artifact (given: {kinds}); "
            f"add --recipient kek, or {'x25519:PUBFILE' if target == 'edge' else 'kms:ARN'}"
        )
    return [r.wrap(data_key, ctx) for r in chosen]


@dataclass
class Keyring:
    """The keys one process holds for unwrapping; empty by default."""

    keks: dict[str, bytes] = field(default_factory=dict)
    x25519: dict[str, X25519PrivateKey] = field(default_factory=dict)
    kms_client_factory: Callable[[], Any] | None = None

    def add_kek(self, kek: bytes) -> Keyring:
        self.keks[kek_id(kek)] = kek
        return self

    def add_x25519(self, key: X25519PrivateKey) -> Keyring:
        self.x25519[x25519_id(key.public_key())] = key
        return self

    def unwrap(self, wraps: Sequence[Mapping[str, str]], ctx: WrapContext) -> bytes:
        """Return the data key from the first wrap we can open; DecryptionError otherwise."""
        tried: list[str] = []
        for w in wraps:
            kind, keyid = w.get("type"), w.get("keyid", "")
            try:
                if kind == "kek" and keyid in self.keks:
                    tried.append(f"kek {keyid}")
                    return AESGCM(self.keks[keyid]).decrypt(_unb64(w["nonce"]), _unb64(w["wrapped"]), ctx.aad)
                if kind == "x25519" and keyid in self.x25519:
                    tried.append(f"x25519 {keyid}")
                    return _HPKE.decrypt(_unb64(w["wrapped"]), self.x25519[keyid], info=ctx.aad)
                if kind == "kms" and self.kms_client_factory is not None:
                    tried.append(f"kms {keyid}")
                    resp = self.kms_client_factory().decrypt(
                        CiphertextBlob=_unb64(w["wrapped"]), KeyId=keyid,
                        EncryptionContext=kms_context(ctx.name, ctx.version, ctx.artifact_id))
                    return bytes(resp["Plaintext"])
            except (InvalidTag, ValueError, KeyError):
                continue
            except Exception as exc:  # KMS access denied, network, wrong context
                tried[-1] += f" ({type(exc).__name__})"
                continue
        held = [f"kek {k}" for k in self.keks] + [f"x25519 {k}" for k in self.x25519]
        if self.kms_client_factory is not None:
            held.append("kms")
        raise DecryptionError(
            f"cannot unwrap the key of artifact {ctx.artifact_id!r}: "
            + (f"tried {', '.join(tried)} and each failed (wrong key or tampered wrap)" if tried
               else f"it is wrapped for {', '.join(sorted({str(w.get('type')) + ' ' + str(w.get('keyid')) for w in wraps})) or 'nobody'}"
                    f" but this process holds {', '.join(held) or 'no keys'}")
        )


def keys_document(wraps: Mapping[str, list[dict[str, str]]]) -> bytes:
    return canonical_json({"format": KEYS_FORMAT, "wraps": {k: list(v) for k, v in wraps.items()}})


def parse_keys_document(data: bytes) -> dict[str, list[dict[str, str]]]:
    import json

    try:
        doc = json.loads(data.decode("utf-8"))
        if doc.get("format") != KEYS_FORMAT or not isinstance(doc.get("wraps"), dict):
            raise ValueError("not a bentoedge keys document")
        return {str(k): [dict(w) for w in v] for k, v in doc["wraps"].items()}
    except (ValueError, AttributeError, TypeError, UnicodeDecodeError) as exc:
        raise DecryptionError(f"keys.json is malformed ({exc})") from None
