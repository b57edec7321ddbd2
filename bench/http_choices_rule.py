"""The rule bench/http_choices.py decides by: a library replaces our own code only if its figures say so.

Pure (no I/O, standard library only), so the rule is testable apart from the benchmark and
the decision in bench/results/http_choices.json is computed from its figures, never
written by hand.  ``Rule`` holds the limits, ``decide`` applies them to one component's
figures, ``choose`` reads the figures out of the benchmark's sections and decides each
component: the server (uvicorn with h11), the cloud client (urllib3), metrics
(prometheus-client).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rule:
    """When a library replaces our own code: every limit met, else we keep ours and harden it."""

    latency_tolerance: float = 1.10  # its per-request (server) / per-call (client, metrics) cost <= 1.10x ours
    throughput_floor: float = 0.95  # server only: its concurrency-8 throughput >= 0.95x ours
    added_install_mb: float = 1.0  # what it adds to the device install beyond what is already there
    import_ms_on_agent: float = 50.0  # its import on top of the agent's own (device cold start goal: +300 ms)
    import_rss_mb_on_agent: float = 5.0  # and the memory that import takes

    def text(self) -> str:
        return (f"adopt the library only if its cost is within {self.latency_tolerance:g}x of ours (server: "
                f"p50 overhead over the raw interpreter, and concurrency-8 throughput at least "
                f"{self.throughput_floor:g}x ours; client and metrics: p50 per call), it adds at most "
                f"{self.added_install_mb:g} MB to the device install, and importing it on top of the agent costs "
                f"at most {self.import_ms_on_agent:g} ms and {self.import_rss_mb_on_agent:g} MB RSS; "
                "otherwise keep ours and harden it")


RULE = Rule()

#: criterion -> (figure key, "max" or "min" (the limit is an upper or a lower bound), Rule field, words)
_CRITERIA: dict[str, tuple[str, str, str, str]] = {
    "latency": ("cost_ratio", "max", "latency_tolerance", "cost {value:.2f}x ours (limit {limit:g}x)"),
    "throughput": ("throughput_ratio", "min", "throughput_floor", "throughput {value:.2f}x ours (floor {limit:g}x)"),
    "install": ("added_install_mb", "max", "added_install_mb", "adds {value:.2f} MB to the device (limit {limit:g} MB)"),
    "import_time": ("import_ms_on_agent", "max", "import_ms_on_agent",
                    "import {value:.1f} ms on top of the agent (limit {limit:g} ms)"),
    "import_rss": ("import_rss_mb_on_agent", "max", "import_rss_mb_on_agent",
                   "import {value:.2f} MB RSS on top of the agent (limit {limit:g} MB)"),
}


def decide(candidate: str, figures: Mapping[str, float | None], rule: Rule = RULE) -> dict[str, Any]:
    """Apply ``rule`` to one component's ``figures``; a criterion whose figure is absent (None
    or missing: throughput for a client) is not judged.  Returns the criteria (value, limit,
    met), ``adopt`` and a one-line ``decision`` that quotes the figures it rests on."""
    criteria: dict[str, dict[str, Any]] = {}
    for name, (key, sense, limit_field, _) in _CRITERIA.items():
        value = figures.get(key)
        if value is None:
            continue
        limit = float(getattr(rule, limit_field))
        met = value <= limit if sense == "max" else value >= limit
        criteria[name] = {"value": round(float(value), 4), "limit": limit, "met": bool(met)}
    if not criteria:
        raise ValueError(f"no figures to decide {candidate} on")

    def words(names: Iterable[str]) -> str:
        return "; ".join(_CRITERIA[n][3].format(value=criteria[n]["value"], limit=criteria[n]["limit"])
                         for n in names)

    failed = [n for n, c in criteria.items() if not c["met"]]
    adopt = not failed
    decision = (f"adopt {candidate}: {words(criteria)}" if adopt else
                f"keep ours and harden it: {candidate} fails the rule ({words(failed)})"
                + (f"; it meets the rest ({words(n for n in criteria if n not in failed)})"
                   if len(failed) < len(criteria) else ""))
    return {"criteria": criteria, "adopt": adopt, "decision": decision}


def ratio(theirs: float, ours: float) -> float:
    """theirs / ours, guarded against a zero denominator (then the library is never 'cheaper')."""
    return round(theirs / ours, 4) if ours > 0 else float("inf")


def choose(server: Mapping[str, Any], client: Mapping[str, Any], metrics: Mapping[str, Any],
           install: Mapping[str, Any], rule: Rule = RULE) -> dict[str, Any]:
    """Per component: the figures the rule reads and its decision (pure: from the sections above)."""
    cand = install["candidates"]

    def install_figures(name: str) -> dict[str, float]:
        c = cand[name]
        return {"added_install_mb": c["added_install_mb"], "import_ms_on_agent": c["import_on_agent"]["ms"],
                "import_rss_mb_on_agent": c["import_on_agent"]["rss_mb"]}

    # uvicorn is judged as it would ship: the model runs in a thread pool, so a slow prediction
    # cannot stall every other connection (ours runs each connection in its own thread).
    shipped = server["ratios"]["uvicorn_h11_threadpool"]
    figures = {
        "server": ("uvicorn+h11", {"cost_ratio": shipped["overhead_p50_over_ours"],
                                   "throughput_ratio": shipped["c8_throughput_over_ours"],
                                   **install_figures("uvicorn_h11")}),
        "client": ("urllib3", {"cost_ratio": client["ratios"]["urllib3_p50_over_ours"], **install_figures("urllib3")}),
        "metrics": ("prometheus-client", {"cost_ratio": max(metrics["ratios"]["render_p50_over_ours"],
                                                            metrics["ratios"]["observe_p50_over_ours"]),
                                          **install_figures("prometheus_client")}),
    }
    out: dict[str, Any] = {}
    for component, (candidate, figs) in figures.items():
        out[component] = {"candidate": candidate, "figures": figs, **decide(candidate, figs, rule)}
    out["server"]["judged_variant"] = "uvicorn_h11_threadpool"
    out["server"]["inline_overhead_p50_over_ours"] = server["ratios"]["uvicorn_h11_inline"]["overhead_p50_over_ours"]
    out["metrics"]["cost_ratio_is"] = "the worse of render and per-observation p50 ratios"
    return out
