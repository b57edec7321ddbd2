"""What the fleet looks like, from the devices' latest reports: pure aggregation for ``fleet status``.

``summarize(reports, now)`` returns plain JSON (what ``--json`` prints and the table shows):

- ``versions``: per model and active version, the devices running it, their health states,
  the share of requests forwarded to the cloud (fallback share), the local error rate, p99
  (the median of the devices' p99s) and drift per input (mean and max PSI over the devices);
- ``health``: devices per last health-check result (passed, failed, none);
- ``quiet``: devices whose latest report is older than ``quiet_after_s``, longest silent first;
- ``worst``: the devices most in need of a look, by ``badness`` (a failed health check, refused
  versions, errors, fallback share, drift), worst first;
- ``device_list``: one line per device (active and previous version, health, last sync and its
  cause, last seen), by device id, at most ``DEVICES_LISTED`` of them (``devices`` counts all).

``device_view`` is one device's latest report and its history for ``fleet device ID``.
No I/O, no clock: ``now`` is a parameter.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from bentoedge.bentos.drift import drift_level
from bentoedge.bentos.fleet_report import Report

#: How long a device may stay silent before it is listed as quiet (12 default poll periods).
DEFAULT_QUIET_AFTER_S = 3600.0
WORST = 10
QUIET_LISTED = 50
#: Devices listed one per line; a fleet of 100,000 is summed up, not printed.
DEVICES_LISTED = 1000


def max_drift(r: Report) -> float | None:
    scores = [i.drift for i in r.inputs.values() if i.drift is not None]
    return max(scores) if scores else None


def badness(r: Report) -> tuple[float, list[str]]:
    """A score (higher is worse) and the reasons behind it."""
    score, why = 0.0, []
    if r.health.result == "failed":
        score += 100
        why.append(f"health check failed ({r.health.detail or 'no detail'})")
    if r.refused:
        score += 10 * len(r.refused)
        why.append(f"refused {', '.join(r.refused)}")
    if r.sync.outcome in ("error", "refused"):
        score += 5
        why.append(f"last sync {r.sync.outcome}: {r.sync.cause}")
    if r.requests.errors:
        score += 50 * r.requests.error_rate + 1
        why.append(f"{r.requests.errors} local errors ({r.requests.error_rate:.1%})")
    if r.requests.fallback_share > 0.5:
        score += 10 * r.requests.fallback_share
        why.append(f"{r.requests.fallback_share:.0%} forwarded to the cloud")
    d = max_drift(r)
    if d is not None and drift_level(d) != "none":
        score += 10 * d
        why.append(f"input drift PSI {d:.2f} ({drift_level(d)})")
    return score, why


def summarize(reports: Iterable[Report], now: float, model: str | None = None,
              quiet_after_s: float = DEFAULT_QUIET_AFTER_S, worst: int = WORST,
              listed: int = DEVICES_LISTED) -> dict[str, Any]:
    rows = [r for r in reports if model is None or r.model == model]
    health = {"passed": 0, "failed": 0, "none": 0}
    groups: dict[tuple[str, str], list[Report]] = {}
    for r in rows:
        health[r.health.result] += 1
        groups.setdefault((r.model, r.active or "-"), []).append(r)
    versions = [_version_row(m, v, rs) for (m, v), rs in sorted(groups.items())]
    quiet = sorted((r for r in rows if now - r.sent_at > quiet_after_s), key=lambda r: r.sent_at)
    scored = sorted(((badness(r), r) for r in rows), key=lambda x: (-x[0][0], x[1].device_id))
    return {
        "now": now, "model": model, "devices": len(rows), "health": health, "versions": versions,
        "quiet_after_s": quiet_after_s, "quiet_count": len(quiet),
        "quiet": [{"device_id": r.device_id, "last_seen_s": round(now - r.sent_at, 1), "active": r.active,
                   "model": r.model} for r in quiet[:QUIET_LISTED]],
        "worst": [{"device_id": r.device_id, "score": round(score, 2), "active": r.active, "why": why}
                  for (score, why), r in scored[:worst] if score > 0],
        "device_list": [{"device_id": r.device_id, "model": r.model, "active": r.active, "previous": r.previous,
                         "health": r.health.result, "sync": r.sync.outcome, "cause": r.sync.cause,
                         "last_seen_s": round(now - r.sent_at, 1)}
                        for r in sorted(rows, key=lambda r: r.device_id)[:listed]],
    }


def _version_row(model: str, version: str, rs: Sequence[Report]) -> dict[str, Any]:
    local = sum(r.requests.local for r in rs)
    fwd = sum(r.requests.total_forwarded for r in rs)
    errors = sum(r.requests.errors for r in rs)
    p99s = [r.requests.p99_ms for r in rs if r.requests.p99_ms is not None]
    drift: dict[str, dict[str, float]] = {}
    for name in sorted({n for r in rs for n in r.inputs}):
        scores = [d for r in rs if (i := r.inputs.get(name)) and (d := i.drift) is not None]
        if scores:
            drift[name] = {"mean": statistics.fmean(scores), "max": max(scores)}
    return {"model": model, "version": version, "devices": len(rs),
            "passed": sum(r.health.result == "passed" for r in rs),
            "failed": sum(r.health.result == "failed" for r in rs),
            "unchecked": sum(r.health.result == "none" for r in rs),
            "requests_local": local, "requests_forwarded": fwd,
            "fallback_share": fwd / (local + fwd) if local + fwd else 0.0,
            "error_rate": errors / local if local else 0.0,
            "p99_ms": statistics.median(p99s) if p99s else None, "drift": drift}


def device_view(latest: Report | None, history: Sequence[Report], now: float) -> dict[str, Any]:
    """One device: its latest report in full, and a line per stored report."""
    return {
        "latest": latest.to_dict() if latest else None,
        "last_seen_s": round(now - latest.sent_at, 1) if latest else None,
        "why": badness(latest)[1] if latest else [],
        "history": [{"seq": r.seq, "sent_at": r.sent_at, "active": r.active, "previous": r.previous,
                     "health": r.health.result, "sync": r.sync.outcome, "cause": r.sync.cause,
                     "local": r.requests.local, "forwarded": r.requests.total_forwarded,
                     "errors": r.requests.errors, "max_drift": max_drift(r)} for r in history],
    }
