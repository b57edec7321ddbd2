"""The cloud's authentication shell: where the device registry and the API keys come from.

The decision is ``bentos.auth.authenticate`` (pure); this module feeds it and keeps its
state, for the BentoML service (``service_http.ContractMiddleware``) and the Lambda
handler (``aws_lambda``) alike:

- the device registry, from the channel (``BENTOEDGE_CHANNEL`` + ``BENTOEDGE_CHANNEL_ROOT``,
  a trusted root.json: read through python-tuf's ngclient, so only a registry the channel's
  targets key signed is taken) or from a file (``BENTOEDGE_DEVICE_REGISTRY``, a path or
  ``file://`` URL the operator vouches for).  Refreshed every
  ``BENTOEDGE_REGISTRY_REFRESH_S`` (60 s); when the channel is unreachable or serves
  something that does not verify, the last good copy stays and the failure is logged.
- the API keys, ``BENTOEDGE_API_KEYS_FILE`` (default ``$BENTOEDGE_HOME/keys/api_keys.json``,
  written by ``bentoedge keys api``; SHA-256 hashes only), re-read when the file changes,
  so ``keys api revoke`` takes effect on the next request.
- the replay cache (nonces seen within the window): shared by the workers of one host in a
  SQLite file (``cloud.replay``, ``BENTOEDGE_REPLAY_DB``), per process in the Lambda handler.

``BENTOEDGE_AUTH=iam`` leaves callers to AWS IAM, for a service that AWS alone can reach:
a SageMaker endpoint (InvokeEndpoint is SigV4-signed and does not pass the device's own
signature headers on) or a Lambda function URL with AuthType AWS_IAM.  The Lambda handler
then takes only events whose request context names the IAM caller.

``BENTOEDGE_AUTH=off`` (or ``bentoedge serve --no-auth``) lets every request in and says so
loudly at start.  Health and metrics routes are open (``OPEN_PATHS``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from bentoedge.bentos import auth
from bentoedge.bentos.api import Reply, json_reply
from bentoedge.bentos.apikeys import ApiKeyStore
from bentoedge.bentos.channel_layout import DEVICES_TARGET, METADATA_DIR, TARGETS_DIR
from bentoedge.bentos.errors import ConfigError
from bentoedge.cloud.service_core import CloudSettings

logger = logging.getLogger("bentoml.bentoedge")
OPEN_PATHS = frozenset({"/readyz", "/livez", "/healthz", "/metrics", "/ping", "/docs.json"})
MAX_REGISTRY_BYTES = 16 << 20

Fetch = Callable[[], bytes | None]


def channel_fetch(url: str, root: bytes | Callable[[], bytes], cache: Path) -> Fetch:
    """The registry as the channel's signed metadata pins it (None: no registry published yet).

    ``root`` is the trusted root.json, or what finds it on first use (a fingerprint checked
    against the channel: a refresh that cannot reach the channel yet keeps trying)."""
    from bentoedge.edge.fetchers import fetcher_for
    from bentoedge.edge.sync.tuf_access import open_updater

    fetcher = fetcher_for(url)
    base = url.rstrip("/")

    def fetch() -> bytes | None:
        where = cache
        try:
            where.mkdir(parents=True, exist_ok=True)
        except OSError:  # a read-only home (a Lambda environment): the temporary folder will do
            where = Path(tempfile.gettempdir()) / "bentoedge-cloud-tuf" / cache.name
            where.mkdir(parents=True, exist_ok=True)
        trusted = root if isinstance(root, bytes) else root()
        updater = open_updater(where, f"{base}/{METADATA_DIR}/", f"{base}/{TARGETS_DIR}/", fetcher, trusted)
        updater.refresh()
        info = updater.get_targetinfo(DEVICES_TARGET)
        if info is None:
            return None
        if info.length > MAX_REGISTRY_BYTES:
            raise ConfigError(f"the channel's device registry is {info.length} bytes, over {MAX_REGISTRY_BYTES}")
        with tempfile.TemporaryDirectory(prefix="bentoedge-registry-") as tmp:
            path = updater.download_target(info, str(Path(tmp) / "devices.json"))
            return Path(path).read_bytes()
    return fetch


def file_fetch(spec: str) -> Fetch:
    path = Path(spec[len("file://"):] if spec.startswith("file://") else spec)

    def fetch() -> bytes | None:
        with open(path, "rb") as f:
            return f.read(MAX_REGISTRY_BYTES + 1)
    return fetch


def registry_fetch(settings: CloudSettings, home: Path) -> Fetch | None:
    if settings.channel:
        cache = home / "cloud-tuf" / hashlib.sha256(settings.channel.encode()).hexdigest()[:16]
        if not settings.channel_root and settings.channel_root_sha256:
            return channel_fetch(settings.channel, _anchored(settings.channel, settings.channel_root_sha256), cache)
        if not settings.channel_root:
            raise ConfigError("BENTOEDGE_CHANNEL needs BENTOEDGE_CHANNEL_ROOT (the channel's trusted root.json, "
                              "e.g. a device's STATE/root.json) or BENTOEDGE_CHANNEL_ROOT_SHA256 (the fingerprint "
                              "'bentoedge channel init' printed)")
        try:
            root = Path(settings.channel_root).read_bytes()
        except OSError as exc:
            raise ConfigError(f"BENTOEDGE_CHANNEL_ROOT={settings.channel_root}: {exc.strerror}") from None
        return channel_fetch(settings.channel, root, cache)
    if settings.registry:
        return file_fetch(settings.registry)
    return None


def _anchored(channel: str, sha256: str) -> Callable[[], bytes]:
    """The channel's newest root, found from its 1.root.json by fingerprint once, then kept."""
    found: list[bytes] = []

    def root() -> bytes:
        if not found:
            from bentoedge.edge.sync.anchor import trusted_root

            found.append(trusted_root(channel, sha256, None)[0])
        return found[0]
    return root


class Gate:
    """One process's authentication: settings, registry, API keys, replay cache."""

    def __init__(self, settings: CloudSettings, home: Path, clock: Callable[[], float] = time.time,
                 fetch: Fetch | None = None, nonces: auth.NonceStore | None = None) -> None:
        self.enabled = settings.auth
        self.by_iam = settings.auth_by_iam
        self.window_s = settings.auth_window_s
        self.refresh_s = settings.registry_refresh_s
        self._clock = clock
        self._fetch = fetch if fetch is not None else (registry_fetch(settings, home) if self.enabled else None)
        self._keys = ApiKeyStore(Path(settings.api_keys_file) if settings.api_keys_file
                                 else home / "keys" / "api_keys.json")
        self._devices: dict[str, auth.Device] = {}
        self._nonces: auth.NonceStore = nonces if nonces is not None else auth.NonceCache()
        self._lock = threading.Lock()
        self._refreshed_at = float("-inf")
        self._stop = threading.Event()

    def announce(self) -> None:
        """The start-up log line: loud when nothing is checked."""
        if self.by_iam:
            logger.info("bentoedge: callers are authenticated by AWS IAM (BENTOEDGE_AUTH=iam): SageMaker "
                        "InvokeEndpoint or a function URL with AuthType AWS_IAM checks their SigV4 signatures; "
                        "do not expose this service any other way")
            return
        if not self.enabled:
            logger.warning("bentoedge: AUTHENTICATION IS OFF (BENTOEDGE_AUTH=off): anyone who can reach this "
                           "service can query the model; use this for local development only")
            return
        source = "a channel" if self._fetch is not None else "no device registry (API keys only)"
        logger.info("bentoedge: authentication on: device signatures from %s, API keys from %s; "
                    "replay window %ss", source, self._keys.path, int(self.window_s))

    def refresh(self) -> bool:
        """Fetch the registry once; on failure keep the last good copy. True when it changed."""
        if self._fetch is None:
            return False
        self._refreshed_at = self._clock()
        try:
            data = self._fetch()
            devices = {} if data is None else auth.parse_registry(data)
        except Exception as exc:  # tuf's errors, the network, a damaged file: all mean keep the old copy
            logger.warning("bentoedge: device registry refresh failed, keeping the last good copy (%d keys): %s",
                           len(self._devices), " ".join(str(exc).split()) or type(exc).__name__)
            return False
        changed = devices != self._devices
        self._devices = devices
        if changed:
            logger.info("bentoedge: device registry: %d keys, %d revoked", len(devices),
                        sum(d.revoked for d in devices.values()))
        return changed

    def refresh_if_due(self) -> None:
        if self._fetch is not None and self._clock() - self._refreshed_at >= self.refresh_s:
            self.refresh()

    def start(self) -> None:
        """Refresh now and then on a schedule, in a daemon thread (the BentoML worker)."""
        if not self.enabled or self._fetch is None:
            return
        self.refresh()

        def loop() -> None:
            while not self._stop.wait(self.refresh_s):
                self.refresh()
        threading.Thread(target=loop, name="bentoedge-registry", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def device(self, key_id: str) -> auth.Device | None:
        """The registry's entry for an identity key id (None when unknown)."""
        with self._lock:
            return self._devices.get(key_id)

    def check(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> auth.Verdict:
        """Let a request in or say why not (``headers``: lower-case names)."""
        if not self.enabled or path in OPEN_PATHS:
            return auth.Verdict(200, "open")
        keys = self._keys.hashes() if auth.credentials(headers) == "apikey" else {}
        with self._lock:
            return auth.authenticate(auth.Request(method, path, headers, body), self._devices, keys,
                                     self._nonces, self._clock(), self.window_s)


def refusal(verdict: auth.Verdict) -> Reply:
    """A refused request in the contract's JSON: 401 (with WWW-Authenticate), 403, or 503."""
    if verdict.status == 503:
        return json_reply(503, {"error": verdict.reason, "reason": "overloaded"}, {"Retry-After": "1"})
    extra = {"WWW-Authenticate": 'Bearer realm="bentoedge"'} if verdict.status == 401 else {}
    return json_reply(verdict.status, {"error": verdict.reason}, extra)


def gate_from_env(settings: CloudSettings, env: Mapping[str, str] = os.environ,
                  shared_replay: bool = True) -> Gate:
    """The gate a server process uses; ``shared_replay`` keeps its replay cache in a file that
    every worker on this host shares (the BentoML service), else in this process (Lambda)."""
    from bentoedge.bentos.keystore import default_home

    home = Path(env["BENTOEDGE_HOME"]) if env.get("BENTOEDGE_HOME") else default_home()
    nonces = shared_nonces(settings, home) if shared_replay and settings.auth else None
    return Gate(settings, home, nonces=nonces)


def shared_nonces(settings: CloudSettings, home: Path) -> auth.NonceStore | None:
    """The host's shared replay cache (``BENTOEDGE_REPLAY_DB``, default HOME/run/replay.sqlite3;
    ``memory`` keeps it per process), or None where it cannot be opened (then per process)."""
    from bentoedge.cloud.replay import SharedNonceStore

    where = settings.replay_db or str(home / "run" / "replay.sqlite3")
    if where == "memory":
        return None
    try:
        return SharedNonceStore(Path(where))
    except (OSError, sqlite3.Error) as exc:
        logger.warning("bentoedge: cannot open the shared replay cache %s (%s): each worker keeps its own, "
                       "so run one worker or set BENTOEDGE_REPLAY_DB to a writable path", where, exc)
        return None
