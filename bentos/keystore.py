"""Local key files under ``$BENTOEDGE_HOME/keys``: the signing key, the KEK, trusted signers.

    keys/signing.key   Ed25519 private key, PEM (0600)
    keys/signing.pub   its public key, PEM
    keys/kek.key       256-bit key-encryption key, hex (0600)
    keys/trusted/*.pub other signers' public keys that ``verify`` accepts

``keys init`` never overwrites an existing key: losing a KEK loses every model sealed for
it.  Files are written to a temporary name, fsynced, then renamed, so a crash leaves
either no key or a whole one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bentoedge.bentos.errors import KeyMissingError
from bentoedge.bentos.recipients import (
    KekRecipient,
    KmsRecipient,
    Recipient,
    X25519Recipient,
    kek_id,
    load_x25519_public,
)
from bentoedge.bentos.signing import key_id, raw_public


def default_home(env: Mapping[str, str] = os.environ) -> Path:
    return Path(env.get("BENTOEDGE_HOME") or Path.home() / ".bentoedge")


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically with ``mode``, fsyncing file and folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class KeyIds:
    signing: str
    kek: str
    created: tuple[str, ...]


@dataclass(frozen=True)
class LocalKeys:
    home: Path

    @property
    def dir(self) -> Path:
        return self.home / "keys"

    def init(self) -> KeyIds:
        created = []
        sk_path, pk_path, kek_path = self.dir / "signing.key", self.dir / "signing.pub", self.dir / "kek.key"
        if not sk_path.exists():
            sk = Ed25519PrivateKey.generate()
            write_private(sk_path, sk.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
            created.append("signing.key")
        if not pk_path.exists() or "signing.key" in created:
            write_private(pk_path, self.signing_key().public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), mode=0o644)
        if not kek_path.exists():
            write_private(kek_path, os.urandom(32).hex().encode() + b"\n")
            created.append("kek.key")
        return KeyIds(key_id(self.signing_key().public_key()), kek_id(self.kek()), tuple(created))

    def signing_key(self) -> Ed25519PrivateKey:
        path = self.dir / "signing.key"
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except FileNotFoundError:
            raise KeyMissingError(f"no signing key at {path}; run 'bentoedge keys init' first") from None
        except ValueError:
            raise KeyMissingError(f"{path} is not a PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyMissingError(f"{path} is not an Ed25519 key")
        return key

    def kek(self) -> bytes:
        path = self.dir / "kek.key"
        try:
            kek = bytes.fromhex(path.read_text().strip())
        except FileNotFoundError:
            raise KeyMissingError(f"no KEK at {path}; run 'bentoedge keys init' first") from None
        except ValueError:
            raise KeyMissingError(f"{path} is not a hex-encoded key") from None
        if len(kek) != 32:
            raise KeyMissingError(f"{path} must hold a 256-bit key (64 hex digits)")
        return kek

    def trusted_signers(self) -> dict[str, bytes]:
        """Key id -> raw Ed25519 public key for our own key and every trusted/*.pub."""
        trusted: dict[str, bytes] = {}
        files = sorted((self.dir / "trusted").glob("*.pub")) + [self.dir / "signing.pub"]
        for path in files:
            if path.exists():
                raw = load_ed25519_public(path.read_bytes(), str(path))
                trusted[key_id(raw)] = raw
        return trusted

    def trust(self, pub_pem: bytes) -> str:
        raw = load_ed25519_public(pub_pem, "the given file")
        kid = key_id(raw)
        write_private(self.dir / "trusted" / f"{kid}.pub", pub_pem, mode=0o644)
        return kid


def load_ed25519_public(data: bytes, where: str) -> bytes:
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise KeyMissingError(f"{where} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyMissingError(f"{where} is not an Ed25519 public key")
    return raw_public(key)


def parse_recipient(spec: str, keys: LocalKeys) -> Recipient:
    """``kek`` | ``kek:PATH`` | ``kms:ARN`` | ``x25519:PUBFILE`` -> a Recipient."""
    kind, _, arg = spec.partition(":")
    if kind == "kek":
        if not arg:
            return KekRecipient(keys.kek())
        try:
            kek = bytes.fromhex(Path(arg).read_text().strip())
        except (OSError, ValueError):
            raise KeyMissingError(f"recipient {spec!r}: cannot read a hex KEK from {arg}") from None
        if len(kek) != 32:
            raise KeyMissingError(f"recipient {spec!r}: a KEK must be 256 bits (64 hex digits)")
        return KekRecipient(kek)
    if kind == "kms":
        if not arg.startswith(("arn:", "alias/")) and len(arg) < 8:
            raise KeyMissingError(f"recipient {spec!r}: give a KMS key ARN, id or alias, e.g. kms:arn:aws:kms:...")
        return KmsRecipient(arg)
    if kind == "x25519":
        try:
            data = Path(arg).read_bytes()
        except OSError:
            raise KeyMissingError(f"recipient {spec!r}: cannot read public key file {arg!r}") from None
        return X25519Recipient(load_x25519_public(data), label=Path(arg).stem)
    raise KeyMissingError(f"unknown recipient {spec!r}: use kek, kek:PATH, kms:ARN or x25519:PUBFILE")
