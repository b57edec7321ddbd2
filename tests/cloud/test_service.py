"""The cloud service as a real `bentoml serve` process on loopback: answers, batching, refusal.

The contract's cases (every 4xx, 405/404, framing, headers, both media types) run against
this server and the device alike in tests/conformance; here is what only the cloud does:
its ONNX Runtime answers, SageMaker's routes, BentoML's batching and metrics, and
refusing to start on a tampered artifact.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from service_support import TinySealed, free_port, run_onnx, seal_tiny

from bentoedge.bentos.api import HEADER_SERVED_BY, HEADER_VERSION, NPZ, decode_npz, encode_npz

pytestmark = pytest.mark.slow


def post(url: str, body: bytes, content_type: str = "application/json", accept: str | None = None,
         path: str = "/predict") -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": content_type}
    if accept:
        headers["Accept"] = accept
    req = urllib.request.Request(url + path, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def predict_json(url: str, x: np.ndarray) -> dict:
    status, headers, body = post(url, json.dumps({"inputs": {"x": x.tolist()}}).encode())
    assert status == 200, body
    assert headers[HEADER_SERVED_BY] == "cloud"
    assert headers[HEADER_VERSION] == "v1"
    return json.loads(body)


def test_outputs_match_the_raw_onnx_runtime(tiny_server: str, tiny_sealed: TinySealed) -> None:
    x = np.random.default_rng(7).random((3, 64), dtype=np.float32)
    doc = predict_json(tiny_server, x)
    assert doc["model"] == {"name": "tiny", "version": "v1"} and doc["served_by"] == "cloud"
    np.testing.assert_allclose(np.array(doc["outputs"]["probs"], dtype=np.float32), run_onnx(tiny_sealed.onnx_fp32, x),
                               rtol=1e-5, atol=1e-6)


def test_npz_request_and_response(tiny_server: str, tiny_sealed: TinySealed) -> None:
    x = np.random.default_rng(8).random((2, 64), dtype=np.float32)
    status, headers, body = post(tiny_server, encode_npz({"x": x}), content_type=NPZ, accept=NPZ)
    assert status == 200 and headers["content-type"].startswith(NPZ)
    assert headers[HEADER_VERSION] == "v1"
    np.testing.assert_allclose(decode_npz(body)["probs"], run_onnx(tiny_sealed.onnx_fp32, x), rtol=1e-5, atol=1e-6)


def test_sagemaker_routes(tiny_server: str) -> None:
    assert get(tiny_server + "/ping")[0] == 200
    x = np.zeros((1, 64), dtype=np.float32)
    status, _, body = post(tiny_server, json.dumps({"inputs": {"x": x.tolist()}}).encode(), path="/invocations")
    assert status == 200 and "probs" in json.loads(body)["outputs"]


def test_health_metrics_and_openapi(tiny_server: str) -> None:
    assert get(tiny_server + "/readyz")[0] == 200
    assert get(tiny_server + "/livez")[0] == 200
    status, body = get(tiny_server + "/metrics")
    assert status == 200 and b"bentoml_" in body
    status, body = get(tiny_server + "/docs.json")
    paths = json.loads(body)["paths"]
    assert status == 200 and "/predict" in paths and "requestBody" in paths["/predict"]["post"]


def test_concurrent_requests_are_batched(tiny_server: str, tiny_sealed: TinySealed) -> None:
    def batch_stats() -> tuple[float, float]:
        text = get(tiny_server + "/metrics")[1].decode()
        total = count = 0.0
        for line in text.splitlines():
            if line.startswith("bentoml_service_adaptive_batch_size_sum{") and 'method_name="infer"' in line:
                total += float(line.rsplit(" ", 1)[1])
            if line.startswith("bentoml_service_adaptive_batch_size_count{") and 'method_name="infer"' in line:
                count += float(line.rsplit(" ", 1)[1])
        return total, count

    sum0, count0 = batch_stats()
    xs = [np.random.default_rng(i).random((1, 64), dtype=np.float32) for i in range(48)]
    with ThreadPoolExecutor(16) as pool:
        docs = list(pool.map(lambda x: predict_json(tiny_server, x), xs))
    for x, doc in zip(xs, docs, strict=True):  # each caller got its own row back
        np.testing.assert_allclose(np.array(doc["outputs"]["probs"], dtype=np.float32),
                                   run_onnx(tiny_sealed.onnx_fp32, x), rtol=1e-5, atol=1e-6)
    sum1, count1 = batch_stats()
    requests, batches = sum1 - sum0, count1 - count0
    assert requests == 48
    assert batches < requests, f"{requests} requests ran in {batches} batches: no batch held more than one"


def test_refuses_to_start_on_a_tampered_artifact(tmp_path: Path) -> None:
    from bentoedge.bentos.errors import HealthCheckError
    from bentoedge.cloud.serve import start_server, stop_server, wait_ready

    bad = seal_tiny(tmp_path / "home", name="tampered")
    enc = bad.path / "artifacts" / "cloud-fp32.onnx.enc"
    data = bytearray(enc.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit
    enc.write_bytes(bytes(data))
    log = tmp_path / "serve.log"
    port = free_port()
    proc = start_server(bad.tag, port, env={"BENTOEDGE_HOME": str(bad.home), "BENTOEDGE_AUTH": "off"}, log=log)
    try:
        with pytest.raises(HealthCheckError, match="refusing to serve tampered:v1: encrypted artifact failed authentication"):
            wait_ready(f"http://127.0.0.1:{port}", timeout=60, proc=proc, log=log)
    finally:
        stop_server(proc)
    assert re.search(r"refusing to serve tampered:v1: .*modified", log.read_text())
