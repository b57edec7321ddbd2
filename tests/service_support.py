"""Helpers for the cloud tests: a small sealed ONNX model made without TensorFlow.

The model is made with the ``onnx`` helper API: a dense layer and a softmax over 64
inputs, like the digits example, sealed with ``bentos.sealed.seal`` for the local KEK
(cloud-fp32 plus golden samples) into the BentoML store of this process.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def tiny_onnx(features: int = 64, classes: int = 10, seed: int = 0) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.3, (features, classes)).astype(np.float32)
    b = rng.normal(0, 0.1, (classes,)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["z"]),
         helper.make_node("Softmax", ["z"], ["probs"], axis=-1)],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def run_onnx(model: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(["probs"], {"x": x})[0])


@dataclass(frozen=True)
class TinySealed:
    home: Path          # BENTOEDGE_HOME with keys
    tag: str            # name:version in the BentoML store
    path: Path          # the sealed directory inside the store
    onnx_fp32: bytes    # the plaintext, for comparing with the raw runtime


def seal_tiny(home: Path, name: str = "tiny", version: str = "v1", release: int = 1) -> TinySealed:
    from bentoedge.bentos.golden import Golden
    from bentoedge.bentos.keystore import LocalKeys
    from bentoedge.bentos.manifest import Signature, TensorSpec
    from bentoedge.bentos.recipients import KekRecipient
    from bentoedge.bentos.sealed import Plain, SealRequest, seal
    from bentoedge.bentos.store import ModelStore

    keys = LocalKeys(home)
    keys.init()
    fp32 = tiny_onnx()
    x = np.random.default_rng(1).random((4, 64), dtype=np.float32)
    golden = Golden({"x": x}, {"cloud-fp32": {"probs": run_onnx(fp32, x)}})
    sig = Signature((TensorSpec("x", "float32", (None, 64)),), (TensorSpec("probs", "float32", (None, 10)),))
    req = SealRequest(
        name=name, version=version, release=release, source={"kind": "onnx", "sha256": "0" * 64},
        signature=sig,
        artifacts=[Plain("cloud-fp32", "cloud", fp32, "onnxruntime", "fp32"),
                   Plain("golden-cloud", "cloud", golden.to_bytes())],
        golden={"edge": None, "cloud": "golden-cloud", "count": 4,
                "tolerances": {"cloud-fp32": {"atol": 1e-5, "rtol": 1e-4}}},
    )
    sealed = ModelStore().add(name, version, release,
                              lambda dst: seal(req, dst, [KekRecipient(keys.kek())], keys.signing_key()))
    return TinySealed(home, f"{name}:{version}", sealed.path, fp32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CountingOpener:
    """The Lambda handler's own opener (``cloud.aws_lambda.open_model``), counting the tags it opens."""

    def __init__(self) -> None:
        self.opened: list[str] = []

    def __call__(self, tag: str, settings: Any, env: Mapping[str, str]) -> Any:
        from bentoedge.cloud.aws_lambda import open_model

        self.opened.append(tag)
        return open_model(tag, settings, env)
