"""The peer for bench/edge_serving.py: a minimal plain BentoML service on an unencrypted .tflite file.

What a BentoML user would write to serve a TFLite model without bentoedge: load the file
named by ``PEER_TFLITE`` into the same LiteRT interpreter the agent uses, and expose one
API with BentoML's own JSON handling.  A TFLite interpreter is not thread-safe, so calls
take a lock (BentoML runs sync APIs in a thread pool).
"""

from __future__ import annotations

import os
import threading

import bentoml
import numpy as np


@bentoml.service(name="peer_tflite", traffic={"timeout": 60, "max_concurrency": 64}, workers=1)
class PeerTflite:
    def __init__(self) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interp = Interpreter(model_path=os.environ["PEER_TFLITE"])
        self.interp.allocate_tensors()
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        self.shape = tuple(self.inp["shape"])
        self.lock = threading.Lock()

    @bentoml.api
    def predict(self, x: np.ndarray) -> np.ndarray:
        x = x.astype(self.inp["dtype"])
        with self.lock:
            if tuple(x.shape) != self.shape:
                self.interp.resize_tensor_input(self.inp["index"], x.shape)
                self.interp.allocate_tensors()
                self.shape = tuple(x.shape)
            self.interp.set_tensor(self.inp["index"], x)
            self.interp.invoke()
            return np.asarray(self.interp.get_tensor(self.out["index"]))
