"""The update channel's wire format, written once: names, paths and the release record.

Three programs read and write the same bytes: ``bentos.sealed`` lays out a sealed model
folder, the publisher (``cloud.channel``) uploads that folder as TUF targets with a
release record in the ``manifest.json`` target's custom metadata, and the device
(``edge.sync``) parses that record and downloads the files again.  When each spelled the
layout itself the copies drifted, so everything about it lives here:

    <sealed dir>/manifest.json | manifest.sig | keys.json | artifacts/<id><suffix>.enc
    channel  metadata/<N>.root.json, metadata/<N>.<role>.json, metadata/timestamp.json
    channel  targets/<model>/<version>/<sha256>.<file>     (consistent snapshots)
    target   <model>/<version>/<file>, custom {"bentoedge": {...}}

``Release`` is the record; ``Release.from_custom`` is strict (exact JSON types, the
name rule, ranges) and raises ``FormatError``, because on the device its input is
signed but still remote data.  Unknown keys in the record are ignored so that a newer
publisher can add a field without every older device skipping every version.

Pure: no I/O and nothing beyond the standard library, because the device imports it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from bentoedge.bentos.errors import FormatError

# ---- the sealed model folder ---------------------------------------------------------------

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
KEYS = "keys.json"
ARTIFACTS = "artifacts"
ENCRYPTED_SUFFIX = ".enc"
#: The files without which a sealed folder (and so a published version) is incomplete.
REQUIRED_FILES = (MANIFEST, SIGNATURE, KEYS)
#: The enrolled-device registry (``bentos.auth``): a target of its own, signed like every
#: target.  The leading underscore keeps it out of every model's namespace (``NAME_RE``).
DEVICES_TARGET = "_bentoedge/devices.json"
#: The plaintext kind an artifact file name shows, by runtime (None: data, e.g. golden samples).
ARTIFACT_SUFFIX: Mapping[str | None, str] = MappingProxyType(
    {"litert": ".tflite", "onnxruntime": ".onnx", None: ".npz"})

#: A file a version may carry: the three fixed files or one plain name under artifacts/.
#: Anything else (a path with "/", "..", a hidden file) is refused before it is fetched.
FILE_RE = re.compile(
    "^(" + "|".join(re.escape(f) for f in REQUIRED_FILES)
    + "|" + re.escape(ARTIFACTS) + r"/[A-Za-z0-9][A-Za-z0-9._-]{0,127})\Z")  # \Z: "$" would let a trailing newline through


def artifact_file(artifact_id: str, runtime: str | None) -> str:
    """The relative file of an encrypted artifact, e.g. ``artifacts/edge-int8.tflite.enc``."""
    return f"{ARTIFACTS}/{artifact_id}{ARTIFACT_SUFFIX[runtime]}{ENCRYPTED_SUFFIX}"


# ---- names ---------------------------------------------------------------------------------

#: The rule for model names and versions: both become path segments of the channel and of
#: the device's state folder, so no '/', no '..', no upper case (case-insensitive disks).
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?\Z")


def valid_name(value: object) -> bool:
    """Whether ``value`` is a model name or version the channel can carry."""
    return isinstance(value, str) and NAME_RE.match(value) is not None


# ---- the public channel --------------------------------------------------------------------

METADATA_DIR = "metadata"
TARGETS_DIR = "targets"
TIMESTAMP_KEY = f"{METADATA_DIR}/timestamp.json"
_ROOT_KEY = re.compile(rf"^{METADATA_DIR}/(\d+)\.root\.json$")


def metadata_key(role: str, version: int) -> str:
    """The consistent-snapshot object of ``role`` at ``version`` (timestamp: ``TIMESTAMP_KEY``)."""
    return f"{METADATA_DIR}/{version}.{role}.json"


def root_version_of(key: str) -> int | None:
    """The version in a ``metadata/<N>.root.json`` key, None for any other key."""
    m = _ROOT_KEY.match(key)
    return int(m.group(1)) if m else None


def version_prefix(model: str, version: str) -> str:
    """The target folder of one version, with its trailing '/'."""
    return f"{model}/{version}/"


def target_path(model: str, version: str, file: str) -> str:
    """The TUF target path of ``file`` (relative to the sealed folder) of ``model:version``."""
    return version_prefix(model, version) + file


def is_manifest_target(path: str) -> bool:
    """Whether ``path`` names a version's manifest target, which carries the release record."""
    return path.endswith("/" + MANIFEST)


def hashed_name(path: str, sha256: str) -> str:
    """The consistent-snapshot file name ngclient downloads for target ``path``."""
    dirname, sep, base = path.rpartition("/")
    return f"{dirname}{sep}{sha256}.{base}"


def hashed_target_key(path: str, sha256: str) -> str:
    """The channel object (relative to the channel's root) holding target ``path``."""
    return f"{TARGETS_DIR}/{hashed_name(path, sha256)}"


# ---- the release record ----------------------------------------------------------------------

#: The key of the record inside a target's ``custom`` metadata.
CUSTOM_KEY = "bentoedge"


@dataclass(frozen=True)
class Release:
    """The decision data published with one model version (custom target metadata).

    The publisher writes it (``cloud.channel.repo``) and the device selects with it
    (``edge.sync.select``, which calls it a Candidate): one class, so both read the same.
    Construction checks it, so a Release that exists is one ``from_custom`` would accept.
    """

    model: str
    version: str
    release: int
    device_classes: tuple[str, ...] = ()  # empty: every class
    rollout: int = 100  # percent of devices (by stable cohort) that may take it
    min_agent: str = "0"
    pinned: bool = False
    files: tuple[str, ...] = ()  # target paths of the version's files
    #: The publisher declared that this version changes the API of the one before it: a device
    #: may swap it in behind a running endpoint only then (``bentos.api_compat``).
    breaking: bool = False

    def __post_init__(self) -> None:
        if not valid_name(self.model) or not valid_name(self.version):
            raise FormatError(f"invalid release record {self.model!r}:{self.version!r}: model and version must "
                              "be lowercase letters, digits, '.', '_' or '-' (max 64)")
        if not _is_int(self.release) or self.release < 0:
            raise FormatError(f"invalid release record {self.key}: the release counter must be a whole number >= 0")
        if not _is_int(self.rollout) or not 0 <= self.rollout <= 100:
            raise FormatError(f"invalid release record {self.key}: rollout must be a whole percentage 0..100")
        if not isinstance(self.min_agent, str) or not isinstance(self.pinned, bool) or not isinstance(self.breaking, bool):
            raise FormatError(f"invalid release record {self.key}: min_agent must be a string, pinned and breaking "
                              "booleans")
        for name, value in (("device_classes", self.device_classes), ("files", self.files)):
            if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
                raise FormatError(f"invalid release record {self.key}: {name} must be a list of strings")

    @property
    def key(self) -> str:
        return f"{self.model}:{self.version}"

    @property
    def manifest_path(self) -> str:
        return target_path(self.model, self.version, MANIFEST)

    def to_custom(self) -> dict[str, Any]:
        """The ``custom`` metadata of the version's manifest target."""
        return {CUSTOM_KEY: {"model": self.model, "version": self.version, "release": self.release,
                             "device_classes": list(self.device_classes), "rollout": self.rollout,
                             "min_agent": self.min_agent, "pinned": self.pinned, "files": list(self.files),
                             **({"breaking": True} if self.breaking else {})}}

    @classmethod
    def from_custom(cls, custom: object) -> Release:
        """Parse a target's ``custom`` metadata strictly; raises ``FormatError``, never guesses."""
        d = custom.get(CUSTOM_KEY) if isinstance(custom, Mapping) else None
        if not isinstance(d, Mapping):
            raise FormatError(f"channel target has malformed {CUSTOM_KEY} metadata: no {CUSTOM_KEY!r} object")
        missing = [k for k in ("model", "version", "release") if k not in d]
        if missing:
            raise FormatError(f"channel target has malformed {CUSTOM_KEY} metadata: lacks {', '.join(missing)}")
        return cls(model=d["model"], version=d["version"], release=d["release"],
                   device_classes=_strings(d.get("device_classes", []), "device_classes"),
                   rollout=d.get("rollout", 100), min_agent=d.get("min_agent", "0"),
                   pinned=d.get("pinned", False), files=_strings(d.get("files", []), "files"),
                   breaking=d.get("breaking", False))

    def relative_files(self) -> tuple[str, ...]:
        """``files`` relative to the version folder, checked against ``FILE_RE``.

        Refuses a record listing a file outside its version folder, or one lacking a
        required file, because the device writes these names into its state folder.
        """
        prefix = version_prefix(self.model, self.version)
        rels = []
        for path in self.files:
            rel = path[len(prefix):] if path.startswith(prefix) else ""
            if not FILE_RE.match(rel):
                raise FormatError(f"{self.key} lists a file {path!r} outside its version folder; refusing it")
            rels.append(rel)
        if not set(REQUIRED_FILES) <= set(rels):
            *first, last = REQUIRED_FILES
            raise FormatError(f"{self.key} lacks {', '.join(first)} or {last} on the channel")
        return tuple(rels)


def file_custom(model: str, version: str) -> dict[str, Any]:
    """The ``custom`` metadata of a version's other targets: which version they belong to."""
    return {CUSTOM_KEY: {"model": model, "version": version}}


def has_record(custom: object) -> bool:
    """Whether target metadata claims a release record at all (malformed or not)."""
    return isinstance(custom, Mapping) and CUSTOM_KEY in custom


def releases_in(targets: Mapping[str, Any]) -> tuple[list[Release], list[str]]:
    """The release records of a targets map (path -> TargetFile, or anything with ``custom``).

    Returns the records and one line per skipped entry: malformed, or published at a
    path other than the one its record names (which would let one version's files pose
    as another's).
    """
    out: list[Release] = []
    skipped: list[str] = []
    for path, tf in targets.items():
        custom = getattr(tf, "custom", None)
        if not is_manifest_target(path) or not has_record(custom):
            continue
        try:
            rel = Release.from_custom(custom)
        except FormatError as exc:
            skipped.append(f"{path}: {exc}")
            continue
        if path != rel.manifest_path:
            skipped.append(f"{path}: metadata names {rel.key}, which is not where it is published")
            continue
        out.append(rel)
    return out, skipped


def _is_int(value: object) -> bool:
    # bool is an int subclass, and JSON true must not pass for a release counter of 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _strings(value: object, name: str) -> tuple[str, ...]:
    # A bare string would iterate into characters ("pi" -> "p", "i"): only a list will do.
    if not isinstance(value, (list, tuple)):
        raise FormatError(f"channel target has malformed {CUSTOM_KEY} metadata: {name} must be a list")
    return tuple(value)
