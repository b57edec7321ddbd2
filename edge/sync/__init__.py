"""The device's update agent: pure selection (``select``), the cycle as data (``machine``),
the shell that runs it against a channel and a state folder (``agent``), its resumable
target download (``download``) and its one door into ngclient (``tuf_access``).
``edge.wiring`` puts an agent together."""

from bentoedge.edge.sync.agent import SyncAgent, SyncResult, load_and_check
from bentoedge.edge.sync.machine import Result

__all__ = ["Result", "SyncAgent", "SyncResult", "load_and_check"]
