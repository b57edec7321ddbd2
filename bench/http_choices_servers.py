"""The servers bench/http_choices.py measures against, each in a process of its own.

Two subcommands, each printing ``ready PORT`` on stdout once it listens and serving on
loopback until SIGTERM:

``uvicorn-agent SEALED_DIR KEYS_HOME CONFIG_JSON``
    The device agent's own request logic (``AgentServer.refusal`` and ``AgentServer.route``,
    hence ``Gateway.predict``, the same prediction path as ``bentoedge agent run``) behind
    uvicorn with ``http="h11"`` and the plain asyncio loop (no uvloop, no httptools: the
    pure-Python build a device could carry).  ``AgentASGI`` is the adapter: the same framing
    checks as ``edge.server`` (``bentos.api.declared_length`` before the body is read), then
    the route, then the ``Reply`` as an ASGI response.  CONFIG_JSON's ``offload`` says where
    the route runs: ``false`` on the event loop itself (cheapest; a slow model then stalls
    every connection), ``true`` in a thread pool (what an adoption would have to do).
    uvicorn's own limits are set to the agent's: 256 connections, 30 s keep-alive idle, a
    128-connection backlog, 16 KiB of request head.

``canned``
    A loopback HTTP/1.1 server that answers every request with the same small JSON
    prediction as soon as its body has arrived, on asyncio's transport (no per-request
    thread, no parser beyond Content-Length), so a client measured against it pays for
    itself, not for the server.

    python -m bench.http_choices_servers uvicorn-agent SEALED KEYS '{"offload": false}'
    python -m bench.http_choices_servers canned
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bentoedge.bentos.api import JSON, Reply, declared_length, error_reply, json_reply
from bentoedge.bentos.errors import RequestError

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

#: The agent's own limits (edge.server), given to uvicorn so both servers refuse the same.
MAX_CONNECTIONS = 256
IDLE_TIMEOUT_S = 30
BACKLOG = 128
MAX_HEAD_BYTES = 16 * 1024


class AgentASGI:
    """An ASGI app around one ``AgentServer``'s request logic; no prediction code of its own."""

    def __init__(self, agent: Any, offload: ThreadPoolExecutor | None = None) -> None:
        self.agent = agent
        self.offload = offload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off; websockets are not part of the contract
            return
        method = scope["method"]
        path = scope["path"] + (("?" + scope["query_string"].decode("latin-1")) if scope.get("query_string") else "")
        raw = scope["headers"]
        header = lambda name: next((v.decode("latin-1") for k, v in raw if k == name), None)  # noqa: E731
        refused = self.agent.refusal(path, header(b"authorization"))
        if refused is not None:
            await self._write(send, refused, close=method != "GET")
            return
        lengths = [v.decode("latin-1") for k, v in raw if k == b"content-length"]
        try:
            length = declared_length(method, ", ".join(lengths) if lengths else None, header(b"transfer-encoding"),
                                     self.agent.gateway.max_body)
        except RequestError as exc:
            await self._write(send, error_reply(exc), close=True)
            return
        body = await self._body(receive, length)
        if body is None:
            await self._write(send, json_reply(400, {"error": "the request body ended before its Content-Length"}),
                              close=True)
            return
        args = (method, path, body, header(b"content-type"), header(b"accept"))
        try:
            if self.offload is None:
                reply = self.agent.route(*args)
            else:
                reply = await asyncio.get_running_loop().run_in_executor(self.offload, self.agent.route, *args)
        except Exception as exc:  # a bug must cost one request, never the server (as edge.server)
            reply = json_reply(500, {"error": f"the agent failed on this request ({type(exc).__name__}); see its log"})
        await self._write(send, reply)

    @staticmethod
    async def _body(receive: Receive, length: int) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        more = length > 0
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            chunks.append(chunk)
            more = bool(message.get("more_body")) and size < length
        return b"".join(chunks) if size == length else None

    @staticmethod
    async def _write(send: Send, reply: Reply, close: bool = False) -> None:
        headers = [(b"content-type", (reply.content_type or JSON).encode("latin-1")),
                   (b"content-length", str(len(reply.body)).encode())]
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})


def listening_socket() -> socket.socket:
    # IPPROTO_TCP said out loud: asyncio sets TCP_NODELAY on accepted connections only when
    # the listening socket's proto is IPPROTO_TCP, and socket.socket() leaves it 0; without
    # it every answer written in two parts (uvicorn's head, then body) waits ~40 ms for the
    # client's delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


async def _announce_when(started: Callable[[], bool], port: int, serving: asyncio.Task[None]) -> None:
    for _ in range(3000):  # 30 s at most
        if started() or serving.done():
            break
        await asyncio.sleep(0.01)
    if started():
        print(f"ready {port}", flush=True)


def serve_uvicorn_agent(sealed_dir: str, keys_home: str, config_json: str) -> int:
    import uvicorn

    from bench.agent_process import agent_config
    from bentoedge.bentos.keystore import LocalKeys
    from bentoedge.bentos.recipients import Keyring
    from bentoedge.bentos.sealed import SealedModel
    from bentoedge.edge.active import ActiveModel
    from bentoedge.edge.runtime import load_edge_model
    from bentoedge.edge.wiring import wire

    settings = json.loads(config_json)
    model = load_edge_model(SealedModel.open(Path(sealed_dir)), Keyring().add_kek(LocalKeys(Path(keys_home)).kek()))
    config = agent_config(cloud=settings.get("cloud", ""), mode=settings.get("mode", "prefer_edge"),
                          **settings.get("limits", {}))
    offload = ThreadPoolExecutor(max_workers=8, thread_name_prefix="agent-route") if settings.get("offload") else None
    # wire() builds the AgentServer exactly as `agent run` does; its own HTTP server is never
    # started (its socket is bound and idle), only its refusal/route functions are used.
    with wire(config, active=ActiveModel(model), sync=False, serve=True) as wired:
        app = AgentASGI(wired.server, offload)
        sock = listening_socket()
        server = uvicorn.Server(uvicorn.Config(
            app, http="h11", loop="asyncio", lifespan="off", ws="none", access_log=False, log_level="warning",
            limit_concurrency=MAX_CONNECTIONS, timeout_keep_alive=IDLE_TIMEOUT_S, backlog=BACKLOG,
            h11_max_incomplete_event_size=MAX_HEAD_BYTES))

        async def main() -> None:
            serving = asyncio.ensure_future(server.serve(sockets=[sock]))
            await _announce_when(lambda: server.started, sock.getsockname()[1], serving)
            await serving

        asyncio.run(main())  # uvicorn's serve() turns SIGTERM into a graceful exit
        if offload is not None:
            offload.shutdown(wait=False)
    return 0


CANNED_BODY = json.dumps({"outputs": {"y": [[0.1, 0.2, 0.7]]}, "model": {"name": "cloud", "version": "c1"},
                          "served_by": "cloud"}).encode()
CANNED_ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                 + str(len(CANNED_BODY)).encode() + b"\r\n\r\n" + CANNED_BODY)
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)


class _Canned(asyncio.Protocol):
    """Answers each complete request on the connection with ``CANNED_ANSWER``."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            match = _CONTENT_LENGTH.search(self.buffer, 0, end + 2)
            total = end + 4 + (int(match.group(1)) if match else 0)
            if len(self.buffer) < total:
                return
            self.buffer = self.buffer[total:]
            self.transport.write(CANNED_ANSWER)


def serve_canned() -> int:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        sock = listening_socket()
        server = await loop.create_server(_Canned, sock=sock, backlog=BACKLOG)
        print(f"ready {sock.getsockname()[1]}", flush=True)
        await stop.wait()
        server.close()

    asyncio.run(main())
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["uvicorn-agent"] and len(argv) == 4:
        return serve_uvicorn_agent(*argv[1:])
    if argv == ["canned"]:
        return serve_canned()
    print("usage: python -m bench.http_choices_servers uvicorn-agent SEALED_DIR KEYS_HOME CONFIG_JSON | canned",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
