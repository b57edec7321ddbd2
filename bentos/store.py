"""Sealed models in the BentoML model store, and their one-file export form.

A sealed model is stored as a BentoML model (``bentoml models list`` shows it, and a
Bento can depend on it with ``BentoModel``); its sealed directory sits in the model's
folder as ``sealed/``.  BentoML discards a model whose creation raised, and ``seal``
renames a finished directory into place, so a failed build leaves no partial model.

The export form is an uncompressed tar of the sealed directory (ciphertext does not
compress).  Import unpacks into a temporary folder, verifies signature and hashes, and
only then adds the model to the store.

BentoML is imported lazily: inspecting an exported file needs no BentoML.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bentoedge.bentos.errors import (
    FormatError,
    IntegrityError,
    NotFoundError,
    SourceError,
    UsageError,
)
from bentoedge.bentos.manifest import FORMAT_ID, Manifest
from bentoedge.bentos.sealed import SealedModel

SEALED_DIR = "sealed"
EXPORT_SUFFIX = ".sealed"
LABEL = "bentoedge-format"


def _bentoml() -> Any:
    try:
        import bentoml
    except ImportError:
        # A device install has no model store: say that, not "no model 'x' in the store".
        raise UsageError("the model store is BentoML's, which this install lacks: pip install 'bentoedge[cloud]', "
                         "or give a sealed folder or an exported .sealed file instead of NAME:VERSION") from None
    return bentoml


def split_tag(tag: str) -> tuple[str, str | None]:
    name, _, version = tag.partition(":")
    return name, (version or None) if version != "latest" else None


def sealed_path_of(bento_model: Any) -> Path:
    """The sealed directory inside a BentoML model (a ``bentoml.Model`` or ``BentoModel``)."""
    path = Path(bento_model.path if hasattr(bento_model, "path") else bento_model.stored.path)
    return path / SEALED_DIR


class ModelStore:
    """Sealed models kept in the BentoML model store of this process's ``BENTOML_HOME``."""

    def _models(self, name: str | None = None) -> list[Any]:
        bentoml = _bentoml()
        try:
            models = bentoml.models.list(name) if name else bentoml.models.list()
        except Exception:  # bentoml raises NotFound for an unknown name
            return []
        return [m for m in models if m.info.labels.get(LABEL) == FORMAT_ID]

    def get(self, tag: str) -> SealedModel:
        """``name`` (newest release) or ``name:version``."""
        name, version = split_tag(tag)
        candidates = self._models(name)
        if version is not None:
            candidates = [m for m in candidates if m.tag.version == version]
        if not candidates:
            have = ", ".join(sorted(str(m.tag) for m in self._models())) or "none"
            raise NotFoundError(f"no sealed model {tag!r} in the store (have: {have}); build or import it first")
        best = max(candidates, key=lambda m: int(m.info.metadata.get("release", 0)))
        return SealedModel.open(sealed_path_of(best))

    def list(self) -> list[Manifest]:
        out = []
        for m in self._models():
            try:
                out.append(SealedModel.open(sealed_path_of(m)).manifest)
            except FormatError:
                continue
        return sorted(out, key=lambda man: (man.name, man.release))

    def next_release(self, name: str) -> int:
        return 1 + max((int(m.info.metadata.get("release", 0)) for m in self._models(name)), default=0)

    def exists(self, name: str, version: str) -> bool:
        return any(m.tag.version == version for m in self._models(name))

    def add(self, name: str, version: str, release: int, write: Callable[[Path], Manifest],
            clash_hint: str = "pick another --version") -> SealedModel:
        """Create ``name:version`` by calling ``write(sealed_dir)``; nothing stays if it raises."""
        if self.exists(name, version):
            raise FormatError(f"{name}:{version} is already in the store; {clash_hint}")
        bentoml = _bentoml()
        with bentoml.models.create(f"{name}:{version}", labels={LABEL: FORMAT_ID},
                                   metadata={"release": release}) as model:
            manifest = write(sealed_path_of(model))
        del manifest
        return self.get(f"{name}:{version}")

    def delete(self, tag: str) -> None:
        sealed = self.get(tag)
        _bentoml().models.delete(sealed.manifest.tag)

    def import_file(self, file: Path, check: Callable[[SealedModel], None]) -> SealedModel:
        """Unpack an export, ``check`` it (signature, hashes), then add it to the store."""
        with unpacked(file) as sealed:
            check(sealed)
            m = sealed.manifest
            # An export carries its own signed version: the way out of a clash is the store's copy.
            return self.add(m.name, m.version, m.release, lambda dst: _copy_sealed(sealed.path, dst, m),
                            clash_hint=f"it is already imported (bentoedge inspect {m.name}:{m.version}); "
                                       f"remove that copy first with 'bentoml models delete {m.name}:{m.version}'")


def _copy_sealed(src: Path, dst: Path, manifest: Manifest) -> Manifest:
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copytree(src, tmp)
    tmp.rename(dst)
    return manifest


def export_file(sealed: SealedModel, out: Path, progress: Callable[[int], None] | None = None) -> Path:
    """Write ``sealed`` as one tar file at ``out`` (written aside, then renamed)."""
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(sealed.path.rglob("*")):
                if path.is_file() and not path.name.startswith("."):
                    tar.add(path, arcname=str(path.relative_to(sealed.path)), recursive=False)
                    if progress:
                        progress(path.stat().st_size)
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


@contextmanager
def unpacked(file: Path) -> Iterator[SealedModel]:
    """Open an exported file as a SealedModel in a temporary folder, removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="bentoedge-import-"))
    try:
        try:
            with tarfile.open(file, "r:*") as tar:
                members = tar.getmembers()
                for member in members:
                    if not member.isfile() or member.name.startswith(("/", "..")) or ".." in Path(member.name).parts:
                        raise IntegrityError(f"{file} holds an unexpected entry {member.name!r}; refusing to import")
                tar.extractall(tmp, members=members, filter="data")
        except (tarfile.TarError, OSError) as exc:
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise SourceError(f"{file} is not a bentoedge export ({reason}); export one with 'bentoedge export'") from None
        yield SealedModel.open(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def open_ref(ref: str | Path) -> Iterator[SealedModel]:
    """A sealed model by PATH (folder or exported file) or NAME[:VERSION] in the store: what
    every MODEL argument of the CLI and the Python API means."""
    path = Path(ref)
    if path.is_dir():
        yield SealedModel.open(path)
    elif path.is_file():
        with unpacked(path) as sealed:
            yield sealed
    elif isinstance(ref, Path) or "/" in ref or ref.endswith(EXPORT_SUFFIX):
        raise NotFoundError(f"{ref} does not exist; give a sealed folder, an exported file or NAME[:VERSION]")
    else:
        yield ModelStore().get(ref)
