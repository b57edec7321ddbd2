"""Well-kept HTTP and metrics libraries against the device's hand-written ones, measured in one run.

The device agent serves HTTP on the standard library's ThreadingHTTPServer (``edge.server``),
calls the cloud with ``http.client`` (``edge.cloud_client``) and writes Prometheus text by
hand (``edge.metrics``).  This script weighs each against a small, well-kept library, with
figures from one run on one machine (compare the ratios, not the absolute numbers, on a
shared machine), and decides per component by a stated rule (bench/http_choices_rule.py:
``RULE``, ``decide``, computed from the figures below):

1. server: the raw LiteRT call (the floor), the agent as it is (``AgentServer`` in its own
   process, bench/agent_process.py), and the agent's same request logic behind uvicorn with
   h11 on plain asyncio (bench/http_choices_servers.py), the route called on the event
   loop and in a thread pool.  The model is the committed tiny LiteRT model
   (tests/data/sync_tiny_fp32.tflite, softmax(x @ W + b), x [1, 4]), sealed as a build
   seals it, so the figures are the HTTP layer's and not a model's; the body is the same
   JSON for every server.  The client is this process: one keep-alive ``http.client``
   connection at concurrency 1 (p50/p99), eight threads with one connection each for the
   throughput at concurrency 8.  The servers run side by side and are measured in
   interleaved rounds, so a burst of load elsewhere on the machine hits them all.
2. client: ``CloudClient`` (``post``, and ``predict`` which also checks the answer's shape)
   against ``urllib3.PoolManager`` with a ``Retry`` and a ``Timeout``, and the raw
   ``http.client`` call as the floor, posting the same body to a canned loopback server
   (asyncio, no thread per request), so the client's own cost dominates.
3. metrics: rendering /metrics with ``edge.metrics.Metrics`` against prometheus-client's
   ``generate_latest`` for the same counters, histogram and gauges, fed the same
   observations (the two texts are parsed back and compared sample by sample), and the
   cost of one observation in each.
4. install and import: each candidate's installed size (the files its dist-info RECORD
   lists, with the dependencies it would add beyond the device install), and the import
   time and RSS growth in a fresh interpreter and on top of the agent's own imports
   (median of several subprocesses).

    python -m bench.http_choices [--quick]   ->  bench/results/http_choices.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TINY_MODEL = ROOT / "tests" / "data" / "sync_tiny_fp32.tflite"

from bench._common import stop_process, write_result  # noqa: E402
from bench.cloud_serving import load  # noqa: E402
from bench.edge_serving import floor, seal_for_device, stats  # noqa: E402
from bench.http_choices_rule import RULE, choose, ratio  # noqa: E402

# -- timing helpers ----------------------------------------------------------------------------


def interleaved(calls: Mapping[str, Callable[[], Any]], n: int, rounds: int, warmup: int = 20) -> dict[str, list[float]]:
    """Time each call ``n`` times in ms, split over ``rounds`` rounds that take the variants in
    turn, so a slow spell on the shared machine lands on every variant alike."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    per_round = max(1, n // rounds)
    for _ in range(rounds):
        for name, call in calls.items():
            out = samples[name]
            for _ in range(per_round):
                t = time.perf_counter()
                call()
                out.append((time.perf_counter() - t) * 1000.0)
    return samples


def ms_stats(samples: list[float]) -> dict[str, float]:
    s = stats(samples)
    return {"n": int(s["n"]), "p50_ms": s["p50"], "p99_ms": s["p99"], "mean_ms": s["mean"]}


@contextlib.contextmanager
def serving(cmd: list[str]) -> Iterator[tuple[int, int]]:
    """Run a server process that prints ``ready PORT``; yields (port, pid); terminates it after."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = proc.stdout.readline() if proc.stdout is not None else ""
        if not line.startswith("ready "):
            raise RuntimeError(f"{' '.join(cmd[:4])} did not start (exit {proc.poll()}): {line!r}")
        yield int(line.split()[1]), proc.pid
    finally:
        stop_process(proc)


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024.0, 2)
    except OSError:
        return None
    return None


def post(conn: http.client.HTTPConnection, body: bytes) -> None:
    """One prediction on a kept-alive connection, as a device's own program would send it."""
    conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    if resp.status != 200:
        raise RuntimeError(f"/predict answered {resp.status}")


def answer(port: int, body: bytes) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


# -- 1. the server ------------------------------------------------------------------------------

C8_ROUNDS = 3


def bench_server(tmp: Path, n: int, c8_requests: int, rounds: int) -> dict[str, Any]:
    model = TINY_MODEL.read_bytes()
    home = tmp / "home-tiny"
    sealed, _ = seal_for_device("tiny", model, home)
    x = np.random.default_rng(1).random((1, 4), dtype=np.float32)
    body = json.dumps({"inputs": {"x": x.tolist()}}).encode()
    agent = [sys.executable, str(ROOT / "bench" / "agent_process.py"), str(sealed.path), str(home), "{}"]
    uvicorn = [sys.executable, "-m", "bench.http_choices_servers", "uvicorn-agent", str(sealed.path), str(home)]
    commands = {"agent_server": agent,
                "uvicorn_h11_inline": [*uvicorn, json.dumps({"offload": False})],
                "uvicorn_h11_threadpool": [*uvicorn, json.dumps({"offload": True})]}
    floor_ms = ms_stats(floor(model, x, n))
    out: dict[str, Any] = {"model": "tests/data/sync_tiny_fp32.tflite (softmax(x @ W + b), x [1, 4], fp32, sealed)",
                           "body_bytes": len(body), "client": "this process: http.client keep-alive (c1); "
                           "8 threads, one keep-alive connection each (c8)", "floor": floor_ms}
    with contextlib.ExitStack() as stack:
        ports = {name: stack.enter_context(serving(cmd)) for name, cmd in commands.items()}
        answers = {name: answer(port, body) for name, (port, _) in ports.items()}
        conns = {name: stack.enter_context(contextlib.closing(http.client.HTTPConnection("127.0.0.1", port, timeout=30)))
                 for name, (port, _) in ports.items()}
        samples = interleaved({name: functools.partial(post, conn, body) for name, conn in conns.items()}, n, rounds)
        c8: dict[str, list[dict[str, Any]]] = {name: [] for name in ports}
        for _ in range(C8_ROUNDS):  # interleaved rounds; the best one counts (noise only ever slows)
            for name, (port, _) in ports.items():
                c8[name].append(load(port, "/predict", [body] * (c8_requests // C8_ROUNDS), 8))
        rss = {name: rss_mb(pid) for name, (_, pid) in ports.items()}
    variants: dict[str, Any] = {}
    reference = answers["agent_server"][1].get("outputs")
    for name in ports:
        status, doc = answers[name]
        best = max(c8[name], key=lambda r: float(r["throughput_rps"]))
        s = ms_stats(samples[name])
        variants[name] = {**s, "overhead_p50_ms": round(s["p50_ms"] - floor_ms["p50_ms"], 4),
                          "c8_throughput_rps": round(float(best["throughput_rps"]), 1), "c8_rounds": C8_ROUNDS,
                          "c8_p50_ms": round(float(best["p50_ms"]), 4), "c8_p99_ms": round(float(best["p99_ms"]), 4),
                          "c8_errors": sum(int(v) for r in c8[name] for v in r["errors_by_status"].values()),
                          "rss_mb_after": rss[name], "status": status,
                          "same_answer_as_agent": status == 200 and doc.get("outputs") == reference}
    out["variants"] = variants
    ours = variants["agent_server"]
    out["ratios"] = {name: {"overhead_p50_over_ours": ratio(v["overhead_p50_ms"], ours["overhead_p50_ms"]),
                            "p99_over_ours": ratio(v["p99_ms"], ours["p99_ms"]),
                            "c8_throughput_over_ours": ratio(v["c8_throughput_rps"], ours["c8_throughput_rps"])}
                     for name, v in variants.items() if name != "agent_server"}
    return out


# -- 2. the client ------------------------------------------------------------------------------

def bench_client(n: int, rounds: int) -> dict[str, Any]:
    import urllib3

    from bentoedge.edge.cloud_client import CloudClient

    body = json.dumps({"inputs": {"x": [[0.1, 0.2, 0.3, 0.4]]}}).encode()
    with serving([sys.executable, "-m", "bench.http_choices_servers", "canned"]) as (port, _):
        url = f"http://127.0.0.1:{port}"
        raw = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        ours = CloudClient(url, timeout_s=5.0, retries=1, pool_size=8)
        # The same policy as ours: one retry of a connection that failed before the request
        # reached the server, none once it may have (a read), a 5 s bound on the call.
        pool = urllib3.PoolManager(maxsize=8, retries=urllib3.Retry(total=1, connect=1, read=0, status=0, redirect=0),
                                   timeout=urllib3.Timeout(total=5.0))
        headers = {"Content-Type": "application/json"}

        def raw_call() -> None:
            raw.request("POST", "/predict", body=body, headers=headers)
            resp = raw.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"raw: {resp.status}")

        def ours_post() -> None:
            status, _ = ours.post(body, "application/json", time.monotonic() + 5.0)
            if status != 200:
                raise RuntimeError(f"CloudClient.post: {status}")

        def ours_predict() -> None:
            ours.predict(body, "application/json", None, time.monotonic() + 5.0)

        def urllib3_call() -> None:
            resp = pool.request("POST", f"{url}/predict", body=body, headers=headers)
            if resp.status != 200:
                raise RuntimeError(f"urllib3: {resp.status}")

        calls = {"raw_http_client": raw_call, "cloud_client_post": ours_post, "cloud_client_predict": ours_predict,
                 "urllib3_pool": urllib3_call}
        try:
            samples = interleaved(calls, n, rounds)
        finally:
            raw.close()
            ours.close()
            pool.clear()
    variants = {name: ms_stats(s) for name, s in samples.items()}
    floor_p50 = variants["raw_http_client"]["p50_ms"]
    for v in variants.values():
        v["over_raw_p50_ms"] = round(v["p50_ms"] - floor_p50, 4)
    ours_p50 = variants["cloud_client_post"]["p50_ms"]
    return {"server": "canned asyncio loopback server (bench/http_choices_servers.py canned)",
            "body_bytes": len(body), "urllib3": urllib3.__version__,
            "urllib3_settings": "PoolManager(maxsize=8, Retry(total=1, connect=1, read=0, status=0, redirect=0), "
                                "Timeout(total=5.0))",
            "variants": variants,
            "ratios": {"urllib3_p50_over_ours": ratio(variants["urllib3_pool"]["p50_ms"], ours_p50),
                       "urllib3_p99_over_ours": ratio(variants["urllib3_pool"]["p99_ms"],
                                                      variants["cloud_client_post"]["p99_ms"]),
                       "urllib3_over_raw_over_ours_over_raw": ratio(variants["urllib3_pool"]["over_raw_p50_ms"],
                                                                    variants["cloud_client_post"]["over_raw_p50_ms"])}}


# -- 3. metrics ---------------------------------------------------------------------------------

GAUGES = {"bentoedge_inflight_local": 1.0, "bentoedge_ready": 1.0, "bentoedge_model_active": 1.0,
          "bentoedge_cloud_circuit_open": 0.0}


def observations(count: int, seed: int = 0) -> list[tuple[str, int, float, str, str]]:
    """(served_by, status, seconds, fallback reason, degraded reason): a device's mix of answers."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        cloud = rng.random() < 0.15
        status = int(rng.choice([200, 400, 503], p=[0.95, 0.03, 0.02]))
        seconds = float(rng.lognormal(np.log(0.002 if not cloud else 0.03), 0.6))
        reason = str(rng.choice(["local_busy", "payload_too_large"])) if cloud else ""
        degraded = "cloud_circuit_open" if not cloud and i % 97 == 0 else ""
        out.append(("cloud" if cloud else "edge", status, seconds, reason, degraded))
    return out


class PrometheusTwin:
    """The device's metrics as prometheus-client objects: the same names, labels and buckets."""

    def __init__(self) -> None:
        import prometheus_client as pc

        from bentoedge.edge.metrics import BUCKETS_S

        pc.disable_created_metrics()  # the *_created samples have no counterpart in ours
        self.registry = reg = pc.CollectorRegistry(auto_describe=False)
        self.requests = pc.Counter("bentoedge_requests", "Prediction requests answered, by where and status.",
                                   ["served_by", "status"], registry=reg)
        self.fallbacks = pc.Counter("bentoedge_fallback", "Requests not answered by the local model, by reason.",
                                    ["reason"], registry=reg)
        self.degraded = pc.Counter("bentoedge_degraded", "Requests answered locally though they wanted the cloud.",
                                   ["reason"], registry=reg)
        self.cloud_errors = pc.Counter("bentoedge_cloud_errors", "Failed calls to the cloud endpoint, by kind.",
                                       ["kind"], registry=reg)
        self.latency = pc.Histogram("bentoedge_request_duration_seconds", "Latency of successful predictions.",
                                    ["served_by"], buckets=BUCKETS_S, registry=reg)
        self.gauges = {name: pc.Gauge(name, name, registry=reg) for name in GAUGES}
        self._generate = pc.generate_latest

    def observe(self, served_by: str, status: int, seconds: float, reason: str = "", degraded: str = "") -> None:
        self.requests.labels(served_by, str(status)).inc()
        if reason:
            self.fallbacks.labels(reason).inc()
        if degraded:
            self.degraded.labels(degraded).inc()
        if 200 <= status < 300:
            self.latency.labels(served_by).observe(seconds)

    def cloud_error(self, kind: str) -> None:
        self.cloud_errors.labels(kind).inc()

    def render(self, gauges: Mapping[str, float]) -> str:
        for name, value in gauges.items():
            self.gauges[name].set(value)
        return self._generate(self.registry).decode()


def samples_of(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The text's samples, labels normalised (``le="1"`` and ``le="1.0"`` are the same bucket)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = tuple(sorted((k, repr(float(v)) if k == "le" else v) for k, v in s.labels.items()))
            out[(s.name, labels)] = float(s.value)
    return out


def bench_metrics(renders: int, batches: int, batch: int) -> dict[str, Any]:
    import prometheus_client

    from bentoedge.edge.metrics import Metrics

    stream = observations(5000)
    ours, theirs = Metrics(), PrometheusTwin()
    for i, obs in enumerate(stream):
        for m in (ours, theirs):
            m.observe(*obs)
            if i % 50 == 0:
                m.cloud_error("cloud_timeout" if i % 100 == 0 else "cloud_unreachable")
    ours_text, theirs_text = ours.render(GAUGES), theirs.render(GAUGES)
    a, b = samples_of(ours_text), samples_of(theirs_text)
    mismatched = sorted(str(k) for k in set(a) | set(b)
                        if k not in a or k not in b or not np.isclose(a[k], b[k], rtol=1e-6, atol=1e-5))
    render_ms = interleaved({"ours": lambda: ours.render(GAUGES), "prometheus_client": lambda: theirs.render(GAUGES)},
                            renders, rounds=5, warmup=5)
    extra = observations(batch, seed=1)
    per_obs: dict[str, list[float]] = {"ours": [], "prometheus_client": []}
    for _ in range(batches):  # interleaved batches; per observation = the batch's time / its size
        for name, m in (("ours", ours), ("prometheus_client", theirs)):
            t = time.perf_counter()
            for obs in extra:
                m.observe(*obs)
            per_obs[name].append((time.perf_counter() - t) * 1e6 / batch)
    render = {name: ms_stats(s) for name, s in render_ms.items()}
    observe = {name: {"p50_us": round(float(np.percentile(v, 50)), 3), "p99_us": round(float(np.percentile(v, 99)), 3),
                      "batches": batches, "batch": batch} for name, v in per_obs.items()}
    return {"prometheus_client": prometheus_client.__version__ if hasattr(prometheus_client, "__version__")
            else metadata.version("prometheus-client"),
            "observations": len(stream), "series": len(a), "text_bytes": {"ours": len(ours_text),
                                                                          "prometheus_client": len(theirs_text)},
            "same_samples": not mismatched, "mismatched_samples": mismatched[:10],
            "note": "ours also keeps the last 2048 latencies per route for /status p50/p99; "
                    "prometheus-client has no such ring, an adoption would keep ours beside it",
            "render": render, "observe": observe,
            "ratios": {"render_p50_over_ours": ratio(render["prometheus_client"]["p50_ms"], render["ours"]["p50_ms"]),
                       "observe_p50_over_ours": ratio(observe["prometheus_client"]["p50_us"],
                                                      observe["ours"]["p50_us"])}}


# -- 4. install size and import cost --------------------------------------------------------------

def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def closure(dist: str, extras: tuple[str, ...] = ()) -> set[str]:
    """``dist`` and every installed distribution it requires (markers evaluated here), by name."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo: list[tuple[str, tuple[str, ...]]] = [(dist, extras)]
    while todo:
        name, want = todo.pop()
        if canonical(name) in seen:
            continue
        seen.add(canonical(name))
        for line in metadata.requires(name) or []:
            req = Requirement(line)
            envs = [{"extra": e} for e in want] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                try:
                    metadata.distribution(req.name)
                except metadata.PackageNotFoundError:
                    continue
                todo.append((req.name, tuple(req.extras)))
    return seen


def installed_bytes(dist: str) -> int:
    """The bytes of the files the distribution's RECORD lists, as they lie on disk."""
    total = 0
    for f in metadata.distribution(dist).files or []:
        try:
            total += os.stat(f.locate()).st_size
        except OSError:
            total += int(f.size or 0)
    return total


def mb(n: float) -> float:
    return round(n / 1e6, 3)


#: What each candidate imports when it is in use (uvicorn: the h11 protocol on asyncio).
CANDIDATE_IMPORTS = {"uvicorn_h11": ["uvicorn", "uvicorn.protocols.http.h11_impl", "uvicorn.loops.asyncio"],
                     "urllib3": ["urllib3"], "prometheus_client": ["prometheus_client"]}
CANDIDATE_DISTS = {"uvicorn_h11": "uvicorn", "urllib3": "urllib3", "prometheus_client": "prometheus-client"}
#: What ours imports in a fresh interpreter (the standard library's HTTP, our metrics module).
OURS_IMPORTS = {"ours_server": ["http.server"], "ours_client": ["http.client"],
                "ours_metrics": ["bentoedge.edge.metrics"]}
#: The agent's own imports before it serves: the baseline a library's import is added to.
AGENT_IMPORTS = ["bentoedge.edge.wiring", "bentoedge.edge.server", "bentoedge.edge.cloud_client",
                 "bentoedge.edge.runtime"]

_IMPORT_PROBE = """
import importlib, json, sys, time
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1])
first, then = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for m in first:
    importlib.import_module(m)
loaded = all(m in sys.modules for m in then)
n0, r0, t0 = len(sys.modules), rss(), time.perf_counter()
for m in then:
    importlib.import_module(m)
print(json.dumps({"ms": (time.perf_counter() - t0) * 1000.0, "rss_kb": rss() - r0, "modules": len(sys.modules) - n0,
                  "already_loaded": loaded}))
"""


def import_cost(modules: list[str], after: list[str], runs: int) -> dict[str, Any]:
    """Median import time, RSS growth and new modules over ``runs`` fresh interpreters, each
    having imported ``after`` first; ``already_loaded``: ``after`` had brought them all in."""
    results = []
    for _ in range(runs):
        res = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, json.dumps(after), json.dumps(modules)],
                             capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"importing {modules} failed: {res.stderr.strip().splitlines()[-1:]}")
        results.append(json.loads(res.stdout))
    return {"ms": round(statistics.median(r["ms"] for r in results), 2),
            "rss_mb": round(statistics.median(r["rss_kb"] for r in results) / 1024.0, 2),
            "modules": int(statistics.median(r["modules"] for r in results)),
            "already_loaded": all(r["already_loaded"] for r in results), "runs": runs}


def bench_install(runs: int) -> dict[str, Any]:
    base = closure("bentoedge") - {"bentoedge"}
    device = closure("bentoedge", ("edge",)) - {"bentoedge"}
    device_bytes = sum(installed_bytes(d) for d in device)
    from packaging.requirements import Requirement

    tuf_requires = {canonical(Requirement(r).name) for r in metadata.requires("tuf") or []}
    out: dict[str, Any] = {
        "device_install": {"dists": sorted(device), "mb": mb(device_bytes),
                           "base_mb": mb(sum(installed_bytes(d) for d in base)),
                           "note": "bentoedge's base dependencies plus the edge extra, third-party only"},
        "candidates": {}, "ours": {}}
    for name, dist in CANDIDATE_DISTS.items():
        needs = closure(dist)
        added = needs - device
        out["candidates"][name] = {
            "version": metadata.version(dist), "dists": sorted(needs),
            "own_mb": mb(installed_bytes(dist)), "with_dependencies_mb": mb(sum(installed_bytes(d) for d in needs)),
            "already_on_device": sorted(needs & device), "added_install_mb": mb(sum(installed_bytes(d) for d in added)),
            "added_share_of_device": round(sum(installed_bytes(d) for d in added) / max(1, device_bytes), 4),
            "import_fresh": import_cost(CANDIDATE_IMPORTS[name], [], runs),
            "import_on_agent": import_cost(CANDIDATE_IMPORTS[name], AGENT_IMPORTS, runs)}
    out["candidates"]["urllib3"]["pulled_by_tuf"] = "urllib3" in tuf_requires
    out["candidates"]["uvicorn_h11"]["click_already_a_bentoedge_dependency"] = "click" in base
    for name, modules in OURS_IMPORTS.items():
        out["ours"][name] = {"modules": modules, "import_fresh": import_cost(modules, [], runs)}
    out["tuf_requires"] = sorted(tuf_requires)
    out["agent_imports"] = AGENT_IMPORTS
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests and import runs (< 60 s)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.quick:
        n, c8, rounds, renders, batches, runs = 400, 400, 4, 100, 20, 3
    else:
        n, c8, rounds, renders, batches, runs = 3000, 3000, 6, 400, 60, 7
    result: dict[str, Any] = {"quick": args.quick}
    with tempfile.TemporaryDirectory(prefix="bentoedge-bench-http-") as d:
        result["server"] = bench_server(Path(d), n, c8, rounds)
    print(f"server: {json.dumps(result['server']['ratios'])}", flush=True)
    result["client"] = bench_client(n, rounds)
    print(f"client: {json.dumps(result['client']['ratios'])}", flush=True)
    result["metrics"] = bench_metrics(renders, batches, 500)
    print(f"metrics: {json.dumps(result['metrics']['ratios'])}", flush=True)
    result["install"] = bench_install(runs)
    result["choice"] = choose(result["server"], result["client"], result["metrics"], result["install"])
    result["goal"] = {"rule": RULE.text(), **asdict(RULE),
                      "adopt": {component: c["adopt"] for component, c in result["choice"].items()}}
    for component, c in result["choice"].items():
        print(f"{component}: {c['decision']}", flush=True)
    result["total_s"] = round(time.perf_counter() - t0, 1)
    print(f"wrote {write_result('http_choices', result)} in {result['total_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
