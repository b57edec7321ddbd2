"""The cloud service as a real `bentoml serve` process on loopback: contract, batching, refusal."""

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


BAD = [
    (b"{not json", "application/json", 400, None),
    (b"", "application/json", 400, None),
    (json.dumps({"x": [[0.0] * 64]}).encode(), "application/json", 400, None),
    (json.dumps({"inputs": {"y": [[0.0] * 64]}}).encode(), "application/json", 400, "y"),
    (json.dumps({"inputs": {"x": [[0.0] * 63]}}).encode(), "application/json", 422, "x"),
    (json.dumps({"inputs": {"x": [["a"] * 64]}}).encode(), "application/json", 422, "x"),
    (b'{"inputs": {"x": [[NaN' + b", 0.0" * 63 + b"]]}}", "application/json", 422, "x"),
    (json.dumps({"inputs": {"x": [[0.0] * 64, [0.0] * 3]}}).encode(), "application/json", 422, "x"),
    (b"PK\x03\x04 not an archive", NPZ, 400, None),
    (b"<x/>", "application/xml", 415, None),
    (b"0" * (80 << 10), "application/json", 413, None),
]


@pytest.mark.parametrize(("body", "ctype", "status", "name"), BAD,
                         ids=["malformed", "empty", "no-inputs", "wrong-name", "wrong-shape", "strings",
                              "nan", "ragged", "bad-npz", "media-type", "oversized"])
def test_bad_input_gets_4xx_and_server_keeps_serving(tiny_server: str, body: bytes, ctype: str, status: int,
                                                     name: str | None) -> None:
    got, _, raw = post(tiny_server, body, content_type=ctype)
    assert got == status, raw
    doc = json.loads(raw)
    assert doc["error"]
    if name is not None:
        assert doc["input"] == name
    if name == "x" and status == 422 and "shape" in doc["error"]:
        assert "float32[?, 64]" in doc["error"]
    predict_json(tiny_server, np.zeros((1, 64), dtype=np.float32))


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
    proc = start_server(bad.tag, port, env={"BENTOEDGE_HOME": str(bad.home)}, log=log)
    try:
        with pytest.raises(HealthCheckError, match="refusing to serve tampered:v1: encrypted artifact failed authentication"):
            wait_ready(f"http://127.0.0.1:{port}", timeout=60, proc=proc, log=log)
    finally:
        stop_server(proc)
    assert re.search(r"refusing to serve tampered:v1: .*modified", log.read_text())


def test_wrong_method_is_a_json_error_like_the_device(tiny_server: str) -> None:
    status, raw = get(tiny_server + "/predict")  # GET, not POST
    assert status == 405
    assert "/predict" in json.loads(raw)["error"]
