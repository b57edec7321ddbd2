"""The rollout controller: a version published in waves that advance or abort from reports alone.

Pure: ``decide(state, view, now) -> Action`` and the transitions that record what the shell
did (``begin``, ``confirm_publish``, ``confirm_abort``); ``observe`` turns the devices'
latest reports into the ``WaveView`` the decision reads.  The shell (``cloud.fleet.cli``)
loads the state from the fleet store, decides, records the intent (a new ``revision``),
acts on the channel, records the outcome.

Phases:

    pending -> publishing(w) -> soaking(w) -> publishing(w+1) -> ... -> soaking(last) -> done
    any of them -> aborting -> aborted            (aborting: the withdraw is not confirmed yet)

- A wave is *published* once: ``publishing`` records the intent before the channel is
  touched, and until the shell confirms it every step answers the same ``publish`` of the
  same wave (publishing a version again with the same rollout rewrites the same record, so a
  crash between the two writes repeats nothing harmful); ``soaking`` never publishes it again.
- Abort is terminal: ``aborting`` answers ``abort`` until the withdraw is confirmed, and
  ``aborted`` answers ``aborted`` forever.

Which devices a wave holds, and what counts as failure (``verdict``): a device *touched* the
version when its report names it active, refused (its failed list: a failed health check, an
API the device refused, or ``MAX_STRIKES`` agent deaths in the health check, which the agent
turns into a refusal) or struck.  It *failed* when it refused the version, died in its
health check ``MAX_STRIKES`` times (a crash loop), runs it with a failed health check, or runs
it with a local error rate above ``max_error_rate`` over at least ``min_requests`` requests.
It is *healthy* when it runs the version with a passed health check in a report sent at least
``soak_s`` after the version became active on it.  Failure share = failed / touched.

The rules, each checked in this order at every step of a soaking wave:

1. Abort when at least ``need`` devices touched the version and the failure share is over
   ``max_failure_rate`` (``need`` = min(``min_devices``, the wave's expected devices)).
2. Wait until ``soak_s`` has passed since the wave was published.
3. Advance when at least ``wave_need`` of the devices this wave added are healthy (the last
   wave: done).  The wave's own devices are those whose cohort is at or above the previous
   wave's percentage, so devices of earlier waves, long healthy, do not vouch for a wave whose
   devices have not soaked yet; ``wave_need`` = min(``min_devices``, the live devices the wave
   added).
4. *Quiet devices must not stall it*: a device is quiet when its latest report is older than
   ``quiet_after_s``, and a quiet device that never touched the version is not expected, so
   ``need`` and ``wave_need`` shrink with it.  A wave that adds no live device advances after its soak, as long
   as some device of the model reports at all (an empty or wrong fleet store is no evidence:
   it waits, then aborts at the timeout).  And at ``wave_timeout_s`` after its publication a wave decides on what it has: abort when
   the failure share is over the threshold or no device reported healthy, advance otherwise.
   So no wave waits longer than its timeout for devices that went silent or never poll.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from bentoedge.bentos.channel_layout import valid_name
from bentoedge.bentos.errors import FormatError, UsageError
from bentoedge.bentos.fleet_report import Report
from bentoedge.edge.sync.select import cohort as device_cohort

FORMAT = "bentoedge.rollout/1"
#: Agent deaths in one version's health check that make a crash loop (the agent's own bound).
MAX_STRIKES = 3
#: Events kept in a state's log.
MAX_EVENTS = 64
PHASES = ("pending", "publishing", "soaking", "aborting", "aborted", "done")
TERMINAL = ("aborted", "done")


@dataclass(frozen=True)
class Plan:
    model: str
    version: str
    waves: tuple[int, ...] = (1, 10, 50, 100)  # rollout percentages, increasing, ending at 100
    soak_s: float = 1800.0
    max_failure_rate: float = 0.05
    min_devices: int = 20
    max_error_rate: float = 0.05  # a device's local error share above which it counts as failed
    min_requests: int = 20  # ... judged only after this many local requests on the version
    quiet_after_s: float = 3600.0
    wave_timeout_s: float = 0.0  # 0: four soaks (at least an hour)

    def __post_init__(self) -> None:
        if not valid_name(self.model) or not valid_name(self.version):
            raise UsageError(f"rollout of {self.model!r}:{self.version!r}: not a valid model name and version")
        w = self.waves
        if not w or any(not isinstance(p, int) or isinstance(p, bool) or not 1 <= p <= 100 for p in w):
            raise UsageError(f"--waves {_waves(w)}: give whole percentages from 1 to 100")
        if any(b <= a for a, b in zip(w, w[1:], strict=False)) or w[-1] != 100:
            raise UsageError(f"--waves {_waves(w)}: percentages must increase and end at 100")
        if not 0 <= self.max_failure_rate < 1 or not 0 <= self.max_error_rate <= 1:
            raise UsageError("--max-failure-rate and the error-rate bound are shares from 0 to 1 (below 1)")
        if not isinstance(self.min_devices, int) or self.min_devices < 1 or self.min_requests < 0:
            raise UsageError(f"--min-devices {self.min_devices}: give a whole number of at least 1")
        for name in ("soak_s", "quiet_after_s", "wave_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise UsageError(f"rollout {name} must be a number of seconds >= 0, not {value!r}")
        if self.quiet_after_s <= 0:
            raise UsageError("rollout quiet_after_s must be above 0 seconds")

    @property
    def timeout_s(self) -> float:
        """How long a wave waits at most before it decides on what it has."""
        if self.wave_timeout_s:
            return max(self.wave_timeout_s, self.soak_s)
        return max(4 * self.soak_s, self.soak_s + 3600.0)

    @property
    def tag(self) -> str:
        return f"{self.model}:{self.version}"


@dataclass(frozen=True)
class State:
    plan: Plan
    phase: str = "pending"
    wave: int = -1  # index of the last wave whose publication was confirmed
    target: int | None = None  # the wave being published (phase publishing)
    started_at: float | None = None  # when wave ``wave`` was published
    reason: str = ""  # why it aborted or finished
    revision: int = 0  # 0: not stored yet; each stored change adds one
    events: tuple[tuple[float, str], ...] = ()

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL

    @property
    def rollout(self) -> int:
        """The percentage the channel offers now (0 before the first confirmed wave)."""
        return self.plan.waves[self.wave] if self.wave >= 0 else 0

    @property
    def previous_rollout(self) -> int:
        """The percentage of the wave before the current one (0 for the first)."""
        return self.plan.waves[self.wave - 1] if self.wave >= 1 else 0

    def to_dict(self) -> dict[str, Any]:
        p = self.plan
        return {"format": FORMAT, "revision": self.revision, "phase": self.phase, "wave": self.wave,
                "target": self.target, "started_at": self.started_at, "reason": self.reason,
                "events": [[t, e] for t, e in self.events],
                "plan": {"model": p.model, "version": p.version, "waves": list(p.waves), "soak_s": p.soak_s,
                         "max_failure_rate": p.max_failure_rate, "min_devices": p.min_devices,
                         "max_error_rate": p.max_error_rate, "min_requests": p.min_requests,
                         "quiet_after_s": p.quiet_after_s, "wave_timeout_s": p.wave_timeout_s}}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> State:
        try:
            if doc["format"] != FORMAT:
                raise FormatError(f"rollout state format {doc['format']!r} is not {FORMAT}")
            p = doc["plan"]
            plan = Plan(model=p["model"], version=p["version"], waves=tuple(p["waves"]), soak_s=p["soak_s"],
                        max_failure_rate=p["max_failure_rate"], min_devices=p["min_devices"],
                        max_error_rate=p["max_error_rate"], min_requests=p["min_requests"],
                        quiet_after_s=p["quiet_after_s"], wave_timeout_s=p["wave_timeout_s"])
            state = cls(plan=plan, phase=doc["phase"], wave=doc["wave"], target=doc["target"],
                        started_at=doc["started_at"], reason=doc["reason"], revision=doc["revision"],
                        events=tuple((float(t), str(e)) for t, e in doc["events"]))
        except (KeyError, TypeError, ValueError, UsageError) as exc:
            raise FormatError(f"malformed rollout state: {exc}") from None
        if state.phase not in PHASES or not -1 <= state.wave < len(plan.waves):
            raise FormatError(f"malformed rollout state: phase {state.phase!r}, wave {state.wave}")
        if state.phase == "publishing" and state.target is None:
            raise FormatError("malformed rollout state: publishing without a target wave")
        if state.phase == "soaking" and (state.wave < 0 or state.started_at is None):
            raise FormatError("malformed rollout state: soaking without a published wave")
        return state


@dataclass(frozen=True)
class Action:
    kind: str  # publish | wait | abort | done | aborted
    reason: str = ""
    wave: int | None = None  # publish: the wave's index
    rollout: int | None = None  # publish: its percentage


@dataclass(frozen=True)
class WaveView:
    """The reports of one rollout's version, as the decision reads them."""

    expected: int = 0  # live devices of the model in the wave's cohort, and any that touched the version
    touched: int = 0
    healthy: int = 0
    pending: int = 0
    failed: int = 0
    quiet: int = 0  # devices of the model whose latest report is older than quiet_after_s
    live: int = 0  # devices of the model that are not quiet
    new_expected: int = 0  # of ``expected``, those the wave added (cohort >= the previous wave's %)
    new_healthy: int = 0  # of ``healthy``, those the wave added
    causes: Mapping[str, int] = field(default_factory=dict)

    @property
    def failure_share(self) -> float:
        return self.failed / self.touched if self.touched else 0.0


# ---- from reports to a view ------------------------------------------------------------------


def verdict(report: Report, plan: Plan) -> tuple[str, str] | None:
    """('failed', cause) | ('healthy', '') | ('pending', '') for a device that touched the
    plan's version, None for one that did not."""
    v = plan.version
    if report.model != plan.model:
        return None
    if v in report.refused:
        return "failed", "refused"
    if report.strikes.get(v, 0) >= MAX_STRIKES:
        return "failed", "crash_loop"
    if report.active == v:
        if report.health.result == "failed":
            return "failed", "health_check"
        req = report.requests
        if req.local >= plan.min_requests and req.error_rate > plan.max_error_rate:
            return "failed", "error_rate"
        if (report.health.result == "passed" and report.active_since is not None
                and report.sent_at - report.active_since >= plan.soak_s):
            return "healthy", ""
        return "pending", ""
    if report.strikes.get(v, 0) > 0:
        return "pending", ""
    return None


def observe(reports: Iterable[Report], plan: Plan, rollout: int, now: float, previous: int = 0,
            cohort: Callable[[str, str], int] = device_cohort) -> WaveView:
    """Count the devices of ``plan.model`` for a wave at ``rollout`` percent whose previous
    wave was at ``previous`` percent.

    ``cohort`` is the device's selection bucket (``edge.sync.select.cohort``, the code the
    devices run), so the controller expects exactly the devices the channel offers it to.
    """
    expected = touched = healthy = pending = failed = quiet = live_n = new_expected = new_healthy = 0
    causes: dict[str, int] = {}
    for r in reports:
        if r.model != plan.model:
            continue
        live = now - r.sent_at <= plan.quiet_after_s
        quiet += not live
        live_n += live
        v = verdict(r, plan)
        c = cohort(r.device_id, plan.model)
        added = previous <= c < rollout
        if v is None:
            expected += live and c < rollout
            new_expected += live and added
            continue
        expected += 1
        new_expected += added
        touched += 1
        kind, cause = v
        if kind == "failed":
            failed += 1
            causes[cause] = causes.get(cause, 0) + 1
        elif kind == "healthy":
            healthy += 1
            new_healthy += added
        else:
            pending += 1
    return WaveView(expected, touched, healthy, pending, failed, quiet, live_n, new_expected, new_healthy, causes)


# ---- the decision ---------------------------------------------------------------------------


def need(plan: Plan, view: WaveView) -> int:
    """Devices a wave must hear from: ``min_devices``, or fewer when fewer are expected."""
    return min(plan.min_devices, view.expected)


def wave_need(plan: Plan, view: WaveView) -> int:
    """Devices the wave added that must report healthy: ``min_devices``, or fewer when fewer are live."""
    return min(plan.min_devices, view.new_expected)


def decide(state: State, view: WaveView, now: float) -> Action:
    plan = state.plan
    if state.phase == "aborted":
        return Action("aborted", state.reason)
    if state.phase == "aborting":
        return Action("abort", state.reason)
    if state.phase == "done":
        return Action("done", state.reason)
    if state.phase == "pending":
        return _publish(plan, 0, "first wave")
    if state.phase == "publishing":
        assert state.target is not None
        return _publish(plan, state.target, "publication not confirmed yet: the same wave again")
    assert state.started_at is not None
    pct = plan.waves[state.wave]
    label = f"wave {state.wave + 1}/{len(plan.waves)} ({pct}%)"
    n = need(plan, view)
    share = view.failure_share
    over = share > plan.max_failure_rate
    if over and view.touched >= max(1, n):
        return Action("abort", f"{label}: {view.failed} of {view.touched} devices failed {plan.tag} "
                               f"({share:.1%} > {plan.max_failure_rate:.1%}; {_causes(view)})")
    elapsed = now - state.started_at
    if elapsed < plan.soak_s:
        return Action("wait", f"{label}: soaking, {plan.soak_s - elapsed:.0f} s left "
                              f"({view.healthy} healthy, {view.failed} failed of {view.touched})")
    wn = wave_need(plan, view)
    if view.new_expected == 0 and view.live > 0 and not over:
        return _advance(plan, state.wave, f"{label}: the wave added no live device")
    if view.new_healthy >= max(wn, 1) and not over:
        return _advance(plan, state.wave, f"{label}: {view.new_healthy} of its devices healthy for {plan.soak_s:.0f} s")
    if elapsed >= plan.timeout_s:
        if over:
            return Action("abort", f"{label}: at the wave timeout {view.failed} of {view.touched} devices failed "
                                   f"({share:.1%} > {plan.max_failure_rate:.1%}; {_causes(view)})")
        if view.new_healthy == 0:
            return Action("abort", f"{label}: none of its devices reported {plan.tag} healthy within the wave "
                                   f"timeout ({plan.timeout_s:.0f} s; {view.touched} took it)")
        return _advance(plan, state.wave, f"{label}: wave timeout, {view.new_healthy} of its devices healthy "
                                          f"({view.quiet} devices quiet are not waited for)")
    return Action("wait", f"{label}: {view.new_healthy} of {wn} of its devices healthy so far "
                          f"({view.failed} failed, {view.pending} pending, {view.quiet} quiet)")


def _publish(plan: Plan, wave: int, why: str) -> Action:
    return Action("publish", f"wave {wave + 1}/{len(plan.waves)} at {plan.waves[wave]}%: {why}", wave,
                  plan.waves[wave])


def _advance(plan: Plan, wave: int, why: str) -> Action:
    if wave + 1 >= len(plan.waves):
        return Action("done", f"{why}; {plan.tag} reached {plan.waves[-1]}%")
    return _publish(plan, wave + 1, why)


def _causes(view: WaveView) -> str:
    return ", ".join(f"{k} {n}" for k, n in sorted(view.causes.items())) or "no cause"


# ---- transitions ------------------------------------------------------------------------------


def _log(state: State, now: float, event: str) -> tuple[tuple[float, str], ...]:
    return (*state.events, (now, event))[-MAX_EVENTS:]


def start(plan: Plan, now: float) -> State:
    return State(plan=plan, events=((now, f"planned {plan.tag} in waves {_waves(plan.waves)}"),))


def begin(state: State, action: Action, now: float) -> State:
    """The state to store *before* acting on ``action`` (for wait: ``state`` itself)."""
    if action.kind == "wait" or state.terminal and action.kind in ("done", "aborted"):
        return state
    if state.terminal:
        raise UsageError(f"the rollout of {state.plan.tag} is {state.phase}; start a new one")
    nxt = state.revision + 1
    if action.kind == "publish":
        assert action.wave is not None
        if action.wave <= state.wave:
            raise UsageError(f"wave {action.wave + 1} of {state.plan.tag} is published already")
        return replace(state, phase="publishing", target=action.wave, revision=nxt,
                       events=_log(state, now, f"publishing wave {action.wave + 1} ({action.rollout}%)"))
    if action.kind == "abort":
        if state.phase == "aborting":
            return state
        return replace(state, phase="aborting", reason=action.reason, revision=nxt,
                       events=_log(state, now, f"aborting: {action.reason}"))
    if action.kind == "done":
        return replace(state, phase="done", reason=action.reason, revision=nxt,
                       events=_log(state, now, f"done: {action.reason}"))
    raise UsageError(f"unknown rollout action {action.kind!r}")


def confirm_publish(state: State, now: float) -> State:
    """The channel now offers the target wave: it starts soaking."""
    if state.phase != "publishing" or state.target is None:
        raise UsageError(f"the rollout of {state.plan.tag} is not publishing a wave")
    return replace(state, phase="soaking", wave=state.target, target=None, started_at=now,
                   revision=state.revision + 1, events=_log(state, now, f"published wave {state.target + 1}"))


def confirm_abort(state: State, now: float) -> State:
    """The channel no longer offers the version."""
    if state.phase != "aborting":
        raise UsageError(f"the rollout of {state.plan.tag} is not aborting")
    return replace(state, phase="aborted", revision=state.revision + 1, events=_log(state, now, "withdrawn"))


def abort_by_hand(state: State, reason: str, now: float) -> State:
    """``rollout abort``: the operator's abort, from any phase but a terminal one."""
    return begin(state, Action("abort", reason), now)


def _waves(waves: Iterable[Any]) -> str:
    return ",".join(str(w) for w in waves)
