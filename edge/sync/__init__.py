"""The device's update agent: pure selection (``select``), the cycle as data (``machine``),
and the shell that runs it against a channel and a state folder (``agent``)."""

from bentoedge.edge.sync.agent import SyncAgent, SyncResult, load_and_check

__all__ = ["SyncAgent", "SyncResult", "load_and_check"]
