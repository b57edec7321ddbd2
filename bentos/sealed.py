"""A sealed model on disk: write one atomically, open one, verify it, decrypt an artifact.

    <dir>/manifest.json      canonical JSON (bentos.manifest)
    <dir>/manifest.sig       Ed25519 over manifest.json (bentos.signing)
    <dir>/keys.json          data-key wraps per artifact (bentos.recipients); not signed,
                             because a wrap only opens what the signed hashes already pin
    <dir>/artifacts/*.enc    streaming AES-256-GCM ciphertext (bentos.aead)

The file names come from ``bentos.channel_layout``: a published version is this folder
as TUF targets, so the channel and the device spell them from the same place.

``seal`` builds the directory under a temporary name and renames it into place, so a
crash or a failed build leaves nothing that looks like a model.  ``SealedModel.decrypt``
reads the ciphertext once and decrypts it into a single in-memory buffer; plaintext never
reaches the disk.  What it checks depends on the artifact's seal version (``bentos.manifest``):

- 1.1 (what ``seal`` writes): the ciphertext against the signed ``segments_blake3``, hashed
  segment by segment on the threads that decrypt it (``aead.decrypt_file(commitment=...)``),
  so no pass over the plaintext is needed and a load costs little more than a plain read;
- 1 (models sealed before): the plaintext against the signed ``plaintext_sha256``, on a
  second thread while the first decrypts.

Both stop a holder of the data key who re-encrypts other bytes (a device holds its edge
keys).  ``verify_files`` (``bentoedge verify``, a device's verify stage) checks the
ciphertext SHA-256 of every artifact without a key, and for 1.1 the commitment as well,
in the same read.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bentoedge.bentos import aead
from bentoedge.bentos.channel_layout import ARTIFACTS, KEYS, MANIFEST, SIGNATURE, artifact_file
from bentoedge.bentos.errors import FormatError, IntegrityError
from bentoedge.bentos.keystore import fsync_dir
from bentoedge.bentos.manifest import (
    COMMITMENT,
    ENCRYPTION_SCHEME,
    SEAL_V11,
    SEAL_VERSIONS,
    Artifact,
    Manifest,
    Signature,
    check_name,
    check_version,
)
from bentoedge.bentos.recipients import (
    Keyring,
    Recipient,
    WrapContext,
    keys_document,
    parse_keys_document,
    wrap_for,
)
from bentoedge.bentos.signing import SignatureInfo, sign, verify_signature


@dataclass(frozen=True)
class Plain:
    """One artifact to seal: its plaintext (held in memory) and what it is."""

    id: str
    target: str
    data: bytes
    runtime: str | None = None
    precision: str | None = None
    signature: str | None = None  # a TFLite artifact's SignatureDef, when its file holds several


@dataclass(frozen=True)
class SealRequest:
    name: str
    version: str
    release: int
    source: Mapping[str, Any]
    signature: Signature
    artifacts: Sequence[Plain]
    quality: Sequence[Mapping[str, Any]] = ()
    golden: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    segment_size: int = aead.DEFAULT_SEGMENT_SIZE
    seal_version: str = SEAL_V11  # "1" writes the older form, for tests of old models


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def seal(
    req: SealRequest, out_dir: Path, recipients: Sequence[Recipient], signer: Ed25519PrivateKey
) -> Manifest:
    """Encrypt, wrap, describe and sign ``req`` into ``out_dir``, which must not exist yet."""
    check_name(req.name)
    check_version(req.version)
    if req.seal_version not in SEAL_VERSIONS:
        raise ValueError(f"seal version must be one of {SEAL_VERSIONS}, got {req.seal_version!r}")
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (tmp / ARTIFACTS).mkdir()
        entries, wraps = [], {}
        for plain in req.artifacts:
            entry, key = _encrypt_artifact(plain, tmp, req)
            wraps[plain.id] = wrap_for(
                recipients, plain.target, key, _ctx(req.name, req.version, entry)
            )
            entries.append(entry)
        manifest = Manifest(
            name=req.name,
            version=req.version,
            release=req.release,
            created=utc_now(),
            source=req.source,
            signature=req.signature,
            artifacts=tuple(entries),
            quality=tuple(req.quality),
            golden=req.golden,
            extra=req.extra,
        )
        body = manifest.to_bytes()
        _write(tmp / MANIFEST, body)
        _write(tmp / SIGNATURE, sign(signer, body).to_bytes())
        _write(tmp / KEYS, keys_document(wraps))
        fsync_dir(tmp / ARTIFACTS)
        fsync_dir(tmp)
        os.replace(tmp, out_dir)
        fsync_dir(out_dir.parent)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _ctx(name: str, version: str, art: Artifact) -> WrapContext:
    return WrapContext(name, version, art.id, art.sha256)


def _aad(name: str, version: str, artifact_id: str) -> bytes:
    return f"bentoedge/1|{name}|{version}|{artifact_id}".encode()


def _encrypt_artifact(plain: Plain, tmp: Path, req: SealRequest) -> tuple[Artifact, bytes]:
    key = os.urandom(aead.KEY_SIZE)
    file = artifact_file(plain.id, plain.runtime)
    ct = aead.encrypt(key, plain.data, _aad(req.name, req.version, plain.id), req.segment_size)
    _write(tmp / file, ct)
    encryption: dict[str, Any] = {"scheme": ENCRYPTION_SCHEME, "segment_size": req.segment_size}
    if req.seal_version == SEAL_V11:
        encryption[COMMITMENT] = aead.commit(ct)
    entry = Artifact(
        id=plain.id,
        target=plain.target,
        runtime=plain.runtime,
        precision=plain.precision,
        file=file,
        size=len(ct),
        sha256=hashlib.sha256(ct).hexdigest(),
        plaintext_sha256=hashlib.sha256(
            plain.data
        ).hexdigest(),  # kept in 1.1: readers of 1 check it
        encryption=encryption,
        signature=plain.signature,
    )
    return entry, key


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


BACKGROUND_HASH_MIN = 8 << 20


class _PlaintextHash:
    """SHA-256 over decrypted segments, in order, optionally on a worker thread (hashlib
    releases the GIL, so it overlaps with decrypting the next segment)."""

    def __init__(self, background: bool) -> None:
        self._hash = hashlib.sha256()
        self._pool = (
            ThreadPoolExecutor(1, thread_name_prefix="bentoedge-hash") if background else None
        )

    def update(self, segment: memoryview) -> None:
        if self._pool is None:
            self._hash.update(segment)
        else:  # one worker: updates run in submission order
            self._pool.submit(self._hash.update, segment)

    def finish(self) -> str:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        return self._hash.hexdigest()


@dataclass(frozen=True)
class SealedModel:
    """An opened (parsed, not yet verified) sealed model directory."""

    path: Path
    manifest: Manifest
    manifest_bytes: bytes
    signature_bytes: bytes

    @classmethod
    def open(cls, path: Path | str) -> SealedModel:
        path = Path(path)
        try:
            body = (path / MANIFEST).read_bytes()
        except FileNotFoundError:
            raise FormatError(f"{path} is not a sealed model (no {MANIFEST})") from None
        try:
            sig = (path / SIGNATURE).read_bytes()
        except FileNotFoundError:
            raise FormatError(
                f"{path} has no {SIGNATURE}; the model is unsigned or incomplete"
            ) from None
        return cls(path, Manifest.from_bytes(body), body, sig)

    def verify_signature(self, trusted: Mapping[str, bytes]) -> SignatureInfo:
        return verify_signature(self.manifest_bytes, self.signature_bytes, trusted)

    def verify_files(self, target: str | None = None) -> None:
        """Check size and SHA-256 of every artifact file (of ``target`` only, if given), and
        the ``segments_blake3`` commitment of a 1.1 artifact, in one read of each file."""
        for art in self.manifest.artifacts:
            if target is not None and art.target != target:
                continue
            path = self.path / art.file
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise IntegrityError(f"artifact {art.id!r} is missing ({art.file})") from None
            if size != art.size:
                raise IntegrityError(
                    f"artifact {art.id!r} has {size} bytes, the manifest says {art.size}"
                )
            h = hashlib.sha256()
            modified = IntegrityError(
                f"artifact {art.id!r} does not match its signed SHA-256; it was modified"
            )
            with open(path, "rb") as f:
                if art.segments_blake3 is None:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                    commitment = None
                else:
                    try:
                        commitment = aead.commit_file(f, size, hasher=h)
                    except IntegrityError:  # not even well-formed, so not the file that was sealed
                        raise modified from None
            if h.hexdigest() != art.sha256:
                raise modified
            if commitment != art.segments_blake3:
                raise IntegrityError(
                    f"artifact {art.id!r} does not match its signed segment digest; it was modified"
                )

    def verify(self, trusted: Mapping[str, bytes], target: str | None = None) -> SignatureInfo:
        info = self.verify_signature(trusted)
        self.verify_files(target)
        return info

    def wraps(self) -> dict[str, list[dict[str, str]]]:
        try:
            return parse_keys_document((self.path / KEYS).read_bytes())
        except FileNotFoundError:
            raise FormatError(f"{self.path} has no {KEYS}; it cannot be decrypted") from None

    def decrypt(self, artifact_id: str, keyring: Keyring, workers: int | None = None) -> bytes:
        """The plaintext of one artifact, in memory, checked against the signed manifest.

        Segment authentication catches any change to the ciphertext by someone without the
        data key.  Against someone with it (a device holds its edge keys), a 1.1 artifact's
        ciphertext must meet the signed commitment, hashed by the decrypting threads
        (``workers``, default: the usable cores, at most four).  A format 1 artifact's
        plaintext must hash to the signed ``plaintext_sha256``, on a second thread.
        """
        art = self.manifest.artifact(artifact_id)
        wraps = self.wraps().get(art.id, [])
        key = keyring.unwrap(wraps, _ctx(self.manifest.name, self.manifest.version, art))
        path = self.path / art.file
        aad = _aad(self.manifest.name, self.manifest.version, art.id)
        try:
            size = path.stat().st_size
            if size != art.size:
                raise IntegrityError(
                    f"artifact {art.id!r} has {size} bytes, the manifest says {art.size}"
                )
            if art.segments_blake3 is not None:
                with open(path, "rb", buffering=0) as f:
                    return aead.decrypt_file(
                        key,
                        f,
                        size,
                        aad,
                        commitment=art.segments_blake3,
                        workers=aead.default_workers() if workers is None else workers,
                    )
        except FileNotFoundError:
            raise IntegrityError(f"artifact {art.id!r} is missing ({art.file})") from None
        digest = _PlaintextHash(background=art.size > BACKGROUND_HASH_MIN)
        try:
            with open(path, "rb", buffering=0) as f:
                plain = aead.decrypt_file(key, f, size, aad, on_plaintext=digest.update)
        except FileNotFoundError:
            raise IntegrityError(f"artifact {art.id!r} is missing ({art.file})") from None
        finally:
            hexdigest = digest.finish()
        if hexdigest != art.plaintext_sha256:
            aead.wipe(plain)  # authentic under a key someone holds, but not what was signed
            raise IntegrityError(f"artifact {art.id!r} decrypted to bytes other than those signed")
        return plain

    def add_wraps(self, recipients: Sequence[Recipient], keyring: Keyring, target: str) -> int:
        """Wrap the data keys of ``target`` artifacts for more recipients (device enrollment)."""
        wraps = self.wraps()
        added = 0
        for art in self.manifest.artifacts:
            if art.target != target:
                continue
            ctx = _ctx(self.manifest.name, self.manifest.version, art)
            key = keyring.unwrap(wraps.get(art.id, []), ctx)
            have = {w.get("keyid") for w in wraps.get(art.id, [])}
            for r in recipients:
                if target in r.targets and r.keyid not in have:
                    wraps.setdefault(art.id, []).append(r.wrap(key, ctx))
                    added += 1
        if added:
            tmp = self.path / f".{KEYS}.tmp"
            _write(tmp, keys_document(wraps))
            os.replace(tmp, self.path / KEYS)
        return added
