"""The manifest of a sealed model (format ``bentoedge.sealed/1``): what it holds, and its bytes.

A manifest names the model, its version and release counter, its I/O signature, one entry
per encrypted artifact (with the SHA-256 and size of the ciphertext) and the quality
report.

Two forms of artifact entry exist under this one format id.  Format 1 binds the decrypted
bytes by ``plaintext_sha256``.  Format 1.1 adds ``encryption.segments_blake3``, the
commitment to the exact ciphertext (``bentos.aead``), which a reader checks instead.  The
new key sits inside ``encryption``, which readers of format 1 carry through verbatim, and
format 1.1 still records a true ``plaintext_sha256``.  So an agent from before 1.1 still
reads, checks and loads a 1.1 model its own way; only a newer reader takes the fast path.  Its canonical bytes (sorted keys, UTF-8, no insignificant whitespace) are what
``manifest.sig`` signs, so parsing is strict: unknown formats, missing fields and wrong
types are refused with a ``FormatError`` instead of being guessed at.

Pure: no I/O.  ``bentos.sealed`` reads and writes manifests; everything that decides what
a manifest means (which artifact a device or the cloud should load, whether a request fits
the signature) works on these dataclasses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bentoedge.bentos.channel_layout import ARTIFACTS, NAME_RE
from bentoedge.bentos.errors import FormatError

FORMAT_ID = "bentoedge.sealed/1"
TARGETS = ("edge", "cloud")
RUNTIMES = ("litert", "onnxruntime")
PRECISIONS = ("fp32", "fp16", "int8", "dynamic")
ENCRYPTION_SCHEME = "aes256gcm-stream/1"
SEAL_V1 = "1"  # artifacts bound by plaintext_sha256
SEAL_V11 = "1.1"  # artifacts bound by encryption.segments_blake3 (what new builds write)
SEAL_VERSIONS = (SEAL_V1, SEAL_V11)
COMMITMENT = "segments_blake3"  # the key of the 1.1 commitment inside ``encryption``
VERSION_RE = NAME_RE  # versions follow the name rule: both are path segments
DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")


def canonical_json(obj: Any) -> bytes:
    """The one byte form of a JSON value that signatures and hashes are computed on."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise FormatError(
            f"invalid model name {name!r}: use lowercase letters, digits, '.', '_' or '-' (max 64)"
        )
    return name


def check_version(version: str) -> str:
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise FormatError(
            f"invalid version {version!r}: use lowercase letters, digits, '.', '_' or '-' (max 64)"
        )
    return version


@dataclass(frozen=True)
class Quantization:
    """How an integer tensor of the artifact maps to the float32 the API speaks.

    ``real = (integer - zero_point) * scale``.  Recorded for models whose own inputs or
    outputs are integers (published quantized TFLite files): callers send and receive
    float32, and the runtime binding quantizes at the boundary.
    """

    dtype: str
    scale: float
    zero_point: int

    def to_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "scale": self.scale, "zero_point": self.zero_point}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Quantization:
        dtype, scale, zero = (
            _get(d, "dtype", str),
            _get(d, "scale", (int, float)),
            _get(d, "zero_point", int),
        )
        if dtype not in ("int8", "uint8", "int16") or not (scale > 0) or scale != scale:
            raise FormatError(
                f"quantization needs an int8/uint8/int16 dtype and a positive scale, got {dtype} {scale}"
            )
        return cls(dtype, float(scale), int(zero))


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output: dtype and shape, ``None`` for a dynamic dimension.

    ``dtype`` is what the API speaks; ``quantized``, when set, is the integer form the
    model itself holds (the manifest carries it only then, so older manifests read the same).
    """

    name: str
    dtype: str
    shape: tuple[int | None, ...]
    quantized: Quantization | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.quantized is not None:
            out["quantized"] = self.quantized.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorSpec:
        name, dtype, shape = _get(d, "name", str), _get(d, "dtype", str), _get(d, "shape", list)
        if dtype not in DTYPES:
            raise FormatError(f"tensor {name!r}: unsupported dtype {dtype!r}")
        if not all(
            s is None or (isinstance(s, int) and not isinstance(s, bool) and s >= 0) for s in shape
        ):
            raise FormatError(
                f"tensor {name!r}: shape entries must be non-negative integers or null"
            )
        quantized = Quantization.from_dict(_get(d, "quantized", dict)) if "quantized" in d else None
        if quantized is not None and dtype != "float32":
            raise FormatError(
                f"tensor {name!r}: a quantized tensor is float32 at the API, not {dtype}"
            )
        return cls(name, dtype, tuple(shape), quantized)


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    @property
    def per_call(self) -> bool:
        """True when an input is a scalar (rank 0), such as a sample rate beside a state tensor.

        Such a model has no samples axis that all its inputs share: data files then hold one
        call's arrays exactly as the model takes them, and nothing slices, stacks or chunks them.
        """
        return any(not t.shape for t in self.inputs)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Signature:
        ins = tuple(TensorSpec.from_dict(t) for t in _get(d, "inputs", list))
        outs = tuple(TensorSpec.from_dict(t) for t in _get(d, "outputs", list))
        for kind, specs in (("input", ins), ("output", outs)):
            names = [t.name for t in specs]
            if not names or len(set(names)) != len(names):
                raise FormatError(f"signature needs at least one {kind} and unique {kind} names")
        return cls(ins, outs)


@dataclass(frozen=True)
class Artifact:
    """One encrypted file of the sealed model."""

    id: str  # e.g. "edge-int8", "cloud-fp32", "golden"
    target: str  # "edge" | "cloud"
    runtime: str | None  # None for data (golden samples)
    precision: str | None
    file: str  # relative path, e.g. "artifacts/edge-int8.tflite.enc"
    size: int  # ciphertext bytes
    sha256: str  # of the ciphertext
    plaintext_sha256: str  # binds the decrypted bytes; format 1 readers check it after decryption
    encryption: Mapping[str, Any]  # {"scheme", "segment_size"[, "segments_blake3" (format 1.1)]}
    #: The SignatureDef a TFLite artifact is run through when its file holds several (the
    #: build's --signature); None for the usual one-signature or signature-less file.
    signature: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in asdict(self).items()}
        if out["signature"] is None:  # so manifests without one read and sign as before
            del out["signature"]
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Artifact:
        art = cls(
            id=_get(d, "id", str),
            target=_get(d, "target", str),
            runtime=_get(d, "runtime", (str, type(None))),
            precision=_get(d, "precision", (str, type(None))),
            file=_get(d, "file", str),
            size=_get(d, "size", int),
            sha256=_get(d, "sha256", str),
            plaintext_sha256=_get(d, "plaintext_sha256", str),
            encryption=_get(d, "encryption", dict),
            signature=_get(d, "signature", (str, type(None))) if "signature" in d else None,
        )
        if art.target not in TARGETS:
            raise FormatError(f"artifact {art.id!r}: target must be one of {TARGETS}")
        if art.runtime is not None and art.runtime not in RUNTIMES:
            raise FormatError(f"artifact {art.id!r}: runtime must be one of {RUNTIMES}")
        if art.precision is not None and art.precision not in PRECISIONS:
            raise FormatError(f"artifact {art.id!r}: precision must be one of {PRECISIONS}")
        if (
            not art.file.startswith(f"{ARTIFACTS}/")
            or ".." in art.file
            or "/" in art.file[len(ARTIFACTS) + 1 :]
        ):
            raise FormatError(f"artifact {art.id!r}: file must be a plain name under artifacts/")
        if art.encryption.get("scheme") != ENCRYPTION_SCHEME:
            raise FormatError(
                f"artifact {art.id!r}: unknown encryption scheme {art.encryption.get('scheme')!r}"
            )
        if not re.fullmatch(r"[0-9a-f]{64}", art.sha256) or not re.fullmatch(
            r"[0-9a-f]{64}", art.plaintext_sha256
        ):
            raise FormatError(f"artifact {art.id!r}: sha256 must be 64 lowercase hex digits")
        commitment = art.encryption.get(COMMITMENT)
        if COMMITMENT in art.encryption and not (
            isinstance(commitment, str) and re.fullmatch(r"[0-9a-f]{64}", commitment)
        ):
            raise FormatError(f"artifact {art.id!r}: {COMMITMENT} must be 64 lowercase hex digits")
        return art

    @property
    def is_model(self) -> bool:
        return self.runtime is not None

    @property
    def segments_blake3(self) -> str | None:
        """The format 1.1 commitment to the ciphertext, or None for a format 1 artifact."""
        value = self.encryption.get(COMMITMENT)
        return value if isinstance(value, str) else None

    @property
    def seal_version(self) -> str:
        return SEAL_V11 if self.segments_blake3 is not None else SEAL_V1


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    release: int
    created: str  # RFC 3339 UTC
    source: Mapping[str, Any]  # {"kind": "keras", "sha256": ...}
    signature: Signature
    artifacts: tuple[Artifact, ...]
    quality: Sequence[Mapping[str, Any]] = ()  # one row per quantized artifact, see bentos.quality
    golden: Mapping[str, Any] | None = (
        None  # {"artifact": "golden", "count": n, "tolerances": {...}}
    )
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_ID,
            "name": self.name,
            "version": self.version,
            "release": self.release,
            "created": self.created,
            "source": dict(self.source),
            "signature": self.signature.to_dict(),
            "artifacts": [a.to_dict() for a in self.artifacts],
            "quality": [dict(q) for q in self.quality],
            "golden": dict(self.golden) if self.golden is not None else None,
            "extra": dict(self.extra),
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        if not isinstance(d, Mapping):
            raise FormatError("manifest must be a JSON object")
        if d.get("format") != FORMAT_ID:
            raise FormatError(f"not a {FORMAT_ID} manifest (format is {d.get('format')!r})")
        release = _get(d, "release", int)
        if release < 0:
            raise FormatError("release counter must be non-negative")
        arts = tuple(Artifact.from_dict(a) for a in _get(d, "artifacts", list))
        ids = [a.id for a in arts]
        if len(set(ids)) != len(ids) or len({a.file for a in arts}) != len(arts):
            raise FormatError("artifact ids and files must be unique")
        golden = d.get("golden")
        if golden is not None and not isinstance(golden, dict):
            raise FormatError("manifest field 'golden' must be an object or null")
        return cls(
            name=check_name(_get(d, "name", str)),
            version=check_version(_get(d, "version", str)),
            release=release,
            created=_get(d, "created", str),
            source=_get(d, "source", dict),
            signature=Signature.from_dict(_get(d, "signature", dict)),
            artifacts=arts,
            quality=tuple(_get(d, "quality", list)),
            golden=golden,
            extra=d.get("extra") or {},
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FormatError(f"manifest is not valid UTF-8 JSON: {exc}") from None
        manifest = cls.from_dict(obj)
        if manifest.to_bytes() != data:
            raise FormatError(
                "manifest is not in canonical form (sorted keys, no whitespace); it was edited"
            )
        return manifest

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version}"

    def artifact(self, artifact_id: str) -> Artifact:
        for a in self.artifacts:
            if a.id == artifact_id:
                return a
        raise FormatError(f"{self.tag} has no artifact {artifact_id!r}")

    def models(self, target: str) -> list[Artifact]:
        return [a for a in self.artifacts if a.target == target and a.is_model]


def _get(d: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in d:
        raise FormatError(f"manifest field {key!r} is missing")
    value = d[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise FormatError(f"manifest field {key!r} has the wrong type")
    if not isinstance(value, kinds):
        raise FormatError(f"manifest field {key!r} has the wrong type")
    return value
