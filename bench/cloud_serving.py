"""Cloud serving benchmark: raw ONNX Runtime (the floor), plain BentoML (the peer), bentoedge.

One run, one model, one machine: the example digits classifier, built and sealed by
``bentos.build`` (its cloud-fp32 ONNX artifact), called directly with
``InferenceSession.run``, served unencrypted by the minimal BentoML service in
``bench/peer_service.py`` (the plain .onnx lives in the bench's temporary folder: the peer
is by definition unencrypted), and served sealed by ``cloud.service``.
For each server: start-up time (process start to /readyz 200, for bentoedge including
signature check, decryption and golden samples; the decryption share is read from the
service's log line), and p50/p99 latency and throughput at concurrency 1 and 16 over
persistent HTTP connections.  The servers run one after the other, never together, so
they do not share the CPU.  Writes bench/results/cloud_serving.json.

    python -m bench.cloud_serving [--quick] [--requests N]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def summarize(lat: list[float], wall: float) -> dict[str, float]:
    return {"p50_ms": percentile(lat, 50) * 1e3, "p99_ms": percentile(lat, 99) * 1e3,
            "throughput_rps": len(lat) / wall if wall > 0 else 0.0, "requests": len(lat)}


def load(port: int, path: str, bodies: list[bytes], concurrency: int) -> dict[str, Any]:
    """Send every body once, ``concurrency`` at a time, each worker on one keep-alive connection.

    ``throughput_rps`` counts every answer; ``goodput_rps`` only the 200s, ``shed_share`` the
    503s (BentoML's dispatcher refuses what it predicts would miss its latency budget), and
    ``ok_p99_ms`` is the p99 of the 200s alone, so shedding cannot pass for speed."""
    lat: list[float] = []
    ok_lat: list[float] = []
    errors: dict[str, int] = {}
    served: dict[str, int] = {}
    lock = threading.Lock()
    it = iter(bodies)

    def worker() -> None:
        nonlocal errors
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                body = next(it, None)
            if body is None:
                break
            t0 = time.perf_counter()
            conn.request("POST", path, body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt)
                where = resp.getheader("x-bentoedge-served-by") or "none"
                served[where] = served.get(where, 0) + 1
                if resp.status == 200:
                    ok_lat.append(dt)
                else:
                    errors[str(resp.status)] = errors.get(str(resp.status), 0) + 1
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    wall = time.perf_counter() - t0
    out: dict[str, Any] = summarize(lat, wall)
    out["errors_by_status"] = errors  # e.g. 503 when BentoML's batch queue sheds load
    out["goodput_rps"] = len(ok_lat) / wall if wall > 0 else 0.0
    out["shed_share"] = errors.get("503", 0) / len(lat) if lat else 0.0
    out["ok_p99_ms"] = percentile(ok_lat, 99) * 1e3
    out["served_by"] = served
    return out


SWEEP = (1, 2, 4, 8, 16, 32, 64)


def bench_server(name: str, start: Any, port: int, path: str, make_body: Any, xs: np.ndarray,
                 log: Path) -> dict[str, Any]:
    from bentoedge.cloud.serve import stop_server, wait_ready

    t0 = time.perf_counter()
    proc = start()
    try:
        wait_ready(f"http://127.0.0.1:{port}", timeout=120, proc=proc, log=log)
        result: dict[str, Any] = {"startup_s": time.perf_counter() - t0}
        m = re.search(r"decrypt ([0-9.]+)s, ready ([0-9.]+)s", log.read_text(errors="replace"))
        if m:
            result["verify_decrypt_s"], result["model_ready_s"] = float(m.group(1)), float(m.group(2))
        bodies = [make_body(x[None, :]) for x in xs]
        load(port, path, bodies[:20], 1)  # warm-up
        for c in (1, 16):
            result[f"c{c}"] = load(port, path, bodies, c)
        # The goodput curve: what is answered, what is shed, and the answered p99, per concurrency.
        result["sweep"] = [{"concurrency": c, **{k: v for k, v in load(port, path, bodies, c).items()
                                                 if k not in ("errors_by_status", "served_by")}} for c in SWEEP]
        print(f"{name}: {json.dumps(result)}", flush=True)
        return result
    finally:
        stop_server(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="300 requests per point (default 1000)")
    ap.add_argument("--requests", type=int, default=None)
    args = ap.parse_args()
    n = args.requests or (300 if args.quick else 1000)

    work = Path(tempfile.mkdtemp(prefix="bentoedge-bench-cloud-"))
    os.environ.update({"BENTOML_HOME": str(work / "bentoml"), "BENTOML_DO_NOT_TRACK": "true",
                       "BENTOEDGE_HOME": str(work / "home")})
    from bench._common import write_result
    from bentoedge.bentos.build import BuildOptions, build
    from bentoedge.bentos.keystore import LocalKeys
    from bentoedge.bentos.recipients import Keyring
    from bentoedge.cloud.serve import start_server
    from bentoedge.examples.digits import make_example

    home = work / "home"
    LocalKeys(home).init()
    example = make_example(work / "example")
    sealed = build(BuildOptions(source=example["model"], name="digits-bench", home=home, version="v1",
                                calibration=example["calibration"], validation=example["validation"],
                                edge=(), cloud=("fp32",)))
    onnx_fp32 = sealed.decrypt("cloud-fp32", Keyring().add_kek(LocalKeys(home).kek()))
    onnx_path = work / "plain.onnx"
    onnx_path.write_bytes(onnx_fp32)
    xs = np.random.default_rng(0).random((n, 64), dtype=np.float32)

    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_fp32, providers=["CPUExecutionProvider"])
    for x in xs[:50]:
        sess.run(None, {"x": x[None, :]})
    lat = []
    t0 = time.perf_counter()
    for x in xs:
        t = time.perf_counter()
        sess.run(None, {"x": x[None, :]})
        lat.append(time.perf_counter() - t)
    floor = summarize(lat, time.perf_counter() - t0)

    peer_port, edge_port = free_port(), free_port()
    peer_log, edge_log = work / "peer.log", work / "bentoedge.log"
    peer = bench_server(
        "peer", lambda: start_server("unused", peer_port, env={"PEER_ONNX": str(onnx_path)}, log=peer_log,
                                     service="bench.peer_service:Peer"),
        peer_port, "/predict", lambda x: json.dumps({"x": x.tolist()}).encode(), xs, peer_log)
    edge = bench_server(
        "bentoedge", lambda: start_server(sealed.manifest.tag, edge_port, log=edge_log,
                                          env={"BENTOEDGE_AUTH": "off"}),
        edge_port, "/predict", lambda x: json.dumps({"inputs": {"x": x.tolist()}}).encode(), xs, edge_log)

    ratios = {f"c{c}": {"p50_vs_peer": edge[f"c{c}"]["p50_ms"] / peer[f"c{c}"]["p50_ms"],
                        "throughput_vs_peer": edge[f"c{c}"]["throughput_rps"] / peer[f"c{c}"]["throughput_rps"]}
              for c in (1, 16)}
    goal = all(r["p50_vs_peer"] <= 1.10 and r["throughput_vs_peer"] >= 0.95 for r in ratios.values())
    curves = [{"system": system, **point} for system, r in (("bentoedge", edge), ("peer_bentoml", peer))
              for point in r.pop("sweep")]
    data = {"model": "examples/digits (64 -> 512 -> 256 -> 10 MLP), cloud-fp32 ONNX", "requests_per_point": n,
            "goodput": curves, "shedding": "BENTOEDGE_MAX_LATENCY_MS (default 20): BentoML's dispatcher sheds "
                                          "with 503 what it predicts would miss it",
            "quick": args.quick, "raw_onnxruntime": floor, "peer_bentoml": peer, "bentoedge": edge,
            "ratios": ratios, "goal": "p50 <= 1.10x peer and throughput >= 0.95x peer", "goal_met": goal}
    shutil.rmtree(work, ignore_errors=True)
    path = write_result("cloud_serving", data)
    print(json.dumps(ratios), "goal met" if goal else "goal NOT met", path)


if __name__ == "__main__":
    main()
