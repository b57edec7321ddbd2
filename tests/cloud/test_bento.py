"""`bentoml build` of the cloud service: the sealed model is a dependency, the GPU image is CUDA."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from service_support import TinySealed

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def build(bentofile: str, tag: str) -> Path:
    env = dict(os.environ, BENTOEDGE_MODEL=tag, BENTOML_DO_NOT_TRACK="true")
    out = subprocess.run([sys.executable, "-m", "bentoml", "build", "-f", bentofile, "--output", "tag"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    bento_tag = out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = bento_tag.split(":")
    return Path(os.environ["BENTOML_HOME"]) / "bentos" / name / version


def test_gpu_bento_pins_the_sealed_model_and_builds_a_cuda_image(tiny_sealed: TinySealed) -> None:
    bento = build("bentofile-gpu.yaml", tiny_sealed.tag)
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert info["service"] == "bentoedge.cloud.service:SealedService"
    assert [m["tag"] for m in info["services"][0]["models"]] == [tiny_sealed.tag]
    routes = info["schema"]["paths"]
    assert {"/predict", "/invocations", "/ping"} <= set(routes)
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM nvidia/cuda:" in dockerfile
    assert "BENTOML_DO_NOT_TRACK" in dockerfile
    reqs = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "onnxruntime-gpu" in reqs and "boto3" in reqs
    src = bento / "src"
    assert (src / "cloud" / "service.py").is_file() and (src / "bentos" / "sealed.py").is_file()
    assert not (src / "tests").exists() and not (src / "cloud" / "deploy").exists()
    # the model travels encrypted: the Bento holds ciphertext only
    model_files = [p.name for p in (Path(os.environ["BENTOML_HOME"]) / "models").rglob("*.enc")]
    assert model_files and not list(bento.rglob("*.onnx"))


def test_cpu_bentofile_matches_the_gpu_one_but_for_the_runtime() -> None:
    cpu = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    gpu = yaml.safe_load((ROOT / "bentofile-gpu.yaml").read_text())
    assert cpu["service"] == gpu["service"] and cpu["include"] == gpu["include"]
    assert any(p.startswith("onnxruntime>") for p in cpu["python"]["packages"])
    assert any(p.startswith("onnxruntime-gpu") for p in gpu["python"]["packages"])
