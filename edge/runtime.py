"""Running an edge artifact: a TFLite interpreter made from decrypted bytes, by input name.

The interpreter comes from LiteRT (``ai_edge_litert``) when installed, ``tflite_runtime``
otherwise (devices stuck on numpy < 2), and TensorFlow's as the last resort; all three
take ``model_content`` bytes, so the plaintext model only ever lives in memory.

``EdgeModel.predict`` maps the manifest's input and output names onto tensor indices
once, then per request does what the raw runtime call does (resize if the shape changed,
set, invoke, get), so its overhead over the floor is a few dictionary lookups.  A TFLite
interpreter is not thread-safe: each model keeps a small pool of interpreters, one per
worker, and a request borrows one for the duration of its call.

``load_edge_model`` and ``health_check`` are what the sync agent uses to bring a new
version up and prove it before it serves.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from bentoedge.bentos import health
from bentoedge.bentos.errors import ConversionError, HealthCheckError
from bentoedge.bentos.manifest import Artifact, Manifest
from bentoedge.bentos.recipients import Keyring
from bentoedge.bentos.sealed import SealedModel

#: Which edge precision a device prefers when a sealed model carries several.
PRECISION_PREFERENCE = ("int8", "dynamic", "fp16", "fp32")


def interpreter_class() -> tuple[Callable[..., Any], str]:
    """The best TFLite interpreter installed, and its name for status and logs."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite-runtime"
    except ImportError:
        pass
    try:
        import tensorflow as tf

        return tf.lite.Interpreter, "tensorflow"
    except ImportError:
        raise ConversionError(
            "no TFLite runtime is installed: pip install 'bentoedge[edge]' (ai-edge-litert), "
            "or tflite-runtime on numpy<2 devices") from None


@dataclass(frozen=True)
class _Binding:
    index: int
    dtype: Any
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        return np.dtype(self.dtype).kind in "iu" and self.scale != 0.0


class EdgeModel:
    """One decrypted edge artifact, ready to answer ``predict`` from several threads."""

    def __init__(self, manifest: Manifest, artifact: Artifact, model_bytes: bytes,
                 threads: int | None = None, workers: int = 1) -> None:
        self.manifest = manifest
        self.artifact = artifact
        self.signature = manifest.signature
        cls, self.runtime_name = interpreter_class()
        self.workers = max(1, workers)
        # threads=0 (the config's "let the runtime decide") must reach the runtime as None.
        num_threads = threads if threads and threads > 0 else None
        self._new_slot = lambda: _Slot(cls(model_content=model_bytes, num_threads=num_threads), manifest)
        self._pool: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        slots = [self._new_slot() for _ in range(self.workers)]
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
            return slot.run(inputs)
        except Exception:
            # A failed prepare or invoke can leave an interpreter unusable (tflite-runtime
            # 2.14 segfaults on the next allocate): replace it rather than reuse it.
            slot = self._replace(slot)
            raise
        finally:
            self._pool.put(slot)

    def _replace(self, broken: _Slot) -> _Slot:
        try:
            return self._new_slot()
        except Exception:  # keep the pool full even if the rebuild fails; the next call will say
            return broken


class _Slot:
    """One interpreter with the name -> tensor bindings resolved once."""

    def __init__(self, interp: Any, manifest: Manifest) -> None:
        self.interp = interp
        interp.allocate_tensors()
        in_details, out_details = self._details(interp, manifest)
        self.inputs = {n: _bind(d) for n, d in in_details.items()}
        self.outputs = {n: _bind(d) for n, d in out_details.items()}
        self.shapes = {n: tuple(d["shape"]) for n, d in in_details.items()}
        self.signature_shapes = {n: tuple(int(x) for x in d.get("shape_signature", d["shape"]))
                                 for n, d in in_details.items()}

    @staticmethod
    def _details(interp: Any, manifest: Manifest) -> tuple[dict[str, Any], dict[str, Any]]:
        in_names = [t.name for t in manifest.signature.inputs]
        out_names = [t.name for t in manifest.signature.outputs]
        sigs = interp.get_signature_list() if hasattr(interp, "get_signature_list") else {}
        if sigs:
            runner = interp.get_signature_runner(next(iter(sigs)))
            ins, outs = runner.get_input_details(), runner.get_output_details()
            if set(ins) == set(in_names) and set(outs) == set(out_names):
                return ins, outs
        # No usable signature: match by position, as converters keep the source's order.
        ins_l, outs_l = interp.get_input_details(), interp.get_output_details()
        if len(ins_l) != len(in_names) or len(outs_l) != len(out_names):
            raise HealthCheckError("the TFLite artifact's inputs/outputs do not match the manifest signature")
        return dict(zip(in_names, ins_l, strict=True)), dict(zip(out_names, outs_l, strict=True))

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        interp = self.interp
        resized = False
        for name, arr in inputs.items():
            if self.shapes[name] != arr.shape:
                interp.resize_tensor_input(self.inputs[name].index, arr.shape, strict=False)
                self.shapes[name] = arr.shape
                resized = True
        if resized:
            interp.allocate_tensors()
        for name, arr in inputs.items():
            b = self.inputs[name]
            if b.quantized:
                arr = np.clip(np.round(arr / b.scale + b.zero_point), *_limits(b.dtype)).astype(b.dtype)
            elif arr.dtype != b.dtype:
                arr = arr.astype(b.dtype)
            interp.set_tensor(b.index, arr)
        interp.invoke()
        out = {}
        for name, b in self.outputs.items():
            value = interp.get_tensor(b.index)
            if b.quantized:
                value = (value.astype(np.float32) - b.zero_point) * b.scale
            out[name] = value
        return out


def _bind(d: Mapping[str, Any]) -> _Binding:
    scale, zero = d.get("quantization", (0.0, 0))
    return _Binding(int(d["index"]), d["dtype"], float(scale), int(zero))


def _limits(dtype: Any) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


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
    """Run the sealed golden samples; returns how many passed or raises HealthCheckError."""
    return health.check(sealed, model.artifact, model.predict, keyring)
