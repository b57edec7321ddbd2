"""The ONNX Runtime binding: an ``InferenceSession`` made from model bytes, run by manifest names.

``OnnxModel`` is the one place that opens a session (from bytes, so the plaintext model
never touches the disk), maps the manifest's names onto the graph's inputs and outputs
(by name, or by position when an exporter renamed them) and feeds float16 where an fp16
graph asks for it.  The build gates quality and records golden outputs through it, and
the cloud service serves with it, so the service checks the build's answers with the
very same code.  Sessions accept concurrent ``run`` calls, so one model serves all threads.

onnxruntime is imported lazily; a missing one is a ConversionError that says what to install.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bentoedge.bentos.errors import ConversionError
from bentoedge.bentos.runtimes import SignatureMismatch

CPU_ONLY = ("CPUExecutionProvider",)


def module() -> Any:
    """The onnxruntime module, or ConversionError saying which extra brings it."""
    try:
        import onnxruntime
    except ImportError:
        raise ConversionError("this needs onnxruntime: pip install 'bentoedge[build]' (to build) "
                              "or 'bentoedge[cloud]' (to serve)") from None
    return onnxruntime


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build offers (CUDA first when it has it)."""
    return list(module().get_available_providers())


def load_session(model: bytes, providers: Sequence[str] = CPU_ONLY, threads: int | None = None) -> Any:
    """An ``InferenceSession`` over ``model``; ``threads`` sets intra-op threads when given."""
    ort = module()
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(model, sess_options=opts, providers=list(providers))


class OnnxModel:
    """One session, run by the given input and output names.

    The constructor raises onnxruntime's own error for bytes it cannot load and
    SignatureMismatch when the graph's inputs/outputs do not fit the names.
    """

    def __init__(self, model: bytes, input_names: Sequence[str], output_names: Sequence[str],
                 providers: Sequence[str] = CPU_ONLY, threads: int | None = None) -> None:
        self.session = load_session(model, providers, threads)
        self.providers = tuple(self.session.get_providers())
        sess_in = [i.name for i in self.session.get_inputs()]
        sess_out = [o.name for o in self.session.get_outputs()]
        want_in, want_out = list(input_names), list(output_names)
        if len(sess_in) != len(want_in) or len(sess_out) != len(want_out):
            raise SignatureMismatch("the ONNX graph's inputs/outputs do not match the signature")
        # Names match unless an exporter renamed them; converters keep the order.
        self._in = {n: n for n in want_in} if set(sess_in) == set(want_in) else dict(zip(want_in, sess_in, strict=True))
        self._out = want_out if set(sess_out) == set(want_out) else sess_out
        self._out_names = want_out
        self._types = {i.name: i.type for i in self.session.get_inputs()}
        # Many exported graphs (tf2onnx from a TFLite file, tracing exporters) fix the batch
        # at 1; such a model still answers a batch, one sample at a time.
        shapes = [i.shape for i in self.session.get_inputs()]
        self.batch_of_one = bool(shapes) and all(len(s) > 0 and s[0] == 1 for s in shapes)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for ``inputs`` by name."""
        feed = {self._in[k]: _cast(v, self._types[self._in[k]]) for k, v in inputs.items()}
        n = {len(v) for v in feed.values() if v.ndim}
        if self.batch_of_one and len(n) == 1 and (rows := n.pop()) > 1:
            parts = [self.session.run(self._out, {k: v[i:i + 1] for k, v in feed.items()}) for i in range(rows)]
            values = [np.concatenate([p[j] for p in parts]) for j in range(len(self._out))]
        else:
            values = self.session.run(self._out, feed)
        return dict(zip(self._out_names, values, strict=True))


def _cast(arr: np.ndarray, ort_type: str) -> np.ndarray:
    # The fp16 artifact may take float16 inputs while the manifest speaks float32.
    if ort_type == "tensor(float16)" and arr.dtype != np.float16:
        return arr.astype(np.float16)
    return arr
