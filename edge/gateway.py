"""One prediction request through the device: validate, route, run locally or forward, answer.

The orchestration between the pure router (``edge.router.decide``), the local model
(``edge.active.ActiveModel``), the cloud (``edge.cloud_client.CloudClient``) and the circuit
breaker (``edge.breaker``).  It knows nothing of sockets on the server side: ``predict``
takes the request's body and headers and returns a ``bentos.api.Reply`` (status, body,
headers), which ``edge.server`` writes out; the answers themselves (JSON or .npz, the
placement headers, the error bodies) are the contract's, made by ``bentos.api``.  That
keeps the HTTP layer a thin shell and lets the same code run in process for tests and
benchmarks.

Order of work for a request: check its size; ask the router with what is known before the
body is read (load, memory, size, mode), and forward it unparsed when that says cloud;
otherwise parse and validate against the active model's signature (4xx without touching
the model), ask again with the batch and shapes, and run.  A local failure asks the router
again with ``local_failed``; a cloud failure asks again with the cloud marked unusable (and
parses then, if the request is to run here after all), so at most four steps (parse, edge,
cloud, edge) happen before a 503 with the reason.
A request answered locally adds its inputs to ``edge.inputs.InputWatch`` (the reports' drift).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

import numpy as np

from bentoedge.bentos.api import (
    DEFAULT_MAX_PAYLOAD,
    JSON,
    Reply,
    batch_size,
    check_size,
    error_reply,
    json_reply,
    parse_request,
    placement_headers,
    prediction_reply,
)
from bentoedge.bentos.errors import RequestError, UnavailableError
from bentoedge.edge.active import ActiveModel, ServingModel
from bentoedge.edge.breaker import CircuitBreaker
from bentoedge.edge.cloud_client import CloudAnswer, CloudClient, CloudError
from bentoedge.edge.inputs import InputWatch
from bentoedge.edge.metrics import Metrics
from bentoedge.edge.router import (
    CLOUD_CIRCUIT_OPEN,
    CLOUD_NOT_CONFIGURED,
    Decision,
    DeviceState,
    RequestFacts,
    RouterPolicy,
    decide,
)

log = logging.getLogger("bentoedge.agent")

EWMA_ALPHA = 0.2


class LocalLoad:
    """In-flight local predictions and the EWMA of their latency (the router's load facts)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.inflight = 0
        self.ewma_ms = 0.0

    def enter(self) -> None:
        with self._lock:
            self.inflight += 1

    def leave(self, ms: float | None) -> None:
        with self._lock:
            self.inflight -= 1
            if ms is not None:
                self.ewma_ms = ms if self.ewma_ms == 0.0 else (1 - EWMA_ALPHA) * self.ewma_ms + EWMA_ALPHA * ms


def read_free_memory_mb(path: str = "/proc/meminfo") -> float | None:
    """MemAvailable in MiB, or None where the platform does not say (not Linux)."""
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


class MemoryProbe:
    """Free memory, read at most once per ``every_s`` (reading /proc costs more than routing)."""

    def __init__(self, read: Callable[[], float | None] = read_free_memory_mb, every_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read, self._every, self._clock = read, every_s, clock
        self._at = -1e18
        self._value: float | None = None

    def __call__(self) -> float | None:
        now = self._clock()
        if now - self._at >= self._every:
            self._value, self._at = self._read(), now
        return self._value


def shapes_fit(fixed: Mapping[str, tuple[int, ...]], arrays: Mapping[str, np.ndarray]) -> bool:
    """Whether the local artifact's fixed dims (-1 = free) accept these arrays."""
    for name, arr in arrays.items():
        dims = fixed.get(name)
        if dims is None:
            continue
        if len(dims) != arr.ndim or any(d not in (-1, None) and d != g for d, g in zip(dims, arr.shape, strict=False)):
            return False
    return True


class Gateway:
    """Answers prediction requests for the device; thread-safe."""

    def __init__(self, active: ActiveModel, policy: RouterPolicy, cloud: CloudClient | None,
                 breaker: CircuitBreaker, metrics: Metrics, request_timeout_s: float = 5.0,
                 memory: Callable[[], float | None] = MemoryProbe(), max_body: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.active = active
        self.policy = policy
        self.cloud = cloud
        self.breaker = breaker
        self.metrics = metrics
        self.request_timeout_s = request_timeout_s
        self.memory = memory
        self.max_body = max_body
        self.load = LocalLoad()
        self.inputs = InputWatch()  # what the local model was fed, for the fleet reports' drift

    # -- facts ---------------------------------------------------------------------------
    def cloud_state(self) -> tuple[bool, str]:
        if self.cloud is None:
            return False, CLOUD_NOT_CONFIGURED
        if not self.breaker.usable():
            return False, CLOUD_CIRCUIT_OPEN
        return True, ""

    def device_state(self, model: ServingModel | None, workers: int) -> DeviceState:
        usable, problem = self.cloud_state()
        artifact = getattr(model, "artifact", None)
        return DeviceState(
            model_active=model is not None,
            has_edge_artifact=artifact is not None and getattr(artifact, "target", "edge") == "edge",
            inflight=self.load.inflight, ewma_latency_ms=self.load.ewma_ms, workers=workers,
            free_memory_mb=self.memory(), cloud_usable=usable, cloud_problem=problem)

    def ready(self) -> bool:
        """Ready when a model is active, or the cloud can answer in the configured mode."""
        if self.active.get() is not None:
            return True
        return self.policy.mode != "edge_only" and self.cloud_state()[0]

    # -- one request ---------------------------------------------------------------------
    def predict(self, body: bytes, content_type: str | None, accept: str | None) -> Reply:
        start = time.monotonic()
        deadline = start + self.request_timeout_s
        model = self.active.get()  # one model for the whole request, even across a swap
        workers = int(getattr(model, "workers", 1) or 1)
        try:
            check_size(len(body), self.max_body)
        except RequestError as exc:
            self.metrics.observe("edge", exc.status, time.monotonic() - start)
            return error_reply(exc)
        # First what the router can tell before reading the body (load, memory, size, mode):
        # a request it sends to the cloud on those alone goes as it came, unparsed, so an
        # overloaded device spends on the requests it forwards only the copy, not a parse
        # (for JSON, most of a request's cost).  The body is parsed once the route is "edge".
        facts = RequestFacts(len(body), batch=0)
        arrays: dict[str, np.ndarray] | None = None
        cloud_failure = ""

        def state() -> DeviceState:
            now = self.device_state(model, workers)
            return replace(now, cloud_usable=False, cloud_problem=cloud_failure) if cloud_failure else now

        decision = decide(facts, state(), self.policy)
        for _ in range(4):  # parse, edge, cloud, edge at most; each step changes a fact
            if decision.route == "edge" and model is not None and arrays is None:
                if len(body) > self.policy.hard_payload_bytes:
                    break  # never parsed here: a parsed JSON body is many times its size
                try:
                    arrays = parse_request(body, content_type, model.signature, self.max_body)
                except RequestError as exc:
                    self.metrics.observe("edge", exc.status, time.monotonic() - start)
                    return error_reply(exc)
                facts = replace(facts, batch=batch_size(arrays),
                                shape_ok=shapes_fit(getattr(model, "fixed_shapes", {}), arrays))
                decision = decide(facts, state(), self.policy)
                continue
            if decision.route == "edge" and model is not None and arrays is not None:
                reply = self._local(model, arrays, accept, start, deadline, decision.reason)
                if reply is not None:
                    return reply
                facts = replace(facts, local_failed=True)
            elif decision.route == "cloud" and self.cloud is not None:
                reply, cloud_failure = self._forward(body, content_type, accept, deadline, decision, start)
                if reply is not None:
                    return reply
            else:
                break
            decision = decide(facts, state(), self.policy)
        return self._reject(decision, cloud_failure, start)

    def _local(self, model: ServingModel, arrays: dict[str, np.ndarray], accept: str | None,
               start: float, deadline: float, degraded: str = "") -> Reply | None:
        self.load.enter()
        t0 = time.monotonic()
        ms: float | None = None
        try:
            # Waiting for an interpreter counts against the request's deadline; running does not
            # (an invoke cannot be interrupted), so a full queue ends in a 503, not a late 200.
            outputs = model.predict(arrays, timeout=max(0.0, deadline - time.monotonic()))
            ms = (time.monotonic() - t0) * 1000.0
        except Exception as exc:  # a broken model must never take the server down
            log.warning("local inference failed on %s: %s: %s", model.version, type(exc).__name__, exc)
            return None
        finally:
            self.load.leave(ms)
        try:
            self.inputs.observe(model, arrays)
        except Exception as exc:  # statistics must never cost a request its answer
            log.warning("input statistics skipped for %s: %s: %s", model.version, type(exc).__name__, exc)
        reply = prediction_reply(outputs, model.name, model.version, "edge", accept, degraded)
        self.metrics.observe("edge", 200, time.monotonic() - start, degraded=degraded)
        return reply

    def _forward(self, body: bytes, content_type: str | None, accept: str | None, deadline: float,
                 decision: Decision, start: float) -> tuple[Reply | None, str]:
        assert self.cloud is not None
        if not self.breaker.allow():
            return None, CLOUD_CIRCUIT_OPEN
        try:
            answer = self.cloud.predict(body, content_type or JSON, accept, deadline)
        except CloudError as exc:
            self.breaker.record_failure()
            self.metrics.cloud_error(exc.kind)
            log.info("forwarding to the cloud failed (%s): %s", decision.reason, exc)
            return None, exc.kind
        except Exception as exc:  # anything unexpected on the way out counts as a cloud failure
            self.breaker.record_failure()
            self.metrics.cloud_error("cloud_error")
            log.warning("forwarding to the cloud failed unexpectedly: %s: %s", type(exc).__name__, exc)
            return None, "cloud_error"
        self.breaker.record_success()
        reply = self._relay(answer, decision.reason)
        self.metrics.observe("cloud", reply.status, time.monotonic() - start, decision.reason)
        return reply, ""

    @staticmethod
    def _relay(answer: CloudAnswer, reason: str) -> Reply:
        """The cloud's answer as the device's: its placement and the reason it was forwarded added."""
        headers = placement_headers("cloud", answer.model_version, answer.model_name, reason)
        if answer.doc is not None and 200 <= answer.status < 300:
            doc = dict(answer.doc)
            doc["served_by"] = "cloud"
            doc["fallback_reason"] = reason
            return json_reply(answer.status, doc, headers)
        return Reply(answer.status, answer.body, answer.content_type, headers)

    def _reject(self, decision: Decision, cloud_failure: str, start: float) -> Reply:
        reason = decision.reason or "unroutable"
        if cloud_failure and cloud_failure not in reason:
            reason = f"{reason},{cloud_failure}"
        self.metrics.observe("none", 503, time.monotonic() - start, reason)
        message = (f"neither this device nor the cloud can answer ({reason}); "
                   "retry later, or check the agent's /status for the active model and the cloud endpoint")
        return error_reply(UnavailableError(message, reason))
