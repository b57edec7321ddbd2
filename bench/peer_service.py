"""The peer for bench/cloud_serving.py: a minimal plain BentoML service on an unencrypted .onnx file.

What a BentoML user would write without bentoedge: load the ONNX file named by
``PEER_ONNX`` into an ONNX Runtime session and expose one batchable API with BentoML's own
JSON handling.  Same batching settings as the bentoedge service, so the comparison
measures what sealing, validation and the shared API cost, not a different batch policy.
"""

from __future__ import annotations

import os

import bentoml
import numpy as np

MAX_BATCH = int(os.environ.get("BENTOEDGE_MAX_BATCH", "32"))
MAX_LATENCY_MS = int(os.environ.get("BENTOEDGE_MAX_LATENCY_MS", "20"))


@bentoml.service(name="peer", traffic={"timeout": 60, "max_concurrency": 256}, workers=1)
class Peer:
    def __init__(self) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(os.environ["PEER_ONNX"], providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=MAX_LATENCY_MS)
    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input: x.astype(np.float32)})[0])
