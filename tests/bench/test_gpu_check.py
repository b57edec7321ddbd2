"""bench/gpu_check: where onnxruntime offers no CUDA it refuses in one line (exit 2) and writes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_without_cuda_the_gpu_check_refuses_in_one_line_and_writes_nothing() -> None:
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA: bench/gpu_check.sh runs for real here")
    before = (ROOT / "bench" / "results" / "gpu_check.json").exists()
    # By path: the refusal comes before anything of bench/ or bentoedge is imported.
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py")], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    out = res.stdout + res.stderr
    assert res.returncode == 2 and "Traceback" not in out, out
    assert out.strip().splitlines()[-1].startswith("error: onnxruntime offers no CUDAExecutionProvider"), out
    assert (ROOT / "bench" / "results" / "gpu_check.json").exists() == before
    script = subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu_check.sh")], capture_output=True, text=True)
    assert script.returncode == 0, script.stderr
