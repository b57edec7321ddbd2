"""Running models at build time: the float reference and each artifact, for the gate and golden samples.

``reference`` runs the source itself in float, which is what the quality gate compares
every artifact against.  ``tflite_runner`` and ``onnx_runner`` run an artifact from
bytes through the same runtime bindings the device and the cloud service use
(``bentos.runtimes``), so the golden outputs sealed with a model come from the code
that later checks them.  All take a whole validation set by input name and run it in
chunks of ``CHUNK`` samples to bound memory (a per-call model's data in one call).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from bentoedge.bentos.convert.common import first_line, named, tf
from bentoedge.bentos.convert.sources import Source
from bentoedge.bentos.errors import BentoEdgeError, ConversionError, SourceError
from bentoedge.bentos.manifest import Signature
from bentoedge.bentos.runtimes import SignatureMismatch
from bentoedge.bentos.runtimes.litert import LiteRTModel
from bentoedge.bentos.runtimes.onnxruntime import CPU_ONLY, OnnxModel

Arrays = dict[str, np.ndarray]
Runner = Callable[[Mapping[str, np.ndarray]], Arrays]
#: Samples per call into a model: large enough to batch, small enough for big inputs.
CHUNK = 256


def reference(src: Source) -> Runner:
    """Run the source model itself in float: the baseline every artifact is judged against."""
    sig = src.signature
    out_names = [t.name for t in sig.outputs]
    if src.kind == "keras":
        model = src.handle

        def run_keras(inputs: Mapping[str, np.ndarray]) -> Arrays:
            parts: list[Arrays] = []
            for feed in chunks(inputs, sig):
                chunk = [feed[t.name] for t in sig.inputs]
                outs = named(model(chunk if len(chunk) > 1 else chunk[0], training=False), out_names)
                parts.append({k: np.asarray(v) for k, v in outs.items()})
            return _concat(parts, out_names)

        return run_keras
    if src.kind == "savedmodel":
        tf_mod = tf()
        serving = src.handle.signatures[src.signature_key or "serving_default"]

        def run_saved(inputs: Mapping[str, np.ndarray]) -> Arrays:
            parts = []
            for feed in chunks(inputs, sig):
                outs = serving(**{k: tf_mod.constant(v) for k, v in feed.items()})
                parts.append({k: np.asarray(outs[k]) for k in out_names})
            return _concat(parts, out_names)

        return run_saved
    if src.kind == "onnx":
        return onnx_runner(bytes(src.handle), sig)
    return tflite_runner(bytes(src.handle), sig, src.signature_key)


def chunks(inputs: Mapping[str, np.ndarray], sig: Signature, size: int = CHUNK) -> list[Arrays]:
    """Feeds of at most ``size`` samples each, in the signature's dtypes; a per-call model's
    data (``Signature.per_call``) is one call, fed whole."""
    arrays = {t.name: np.asarray(inputs[t.name], dtype=t.dtype) for t in sig.inputs}
    if sig.per_call:
        return [arrays]
    n = len(next(iter(arrays.values())))
    return [{k: v[lo:lo + size] for k, v in arrays.items()} for lo in range(0, n, size)]


def _concat(parts: list[Arrays], names: list[str]) -> Arrays:
    if len(parts) == 1:
        return {n: np.asarray(parts[0][n]) for n in names}
    return {n: np.concatenate([p[n] for p in parts]) for n in names}


def onnx_runner(data: bytes, sig: Signature) -> Runner:
    """Run ONNX bytes on the CPU through the cloud's binding, by the signature's names."""
    try:
        model = OnnxModel(data, [t.name for t in sig.inputs], [t.name for t in sig.outputs], CPU_ONLY)
    except BentoEdgeError:
        raise
    except SignatureMismatch:
        raise ConversionError("the ONNX model's inputs/outputs do not match the source signature") from None
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph kinds
        raise ConversionError(f"ONNX Runtime cannot load the model: {first_line(exc)}") from None
    out_names = [t.name for t in sig.outputs]

    def run(inputs: Mapping[str, np.ndarray]) -> Arrays:
        return _concat([model.run(feed) for feed in chunks(inputs, sig)], out_names)

    return run


def tflite_runner(data: bytes, sig: Signature, signature: str | None = None) -> Runner:
    """Run TFLite bytes through the device's binding, by the signature's names (through
    SignatureDef ``signature`` when the file holds several)."""
    try:
        model = LiteRTModel(bytes(data), [t.name for t in sig.inputs], [t.name for t in sig.outputs],
                            signature=signature)
    except BentoEdgeError:  # no runtime installed: say what to install, not "invalid model"
        raise
    except SignatureMismatch:
        raise ConversionError("the TFLite model's inputs/outputs do not match the source signature") from None
    except Exception as exc:  # the runtime's own error for bytes it cannot load
        raise SourceError(f"not a valid TFLite model: {first_line(exc)}") from None
    out_names = [t.name for t in sig.outputs]

    def run(inputs: Mapping[str, np.ndarray]) -> Arrays:
        try:
            parts = [model.run(feed) for feed in chunks(inputs, sig)]
        except (ValueError, RuntimeError):
            if sig.per_call:
                raise
            # A model with a fixed batch of 1 cannot be resized: run sample by sample
            # (the binding has already replaced the interpreter the failed call used).
            parts = [model.run(feed) for feed in chunks(inputs, sig, size=1)]
        return _concat(parts, out_names)

    return run
