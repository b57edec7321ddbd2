"""Test-only entry point: ``bentoedge agent run`` on a device where one version fails its health check.

    python tests/e2e/fleet_agent.py AGENT_TOML [FAULTY_VERSION]

Runs the real ``bentoedge agent run --config AGENT_TOML`` (sync loop, local API, fleet
reports).  With ``FAULTY_VERSION``, this device's health check of that version fails as a
version that does not run on some hardware would (a kernel missing from its runtime, an
accelerator delegate that answers wrong): ``edge.runtime.health_check`` raises
``HealthCheckError`` for it, and every other version is checked for real.  The fleet test
(test_fleet_agents.py) runs it as real processes; production code has no such switch.
"""

from __future__ import annotations

import sys

from bentoedge.bentos.errors import HealthCheckError
from bentoedge.cli import cli
from bentoedge.edge import runtime


def main(argv: list[str]) -> int:
    config, faulty = argv[0], (argv[1] if len(argv) > 1 else "")
    if faulty:
        real = runtime.health_check

        def health_check(model, sealed, keyring):  # type: ignore[no-untyped-def]
            if sealed.manifest.version == faulty:
                raise HealthCheckError(f"{sealed.manifest.tag}: golden sample 1 is off on this device's runtime")
            return real(model, sealed, keyring)

        runtime.health_check = health_check  # load_and_check imports it from the module at each call
    cli.main(["agent", "run", "--config", config], prog_name="bentoedge", standalone_mode=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
