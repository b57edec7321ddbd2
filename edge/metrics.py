"""Counters and latency figures of the device API, for /metrics (Prometheus) and /status.

Written by hand rather than with ``prometheus_client`` to keep the device install small:
the text exposition format (version 0.0.4) is a few lines per metric.  One ``Metrics``
object per server, updated under a lock by the request threads; ``render`` and
``summary`` read a consistent copy.  Recent latencies are kept in bounded rings (for the
p50/p99 in /status), totals in histograms with fixed buckets (for Prometheus).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping

import numpy as np

BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RING = 2048


class _Histogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_S) + 1)
        self.total = 0.0
        self.n = 0
        self.recent: deque[float] = deque(maxlen=RING)

    def observe(self, seconds: float) -> None:
        i = next((i for i, b in enumerate(BUCKETS_S) if seconds <= b), len(BUCKETS_S))
        self.counts[i] += 1
        self.total += seconds
        self.n += 1
        self.recent.append(seconds)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, int], int] = {}  # (served_by, status) -> count
        self._fallbacks: dict[str, int] = {}  # reason -> count
        self._cloud_errors: dict[str, int] = {}  # kind -> count
        self._degraded: dict[str, int] = {}  # why a request that wanted the cloud ran here -> count
        self._latency: dict[str, _Histogram] = {}  # served_by -> latency of 2xx answers

    def observe(self, served_by: str, status: int, seconds: float, reason: str = "", degraded: str = "") -> None:
        with self._lock:
            key = (served_by, status)
            self._requests[key] = self._requests.get(key, 0) + 1
            if reason:
                self._fallbacks[reason] = self._fallbacks.get(reason, 0) + 1
            if degraded:
                self._degraded[degraded] = self._degraded.get(degraded, 0) + 1
            if 200 <= status < 300:
                self._latency.setdefault(served_by, _Histogram()).observe(seconds)

    def cloud_error(self, kind: str) -> None:
        with self._lock:
            self._cloud_errors[kind] = self._cloud_errors.get(kind, 0) + 1

    def summary(self) -> dict[str, object]:
        """Counts and latency summaries for /status (milliseconds)."""
        with self._lock:
            counts: dict[str, dict[str, int]] = {}
            for (where, status), n in self._requests.items():
                counts.setdefault(where, {})[str(status)] = n
            latency = {where: _summarize(list(h.recent), h.n) for where, h in self._latency.items()}
            return {"requests": counts, "latency_ms": latency, "fallback_reasons": dict(self._fallbacks),
                    "cloud_errors": dict(self._cloud_errors), "degraded": dict(self._degraded)}

    def render(self, gauges: Mapping[str, float]) -> str:
        """The Prometheus text exposition of every metric, plus ``gauges`` (name -> value)."""
        out: list[str] = []
        with self._lock:
            out += ["# HELP bentoedge_requests_total Prediction requests answered, by where and status.",
                    "# TYPE bentoedge_requests_total counter"]
            for (where, status), n in sorted(self._requests.items()):
                out.append(f'bentoedge_requests_total{{served_by="{_esc(where)}",status="{status}"}} {n}')
            out += ["# HELP bentoedge_fallback_total Requests not answered by the local model, by reason.",
                    "# TYPE bentoedge_fallback_total counter"]
            for reason, n in sorted(self._fallbacks.items()):
                out.append(f'bentoedge_fallback_total{{reason="{_esc(reason)}"}} {n}')
            out += ["# HELP bentoedge_degraded_total Requests answered locally though they wanted the cloud, by reason.",
                    "# TYPE bentoedge_degraded_total counter"]
            for reason, n in sorted(self._degraded.items()):
                out.append(f'bentoedge_degraded_total{{reason="{_esc(reason)}"}} {n}')
            out += ["# HELP bentoedge_cloud_errors_total Failed calls to the cloud endpoint, by kind.",
                    "# TYPE bentoedge_cloud_errors_total counter"]
            for kind, n in sorted(self._cloud_errors.items()):
                out.append(f'bentoedge_cloud_errors_total{{kind="{_esc(kind)}"}} {n}')
            out += ["# HELP bentoedge_request_duration_seconds Latency of successful predictions.",
                    "# TYPE bentoedge_request_duration_seconds histogram"]
            for where, h in sorted(self._latency.items()):
                label = f'served_by="{_esc(where)}"'
                running = 0
                for bound, n in zip(BUCKETS_S, h.counts, strict=False):
                    running += n
                    out.append(f'bentoedge_request_duration_seconds_bucket{{{label},le="{bound:g}"}} {running}')
                out.append(f'bentoedge_request_duration_seconds_bucket{{{label},le="+Inf"}} {h.n}')
                out.append(f"bentoedge_request_duration_seconds_sum{{{label}}} {h.total:.6f}")
                out.append(f"bentoedge_request_duration_seconds_count{{{label}}} {h.n}")
        for name, value in sorted(gauges.items()):
            out += [f"# TYPE {name} gauge", f"{name} {float(value):g}"]
        return "\n".join(out) + "\n"


def _summarize(values: list[float], total: int) -> dict[str, float]:
    if not values:
        return {"count": total}
    ms = np.asarray(values) * 1000.0
    return {"count": total, "p50": round(float(np.percentile(ms, 50)), 3),
            "p99": round(float(np.percentile(ms, 99)), 3), "mean": round(float(ms.mean()), 3)}


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
