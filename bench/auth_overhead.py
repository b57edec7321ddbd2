"""What authentication costs per request: signing on the device, verifying in the cloud.

Two parts, one machine:

- in process: ``bentos.auth.sign_request`` (the device) and ``bentos.auth.authenticate``
  (the cloud's whole decision: parse, window, registry, Content-Digest, Ed25519, replay
  cache) on a 300-byte body, and an API key check, p50 over 2000 calls each;
- end to end: the same small ONNX model served by ``bentoml serve`` with
  ``BENTOEDGE_AUTH=off`` and then with authentication on (devices from a registry file),
  p50/p99 latency and throughput at concurrency 1 and 16 over keep-alive connections.
  With auth on every request is signed afresh by the client (inside the timed span, as the
  device does it).  The servers run one after the other.

Writes bench/results/auth_overhead.json.

    python -m bench.auth_overhead [--quick] [--requests N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def tiny_onnx() -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Softmax", ["h"], ["probs"], axis=-1)],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(rng.normal(0, 0.3, (64, 10)).astype(np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def seal_model(home: Path) -> str:
    import onnxruntime as ort

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
    out = ort.InferenceSession(fp32, providers=["CPUExecutionProvider"]).run(["probs"], {"x": x})[0]
    req = SealRequest(
        name="authbench", version="v1", release=1, source={"kind": "onnx", "sha256": "0" * 64},
        signature=Signature((TensorSpec("x", "float32", (None, 64)),), (TensorSpec("probs", "float32", (None, 10)),)),
        artifacts=[Plain("cloud-fp32", "cloud", fp32, "onnxruntime", "fp32"),
                   Plain("golden-cloud", "cloud", Golden({"x": x}, {"cloud-fp32": {"probs": out}}).to_bytes())],
        golden={"edge": None, "cloud": "golden-cloud", "count": 4,
                "tolerances": {"cloud-fp32": {"atol": 1e-5, "rtol": 1e-4}}})
    ModelStore().add("authbench", "v1", 1, lambda dst: seal(req, dst, [KekRecipient(keys.kek())], keys.signing_key()))
    return "authbench:v1"


def in_process(n: int = 2000) -> dict[str, float]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from bentoedge.bentos import auth

    key = Ed25519PrivateKey.generate()
    raw = auth.identity_raw(key.public_key())
    devices = {auth.identity_id(raw): auth.Device(raw)}
    body = b"x" * 300
    cache = auth.NonceCache()
    sign, verify, apikey = [], [], []
    api = auth.new_api_key()
    keys = {auth.api_key_hash(api): auth.ApiKey("id", "bench")}
    for _ in range(n):
        t0 = time.perf_counter()
        headers = auth.sign_request(key, "POST", "/predict", body, time.time())
        sign.append(time.perf_counter() - t0)
        req = auth.Request("POST", "/predict", {k.lower(): v for k, v in headers.items()}, body)
        t0 = time.perf_counter()
        ok = auth.authenticate(req, devices, {}, cache, time.time()).ok
        verify.append(time.perf_counter() - t0)
        assert ok
        t0 = time.perf_counter()
        auth.authenticate(auth.Request("POST", "/predict", {"authorization": f"Bearer {api}"}, b""), {}, keys,
                          cache, time.time())
        apikey.append(time.perf_counter() - t0)
    return {"sign_p50_ms": statistics.median(sign) * 1e3, "verify_p50_ms": statistics.median(verify) * 1e3,
            "api_key_p50_ms": statistics.median(apikey) * 1e3}


def load(port: int, bodies: list[bytes], concurrency: int, sign: Any) -> dict[str, Any]:
    import http.client
    import threading

    lat: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    it = iter(bodies)

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                body = next(it, None)
            if body is None:
                break
            t0 = time.perf_counter()
            headers = {"Content-Type": "application/json", **(sign(body) if sign else {})}
            conn.request("POST", "/predict", body, headers)
            resp = conn.getresponse()
            resp.read()
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt)
                if resp.status != 200:
                    errors[str(resp.status)] = errors.get(str(resp.status), 0) + 1
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    wall = time.perf_counter() - t0
    return {"p50_ms": float(np.percentile(lat, 50)) * 1e3, "p99_ms": float(np.percentile(lat, 99)) * 1e3,
            "throughput_rps": len(lat) / wall, "requests": len(lat), "errors_by_status": errors}


def end_to_end(tag: str, work: Path, n: int) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from bench.cloud_serving import free_port
    from bentoedge.bentos import auth
    from bentoedge.cloud.serve import start_server, stop_server, wait_ready

    key = Ed25519PrivateKey.generate()
    raw = auth.identity_raw(key.public_key())
    registry = work / "devices.json"
    registry.write_bytes(auth.registry_document({auth.identity_id(raw): auth.Device(raw)}))
    xs = np.random.default_rng(2).random((n, 64), dtype=np.float32)
    bodies = [json.dumps({"inputs": {"x": x[None, :].tolist()}}).encode() for x in xs]
    out: dict[str, Any] = {}
    for mode, env, sign in (
        ("auth_off", {"BENTOEDGE_AUTH": "off"}, None),
        ("auth_on", {"BENTOEDGE_DEVICE_REGISTRY": str(registry)},
         lambda body: auth.sign_request(key, "POST", "/predict", body, time.time())),
    ):
        port = free_port()
        log = work / f"{mode}.log"
        proc = start_server(tag, port, env=env, log=log)
        try:
            wait_ready(f"http://127.0.0.1:{port}", timeout=120, proc=proc, log=log)
            load(port, bodies[:20], 1, sign)  # warm-up
            out[mode] = {f"c{c}": load(port, bodies, c, sign) for c in (1, 16)}
            print(f"{mode}: {json.dumps(out[mode])}", flush=True)
        finally:
            stop_server(proc)
    for c in ("c1", "c16"):
        on, off = out["auth_on"][c], out["auth_off"][c]
        out[f"{c}_p50_added_ms"] = on["p50_ms"] - off["p50_ms"]
        out[f"{c}_throughput_ratio"] = on["throughput_rps"] / off["throughput_rps"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="300 requests per point (default 1000)")
    ap.add_argument("--requests", type=int, default=None)
    args = ap.parse_args()
    n = args.requests or (300 if args.quick else 1000)
    work = Path(tempfile.mkdtemp(prefix="bentoedge-bench-auth-"))
    os.environ.update({"BENTOML_HOME": str(work / "bentoml"), "BENTOML_DO_NOT_TRACK": "true",
                       "BENTOEDGE_HOME": str(work / "home")})
    from bench._common import write_result

    result = {"in_process": in_process(), "end_to_end": end_to_end(seal_model(work / "home"), work, n),
              "requests_per_point": n}
    print(json.dumps(result["in_process"]))
    write_result("auth_overhead", result)


if __name__ == "__main__":
    main()
