"""The one place a device agent is put together from its config.

    config -> fetcher (``edge.fetchers``) and state folder (``edge.state``)
           -> runtime (``load_and_check``: decrypt, load, golden samples)
           -> sync agent (``edge.sync.SyncAgent``) -> local API (``edge.server.AgentServer``)

``bentoedge agent sync`` and ``agent run`` (``edge.cli``), the bench (``bench/``) and the
tests (``tests/sync_support.py``) all call ``wire``, so they run the agent exactly as a
device does; what differs between them is passed in (a pre-loaded model, a download bar,
a crash hook), never rebuilt.  Plain function and record: no container, no registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from bentoedge.bentos.errors import UsageError
from bentoedge.edge.active import ActiveModel
from bentoedge.edge.config import AgentConfig
from bentoedge.edge.fetchers import fetcher_for
from bentoedge.edge.state import DeviceState
from bentoedge.edge.sync.agent import CrashHook, Loader, SyncAgent, load_and_check
from bentoedge.edge.sync.download import DownloadProgress

if TYPE_CHECKING:  # the server (and its gateway) load only when asked to serve
    from bentoedge.edge.server import AgentServer


@dataclass(frozen=True, slots=True)
class Wired:
    """The parts of one device agent; closing it stops the API and releases the state folder."""

    config: AgentConfig
    active: ActiveModel
    sync: SyncAgent | None = None  # None when wired with sync=False
    api: AgentServer | None = None  # None unless wired with serve=True; not started yet

    @property
    def agent(self) -> SyncAgent:
        if self.sync is None:
            raise UsageError("this agent was wired without a sync agent (sync=False)")
        return self.sync

    @property
    def server(self) -> AgentServer:
        if self.api is None:
            raise UsageError("this agent was wired without a local API (serve=False)")
        return self.api

    def close(self) -> None:
        try:
            if self.api is not None:
                self.api.stop()
        finally:
            if self.sync is not None:
                self.sync.close()

    def __enter__(self) -> Wired:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wire(config: AgentConfig, *, active: ActiveModel | None = None, sync: bool = True, serve: bool = False,
         loader: Loader = load_and_check,
         progress: DownloadProgress | None = None, crash: CrashHook | None = None) -> Wired:
    """Build a device agent for ``config``: a sync agent over its state folder (unless
    ``sync=False``: the bench serves a model it loaded itself, in ``active``) and, with
    ``serve=True``, its local API reporting the sync agent's status.  ``active`` is the model
    slot the parts share (a new, empty one by default); ``crash`` is for tests only."""
    slot = active if active is not None else ActiveModel()
    agent = None
    if sync:
        agent = SyncAgent(config, slot, loader=loader, fetcher=fetcher_for(config.channel),
                          state=DeviceState(config.state_dir), progress=progress, crash=crash)
    server = None
    if serve:
        from bentoedge.edge.server import AgentServer

        try:
            server = AgentServer(config, slot, status_provider=agent.status if agent is not None else dict)
        except BaseException:  # the port is taken, say: do not keep the state folder locked
            if agent is not None:
                agent.close()
            raise
    return Wired(config, slot, agent, server)
