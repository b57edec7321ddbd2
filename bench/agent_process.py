"""The device agent's local API in a process of its own, for bench/edge_serving.py.

On a device the agent is its own process (``bentoedge agent run``) with nothing but the
edge package loaded; the benchmark must measure it that way too.  Served from inside the
benchmark process, the agent would share a heap with TensorFlow and Keras (hundreds of
thousands of objects that every full garbage collection walks: a JSON request for a
96x96x3 image then had a p99 of 100-300 ms) and share the GIL with its own load
generator.  This script loads one sealed model the way the agent does (decrypted in
memory with the local KEK) and serves the agent's local API, wired by ``edge.wiring.wire``
as ``agent run`` wires it (without the sync loop: there is no channel), on loopback until
it is terminated.

    python -m bench.agent_process SEALED_DIR KEYS_HOME CONFIG_JSON
    -> prints "ready PORT" on stdout once it listens

CONFIG_JSON holds ``mode``, ``cloud`` and the ``limits`` overrides.  It imports only what
a device install has (no TensorFlow, ONNX Runtime, BentoML or boto3).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

from bentoedge.bentos.keystore import LocalKeys  # noqa: E402
from bentoedge.bentos.recipients import Keyring  # noqa: E402
from bentoedge.bentos.sealed import SealedModel  # noqa: E402
from bentoedge.edge.active import ActiveModel  # noqa: E402
from bentoedge.edge.config import AgentConfig, Limits, Mode  # noqa: E402
from bentoedge.edge.runtime import load_edge_model  # noqa: E402
from bentoedge.edge.server import freeze_start_up_heap  # noqa: E402
from bentoedge.edge.wiring import wire  # noqa: E402

BENCH_LIMITS: dict[str, Any] = {"max_batch": 64, "max_payload_bytes": 16 << 20, "max_inflight": 64,
                                "latency_budget_ms": 1e6}


def agent_config(port: int = 0, cloud: str = "", mode: Mode = "prefer_edge", **limits: Any) -> AgentConfig:
    """A config with limits wide enough that only the benchmark's own settings bind."""
    return AgentConfig(device_id="bench", channel="file:///none", cloud=cloud, state="/nonexistent", port=port,
                       mode=mode, cloud_timeout_s=10.0, limits=Limits(**{**BENCH_LIMITS, **limits}))


def main(argv: list[str]) -> int:
    sealed_dir, keys_home, config_json = argv
    settings = json.loads(config_json)
    model = load_edge_model(SealedModel.open(Path(sealed_dir)), Keyring().add_kek(LocalKeys(Path(keys_home)).kek()))
    config = agent_config(cloud=settings.get("cloud", ""), mode=settings.get("mode", "prefer_edge"),
                          **settings.get("limits", {}))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with wire(config, active=ActiveModel(model), sync=False, serve=True) as wired:
        wired.server.start()
        freeze_start_up_heap()  # as agent run does
        print(f"ready {wired.server.port}", flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
