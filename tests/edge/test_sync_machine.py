"""The update cycle as data (``edge.sync.machine``): transitions, failure classes, what a
failed stage undoes, when strikes refuse a version, backoff and the one-GET poll.

The recovery is checked two ways: rule by rule over every stage, failure and progress a
cycle can have reached, and end to end by walking whole cycles through a small model of the
shell's effects (pointer, serving model, strikes, failed list) with a failure injected at
any stage, before or after that stage's own bookkeeping, checking what the device is left
with.  The shell (``edge.sync.agent``) only carries out what ``recover`` returns, so these
are the agent's failure guarantees.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bentoedge.bentos.errors import HealthCheckError
from bentoedge.edge.sync import machine
from bentoedge.edge.sync.machine import (
    FULL_REFRESH_S,
    MAX_HEALTH_STRIKES,
    ORDER,
    Outcome,
    Progress,
    Result,
    Stage,
    Verified,
)

FAILURES = (Outcome.TRANSIENT, Outcome.REJECTED, Outcome.DISTRUSTED)
KEY = "tiny:v2"

stages = st.sampled_from(list(Stage))
failures = st.sampled_from(FAILURES)
progresses = st.builds(Progress, candidate=st.sampled_from([None, KEY]), struck=st.booleans(),
                       swapped=st.booleans(), committed=st.booleans())
errors = st.text(max_size=20)


# ---- transitions and classes ---------------------------------------------------------------

def test_cycle_table() -> None:
    stage: Stage | Result = Stage.REFRESH
    seen = []
    while isinstance(stage, Stage):
        seen.append(stage)
        stage = machine.next_stage(stage, Outcome.OK)
    assert stage is Result.UPDATED and seen == list(Stage)
    assert machine.next_stage(Stage.SELECT, Outcome.NOTHING) is Result.UP_TO_DATE
    assert machine.next_stage(Stage.SELECT, Outcome.ROLLED_BACK) is Result.ROLLED_BACK
    for s in Stage:
        assert machine.next_stage(s, Outcome.TRANSIENT) is Result.ERROR
        assert machine.next_stage(s, Outcome.REJECTED) is Result.REFUSED
    with pytest.raises(ValueError):
        machine.next_stage(Stage.DOWNLOAD, Outcome.NOTHING)
    assert not machine.records_failure(Stage.REFRESH, Outcome.REJECTED)
    assert machine.records_failure(Stage.HEALTH, Outcome.REJECTED)
    assert not machine.records_failure(Stage.DOWNLOAD, Outcome.TRANSIENT)


@given(stages, st.sampled_from(list(Outcome)))
def test_every_cycle_ends_in_a_result_and_only_ok_moves_forward(stage: Stage, outcome: Outcome) -> None:
    if (outcome is Outcome.NOTHING and stage not in (Stage.REFRESH, Stage.SELECT)
            or outcome is Outcome.ROLLED_BACK and stage is not Stage.SELECT):
        with pytest.raises(ValueError):
            machine.next_stage(stage, outcome)
        return
    after = machine.next_stage(stage, outcome)
    if outcome is Outcome.OK:
        assert after == (ORDER[ORDER.index(stage) + 1] if stage is not Stage.COMMIT else Result.UPDATED)
    else:
        assert isinstance(after, Result) and after is machine.TERMINAL[outcome] and after is not Result.UPDATED


def test_result_is_the_plain_word() -> None:
    import json

    assert [str(r) for r in Result] == ["updated", "up_to_date", "error", "refused", "rolled_back"]
    assert f"{Result.UP_TO_DATE}" == "up_to_date" and Result.REFUSED == "refused"
    assert json.dumps({"r": Result.ERROR}) == '{"r": "error"}'
    assert [r for r in Result if r.ok] == [Result.UPDATED, Result.UP_TO_DATE, Result.ROLLED_BACK]


# ---- a withdrawn active version ------------------------------------------------------------

versions = st.sampled_from(["v1", "v2", "v3", "v4"])


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([None, "tiny"]), st.one_of(st.none(), versions), st.lists(versions, max_size=3, unique=True),
       st.sets(st.sampled_from([f"{m}:{v}" for m in ("tiny", "other") for v in ("v1", "v2", "v3", "v4")])),
       st.sets(st.sampled_from([f"tiny:{v}" for v in ("v1", "v2", "v3", "v4")])))
def test_a_withdrawn_active_version_rolls_back_to_the_newest_published_previous_one(
        model: str | None, active: str | None, previous: list[str], published: set[str], failed: set[str]) -> None:
    w = machine.withdrawal(model, active, previous, published, failed)
    if model is None or active is None or f"{model}:{active}" in published:
        assert w is None  # nothing active, or still published: not a withdrawal
        return
    assert w is not None and f"{model}:{active} was withdrawn" in w.reason
    allowed = [v for v in previous if v != active and f"{model}:{v}" in published and f"{model}:{v}" not in failed]
    if allowed:
        # The newest previous version the channel still signs and this device never refused.
        assert w.rollback_to == allowed[0] and w.rollback_to in w.reason
    else:
        # Nothing to go back to: keep serving (and say so), never a version withdrawn or refused.
        assert w.rollback_to is None and "still serving" in w.reason


def test_withdrawal_examples() -> None:
    assert machine.withdrawal("tiny", "v2", ["v1"], {"tiny:v1"}, set()) == machine.Withdrawal(
        "v1", "tiny:v2 was withdrawn from the channel: rolled back to tiny:v1")
    assert machine.withdrawal("tiny", "v2", ["v1"], {"tiny:v1", "tiny:v2"}, set()) is None
    assert machine.withdrawal("tiny", "v2", ["v1"], {"tiny:v1"}, {"tiny:v1"}).rollback_to is None  # type: ignore[union-attr]
    assert machine.withdrawal("tiny", "v2", ["v1"], {"other:v1"}, set()).rollback_to is None  # type: ignore[union-attr]
    assert machine.withdrawal("tiny", "v2", [], set(), set()).rollback_to is None  # type: ignore[union-attr]


def test_classify() -> None:
    from tuf.api import exceptions as tx

    from bentoedge.bentos.errors import SignatureError

    assert machine.classify(Stage.REFRESH, tx.ExpiredMetadataError("x")) is Outcome.DISTRUSTED
    assert machine.classify(Stage.REFRESH, tx.DownloadError("x")) is Outcome.TRANSIENT
    # A mirror's bad bytes are refused but never blamed on the signed version.
    assert machine.classify(Stage.DOWNLOAD, tx.LengthOrHashMismatchError("x")) is Outcome.TRANSIENT
    assert machine.classify(Stage.DOWNLOAD, tx.DownloadLengthMismatchError("x")) is Outcome.TRANSIENT
    assert machine.classify(Stage.REFRESH, tx.DownloadLengthMismatchError("x")) is Outcome.DISTRUSTED
    assert machine.classify(Stage.VERIFY, SignatureError("x")) is Outcome.REJECTED
    assert machine.classify(Stage.HEALTH, HealthCheckError("x")) is Outcome.REJECTED
    assert machine.classify(Stage.INSTALL, OSError(28, "No space left on device")) is Outcome.TRANSIENT
    assert machine.classify(Stage.HEALTH, RuntimeError("our bug")) is Outcome.TRANSIENT


# ---- recovery, rule by rule ----------------------------------------------------------------

@settings(max_examples=500, deadline=None)
@given(stages, failures, progresses, errors)
def test_recovery_rules(stage: Stage, outcome: Outcome, done: Progress, error: str) -> None:
    fix = machine.recover(stage, outcome, done, error)
    assert fix.outcome is outcome and fix.result is machine.TERMINAL[outcome] and not fix.result.ok
    assert fix.verb == ("failed" if outcome is Outcome.TRANSIENT else "refused")
    # The reason names the stage and the error; a retried download says it will be retried.
    assert fix.reason.startswith(f"{stage.value}: {error}")
    retry_note = f" ({KEY} is not installed; retrying later)"
    noted = stage is Stage.DOWNLOAD and outcome is Outcome.TRANSIENT and done.candidate is not None
    assert fix.reason == f"{stage.value}: {error}" + (retry_note if noted else "")
    # Only a version's own fault, found once it is being fetched, refuses it for good; never
    # the network, a disk, the mirror's bytes or the channel's metadata, never a committed one.
    past_select = ORDER.index(stage) >= ORDER.index(Stage.DOWNLOAD)
    assert fix.refuse == (outcome is Outcome.REJECTED and past_select and done.candidate is not None
                          and not done.committed)
    # Serving goes back to the replaced model only when the swap happened and the pointer
    # still names the old version.
    assert fix.restore == (done.swapped and not done.committed and stage in (Stage.SWAP, Stage.COMMIT))
    # A strike the agent saw fail is taken back; after the commit the strikes are cleared instead.
    assert fix.unstrike == (done.struck and not done.committed)


@given(stages, st.sampled_from([Outcome.OK, Outcome.NOTHING, Outcome.ROLLED_BACK]), progresses)
def test_recovery_is_only_for_failures(stage: Stage, outcome: Outcome, done: Progress) -> None:
    with pytest.raises(ValueError):
        machine.recover(stage, outcome, done, "x")


@given(st.integers(-3, 3 * MAX_HEALTH_STRIKES))
def test_strikes_refuse_a_version_after_max_deaths(strikes: int) -> None:
    refusal = machine.strike_refusal(KEY, strikes)
    if strikes <= MAX_HEALTH_STRIKES:
        assert refusal is None
    else:
        assert refusal == f"{KEY} took the agent down {strikes - 1} times between its health check and its commit"


@given(st.sampled_from(list(Result)), st.integers(0, 1000))
def test_error_count_resets_on_success_and_counts_failures(result: Result, errors: int) -> None:
    assert machine.errors_after(result, errors) == (0 if result.ok else errors + 1)


# ---- recovery, end to end: whole cycles through a model of the shell -----------------------

@dataclass
class Effects:
    """What the shell's effects leave on a device, reduced to what the machine decides."""

    pointer: str | None  # the persisted active version
    serving: str | None  # what ActiveModel serves
    strikes: int  # against the candidate, on disk
    failed: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Fault:
    stage: Stage
    outcome: Outcome
    late: bool  # after the stage's own bookkeeping (the strike counted, the pointer written)


def run_cycle(dev: Effects, chosen: bool, fault: Fault | None) -> Result:
    """One cycle the way ``SyncAgent.sync_once`` runs it: v2 replaces what serves."""
    old = dev.serving
    done = Progress()
    stage: Stage | Result = Stage.REFRESH
    while isinstance(stage, Stage):
        failure: tuple[Outcome, str] | None = None
        if fault is not None and fault.stage is stage and not fault.late:
            failure = fault.outcome, "early"
        elif stage is Stage.SELECT and not chosen:
            stage = machine.next_stage(stage, Outcome.NOTHING)
            continue
        elif stage is Stage.SELECT:
            done = replace(done, candidate=KEY)
        elif stage is Stage.HEALTH:
            dev.strikes += 1
            refusal = machine.strike_refusal(KEY, dev.strikes)
            if refusal is not None:
                failure = machine.classify(stage, HealthCheckError(refusal)), refusal
            else:
                done = replace(done, struck=True)
        elif stage is Stage.SWAP:
            dev.serving = "v2"
            done = replace(done, swapped=old is not None)
        elif stage is Stage.COMMIT:
            dev.pointer = "v2"
            done = replace(done, committed=True)
            if not (fault is not None and fault.stage is stage and fault.late):
                dev.strikes = 0
        if failure is None and fault is not None and fault.stage is stage and fault.late:
            failure = fault.outcome, "late"
        if failure is None:
            stage = machine.next_stage(stage, Outcome.OK)
            continue
        fix = machine.recover(stage, failure[0], done, failure[1])
        if fix.refuse:
            dev.failed.add(KEY)
        if fix.restore:
            dev.serving = old
        if fix.unstrike:
            dev.strikes = max(0, dev.strikes - 1)
        stage = fix.result
    return stage


faults = st.one_of(st.none(), st.builds(Fault, stages, failures, st.booleans()))


@settings(max_examples=800, deadline=None)
@given(st.booleans(), st.integers(0, MAX_HEALTH_STRIKES), st.booleans(), faults)
def test_a_cycle_never_leaves_serving_and_pointer_apart_nor_blames_a_version_wrongly(
        serving_before: bool, prior_strikes: int, chosen: bool, fault: Fault | None) -> None:
    before = "v1" if serving_before else None
    dev = Effects(pointer=before, serving=before, strikes=prior_strikes)
    result = run_cycle(dev, chosen, fault)
    reached_health = chosen and (fault is None or ORDER.index(fault.stage) >= ORDER.index(Stage.HEALTH))
    struck_out = reached_health and prior_strikes + 1 > MAX_HEALTH_STRIKES
    if struck_out and not (fault is not None and fault.stage is Stage.HEALTH and not fault.late):
        # Deaths before the commit refuse the version, whatever would have failed later.
        assert result is Result.REFUSED and dev.failed == {KEY} and dev.strikes == prior_strikes + 1
        assert dev.pointer == dev.serving == before
        return
    if dev.pointer == "v2":  # committed: it serves, nothing refuses or undoes it
        assert dev.serving == "v2" and dev.failed == set()
        assert result is (Result.UPDATED if fault is None else Result.ERROR if fault.outcome is Outcome.TRANSIENT
                          else Result.REFUSED)
        # Cleared at the commit; a failure clearing them leaves this cycle's strike on disk.
        assert dev.strikes == (0 if fault is None or fault.stage is not Stage.COMMIT or not fault.late
                               else prior_strikes + 1)
        return
    # Not committed: the pointer is untouched, serving matches it (a first install has no
    # model to go back to, so the verified one keeps serving until the next cycle commits),
    # a strike the agent saw fail is taken back, and only a version's own fault refuses it.
    assert dev.pointer == before
    assert dev.serving == before or (before is None and dev.serving == "v2")
    assert dev.strikes == prior_strikes
    met = fault is not None and (chosen or ORDER.index(fault.stage) < ORDER.index(Stage.SELECT)
                                 or (fault.stage is Stage.SELECT and not fault.late))
    if fault is None or not met:
        # Nothing chosen: the cycle ended at select, before the fault it would have met.
        assert not chosen and result is Result.UP_TO_DATE and dev.failed == set()
        return
    assert result is machine.TERMINAL[fault.outcome]
    own_fault = (fault.outcome is Outcome.REJECTED and chosen
                 and ORDER.index(fault.stage) >= ORDER.index(Stage.DOWNLOAD))
    assert dev.failed == ({KEY} if own_fault else set())


@given(st.integers(0, 10))
def test_only_deaths_between_health_and_commit_count_towards_a_refusal(deaths: int) -> None:
    # A death leaves its strike (nothing ran the recovery); the next cycle counts one more.
    dev = Effects(pointer="v1", serving="v1", strikes=deaths)
    result = run_cycle(dev, True, None)
    if deaths < MAX_HEALTH_STRIKES:
        assert result is Result.UPDATED and dev.strikes == 0 and dev.failed == set()
    else:
        assert result is Result.REFUSED and dev.failed == {KEY} and dev.serving == "v1"


# ---- backoff and the one-GET poll ----------------------------------------------------------

@given(st.floats(1, 3600), st.integers(0, 50), st.floats(0, 1))
def test_delay_is_jittered_and_backs_off_within_bounds(poll: float, errors: int, rand: float) -> None:
    d = machine.next_delay(poll, errors, rand)
    if errors == 0:
        assert 0.9 * poll - 1e-9 <= d <= 1.1 * poll + 1e-9
    else:
        cap = min(poll, 5.0 * 2 ** min(errors - 1, 20))
        assert cap / 2 - 1e-9 <= d <= cap + 1e-9
        assert d <= machine.next_delay(poll, errors + 1, 1.0) + 1e-9


@given(st.sampled_from([None, *Result]), st.booleans(), st.binary(max_size=8),
       st.binary(max_size=8), st.integers(-10, 5000), st.integers(-10, 5000))
def test_a_poll_stops_after_one_get_only_when_nothing_can_have_changed(
        last: Result | None, refreshed: bool, trusted: bytes, fetched: bytes, age: int, expires_in: int) -> None:
    now = 1_000_000.0
    verified = Verified(trusted, now - age, now + expires_in) if refreshed else None
    quick = machine.timestamp_unchanged(last, verified, fetched, now)
    assert quick == (last in (Result.UPDATED, Result.UP_TO_DATE, Result.ROLLED_BACK) and refreshed and trusted == fetched
                     and expires_in > 0 and 0 <= age < FULL_REFRESH_S)
