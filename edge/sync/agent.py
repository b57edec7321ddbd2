"""The sync agent: pull, verify, health-check and activate signed updates on a device.

The imperative shell around pure parts, split the way python-tuf splits its updater:
``select.choose`` (which version), ``machine`` (where each stage's outcome leads, and what
a failure undoes), ``state.Pointer`` (what is active).  TUF metadata comes through an
ngclient ``Updater`` bootstrapped from the root embedded at provisioning, reached only
through ``tuf_access``; every byte comes through one ``edge.fetchers`` fetcher, and
targets through ``download`` (resumable).  ``edge.wiring`` builds an agent for the CLI,
the bench and the tests.

One cycle: refresh -> select -> download (resumable, into STATE/staging) -> verify (TUF
hashes, manifest signature against ``config.trusted_signers``, compatibility) -> install
(one rename into STATE/versions) -> health (decrypt in memory, run the golden samples) ->
swap (``ActiveModel.swap``: in-flight requests finish on the old model) -> commit (pointer
replaced atomically).  A failure at any stage leaves the previous model serving.  What a
cycle has found and done so far travels between stages as one frozen ``Cycle`` record.

Crash hook (tests only): ``crash(point)`` is called right after each stage (its name), in
the health check once the model is loaded (``health-check``) and mid-download
(``download-chunk``), so crash tests can kill the process there and prove a restart always
finds a whole, valid active version.  No hook by default.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from tuf.ngclient import Updater

from bentoedge.bentos.api_compat import api_major, breaking_changes
from bentoedge.bentos.api_compat import describe as describe_changes
from bentoedge.bentos.channel_layout import METADATA_DIR, TARGETS_DIR, TIMESTAMP_KEY
from bentoedge.bentos.errors import (
    ChannelError,
    ConfigError,
    FormatError,
    HealthCheckError,
    IntegrityError,
    KeyMissingError,
    SignatureError,
)
from bentoedge.bentos.recipients import Keyring
from bentoedge.bentos.sealed import SealedModel
from bentoedge.bentos.signing import key_id
from bentoedge.edge.active import ActiveModel, ServingModel
from bentoedge.edge.config import AgentConfig
from bentoedge.edge.fetchers import CountingFetcher, fetcher_for
from bentoedge.edge.state import DeviceState, Pointer
from bentoedge.edge.sync import download, machine, select, tuf_access
from bentoedge.edge.sync.download import DownloadProgress
from bentoedge.edge.sync.machine import Outcome, Result, Stage

log = logging.getLogger("bentoedge.sync")

Loader = Callable[[SealedModel, Keyring, AgentConfig], ServingModel]
#: ``crash(point)`` at each named point of a cycle (see the module docstring); tests only.
CrashHook = Callable[[str], None]

__all__ = ["CrashHook", "Cycle", "DownloadProgress", "Loader", "SyncAgent", "SyncResult", "describe",
           "load_and_check", "trusted_signers"]


def load_and_check(sealed: SealedModel, keyring: Keyring, config: AgentConfig) -> ServingModel:
    """Decrypt the edge artifact in memory, build interpreters, pass the golden samples."""
    from bentoedge.edge.runtime import health_check, load_edge_model

    model = load_edge_model(sealed, keyring, threads=config.threads or None, workers=config.workers)
    health_check(model, sealed, keyring)
    return model


@dataclass(frozen=True)
class SyncResult:
    """How one cycle ended, for ``agent sync``, the bench and the tests."""

    result: Result
    version: str | None = None  # the version chosen (or active, when up to date)
    reason: str = ""
    stages: Mapping[str, float] = field(default_factory=dict)  # seconds per stage
    requests: int = 0
    bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.result.ok


@dataclass(frozen=True, slots=True)
class Cycle:
    """What one sync cycle has found and done so far.  Each stage returns a new record
    instead of writing into a shared dict, so what a stage needs is named here and the
    recovery after a failure sees exactly what had happened (``progress``)."""

    updater: Updater | None = None  # refreshed: the metadata this cycle trusts
    candidate: select.Candidate | None = None  # the version select chose
    active_version: str | None = None  # serving when select ran (reported when up to date)
    model: ServingModel | None = None  # the candidate, loaded and health-checked
    replaced: ServingModel | None = None  # what served before the swap
    struck: bool = False  # the health stage counted a strike against the candidate
    committed: bool = False  # the pointer names the candidate

    @property
    def progress(self) -> machine.Progress:
        return machine.Progress(candidate=self.candidate.key if self.candidate is not None else None,
                                struck=self.struck, swapped=self.replaced is not None,
                                committed=self.committed)


def describe(exc: BaseException) -> str:
    """The error and what caused it: ngclient wraps a transport failure as "Failed to
    download URL", and the reason (a refused certificate, a reset) is only in the cause."""
    text = f"{type(exc).__name__}: {exc}"
    cause, depth = exc.__cause__, 0
    while cause is not None and depth < 3:
        if str(cause) and str(cause) not in text:
            text += f" ({type(cause).__name__}: {cause})"
        cause, depth = cause.__cause__, depth + 1
    return text


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def trusted_signers(config: AgentConfig) -> dict[str, bytes]:
    """The configured model signers' raw Ed25519 keys by key id."""
    out = {}
    for hexkey in config.trusted_signers:
        try:
            raw = bytes.fromhex(hexkey)
        except ValueError:
            raise ConfigError(f"trusted_signers entry {hexkey!r} is not hex; re-run 'agent init --signer'") from None
        out[key_id(raw)] = raw
    return out


class SyncAgent:
    """One device's update agent over its state folder (holds the folder's lock).

    ``fetcher`` and ``state`` default to the ones ``config`` names; ``edge.wiring.wire``
    passes them explicitly.  ``clock`` is the wall clock, as TUF's expiry checks use it."""

    def __init__(self, config: AgentConfig, active: ActiveModel, *, loader: Loader = load_and_check,
                 fetcher: CountingFetcher | None = None, state: DeviceState | None = None,
                 rand: Callable[[], float] = random.random, clock: Callable[[], float] = time.time,
                 progress: DownloadProgress | None = None, crash: CrashHook | None = None) -> None:
        self.config = config
        self.active = active
        self.loader = loader
        self.state = state if state is not None else DeviceState(config.state_dir)
        self.fetcher = fetcher if fetcher is not None else fetcher_for(config.channel)
        self.rand = rand
        self.clock = clock
        self.progress = progress
        self.crash = crash
        self._lock = threading.Lock()
        self.state.lock()
        self._keyring: Keyring | None = None
        self._verified: machine.Verified | None = None  # from this process's last full refresh
        self._status: dict[str, Any] = {
            "device_id": config.device_id, "device_class": config.device_class, "channel": config.channel,
            "active": None, "previous": [], "last_check": None, "last_result": None, "last_error": None,
            "last_update": None, "consecutive_errors": 0, "failed": self.state.failed(),
            "last_reason": None, "cycles": 0, "active_since": None,
        }

    def close(self) -> None:
        self.state.unlock()

    def __enter__(self) -> SyncAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._status)

    def _set_status(self, **changes: Any) -> None:
        with self._lock:
            self._status.update(changes)
            self._status["failed"] = self.state.failed()
            model = self.active.get()
            p = self.state.pointer()
            self._status["active"] = ({"model": model.name, "version": model.version,
                                       "release": model.manifest.release} if model is not None else None)
            self._status["previous"] = list(p.previous)
            self._status["active_since"] = self._active_since(p)
            snapshot = dict(self._status)
        try:
            self.state.write_status(snapshot)
        except OSError as exc:  # a full disk must not stop serving; the in-memory status still says it
            log.warning("cannot write %s: %s", self.state.status_file, exc)

    def _active_since(self, p: Pointer) -> float | None:
        """When the version now active became so (Unix seconds): the pointer file is written
        only when the active version changes, so its modification time says it, across restarts.
        A rollout's soak counts from here."""
        if p.active is None:
            return None
        try:
            return round(self.state.pointer_file.stat().st_mtime, 3)
        except OSError:
            return None

    def _last_result(self) -> Result | None:
        last = self._status.get("last_result")
        return Result(last) if last is not None else None

    # ---- keys and TUF ------------------------------------------------------------------------

    def keyring(self) -> Keyring:
        if self._keyring is None:
            try:
                key = serialization.load_pem_private_key(self.state.key_file.read_bytes(), password=None)
            except FileNotFoundError:
                raise KeyMissingError(f"no device key at {self.state.key_file}; run 'bentoedge agent init'") from None
            if not isinstance(key, X25519PrivateKey):
                raise KeyMissingError(f"{self.state.key_file} is not an X25519 private key")
            self._keyring = Keyring().add_x25519(key)
        return self._keyring

    def _check_enrolled(self, sealed: SealedModel) -> None:
        """A version with no edge artifact wrapped for this device's key means the device was
        not enrolled when it was published: say that and the fix, not "cannot unwrap"."""
        mine = set(self.keyring().x25519)
        wraps = sealed.wraps()
        edge = [a.id for a in sealed.manifest.artifacts if a.target == "edge"]
        if edge and not any(w.get("type") == "x25519" and w.get("keyid") in mine
                            for i in edge for w in wraps.get(i, [])):
            c = self.config
            raise KeyMissingError(
                f"this device ({c.device_id}) is not enrolled for {sealed.manifest.tag}: on the publisher run "
                f"'bentoedge channel enroll {c.device_id} {self.state.pub_file} --identity {self.state.identity_pub_file} "
                f"--channel {c.channel}', "
                f"then publish {sealed.manifest.tag} again")

    def _updater(self) -> Updater:
        try:
            bootstrap = self.state.root_file.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"no trusted channel root at {self.state.root_file}; run 'bentoedge agent init'") from None
        base = self.config.channel.rstrip("/")
        self.state.ensure()
        return tuf_access.open_updater(self.state.tuf, f"{base}/{METADATA_DIR}/", f"{base}/{TARGETS_DIR}/", self.fetcher,
                                       bootstrap)

    def _crash(self, point: str) -> None:
        if self.crash is not None:
            self.crash(point)

    # ---- start-up with rollback ---------------------------------------------------------------

    def _open_verified(self, version: str, expect: select.Candidate | None = None) -> SealedModel:
        return self._checked(SealedModel.open(self.state.version_dir(version)), expect)

    def _checked(self, sealed: SealedModel, expect: select.Candidate | None) -> SealedModel:
        """Signature by a trusted model signer, edge hashes, and agreement with the channel."""
        trusted = trusted_signers(self.config)
        if not trusted:
            raise ConfigError("no trusted model signers are configured; re-run 'bentoedge agent init --signer'")
        sealed.verify(trusted, target="edge")
        m = sealed.manifest
        if expect is not None and (m.name, m.version, m.release) != (expect.model, expect.version, expect.release):
            raise FormatError(f"the manifest says {m.tag} release {m.release}, the channel said "
                              f"{expect.key} release {expect.release}: refusing the mix")
        if not m.models("edge"):
            raise FormatError(f"{m.tag} has no edge artifact for this device")
        return sealed

    def start_up(self) -> None:
        """Serve the active version from disk; fall back to the previous one if it fails."""
        p = self.state.pointer()
        for i, version in enumerate(p.versions):
            try:
                sealed = self._open_verified(version)
                model = self.loader(sealed, self.keyring(), self.config)
            except (IntegrityError, FormatError, SignatureError, HealthCheckError) as exc:
                key = f"{p.model}:{version}"  # the version itself is bad: never again
                log.error("installed version %s failed its checks at start-up: %s", key, exc)
                self.state.record_failure(key, f"start-up: {exc}")
                continue
            except Exception as exc:  # our keys, config or memory: keep the versions, say why, serve none
                log.error("cannot load %s:%s at start-up: %s", p.model, version, exc)
                self._set_status(last_error=f"start-up: {exc}")
                return
            self.active.swap(model)
            if i > 0:
                self.state.set_pointer(Pointer(p.model, version, p.versions[i + 1:]))
                log.warning("rolled back to %s:%s", p.model, version)
                self._set_status(last_error=f"rolled back to {version}: {p.active} failed its health check")
            else:
                self._set_status()
            self.state.prune()
            return
        if p.versions:
            self.state.set_pointer(Pointer(p.model, None, ()))
        self._set_status(last_error="no installed version passed its checks" if p.versions else None)

    # ---- one update cycle --------------------------------------------------------------------

    def sync_once(self) -> SyncResult:
        """Run one cycle; never raises for an update failure (it is recorded instead)."""
        req0, bytes0 = self.fetcher.requests, self.fetcher.bytes
        timings: dict[str, float] = {}
        cycle = Cycle()
        stage: Stage | Result = Stage.REFRESH
        reason = ""
        while isinstance(stage, Stage):
            t0 = time.perf_counter()
            try:
                # Three steps so that a failure mid-stage still leaves in ``cycle`` what the
                # recovery must undo (a counted strike) or must not (a written pointer).
                cycle = self._before(stage, cycle)
                outcome, reason, cycle = self._run(stage, cycle)
                self._after(stage, cycle)
            except Exception as exc:  # every failure is classified, logged and recorded
                outcome = machine.classify(stage, exc)
                fix = machine.recover(stage, outcome, cycle.progress, describe(exc))
                reason = fix.reason
                self._recover(fix, cycle)
                log.error("update %s at %s: %s", fix.verb, stage.value, reason)
            timings[stage.value] = time.perf_counter() - t0
            self._crash(stage.value)
            stage = machine.next_stage(stage, outcome)
        chosen = cycle.candidate
        result = SyncResult(stage, chosen.version if chosen else cycle.active_version, reason, timings,
                            self.fetcher.requests - req0, self.fetcher.bytes - bytes0)
        self._set_status(last_check=_now(), last_result=stage.value, last_reason=reason,
                         cycles=self._status["cycles"] + 1,
                         last_error=None if result.ok else reason,
                         consecutive_errors=machine.errors_after(stage, self._status["consecutive_errors"]),
                         **({"last_update": _now()} if stage in (Result.UPDATED, Result.ROLLED_BACK) else {}))
        if cycle.replaced is not None:
            # The old model's last reference here goes now, so its buffers are free (once any
            # request still on it ends) and the heap can hand their pages back to the OS.
            from bentoedge.edge.runtime import release_freed_memory

            cycle = Cycle()
            release_freed_memory()
        return result

    def _recover(self, fix: machine.Recovery, cycle: Cycle) -> None:
        """Carry out what ``machine.recover`` decided."""
        cand = cycle.candidate
        if fix.refuse and cand is not None:
            self.state.record_failure(cand.key, fix.reason)
            self.state.discard(cand.version)
        if fix.restore:
            self.active.swap(cycle.replaced)
        if fix.unstrike and cand is not None:
            try:
                self.state.unstrike(cand.key)
            except OSError as exc:  # the failure being handled matters more than the count
                log.warning("cannot update %s: %s", self.state.strikes_file, exc)

    def _before(self, stage: Stage, cycle: Cycle) -> Cycle:
        """What a stage records before its work, for the recovery to take back if it fails."""
        if stage is Stage.HEALTH and cycle.candidate is not None:
            # Counted before the check runs; taken back when the check (or the swap and commit
            # after it) fails in a way the agent saw, and cleared at commit.  So only an agent
            # killed between here and the commit (by the new model, say) leaves a strike.
            key = cycle.candidate.key
            refusal = machine.strike_refusal(key, self.state.strike(key))
            if refusal is not None:
                raise HealthCheckError(refusal)
            return replace(cycle, struck=True)
        return cycle

    def _run(self, stage: Stage, cycle: Cycle) -> tuple[Outcome, str, Cycle]:
        if stage is Stage.REFRESH:
            if self._nothing_new():
                return Outcome.NOTHING, "up to date (the channel's timestamp is unchanged)", cycle
            self._verified = None
            fresh = self._updater()
            fresh.refresh()
            self._verified = self._what_refresh_verified(fresh)
            return Outcome.OK, "refreshed", replace(cycle, updater=fresh)
        if stage is Stage.SELECT:
            return self._select(cycle)
        cand, updater = cycle.candidate, cycle.updater
        if cand is None or updater is None:
            raise AssertionError(f"{stage.value} runs only after refresh and select chose a version")
        if stage is Stage.DOWNLOAD:
            self._download_all(updater, cand)
            return Outcome.OK, "downloaded", cycle
        if stage is Stage.VERIFY:
            self._verify_staged(cand)
            return Outcome.OK, "verified", cycle
        if stage is Stage.INSTALL:
            self.state.install(cand.version)
            return Outcome.OK, "installed", cycle
        if stage is Stage.HEALTH:
            sealed = self._open_verified(cand.version, cand)
            self._check_enrolled(sealed)
            model = self.loader(sealed, self.keyring(), self.config)
            self._crash("health-check")  # tests: a model that kills the agent mid-check
            return Outcome.OK, "healthy", replace(cycle, model=model)
        if stage is Stage.SWAP:
            return Outcome.OK, "swapped", replace(cycle, replaced=self.active.swap(cycle.model))
        if stage is Stage.COMMIT:
            self.state.set_pointer(self.state.pointer().activated(cand.model, cand.version))
            return Outcome.OK, f"now serving {cand.key} release {cand.release}", replace(cycle, committed=True)
        raise AssertionError(stage)

    def _after(self, stage: Stage, cycle: Cycle) -> None:
        """Bookkeeping once a stage's effect is durable: after the commit, the strikes go."""
        if stage is Stage.COMMIT and cycle.candidate is not None:
            self.state.clear_strikes(cycle.candidate.key)
            try:
                self.state.prune()
            except OSError as exc:  # old versions left on disk cost space, not correctness
                log.warning("could not prune old versions: %s", exc)
            log.info("now serving %s release %d", cycle.candidate.key, cycle.candidate.release)

    def _nothing_new(self) -> bool:
        """One small GET decides a poll with nothing new (see machine.timestamp_unchanged)."""
        if self._verified is None:
            return False
        url = f"{self.config.channel.rstrip('/')}/{TIMESTAMP_KEY}"
        fetched = self.fetcher.download_bytes(url, tuf_access.TIMESTAMP_MAX_LENGTH)
        return machine.timestamp_unchanged(self._last_result(), self._verified, fetched, self.clock())

    def _what_refresh_verified(self, updater: Updater) -> machine.Verified | None:
        """The timestamp bytes ngclient just verified and stored, and the earliest expiry of
        the metadata it now trusts; kept in memory, never trusted from disk later."""
        try:
            timestamp = (self.state.tuf / "timestamp.json").read_bytes()
        except OSError:  # the refresh itself succeeded: the next poll simply runs in full
            return None
        if not tuf_access.is_trusted_timestamp(updater, timestamp):
            return None
        return machine.Verified(timestamp, self.clock(), tuf_access.earliest_expiry(updater))

    def _select(self, cycle: Cycle) -> tuple[Outcome, str, Cycle]:
        if cycle.updater is None:
            raise AssertionError("select runs only after a refresh")
        cands, skipped = select.candidates_from_targets(tuf_access.trusted_targets(cycle.updater))
        for line in skipped:
            log.warning("skipping %s", line)
        p = self.state.pointer()
        current = self.active.get()
        device = select.Device(
            device_id=self.config.device_id, device_class=self.config.device_class,
            agent_version=self.config.agent_version, model=self.config.model,
            active_model=current.name if current else p.model,
            active_release=current.manifest.release if current else None,
            failed=frozenset(self.state.failed()))
        cycle = replace(cycle, active_version=current.version if current else None)
        choice = select.choose(cands, device)
        if choice.candidate is None:
            gone = machine.withdrawal(current.name if current else None, current.version if current else None,
                                      p.previous if current and p.model == current.name else (),
                                      {c.key for c in cands}, self.state.failed())
            if gone is None:
                return Outcome.NOTHING, choice.reason, cycle
            if gone.rollback_to is None:
                log.warning("%s", gone.reason)
                return Outcome.NOTHING, gone.reason, cycle
            return self._roll_back(current.name if current else "", gone.rollback_to, gone.reason, cycle)
        log.info("update available: %s", choice.reason)
        return Outcome.OK, choice.reason, replace(cycle, candidate=choice.candidate)

    def _roll_back(self, model: str, version: str, reason: str, cycle: Cycle) -> tuple[Outcome, str, Cycle]:
        """Serve the installed ``version`` again because the active one was withdrawn: the
        start-up rollback's checks (signature, hashes, golden samples), then the pointer, then
        the swap, so a crash in between restarts on the version the pointer names.  A previous
        version that fails its checks goes on the failed list (as at start-up) and the withdrawn
        one keeps serving; the next poll tries the next previous version, if any."""
        try:
            sealed = self._open_verified(version)
            loaded = self.loader(sealed, self.keyring(), self.config)
        except (IntegrityError, FormatError, SignatureError, HealthCheckError) as exc:
            key = f"{model}:{version}"
            self.state.record_failure(key, f"rollback: {exc}")
            why = (f"{model}:{cycle.active_version} was withdrawn from the channel, but {key} failed its checks "
                   f"({exc}): still serving {cycle.active_version}")
            log.error("%s", why)
            return Outcome.NOTHING, why, cycle
        p = self.state.pointer()
        after = p.previous[p.previous.index(version) + 1:] if version in p.previous else ()
        self.state.set_pointer(Pointer(model, version, after))
        replaced = self.active.swap(loaded)
        try:
            self.state.prune()
        except OSError as exc:  # the withdrawn version's files cost space, not correctness
            log.warning("could not prune old versions: %s", exc)
        log.warning("%s", reason)
        return Outcome.ROLLED_BACK, reason, replace(cycle, replaced=replaced, active_version=version)

    def _download_all(self, updater: Updater, cand: select.Candidate) -> None:
        rels = cand.relative_files()  # refuses a file outside the version folder, or a record lacking one
        staging = self.state.staging_dir(cand.version)
        self.state.restage(cand.version)  # installed by a cycle that ended before its commit
        self.state.prune(keep_staging=cand.version)  # an abandoned download of another version
        targets_url = f"{self.config.channel.rstrip('/')}/{TARGETS_DIR}/"
        checkpoint = (lambda: self._crash("download-chunk")) if self.crash is not None else None
        for path, rel in zip(cand.files, rels, strict=True):
            info = updater.get_targetinfo(path)
            if info is None:
                raise ChannelError(f"{path} is listed by {cand.key} but not signed in the targets metadata")
            download.fetch_target(self.fetcher, download.target_url(targets_url, info), info, staging / rel,
                                  progress=self.progress, checkpoint=checkpoint)

    def _verify_staged(self, cand: select.Candidate) -> None:
        staged = self.state.staging_dir(cand.version)
        m = self._checked(SealedModel.open(staged), cand).manifest
        golden = (m.golden or {}).get("edge")
        needed = {a.file for a in m.artifacts if a.target == "edge" and (a.is_model or a.id == golden)}
        missing = [f for f in sorted(needed) if not (staged / f).exists()]
        if missing:
            raise FormatError(f"{m.tag} is missing {', '.join(missing)} on the channel")
        current = self.active.get()
        if current is not None and not cand.breaking and api_major(m) <= api_major(current.manifest):
            # Clients of the running endpoint must not see its API change under them, unless
            # the publisher declared it: a higher API major in the signed manifest (build
            # --breaking), or the channel's signed release record (publish --breaking).
            changes = breaking_changes(current.manifest.signature, m.signature)
            if changes:
                raise FormatError(f"{m.tag} changes the API of the running {current.manifest.tag} "
                                  f"({describe_changes(changes)}) and the channel does not mark it breaking")

    # ---- the loop ------------------------------------------------------------------------------

    def run_forever(self, stop: threading.Event, wake: threading.Event | None = None) -> None:
        """Poll until ``stop`` is set: jitter when healthy, exponential backoff after errors.
        Setting ``wake`` (``agent sync --now`` sends SIGUSR1, which sets it) ends the wait at
        once, so a publish need not wait out the poll period; whoever sets ``stop`` sets it too."""
        woken = wake if wake is not None else stop
        while not stop.is_set():
            try:
                result = self.sync_once()
            except Exception as exc:  # configuration gone bad (keys, root): keep serving, keep trying
                log.exception("sync cycle crashed: %s", exc)
                self._set_status(last_check=_now(), last_result=Result.ERROR.value, last_error=str(exc),
                                 last_reason=str(exc), cycles=self._status["cycles"] + 1,
                                 consecutive_errors=machine.errors_after(Result.ERROR,
                                                                         self._status["consecutive_errors"]))
            else:
                log.debug("sync: %s %s", result.result, result.reason)
            delay = machine.next_delay(self.config.poll_seconds, self._status["consecutive_errors"], self.rand())
            if woken.wait(delay) and wake is not None and not stop.is_set():
                wake.clear()
                log.info("sync: woken up to check now")
