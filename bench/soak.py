"""Soak: the device agent and the cloud service at saturation for minutes, bounded.

Each server runs in its own process and is driven closed-loop by ``CONCURRENCY`` clients on
keep-alive connections for ``--minutes`` (default 10, each).  Every ``WINDOW_S`` seconds the
script records the window's answered requests, errors, p99 and the server's RSS (the agent
process; for ``bentoml serve``, its whole process group).  After a warm-up of the first
``WARMUP_WINDOWS`` windows it reports: errors (goal 0; a 503 the cloud's latency budget sheds
is counted apart, as ``shed_503``), p99 drift (the last quarter of the
windows against the first quarter after warm-up, median window of each; the mean's drift is
kept beside it) and RSS growth over the same span (the server's whole process tree), each
with a goal under 5 %.  The model is the digits example (its int8 TFLite on the device, its
fp32 ONNX in the cloud).  Writes bench/results/soak.json.

    python -m bench.soak [--minutes 10] [--quick]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import write_result

CONCURRENCY = 8
WINDOW_S = 10.0
WARMUP_WINDOWS = 3
GOAL_PCT = 5.0


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024.0


def _tree(root: int) -> list[int]:
    """``root`` and every process descended from it (``bentoml serve``, its arbiter's workers).

    By parent links, not by process group: a server may move its workers into groups of their
    own, and then a group count would see only the parent's RSS and call a leak flat."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # ppid is the 2nd field after the ")" that closes the command name
                ppid = int(Path(entry, "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(parents.get(pid, []))
    return out


def soak(port: int, body: bytes, content_type: str, pids: Callable[[], list[int]], seconds: float) -> dict[str, Any]:
    """Closed-loop load for ``seconds``; per-window figures and the drift/growth summary."""
    stop = threading.Event()
    lock = threading.Lock()
    window: list[float] = []
    errors = {"count": 0, "shed": 0}

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/predict", body, {"Content-Type": content_type})
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                status = 0
            with lock:
                if status == 200:
                    window.append(time.perf_counter() - t0)
                elif status == 503:  # shed by design (a latency budget), counted apart from failures
                    errors["shed"] += 1
                else:
                    errors["count"] += 1
        conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CONCURRENCY)]
    for t in threads:
        t.start()
    windows: list[dict[str, Any]] = []
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            time.sleep(min(WINDOW_S, max(0.0, end - time.monotonic())))
            with lock:
                lat, window[:] = list(window), []
                errs, shed, errors["count"], errors["shed"] = errors["count"], errors["shed"], 0, 0
            windows.append({"t_s": round(seconds - (end - time.monotonic()), 1), "answered": len(lat),
                            "errors": errs, "shed_503": shed, "p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 3) if lat else None,
                            "rss_mb": round(_rss_mb(pids()), 2)})
    finally:
        stop.set()
        for t in threads:
            t.join(35)
    return {"windows": windows, **_summary(windows)}


def _summary(windows: list[dict[str, Any]]) -> dict[str, Any]:
    steady = windows[WARMUP_WINDOWS:] or windows
    quarter = max(1, len(steady) // 4)
    first, last = steady[:quarter], steady[-quarter:]

    def values(rows: list[dict[str, Any]], key: str) -> list[float]:
        return [float(r[key]) for r in rows if r.get(key) is not None]

    def mean(rows: list[dict[str, Any]], key: str) -> float:
        vals = values(rows, key)
        return sum(vals) / len(vals) if vals else float("nan")

    def median(rows: list[dict[str, Any]], key: str) -> float:
        vals = values(rows, key)
        return float(np.median(vals)) if vals else float("nan")

    # The goal is judged on the median window of each quarter: a server that degrades moves
    # its typical window, while a neighbour's burst on a shared machine (one or two windows
    # of a few hundred ms, seen on both servers at once) moves only the mean.  Both are kept.
    p99_drift = 100.0 * (median(last, "p99_ms") / median(first, "p99_ms") - 1.0)
    p99_drift_of_means = 100.0 * (mean(last, "p99_ms") / mean(first, "p99_ms") - 1.0)
    rss_growth = 100.0 * (mean(last, "rss_mb") / mean(first, "rss_mb") - 1.0)
    errors = sum(int(w["errors"]) for w in windows)
    shed = sum(int(w.get("shed_503", 0)) for w in windows)
    answered = sum(int(w["answered"]) for w in windows)
    return {"answered": answered, "errors": errors, "shed_503": shed, "p99_drift_pct": round(p99_drift, 2),
            "p99_drift_of_means_pct": round(p99_drift_of_means, 2),
            "rss_first_mb": round(mean(first, "rss_mb"), 2), "rss_last_mb": round(mean(last, "rss_mb"), 2),
            "rss_growth_pct": round(rss_growth, 2),
            "goal_met": {"zero_errors": errors == 0, "p99_drift": abs(p99_drift) < GOAL_PCT,
                         "rss_growth": rss_growth < GOAL_PCT}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="minutes at saturation, per server (default 10)")
    ap.add_argument("--quick", action="store_true", help="one minute each")
    args = ap.parse_args(argv)
    seconds = 60.0 if args.quick else args.minutes * 60.0
    with tempfile.TemporaryDirectory(prefix="bentoedge-bench-soak-") as d:
        work = Path(d)
        os.environ.update({"BENTOML_HOME": str(work / "bentoml"), "BENTOML_DO_NOT_TRACK": "true",
                           "BENTOEDGE_HOME": str(work / "home"), "BENTOEDGE_AUTH": "off"})
        from bench.cloud_serving import free_port
        from bench.edge_serving import build_models, seal_for_device
        from bentoedge.bentos.build import BuildOptions, build
        from bentoedge.bentos.keystore import LocalKeys
        from bentoedge.cloud.serve import start_server, stop_server, wait_ready
        from bentoedge.examples.digits import make_example

        LocalKeys(work / "home").init()
        x = np.random.default_rng(0).random((1, 64), dtype=np.float32)
        body = json.dumps({"inputs": {"x": x.tolist()}}).encode()
        result: dict[str, Any] = {"concurrency": CONCURRENCY, "window_s": WINDOW_S, "warmup_windows": WARMUP_WINDOWS,
                                  "seconds_each": seconds, "goal": f"0 errors; p99 drift and RSS growth under "
                                                                   f"{GOAL_PCT:.0f} % after warm-up"}

        device_model = build_models(work / "models", quick=True)["digits"]
        sealed, _ = seal_for_device("digits", device_model, work / "device-home")
        proc = subprocess.Popen([sys.executable, "-m", "bench.agent_process", str(sealed.path),
                                 str(work / "device-home"), json.dumps({})], stdout=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline() if proc.stdout is not None else ""
            port = int(line.split()[1])
            print(f"device: {seconds:.0f} s at concurrency {CONCURRENCY}", flush=True)
            result["device"] = soak(port, body, "application/json", lambda: [proc.pid], seconds)
        finally:
            proc.terminate()
            proc.wait(timeout=30)

        example = make_example(work / "example", epochs=3)
        cloud = build(BuildOptions(source=example["model"], name="digits-soak", home=work / "home", version="v1",
                                   calibration=example["calibration"], validation=example["validation"],
                                   edge=(), cloud=("fp32",)))
        port, log = free_port(), work / "serve.log"
        server = start_server(cloud.manifest.tag, port, log=log)
        try:
            wait_ready(f"http://127.0.0.1:{port}", timeout=180, proc=server, log=log)
            print(f"cloud: {seconds:.0f} s at concurrency {CONCURRENCY}", flush=True)
            result["cloud"] = soak(port, body, "application/json", lambda: _tree(server.pid), seconds)
        finally:
            stop_server(server)
    for side in ("device", "cloud"):
        r = result[side]
        print(f"{side}: {r['answered']} answered, {r['errors']} errors, {r['shed_503']} shed, "
              f"p99 drift {r['p99_drift_pct']} %, "
              f"RSS growth {r['rss_growth_pct']} %", flush=True)
    print(f"wrote {write_result('soak', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
