"""The circuit breaker's state machine, driven by a hand-held clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bentoedge.edge.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_threshold_failures_in_a_row_and_recovers_through_half_open() -> None:
    clock = Clock()
    b = CircuitBreaker(failure_threshold=3, reset_after_s=10, clock=clock)
    for _ in range(2):
        assert b.allow()
        b.record_failure()
    assert b.state == CLOSED
    b.record_success()  # a success resets the count
    for _ in range(3):
        b.record_failure()
    assert b.state == OPEN and not b.allow() and not b.usable()
    clock.now = 9.9
    assert b.state == OPEN
    clock.now = 10.0
    assert b.state == HALF_OPEN and b.usable()
    assert b.allow()  # the one trial
    assert not b.allow() and not b.usable()  # nobody else while it runs
    b.record_failure()
    assert b.state == OPEN and b.opened_count == 2
    clock.now = 20.0
    assert b.allow()
    b.record_success()
    assert b.state == CLOSED and b.allow()


def test_an_unused_trial_can_be_given_back() -> None:
    clock = Clock()
    b = CircuitBreaker(failure_threshold=1, reset_after_s=1, clock=clock)
    b.record_failure()
    clock.now = 1.0
    assert b.allow() and not b.allow()
    b.release()
    assert b.allow()


def test_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError):
        CircuitBreaker(reset_after_s=-1)


events = st.lists(st.sampled_from(["allow", "ok", "fail", "tick"]), max_size=60)


@settings(max_examples=500, deadline=None)
@given(events, st.integers(1, 4))
def test_matches_a_reference_model(seq: list[str], threshold: int) -> None:
    clock = Clock()
    b = CircuitBreaker(failure_threshold=threshold, reset_after_s=5, clock=clock)
    state, failures, opened_at, trial = CLOSED, 0, 0.0, False
    for ev in seq:
        if state == OPEN and clock.now - opened_at >= 5:
            state, trial = HALF_OPEN, False
        if ev == "tick":
            clock.now += 2.5
            continue
        if ev == "allow":
            want = state == CLOSED or (state == HALF_OPEN and not trial)
            if state == HALF_OPEN and want:
                trial = True
            assert b.allow() == want
        elif ev == "ok":
            b.record_success()
            state, failures, trial = CLOSED, 0, False
        else:
            b.record_failure()
            failures += 1
            if state == HALF_OPEN or (state == CLOSED and failures >= threshold):
                state, opened_at, trial = OPEN, clock.now, False
        assert b.state == (HALF_OPEN if state == OPEN and clock.now - opened_at >= 5 else state)
