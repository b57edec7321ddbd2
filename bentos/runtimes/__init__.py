"""One binding per runtime, shared by the build and the serving sides.

The build records each artifact's golden outputs and gates its quality by running it;
the device (``edge.runtime``) and the cloud service (``cloud.service_model``) then run
the same bytes and compare.  Both sides go through the modules here, so the answers a
model gives at build time and on the device come from the same code:

- ``litert``: the LiteRT / tflite-runtime interpreter (what devices run);
- ``onnxruntime``: an ONNX Runtime session (what the cloud runs).

Each module imports its runtime lazily, inside functions, so importing it costs nothing
on a machine that lacks the other runtime; ``litert`` in particular imports nothing but
numpy at module level because devices import it.
"""

from __future__ import annotations


class SignatureMismatch(ValueError):
    """An artifact's inputs/outputs cannot be matched to the names it is asked to serve.

    Callers turn it into their own error (a failed build, a failed health check), since
    what it means for the user depends on who loaded the model.
    """
