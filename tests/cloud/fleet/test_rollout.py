"""The rollout controller: its rules as units, and its promises as hypothesis properties."""

from __future__ import annotations

from dataclasses import replace

import pytest
from fleet_support import make_report
from hypothesis import given, settings
from hypothesis import strategies as st

from bentoedge.bentos import fleet_report as rp
from bentoedge.bentos.errors import FormatError, UsageError
from bentoedge.cloud.fleet import rollout as ro

PLAN = ro.Plan("digits", "v2", waves=(1, 10, 50, 100), soak_s=100.0, max_failure_rate=0.05, min_devices=20)


def soaking(wave: int = 0, started: float = 0.0, plan: ro.Plan = PLAN) -> ro.State:
    return ro.State(plan=plan, phase="soaking", wave=wave, started_at=started, revision=3)


# ---- units --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw, message", [
    ({"waves": ()}, "whole percentages"), ({"waves": (0, 100)}, "whole percentages"),
    ({"waves": (10, 5, 100)}, "increase"), ({"waves": (1, 50)}, "end at 100"),
    ({"max_failure_rate": 1.0}, "shares"), ({"min_devices": 0}, "min-devices"),
    ({"soak_s": -1.0}, "seconds"), ({"version": "V2"}, "valid model name"),
])
def test_bad_plans_are_usage_errors(kw: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        replace(PLAN, **kw)


def test_verdicts() -> None:
    ok = make_report(active="v2", active_since=0.0, sent_at=200.0)
    assert ro.verdict(ok, PLAN) == ("healthy", "")
    assert ro.verdict(replace(ok, sent_at=50.0), PLAN) == ("pending", "")
    assert ro.verdict(replace(ok, active="v1", refused=("v2",)), PLAN) == ("failed", "refused")
    assert ro.verdict(replace(ok, health=rp.Health("failed")), PLAN) == ("failed", "health_check")
    assert ro.verdict(replace(ok, active="v1", strikes={"v2": 3}), PLAN) == ("failed", "crash_loop")
    assert ro.verdict(replace(ok, active="v1", strikes={"v2": 1}), PLAN) == ("pending", "")
    assert ro.verdict(replace(ok, requests=rp.Requests(local=100, errors=6)), PLAN) == ("failed", "error_rate")
    assert ro.verdict(replace(ok, requests=rp.Requests(local=10, errors=6)), PLAN) == ("healthy", "")
    assert ro.verdict(replace(ok, active="v1"), PLAN) is None
    assert ro.verdict(replace(ok, model="other"), PLAN) is None


def test_observe_counts_the_wave_by_the_devices_cohort() -> None:
    reports = [make_report(f"d{i}", active="v1", sent_at=1000.0) for i in range(200)]
    view = ro.observe(reports, PLAN, 10, now=1000.0)
    from bentoedge.edge.sync.select import cohort

    assert view.expected == sum(cohort(f"d{i}", "digits") < 10 for i in range(200)) and view.touched == 0
    wave2 = ro.observe(reports, PLAN, 10, now=1000.0, previous=1)
    assert wave2.new_expected == sum(1 <= cohort(f"d{i}", "digits") < 10 for i in range(200))
    quiet = ro.observe(reports, PLAN, 10, now=1000.0 + PLAN.quiet_after_s + 1)
    assert quiet.expected == 0 and quiet.quiet == 200


def test_rules_in_order() -> None:
    bad = ro.WaveView(expected=100, touched=20, healthy=0, pending=18, failed=2)
    assert ro.decide(soaking(), bad, 10.0).kind == "abort"  # 10% of 20 > 5%: at once, soak or not
    few = ro.WaveView(expected=100, touched=10, pending=9, failed=1)
    assert ro.decide(soaking(), few, 10.0).kind == "wait"  # under min devices: no verdict yet
    good = ro.WaveView(expected=100, touched=40, healthy=40, live=100, new_expected=100, new_healthy=40)
    assert ro.decide(soaking(), good, 50.0).kind == "wait"  # soaking
    act = ro.decide(soaking(), good, 150.0)
    assert (act.kind, act.wave, act.rollout) == ("publish", 1, 10)
    assert ro.decide(soaking(wave=3), good, 150.0).kind == "done"
    assert ro.decide(soaking(), ro.WaveView(live=50), 150.0).kind == "publish"  # nobody in the cohort
    old = ro.WaveView(expected=100, touched=40, healthy=40, live=100, new_expected=90, new_healthy=5)
    assert ro.decide(soaking(wave=1), old, 150.0).kind == "wait"  # earlier waves do not vouch for this one
    assert ro.decide(soaking(), ro.WaveView(), 150.0).kind == "wait"  # nobody reports at all: no evidence
    assert ro.decide(soaking(), ro.WaveView(), PLAN.timeout_s).kind == "abort"
    half = ro.WaveView(expected=100, touched=5, healthy=5, live=100, new_expected=100, new_healthy=5)
    assert ro.decide(soaking(), half, 150.0).kind == "wait"
    assert ro.decide(soaking(), half, PLAN.timeout_s).kind == "publish"  # timeout: quiet ones are not waited for
    none = ro.WaveView(expected=100, touched=5, pending=5, live=100, new_expected=100)
    assert ro.decide(soaking(), none, PLAN.timeout_s).kind == "abort"


def test_state_round_trip_and_malformed() -> None:
    s = ro.begin(ro.start(PLAN, 0.0), ro.decide(ro.start(PLAN, 0.0), ro.WaveView(), 0.0), 0.0)
    assert s.phase == "publishing" and ro.State.from_dict(s.to_dict()) == s
    with pytest.raises(FormatError):
        ro.State.from_dict({**s.to_dict(), "phase": "flying"})
    with pytest.raises(FormatError):
        ro.State.from_dict({"format": ro.FORMAT})
    with pytest.raises(UsageError, match="published already"):
        ro.begin(soaking(wave=1), ro.Action("publish", wave=1, rollout=10), 0.0)


# ---- properties -----------------------------------------------------------------------------------

views = st.builds(
    lambda e, t, h, f, q, v, ne, nh: ro.WaveView(
        expected=max(e, t), touched=t, healthy=min(h, t - min(f, t)), pending=t - min(f, t) - min(h, t - min(f, t)),
        failed=min(f, t), quiet=q, live=max(v, e, t), new_expected=min(ne, max(e, t)),
        new_healthy=min(nh, ne, h, t - min(f, t))),
    st.integers(0, 200), st.integers(0, 200), st.integers(0, 200), st.integers(0, 40), st.integers(0, 50),
    st.integers(0, 300), st.integers(0, 200), st.integers(0, 200))
plans = st.builds(lambda w, soak, rate, n: ro.Plan("digits", "v2", waves=w, soak_s=soak, max_failure_rate=rate,
                                                   min_devices=n),
                  st.sampled_from([(100,), (1, 100), (1, 10, 50, 100), (5, 25, 100)]),
                  st.floats(0, 5000), st.floats(0, 0.5), st.integers(1, 50))


@settings(max_examples=400, deadline=None)
@given(plans, st.integers(0, 3), views, st.floats(0, 50000))
def test_never_advances_past_a_failing_wave(plan: ro.Plan, wave: int, view: ro.WaveView, now: float) -> None:
    wave = min(wave, len(plan.waves) - 1)
    act = ro.decide(soaking(wave, 0.0, plan), view, now)
    if act.kind in ("publish", "done"):
        assert view.failure_share <= plan.max_failure_rate
        assert now >= plan.soak_s
    if view.failure_share > plan.max_failure_rate and view.touched >= ro.need(plan, view) and view.touched:
        assert act.kind == "abort"


def _step(state: ro.State, view: ro.WaveView, now: float, crash: bool, published: list[int]) -> ro.State:
    """The shell, with a crash between recording an intent and confirming it."""
    act = ro.decide(state, view, now)
    nxt = ro.begin(state, act, now)
    if act.kind == "publish":
        assert act.wave is not None
        published.append(act.wave)
        return nxt if crash else ro.confirm_publish(nxt, now)
    if act.kind == "abort":
        return nxt if crash else ro.confirm_abort(nxt, now)
    return nxt


@settings(max_examples=200, deadline=None)
@given(plans, st.lists(st.tuples(views, st.floats(0, 3000), st.booleans()), min_size=1, max_size=40))
def test_publishes_each_wave_once_in_order_and_abort_is_terminal(
        plan: ro.Plan, steps: list[tuple[ro.WaveView, float, bool]]) -> None:
    state, now, published, confirmed = ro.start(plan, 0.0), 0.0, [], []
    seen_abort = False
    for view, dt, crash in steps:
        now += dt
        before = state
        state = _step(state, view, now, crash, published)
        if before.phase == "publishing" and state.phase == "soaking":
            confirmed.append(state.wave)
        if seen_abort:
            assert state.phase in ("aborting", "aborted") and ro.decide(state, view, now).kind in ("abort", "aborted")
        seen_abort = seen_abort or state.phase in ("aborting", "aborted")
        assert ro.State.from_dict(state.to_dict()) == state
    assert confirmed == sorted(set(confirmed))  # each wave confirmed at most once, in order
    # A publish repeats only while its wave is unconfirmed (a crash between intent and channel).
    assert all(b >= a for a, b in zip(published, published[1:], strict=False))


def _fleet_view(plan: ro.Plan, state: ro.State, n: int, quiet: int) -> ro.WaveView:
    pct, prev = state.rollout, state.previous_rollout
    live_taking = (n - quiet) * pct // 100
    added = live_taking - (n - quiet) * prev // 100
    return ro.WaveView(expected=live_taking, touched=live_taking, healthy=live_taking, quiet=quiet, live=n - quiet,
                       new_expected=added, new_healthy=added)


@settings(max_examples=100, deadline=None)
@given(plans, st.integers(1, 5000), st.integers(0, 50))
def test_a_good_fleet_reaches_100_percent(plan: ro.Plan, n: int, quiet_pct: int) -> None:
    state, now = ro.start(plan, 0.0), 0.0
    quiet = n * quiet_pct // 100
    for _ in range(10 * len(plan.waves) + 10):
        if state.terminal:
            break
        state = _step(state, _fleet_view(plan, state, n, quiet), now, False, [])
        now += plan.soak_s / 2 + 1
    assert state.phase == "done" and state.rollout == 100
