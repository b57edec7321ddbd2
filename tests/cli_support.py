"""Running the real ``bentoedge`` command in a child process, and reading its one-line refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping


def run_cli(*args: str, env: Mapping[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m bentoedge ARGS`` with the test session's environment (or ``env``)."""
    full = dict(os.environ if env is None else env, BENTOML_DO_NOT_TRACK="true")
    return subprocess.run([sys.executable, "-m", "bentoedge", *args], capture_output=True, text=True,
                          timeout=timeout, env=full)


def one_error(res: subprocess.CompletedProcess[str]) -> str:
    """The one ``error:`` line of a refused command (exit 1 or 2, no traceback), asserted as such."""
    out = res.stdout + res.stderr
    assert res.returncode in (1, 2) and "Traceback" not in out, out[-2000:]
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out[-2000:]
    return errors[0]
