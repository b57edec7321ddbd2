"""Forwarding a prediction request to the cloud endpoint, with a deadline and bounded retries.

The only door from the device API to the network.  It speaks plain HTTP/1.1 with the
standard library (``http.client``) over a small pool of keep-alive connections, so a device
needs no HTTP dependency and a forwarded request pays no new TCP handshake.

Every call has a deadline: connecting, sending and each read get the time that is left,
and a body that trickles in past the deadline is cut off.  Only connection errors (refused,
reset, a stale keep-alive socket) are retried, at most ``retries`` times and only while time
is left; a timeout or a bad answer is never retried, since the cloud may be doing the work.
An answer is accepted only if it is a 2xx or 4xx with the contract's shape
(``bentos.api.read_answer``: a JSON object with ``outputs``, or a readable ``.npz``; a 4xx
with an ``error``); anything else is garbage and counts as a failure for the circuit breaker.

Each attempt is signed afresh with the device's Ed25519 identity key when it has one
(``identity_signer``; RFC 9421 as ``bentos.auth.sign_request`` writes it: method, path,
Content-Digest, ``created`` and a new nonce), so a retry is never refused as a replay.  A
cloud behind AWS IAM gets a SigV4 signature on top (``edge.aws_sign``), over every header
including the device's own signature; a SageMaker ``.../invocations`` URL is posted to as
it is, since it is the one route InvokeEndpoint reaches.
"""

from __future__ import annotations

import http.client
import io
import queue
import socket
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bentoedge.bentos.api import HEADER_MODEL, HEADER_VERSION, JSON, NPZ, AnswerError, read_answer
from bentoedge.bentos.auth import sign_request
from bentoedge.bentos.errors import KeyMissingError
from bentoedge.edge.aws_sign import AwsSigner, reaches_only_invocations

#: (method, path, body) -> the headers that sign that call.
Signer = Callable[[str, str, bytes], Mapping[str, str]]

MAX_ANSWER_BYTES = 64 << 20
_CHUNK = 1 << 16


class CloudError(Exception):
    """The cloud did not give a usable answer; ``kind`` is a reason token for metrics/status."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class CloudAnswer:
    status: int
    body: bytes
    content_type: str
    model_version: str = ""
    model_name: str = ""
    doc: dict[str, Any] | None = field(default=None, repr=False)  # the parsed JSON body, when JSON


class CloudClient:
    """Posts request bodies to ``<cloud>/predict``; thread-safe."""

    def __init__(self, base_url: str, timeout_s: float = 5.0, retries: int = 1, pool_size: int = 8,
                 path: str = "/predict", signer: Signer | None = None, aws: AwsSigner | None = None) -> None:
        url = urllib.parse.urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"the cloud URL must be http(s)://host[:port], not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._https = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port or (443 if self._https else 80)
        if reaches_only_invocations(base_url):
            if path != "/predict":
                raise ValueError(f"{base_url} reaches only the service's /invocations, not {path}")
            self._path = url.path.rstrip("/")
        else:
            self._path = (url.path.rstrip("/") or "") + path
        self._url = urllib.parse.urlunsplit((url.scheme, url.netloc, self._path, "", ""))
        self.aws = aws
        self.timeout_s = timeout_s
        self.retries = max(0, retries)
        self.signer = signer
        self._idle: queue.LifoQueue[http.client.HTTPConnection] = queue.LifoQueue(maxsize=pool_size)

    def predict(self, body: bytes, content_type: str, accept: str | None, deadline: float) -> CloudAnswer:
        """Forward one request; CloudAnswer for a valid answer (2xx or 4xx), CloudError otherwise."""
        headers = {"Content-Type": content_type or JSON, "Content-Length": str(len(body))}
        if accept:
            headers["Accept"] = accept
        status, data, resp_headers = self._send(body, headers, deadline)
        return _check(status, data, resp_headers.get("content-type", ""), resp_headers.get(HEADER_VERSION.lower(), ""),
                      resp_headers.get(HEADER_MODEL.lower(), ""))

    def post(self, body: bytes, content_type: str, deadline: float) -> tuple[int, bytes]:
        """POST ``body`` to this client's path, signed like a prediction: the status and body
        as they came (for calls that are not predictions: fleet reports)."""
        status, data, _ = self._send(body, {"Content-Type": content_type, "Content-Length": str(len(body))},
                                     deadline)
        return status, data

    def _send(self, body: bytes, headers: dict[str, str], deadline: float) -> tuple[int, bytes, dict[str, str]]:
        last: CloudError | None = None
        for _ in range(self.retries + 1):
            left = deadline - time.monotonic()
            if left <= 0:
                raise last or CloudError("cloud_timeout", "no time left before the request deadline")
            signed = {**headers, **self.signer("POST", self._path, body)} if self.signer else headers
            if self.aws is not None:
                signed = {**signed, **self.aws("POST", self._url, signed, body)}
            try:
                return self._once(body, signed, deadline)
            except _Retryable as exc:
                last = CloudError("cloud_unreachable", str(exc.__cause__ or exc))
        assert last is not None
        raise last

    def _once(self, body: bytes, headers: dict[str, str], deadline: float) -> tuple[int, bytes, dict[str, str]]:
        conn, reused = self._connection(deadline)
        try:
            try:
                _set_timeout(conn, deadline)
                conn.request("POST", self._path, body=body, headers=headers)
                _set_timeout(conn, deadline)
                resp = conn.getresponse()
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine,
                    BrokenPipeError) as exc:
                # A refused or reset connection never reached the model: safe to try again.
                conn.close()
                raise _Retryable(str(exc)) from exc
            except TimeoutError:
                conn.close()
                raise CloudError("cloud_timeout", f"no answer within the deadline ({self.timeout_s:g}s)") from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if not reused and isinstance(exc, OSError):
                    raise _Retryable(str(exc)) from exc
                raise CloudError("cloud_unreachable", str(exc)) from None
            data = self._read(conn, resp, deadline)
        except BaseException:
            conn.close()
            raise
        if resp.will_close:
            conn.close()
        else:
            self._give_back(conn)
        return resp.status, data, {k.lower(): v for k, v in resp.getheaders()}

    def _read(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, deadline: float) -> bytes:
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                _set_timeout(conn, deadline)
                chunk = resp.read(_CHUNK)
                if not chunk:
                    return b"".join(chunks)
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    raise CloudError("cloud_bad_answer", f"the answer is over {MAX_ANSWER_BYTES} bytes")
                chunks.append(chunk)
        except TimeoutError:
            raise CloudError("cloud_timeout", f"the answer did not arrive within the deadline ({self.timeout_s:g}s)") from None
        except (OSError, http.client.HTTPException) as exc:
            raise CloudError("cloud_unreachable", f"the connection broke while reading the answer: {exc}") from None

    def _connection(self, deadline: float) -> tuple[http.client.HTTPConnection, bool]:
        try:
            return self._idle.get_nowait(), True
        except queue.Empty:
            pass
        timeout = max(0.001, deadline - time.monotonic())
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=timeout), False

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        try:
            self._idle.put_nowait(conn)
        except queue.Full:
            conn.close()

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


class _Retryable(Exception):
    pass


def _set_timeout(conn: http.client.HTTPConnection, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    conn.timeout = left
    if conn.sock is None:
        conn.connect()
        raw: Any = conn.sock
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sock = _DeadlineSocket(raw)
    if isinstance(conn.sock, _DeadlineSocket):
        conn.sock.deadline = deadline
    conn.sock.settimeout(left)


class _DeadlineSocket:
    """A socket whose every receive gets only the time left before the call's deadline.

    A socket timeout alone bounds each ``recv``, not the whole answer: a cloud sending a
    byte every second would never time out.  ``http.client`` reads through
    ``sock.makefile``, so handing it a reader that re-arms the timeout per receive bounds
    the headers and the body together.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.deadline = float("inf")

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self))

    def recv_into_by_deadline(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _DeadlineReader(io.RawIOBase):
    def __init__(self, owner: _DeadlineSocket) -> None:
        super().__init__()
        self._owner = owner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._owner.recv_into_by_deadline(buffer)


def _check(status: int, data: bytes, content_type: str, version: str, name: str) -> CloudAnswer:
    """Accept only a 2xx or 4xx with the contract's shape; a 5xx or garbage is a CloudError."""
    if status >= 500:
        raise CloudError("cloud_error", f"the cloud answered {status}")
    if not (200 <= status < 300 or 400 <= status < 500):
        raise CloudError("cloud_bad_answer", f"unexpected status {status}")
    try:
        doc = read_answer(status, data, content_type)
    except AnswerError as exc:
        raise CloudError("cloud_bad_answer", str(exc)) from None
    if doc is None:  # an .npz of outputs: passed on as it came
        return CloudAnswer(status, data, NPZ, version, name)
    model = doc["model"] if isinstance(doc.get("model"), dict) else {}
    return CloudAnswer(status, data, JSON, version or str(model.get("version", "")),
                       name or str(model.get("name", "")), doc)


def load_identity(key_file: Path) -> Ed25519PrivateKey | None:
    """The device's identity key (``STATE/identity.key``); None when the device has none
    (provisioned before identities: ``agent init --force`` makes one)."""
    try:
        data = key_file.read_bytes()
    except FileNotFoundError:
        return None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError:
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyMissingError(f"{key_file} is not an Ed25519 private key; run 'bentoedge agent init --force' "
                              "and enroll the device again")
    return key


def aws_signer(config: Any) -> AwsSigner | None:
    """SigV4 for ``config.cloud`` when it sits behind AWS IAM (``edge.aws_sign``), else None."""
    from bentoedge.edge.aws_sign import aws_target, sigv4_signer

    target = aws_target(config.cloud, config.cloud_aws)
    return None if target is None else sigv4_signer(target)


def identity_signer(key_file: Path, clock: Callable[[], float] = time.time) -> Signer | None:
    """Signs calls with the device's identity key; None when the device has none."""
    ed_key = load_identity(key_file)
    if ed_key is None:
        return None

    def sign(method: str, path: str, body: bytes) -> Mapping[str, str]:
        return sign_request(ed_key, method, path, body, clock())
    return sign
