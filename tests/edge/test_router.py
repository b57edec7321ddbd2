"""The fallback router as a pure function: every mode, every reason, with and without a cloud."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from bentoedge.edge.config import Limits
from bentoedge.edge.router import (
    BATCH_LIMIT,
    CLOUD_NOT_CONFIGURED,
    CLOUD_ONLY,
    EDGE_ONLY,
    HARD_REASONS,
    LATENCY_BUDGET,
    LOCAL_ERROR,
    LOW_MEMORY,
    NO_EDGE_ARTIFACT,
    NO_MODEL,
    OVERLOADED,
    PAYLOAD_LIMIT,
    PREFER_CLOUD,
    SHAPE_LIMIT,
    SOFT_REASONS,
    DeviceState,
    RequestFacts,
    RouterPolicy,
    decide,
    local_reason,
    predicted_wait_ms,
)

LIMITS = Limits(max_batch=8, max_payload_bytes=1000, max_inflight=4, latency_budget_ms=100.0, min_free_memory_mb=64)
OK_REQ = RequestFacts(payload_bytes=100, batch=1)
OK_DEV = DeviceState(model_active=True, inflight=0, ewma_latency_ms=1.0, free_memory_mb=1000.0)
CLOUD_DOWN = {"cloud_usable": False, "cloud_problem": "cloud_circuit_open"}

# One (request, device) pair per reason, each differing from the healthy case by one fact.
CASES = {
    NO_MODEL: (OK_REQ, replace(OK_DEV, model_active=False)),
    NO_EDGE_ARTIFACT: (OK_REQ, replace(OK_DEV, has_edge_artifact=False)),
    LOCAL_ERROR: (replace(OK_REQ, local_failed=True), OK_DEV),
    SHAPE_LIMIT: (replace(OK_REQ, shape_ok=False), OK_DEV),
    PAYLOAD_LIMIT: (replace(OK_REQ, payload_bytes=1001), OK_DEV),
    BATCH_LIMIT: (replace(OK_REQ, batch=9), OK_DEV),
    LOW_MEMORY: (OK_REQ, replace(OK_DEV, free_memory_mb=63.0)),
    OVERLOADED: (OK_REQ, replace(OK_DEV, inflight=4)),
    LATENCY_BUDGET: (OK_REQ, replace(OK_DEV, inflight=2, ewma_latency_ms=40.0)),  # 3 rounds x 40 > 100
}
POLICY = RouterPolicy("prefer_edge", LIMITS)


def test_healthy_request_runs_locally_in_prefer_edge() -> None:
    assert decide(OK_REQ, OK_DEV, POLICY).route == "edge"
    assert decide(OK_REQ, OK_DEV, POLICY).reason == ""


def test_each_reason_forwards_to_a_usable_cloud_and_says_why() -> None:
    for reason, (req, dev) in CASES.items():
        d = decide(req, dev, POLICY)
        assert (d.route, d.reason) == ("cloud", reason), reason


def test_with_the_cloud_down_hard_reasons_reject_and_soft_ones_run_locally() -> None:
    for reason, (req, dev) in CASES.items():
        d = decide(req, replace(dev, **CLOUD_DOWN), POLICY)
        if reason in HARD_REASONS:
            assert d.route == "reject" and d.reason == f"{reason},cloud_circuit_open", reason
        else:
            assert d.route == "edge" and d.reason == f"{reason},cloud_circuit_open", reason  # degraded


def test_local_queue_has_a_hard_bound_when_nothing_else_can_answer() -> None:
    dev = replace(OK_DEV, inflight=POLICY.queue_limit, **CLOUD_DOWN)
    assert decide(OK_REQ, dev, POLICY).route == "reject"
    assert decide(OK_REQ, replace(dev, inflight=POLICY.queue_limit - 1), POLICY).route == "edge"


def test_with_the_cloud_down_a_batch_far_over_the_limit_is_refused() -> None:
    """Security finding 7: a batch of 45,000 with the cloud down must not run on the device."""
    dev = replace(OK_DEV, **CLOUD_DOWN)
    limit = POLICY.limits.max_batch
    assert decide(replace(OK_REQ, batch=limit + 1), dev, POLICY).route == "edge"  # a little over: late beats never
    assert decide(replace(OK_REQ, batch=POLICY.hard_batch), dev, POLICY).route == "edge"
    far = decide(replace(OK_REQ, batch=45_000), dev, POLICY)
    assert far.route == "reject" and far.reason.startswith("batch_limit,")
    huge = decide(replace(OK_REQ, payload_bytes=POLICY.hard_payload_bytes + 1), dev, POLICY)
    assert huge.route == "reject" and huge.reason.startswith("payload_limit,")


def test_modes() -> None:
    assert decide(OK_REQ, OK_DEV, replace(POLICY, mode="cloud_only")) .reason == CLOUD_ONLY
    assert decide(OK_REQ, replace(OK_DEV, **CLOUD_DOWN), replace(POLICY, mode="cloud_only")).route == "reject"
    assert decide(OK_REQ, OK_DEV, replace(POLICY, mode="prefer_cloud")).reason == PREFER_CLOUD
    assert decide(OK_REQ, replace(OK_DEV, **CLOUD_DOWN), replace(POLICY, mode="prefer_cloud")).route == "edge"
    # prefer_cloud after a local failure must not bounce between the two forever.
    failed = replace(OK_REQ, local_failed=True)
    assert decide(failed, replace(OK_DEV, **CLOUD_DOWN), replace(POLICY, mode="prefer_cloud")).route == "reject"
    edge_only = replace(POLICY, mode="edge_only")
    for reason, (req, dev) in CASES.items():
        d = decide(req, dev, edge_only)
        assert d.route == ("reject" if reason in HARD_REASONS else "edge"), reason


def test_a_cloud_that_is_not_configured_is_named_in_the_rejection() -> None:
    d = decide(OK_REQ, replace(OK_DEV, model_active=False, cloud_usable=False, cloud_problem=""), POLICY)
    assert d == type(d)("reject", f"{NO_MODEL},{CLOUD_NOT_CONFIGURED}")


def test_an_idle_device_runs_locally_whatever_its_latency_estimate() -> None:
    slow_idle = replace(OK_DEV, inflight=0, ewma_latency_ms=1e6)
    assert decide(OK_REQ, slow_idle, POLICY).route == "edge"
    assert decide(OK_REQ, replace(slow_idle, inflight=1), POLICY).reason == LATENCY_BUDGET


def test_predicted_wait_counts_queue_rounds_per_worker() -> None:
    assert predicted_wait_ms(replace(OK_DEV, inflight=0, ewma_latency_ms=10.0)) == 10.0
    assert predicted_wait_ms(replace(OK_DEV, inflight=3, ewma_latency_ms=10.0)) == 40.0
    assert predicted_wait_ms(replace(OK_DEV, inflight=3, ewma_latency_ms=10.0, workers=2)) == 20.0


requests = st.builds(RequestFacts, payload_bytes=st.integers(0, 5000), batch=st.integers(0, 20),
                     shape_ok=st.booleans(), local_failed=st.booleans())
devices = st.builds(DeviceState, model_active=st.booleans(), has_edge_artifact=st.booleans(),
                    inflight=st.integers(0, 40), ewma_latency_ms=st.floats(0, 500), workers=st.integers(1, 4),
                    free_memory_mb=st.one_of(st.none(), st.floats(0, 4096)), cloud_usable=st.booleans(),
                    cloud_problem=st.sampled_from(["", "cloud_circuit_open", "cloud_timeout"]))
limits = st.builds(Limits, max_batch=st.integers(1, 16), max_payload_bytes=st.integers(1, 4000),
                   max_inflight=st.integers(0, 8), latency_budget_ms=st.floats(0, 400),
                   min_free_memory_mb=st.integers(0, 512))
policies = st.builds(RouterPolicy, mode=st.sampled_from(["prefer_edge", "edge_only", "cloud_only", "prefer_cloud"]),
                     limits=limits, queue_factor=st.integers(1, 8), overflow_factor=st.integers(1, 8))


@settings(max_examples=3000, deadline=None)
@given(requests, devices, policies)
def test_decide_is_total_and_keeps_every_rule(req: RequestFacts, dev: DeviceState, policy: RouterPolicy) -> None:
    d = decide(req, dev, policy)
    assert d == decide(req, dev, policy)  # pure: same facts, same answer
    reason = local_reason(req, dev, policy.limits)
    cloud_ok = dev.cloud_usable and policy.mode != "edge_only"
    # Where it may run at all.
    if d.route == "cloud":
        assert cloud_ok and d.reason
    if d.route == "edge":
        assert dev.model_active and dev.has_edge_artifact and not req.local_failed and req.shape_ok
        assert policy.mode != "cloud_only"
    if d.route == "reject":
        assert not cloud_ok and d.reason
    # What each mode promises.
    if policy.mode == "edge_only":
        assert d.route != "cloud"
    if policy.mode == "cloud_only":
        assert d.route == ("cloud" if cloud_ok else "reject")
    if policy.mode == "prefer_cloud" and cloud_ok and not req.local_failed:
        assert (d.route, d.reason) == ("cloud", PREFER_CLOUD)
    # Served here although the mode or a limit wanted the cloud: degraded, and it says why.
    if d.route == "edge" and d.reason:
        problem = EDGE_ONLY if policy.mode == "edge_only" else (dev.cloud_problem or CLOUD_NOT_CONFIGURED)
        assert not cloud_ok and d.reason.endswith("," + problem)
    if d.route == "edge" and (reason or policy.mode == "prefer_cloud"):
        assert d.reason, "a degraded local answer must say so"
    if policy.mode == "prefer_edge":
        if not reason:
            assert (d.route, d.reason) == ("edge", "")
        elif cloud_ok:
            assert (d.route, d.reason) == ("cloud", reason)
        elif reason in HARD_REASONS:
            assert d.route == "reject" and d.reason.startswith(reason + ",")
        else:
            assert reason in SOFT_REASONS
            far_over = req.batch > policy.hard_batch or req.payload_bytes > policy.hard_payload_bytes
            assert d.route == ("reject" if far_over or dev.inflight >= policy.queue_limit else "edge")
    # Whatever the mode, nothing far over the limits runs locally.
    if d.route == "edge" and d.reason:
        assert req.batch <= policy.hard_batch and req.payload_bytes <= policy.hard_payload_bytes
