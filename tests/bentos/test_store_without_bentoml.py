"""On a device-only install (no BentoML) a command that needs the model store says which extra
to install, instead of an empty list or "no sealed model 'x' in the store"."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'bentoml':
            raise ImportError(f'No module named {name!r}', name=name)
sys.meta_path.insert(0, Block())
from bentoedge.cli import main
sys.argv = ['bentoedge', *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("args", [["list"], ["inspect", "iris:v1"], ["verify", "iris:v1"]])
def test_store_commands_name_the_missing_extra(args: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "BENTOEDGE_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "true"}
    res = subprocess.run([sys.executable, "-c", BLOCK, *args], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and "pip install 'bentoedge[cloud]'" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
