"""The update cycle as data: stages, outcomes, transitions, recovery, and the polling delay.

The agent (``edge.sync.agent``) runs one stage at a time and reports how it went; this
module says where that leads, and, when a stage fails, what the shell must do about it
(``recover``: refuse the version, put the previous model back, take back a health strike)
and when strikes refuse a version (``strike_refusal``).  Nothing here does I/O, so every
decision is checked exhaustively by tests/edge/test_sync_machine.py, and the agent's shell
stays a loop over ``next_stage`` that carries out what ``recover`` says.

    refresh -> select -> download -> verify -> install -> health -> swap -> commit -> updated
                  \\-> up_to_date
                  \\-> rolled_back  the active version was withdrawn from the channel (a rollout's
                                 abort): the previous installed version serves again (``withdrawal``)
    any stage -> error     a transient failure (network, disk): retried after a backoff
    any stage -> refused   the channel or the version is bad: a version-specific refusal
                           is recorded in failed.json and never retried automatically
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import Enum

from tuf.api import exceptions as tuf_exc

from bentoedge.bentos.errors import (
    BentoEdgeError,
    ChannelError,
    ConfigError,
    DecryptionError,
    FormatError,
    HealthCheckError,
    IntegrityError,
    KeyMissingError,
    SignatureError,
    VerificationError,
)


class Stage(str, Enum):
    REFRESH = "refresh"
    SELECT = "select"
    DOWNLOAD = "download"
    VERIFY = "verify"
    INSTALL = "install"
    HEALTH = "health"
    SWAP = "swap"
    COMMIT = "commit"


class Outcome(str, Enum):
    OK = "ok"
    NOTHING = "nothing"  # select found no newer permitted version
    TRANSIENT = "transient"  # network, disk full, a server hiccup: try again later
    REJECTED = "rejected"  # this version is bad: record it, never retry
    DISTRUSTED = "distrusted"  # the channel's metadata is bad (not one version): keep serving
    ROLLED_BACK = "rolled_back"  # select found the active version withdrawn and put the previous one back


class Result(str, Enum):
    """How a sync cycle ended: the one vocabulary for ``SyncResult.result``, status.json's
    ``last_result``, ``agent sync --json`` and the bench.  A ``str`` so it compares and
    serialises as the plain word."""

    UPDATED = "updated"
    UP_TO_DATE = "up_to_date"
    ERROR = "error"
    REFUSED = "refused"
    ROLLED_BACK = "rolled_back"

    def __str__(self) -> str:
        # f-strings and log lines show the word scripts compare against, not "Result.UPDATED".
        return self.value

    @property
    def ok(self) -> bool:
        """Whether the cycle ended well: ``agent sync`` exits 0 and the error count resets."""
        return self in (Result.UPDATED, Result.UP_TO_DATE, Result.ROLLED_BACK)


ORDER = list(Stage)

# Only OK moves forward; the rest end the cycle the same way from every stage.
TERMINAL = {
    Outcome.NOTHING: Result.UP_TO_DATE,
    Outcome.TRANSIENT: Result.ERROR,
    Outcome.REJECTED: Result.REFUSED,
    Outcome.DISTRUSTED: Result.REFUSED,
    Outcome.ROLLED_BACK: Result.ROLLED_BACK,
}


def next_stage(stage: Stage, outcome: Outcome) -> Stage | Result:
    if outcome is Outcome.OK:
        i = ORDER.index(stage)
        return ORDER[i + 1] if i + 1 < len(ORDER) else Result.UPDATED
    if outcome is Outcome.NOTHING and stage not in (Stage.REFRESH, Stage.SELECT):
        raise ValueError(f"only refresh and selection may find nothing to do, not {stage.value}")
    if outcome is Outcome.ROLLED_BACK and stage is not Stage.SELECT:
        raise ValueError(f"only selection finds a withdrawn version to roll back from, not {stage.value}")
    return TERMINAL[outcome]


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """What to do about an active version the channel no longer publishes."""

    rollback_to: str | None  # the installed previous version to serve again; None: keep serving
    reason: str


def withdrawal(model: str | None, active: str | None, previous: Sequence[str], published: Collection[str],
               failed: Collection[str]) -> Withdrawal | None:
    """Whether the active version ``model:active`` was withdrawn, and what then (None: it was not).

    ``published`` holds the ``model:version`` keys the channel's signed targets list now;
    ``previous`` the installed versions the pointer keeps for rollback, newest first.  The
    device goes back to the newest previous version that is still published and has not
    failed here: never to one the channel withdrew as well, nor to one this device refused.
    With none, it keeps serving what it has (the cloud fallback is no better a guess) and
    says so in its status and reports.  Withdrawal is a signed targets change, so only the
    channel's targets key can cause it; an attacker who replays older metadata is stopped by
    TUF before this runs.  Called when select found nothing newer to take: a newer permitted
    version replaces a withdrawn one through the ordinary update instead.
    """
    if model is None or active is None or f"{model}:{active}" in published:
        return None
    gone = f"{model}:{active} was withdrawn from the channel"
    for version in previous:
        key = f"{model}:{version}"
        if version != active and key in published and key not in failed:
            return Withdrawal(version, f"{gone}: rolled back to {key}")
    return Withdrawal(None, f"{gone}, and no installed previous version is still published: still serving it")


#: The longest a device goes on the one-GET shortcut before it runs a full TUF refresh:
#: that refresh is what finds a new root (say, one that revokes a stolen timestamp key),
#: so this bounds how long a frozen but validly signed timestamp can hold a device.
FULL_REFRESH_S = 3600.0


@dataclass(frozen=True, slots=True)
class Verified:
    """What the last full refresh in this process verified: the timestamp's exact bytes,
    when, and the earliest expiry of root, timestamp, snapshot and targets."""

    timestamp: bytes
    at: float  # seconds, time.time()
    expires: float  # seconds, time.time()


def timestamp_unchanged(last_result: Result | None, verified: Verified | None, fetched: bytes,
                        now: float) -> bool:
    """Whether a poll may stop after one GET: the channel's timestamp is byte for byte the one
    this process verified in a full refresh, no metadata it then trusted has expired since, that
    refresh is under ``FULL_REFRESH_S`` old, and the last cycle ended well (after an error the
    full refresh runs, so a failed download is retried).  Every change to the channel (a
    release, a pin, a withdrawal, new keys) comes with a new timestamp."""
    return (last_result is not None and last_result.ok and verified is not None
            and verified.timestamp == fetched and now < verified.expires
            and 0 <= now - verified.at < FULL_REFRESH_S)


def records_failure(stage: Stage, outcome: Outcome) -> bool:
    """Whether the chosen version goes on the failed list."""
    return outcome is Outcome.REJECTED and ORDER.index(stage) >= ORDER.index(Stage.DOWNLOAD)


#: How often the agent may die between one version's health check and its commit (a power
#: cut, or a model that crashes the runtime) before that version goes on the failed list.
#: Only a death counts: a failure the agent sees takes its strike back.
MAX_HEALTH_STRIKES = 3


def strike_refusal(key: str, strikes: int) -> str | None:
    """Why version ``key`` is refused now that the health stage counted ``strikes`` against
    it (this one included), or None to go on with the check.  Each strike but this one is a
    death the agent did not see, so the message counts those."""
    if strikes > MAX_HEALTH_STRIKES:
        return f"{key} took the agent down {strikes - 1} times between its health check and its commit"
    return None


@dataclass(frozen=True, slots=True)
class Progress:
    """What a cycle had done when one of its stages failed: all ``recover`` needs to know."""

    candidate: str | None = None  # the chosen version's key ("model:version"), once select chose
    struck: bool = False  # the health stage counted a strike against it
    swapped: bool = False  # it serves, and the model it replaced can be put back
    committed: bool = False  # the persisted pointer names it


@dataclass(frozen=True, slots=True)
class Recovery:
    """What the shell does about a failed stage, in the order of the fields."""

    outcome: Outcome
    reason: str  # recorded as the cycle's reason, status.json's last_error, and in failed.json
    refuse: bool  # put the candidate on the failed list and delete its files
    restore: bool  # swap the replaced model back in: serving must match the persisted pointer
    unstrike: bool  # take the strike back: the agent saw this failure, it did not die of it

    @property
    def result(self) -> Result:
        return TERMINAL[self.outcome]

    @property
    def verb(self) -> str:
        """For the log line: a transient failure is retried, the rest are refusals."""
        return "failed" if self.outcome is Outcome.TRANSIENT else "refused"


def recover(stage: Stage, outcome: Outcome, done: Progress, error: str) -> Recovery:
    """The undo for a failure at ``stage`` (``outcome`` from ``classify``; ``error`` says what
    went wrong).  A version that is committed is never refused, put back or unstruck: it is
    what the pointer names, so a failure in the commit's bookkeeping (clearing strikes) costs
    a retry, never the version now serving."""
    if outcome in (Outcome.OK, Outcome.NOTHING, Outcome.ROLLED_BACK):
        raise ValueError(f"{outcome.value} is not a failure")
    reason = f"{stage.value}: {error}"
    if stage is Stage.DOWNLOAD and outcome is Outcome.TRANSIENT and done.candidate is not None:
        reason += f" ({done.candidate} is not installed; retrying later)"
    live = not done.committed
    return Recovery(
        outcome=outcome,
        reason=reason,
        refuse=live and done.candidate is not None and records_failure(stage, outcome),
        restore=live and done.swapped and stage in (Stage.SWAP, Stage.COMMIT),
        unstrike=live and done.struck,
    )


def errors_after(result: Result, consecutive_errors: int) -> int:
    """The error count after a cycle: it sets the backoff (``next_delay``)."""
    return 0 if result.ok else consecutive_errors + 1


def classify(stage: Stage, exc: BaseException) -> Outcome:
    """How a failure at ``stage`` ends the cycle."""
    if isinstance(exc, KeyMissingError | ConfigError | DecryptionError):
        return Outcome.TRANSIENT  # this device's keys or config, not the version: retry once fixed
    if stage is Stage.DOWNLOAD and isinstance(
            exc, tuf_exc.LengthOrHashMismatchError | tuf_exc.DownloadLengthMismatchError):
        # Bytes that miss their signed hash or length are refused, but they are the mirror's
        # doing (TUF trusts no mirror), not the signed version's: refusing the version for
        # good would let anyone on the path block an update forever.  Retried with backoff.
        return Outcome.TRANSIENT
    if isinstance(exc, tuf_exc.RepositoryError):
        return Outcome.DISTRUSTED  # bad signature, expired, rolled back, mixed: not any one version
    if isinstance(exc, tuf_exc.DownloadLengthMismatchError):
        return Outcome.DISTRUSTED  # endless metadata
    if isinstance(exc, tuf_exc.DownloadError | OSError | TimeoutError):
        return Outcome.TRANSIENT
    if isinstance(exc, SignatureError | IntegrityError | FormatError | DecryptionError | HealthCheckError
                  | VerificationError | ChannelError):
        return Outcome.REJECTED if stage is not Stage.REFRESH else Outcome.DISTRUSTED
    if isinstance(exc, BentoEdgeError):
        return Outcome.REJECTED
    return Outcome.TRANSIENT  # unknown: do not blacklist a version for our own bug


def next_delay(poll_seconds: float, consecutive_errors: int, rand: float,
               min_backoff: float = 5.0) -> float:
    """Seconds to wait before the next poll.

    ``rand`` in [0, 1) comes from the caller (pure here).  Healthy polls spread over
    ±10 % of ``poll_seconds`` so a fleet does not poll in step; after errors the wait
    doubles from ``min_backoff`` up to ``poll_seconds`` with full jitter in its upper half.
    """
    rand = min(max(rand, 0.0), 1.0)
    if consecutive_errors <= 0:
        return poll_seconds * (0.9 + 0.2 * rand)
    cap = min(poll_seconds, min_backoff * 2 ** min(consecutive_errors - 1, 20))
    return cap * (0.5 + 0.5 * rand)
