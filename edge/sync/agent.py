"""The sync agent: pull, verify, health-check and activate signed updates on a device.

The imperative shell around three pure parts: ``select.choose`` (which version),
``machine`` (what each stage's outcome leads to) and ``state.Pointer`` (what is active).
TUF metadata comes through ``tuf.ngclient.Updater`` bootstrapped from the root embedded
at provisioning; every byte comes through one ``edge.fetchers`` fetcher.

One cycle: refresh -> select -> download (resumable, into STATE/staging) -> verify (TUF
hashes, manifest signature against ``config.trusted_signers``, compatibility) -> install
(one rename into STATE/versions) -> health (decrypt in memory, run the golden samples) ->
swap (``ActiveModel.swap``: in-flight requests finish on the old model) -> commit (pointer
replaced atomically).  A failure at any stage leaves the previous model serving.

Test hook (tests only): ``BENTOEDGE_TEST_CRASH_AT=<stage>`` makes the process SIGKILL
itself right after that stage (or ``download-chunk``: mid-download; ``health-check``:
during the check), so crash tests can
prove a restart always finds a whole, valid active version.
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import Metadata, TargetFile
from tuf.ngclient import Updater, UpdaterConfig

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
from bentoedge.edge.sync import machine, select
from bentoedge.edge.sync.machine import Outcome, Result, Stage

log = logging.getLogger("bentoedge.sync")

Loader = Callable[[SealedModel, Keyring, AgentConfig], ServingModel]
#: ``progress(path, total_bytes, already_have)`` when a target download starts; returns a
#: callback for each chunk's size (``bentoedge agent sync`` draws a bar with it).
DownloadProgress = Callable[[str, int, int], Callable[[int], None]]
CRASH_ENV = "BENTOEDGE_TEST_CRASH_AT"
_FILE = re.compile(r"^(manifest\.json|manifest\.sig|keys\.json|artifacts/[A-Za-z0-9][A-Za-z0-9._-]{0,127})$")


def load_and_check(sealed: SealedModel, keyring: Keyring, config: AgentConfig) -> ServingModel:
    """Decrypt the edge artifact in memory, build interpreters, pass the golden samples."""
    from bentoedge.edge.runtime import health_check, load_edge_model

    model = load_edge_model(sealed, keyring, threads=config.threads or None, workers=config.workers)
    health_check(model, sealed, keyring)
    return model


@dataclass(frozen=True)
class SyncResult:
    result: str  # updated | up_to_date | error | refused
    version: str | None = None  # the version chosen (or active, when up to date)
    reason: str = ""
    stages: Mapping[str, float] = field(default_factory=dict)  # seconds per stage
    requests: int = 0
    bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.result in (Result.UPDATED.value, Result.UP_TO_DATE.value)


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
    out = {}
    for hexkey in config.trusted_signers:
        try:
            raw = bytes.fromhex(hexkey)
        except ValueError:
            raise ConfigError(f"trusted_signers entry {hexkey!r} is not hex; re-run 'agent init --signer'") from None
        out[key_id(raw)] = raw
    return out


class SyncAgent:
    """One device's update agent over its state folder (holds the folder's lock)."""

    def __init__(self, config: AgentConfig, active: ActiveModel, loader: Loader = load_and_check,
                 fetcher: CountingFetcher | None = None, rand: Callable[[], float] = random.random,
                 env: Mapping[str, str] = os.environ, clock: Callable[[], float] = time.time,
                 progress: DownloadProgress | None = None) -> None:
        self.config = config
        self.active = active
        self.loader = loader
        self.state = DeviceState(config.state_dir)
        self.fetcher = fetcher or fetcher_for(config.channel)
        self.rand = rand
        self.env = env
        self.clock = clock  # the wall clock, as TUF's expiry checks use it
        self.progress = progress
        self._lock = threading.Lock()
        self.state.lock()
        self._keyring: Keyring | None = None
        self._verified: machine.Verified | None = None  # from this process's last full refresh
        self._status: dict[str, Any] = {
            "device_id": config.device_id, "device_class": config.device_class, "channel": config.channel,
            "active": None, "previous": [], "last_check": None, "last_result": None, "last_error": None,
            "last_update": None, "consecutive_errors": 0, "failed": self.state.failed(),
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
            snapshot = dict(self._status)
        try:
            self.state.write_status(snapshot)
        except OSError as exc:  # a full disk must not stop serving; the in-memory status still says it
            log.warning("cannot write %s: %s", self.state.status_file, exc)

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

    def _updater(self) -> Updater:
        try:
            bootstrap = self.state.root_file.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"no trusted channel root at {self.state.root_file}; run 'bentoedge agent init'") from None
        base = self.config.channel.rstrip("/")
        self.state.ensure()
        return Updater(str(self.state.tuf), f"{base}/metadata/", None, f"{base}/targets/",
                       fetcher=self.fetcher, config=UpdaterConfig(), bootstrap=bootstrap)

    def _crash_hook(self, point: str) -> None:
        if self.env.get(CRASH_ENV) == point:
            os.kill(os.getpid(), signal.SIGKILL)

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
        ctx: dict[str, Any] = {}
        stage: Stage | Result = Stage.REFRESH
        reason = ""
        while isinstance(stage, Stage):
            t0 = time.perf_counter()
            try:
                outcome, reason = self._run(stage, ctx)
            except Exception as exc:  # every failure is classified, logged and recorded
                outcome, reason = machine.classify(stage, exc), f"{stage.value}: {describe(exc)}"
                if stage is Stage.DOWNLOAD and outcome is Outcome.TRANSIENT and "candidate" in ctx:
                    reason += f" ({ctx['candidate'].key} is not installed; retrying later)"
                if machine.records_failure(stage, outcome) and "candidate" in ctx:
                    cand: select.Candidate = ctx["candidate"]
                    self.state.record_failure(cand.key, reason)
                    self.state.discard(cand.version)
                # Serving must match the persisted pointer: undo the swap unless it was committed.
                if stage in (Stage.SWAP, Stage.COMMIT) and ctx.get("old") is not None and not ctx.get("committed"):
                    self.active.swap(ctx["old"])
                if ctx.pop("struck", False) and not ctx.get("committed"):
                    self._take_back_strike(ctx["candidate"].key)
                log.error("update %s at %s: %s", "refused" if outcome is not Outcome.TRANSIENT else "failed",
                          stage.value, reason)
            timings[stage.value] = time.perf_counter() - t0
            self._crash_hook(stage.value)
            stage = machine.next_stage(stage, outcome)
        chosen = ctx.get("candidate")
        result = SyncResult(stage.value, chosen.version if chosen else ctx.get("active_version"), reason, timings,
                            self.fetcher.requests - req0, self.fetcher.bytes - bytes0)
        errors = self._status["consecutive_errors"]
        self._set_status(last_check=_now(), last_result=result.result,
                         last_error=None if result.ok else reason,
                         consecutive_errors=0 if result.ok else errors + 1,
                         **({"last_update": _now()} if stage is Result.UPDATED else {}))
        return result

    def _run(self, stage: Stage, ctx: dict[str, Any]) -> tuple[Outcome, str]:
        if stage is Stage.REFRESH:
            if self._nothing_new():
                return Outcome.NOTHING, "up to date (the channel's timestamp is unchanged)"
            self._verified = None
            ctx["updater"] = updater = self._updater()
            updater.refresh()
            self._verified = self._what_refresh_verified(updater)
            return Outcome.OK, "refreshed"
        if stage is Stage.SELECT:
            return self._select(ctx)
        cand: select.Candidate = ctx["candidate"]
        if stage is Stage.DOWNLOAD:
            self._download_all(ctx["updater"], cand)
            return Outcome.OK, "downloaded"
        if stage is Stage.VERIFY:
            self._verify_staged(cand)
            return Outcome.OK, "verified"
        if stage is Stage.INSTALL:
            self.state.install(cand.version)
            return Outcome.OK, "installed"
        if stage is Stage.HEALTH:
            # Counted before the check runs; taken back when the check (or the swap and commit
            # after it) fails in a way the agent saw, and cleared at commit.  So only an agent
            # killed between here and the commit (by the new model, say) leaves a strike.
            strikes = self.state.strike(cand.key)
            if strikes > machine.MAX_HEALTH_STRIKES:
                raise HealthCheckError(f"{cand.key} took the agent down {strikes - 1} times between its health "
                                       "check and its commit")
            ctx["struck"] = True
            sealed = self._open_verified(cand.version, cand)
            ctx["model"] = self.loader(sealed, self.keyring(), self.config)
            self._crash_hook("health-check")  # tests: a model that kills the agent mid-check
            return Outcome.OK, "healthy"
        if stage is Stage.SWAP:
            ctx["old"] = self.active.swap(ctx["model"])
            return Outcome.OK, "swapped"
        if stage is Stage.COMMIT:
            p = self.state.pointer().activated(cand.model, cand.version)
            self.state.set_pointer(p)
            ctx["committed"] = True
            self.state.clear_strikes(cand.key)
            try:
                self.state.prune()
            except OSError as exc:  # old versions left on disk cost space, not correctness
                log.warning("could not prune old versions: %s", exc)
            log.info("now serving %s release %d", cand.key, cand.release)
            return Outcome.OK, f"now serving {cand.key} release {cand.release}"
        raise AssertionError(stage)

    def _take_back_strike(self, key: str) -> None:
        try:
            self.state.unstrike(key)
        except OSError as exc:  # the failure being handled matters more than the count
            log.warning("cannot update %s: %s", self.state.strikes_file, exc)

    def _nothing_new(self) -> bool:
        """One small GET decides a poll with nothing new (see machine.timestamp_unchanged)."""
        if self._verified is None:
            return False
        url = f"{self.config.channel.rstrip('/')}/metadata/timestamp.json"
        fetched = self.fetcher.download_bytes(url, UpdaterConfig().timestamp_max_length)
        return machine.timestamp_unchanged(self._status.get("last_result"), self._verified, fetched, self.clock())

    def _what_refresh_verified(self, updater: Updater) -> machine.Verified | None:
        """The timestamp bytes ngclient just verified and stored, and the earliest expiry of
        the metadata it now trusts; kept in memory, never trusted from disk later."""
        trusted = updater._trusted_set  # see _select: ngclient has no public accessor
        try:
            timestamp = (self.state.tuf / "timestamp.json").read_bytes()
            if Metadata.from_bytes(timestamp).signed.version != trusted.timestamp.version:
                return None
        except Exception:  # the refresh itself succeeded: the next poll simply runs in full
            return None
        expires = min(md.expires for md in (trusted.root, trusted.timestamp, trusted.snapshot, trusted.targets))
        return machine.Verified(timestamp, self.clock(), expires.timestamp())

    def _select(self, ctx: dict[str, Any]) -> tuple[Outcome, str]:
        updater: Updater = ctx["updater"]
        # ngclient offers no public listing of targets; the trusted set holds the targets
        # metadata it just verified (signature, version, expiry, snapshot consistency).
        targets = updater._trusted_set.targets.targets
        cands, skipped = select.candidates_from_targets(targets)
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
        ctx["active_version"] = current.version if current else None
        choice = select.choose(cands, device)
        if choice.candidate is None:
            return Outcome.NOTHING, choice.reason
        ctx["candidate"] = choice.candidate
        log.info("update available: %s", choice.reason)
        return Outcome.OK, choice.reason

    def _download_all(self, updater: Updater, cand: select.Candidate) -> None:
        prefix = f"{cand.model}/{cand.version}/"
        rels = []
        for path in cand.files:
            rel = path[len(prefix):] if path.startswith(prefix) else ""
            if not _FILE.match(rel):
                raise FormatError(f"{cand.key} lists a file {path!r} outside its version folder; refusing it")
            rels.append(rel)
        if "manifest.json" not in rels or "manifest.sig" not in rels or "keys.json" not in rels:
            raise FormatError(f"{cand.key} lacks manifest.json, manifest.sig or keys.json on the channel")
        staging = self.state.staging_dir(cand.version)
        self.state.restage(cand.version)  # installed by a cycle that ended before its commit
        self.state.prune(keep_staging=cand.version)  # an abandoned download of another version
        for path, rel in zip(cand.files, rels, strict=True):
            info = updater.get_targetinfo(path)
            if info is None:
                raise ChannelError(f"{path} is listed by {cand.key} but not signed in the targets metadata")
            self._download(info, staging / rel)

    def _download(self, info: TargetFile, dest: Path) -> None:
        """Fetch one target into ``dest``, resuming a ``.part`` file, then check its TUF hashes."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            try:
                with open(dest, "rb") as f:
                    info.verify_length_and_hashes(f)
                return
            except tuf_exc.LengthOrHashMismatchError:
                dest.unlink()
        # Named after the signed hash: a partial file of another publication of this path
        # (say a republished keys.json) is never resumed into this one.
        part = dest.with_name(f"{dest.name}.{info.hashes['sha256'][:16]}.part")
        have = part.stat().st_size if part.exists() else 0
        if have > info.length:
            part.unlink()
            have = 0
        if have < info.length:
            sha = info.hashes["sha256"]
            dirname, sep, base = info.path.rpartition("/")
            url = f"{self.config.channel.rstrip('/')}/targets/{dirname}{sep}{sha}.{base}"
            chunks, start = self.fetcher.fetch_from(url, have)
            advance = self.progress(info.path, info.length, start) if self.progress is not None else None
            written = start
            with open(part, "r+b" if start else "wb") as f:
                f.truncate(start)  # the server resumes where it says it does, not where we hoped
                f.seek(start)
                for chunk in chunks:
                    written += len(chunk)
                    if written > info.length:  # endless data: stop at the signed length
                        raise tuf_exc.DownloadLengthMismatchError(
                            f"{info.path} is longer than its signed {info.length} bytes")
                    f.write(chunk)
                    if advance is not None:
                        advance(len(chunk))
                    if self.env.get(CRASH_ENV) == "download-chunk" and written >= min(info.length, 1 << 16):
                        f.flush()
                        os.fsync(f.fileno())
                        self._crash_hook("download-chunk")
                f.flush()
                os.fsync(f.fileno())
        try:
            with open(part, "rb") as f:
                info.verify_length_and_hashes(f)
        except tuf_exc.LengthOrHashMismatchError:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, dest)

    def _verify_staged(self, cand: select.Candidate) -> None:
        staged = self.state.staging_dir(cand.version)
        m = self._checked(SealedModel.open(staged), cand).manifest
        golden = (m.golden or {}).get("edge")
        needed = {a.file for a in m.artifacts if a.target == "edge" and (a.is_model or a.id == golden)}
        missing = [f for f in sorted(needed) if not (staged / f).exists()]
        if missing:
            raise FormatError(f"{m.tag} is missing {', '.join(missing)} on the channel")

    # ---- the loop ------------------------------------------------------------------------------

    def run_forever(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set: jitter when healthy, exponential backoff after errors."""
        while not stop.is_set():
            try:
                result = self.sync_once()
            except Exception as exc:  # configuration gone bad (keys, root): keep serving, keep trying
                log.exception("sync cycle crashed: %s", exc)
                self._set_status(last_check=_now(), last_result="error", last_error=str(exc),
                                 consecutive_errors=self._status["consecutive_errors"] + 1)
            else:
                log.debug("sync: %s %s", result.result, result.reason)
            delay = machine.next_delay(self.config.poll_seconds, self._status["consecutive_errors"], self.rand())
            stop.wait(delay)
