"""Benchmark: 100,000 simulated devices, one process, the real selection, reports and controller.

No sockets and no sleeping: simulated time moves in steps of the report period.  What is
real: each device picks its version with ``edge.sync.select.choose`` over real
``Release`` records (so a wave reaches exactly the ``sha256(model:device_id) % 100 <
rollout`` cohort), each device's state is a real ``bentos.fleet_report.Report``, and the
rollout is driven by ``cloud.fleet.rollout`` (``observe``, ``decide``, ``begin``,
``confirm_*``), the code ``bentoedge rollout run`` runs.  What is simulated: the channel
is a list of release records in memory (a publish changes a wave's rollout, an abort
removes the version), and a device that takes the new version either runs it healthy or,
when it is one of the failing devices (an independent hash), refuses it after its health
check, as the agent does.

Scenarios (waves 1,10,50,100, soak 30 min, max failure rate 5 %, min devices 20):

- ``good``: every device runs the new version: it must reach 100 % in its four waves;
- ``bad``: 8 % of devices fail it: it must abort in its first wave; we report how many
  devices took it, refused it, or touched it at all;
- ``quiet``: 2 % of the fleet never reports: the rollout must still reach 100 %.

Figures: GETs and bytes a day for the fleet polling at the agent's default period
(``edge.config.AgentConfig.poll_seconds``; a poll with nothing new is one GET of
``timestamp.json``, whose size is measured on a real channel, and once an hour the full
refresh adds a probe for a newer root), report uploads a day, the fleet store's storage
requests per report and to read every device's latest report, the time to aggregate
100,000 reports (parse, ``fleet status`` summary, the controller's view), and the size of a
report.

    python -m bench.fleet_sim [--devices 100000] [--quick]  ->  bench/results/fleet_sim.json
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from bench._common import write_result  # noqa: E402
from bentoedge.bentos import fleet_report as rp  # noqa: E402
from bentoedge.bentos.channel_layout import Release  # noqa: E402
from bentoedge.bentos.drift import Bins, accumulate, empty  # noqa: E402
from bentoedge.cloud.fleet import rollout as ro  # noqa: E402
from bentoedge.cloud.fleet.status import summarize  # noqa: E402
from bentoedge.cloud.fleet.store import DEFAULT_HISTORY, FleetStore  # noqa: E402
from bentoedge.edge.config import AgentConfig  # noqa: E402
from bentoedge.edge.sync.machine import FULL_REFRESH_S  # noqa: E402
from bentoedge.edge.sync.select import Device, choose  # noqa: E402

MODEL, OLD, NEW = "digits", "v1", "v2"
#: How often an idle device reports (the simulation's time step); the agent's knob is to come.
REPORT_SECONDS = 900.0
#: A store lists at most this many keys per request (S3 ListObjectsV2).
LIST_PAGE = 1000
PLAN = ro.Plan(MODEL, NEW, waves=(1, 10, 50, 100), soak_s=1800.0, max_failure_rate=0.05, min_devices=20)


def _share(device_id: str, salt: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{salt}:{device_id}".encode()).digest()[:8], "big") % 10000


@dataclass
class Sim:
    """The fleet: one Report per device, and the channel's release records."""

    ids: list[str]
    fails: list[bool]  # refuses the new version after its health check
    quiet: list[bool]  # never reports (nor polls)
    reports: list[rp.Report]
    releases: list[Release] = field(default_factory=list)
    selections: int = 0


def _inputs(i: int) -> dict[str, rp.InputReport]:
    bins = Bins(0.0, 1.0, 10)
    st = accumulate(empty(bins), [((i * 7919 + k * 104729) % 1000) / 1000 for k in range(16)])
    return {"x": rp.InputReport(st, 0.02)}


def make_fleet(n: int, fail_share: float, quiet_share: float) -> Sim:
    ids = [f"dev-{i:06d}" for i in range(n)]
    fails = [_share(d, "fails") < fail_share * 10000 for d in ids]
    quiet = [_share(d, "quiet") < quiet_share * 10000 for d in ids]
    inputs = _inputs(0)
    base = rp.Report(device_id=ids[0] if ids else "dev-0", seq=1, sent_at=0.0, device_class="pi4",
                     agent_version="0.1.0", model=MODEL, active=OLD, active_since=-86400.0, uptime_s=86400.0,
                     health=rp.Health("passed", "8 golden samples", -86400.0), sync=rp.SyncResult("up_to_date"),
                     requests=rp.Requests(local=1000, forwarded={"batch_limit": 12}, p50_ms=1.4, p99_ms=4.2),
                     inputs=inputs)
    reports = [replace(base, device_id=d, sent_at=-7200.0 if q else 0.0) for d, q in zip(ids, quiet, strict=True)]
    return Sim(ids, fails, quiet, reports, [Release(MODEL, OLD, 1)])


def publish(sim: Sim, rollout: int) -> None:
    sim.releases = [r for r in sim.releases if r.version != NEW] + [Release(MODEL, NEW, 2, rollout=rollout)]


def withdraw(sim: Sim) -> None:
    sim.releases = [r for r in sim.releases if r.version != NEW]


def select_all(sim: Sim, t: float) -> None:
    """Every polling device sees the changed channel at its next poll and runs the real selection."""
    poll = AgentConfig.__dataclass_fields__["poll_seconds"].default
    for i, r in enumerate(sim.reports):
        if sim.quiet[i] or NEW in r.refused or r.active == NEW:
            continue
        sim.selections += 1
        dev = Device(r.device_id, r.device_class, r.agent_version, MODEL, MODEL, 1 if r.active == OLD else 2,
                     frozenset(f"{MODEL}:{v}" for v in r.refused))
        choice = choose(sim.releases, dev)
        if choice.candidate is None or choice.candidate.version != NEW:
            continue
        at = t + (_share(r.device_id, "poll") / 10000) * poll
        if sim.fails[i]:
            sim.reports[i] = replace(r, refused=(*r.refused, NEW), sync=rp.SyncResult(
                "refused", f"{MODEL}:{NEW} failed its health check; kept {OLD}", at))
        else:
            sim.reports[i] = replace(r, active=NEW, previous=r.active, active_since=at,
                                     health=rp.Health("passed", "8 golden samples", at),
                                     sync=rp.SyncResult("updated", f"{MODEL}:{NEW}", at))


def report_all(sim: Sim, t: float) -> None:
    for i, r in enumerate(sim.reports):
        if not sim.quiet[i]:
            sim.reports[i] = replace(r, seq=r.seq + 1, sent_at=t, uptime_s=r.uptime_s + REPORT_SECONDS)


def run_scenario(name: str, n: int, fail_share: float, quiet_share: float, max_steps: int = 60) -> dict[str, Any]:
    t0 = time.perf_counter()
    sim = make_fleet(n, fail_share, quiet_share)
    state, now = ro.start(PLAN, 0.0), 0.0
    timeline: list[dict[str, Any]] = []
    controller_s = 0.0
    for _ in range(max_steps):
        c0 = time.perf_counter()
        view = ro.observe(sim.reports, PLAN, state.rollout, now, state.previous_rollout)
        action = ro.decide(state, view, now)
        state = ro.begin(state, action, now)
        controller_s += time.perf_counter() - c0
        if action.kind == "publish":
            assert action.rollout is not None
            publish(sim, action.rollout)
            state = ro.confirm_publish(state, now)
        elif action.kind == "abort":
            withdraw(sim)
            state = ro.confirm_abort(state, now)
        running = sum(r.active == NEW for r in sim.reports)
        timeline.append({"t_h": now / 3600, "rollout": state.rollout, "on_new": running,
                         "on_new_share": running / n if n else 0.0, "action": action.kind, "phase": state.phase,
                         "healthy": view.healthy, "wave_healthy": view.new_healthy, "failed": view.failed, "touched": view.touched})
        if state.terminal:
            break
        if action.kind == "publish":
            select_all(sim, now)
        now += REPORT_SECONDS
        report_all(sim, now)
    took = sum(r.active == NEW for r in sim.reports)
    refused = sum(NEW in r.refused for r in sim.reports)
    aborted_in = next((i for i, e in enumerate(timeline) if e["action"] == "abort"), None)
    return {
        "name": name, "devices": n, "failing_share": fail_share, "quiet_share": quiet_share,
        "quiet_devices": sum(sim.quiet), "outcome": state.phase, "final_rollout": state.rollout,
        "waves_published": state.wave + 1, "reason": state.reason,
        "hours_simulated": now / 3600, "steps": len(timeline),
        "devices_took_it": took, "devices_refused_it": refused, "devices_touched": took + refused,
        "touched_share": (took + refused) / n if n else 0.0,
        "aborted_at_wave": None if aborted_in is None else state.wave + 1,
        "selections_run": sim.selections, "controller_s": controller_s, "wall_s": time.perf_counter() - t0,
        "timeline": timeline, "final_reports": sim.reports,
    }


# ---- the store, in memory, counting requests ---------------------------------------------------


class CountingStorage:
    """The ``Storage`` contract in memory (the folder and S3 backends keep the same one), counting
    requests; ``list`` counts one request per page of ``LIST_PAGE`` keys, as S3 would."""

    def __init__(self) -> None:
        self.url = "mem://fleet"
        self.objects: dict[str, bytes] = {}
        self.counts = {"get": 0, "put": 0, "list": 0, "delete": 0}

    def get(self, key: str) -> bytes | None:
        self.counts["get"] += 1
        return self.objects.get(key)

    def put(self, key: str, data: bytes) -> None:
        self.counts["put"] += 1
        self.objects[key] = data

    def put_file(self, key: str, path: Path, progress: Any = None) -> None:
        self.put(key, path.read_bytes())

    def delete(self, key: str) -> None:
        self.counts["delete"] += 1
        self.objects.pop(key, None)

    def list(self, prefix: str) -> list[str]:
        keys = sorted(k for k in self.objects if k.startswith(prefix))
        self.counts["list"] += max(1, math.ceil(len(keys) / LIST_PAGE))
        return keys

    def reset(self) -> dict[str, int]:
        counts, self.counts = self.counts, {k: 0 for k in self.counts}
        return counts


def store_figures(reports: list[rp.Report], ingest_sample: int) -> dict[str, Any]:
    key = Ed25519PrivateKey.generate()
    pub = key.public_key()
    mem = CountingStorage()
    store = FleetStore(mem)
    t = time.perf_counter()
    envelopes = [rp.sign(r, key) for r in reports]
    sign_s = time.perf_counter() - t
    # Ingest as the endpoint will: check the signature, then store (a sample, timed per report).
    sample = envelopes[:ingest_sample]
    t = time.perf_counter()
    for env in sample:
        store.put_report(rp.open_envelope(env, pub))
    ingest_s = time.perf_counter() - t
    ingest_counts = mem.reset()
    second = [rp.sign(replace(r, seq=r.seq + 1, sent_at=r.sent_at + REPORT_SECONDS), key)
              for r in reports[:ingest_sample]]
    for env in second:
        store.put_report(rp.open_envelope(env, pub))
    update_counts = mem.reset()
    # Once a device's history is full, each report also prunes its oldest entry.
    one = reports[0]
    for k in range(DEFAULT_HISTORY + 2):
        store.put_report(rp.open_envelope(rp.sign(replace(one, seq=one.seq + 10 + k), key), pub))
        steady = mem.reset()
    # The rest of the fleet's latest reports, put in place directly (setup, not timed).
    for r, env in zip(reports[ingest_sample:], envelopes[ingest_sample:], strict=True):
        mem.objects[f"latest/{r.device_id}.json"] = env
    mem.reset()
    t = time.perf_counter()
    listing = store.latest_all(MODEL)
    read_s = time.perf_counter() - t
    read_counts = mem.reset()
    t = time.perf_counter()
    summary = summarize(listing.reports, now=max(r.sent_at for r in reports) + 60)
    summary_s = time.perf_counter() - t
    t = time.perf_counter()
    ro.observe(listing.reports, PLAN, 100, now=max(r.sent_at for r in reports) + 60)
    observe_s = time.perf_counter() - t
    n = len(reports)
    return {
        "reports": n,
        "sign_us_per_report": sign_s / n * 1e6,
        "ingest": {"sample": ingest_sample, "us_per_report": ingest_s / ingest_sample * 1e6,
                   "requests_first_report": {k: v / ingest_sample for k, v in ingest_counts.items()},
                   "requests_second_report": {k: v / ingest_sample for k, v in update_counts.items()},
                   "requests_per_report": steady},
        "aggregate": {"read_s": read_s, "summary_s": summary_s, "controller_view_s": observe_s,
                      "total_s": read_s + summary_s + observe_s, "requests": read_counts,
                      "devices_read": len(listing.reports), "unreadable": len(listing.problems),
                      "versions": {v["version"]: v["devices"] for v in summary["versions"]}},
        "envelope_bytes": len(envelopes[0]) if envelopes else 0,
    }


def timestamp_bytes() -> int:
    """The size of a real channel's timestamp.json (what a poll with nothing new GETs)."""
    from bentoedge.cloud.channel import Channel
    from bentoedge.cloud.channel.storage import FolderStorage

    with tempfile.TemporaryDirectory(prefix="bentoedge-fleet-sim-") as tmp:
        ch = Channel.init(Path(tmp, "chan").as_uri(), home=Path(tmp, "home"))
        ch.refresh()
        data = FolderStorage(Path(tmp, "chan")).get("metadata/timestamp.json")
        return len(data or b"")


def traffic(n: int, ts_bytes: int, envelope_bytes: int, per_report: dict[str, float]) -> dict[str, Any]:
    poll = AgentConfig.__dataclass_fields__["poll_seconds"].default
    polls = 86400 / poll
    probes = 86400 / FULL_REFRESH_S  # the hourly full refresh probes for a newer root (a 404)
    reports = 86400 / REPORT_SECONDS
    store_requests = sum(per_report.values())
    return {
        "poll_seconds": poll, "report_seconds": REPORT_SECONDS, "timestamp_json_bytes": ts_bytes,
        "channel_gets_per_device_day": polls + probes, "channel_gets_per_day": n * (polls + probes),
        "channel_bytes_per_day": n * polls * ts_bytes,
        "report_posts_per_day": n * reports, "report_bytes_per_day": n * reports * envelope_bytes,
        "store_requests_per_day": n * reports * store_requests,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true", help="10,000 devices (a few seconds)")
    args = ap.parse_args(argv)
    n = 10_000 if args.quick else args.devices
    t0 = time.perf_counter()
    scenarios = [run_scenario("good", n, 0.0, 0.0), run_scenario("bad", n, 0.08, 0.0),
                 run_scenario("quiet", n, 0.0, 0.02)]
    final = scenarios[0].pop("final_reports")
    for s in scenarios[1:]:
        s.pop("final_reports")
    figures = store_figures(final, ingest_sample=min(n, 2000))
    report_bytes = len(final[0].to_bytes())
    result = {
        "devices": n, "plan": {"waves": list(PLAN.waves), "soak_s": PLAN.soak_s,
                               "max_failure_rate": PLAN.max_failure_rate, "min_devices": PLAN.min_devices},
        "scenarios": [{k: v for k, v in s.items() if k != "timeline"} for s in scenarios],
        "timelines": {s["name"]: s["timeline"] for s in scenarios},
        "store": figures,
        "traffic": traffic(n, timestamp_bytes(), figures["envelope_bytes"], figures["ingest"]["requests_per_report"]),
        "report_size": {"payload_bytes": report_bytes, "envelope_bytes": figures["envelope_bytes"],
                        "max_payload_bytes": rp.MAX_REPORT_BYTES, "max_envelope_bytes": rp.MAX_ENVELOPE_BYTES},
        "checks": {"good_reaches_100": scenarios[0]["outcome"] == "done",
                   "bad_aborted_in_first_wave": scenarios[1]["outcome"] == "aborted"
                   and scenarios[1]["aborted_at_wave"] == 1,
                   "quiet_does_not_stall": scenarios[2]["outcome"] == "done"},
        "wall_s": time.perf_counter() - t0,
    }
    path = write_result("fleet_sim", result)
    for s in result["scenarios"]:
        print(f"{s['name']}: {s['outcome']} at {s['final_rollout']}% after {s['hours_simulated']:.1f} h, "
              f"touched {s['devices_touched']} devices ({s['wall_s']:.1f} s)")
    agg = figures["aggregate"]
    print(f"aggregate {n} reports: {agg['total_s']:.2f} s, requests {agg['requests']}; "
          f"report {report_bytes} B (envelope {figures['envelope_bytes']} B); wrote {path}")
    if not all(result["checks"].values()):
        raise SystemExit(f"a scenario failed its check: {result['checks']}")


if __name__ == "__main__":
    main()
