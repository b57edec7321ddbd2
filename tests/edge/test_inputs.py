"""Per-input statistics on the device's request path (``edge.inputs``) and in its reports.

The running figures must equal ``bentos.drift.accumulate`` over the same values (the pure
definition), in any batching; large inputs are sampled to a bound; a new version starts
again; and through a real agent API the report's drift score tells served inputs that match
the build's validation data from shifted ones.
"""

from __future__ import annotations

import json
import math
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from sync_support import SIG, make_device, seal_tiny, signer_pub

from bentoedge.bentos import fleet_report as rp
from bentoedge.bentos.drift import PSI_LEVELS, Bins, accumulate, empty, reference_stats
from bentoedge.cloud.channel import Channel
from bentoedge.edge.inputs import SAMPLE_VALUES, InputWatch, batch_figures
from bentoedge.edge.reporter import build_report
from bentoedge.edge.sync import Result
from bentoedge.edge.wiring import wire

REF = reference_stats({"x": np.random.default_rng(0).normal(0.0, 1.0, (500, 4))})


def _model(version: str = "v1", refs: Any = REF) -> Any:
    return SimpleNamespace(name="tiny", version=version, signature=SIG,
                           manifest=SimpleNamespace(extra={"reference_stats": refs} if refs is not None else {}))


values = st.lists(st.one_of(st.floats(-5, 5, width=32), st.sampled_from([math.nan, math.inf, -math.inf])),
                  min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(st.lists(values, min_size=1, max_size=6))
def test_running_figures_equal_the_pure_definition_in_any_batching(batches: list[list[float]]) -> None:
    watch = InputWatch()
    model = _model()
    for b in batches:
        watch.observe(model, {"x": np.asarray(b, np.float32).reshape(-1, 1)})
    got = watch.report("tiny", "v1")["x"].stats
    want = accumulate(empty(Bins(REF["x"]["bins"]["lo"], REF["x"]["bins"]["hi"], REF["x"]["bins"]["n"])),
                      np.asarray([v for b in batches for v in b], np.float32))
    assert (got.count, got.nan, got.inf, got.histogram, got.min, got.max) == (
        want.count, want.nan, want.inf, want.histogram, want.min, want.max)
    assert math.isclose(got.mean, want.mean, rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(got.m2, want.m2, rel_tol=1e-6, abs_tol=1e-6)
    rp.Report(device_id="d", seq=1, sent_at=0.0, inputs={"x": watch.report("tiny", "v1")["x"]}).to_bytes()


def test_a_large_input_is_sampled_to_a_bound_and_keeps_its_shares() -> None:
    image = np.random.default_rng(1).random((1, 96, 96, 3), np.float32)
    image[0, 0, :10, 0] = np.nan
    b = batch_figures(image, Bins(0.0, 1.0, 10))
    assert SAMPLE_VALUES // 2 < b.count <= SAMPLE_VALUES
    assert b.hist is not None and int(b.hist.sum()) == b.finite == b.count - b.nan
    assert abs(b.mean - 0.5) < 0.05  # the stride sees the whole tensor, not its first rows


def test_a_new_version_starts_again_and_another_version_reports_nothing() -> None:
    watch = InputWatch()
    watch.observe(_model("v1"), {"x": np.zeros((3, 4), np.float32)})
    assert watch.report("tiny", "v1")["x"].stats.count == 12
    watch.observe(_model("v2"), {"x": np.zeros((1, 4), np.float32)})
    assert watch.report("tiny", "v2")["x"].stats.count == 4
    assert watch.report("tiny", "v1") == {}


def test_without_or_with_a_bad_reference_there_are_statistics_but_no_drift() -> None:
    for refs in (None, {"x": {"bins": {"lo": 1.0, "hi": 0.0, "n": 10}, "histogram": []}}):
        watch = InputWatch()
        watch.observe(_model(refs=refs), {"x": np.ones((2, 4), np.float32)})
        r = watch.report("tiny", "v1")["x"]
        assert r.drift is None and r.stats.bins is None and r.stats.count == 8 and r.stats.mean == 1.0


def _post(url: str, x: np.ndarray) -> None:
    body = json.dumps({"inputs": {"x": x.tolist()}}).encode()
    req = urllib.request.Request(f"{url}/predict", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert json.loads(r.read())["served_by"] == "edge"


def test_reports_carry_drift_of_what_the_device_served(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ch = Channel.init((tmp_path / "chan").as_uri(), home=home)
    dev = make_device(tmp_path / "dev", ch.url, ch.root_bytes(), signer_pub(home))
    ch.enroll("dev-1", dev.pub_pem)
    ch.publish(seal_tiny(tmp_path / "s1", home, "v1", 1, extra={"reference_stats": REF}))
    rng = np.random.default_rng(2)
    with wire(dev.config, active=dev.active, serve=True) as w:
        w.server.start()
        assert w.agent.sync_once().result is Result.UPDATED
        watch = w.server.gateway.inputs

        def report() -> rp.InputReport:
            r = build_report(dev.config, w.agent.status(), w.server.metrics.summary(), 1, time.time(), 1.0,
                             watch.report)
            return rp.Report.from_bytes(r.to_bytes()).inputs["x"]  # as the cloud reads it

        for _ in range(20):
            _post(w.server.url, rng.normal(0.0, 1.0, (8, 4)))  # like the validation data
        same = report()
        assert same.stats.count == 20 * 8 * 4 and same.drift is not None and same.drift < PSI_LEVELS[0]
        assert abs(same.stats.mean) < 0.2 and 0.8 < same.stats.std < 1.2

    dev2 = make_device(tmp_path / "dev2", ch.url, ch.root_bytes(), signer_pub(home), device_id="dev-2")
    ch.enroll("dev-2", dev2.pub_pem)
    ch.publish(seal_tiny(tmp_path / "s1b", home, "v1", 1, extra={"reference_stats": REF}))  # wraps for dev-2
    with wire(dev2.config, active=dev2.active, serve=True) as w:
        w.server.start()
        assert w.agent.sync_once().result is Result.UPDATED
        for _ in range(20):
            _post(w.server.url, rng.normal(2.0, 1.0, (8, 4)))  # shifted by two standard deviations
        r = build_report(dev2.config, w.agent.status(), w.server.metrics.summary(), 1, time.time(), 1.0,
                         w.server.gateway.inputs.report)
        shifted = r.inputs["x"]
        assert shifted.drift is not None and shifted.drift > PSI_LEVELS[1]
        assert shifted.stats.nan == 0 and shifted.stats.min is not None and shifted.stats.max > 3.0  # type: ignore[operator]
