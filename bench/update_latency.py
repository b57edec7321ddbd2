"""Benchmark: from publish to serving on a device, over HTTP on loopback.

A folder channel is served by a loopback HTTP server thread (with Range support, like S3
or a CDN); a device agent, wired by ``edge.wiring.wire`` as ``agent run`` wires it, polls
it through the real ``HttpFetcher``.  For a ~4 MB edge artifact (a real fp32 TFLite
model) we time each publish and each update cycle, stage by stage (refresh, select,
download, verify, install, health = decrypt + load + golden samples, swap, commit), and
the cost of a poll that finds nothing new: requests, bytes and which paths it touched.
Goal: median publish-to-serving under 2 s; a no-update poll of one small GET of
timestamp metadata (plus ngclient's probe for a newer root).

    python -m bench.update_latency [--quick]   ->  bench/results/update_latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from bentoedge.cloud.channel import Channel  # noqa: E402
from bentoedge.edge.sync.machine import Result, Stage  # noqa: E402
from bentoedge.edge.wiring import wire  # noqa: E402
from tests.sync_support import RangeHandler, make_device, seal_tiny, serve_folder, signer_pub  # noqa: E402


def big_tflite(units: int = 1000, inputs: int = 4, hidden: int = 1024) -> bytes:
    """A real fp32 TFLite model of about ``4 * hidden * units`` bytes (x: [n, 4] -> y: [n, 3])."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.RandomState(0)
    w1 = tf.constant(rng.randn(inputs, hidden).astype("float32") * 0.1)
    w2 = tf.constant(rng.randn(hidden, units).astype("float32") * 0.01)
    w3 = tf.constant(rng.randn(units, 3).astype("float32") * 0.1)

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, inputs], tf.float32, name="x")])
        def serve(self, x: Any) -> Any:
            return {"y": tf.nn.softmax(tf.matmul(tf.nn.relu(tf.matmul(tf.nn.relu(tf.matmul(x, w1)), w2)), w3))}

    m = M()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([m.serve.get_concrete_function()], m)
    return bytes(conv.convert())


def write_result(name: str, data: dict[str, Any]) -> Path:
    try:
        from bench._common import write_result as common_write  # engineer A's shared writer

        return Path(common_write(name, data))
    except ImportError:
        out = ROOT / "bench" / "results" / f"{name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        data = {**data, "machine": {"python": platform.python_version(), "platform": platform.platform(),
                                    "cpus": os.cpu_count()}, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, out)
        return out


def q(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p * (len(s) - 1))))]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer trials (under a minute)")
    args = ap.parse_args(argv)
    trials = 3 if args.quick else 10
    polls = 5 if args.quick else 20
    model = big_tflite()
    with tempfile.TemporaryDirectory(prefix="bentoedge-bench-update-") as tmpdir:
        tmp = Path(tmpdir)
        home = tmp / "home"
        ch = Channel.init((tmp / "www" / "chan").as_uri(), home=home)
        with serve_folder(tmp / "www") as base:
            dev = make_device(tmp / "dev", f"{base}/chan", ch.root_bytes(), signer_pub(home))
            ch.enroll("dev-1", dev.pub_pem)
            sealed = [seal_tiny(tmp / f"s{i}", home, f"v{i}", i, model_bytes=model) for i in range(1, trials + 2)]
            artifact = sealed[0].manifest.artifact("edge-fp32").size
            ch.publish(sealed[0])
            runs: list[dict[str, Any]] = []
            with wire(dev.config, active=dev.active) as wired:
                agent = wired.agent
                first = agent.sync_once()
                assert first.result is Result.UPDATED, first
                for s in sealed[1:]:
                    t0 = time.perf_counter()
                    ch.publish(s)
                    published = time.perf_counter()
                    r = agent.sync_once()
                    done = time.perf_counter()
                    assert r.result is Result.UPDATED, r
                    runs.append({"version": s.manifest.version, "publish_s": published - t0,
                                 "publish_to_serving_s": done - published, "requests": r.requests,
                                 "bytes": r.bytes, **{f"{k}_s": v for k, v in r.stages.items()}})
                RangeHandler.counts.clear()
                poll_times, poll_req, poll_bytes = [], [], []
                for _ in range(polls):
                    t0 = time.perf_counter()
                    r = agent.sync_once()
                    poll_times.append(time.perf_counter() - t0)
                    assert r.result is Result.UP_TO_DATE, r
                    poll_req.append(r.requests)
                    poll_bytes.append(r.bytes)
                paths = {p: n // polls for p, n in RangeHandler.counts.items()}
    latency = [r["publish_to_serving_s"] for r in runs]
    stages = [stage.value for stage in Stage]
    result = {
        "transport": "http (loopback, stdlib server with Range)",
        "artifact_bytes": artifact,
        "trials": trials,
        "publish_to_serving_s": {"median": statistics.median(latency), "p90": q(latency, 0.9),
                                 "min": min(latency), "max": max(latency)},
        "publish_s_median": statistics.median(r["publish_s"] for r in runs),
        "stage_median_s": {s: statistics.median(r[f"{s}_s"] for r in runs) for s in stages},
        "update_requests_median": statistics.median(r["requests"] for r in runs),
        "update_bytes_median": statistics.median(r["bytes"] for r in runs),
        "poll_no_update": {"requests": statistics.median(poll_req), "bytes": statistics.median(poll_bytes),
                           "paths_per_poll": paths, "median_s": statistics.median(poll_times)},
        "goal": {"publish_to_serving_median_s": 2.0,
                 "met": statistics.median(latency) < 2.0},
        "runs": runs,
    }
    out = write_result("update_latency", result)
    print(json.dumps({k: result[k] for k in ("artifact_bytes", "publish_to_serving_s", "stage_median_s",
                                             "poll_no_update", "goal")}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
