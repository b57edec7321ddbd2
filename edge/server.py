"""The device agent's HTTP API: the cloud's /predict contract, served on the device.

A stdlib ``ThreadingHTTPServer`` speaking HTTP/1.1 with keep-alive: a device needs no web
framework, and a request costs a thread hand-off and a parse, well under a millisecond.
Routes (docs/design.md, the prediction API; the same paths as BentoML's):

    POST /predict     JSON or .npz in, JSON or .npz out (``edge.gateway`` does the work)
    GET  /livez       200 while the process serves HTTP
    GET  /readyz      200 when a model is active, or the cloud can answer in this mode
    GET  /metrics     Prometheus text (``edge.metrics``)
    GET  /status      JSON: active model, last sync (``status_provider``), counts, latency
    GET  /docs.json   OpenAPI (``bentos.openapi``, the same text as the cloud's)

The local token (``STATE/api.token``, written by ``agent init``): on loopback the prediction
routes are open to the device's own programs and only /status (device id, URLs, last errors)
needs ``Authorization: Bearer <token>``; bound beyond loopback every route but /livez,
/healthz and /readyz needs it, and without a token file the agent refuses to bind there.
A device provisioned before tokens has none and keeps its loopback API as it was.

The handler is a thin shell: it checks the framing with the contract's
``bentos.api.declared_length`` (411/400/413 before a byte of the body is read), reads the
body, calls ``Gateway.predict`` and writes the ``Reply``; 404/405 are the contract's too.
Anything unexpected becomes a one-line 500 for that request only; the server keeps serving.
"""

from __future__ import annotations

import gc
import hmac
import io
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bentoedge.bentos.api import (
    DEFAULT_MAX_PAYLOAD,
    JSON,
    Reply,
    declared_length,
    error_reply,
    json_reply,
    method_not_allowed,
    not_found,
)
from bentoedge.bentos.errors import ConfigError, RequestError
from bentoedge.bentos.openapi import device_document
from bentoedge.edge.active import ActiveModel
from bentoedge.edge.breaker import CircuitBreaker
from bentoedge.edge.cloud_client import CloudClient, aws_signer, identity_signer
from bentoedge.edge.config import AgentConfig
from bentoedge.edge.gateway import Gateway, MemoryProbe
from bentoedge.edge.metrics import Metrics
from bentoedge.edge.router import RouterPolicy
from bentoedge.edge.state import DeviceState

log = logging.getLogger("bentoedge.agent")

IDLE_TIMEOUT_S = 30.0  # a keep-alive connection with nothing to say gives its thread back


class AgentServer:
    """The local API of one device agent; ``start`` serves in a background thread."""

    def __init__(self, config: AgentConfig, active: ActiveModel,
                 status_provider: Callable[[], dict[str, Any]] = dict, *,
                 breaker: CircuitBreaker | None = None, cloud: CloudClient | None = None,
                 memory: Callable[[], float | None] | None = None, max_body: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.config = config
        self.active = active
        self.status_provider = status_provider
        self.metrics = Metrics()
        self.breaker = breaker or CircuitBreaker()
        if cloud is None and config.cloud:
            identity = DeviceState(config.state_dir).identity_file
            signer = identity_signer(identity)
            if signer is None:
                log.warning("no identity key at %s: fallback calls go unsigned and an authenticating cloud "
                            "refuses them (bentoedge agent init --force, then channel enroll --identity)", identity)
            cloud = CloudClient(config.cloud, timeout_s=config.cloud_timeout_s, signer=signer, aws=aws_signer(config))
        self.gateway = Gateway(active, RouterPolicy.from_config(config), cloud, self.breaker, self.metrics,
                               request_timeout_s=config.cloud_timeout_s,
                               memory=memory or MemoryProbe(), max_body=max_body)
        self.started = time.time()
        self.token = read_token(DeviceState(config.state_dir).token_file)
        self.exposed = not is_loopback(config.host)
        if self.exposed and self.token is None:
            raise ConfigError(f"refusing to serve the device API on {config.host} without a local API token: "
                              "run 'bentoedge agent init --force' (it writes STATE/api.token) or bind 127.0.0.1")
        self._httpd = _HTTPServer((config.host, config.port), _Handler, self)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = self.config.host if self.config.host not in ("0.0.0.0", "") else "127.0.0.1"
        return f"http://{host}:{self.port}"

    def start(self) -> AgentServer:
        """Serve in a daemon thread; returns once the socket listens (it already does)."""
        if self._thread is None:
            # A short poll interval only bounds how long stop() waits; requests do not poll.
            self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.1,),
                                            name="bentoedge-api", daemon=True)
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def stop(self) -> None:
        self._httpd.shutdown() if self._thread is not None else None
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.gateway.cloud is not None:
            self.gateway.cloud.close()

    def __enter__(self) -> AgentServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- views -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        model = self.active.get()
        try:
            sync = self.status_provider()
        except Exception as exc:  # the sync agent's view must not break ours
            sync = {"error": f"{type(exc).__name__}: {exc}"}
        load = self.gateway.load
        return {
            "device_id": self.config.device_id,
            "mode": self.config.mode,
            "ready": self.gateway.ready(),
            "model": None if model is None else {
                "name": model.name, "version": model.version, "artifact": model.artifact.id,
                "precision": model.artifact.precision, "runtime": getattr(model, "runtime_name", None)},
            "sync": sync,
            "cloud": {"url": self.config.cloud or None, "breaker": self.breaker.snapshot()},
            "local": {"inflight": load.inflight, "ewma_latency_ms": round(load.ewma_ms, 3)},
            "free_memory_mb": self.gateway.memory(),
            "served": self.metrics.summary(),
            "uptime_s": round(time.time() - self.started, 1),
        }

    def metrics_text(self) -> str:
        model = self.active.get()
        breaker_open = {"closed": 0, "half_open": 0.5, "open": 1}[self.breaker.state]
        return self.metrics.render({
            "bentoedge_inflight_local": self.gateway.load.inflight,
            "bentoedge_ready": 1 if self.gateway.ready() else 0,
            "bentoedge_model_active": 0 if model is None else 1,
            "bentoedge_cloud_circuit_open": breaker_open,
        })

    def refusal(self, path: str, authorization: str | None) -> Reply | None:
        """401 when this route needs the local token and the request lacks it; None to go on."""
        path = path.split("?", 1)[0]
        if self.token is None or path in _OPEN_PATHS or not (self.exposed or path == "/status"):
            return None
        sent = (authorization or "")[7:].strip() if (authorization or "")[:7].lower() == "bearer " else ""
        if sent and hmac.compare_digest(sent.encode(), self.token.encode()):
            return None
        return json_reply(401, {"error": "this route needs the device's local API token: "
                                         "send Authorization: Bearer <the token in STATE/api.token>"},
                          {"WWW-Authenticate": 'Bearer realm="bentoedge-agent"'})

    def route(self, method: str, path: str, body: bytes, content_type: str | None, accept: str | None) -> Reply:
        path = path.split("?", 1)[0]
        if path in ("/predict", "/invocations"):
            if method != "POST":
                return method_not_allowed(path, "POST")
            return self.gateway.predict(body, content_type, accept)
        if method != "GET":
            return method_not_allowed(path, "GET") if path in _GET_PATHS else not_found(path)
        if path == "/livez" or path == "/healthz":
            return json_reply(200, {"status": "alive"})
        if path == "/readyz":
            ready = self.gateway.ready()
            return json_reply(200 if ready else 503, {"status": "ready" if ready else "not ready",
                                                     **({} if ready else {"reason": self._not_ready_reason()})})
        if path == "/metrics":
            return Reply(200, self.metrics_text().encode(), "text/plain; version=0.0.4; charset=utf-8")
        if path == "/status":
            return json_reply(200, self.status())
        if path == "/docs.json":
            model = self.active.get()
            return json_reply(200, device_document(None if model is None else model.signature,
                                                   self.config.agent_version))
        return not_found(path)

    def _not_ready_reason(self) -> str:
        if self.config.mode == "edge_only":
            return "no model is active yet (edge_only mode)"
        return f"no model is active and the cloud is not usable ({self.gateway.cloud_state()[1]})"


_GET_PATHS = frozenset({"/livez", "/healthz", "/readyz", "/metrics", "/status", "/docs.json"})
_OPEN_PATHS = frozenset({"/livez", "/healthz", "/readyz"})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: Path) -> str | None:
    """The local API token, or None when the device has none; a damaged file is refused."""
    try:
        token = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the local API token {path}: {exc}") from None
    if len(token) < 16:
        raise ConfigError(f"the local API token in {path} is too short; run 'bentoedge agent init --force'")
    return token


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # a burst of connections waits in the backlog, not refused

    max_connections = 256  # one thread each: a bound, so slow clients cannot grow threads without end

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], agent: AgentServer) -> None:
        self.agent = agent
        self._slots = threading.BoundedSemaphore(self.max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # full: the client retries, the device keeps serving the rest
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


#: Once a request's first byte arrives, its line and headers must all arrive within this
#: long, and its body within this long plus its length at ``BODY_MIN_RATE``: a slowloris
#: client trickling a byte under the idle timeout cannot hold a connection slot for long.
HEAD_DEADLINE_S = 5.0
BODY_MIN_RATE = 64 * 1024  # bytes a second


class _DeadlineReader(io.RawIOBase):
    """The connection's reads: the idle timeout while no request has begun, then a deadline
    for the whole request (each recv waits only what is left of it)."""

    def __init__(self, sock: socket.socket, idle_s: float) -> None:
        super().__init__()
        self._sock = sock
        self._idle_s = idle_s
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.deadline is None:
            self._sock.settimeout(self._idle_s)
        else:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request did not arrive in time")
            self._sock.settimeout(left)
        n = self._sock.recv_into(buffer)
        if n and self.deadline is None:  # a request has begun: its head has HEAD_DEADLINE_S
            self.deadline = time.monotonic() + HEAD_DEADLINE_S
        return n


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bentoedge-agent"
    timeout = IDLE_TIMEOUT_S
    wbufsize = 1 << 16  # buffered: headers and a small body leave in one segment
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        # Answers go out in one write; without NODELAY, Nagle and the client's delayed ACK
        # would still add tens of milliseconds to every keep-alive request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader = _DeadlineReader(self.connection, IDLE_TIMEOUT_S)
        self.rfile = io.BufferedReader(self._reader, 1 << 16)

    def handle_one_request(self) -> None:
        # A keep-alive connection waits for its next request under the idle timeout again; the
        # request's deadline starts with the first byte read for it.
        self._reader.deadline = None
        super().handle_one_request()

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        agent = self.server.agent
        refused = agent.refusal(self.path, self.headers.get("Authorization"))
        if refused is not None:
            self.close_connection = method != "GET"  # its body is not read: the framing is lost
            self._write(refused)
            return
        try:
            body, problem = self._body(method, agent.gateway.max_body)
            if problem is not None:
                reply = problem
            else:
                reply = agent.route(method, self.path, body, self.headers.get("Content-Type"),
                                    self.headers.get("Accept"))
        except Exception as exc:  # a bug must cost one request, never the server
            log.exception("request failed")
            reply = json_reply(500, {"error": f"the agent failed on this request ({type(exc).__name__}); see its log"})
        self._write(reply)

    def _body(self, method: str, limit: int) -> tuple[bytes, Reply | None]:
        """The body, or the contract's refusal of its framing (then the connection closes)."""
        try:
            lengths = self.headers.get_all("Content-Length") or []
            length = declared_length(method, ", ".join(lengths) if lengths else None,
                                     self.headers.get("Transfer-Encoding"), limit)
        except RequestError as exc:
            # Do not read it: closing is cheaper than draining megabytes, and the framing of
            # whatever follows on this connection cannot be trusted.
            self.close_connection = True
            return b"", error_reply(exc)
        if self._reader.deadline is not None:
            self._reader.deadline += length / BODY_MIN_RATE
        try:
            body = self.rfile.read(length) if length else b""
        except TimeoutError:
            self.close_connection = True
            return b"", json_reply(408, {"error": "the request body did not arrive in time; send it faster"})
        if len(body) != length:
            self.close_connection = True
            return b"", json_reply(400, {"error": "the request body ended before its Content-Length"})
        return body, None

    def _write(self, reply: Reply) -> None:
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type or JSON)
            self.send_header("Content-Length", str(len(reply.body)))
            for key, value in reply.headers.items():
                self.send_header(key, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(reply.body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away; nothing to answer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)


def freeze_start_up_heap() -> None:
    """Move every object alive now out of the cyclic garbage collector's sight (``gc.freeze``).

    For a process that owns itself (``agent run``), called once it has loaded its model and
    started serving.  Why: a JSON request for a 96x96x3 image allocates some 9,000 lists, so
    the collector runs its full pass every few requests, and that pass walked the start-up
    heap (about 52,000 objects: modules, numpy, the runtime's wrappers) each time; the p99 of
    such requests fell from 48 ms to 10 ms.  Objects frozen here are still freed by reference
    counting (an old model's interpreter included); only cycles among them would stay, and a
    start-up heap is not garbage.  Never called from a library or a test process, whose heap
    is not its own to freeze."""
    gc.collect()
    gc.freeze()
