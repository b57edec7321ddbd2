"""Where a prediction request runs: on this device, in the cloud, or nowhere (503).

``decide`` is a pure function of three small values, so every rule can be tested
exhaustively without a model, a socket or a clock:

    RequestFacts  what the HTTP shell learned from the request (validated? batch, payload,
                  does the local artifact accept these shapes? did local inference just fail?)
    DeviceState   what the shell read from the device (active model, in-flight work, EWMA
                  latency, free memory, is the cloud usable per the circuit breaker?)
    RouterPolicy  the configured mode and limits (edge.config)

Reasons are short stable tokens, sent to clients in ``x-bentoedge-fallback-reason`` and
counted in /metrics.  A *hard* reason means the device cannot answer at all (no model, no
edge artifact, the local run failed, the artifact's fixed shape does not fit); a *soft*
reason means it could, but should not when the cloud is there (over a limit, overloaded,
memory short, or the mode prefers the cloud).  With the cloud unusable, soft reasons are
served locally anyway, unless the local queue is past its hard bound; hard reasons answer
503 with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bentoedge.edge.config import AgentConfig, Limits, Mode

Route = Literal["edge", "cloud", "reject"]

# Hard reasons: the device cannot answer this request.
NO_MODEL = "no_model"
NO_EDGE_ARTIFACT = "no_edge_artifact"
LOCAL_ERROR = "local_error"
SHAPE_LIMIT = "shape_limit"
# Soft reasons: the device could answer but its limits or the mode say the cloud should.
BATCH_LIMIT = "batch_limit"
PAYLOAD_LIMIT = "payload_limit"
OVERLOADED = "overloaded"
LATENCY_BUDGET = "latency_budget"
LOW_MEMORY = "low_memory"
CLOUD_ONLY = "mode_cloud_only"
PREFER_CLOUD = "mode_prefer_cloud"
# Why the cloud cannot take a request (joined to the local reason in a rejection).
CLOUD_NOT_CONFIGURED = "cloud_not_configured"
CLOUD_CIRCUIT_OPEN = "cloud_circuit_open"
EDGE_ONLY = "mode_edge_only"

HARD_REASONS = frozenset({NO_MODEL, NO_EDGE_ARTIFACT, LOCAL_ERROR, SHAPE_LIMIT})
SOFT_REASONS = frozenset({BATCH_LIMIT, PAYLOAD_LIMIT, OVERLOADED, LATENCY_BUDGET, LOW_MEMORY})


@dataclass(frozen=True)
class RequestFacts:
    payload_bytes: int
    batch: int = 1  # 0 when the request could not be parsed locally (no model to validate against)
    shape_ok: bool = True  # the local artifact accepts these shapes (fixed dims match)
    local_failed: bool = False  # this is the second decision, after the local run raised


@dataclass(frozen=True)
class DeviceState:
    model_active: bool
    has_edge_artifact: bool = True
    inflight: int = 0  # local predictions running or waiting, not counting this one
    ewma_latency_ms: float = 0.0  # recent local latency per request
    workers: int = 1  # interpreters that run in parallel
    free_memory_mb: float | None = None  # None when the platform does not say
    cloud_usable: bool = True  # configured, allowed by the mode and the circuit breaker
    cloud_problem: str = ""  # why not, when not (a reason token)


@dataclass(frozen=True)
class RouterPolicy:
    mode: Mode = "prefer_edge"
    limits: Limits = Limits()
    queue_factor: int = 4  # local queue bound = max_inflight x this, when nothing else can answer
    overflow_factor: int = 4  # with no cloud, a batch or body up to this many times its limit still runs locally

    @classmethod
    def from_config(cls, config: AgentConfig) -> RouterPolicy:
        return cls(mode=config.mode, limits=config.limits)

    @property
    def queue_limit(self) -> int:
        return max(1, self.limits.max_inflight) * max(1, self.queue_factor)

    @property
    def hard_payload_bytes(self) -> int:
        """The largest body this device ever parses itself; beyond it a body is only forwarded."""
        return max(1, self.limits.max_payload_bytes) * max(1, self.overflow_factor)

    @property
    def hard_batch(self) -> int:
        """The largest batch this device ever runs, even with the cloud down."""
        return max(1, self.limits.max_batch) * max(1, self.overflow_factor)


@dataclass(frozen=True)
class Decision:
    route: Route
    # Empty when the request simply runs where the mode wants it.  On an "edge" route it is
    # the degraded state: the request wanted the cloud (a soft reason, or prefer_cloud) and runs
    # here because the cloud cannot answer; it says both, e.g. "latency_budget,cloud_circuit_open",
    # and the answer carries it (x-bentoedge-degraded).
    reason: str = ""

    @property
    def forwarded(self) -> bool:
        return self.route == "cloud"


def predicted_wait_ms(device: DeviceState) -> float:
    """Expected time until this request finishes locally: queue rounds x recent latency."""
    rounds = device.inflight // max(1, device.workers) + 1
    return device.ewma_latency_ms * rounds


def local_reason(request: RequestFacts, device: DeviceState, limits: Limits) -> str:
    """The first reason this device should not answer the request itself, or ""."""
    if not device.model_active:
        return NO_MODEL
    if not device.has_edge_artifact:
        return NO_EDGE_ARTIFACT
    if request.local_failed:
        return LOCAL_ERROR
    if not request.shape_ok:
        return SHAPE_LIMIT
    if request.payload_bytes > limits.max_payload_bytes:
        return PAYLOAD_LIMIT
    if request.batch > limits.max_batch:
        return BATCH_LIMIT
    if device.free_memory_mb is not None and device.free_memory_mb < limits.min_free_memory_mb:
        return LOW_MEMORY
    if device.inflight >= limits.max_inflight:
        return OVERLOADED
    # Only a queue is a reason: an idle device runs the request, which also keeps the latency
    # estimate fresh (forwarding everything would freeze a once-high EWMA forever).
    if device.inflight > 0 and predicted_wait_ms(device) > limits.latency_budget_ms:
        return LATENCY_BUDGET
    return ""


def decide(request: RequestFacts, device: DeviceState, policy: RouterPolicy) -> Decision:
    """Route one request; pure, total over its inputs."""
    cloud_problem = device.cloud_problem or CLOUD_NOT_CONFIGURED
    if policy.mode == "edge_only":
        cloud_ok = False
        cloud_problem = EDGE_ONLY
    else:
        cloud_ok = device.cloud_usable
    if policy.mode == "cloud_only":
        return Decision("cloud", CLOUD_ONLY) if cloud_ok else Decision("reject", f"{CLOUD_ONLY},{cloud_problem}")
    if policy.mode == "prefer_cloud" and cloud_ok and not request.local_failed:
        return Decision("cloud", PREFER_CLOUD)
    reason = local_reason(request, device, policy.limits)
    if not reason:
        if policy.mode == "prefer_cloud" and not request.local_failed:
            return Decision("edge", f"{PREFER_CLOUD},{cloud_problem}")  # cloud preferred, cloud down
        return Decision("edge")
    if cloud_ok:
        return Decision("cloud", reason)
    if reason in HARD_REASONS:
        return Decision("reject", f"{reason},{cloud_problem}")
    # Over a limit and no cloud: a little over runs late, far over is refused, so no request
    # can take the device's memory or its interpreters for as long as it likes.
    if request.batch > policy.hard_batch or request.payload_bytes > policy.hard_payload_bytes:
        return Decision("reject", f"{reason},{cloud_problem}")
    # Soft reason and no cloud: answering late beats not answering, up to the queue bound.
    if device.inflight >= policy.queue_limit:
        return Decision("reject", f"{OVERLOADED},{cloud_problem}")
    return Decision("edge", f"{reason},{cloud_problem}")
