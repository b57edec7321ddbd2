"""`edge` and the pure part of `bentos` import with tensorflow, onnxruntime, bentoml and boto3 blocked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("tensorflow", "onnxruntime", "bentoml", "boto3", "botocore", "onnx", "keras", "tf2onnx")
PURE_BENTOS = ("errors", "manifest", "api_compat", "drift", "fleet_report", "aead", "signing", "recipients", "keystore", "sealed", "golden", "api",
               "quality", "datasets", "store", "convert", "convert.common", "convert.sources", "convert.tflite",
               "convert.onnx", "convert.onnx_to_tflite", "convert.onnx2tf_worker", "convert.runners", "build", "health", "runtimes", "runtimes.litert",
               "runtimes.onnxruntime")

SCRIPT = f"""
import importlib, importlib.abc, pkgutil, sys
BLOCKED = {BLOCKED!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked for this test: {{name}}")
        return None
sys.meta_path.insert(0, Block())
import bentoedge.edge as edge
mods = [m.name for m in pkgutil.walk_packages(edge.__path__, "bentoedge.edge.")]
mods += ["bentoedge.bentos." + m for m in {PURE_BENTOS!r}]
for m in mods:
    importlib.import_module(m)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not leaked, leaked
print("imported", len(mods))
"""


def test_edge_and_pure_bentos_import_without_heavy_packages() -> None:
    res = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("imported")


def test_the_blocker_really_blocks() -> None:
    script = SCRIPT.replace("import bentoedge.edge as edge\n", "import bentoml\nimport bentoedge.edge as edge\n")
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "blocked for this test: bentoml" in res.stderr


def test_nothing_imports_the_folders_by_their_top_level_names() -> None:
    """The folders install as ``bentoedge.*`` only: a ``from edge...`` would pass here and fail installed."""
    import re

    pattern = re.compile(r"^\s*(from|import) (bentos|edge|cloud|examples)\b", re.MULTILINE)
    offenders = [str(p.relative_to(ROOT)) for folder in ("bentoedge", "bentos", "edge", "cloud", "examples", "tests", "bench")
                 for p in (ROOT / folder).rglob("*.py") if pattern.search(p.read_text())]
    assert not offenders


def test_bentos_never_imports_the_device_or_the_cloud() -> None:
    """bentos holds the contracts both sides use; an import the other way would make a cycle."""
    import re

    pattern = re.compile(r"^\s*(from|import) bentoedge\.(edge|cloud)\b", re.MULTILINE)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "bentos").rglob("*.py") if pattern.search(p.read_text())]
    assert not offenders
