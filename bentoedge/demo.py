"""``bentoedge demo``: the whole story on one laptop, on embedded defaults.

Build the example into a sealed model, create a folder update channel and a device with its
own identity, serve the model in the "cloud" (``bentoml serve`` on loopback, letting in only
the channel's enrolled devices and an API key), publish v1 and watch the device take it, predict on the device, overflow it into the cloud, publish v2 under load with
zero failures, refuse a tampered v3, and stop the cloud to show what still works.

The demo drives the real command line (``bentoedge build``, ``serve``, ``channel``,
``publish``, ``agent``) as a user would, in subprocesses, and talks HTTP to the servers,
so every step exercises the shipped code paths.  It keeps everything under one work
folder ($BENTOEDGE_HOME/demo), cleans its own leftovers from earlier or interrupted runs,
and stops every process it started, on success, failure or Ctrl-C.  Its exit code is 0
only when every step succeeded.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from bentoedge.bentos.keystore import default_home
from bentoedge.cloud.serve import stop_server

MODEL = "demo-digits"


@dataclass
class Step:
    title: str
    ok: bool
    detail: str


@dataclass
class Demo:
    work: Path
    console: Console
    env: dict[str, str]
    steps: list[Step] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    # ---- running things -------------------------------------------------------------------
    def busy(self, what: str) -> AbstractContextManager[object]:
        """A spinner naming what the demo waits for, so no pause is silent."""
        return self.console.status(what, spinner="dots")

    def cli(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "bentoedge", *args]
        with self.busy(f"bentoedge {' '.join(args[:2])} ..."):
            res = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise DemoFailure(f"`bentoedge {' '.join(args)}` exited {res.returncode}: {_last_line(res)}")
        return res

    def start(self, name: str, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.work / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen([sys.executable, "-m", "bentoedge", *args], stdout=log, stderr=subprocess.STDOUT,
                                env={**self.env, **(extra_env or {})}, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            stop_server(proc)
        self.procs.clear()

    def record(self, title: str, ok: bool, detail: str) -> None:
        self.steps.append(Step(title, ok, detail))
        mark = "[green]✓[/]" if ok else "[red]✗[/]"
        self.console.print(f"  {mark} {detail}")
        if not ok:
            raise DemoFailure(detail)

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.console.rule(f"[bold]{title}")
        started = time.monotonic()
        try:
            yield
        except DemoFailure as exc:
            if not self.steps or self.steps[-1].detail != str(exc):
                self.steps.append(Step(title, False, str(exc)))
                self.console.print(f"  [red]✗ {exc}[/]")
            raise
        self.console.print(f"  [dim]({time.monotonic() - started:.1f} s)[/]")


class DemoFailure(Exception):
    pass


def _last_line(res: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in (res.stderr or res.stdout or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- HTTP --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


def http_json(port: int, method: str, path: str, body: Any = None, timeout: float = 10.0,
              headers: dict[str, str] | None = None) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=payload, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        raw = resp.read()
        try:
            parsed = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            parsed = {"raw": raw[:200].decode(errors="replace")}
        return Reply(resp.status, parsed if isinstance(parsed, dict) else {"value": parsed},
                     {k.lower(): v for k, v in resp.getheaders()})
    finally:
        conn.close()


def wait_for(check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None,
             log: Path | None = None, console: Console | None = None) -> None:
    """Poll ``check`` until it holds, with a spinner naming ``what`` on ``console``."""
    with console.status(f"waiting for {what} ...", spinner="dots") if console else nullcontext():
        _wait(check, timeout, what, proc, log)


def _wait(check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes] | None,
          log: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log and log.exists() else []
            raise DemoFailure(f"{what}: the process exited ({proc.returncode}); " + " | ".join(tail))
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise DemoFailure(f"timed out after {timeout:.0f} s waiting for {what}")


def predict(port: int, x: np.ndarray, timeout: float = 10.0, headers: dict[str, str] | None = None) -> Reply:
    return http_json(port, "POST", "/predict", {"inputs": {"x": x.tolist()}}, timeout=timeout, headers=headers)


# ---- the story ---------------------------------------------------------------------------------
def run_demo(work: Path, console: Console, keep: bool = False) -> list[Step]:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    # Its own keys and model store inside the work folder: the demo never writes the user's
    # ~/.bentoedge keys or ~/bentoml store, and emptying the folder removes every leftover.
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1",
           "BENTOEDGE_HOME": str(work / "home"), "BENTOML_HOME": str(work / "bentoml")}
    demo = Demo(work, console, env)
    try:
        _story(demo)
    except DemoFailure:
        pass
    finally:
        demo.stop_all()
    return demo.steps


def _story(d: Demo) -> None:  # noqa: C901 - a story reads top to bottom
    from bentoedge.examples.digits import make_example

    with d.step("1. Keys and the example model"):
        d.cli("keys", "init")
        with d.busy("training the example digits classifier ..."):
            example = make_example(d.work / "example")
        val = np.load(example["validation"])
        xs, labels = val["x"].astype(np.float32), val["labels"]
        d.record("example", True, f"trained a Keras digits classifier ({len(xs)} validation samples)")

    with d.step("2. Build sealed models v1 and v2 (convert, quantize, gate, encrypt, sign)"):
        for version in ("v1", "v2"):
            res = d.cli("build", str(example["model"]), "--name", MODEL, "--version", version,
                        "--calibration", str(example["calibration"]), "--validation", str(example["validation"]),
                        "--edge", "int8", "--cloud", "fp32")
            del res
        manifest = json.loads(d.cli("inspect", f"{MODEL}:v1", "--json").stdout)["manifest"]
        edge = next(a for a in manifest["artifacts"] if a["id"] == "edge-int8")
        quality = "; ".join(f"{q.get('artifact')} accuracy {float(q.get('value', 0)):.1%}"
                            for q in manifest.get("quality", []) if q.get("metric") == "accuracy")
        d.record("build", True, f"{MODEL}:v1 and v2 sealed; edge-int8 is {edge['size'] / 1024:.0f} KiB; {quality}")
        verify = d.cli("verify", f"{MODEL}:v1", check=False)
        d.record("verify", verify.returncode == 0, "`bentoedge verify` accepts the signature and every hash")

    cloud_port = free_port()
    channel = (d.work / "channel").as_uri()
    state = d.work / "device"
    agent_port = free_port()
    with d.step("3. A signed update channel and a device with its own identity"):
        d.cli("channel", "init", channel)
        # The device trusts the channel's first root by the fingerprint channel init printed.
        fingerprint = hashlib.sha256((d.work / "channel" / "metadata" / "1.root.json").read_bytes()).hexdigest()
        d.cli("agent", "init", "--channel", channel, "--cloud", f"http://127.0.0.1:{cloud_port}",
              "--state", str(state), "--port", str(agent_port), "--device-id", "demo-device-1",
              "--root-sha256", fingerprint, "--force")
        d.cli("channel", "enroll", "demo-device-1", str(state / "device.pub"),
              "--identity", str(state / "identity.pub"), "--channel", channel)
        # The device API's /status needs the local token agent init wrote.
        local = {"Authorization": f"Bearer {(state / 'api.token').read_text().strip()}"}
        d.record("channel", True, f"TUF channel at {channel}; device demo-device-1 enrolled with its X25519 key "
                                  "and its Ed25519 identity (in the channel's signed device registry)")

    with d.step("4. Start the cloud endpoint (bentoml serve, decrypting in memory, enrolled callers only)"):
        api_key = d.cli("keys", "api", "create", "demo-app").stdout.strip()
        cloud = d.start("cloud", "serve", f"{MODEL}:v1", "--port", str(cloud_port), extra_env={
            "BENTOEDGE_CHANNEL": channel, "BENTOEDGE_CHANNEL_ROOT": str(state / "root.json"),
            "BENTOEDGE_REGISTRY_REFRESH_S": "5"})
        wait_for(lambda: http_json(cloud_port, "GET", "/readyz", timeout=2).status == 200, 180,
                 "the cloud service to be ready", cloud, d.work / "cloud.log", d.console)
        anonymous = predict(cloud_port, xs[:4])
        r = predict(cloud_port, xs[:4], headers={"Authorization": f"Bearer {api_key}"})
        d.record("cloud", anonymous.status == 401 and r.status == 200 and r.body.get("served_by") == "cloud",
                 f"cloud on 127.0.0.1:{cloud_port}: no credentials -> {anonymous.status}; with an API key "
                 f"(bentoedge keys api create) -> served_by={r.body.get('served_by')}, model {r.body.get('model')}")

    with d.step("5. Publish v1 and watch the device take it"):
        d.cli("publish", f"{MODEL}:v1", "--channel", channel)
        config = str(state / "agent.toml")
        agent = d.start("agent", "agent", "run", "--config", config,
                        extra_env={"BENTOEDGE_AGENT_POLL_SECONDS": "1"})

        def active_version() -> str | None:
            r = http_json(agent_port, "GET", "/status", timeout=2, headers=local)
            sync = r.body.get("sync") or r.body
            return (r.body.get("model") or {}).get("version") or sync.get("active_version")

        wait_for(lambda: active_version() == "v1", 120, "the device to activate v1", agent, d.work / "agent.log", d.console)
        d.record("sync", True, "the device verified, decrypted and health-checked v1, and serves it")

    with d.step("6. Predictions on the device"):
        r = predict(agent_port, xs[:8])
        pred = np.argmax(np.asarray(r.body["outputs"][next(iter(r.body["outputs"]))]), axis=-1)
        acc = float(np.mean(pred == labels[:8]))
        d.record("edge", r.status == 200 and r.headers.get("x-bentoedge-served-by") == "edge",
                 f"served_by={r.headers.get('x-bentoedge-served-by')}, version "
                 f"{r.headers.get('x-bentoedge-model-version')}, {acc:.0%} of 8 digits right")

    with d.step("7. Requests the device cannot handle go to the cloud, with the reason"):
        big = np.tile(xs[:1], (64, 1))  # above the device's max_batch
        r = predict(agent_port, big)
        reason = r.headers.get("x-bentoedge-fallback-reason", "")
        d.record("fallback", r.status == 200 and r.headers.get("x-bentoedge-served-by") == "cloud" and bool(reason),
                 f"batch of 64: served_by={r.headers.get('x-bentoedge-served-by')}, reason: {reason!r}")

    with d.step("8. Publish v2 while requests flow"):
        stop = threading.Event()
        counts = {"ok": 0, "failed": 0}
        versions: set[str] = set()

        def client() -> None:
            i = 0
            while not stop.is_set() and i < 20000:
                i += 1
                try:
                    rr = predict(agent_port, xs[i % len(xs): i % len(xs) + 1], timeout=10)
                    if rr.status == 200:
                        counts["ok"] += 1
                        versions.add(rr.headers.get("x-bentoedge-model-version", "?"))
                    else:
                        counts["failed"] += 1
                except OSError:
                    counts["failed"] += 1

        t = threading.Thread(target=client, daemon=True)
        t.start()
        try:
            d.cli("publish", f"{MODEL}:v2", "--channel", channel)
            wait_for(lambda: active_version() == "v2", 120, "the device to activate v2", agent, d.work / "agent.log", d.console)
            time.sleep(1.0)
        finally:
            stop.set()
            t.join(15)
        d.record("swap", counts["failed"] == 0 and counts["ok"] > 0,
                 f"{counts['ok']} requests answered during the update, {counts['failed']} failed; "
                 f"versions seen: {', '.join(sorted(versions))}")

    with d.step("9. A tampered v3 is refused; v2 keeps serving"):
        d.cli("build", str(example["model"]), "--name", MODEL, "--version", "v3",
              "--calibration", str(example["calibration"]), "--validation", str(example["validation"]),
              "--edge", "int8", "--cloud", "fp32")
        # The device is offline (paused) while an attacker with write access to the channel's
        # storage flips one bit of the published v3; it checks the channel when it is back.
        os.kill(agent.pid, signal.SIGSTOP)
        try:
            d.cli("publish", f"{MODEL}:v3", "--channel", channel)
            tampered = _flip_a_bit_in_channel(d.work / "channel", "v3")
        finally:
            os.kill(agent.pid, signal.SIGCONT)

        seen: list[str] = []

        def refused() -> bool:  # every attempt refuses the bytes; none installs them
            sync = http_json(agent_port, "GET", "/status", timeout=2, headers=local).body.get("sync") or {}
            error = str(sync.get("last_error") or "")
            if f"{MODEL}:v3 is not installed" in error and "LengthOrHashMismatch" in error:
                seen.append(error)
            return bool(seen)

        wait_for(refused, 60, "the device to refuse v3", agent, d.work / "agent.log", d.console)
        r = predict(agent_port, xs[:2])
        d.record("tamper", active_version() == "v2" and r.status == 200 and bool(seen),
                 f"flipped one bit in {tampered}; the device refused v3 (its bytes miss the hash the "
                 f"channel signed: never installed, retried later, not blamed on v3) and still serves "
                 f"{r.headers.get('x-bentoedge-model-version')}")

    with d.step("10. Stop the cloud: what still works"):
        stop_server(cloud)
        r_local = predict(agent_port, xs[:2])
        r_big = predict(agent_port, np.tile(xs[:1], (64, 1)))
        for _ in range(6):  # enough failed forwards to open the circuit breaker
            r_again = predict(agent_port, np.tile(xs[:1], (64, 1)))
        breaker = ((http_json(agent_port, "GET", "/status", timeout=5, headers=local).body.get("cloud") or {}).get("breaker") or {})
        ok = (r_local.status == 200 and r_local.headers.get("x-bentoedge-served-by") == "edge"
              and r_again.status in (200, 503))
        d.record("offline", ok,
                 f"in-limit request: {r_local.status} from {r_local.headers.get('x-bentoedge-served-by')}; "
                 f"batch of 64 with the cloud gone: {r_big.status} from "
                 f"{r_big.headers.get('x-bentoedge-served-by') or 'nowhere'} "
                 f"({_why(r_big)}); "
                 f"cloud circuit breaker: {breaker.get('state', breaker)}")


def _why(r: Reply) -> str:
    if r.headers.get("x-bentoedge-degraded"):
        return f"served locally, degraded: {r.headers['x-bentoedge-degraded']}"
    return str(r.headers.get("x-bentoedge-fallback-reason") or r.body.get("reason") or "served locally")


def _flip_a_bit_in_channel(channel_dir: Path, version: str) -> str:
    candidates = sorted(p for p in (channel_dir / "targets").rglob("*edge-int8*.enc") if f"/{version}/" in str(p))
    if not candidates:
        raise DemoFailure(f"no published artifact of {version} found under {channel_dir}/targets")
    target = candidates[0]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    return f"v3's {target.name.split('.', 1)[1]}"


# What the story runs, by the extra that installs it: a device-only install cannot run it.
NEEDED = {"keras": "build", "tensorflow": "build", "onnxruntime": "cloud", "bentoml": "cloud"}


def _check_installed() -> None:
    import importlib.util

    from bentoedge.bentos.errors import UsageError

    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if not any(importlib.util.find_spec(m) for m in ("ai_edge_litert", "tflite_runtime")):
        missing.append("ai-edge-litert")
    if missing:
        raise UsageError(f"the demo builds, serves and runs a model on one machine, and this install lacks "
                         f"{', '.join(missing)}: pip install 'bentoedge[all]' (a device runs only 'bentoedge agent')")


def _next_steps(folder: Path) -> str:
    home, store = folder / "home", folder / "bentoml"
    env = f"BENTOEDGE_HOME={home} BENTOML_HOME={store}"
    return "\n".join([
        "[bold]next[/]",
        f"  {env} bentoedge inspect {MODEL}:v2        # the manifest, quality report and signer",
        f"  {env} bentoedge serve {MODEL}:v2 --no-auth   # the cloud endpoint on :3000, open (docs at /docs.json)",
        "  bentoedge build MODEL.onnx|.tflite|.keras|SAVEDMODEL --name NAME   # your own model (README: models you did not make)",
        "  docs/agent.md for a real device, docs/cloud.md for SageMaker and Lambda",
        f"  everything the demo made is in {folder}; your own keys and model store were not touched "
        f"(rm -rf {folder} removes it)",
    ])


def summary_table(steps: list[Step]) -> Table:
    table = Table(title="bentoedge demo")
    table.add_column("step")
    table.add_column("result")
    table.add_column("what happened", overflow="fold")
    for s in steps:
        table.add_row(s.title, "[green]ok[/]" if s.ok else "[red]FAILED[/]", s.detail)
    return table


@click.command()
@click.option("--work", type=click.Path(path_type=Path), default=None,
              help="Work folder (default: $BENTOEDGE_HOME/demo). Emptied at the start of each run.")
def demo(work: Path | None) -> None:
    """Run the whole story on embedded defaults, then print a summary.

    \b
    Builds the example digits model into sealed v1/v2, serves it with `bentoml serve` on
    loopback, creates a folder update channel and a device agent, publishes v1, predicts on
    the device, overflows into the cloud, publishes v2 under load (zero failures expected),
    refuses a tampered v3, and stops the cloud to show what still works.  Every process it
    starts is stopped at the end, also on Ctrl-C.  Exit code 0 only if every step succeeded.
    """
    console = Console()
    _check_installed()
    folder = work or default_home() / "demo"
    console.print(f"[bold]bentoedge demo[/] (work folder {folder}: its own keys, model store, channel and device)")
    steps: list[Step] = []
    try:
        steps = run_demo(folder, console)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; every process the demo started was stopped[/]")
        sys.exit(130)
    console.print(summary_table(steps))
    failed = [s for s in steps if not s.ok]
    if failed or not steps or steps[-1].title != "offline":
        console.print(f"[red]demo failed at: {failed[0].title if failed else 'an unfinished step'}[/] "
                      f"(logs in {folder})")
        sys.exit(1)
    console.print("[green]every step succeeded[/]")
    console.print(_next_steps(folder), soft_wrap=True)  # commands to copy: never folded
