"""Running an edge artifact: a TFLite interpreter made from decrypted bytes, by input name.

The interpreter itself, and everything done with it per request (names onto tensor
indices, resize if the shape changed, quantize, set, invoke, get, dequantize, replace it
after a failed call), is the LiteRT binding in ``bentos.runtimes.litert``: the build
recorded the golden samples through the same binding, so the device checks the build's
answers with the very same code.  The plaintext model only ever lives in memory.

``EdgeModel`` adds what serving needs on top: a TFLite interpreter is not thread-safe,
so each model keeps a small pool of interpreters, one per worker, and a request borrows
one for the duration of its call.

``load_edge_model`` and ``health_check`` are what the sync agent uses to bring a new
version up and prove it before it serves.
"""

from __future__ import annotations

import ctypes
import functools
import queue
from collections.abc import Callable, Mapping

import numpy as np

from bentoedge.bentos import health
from bentoedge.bentos.errors import HealthCheckError
from bentoedge.bentos.manifest import Artifact, Manifest
from bentoedge.bentos.recipients import Keyring
from bentoedge.bentos.runtimes import SignatureMismatch
from bentoedge.bentos.runtimes.litert import LiteRTModel, interpreter_class
from bentoedge.bentos.sealed import SealedModel

__all__ = ["PRECISION_PREFERENCE", "EdgeModel", "choose_edge_artifact", "health_check", "interpreter_class",
           "load_edge_model"]

#: Which edge precision a device prefers when a sealed model carries several.
PRECISION_PREFERENCE = ("int8", "dynamic", "fp16", "fp32")


class EdgeModel:
    """One decrypted edge artifact, ready to answer ``predict`` from several threads."""

    def __init__(self, manifest: Manifest, artifact: Artifact, model_bytes: bytes,
                 threads: int | None = None, workers: int = 1) -> None:
        self.manifest = manifest
        self.artifact = artifact
        self.signature = manifest.signature
        self.workers = max(1, workers)
        in_names = [t.name for t in manifest.signature.inputs]
        out_names = [t.name for t in manifest.signature.outputs]
        try:
            slots = [LiteRTModel(model_bytes, in_names, out_names, threads, artifact.signature)
                     for _ in range(self.workers)]
        except SignatureMismatch:
            raise HealthCheckError("the TFLite artifact's inputs/outputs do not match the manifest signature") from None
        self.runtime_name = slots[0].runtime_name
        self._pool: queue.SimpleQueue[LiteRTModel] = queue.SimpleQueue()
        for slot in slots:
            self._pool.put(slot)
        #: Input name -> the artifact's own shape signature (-1 = any size); the router
        #: forwards requests whose shapes a fixed dim rejects instead of failing locally.
        self.fixed_shapes = dict(slots[0].signature_shapes)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    def predict(self, inputs: Mapping[str, np.ndarray], timeout: float | None = None) -> dict[str, np.ndarray]:
        """Outputs by name; waits at most ``timeout`` seconds for a free interpreter."""
        try:
            slot = self._pool.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("no interpreter came free before the request's deadline") from None
        try:
            # The binding replaces an interpreter a failed call may have broken before it
            # raises, so the slot always goes back into the pool.
            return slot.run(inputs)
        finally:
            self._pool.put(slot)


def choose_edge_artifact(manifest: Manifest, preference: tuple[str, ...] = PRECISION_PREFERENCE) -> Artifact | None:
    models = manifest.models("edge")
    ranked = sorted(models, key=lambda a: preference.index(a.precision) if a.precision in preference else 99)
    return ranked[0] if ranked else None


def load_edge_model(sealed: SealedModel, keyring: Keyring, threads: int | None = None, workers: int = 1,
                    artifact_id: str | None = None) -> EdgeModel:
    """Decrypt the chosen edge artifact in memory and build interpreters from it."""
    art = sealed.manifest.artifact(artifact_id) if artifact_id else choose_edge_artifact(sealed.manifest)
    if art is None:
        raise HealthCheckError(f"{sealed.manifest.tag} has no edge artifact")
    plain = sealed.decrypt(art.id, keyring)
    try:
        return EdgeModel(sealed.manifest, art, plain, threads=threads, workers=workers)
    except (ValueError, RuntimeError) as exc:
        raise HealthCheckError(f"{sealed.manifest.tag}: the runtime cannot load {art.id}: {exc}") from None


def health_check(model: EdgeModel, sealed: SealedModel, keyring: Keyring) -> int:
    """Run the sealed golden samples; returns how many passed or raises HealthCheckError.

    A load and its check free their large buffers (the ciphertext, the plaintext copy, the
    decrypted golden samples) by the time it returns; the heap is then trimmed, so the device
    does not carry them for the rest of the process (on a 2.4 MB model, about 2 MB)."""
    try:
        return health.check(sealed, model.artifact, model.predict, keyring)
    finally:
        release_freed_memory()


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:  # the process's own symbols include the C library's (no ldconfig search at start-up)
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_memory() -> None:
    """Give the C heap's free pages back to the OS (glibc's ``malloc_trim``; a no-op elsewhere).

    glibc raises its mmap threshold after the first large buffer is freed, so later buffers of
    that size come from the heap and stay in RSS after they are freed; a device should not pay
    for a swap's transient buffers until it restarts."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
