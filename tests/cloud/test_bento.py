"""`bentoml build` of the cloud service: the sealed model is a dependency, the GPU image is CUDA."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from service_support import TinySealed

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def wheel_path(bentofile: str) -> Path:
    return ROOT / yaml.safe_load((ROOT / bentofile).read_text())["python"]["wheels"][0]


def build(bentofile: str, tag: str) -> Path:
    # The Bento installs bentoedge from its wheel, so the wheel must exist first (dist/ is ignored).
    wheel = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(ROOT / "dist"), str(ROOT)],
                           capture_output=True, text=True, timeout=300)
    assert wheel.returncode == 0, wheel.stderr[-2000:]
    assert wheel_path(bentofile).is_file(), "the bentofile names a wheel that `pip wheel` did not make"
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
    # bentoedge travels as its wheel, not as raw source folders
    assert (bento / "env" / "python" / "wheels" / wheel_path("bentofile-gpu.yaml").name).is_file()
    src = bento / "src"
    assert not any(p.suffix == ".py" for p in src.rglob("*")), sorted(str(p) for p in src.rglob("*"))
    # the model travels encrypted: the Bento holds ciphertext only
    model_files = [p.name for p in (Path(os.environ["BENTOML_HOME"]) / "models").rglob("*.enc")]
    assert model_files and not list(bento.rglob("*.onnx"))


def test_cpu_bentofile_matches_the_gpu_one_but_for_the_runtime() -> None:
    cpu = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    gpu = yaml.safe_load((ROOT / "bentofile-gpu.yaml").read_text())
    assert cpu["service"] == gpu["service"] == "bentoedge.cloud.service:SealedService"
    assert cpu["include"] == gpu["include"] and cpu["python"]["wheels"] == gpu["python"]["wheels"]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert cpu["python"]["wheels"] == [f"dist/bentoedge-{version}-py3-none-any.whl"]
    assert any(p.startswith("onnxruntime>") for p in cpu["python"]["packages"])
    assert any(p.startswith("onnxruntime-gpu") for p in gpu["python"]["packages"])
