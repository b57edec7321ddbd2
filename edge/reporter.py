"""This device's fleet reports: built from what the agent knows, signed, buffered, sent.

``Reporter.report`` builds a ``bentos.fleet_report.Report`` from the sync agent's status
(active and previous version, the last cycle's outcome and cause, the refused versions, the
health strikes) and the local API's counters (requests served here and forwarded, by
reason; errors; local p50/p99), signs it with the device's identity key, writes it to
``STATE/reports/`` and sends what is buffered, oldest first, to the cloud's
``POST /fleet/reports`` (through the same signed ``CloudClient`` the fallback uses).  A
report the cloud took (200, stored or a replay) leaves the buffer; one it refused as
malformed (4xx) is dropped with a log line; when the cloud is away the buffer keeps at most
``MAX_BUFFERED`` reports and ``MAX_BUFFER_BYTES``, the oldest dropped first.

``agent run`` calls ``report`` after every sync cycle and every ``report_seconds`` while idle.
Reports never carry raw inputs: per input they carry the running statistics the request path
keeps (``edge.inputs.InputWatch``: counts, moments, range, NaN/Inf, a fixed-bin histogram)
and a PSI drift score against the manifest's ``extra.reference_stats``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bentoedge.bentos import fleet_report as rp
from bentoedge.edge.config import AgentConfig

log = logging.getLogger("bentoedge.reports")

MAX_BUFFERED = 64
MAX_BUFFER_BYTES = 1 << 20
#: (model, version) -> that version's per-input statistics (``edge.inputs.InputWatch.report``).
Inputs = Callable[[str, "str | None"], Mapping[str, rp.InputReport]]
Send = Callable[[bytes], int]  # envelope -> HTTP status (raises OSError-like errors when unreachable)

#: The last health check's result by the last cycle's: a rollback checks the version it puts back.
_HEALTH = {"updated": "passed", "up_to_date": "passed", "rolled_back": "passed", "refused": "failed"}


def build_report(config: AgentConfig, status: Mapping[str, Any], served: Mapping[str, Any], seq: int, now: float,
                 uptime_s: float, inputs: Inputs | None = None) -> rp.Report:
    """The report for this moment (pure): agent status, local API counters and, from
    ``inputs(model, version)``, the active version's per-input statistics in."""
    active = status.get("active") or {}
    previous = list(status.get("previous") or [])
    result = str(status.get("last_result") or "none")
    outcome = result if result in rp.SYNC_OUTCOMES else "none"
    counts: Mapping[str, Mapping[str, int]] = served.get("requests") or {}
    local = sum(int(n) for code, n in (counts.get("edge") or {}).items() if str(code).startswith("2"))
    errors = sum(int(n) for code, n in (counts.get("edge") or {}).items() if str(code).startswith("5"))
    latency = (served.get("latency_ms") or {}).get("edge") or {}
    forwarded = {str(k): int(v) for k, v in (served.get("fallback_reasons") or {}).items()}
    health_result = _HEALTH.get(result, "none") if active else "none"
    return rp.Report(
        device_id=config.device_id, seq=seq, sent_at=now, device_class=config.device_class,
        agent_version=config.agent_version, model=str(active.get("model") or config.model or ""),
        active=active.get("version"), previous=previous[0] if previous else None,
        active_since=_opt_float(status.get("active_since")), uptime_s=round(uptime_s, 3),
        health=rp.Health(health_result, str(status.get("last_reason") or "")[:rp.MAX_TEXT], now if active else None),
        sync=rp.SyncResult(outcome, str(status.get("last_reason") or "")[:rp.MAX_TEXT], now),
        refused=refused_versions(status.get("failed") or {}, str(active.get("model") or config.model or "")),
        requests=rp.Requests(local=local, forwarded=forwarded, errors=errors,
                             p50_ms=latency.get("p50"), p99_ms=latency.get("p99")),
        inputs=(inputs(str(active.get("model") or ""), active.get("version"))
                if inputs is not None and active else {}),
    )


def refused_versions(failed: Any, model: str) -> tuple[str, ...]:
    """The versions of ``model`` on the device's failed list (its keys are ``model:version``;
    a report's ``refused``, like its ``active``, names versions of the report's model, which
    is what the rollout controller compares with the version it rolls out)."""
    prefix = f"{model}:"
    return tuple(sorted(str(k)[len(prefix):] for k in failed if str(k).startswith(prefix)))[:rp.MAX_VERSIONS]


def _opt_float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class Reporter:
    """One device's reports: ``report()`` builds, signs, buffers and sends; thread-compatible
    (the agent calls it from its report thread only)."""

    def __init__(self, config: AgentConfig, folder: Path, key: Ed25519PrivateKey,
                 status: Callable[[], Mapping[str, Any]], served: Callable[[], Mapping[str, Any]],
                 send: Send | None, clock: Callable[[], float] = time.time, inputs: Inputs | None = None) -> None:
        self.config = config
        self.folder = folder
        self.key = key
        self._status = status
        self._served = served
        self._send = send
        self._clock = clock
        self._inputs = inputs
        self._started = clock()

    def _next_seq(self) -> int:
        """Strictly increasing across restarts: the clock in microseconds, or past the last one."""
        last = max((int(p.stem) for p in self.folder.glob("*.json") if p.stem.isdigit()), default=0)
        marker = self.folder / "last_seq"
        try:
            last = max(last, int(marker.read_text().strip() or 0))
        except (OSError, ValueError):
            pass
        seq = max(last + 1, int(self._clock() * 1_000_000))
        _write_atomic(marker, str(seq).encode())
        return seq

    def report(self) -> int:
        """Build and buffer a report now, then send what is buffered; how many the cloud took."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        now = self._clock()
        report = build_report(self.config, self._status(), self._served(), self._next_seq(), now, now - self._started,
                              self._inputs)
        _write_atomic(self.folder / f"{report.seq:020d}.json", rp.sign(report, self.key))
        self._bound()
        return self.flush()

    def _bound(self) -> None:
        files = sorted(p for p in self.folder.glob("*.json") if p.stem.isdigit())
        total = sum(p.stat().st_size for p in files)
        while files and (len(files) > MAX_BUFFERED or total > MAX_BUFFER_BYTES):
            oldest = files.pop(0)
            total -= oldest.stat().st_size
            oldest.unlink(missing_ok=True)
            log.warning("report buffer full: dropped the oldest report %s", oldest.name)

    def flush(self) -> int:
        """Send the buffered reports, oldest first; stop at the first that cannot be delivered."""
        if self._send is None:
            return 0
        sent = 0
        for path in sorted(p for p in self.folder.glob("*.json") if p.stem.isdigit()):
            try:
                status = self._send(path.read_bytes())
            except Exception as exc:  # the cloud is away: keep the buffer for the next time
                log.info("fleet report not sent (kept, %d buffered): %s", self.buffered(), exc)
                return sent
            if status == 200:
                sent += 1
                path.unlink(missing_ok=True)
            elif 400 <= status < 500 and status not in (401, 408, 429):
                log.warning("the cloud refused fleet report %s (%d): dropped", path.name, status)
                path.unlink(missing_ok=True)
            else:  # 401 (not enrolled yet), 5xx: try again later
                log.info("fleet report not taken (%d), kept for later", status)
                return sent
        return sent

    def buffered(self) -> int:
        return sum(1 for p in self.folder.glob("*.json") if p.stem.isdigit())


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def start_reporting(config: AgentConfig, state_dir: Path, status: Callable[[], Mapping[str, Any]],
                    served: Callable[[], Mapping[str, Any]], stop: Any, inputs: Inputs | None = None) -> Any:
    """The report thread of ``agent run``: a report after every sync cycle and every
    ``report_seconds``; None (with a log line) for a device without a cloud or an identity."""
    import threading

    from bentoedge.edge.aws_sign import reaches_only_invocations
    from bentoedge.edge.cloud_client import CloudClient, aws_signer, identity_signer, load_identity

    key_file = state_dir / "identity.key"
    key = load_identity(key_file)
    if not config.cloud or key is None:
        log.info("no fleet reports: %s", "no cloud configured" if not config.cloud else f"no identity key at {key_file}")
        return None
    if reaches_only_invocations(config.cloud):
        log.info("no fleet reports: %s reaches only the service's /invocations (SageMaker InvokeEndpoint); "
                 "give the service a function URL or another HTTPS endpoint for reports", config.cloud)
        return None
    client = CloudClient(config.cloud, timeout_s=config.cloud_timeout_s, path="/fleet/reports",
                         signer=identity_signer(key_file), aws=aws_signer(config))

    def send(envelope: bytes) -> int:
        return client.post(envelope, "application/json", time.monotonic() + config.cloud_timeout_s)[0]

    reporter = Reporter(config, state_dir / "reports", key, status, served, send, inputs=inputs)

    def loop() -> None:
        seen, last = None, float("-inf")
        while not stop.wait(1.0):
            cycles = status().get("cycles")
            if cycles != seen or time.monotonic() - last >= config.report_seconds:
                seen, last = cycles, time.monotonic()
                try:
                    reporter.report()
                except Exception as exc:  # a report must never stop the agent
                    log.warning("fleet report failed: %s", exc)

    thread = threading.Thread(target=loop, name="bentoedge-reports", daemon=True)
    thread.start()
    return thread
