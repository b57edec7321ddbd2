"""Properties of the streaming AEAD and of the manifest's canonical form (hypothesis).

Every property of the encrypted format holds for both seal versions: "1" decrypts with the
segment tags alone (its reader then checks the plaintext SHA-256), "1.1" on a thread pool
against the commitment of the genuine ciphertext (``aead.commit``)."""

from __future__ import annotations

import io
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bentoedge.bentos import aead
from bentoedge.bentos.errors import FormatError, IntegrityError
from bentoedge.bentos.manifest import Artifact, Manifest, Signature, TensorSpec, canonical_json

KEY = bytes(range(32))
SEGMENTS = st.sampled_from([64, 128, 256, 1024])
PLAIN = st.binary(min_size=0, max_size=3000)
VERSIONS = pytest.mark.parametrize("version", ["1", "1.1"])


def _commitment(version: str, genuine: bytes) -> str | None:
    return aead.commit(genuine) if version == "1.1" else None


def _decrypt(
    version: str, key: bytes, ct: bytes, ad: bytes = b"", genuine: bytes | None = None
) -> bytes:
    """``ct`` read as a reader of ``version`` reads it; 1.1 checks the commitment the
    manifest would sign, that of ``genuine`` (the ciphertext the sealer wrote)."""
    commitment = _commitment(version, ct if genuine is None else genuine)
    workers = 3 if version == "1.1" else 1
    return aead.decrypt(key, ct, ad, commitment=commitment, workers=workers)


def _decrypt_file(
    version: str, key: bytes, ct: bytes, ad: bytes = b"", genuine: bytes | None = None
) -> bytes:
    commitment = _commitment(version, ct if genuine is None else genuine)
    workers = 2 if version == "1.1" else 1
    return aead.decrypt_file(
        key, io.BytesIO(ct), len(ct), ad, commitment=commitment, workers=workers
    )


@VERSIONS
@settings(max_examples=80, deadline=None)
@given(PLAIN, SEGMENTS, st.binary(max_size=20))
def test_round_trip_any_length(version: str, plain: bytes, seg: int, ad: bytes) -> None:
    ct = aead.encrypt(KEY, plain, ad, seg)
    assert len(ct) == aead.ciphertext_size(len(plain), seg)
    assert bytes(_decrypt(version, KEY, ct, ad)) == plain
    assert bytes(_decrypt_file(version, KEY, ct, ad)) == plain
    assert aead.commit_file(io.BytesIO(ct), len(ct)) == aead.commit(ct)


@VERSIONS
@settings(max_examples=120, deadline=None)
@given(PLAIN, SEGMENTS, st.data())
def test_any_single_bit_flip_is_rejected(
    version: str, plain: bytes, seg: int, data: st.DataObject
) -> None:
    genuine = aead.encrypt(KEY, plain, b"ad", seg)
    ct = bytearray(genuine)
    bit = data.draw(st.integers(0, len(ct) * 8 - 1))
    ct[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(IntegrityError):
        _decrypt(version, KEY, bytes(ct), b"ad", genuine)
    with pytest.raises(IntegrityError):
        _decrypt_file(version, KEY, bytes(ct), b"ad", genuine)
    if (
        version == "1.1"
    ):  # the keyless check sees it too: the flipped file has another digest, or none
        try:
            assert aead.commit(bytes(ct)) != aead.commit(genuine)
        except IntegrityError:
            pass


@VERSIONS
@settings(max_examples=120, deadline=None)
@given(PLAIN, SEGMENTS, st.data())
def test_any_truncation_is_rejected(
    version: str, plain: bytes, seg: int, data: st.DataObject
) -> None:
    ct = aead.encrypt(KEY, plain, b"", seg)
    cut = data.draw(st.integers(0, len(ct) - 1))
    with pytest.raises(IntegrityError):
        _decrypt(version, KEY, ct[:cut], genuine=ct)
    with pytest.raises(IntegrityError):
        _decrypt_file(version, KEY, ct[:cut], genuine=ct)


@VERSIONS
@settings(max_examples=60, deadline=None)
@given(PLAIN, SEGMENTS, st.binary(min_size=1, max_size=200))
def test_any_extension_is_rejected(version: str, plain: bytes, seg: int, tail: bytes) -> None:
    ct = aead.encrypt(KEY, plain, b"", seg)
    with pytest.raises(IntegrityError):
        _decrypt(version, KEY, ct + tail, genuine=ct)
    with pytest.raises(IntegrityError):
        _decrypt_file(version, KEY, ct + tail, genuine=ct)


@VERSIONS
@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=64 * 3 + 1, max_size=64 * 8), st.data())
def test_segment_reorder_and_drop_are_rejected(
    version: str, plain: bytes, data: st.DataObject
) -> None:
    seg = 64
    ct = aead.encrypt(KEY, plain, b"", seg)
    body, full = ct[aead.HEADER_SIZE :], seg + aead.TAG_SIZE
    parts = [body[i : i + full] for i in range(0, len(body), full)]
    i, j = data.draw(
        st.tuples(st.integers(0, len(parts) - 1), st.integers(0, len(parts) - 1)).filter(
            lambda ij: ij[0] != ij[1]
        )
    )
    swapped = list(parts)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    with pytest.raises(IntegrityError):
        _decrypt(version, KEY, ct[: aead.HEADER_SIZE] + b"".join(swapped), genuine=ct)
    dropped = parts[:i] + parts[i + 1 :]
    with pytest.raises(IntegrityError):
        _decrypt(version, KEY, ct[: aead.HEADER_SIZE] + b"".join(dropped), genuine=ct)


@VERSIONS
@settings(max_examples=40, deadline=None)
@given(PLAIN, st.binary(max_size=16), st.binary(max_size=16))
def test_wrong_associated_data_or_key_is_rejected(
    version: str, plain: bytes, ad: bytes, other: bytes
) -> None:
    # another artifact's or model's associated data: a ciphertext moved there is refused
    ct = aead.encrypt(KEY, plain, ad, 64)
    if other != ad:
        with pytest.raises(IntegrityError):
            _decrypt(version, KEY, ct, other)
    with pytest.raises(IntegrityError):
        _decrypt(version, os.urandom(32), ct, ad)


@settings(max_examples=40, deadline=None)
@given(PLAIN, PLAIN, SEGMENTS)
def test_a_valid_ciphertext_under_the_same_key_but_not_the_committed_one_is_rejected(
    plain: bytes, other: bytes, seg: int
) -> None:
    genuine = aead.encrypt(KEY, plain, b"ad", seg)
    forged = aead.encrypt(KEY, other, b"ad", seg)  # what a holder of the data key can make
    assert bytes(aead.decrypt(KEY, forged, b"ad")) == other  # the tags alone accept it
    with pytest.raises(IntegrityError):
        _decrypt("1.1", KEY, forged, b"ad", genuine)
    with pytest.raises(IntegrityError):
        _decrypt_file("1.1", KEY, forged, b"ad", genuine)


def test_streaming_writer_matches_one_shot_length() -> None:
    plain = os.urandom(5000)
    out = io.BytesIO()
    n = aead.encrypt_stream(KEY, [plain[:1000], plain[1000:4097], plain[4097:]], out, b"x", 256)
    assert n == len(out.getvalue()) == aead.ciphertext_size(5000, 256)
    assert bytes(aead.decrypt(KEY, out.getvalue(), b"x")) == plain


# ---- manifest ----------------------------------------------------------------------------------

NAMES = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,10}[a-z0-9]", fullmatch=True)
DIMS = st.lists(st.one_of(st.none(), st.integers(0, 4096)), max_size=4).map(tuple)


def _artifact(i: int, sha: str, version: str = "1") -> Artifact:
    encryption: dict[str, object] = {"scheme": "aes256gcm-stream/1", "segment_size": 1024}
    if version == "1.1":
        encryption["segments_blake3"] = sha
    return Artifact(
        id=f"edge-{i}",
        target="edge",
        runtime="litert",
        precision="int8",
        file=f"artifacts/edge-{i}.tflite.enc",
        size=i,
        sha256=sha,
        plaintext_sha256=sha,
        encryption=encryption,
    )


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    ins = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
    outs = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
    sig = Signature(
        tuple(TensorSpec(n, "float32", draw(DIMS)) for n in ins),
        tuple(TensorSpec(n, "float32", draw(DIMS)) for n in outs),
    )
    sha = draw(st.from_regex(r"[0-9a-f]{64}", fullmatch=True))
    arts = tuple(
        _artifact(i, sha, draw(st.sampled_from(["1", "1.1"])))
        for i in range(draw(st.integers(0, 3)))
    )
    return Manifest(
        name=draw(NAMES),
        version=draw(NAMES),
        release=draw(st.integers(0, 10**6)),
        created="2024-01-01T00:00:00Z",
        source={"kind": "keras", "sha256": sha},
        signature=sig,
        artifacts=arts,
        quality=[{"artifact": "x", "value": draw(st.floats(0, 1))}],
        golden={"edge": None, "cloud": None, "count": 0, "tolerances": {}},
        extra={"note": draw(st.text(max_size=10))},
    )


@settings(max_examples=80, deadline=None)
@given(manifests())
def test_manifest_round_trip_is_canonical(m: Manifest) -> None:
    data = m.to_bytes()
    back = Manifest.from_bytes(data)
    assert back.to_bytes() == data
    assert [a.seal_version for a in back.artifacts] == [a.seal_version for a in m.artifacts]
    assert data == canonical_json(json.loads(data))
    pretty = json.dumps(json.loads(data), indent=1).encode()
    with pytest.raises(FormatError):
        Manifest.from_bytes(pretty)


@settings(max_examples=60, deadline=None)
@given(
    manifests(),
    st.sampled_from(["format", "name", "version", "release", "signature", "artifacts", "source"]),
)
def test_manifest_missing_or_wrong_fields_are_refused(m: Manifest, field: str) -> None:
    d = json.loads(m.to_bytes())
    del d[field]
    with pytest.raises(FormatError):
        Manifest.from_dict(d)
    d = json.loads(m.to_bytes())
    d[field] = True
    with pytest.raises(FormatError):
        Manifest.from_dict(d)


def test_manifest_rejects_bad_values() -> None:
    base = json.loads(
        Manifest(
            name="m",
            version="v1",
            release=1,
            created="t",
            source={},
            signature=Signature(
                (TensorSpec("x", "float32", (None, 2)),), (TensorSpec("y", "float32", (None,)),)
            ),
            artifacts=(_artifact(1, "a" * 64, "1.1"),),
        ).to_bytes()
    )
    for mutate in (
        lambda d: d.update(format="other/1"),
        lambda d: d.update(release=-1),
        lambda d: d.update(name="Bad Name"),
        lambda d: d["artifacts"][0].update(file="artifacts/../x"),
        lambda d: d["artifacts"][0].update(sha256="xyz"),
        lambda d: d["artifacts"][0]["encryption"].update(segments_blake3="A" * 64),
        lambda d: d["artifacts"][0]["encryption"].update(segments_blake3=None),
        lambda d: d["artifacts"].append(dict(d["artifacts"][0])),
        lambda d: d["signature"]["inputs"][0].update(dtype="complex64"),
    ):
        d = json.loads(json.dumps(base))
        mutate(d)
        with pytest.raises(FormatError):
            Manifest.from_dict(d)
    with pytest.raises(FormatError):
        Manifest.from_bytes(b"\xff")


def test_tensor_quantization_round_trips_and_bad_ones_are_refused() -> None:
    from bentoedge.bentos.errors import FormatError
    from bentoedge.bentos.manifest import Quantization, TensorSpec

    spec = TensorSpec("audio", "float32", (None, 40), Quantization("uint8", 0.5, 3))
    assert TensorSpec.from_dict(spec.to_dict()) == spec
    assert (
        "quantized" not in TensorSpec("x", "float32", (None,)).to_dict()
    )  # older manifests read the same
    for bad in (
        {"dtype": "int8", "scale": 0.0, "zero_point": 0},
        {"dtype": "float16", "scale": 1.0, "zero_point": 0},
        {"dtype": "int8", "scale": float("nan"), "zero_point": 0},
        {"dtype": "int8", "scale": 1.0},
    ):
        with pytest.raises(FormatError):
            TensorSpec.from_dict({**spec.to_dict(), "quantized": bad})
    with pytest.raises(FormatError):
        TensorSpec.from_dict({**spec.to_dict(), "dtype": "uint8"})
