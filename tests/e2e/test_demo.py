"""`bentoedge demo` runs the whole story non-interactively, and its exit code says whether it worked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("bentoml")
pytest.importorskip("tensorflow")


@pytest.mark.slow
def test_demo_runs_end_to_end_and_again_over_its_leftovers(tmp_path: Path) -> None:
    env = {**os.environ, "BENTOEDGE_HOME": str(tmp_path / "home"), "BENTOML_HOME": str(tmp_path / "bentoml"),
           "BENTOML_DO_NOT_TRACK": "true", "COLUMNS": "120"}
    for run in (1, 2):  # the second run must find and clean the first run's model, channel and device
        res = subprocess.run([sys.executable, "-m", "bentoedge", "demo"], env=env, capture_output=True,
                             text=True, timeout=600, stdin=subprocess.DEVNULL)
        out = res.stdout + res.stderr
        assert res.returncode == 0, f"run {run}:\n{out[-4000:]}"
        assert "every step succeeded" in out
        for fact in ("served_by=edge", "reason: 'batch_limit'", "0 failed", "the device refused v3",
                     "still serves v2", "circuit breaker: open"):
            assert fact in out.replace("\n", " "), (run, fact)
    # every process the demo started is gone
    left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert left.stdout.strip() == ""
