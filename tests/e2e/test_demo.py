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
@pytest.mark.longest
@pytest.mark.timeout(900)  # two whole demos, each under its own 600 s bound, on a busy machine
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
    # It kept to its work folder: no keys in the user's BENTOEDGE_HOME, no models in their store.
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["demo"]
    assert not (tmp_path / "bentoml" / "models").exists() or not any((tmp_path / "bentoml" / "models").iterdir())
    assert "next" in out and "bentoedge serve demo-digits:v2" in out, out[-2000:]
    # every process the demo started is gone
    left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert left.stdout.strip() == ""


# A device-only install, as the demo's own check sees it (the packages are here, but "not found").
BLOCK = """
import importlib.util, sys
real = importlib.util.find_spec
importlib.util.find_spec = lambda n, *a: None if n.split('.')[0] in ('keras', 'tensorflow', 'onnxruntime', 'bentoml') else real(n, *a)
from bentoedge.cli import main
sys.argv = ['bentoedge', 'demo']
main()
"""


def test_demo_on_a_device_only_install_says_what_it_needs(tmp_path: Path) -> None:
    env = {**os.environ, "BENTOEDGE_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "true"}
    res = subprocess.run([sys.executable, "-c", BLOCK], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and "pip install 'bentoedge[all]'" in res.stderr, res.stderr
    assert "keras" in res.stderr and "bentoml" in res.stderr
    assert not (tmp_path / "home").exists()  # it stopped before making anything


def test_every_pause_of_the_demo_shows_a_spinner_naming_it(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from bentoedge.demo import Demo, wait_for

    screen = io.StringIO()
    d = Demo(tmp_path, Console(file=screen, force_terminal=True, width=100), dict(os.environ))
    assert d.cli("--help").returncode == 0
    polls = iter([False, False, True])
    wait_for(lambda: next(polls), 10, "the device to activate v1", console=d.console)
    shown = screen.getvalue()
    assert "bentoedge --help" in shown and "waiting for the device to activate v1" in shown
