"""A circuit breaker for calls to the cloud: stop hammering an endpoint that keeps failing.

A small state machine with an injected clock, no I/O:

    closed     calls go through; ``failure_threshold`` failures in a row open the circuit
    open       calls are refused until ``reset_after_s`` has passed since it opened
    half_open  one trial call at a time; a success closes the circuit, a failure opens it again

The router reads ``allow()`` as a fact ("is the cloud usable now?"); the HTTP shell reports
the outcome of each call with ``record_success``/``record_failure``.  A lock keeps the counts
consistent under concurrent requests; the clock is a parameter so tests drive time by hand.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    def __init__(self, failure_threshold: int = 5, reset_after_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if reset_after_s < 0:
            raise ValueError("reset_after_s must not be negative")
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        self.opened_count = 0  # how many times the circuit opened, for /status and /metrics

    @property
    def state(self) -> str:
        with self._lock:
            return self._current()

    def _current(self) -> str:
        # Open turns half-open by the passage of time alone, so reading the state advances it.
        if self._state == OPEN and self._clock() - self._opened_at >= self.reset_after_s:
            self._state = HALF_OPEN
            self._trial_in_flight = False
        return self._state

    def usable(self) -> bool:
        """Whether a call would be let through now, without claiming the half-open trial."""
        with self._lock:
            state = self._current()
            return state == CLOSED or (state == HALF_OPEN and not self._trial_in_flight)

    def allow(self) -> bool:
        """Claim the right to make one call; in half-open only one caller gets it."""
        with self._lock:
            state = self._current()
            if state == CLOSED:
                return True
            if state == HALF_OPEN and not self._trial_in_flight:
                self._trial_in_flight = True
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            self._state = CLOSED
            self._failures = 0
            self._trial_in_flight = False

    def record_failure(self) -> None:
        with self._lock:
            state = self._current()
            self._failures += 1
            if state == HALF_OPEN or (state == CLOSED and self._failures >= self.failure_threshold):
                self._open()

    def release(self) -> None:
        """Give back a claimed half-open trial that was never used (the call was not made)."""
        with self._lock:
            self._trial_in_flight = False

    def _open(self) -> None:
        self._state = OPEN
        self._opened_at = self._clock()
        self._trial_in_flight = False
        self.opened_count += 1

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {"state": self._current(), "consecutive_failures": self._failures,
                    "opened_count": self.opened_count}
