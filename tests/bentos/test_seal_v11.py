"""Seal format 1.1: the signed manifest commits to the exact ciphertext (``segments_blake3``).

A holder of an artifact's data key (a device holds its edge keys) can make ciphertext
that the segment tags accept: other content encrypted afresh, or, since GHASH is linear
under a hash key the key holder knows, two blocks of a segment changed so that its tag
stays the same.  Each is refused by both seal versions: 1.1 by the commitment, 1 by the
plaintext SHA-256.  Models sealed before 1.1 (the committed ones under tests/edge/data)
still open, and ``bentoedge verify`` checks both versions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from bentoedge.bentos import aead
from bentoedge.bentos.errors import IntegrityError
from bentoedge.bentos.keystore import LocalKeys
from bentoedge.bentos.manifest import SEAL_VERSIONS, Manifest, Signature, TensorSpec
from bentoedge.bentos.recipients import KekRecipient, Keyring, WrapContext
from bentoedge.bentos.sealed import Plain, SealedModel, SealRequest, seal
from bentoedge.bentos.signing import sign

DATA = Path(__file__).resolve().parents[1] / "edge" / "data"
SEGMENT = 4096
VERSIONS = pytest.mark.parametrize("version", SEAL_VERSIONS)
SIG = Signature((TensorSpec("x", "float32", (None, 4)),), (TensorSpec("y", "float32", (None, 3)),))


def _seal(out: Path, home: Path, version: str | None, artifacts: dict[str, bytes]) -> SealedModel:
    """Seal ``artifacts`` as seal ``version`` (None: what a build writes by default)."""
    keys = LocalKeys(home)
    plains = [
        Plain(aid, "edge", data, "litert", aid.split("-")[1]) for aid, data in artifacts.items()
    ]
    req = SealRequest(
        "swap", "v1", 1, {"kind": "tflite", "sha256": "0" * 64}, SIG, plains, segment_size=SEGMENT
    )
    if version is not None:
        req = dataclasses.replace(req, seal_version=version)
    seal(req, out, [KekRecipient(keys.kek())], keys.signing_key())
    return SealedModel.open(out)


def _key(sealed: SealedModel, home: Path, artifact_id: str) -> bytes:
    art = sealed.manifest.artifact(artifact_id)
    ctx = WrapContext(sealed.manifest.name, sealed.manifest.version, art.id, art.sha256)
    return Keyring().add_kek(LocalKeys(home).kek()).unwrap(sealed.wraps()[art.id], ctx)


def _aad(sealed: SealedModel, artifact_id: str) -> bytes:  # the documented associated data
    return f"bentoedge/1|{sealed.manifest.name}|{sealed.manifest.version}|{artifact_id}".encode()


def _tags(ct: bytes) -> list[bytes]:
    full = SEGMENT + aead.TAG_SIZE
    ends = list(range(aead.HEADER_SIZE + full, len(ct), full)) + [len(ct)]
    return [ct[end - aead.TAG_SIZE : end] for end in ends]


def _gf_mult(x: int, y: int) -> int:
    """Multiplication in GCM's GF(2^128), bit-reflected as in NIST SP 800-38D."""
    r, z, v = 0xE1 << 120, 0, y
    for i in range(127, -1, -1):
        if (x >> i) & 1:
            z ^= v
        v = (v >> 1) ^ r if v & 1 else v >> 1
    return z


def _keep_tag_forgery(key: bytes, ct: bytes) -> bytes:
    """Change the first two ciphertext blocks of segment 0 so that its GHASH, hence its
    tag, is unchanged: with H = AES_K(0), block j counts as C_j * H^(m-j), so adding d to
    block 0 and d * H to block 1 adds d * H^(m) + d * H * H^(m-1) = 0."""
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    h = int.from_bytes(enc.update(bytes(16)) + enc.finalize(), "big")
    d0 = int.from_bytes(b"forged weights!!", "big")
    d1 = _gf_mult(d0, h)
    out = bytearray(ct)
    for offset, d in ((aead.HEADER_SIZE, d0), (aead.HEADER_SIZE + 16, d1)):
        block = int.from_bytes(out[offset : offset + 16], "big") ^ d
        out[offset : offset + 16] = block.to_bytes(16, "big")
    return bytes(out)


def _refused(sealed: SealedModel, home: Path, artifact_id: str) -> None:
    ring = Keyring().add_kek(LocalKeys(home).kek())
    with pytest.raises(IntegrityError):
        sealed.decrypt(artifact_id, ring)
    with pytest.raises(IntegrityError, match="modified"):
        sealed.verify_files()


def test_new_seals_write_v11_and_stay_readable_the_v1_way(tmp_path: Path, keys_home: Path) -> None:
    plain = os.urandom(10 * SEGMENT + 123)
    sealed = _seal(tmp_path / "m", keys_home, None, {"edge-fp32": plain})
    art = sealed.manifest.artifact("edge-fp32")
    ct = (sealed.path / art.file).read_bytes()
    assert art.seal_version == "1.1" and art.segments_blake3 == aead.commit(ct)
    ring = Keyring().add_kek(LocalKeys(keys_home).kek())
    for workers in (None, 1, 3):
        assert sealed.decrypt("edge-fp32", ring, workers=workers) == plain
    sealed.verify(LocalKeys(keys_home).trusted_signers())
    # A reader from before 1.1 parses this manifest to the same bytes (the commitment sits in
    # ``encryption``, which it carries verbatim) and checks plaintext_sha256, which still holds.
    doc = json.loads(sealed.manifest_bytes)
    assert Manifest.from_dict(doc).to_bytes() == sealed.manifest_bytes
    assert (
        hashlib.sha256(
            aead.decrypt(_key(sealed, keys_home, "edge-fp32"), ct, _aad(sealed, "edge-fp32"))
        ).hexdigest()
        == art.plaintext_sha256
    )


@VERSIONS
def test_a_ciphertext_reencrypted_under_the_same_key_is_refused(
    version: str, tmp_path: Path, keys_home: Path
) -> None:
    plain = os.urandom(6 * SEGMENT + 50)
    sealed = _seal(tmp_path / "m", keys_home, version, {"edge-fp32": plain})
    art = sealed.manifest.artifact("edge-fp32")
    path = sealed.path / art.file
    key, aad = _key(sealed, keys_home, art.id), _aad(sealed, art.id)
    genuine = path.read_bytes()
    prefix = aead.parse_header(genuine)[1]
    enc = aead.SegmentEncryptor(key, aad, SEGMENT, nonce_prefix=prefix)  # same key, header, nonces
    other = bytes(reversed(plain))
    forged = b"".join([enc.header, *enc.update(other), enc.finish()])
    assert (
        len(forged) == len(genuine) and aead.decrypt(key, forged, aad) == other
    )  # valid under the key
    path.write_bytes(forged)
    _refused(sealed, keys_home, art.id)


@VERSIONS
def test_a_forgery_that_keeps_every_segment_tag_is_refused(
    version: str, tmp_path: Path, keys_home: Path
) -> None:
    plain = os.urandom(5 * SEGMENT)
    sealed = _seal(tmp_path / "m", keys_home, version, {"edge-fp32": plain})
    art = sealed.manifest.artifact("edge-fp32")
    path = sealed.path / art.file
    key, aad = _key(sealed, keys_home, art.id), _aad(sealed, art.id)
    genuine = path.read_bytes()
    forged = _keep_tag_forgery(key, genuine)
    # A digest over the header and the tags would accept this file: every tag is the same,
    # and the segments still authenticate, to other weights.
    assert forged[: aead.HEADER_SIZE] == genuine[: aead.HEADER_SIZE] and _tags(forged) == _tags(
        genuine
    )
    changed = aead.decrypt(key, forged, aad)
    assert changed != plain and changed[32:] == plain[32:]
    path.write_bytes(forged)
    _refused(sealed, keys_home, art.id)


@VERSIONS
def test_a_ciphertext_moved_to_another_artifact_is_refused(
    version: str, tmp_path: Path, keys_home: Path
) -> None:
    size = 3 * SEGMENT + 9  # same sizes, so the size check does not decide
    sealed = _seal(
        tmp_path / "m",
        keys_home,
        version,
        {"edge-fp32": os.urandom(size), "edge-int8": os.urandom(size)},
    )
    a, b = (sealed.path / sealed.manifest.artifact(i).file for i in ("edge-fp32", "edge-int8"))
    shutil.copyfile(a, b)
    _refused(sealed, keys_home, "edge-int8")


def test_verify_and_decrypt_check_the_signed_commitment(tmp_path: Path, keys_home: Path) -> None:
    """The file is genuine and matches its SHA-256, but the (re-signed) manifest commits to
    other ciphertext: both the keyless check and the load refuse, so neither skips it."""
    sealed = _seal(tmp_path / "m", keys_home, "1.1", {"edge-fp32": os.urandom(2 * SEGMENT)})
    doc = json.loads(sealed.manifest_bytes)
    doc["artifacts"][0]["encryption"]["segments_blake3"] = aead.commit(
        aead.encrypt(os.urandom(32), b"x")
    )
    body = Manifest.from_dict(doc).to_bytes()
    (sealed.path / "manifest.json").write_bytes(body)
    (sealed.path / "manifest.sig").write_bytes(
        sign(LocalKeys(keys_home).signing_key(), body).to_bytes()
    )
    resealed = SealedModel.open(sealed.path)
    resealed.verify_signature(LocalKeys(keys_home).trusted_signers())
    with pytest.raises(IntegrityError, match="segment digest"):
        resealed.verify_files()
    with pytest.raises(IntegrityError, match="not the ciphertext its manifest signs"):
        resealed.decrypt("edge-fp32", Keyring().add_kek(LocalKeys(keys_home).kek()))


def test_a_v1_sealed_model_still_opens(tmp_path: Path) -> None:
    """tests/edge/data/sealed/tiny-1 was sealed in format 1, before 1.1 existed."""
    sealed = SealedModel.open(DATA / "sealed" / "tiny-1")
    assert {a.seal_version for a in sealed.manifest.artifacts} == {"1"}
    sealed.verify(LocalKeys(DATA).trusted_signers())
    ring = Keyring().add_kek(LocalKeys(DATA).kek())
    assert sealed.decrypt("edge-fp32", ring) == (DATA / "tiny.tflite").read_bytes()
    copy = tmp_path / "tiny-1"
    shutil.copytree(sealed.path, copy)
    art = sealed.manifest.artifact("edge-fp32")
    (copy / art.file).write_bytes(
        _keep_tag_forgery(_key(sealed, DATA, art.id), (copy / art.file).read_bytes())
    )
    with pytest.raises(
        IntegrityError, match="other than those signed"
    ):  # the plaintext SHA-256 catches it
        SealedModel.open(copy).decrypt("edge-fp32", ring)


@VERSIONS
def test_bentoedge_verify_checks_both_versions(
    version: str, tmp_path: Path, keys_home: Path
) -> None:
    from bentoedge.cli import cli as root

    def verify() -> Any:
        return CliRunner().invoke(root, ["verify", str(tmp_path / "m")], catch_exceptions=False)

    plain = os.urandom(4 * SEGMENT + 1)
    sealed = _seal(tmp_path / "m", keys_home, version, {"edge-fp32": plain})
    ok = verify()
    assert ok.exit_code == 0 and ok.output.startswith("ok: swap:v1"), ok.output
    art = sealed.manifest.artifact("edge-fp32")
    path = sealed.path / art.file
    path.write_bytes(_keep_tag_forgery(_key(sealed, keys_home, art.id), path.read_bytes()))
    bad = verify()
    assert (
        bad.exit_code == 1
        and "modified" in bad.output
        and len(bad.output.strip().splitlines()) == 1
    )
