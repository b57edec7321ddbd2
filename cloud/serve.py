"""Starting and stopping `bentoml serve` of the cloud service, for the CLI, tests, demo and benchmarks.

``start_server`` runs ``python -m bentoml serve bentoedge.cloud.service:SealedService`` as a child
process with the environment the service reads (``BENTOEDGE_MODEL``,
``BENTOML_DO_NOT_TRACK=true``), in its own process group so ``stop_server`` can end the
BentoML arbiter and its workers together.  ``wait_ready`` polls ``/readyz`` on loopback
until the golden samples have passed, with a deadline, and gives up early (with the
server's last log line) when the process has exited.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from bentoedge.bentos.errors import HealthCheckError

SERVICE = "bentoedge.cloud.service:SealedService"
REFUSAL = "bentoedge: refusing to serve"  # the line cloud.service logs when it will not start


def serve_command(port: int, host: str = "127.0.0.1", service: str = SERVICE) -> list[str]:
    # The service imports from the installed bentoedge package, wherever the caller stands.
    return [sys.executable, "-m", "bentoml", "serve", service, "--port", str(port), "--host", host]


def server_env(tag: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    full = dict(os.environ)
    full.update(env or {})
    full["BENTOEDGE_MODEL"] = tag
    full["BENTOML_DO_NOT_TRACK"] = "true"
    return full


def start_server(tag: str, port: int, env: Mapping[str, str] | None = None, host: str = "127.0.0.1",
                 log: Path | None = None, service: str = SERVICE) -> subprocess.Popen[bytes]:
    """Start serving sealed model ``tag`` on ``host:port``; returns at once (see ``wait_ready``)."""
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - the child owns it
    try:
        return subprocess.Popen(serve_command(port, host, service), env=server_env(tag, env),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]


def wait_ready(url: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None,
               log: Path | None = None) -> float:
    """Seconds until ``url``/readyz answered 200; HealthCheckError on exit or timeout."""
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise HealthCheckError(f"the server exited with code {proc.returncode} before it was ready: {last_reason(log)}")
        if refused(log):  # BentoML restarts a failed worker forever; a refusal will not heal itself
            raise HealthCheckError(f"the server will not become ready: {last_reason(log)}")
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.2)
    raise HealthCheckError(f"the server at {url} was not ready within {timeout:.0f}s: {last_reason(log)}")


def refused(log: Path | None) -> bool:
    return log is not None and log.exists() and REFUSAL.encode() in log.read_bytes()


def last_reason(log: Path | None) -> str:
    """The server's own explanation: our refusal line if it logged one, else its last line."""
    if log is None or not log.exists():
        return "no log"
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    refusals = [ln for ln in lines if REFUSAL in ln]
    return (refusals or lines or ["empty log"])[-1].strip()


def stop_server(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM the server's process group, SIGKILL it if it lingers; returns the exit code."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout)
    return int(proc.returncode)
