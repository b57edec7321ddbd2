"""Test-only entry point: ``bentoedge agent sync`` with a crash hook injected.

    python tests/edge/crashing_agent.py AGENT_TOML POINT

Runs one cycle as ``agent sync`` does (exit 0 updated or up to date, 1 refused or failed),
wired by ``edge.wiring.wire``, but SIGKILLs itself when the agent reaches ``POINT`` (a
stage name, ``health-check`` or ``download-chunk``: see ``edge.sync.agent``).  The crash
tests (test_sync_crash.py) run it as a real process; production code has no such switch.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

from bentoedge.edge import config as agent_config
from bentoedge.edge.sync.agent import CrashHook
from bentoedge.edge.wiring import wire


def kill_at(point: str) -> CrashHook:
    """A hook that kills this process, with no chance to clean up, at ``point``."""

    def crash(reached: str) -> None:
        if reached == point:
            os.kill(os.getpid(), signal.SIGKILL)

    return crash


def main(argv: list[str]) -> int:
    config_path, point = argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with wire(agent_config.load(Path(config_path)), crash=kill_at(point)) as wired:
        wired.agent.start_up()
        r = wired.agent.sync_once()
    print(f"{r.result}: {r.reason}", flush=True)
    return 0 if r.ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
