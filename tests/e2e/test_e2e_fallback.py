"""A real device agent in front of a real `bentoml serve` cloud, both on loopback.

The agent answers locally what it can (same answer as its LiteRT model), forwards what it
should (the cloud's ONNX Runtime answer comes back, marked ``served_by: cloud`` with the
reason), relays the cloud's 4xx, and when the cloud process dies, keeps serving locally and
answers 503 with the reason for what it cannot.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("bentoml")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from api_support import DATA, agent_config, free_port, load_edge_model, sealed

from bentoedge.bentos.api import HEADER_REASON, HEADER_SERVED_BY
from bentoedge.edge.active import ActiveModel
from bentoedge.edge.server import AgentServer

pytestmark = pytest.mark.slow
# tests/conftest.py has pointed BENTOML_HOME (and TMPDIR) at the session's own folder.
assert "BENTOML_HOME" in os.environ, "run under tests/conftest.py"

W = np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(4, 3)


def cloud_onnx() -> bytes:
    """x float32[?,4] -> y float32[?,3]: the same signature as the device's tiny model."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["z"]), helper.make_node("Softmax", ["z"], ["y"], axis=-1)],
        "tiny-cloud",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(W, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def run_onnx(model: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return np.asarray(ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0])


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    from bentoedge.bentos.golden import Golden
    from bentoedge.bentos.keystore import LocalKeys
    from bentoedge.bentos.manifest import Signature, TensorSpec
    from bentoedge.bentos.recipients import KekRecipient
    from bentoedge.bentos.sealed import Plain, SealRequest, seal
    from bentoedge.bentos.store import ModelStore
    from bentoedge.cloud.serve import start_server, stop_server, wait_ready

    home = tmp_path_factory.mktemp("e2e-fallback-home")
    keys = LocalKeys(home)
    keys.init()
    model = cloud_onnx()
    gx = np.random.default_rng(3).normal(size=(2, 4)).astype(np.float32)
    req = SealRequest(
        name="tinyfb", version="c1", release=1, source={"kind": "onnx", "sha256": "0" * 64},
        signature=Signature((TensorSpec("x", "float32", (None, 4)),), (TensorSpec("y", "float32", (None, 3)),)),
        artifacts=[Plain("cloud-fp32", "cloud", model, "onnxruntime", "fp32"),
                   Plain("golden-cloud", "cloud", Golden({"x": gx}, {"cloud-fp32": {"y": run_onnx(model, gx)}}).to_bytes())],
        golden={"edge": None, "cloud": "golden-cloud", "count": 2,
                "tolerances": {"cloud-fp32": {"atol": 1e-5, "rtol": 1e-4}}})
    ModelStore().add("tinyfb", "c1", 1, lambda dst: seal(req, dst, [KekRecipient(keys.kek())], keys.signing_key()))
    port = free_port()
    log = home / "serve.log"
    proc = start_server("tinyfb:c1", port, env={"BENTOEDGE_HOME": str(home), "BENTOEDGE_AUTH": "off"}, log=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout=120, proc=proc, log=log)
        yield url, (proc, model, stop_server)
    finally:
        stop_server(proc)


def _post(agent: AgentServer, doc: object) -> tuple[int, dict[str, str], dict[str, object]]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=30)
    conn.request("POST", "/predict", body=json.dumps(doc).encode(), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def test_agent_in_front_of_a_real_bentoml_cloud(cloud: tuple[str, object]) -> None:
    from bentoedge.bentos.keystore import LocalKeys
    from bentoedge.bentos.recipients import Keyring

    url, (proc, onnx_bytes, stop_server) = cloud  # type: ignore[misc]
    keyring = Keyring().add_kek(LocalKeys(DATA).kek())
    edge_model = load_edge_model(sealed("tiny"), keyring, artifact_id="edge-fp32")
    x = np.random.default_rng(4).normal(size=(3, 4)).astype(np.float32)
    with AgentServer(agent_config(cloud=url, timeout=10.0, max_batch=2), ActiveModel(edge_model)) as agent:
        # Local: the device's own model answers, as the runtime does.
        status, headers, doc = _post(agent, {"inputs": {"x": x[:2].tolist()}})
        assert status == 200 and headers[HEADER_SERVED_BY] == "edge"
        np.testing.assert_allclose(doc["outputs"]["y"], edge_model.predict({"x": x[:2]})["y"], rtol=1e-6)
        # Over the device's batch limit: the real cloud's ONNX Runtime answers, and it says why.
        status, headers, doc = _post(agent, {"inputs": {"x": x.tolist()}})
        assert status == 200, doc
        assert doc["served_by"] == "cloud" and headers[HEADER_SERVED_BY] == "cloud"
        assert doc["fallback_reason"] == "batch_limit" and headers[HEADER_REASON] == "batch_limit"
        assert doc["model"] == {"name": "tinyfb", "version": "c1"}
        np.testing.assert_allclose(doc["outputs"]["y"], run_onnx(onnx_bytes, x), rtol=1e-5, atol=1e-6)
        # No local model: everything goes to the cloud, including its 4xx for a bad input.
        agent.active.swap(None)
        status, headers, doc = _post(agent, {"inputs": {"x": [[1.0, 2.0]]}})
        assert status == 422 and headers[HEADER_SERVED_BY] == "cloud" and doc.get("input") == "x"
        # The cloud dies: local answers go on, the rest is a 503 that says why.
        stop_server(proc)
        status, _, doc = _post(agent, {"inputs": {"x": x[:1].tolist()}})
        assert status == 503 and doc["reason"] == "no_model,cloud_unreachable"
        agent.active.swap(edge_model)
        status, headers, doc = _post(agent, {"inputs": {"x": x.tolist()}})  # batch_limit, cloud gone
        assert status == 200 and headers[HEADER_SERVED_BY] == "edge"
