"""Fleet status aggregation (pure): versions, health, quiet devices, fallback, drift, worst."""

from __future__ import annotations

from fleet_support import make_report

from bentoedge.bentos import fleet_report as rp
from bentoedge.bentos.drift import Bins, accumulate, empty
from bentoedge.cloud.fleet.status import device_view, summarize


def test_summary() -> None:
    st = accumulate(empty(Bins(0.0, 1.0, 4)), [0.5])
    reports = [
        make_report("a", active="v1", sent_at=1000.0),
        make_report("b", active="v2", sent_at=1000.0, inputs={"x": rp.InputReport(st, 0.4)}),
        make_report("c", active="v2", sent_at=10.0, health=rp.Health("failed", "golden sample 3 off")),
        make_report("d", active="v1", model="other", sent_at=1000.0,
                    requests=rp.Requests(local=10, forwarded={"no_model": 90}, errors=2)),
    ]
    s = summarize(reports, now=1000.0 + 60, quiet_after_s=600)
    assert s["devices"] == 4 and s["health"] == {"passed": 3, "failed": 1, "none": 0}
    rows = {(v["model"], v["version"]): v for v in s["versions"]}
    assert rows[("digits", "v2")]["devices"] == 2 and rows[("digits", "v2")]["failed"] == 1
    assert rows[("digits", "v2")]["drift"]["x"]["max"] == 0.4
    assert rows[("other", "v1")]["fallback_share"] == 0.9 and rows[("other", "v1")]["error_rate"] == 0.2
    assert [q["device_id"] for q in s["quiet"]] == ["c"] and s["quiet_count"] == 1
    assert [w["device_id"] for w in s["worst"]][:2] == ["c", "d"]
    assert "health check failed (golden sample 3 off)" in s["worst"][0]["why"]
    only = summarize(reports, now=1060.0, model="other")
    assert only["devices"] == 1 and only["quiet_count"] == 0
    # Every device on a line of its own, by id, with its version and health; bounded.
    assert [(d["device_id"], d["active"], d["health"]) for d in s["device_list"]] == [
        ("a", "v1", "passed"), ("b", "v2", "passed"), ("c", "v2", "failed"), ("d", "v1", "passed")]
    assert s["device_list"][2]["last_seen_s"] == 1050.0
    assert [d["device_id"] for d in summarize(reports, now=1060.0, listed=2)["device_list"]] == ["a", "b"]


def test_device_view() -> None:
    hist = [make_report(seq=1), make_report(seq=2, active="v2", previous="v1")]
    v = device_view(hist[-1], hist, now=1010.0)
    assert v["last_seen_s"] == 10.0 and [h["seq"] for h in v["history"]] == [1, 2]
    assert v["latest"]["previous"] == "v1" and v["why"] == []
    assert device_view(None, [], 0.0)["latest"] is None
