"""Device serving latency: the raw interpreter (floor), the agent in process, over HTTP, and the peer.

Side by side in one run, on two models:

- ``digits``: the example digits classifier (examples/digits.py; 64 -> 10), int8;
- ``mobilenet``: a MobileNetV2-shaped int8 model (random weights) at 96x96x3 (``--quick``:
  alpha 0.35) rather than 224x224x3, because a 2-core machine would spend the whole
  time budget on 224 inputs; the overhead figures do not depend on the input size.

Per model: the floor (set, invoke, get on a bare LiteRT interpreter), the agent in process
(``EdgeModel.predict`` on the sealed model decrypted in memory), the agent over HTTP on
loopback (``AgentServer`` in a process of its own, as on a device: bench/agent_process.py;
keep-alive, JSON and .npz bodies), and the peer: plain
``bentoml serve`` of the same .tflite file with the same interpreter
(bench/peer_tflite_service.py), JSON bodies.  p50/p99 in milliseconds.

Also: an interpreter pool vs one interpreter behind a lock (two client threads), and an
overload run (open loop at twice the measured capacity, cloud = a loopback stub with an
added delay) comparing edge_only with prefer_edge: p50/p99 and the fraction offloaded.

    .venv/bin/python -m bench.edge_serving [--quick]   ->  bench/results/edge_serving.json
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from bench._common import stop_process, write_result  # noqa: E402
from bentoedge.bentos.keystore import LocalKeys  # noqa: E402
from bentoedge.bentos.manifest import Signature, TensorSpec  # noqa: E402
from bentoedge.bentos.recipients import KekRecipient, Keyring  # noqa: E402
from bentoedge.bentos.sealed import Plain, SealedModel, SealRequest, seal  # noqa: E402
from bentoedge.edge.runtime import EdgeModel, interpreter_class, load_edge_model  # noqa: E402


def stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"n": len(ms), "p50": round(float(np.percentile(a, 50)), 4), "p99": round(float(np.percentile(a, 99)), 4),
            "mean": round(float(a.mean()), 4)}


def timed(fn: Callable[[], Any], n: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000.0)
    return out


# -- models ---------------------------------------------------------------------------------

def to_int8_tflite(keras_model: Any, calib: np.ndarray) -> bytes:
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([row[None]] for row in calib)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return bytes(conv.convert())


def build_models(tmp: Path, quick: bool) -> dict[str, bytes]:
    import keras

    from bentoedge.examples import digits

    x, _ = digits.digits_data()
    paths = digits.make_example(tmp / "digits", epochs=3 if quick else 30)
    out = {"digits": to_int8_tflite(keras.models.load_model(paths["model"]), x[:100].astype(np.float32))}
    size = 96
    mpath = digits.make_mobilenet(tmp / "mobilenet.keras", input_size=size, alpha=0.35 if quick else 1.0)
    calib = np.random.default_rng(0).random((8 if quick else 32, size, size, 3), dtype=np.float32)
    out["mobilenet"] = to_int8_tflite(keras.models.load_model(mpath), calib)
    return out


def seal_for_device(name: str, model: bytes, home: Path) -> tuple[SealedModel, Keyring]:
    """Seal the .tflite the way a build does, so the agent decrypts it in memory like on a device."""
    cls, _ = interpreter_class()
    interp = cls(model_content=model)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    shape = lambda d: tuple(None if int(v) < 0 else int(v) for v in d.get("shape_signature", d["shape"]))  # noqa: E731
    sig = Signature((TensorSpec("x", "float32", (None, *shape(inp)[1:])),),
                    (TensorSpec("y", "float32", (None, *shape(out)[1:])),))
    keys = LocalKeys(home)
    keys.init()
    req = SealRequest(name=name, version="1", release=1, source={"kind": "tflite", "sha256": "0" * 64},
                      signature=sig, artifacts=[Plain("edge-int8", "edge", model, "litert", "int8")])
    seal(req, home / name, [KekRecipient(keys.kek())], keys.signing_key())
    return SealedModel.open(home / name), Keyring().add_kek(keys.kek())


# -- the four ways to call the model ------------------------------------------------------------

def floor(model: bytes, x: np.ndarray, n: int) -> list[float]:
    cls, _ = interpreter_class()
    interp = cls(model_content=model)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.resize_tensor_input(inp["index"], x.shape)
    interp.allocate_tensors()

    def call() -> None:
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        interp.get_tensor(out["index"])

    return timed(call, n)


def npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def http_calls(port: int, path: str, body: bytes, content_type: str, accept: str | None, n: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": content_type, **({"Accept": accept} if accept else {})}

    def call() -> None:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{path} answered {resp.status}")

    try:
        return timed(call, n)
    finally:
        conn.close()


@contextlib.contextmanager
def agent_process(sealed: SealedModel, keys_home: Path, **settings: Any) -> Iterator[int]:
    """The agent's HTTP API in its own process (see bench/agent_process.py); yields its port."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "agent_process.py"), str(sealed.path),
                             str(keys_home), json.dumps(settings)], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout is not None else ""
        if not line.startswith("ready "):
            raise RuntimeError(f"the agent process did not start (exit {proc.poll()}): {line!r}")
        yield int(line.split()[1])
    finally:
        stop_process(proc)


def run_peer(tflite: Path, body: bytes, n: int, log: Path) -> list[float]:
    import socket

    from bentoedge.cloud.serve import start_server, stop_server, wait_ready

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = start_server("peer:0", port, env={"PEER_TFLITE": str(tflite)}, log=log,
                        service="bench.peer_tflite_service:PeerTflite")
    try:
        wait_ready(f"http://127.0.0.1:{port}", timeout=120, proc=proc, log=log)
        return http_calls(port, "/predict", body, "application/json", None, n)
    finally:
        stop_server(proc)


# -- pool vs lock, overload -----------------------------------------------------------------------

def pool_vs_lock(sealed: SealedModel, keyring: Keyring, x: np.ndarray, per_thread: int) -> dict[str, Any]:
    out = {}
    for label, workers, threads in (("lock_1x2threads", 1, 2), ("pool_2x1thread", 2, 1)):
        model = load_edge_model(sealed, keyring, threads=threads, workers=workers)
        model.predict({"x": x})

        def client(model: EdgeModel = model) -> None:
            for _ in range(per_thread):
                model.predict({"x": x})

        t = time.perf_counter()
        ths = [threading.Thread(target=client) for _ in range(2)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        out[label] = {"workers": workers, "threads": threads,
                      "throughput_rps": round(2 * per_thread / (time.perf_counter() - t), 2)}
    return out


MAX_OFFERED_RPS = 600.0
OVERLOAD_BATCH = 16  # images per request, so the model (not the load generator) is the bottleneck
OVERLOAD_BUDGET_MS = 100.0  # the device's latency budget (config latency_budget_ms): an interactive answer
OVERLOAD_FORWARD_SLACK = 0.05  # the goal: forward at most the excess over capacity plus 5 points


class _SlowCloud(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    delay_s = 0.02
    answer = json.dumps({"outputs": {"y": [[0.0]]}, "model": {"name": "cloud", "version": "c"},
                         "served_by": "cloud"}).encode()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(self.delay_s)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.answer)))
        self.end_headers()
        self.wfile.write(self.answer)

    def log_message(self, *args: Any) -> None:
        pass


def open_loop(port: int, body: bytes, rate: float, seconds: float) -> dict[str, Any]:
    """Send at a fixed rate regardless of answers; latency counts from the scheduled send time."""
    local = threading.local()
    results: list[tuple[float, int, str]] = []
    lock = threading.Lock()

    def one(scheduled: float) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/x-npz"})
            resp = conn.getresponse()
            resp.read()
            status, where = resp.status, resp.getheader("x-bentoedge-served-by") or "none"
        except (OSError, http.client.HTTPException):
            local.conn = None
            status, where = 599, "error"
        with lock:
            results.append(((time.perf_counter() - scheduled) * 1000.0, status, where))

    n = int(rate * seconds)
    start = time.perf_counter() + 0.05
    with ThreadPoolExecutor(max_workers=48) as pool:
        for i in range(n):
            at = start + i / rate
            delay = at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, at)
    ok = [ms for ms, status, _ in results if status == 200]
    return {"offered_rps": round(rate, 2), "sent": n, **({"latency_ms": stats(ok)} if ok else {}),
            "ok": len(ok), "rejected_503": sum(1 for _, s, _ in results if s == 503),
            "errors": sum(1 for _, s, _ in results if s not in (200, 503)),
            "offload_fraction": round(sum(1 for _, s, w in results if s == 200 and w == "cloud") / max(1, n), 4)}


def overload(sealed: SealedModel, keyring: Keyring, keys_home: Path, x: np.ndarray,
             seconds: float) -> dict[str, Any]:
    """Capacity = one keep-alive client's closed-loop rate over HTTP; then offer twice that."""
    body = npz({"x": x})
    with agent_process(sealed, keys_home) as port:
        service_ms = stats(http_calls(port, "/predict", body, "application/x-npz", None, 30))["p50"]
    model = load_edge_model(sealed, keyring)
    local_ms = stats(timed(lambda: model.predict({"x": x}), 30))["p50"]
    capacity_rps = 1000.0 / service_ms
    stub = ThreadingHTTPServer(("127.0.0.1", 0), _SlowCloud)
    stub.daemon_threads = True
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    cloud = f"http://127.0.0.1:{stub.server_address[1]}"
    out: dict[str, Any] = {"capacity_rps": round(capacity_rps, 2), "cloud_delay_ms": _SlowCloud.delay_s * 1000,
                           "seconds": seconds, "batch": int(x.shape[0]), "service_ms_p50": service_ms,
                           "local_ms_p50": local_ms, "capped_at_rps": MAX_OFFERED_RPS if 2 * capacity_rps > MAX_OFFERED_RPS else None}
    try:
        for mode in ("edge_only", "prefer_edge"):
            limits = {"max_inflight": 2, "latency_budget_ms": OVERLOAD_BUDGET_MS}
            with agent_process(sealed, keys_home, cloud=cloud, mode=mode, limits=limits) as port:
                out[mode] = open_loop(port, body, min(2 * capacity_rps, MAX_OFFERED_RPS), seconds)
    finally:
        stub.shutdown()
        stub.server_close()
    prefer = out["prefer_edge"]
    excess = max(0.0, 1.0 - capacity_rps / prefer["offered_rps"])
    p99 = prefer.get("latency_ms", {}).get("p99", float("inf"))
    # What each mode answered here, per second: edge_only's is the device's own capacity under
    # this very load (the load generator and the cloud stand-in share its two cores), beside
    # the capacity one quiet client measured; prefer_edge's should reach it.
    for mode in ("edge_only", "prefer_edge"):
        r = out[mode]
        r["local_rps"] = round((r["ok"] - round(r["offload_fraction"] * r["sent"])) / seconds, 2)
    # The excess over what edge_only answered under the same load: on a machine whose cores the
    # load generator and the cloud stand-in share, the capacity one quiet client measured is
    # more than the device can do while it is being hammered, so this is the fairer bar.
    under_load = max(0.0, 1.0 - out["edge_only"]["local_rps"] / prefer["offered_rps"])
    out["goal"] = {"latency_budget_ms": OVERLOAD_BUDGET_MS, "excess_fraction": round(excess, 4),
                   "excess_under_load_fraction": round(under_load, 4),
                   "prefer_edge_forwards_at_most_excess_under_load":
                       prefer["offload_fraction"] <= under_load + OVERLOAD_FORWARD_SLACK,
                   "forward_slack": OVERLOAD_FORWARD_SLACK,
                   "prefer_edge_p99_within_budget": p99 <= OVERLOAD_BUDGET_MS,
                   "prefer_edge_forwards_at_most_excess": prefer["offload_fraction"] <= excess + OVERLOAD_FORWARD_SLACK}
    return out


def goodput_sweep(sealed: SealedModel, keys_home: Path, x: np.ndarray, requests: int) -> list[dict[str, Any]]:
    """Closed-loop concurrency 1..64 against the agent (JSON bodies), with the cloud a loopback
    stub 20 ms away: answered per second, shed (503) share, answered p99 and the share the
    device forwarded, in edge_only (sheds past its latency budget) and prefer_edge (forwards)."""
    from bench.cloud_serving import SWEEP, load

    body = json.dumps({"inputs": {"x": x.tolist()}}).encode()
    stub = ThreadingHTTPServer(("127.0.0.1", 0), _SlowCloud)
    stub.daemon_threads = True
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    cloud = f"http://127.0.0.1:{stub.server_address[1]}"
    points: list[dict[str, Any]] = []
    try:
        for mode in ("edge_only", "prefer_edge"):
            limits = {"max_inflight": 2, "latency_budget_ms": OVERLOAD_BUDGET_MS}
            with agent_process(sealed, keys_home, cloud=cloud, mode=mode, limits=limits) as port:
                load(port, "/predict", [body] * 20, 1)  # warm-up
                for c in SWEEP:
                    r = load(port, "/predict", [body] * requests, c)
                    forwarded = r.pop("served_by").get("cloud", 0) / max(1, r["requests"])
                    r.pop("errors_by_status")
                    points.append({"system": f"device {mode}", "concurrency": c, **r,
                                   "forwarded_share": round(forwarded, 4)})
    finally:
        stub.shutdown()
        stub.server_close()
    return points


# -- main ---------------------------------------------------------------------------------------

def bench_model(name: str, model: bytes, tmp: Path, n: int,
                peer_n: int) -> tuple[dict[str, Any], SealedModel, Keyring, np.ndarray]:
    sealed, keyring = seal_for_device(name, model, tmp / f"home-{name}")
    spec = sealed.manifest.signature.inputs[0]
    x = np.random.default_rng(1).random((1, *[int(d or 1) for d in spec.shape[1:]]), dtype=np.float32)
    edge = load_edge_model(sealed, keyring)
    res: dict[str, Any] = {"input_shape": [1, *spec.shape[1:]], "tflite_bytes": len(model)}
    res["floor"] = stats(floor(model, x, n))
    res["in_process"] = stats(timed(lambda: edge.predict({"x": x}), n))
    json_body = json.dumps({"inputs": {"x": x.tolist()}}).encode()
    with agent_process(sealed, tmp / f"home-{name}") as port:
        res["http_json"] = stats(http_calls(port, "/predict", json_body, "application/json", None, n))
        res["http_npz"] = stats(http_calls(port, "/predict", npz({"x": x}), "application/x-npz",
                                           "application/x-npz", n))
    path = tmp / f"{name}.tflite"
    path.write_bytes(model)
    try:
        res["peer_bentoml_json"] = stats(run_peer(path, json.dumps({"x": x.tolist()}).encode(), peer_n,
                                                  tmp / f"peer-{name}.log"))
    except Exception as exc:  # the peer is optional on a device-only install; say why it is missing
        res["peer_bentoml_json"] = {"error": f"{type(exc).__name__}: {exc}"}
    f = res["floor"]["p50"]
    res["ratios"] = {
        "in_process_over_floor_p50": round(res["in_process"]["p50"] / f, 3),
        "http_json_overhead_ms_p50": round(res["http_json"]["p50"] - f, 4),
        "http_npz_overhead_ms_p50": round(res["http_npz"]["p50"] - f, 4),
    }
    if "p50" in res["peer_bentoml_json"]:
        peer_over = res["peer_bentoml_json"]["p50"] - f
        res["ratios"]["peer_overhead_ms_p50"] = round(peer_over, 4)
        res["ratios"]["peer_overhead_over_http_json_overhead"] = round(
            peer_over / max(1e-6, res["http_json"]["p50"] - f), 2)
    return res, sealed, keyring, x


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer iterations and a smaller MobileNet (< 120 s)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    n, peer_n = (200, 100) if args.quick else (2000, 500)
    with tempfile.TemporaryDirectory(prefix="bentoedge-bench-edge-") as d:
        tmp = Path(d)
        models = build_models(tmp, args.quick)
        built_s = time.perf_counter() - t0
        result: dict[str, Any] = {"quick": args.quick, "runtime": interpreter_class()[1], "build_s": round(built_s, 1),
                                  "mobilenet": {"input_size": 96, "alpha": 0.35 if args.quick else 1.0},
                                  "models": {}}
        for name in ("digits", "mobilenet"):
            count = n if name == "digits" else max(50, n // 10)
            res, sealed, keyring, x = bench_model(name, models[name], tmp, count, peer_n if name == "digits" else 50)
            result["models"][name] = res
            print(f"{name}: {json.dumps(res['ratios'])}", flush=True)
            if name == "mobilenet":
                result["pool_vs_lock"] = pool_vs_lock(sealed, keyring, x, 20 if args.quick else 100)
                # Capacity as a service: one keep-alive client's rate over HTTP.  The offered
                # load is capped where a Python load generator on the same two cores stops
                # keeping time (then the figure says so: capped_at_rps).
                result["overload"] = overload(sealed, keyring, tmp / f"home-{name}", np.repeat(x, OVERLOAD_BATCH, axis=0),
                                              3.0 if args.quick else 10.0)
                result["goodput"] = goodput_sweep(sealed, tmp / f"home-{name}", x, 100 if args.quick else 300)
    result["total_s"] = round(time.perf_counter() - t0, 1)
    print(f"wrote {write_result('edge_serving', result)} in {result['total_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
