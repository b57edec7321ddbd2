"""The LiteRT binding: a TFLite interpreter made from model bytes, addressed by tensor name.

The interpreter comes from LiteRT (``ai_edge_litert``) when installed, ``tflite_runtime``
otherwise (devices stuck on numpy < 2), and TensorFlow's as the last resort; all three
take ``model_content`` bytes, so the plaintext model only ever lives in memory.

``LiteRTModel`` is the one place that maps names onto tensor indices (by the model's
signature, or by position when it has none), quantizes float inputs of an int8 model,
resizes when a request's shape changes, invokes and dequantizes the outputs.  The build
records golden outputs and runs the quality gate through it, and ``edge.runtime`` serves
with it, so the device checks the build's answers with the very same code.

Devices import this module: it imports numpy only, and the runtime lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bentoedge.bentos.errors import ConversionError
from bentoedge.bentos.runtimes import SignatureMismatch

Details = dict[str, Any]


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


def num_threads(threads: int | None) -> int | None:
    """The runtime's ``num_threads``: 0 or less (the config's "let the runtime decide") is None."""
    return threads if threads and threads > 0 else None


def load_interpreter(model: bytes, threads: int | None = None) -> Any:
    """A bare interpreter over ``model`` (not yet allocated); the runtime's own error if invalid."""
    cls, _ = interpreter_class()
    return cls(model_content=model, num_threads=num_threads(threads))


def tensor_name(details: Mapping[str, Any]) -> str:
    """A tensor's name without the ``:0`` suffix some converters add."""
    return str(details["name"]).split(":")[0]


def signature_keys(interp: Any) -> list[str]:
    """The SignatureDef keys of a model, in its own order (empty for a signature-less file)."""
    return list(interp.get_signature_list()) if hasattr(interp, "get_signature_list") else []


def io_details(interp: Any, signature: str | None = None) -> tuple[Details, Details, bool]:
    """Input and output details by name: those of SignatureDef ``signature`` (default: the
    first) if the model has one (True), else tensor names."""
    sigs = signature_keys(interp)
    if signature is not None and signature not in sigs:
        raise SignatureMismatch(f"the TFLite model has no signature {signature!r}")
    if sigs:
        runner = interp.get_signature_runner(signature or sigs[0])
        return dict(runner.get_input_details()), dict(runner.get_output_details()), True
    ins = {tensor_name(d): d for d in interp.get_input_details()}
    outs = {tensor_name(d): d for d in interp.get_output_details()}
    return ins, outs, False


def bind_io(interp: Any, input_names: Sequence[str], output_names: Sequence[str],
            signature: str | None = None) -> tuple[Details, Details]:
    """Details for ``input_names``/``output_names``: by the signature's names when they all match,
    else by position, as converters keep the source's order; SignatureMismatch if neither fits.
    A chosen ``signature`` binds by its names only (its tensors are not the first subgraph's)."""
    ins, outs, named = io_details(interp, signature)
    if named and set(ins) == set(input_names) and set(outs) == set(output_names):
        return ins, outs
    if signature is not None:
        raise SignatureMismatch(f"the TFLite signature {signature!r} does not match the manifest's names")
    ins_l, outs_l = interp.get_input_details(), interp.get_output_details()
    if len(ins_l) != len(input_names) or len(outs_l) != len(output_names):
        raise SignatureMismatch("the TFLite model's inputs/outputs do not match the signature")
    return dict(zip(input_names, ins_l, strict=True)), dict(zip(output_names, outs_l, strict=True))


@dataclass(frozen=True)
class TensorBinding:
    """One input or output tensor: where it is and how its integers map to floats."""

    index: int
    dtype: Any
    scale: float
    zero_point: int

    @classmethod
    def of(cls, details: Mapping[str, Any]) -> TensorBinding:
        scale, zero = details.get("quantization", (0.0, 0))
        return cls(int(details["index"]), details["dtype"], float(scale), int(zero))

    @property
    def quantized(self) -> bool:
        return np.dtype(self.dtype).kind in "iu" and self.scale != 0.0

    def quantize(self, arr: np.ndarray) -> np.ndarray:
        """What to set: the caller's floats quantized for an int8 tensor, else cast if needed."""
        if self.quantized:
            info = np.iinfo(self.dtype)
            return np.clip(np.round(arr / self.scale + self.zero_point), info.min, info.max).astype(self.dtype)
        return arr if arr.dtype == self.dtype else arr.astype(self.dtype)

    def dequantize(self, arr: np.ndarray) -> np.ndarray:
        """What the caller gets: floats for an int8 tensor, the value itself otherwise."""
        if self.quantized:
            return (arr.astype(np.float32) - self.zero_point) * self.scale
        return arr


class LiteRTModel:
    """One interpreter over model bytes, run by the given input and output names.

    Not thread-safe (a TFLite interpreter is not): a server keeps one per worker.  The
    constructor raises the runtime's own error for bytes it cannot load, ConversionError
    when no runtime is installed, and SignatureMismatch when the names do not fit.
    """

    def __init__(self, model: bytes, input_names: Sequence[str], output_names: Sequence[str],
                 threads: int | None = None, signature: str | None = None) -> None:
        self._model = model
        self._signature = signature
        self._input_names = tuple(input_names)
        self._output_names = tuple(output_names)
        self._threads = num_threads(threads)
        self._cls, self.runtime_name = interpreter_class()
        self._load()
        #: Input name -> the artifact's own shape signature (-1 = any size).
        self.signature_shapes = dict(self._signature_shapes)

    def _load(self) -> None:
        interp = self._cls(model_content=self._model, num_threads=self._threads)
        interp.allocate_tensors()
        in_details, out_details = bind_io(interp, self._input_names, self._output_names, self._signature)
        self._interp = interp
        # A chosen SignatureDef runs through its own runner (its subgraph need not be the first,
        # which is all that set_tensor/invoke reach); the runner resizes and allocates per call.
        self._runner = interp.get_signature_runner(self._signature) if self._signature else None
        self._inputs = {n: TensorBinding.of(d) for n, d in in_details.items()}
        self._outputs = {n: TensorBinding.of(d) for n, d in out_details.items()}
        # The shapes the interpreter is allocated for, so a request resizes only on a change.
        self._shapes = {n: tuple(d["shape"]) for n, d in in_details.items()}
        self._signature_shapes = {n: tuple(int(x) for x in d.get("shape_signature", d["shape"]))
                                  for n, d in in_details.items()}
        # A graph whose batch is fixed at 1 (most published files) may resize without an error
        # and still answer for one sample only; a batch is run one sample at a time instead.
        self._batch_of_one = bool(self._signature_shapes) and all(
            len(s) > 0 and s[0] == 1 for s in self._signature_shapes.values())
        if self._batch_of_one:  # so the batch is free for the router too
            self._signature_shapes = {n: (-1, *s[1:]) for n, s in self._signature_shapes.items()}

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for ``inputs`` by name (resize, set, invoke, get).

        A failed prepare or invoke can leave the interpreter unusable (tflite-runtime 2.14
        segfaults on the next allocate), so it is replaced before the error goes up.
        """
        try:
            rows = {len(v) for v in inputs.values() if np.ndim(v)}
            if self._batch_of_one and len(rows) == 1 and (n := rows.pop()) > 1:
                parts = [self._run({k: v[i:i + 1] for k, v in inputs.items()}) for i in range(n)]
                return {name: np.concatenate([p[name] for p in parts]) for name in self._outputs}
            return self._run(inputs)
        except Exception:
            try:
                self._load()
            except Exception:  # keep the old one if the rebuild fails; the next call will say
                pass
            raise

    def _run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._runner is not None:
            got = self._runner(**{name: self._inputs[name].quantize(arr) for name, arr in inputs.items()})
            return {name: b.dequantize(np.asarray(got[name])) for name, b in self._outputs.items()}
        interp = self._interp
        resized = False
        for name, arr in inputs.items():
            if self._shapes[name] != arr.shape:
                interp.resize_tensor_input(self._inputs[name].index, arr.shape, strict=False)
                self._shapes[name] = arr.shape
                resized = True
        if resized:
            interp.allocate_tensors()
        for name, arr in inputs.items():
            b = self._inputs[name]
            interp.set_tensor(b.index, b.quantize(arr))
        interp.invoke()
        return {name: b.dequantize(interp.get_tensor(b.index)) for name, b in self._outputs.items()}
