"""A Bento per sealed model and target (``bentoedge bento``, ``bentoedge containerize``).

The plan for each target is pure and checked case by case; then for real: the Bento of a
sealed model serves it with a plain ``bentoml serve NAME-cpu:VERSION`` (no BENTOEDGE_MODEL:
the Bento's own argument names the model), each target's Dockerfile is what that platform
needs, a worker that will not serve takes the server down in one line instead of restarting,
``bentoml build`` without a model is refused, and ``containerize`` without Docker says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from service_support import TinySealed, free_port, run_onnx

from bentoedge.bentos.errors import UsageError
from bentoedge.bentos.manifest import Manifest
from bentoedge.cloud.bento import LAMBDA_HANDLER, bento_plan, bentoedge_wheel

pytest.importorskip("bentoml")
pytest.importorskip("onnxruntime")


def _manifest(tiny: TinySealed) -> Manifest:
    return Manifest.from_bytes((tiny.path / "manifest.json").read_bytes())


def _env(plan_envs: list[dict[str, str]]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in plan_envs}


def test_each_target_gets_what_its_platform_needs(tiny_sealed: TinySealed) -> None:
    m = _manifest(tiny_sealed)
    reqs = ["onnxruntime>=1.18", "boto3>=1.34"]
    cpu = bento_plan(m, "cpu", "bentoedge-0.1.0-py3-none-any.whl", reqs)
    assert cpu.tag == "tiny-cpu:v1" and cpu.model == "tiny:v1"
    assert cpu.python == {"wheels": ["wheels/bentoedge-0.1.0-py3-none-any.whl"], "packages": reqs}
    assert "BENTOML_PORT" not in _env(cpu.envs) and not cpu.files

    sagemaker = bento_plan(m, "sagemaker", "w.whl", reqs)
    assert _env(sagemaker.envs)["BENTOML_PORT"] == "8080" and sagemaker.tag == "tiny-sagemaker:v1"

    gpu = bento_plan(m, "gpu", "w.whl", reqs)
    assert gpu.docker["base_image"].startswith("nvidia/cuda:12") and "cudnn" in gpu.docker["base_image"]
    assert gpu.python["packages"][0] == "onnxruntime-gpu>=1.18" and _env(gpu.envs)["BENTOEDGE_DEVICE"] == "auto"

    lam = bento_plan(m, "lambda", "w.whl", reqs)
    assert any(p.startswith("awslambdaric") for p in lam.python["packages"])
    assert _env(lam.envs)["BENTOEDGE_MODEL"] == "tiny:v1" and _env(lam.envs)["BENTOEDGE_HOME"].startswith("/tmp")
    template = lam.files[lam.docker["dockerfile_template"]]
    assert '"awslambdaric"' in template and LAMBDA_HANDLER in template and "bento_base_template" in template

    with pytest.raises(UsageError, match="--target 'tpu'"):
        bento_plan(m, "tpu", "w.whl", reqs)


def test_a_model_without_a_cloud_artifact_is_refused(tiny_sealed: TinySealed) -> None:
    from dataclasses import replace

    m = _manifest(tiny_sealed)
    edge_only = replace(m, artifacts=tuple(a for a in m.artifacts if a.target != "cloud"))
    with pytest.raises(UsageError, match="no cloud artifact"):
        bento_plan(edge_only, "cpu", "w.whl", [])


def test_the_wheel_holds_the_running_code_and_a_valid_record(tmp_path: Path) -> None:
    import base64
    import hashlib

    import bentoedge

    wheel = bentoedge_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert {"bentoedge/cloud/service.py", "bentoedge/edge/cli.py", "bentoedge/bentos/manifest.py"} <= names
        assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
        source = (Path(bentoedge.__file__).resolve().parent / "cloud" / "service.py").read_bytes()
        assert zf.read("bentoedge/cloud/service.py") == source
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/RECORD"))
        assert b"Name: bentoedge" in zf.read(f"{info}/METADATA")
        for line in zf.read(f"{info}/RECORD").decode().splitlines():
            name, digest, size = line.split(",")
            if digest:
                data = zf.read(name)
                want = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                assert digest == f"sha256={want}" and int(size) == len(data), name


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bentoedge", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def _bento_dir(tag: str) -> Path:
    name, version = tag.split(":")
    return Path(os.environ["BENTOML_HOME"]) / "bentos" / name / version


@pytest.mark.slow
def test_the_bento_serves_its_model_with_plain_bentoml_serve(tiny_sealed: TinySealed, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "BENTOEDGE_MODEL"}
    env.update(BENTOEDGE_HOME=str(tiny_sealed.home), BENTOML_DO_NOT_TRACK="true", BENTOEDGE_AUTH="off")
    built = _cli("bento", tiny_sealed.tag, env=env)
    assert built.returncode == 0, (built.stdout + built.stderr)[-2000:]
    assert "bentoml serve tiny-cpu:v1" in built.stdout
    info = __import__("yaml").safe_load((_bento_dir("tiny-cpu:v1") / "bento.yaml").read_text())
    assert info["name"] == "tiny-cpu" and info["args"] == {"model": "tiny:v1"}
    assert [m["tag"] for m in info["services"][0]["models"]] == ["tiny:v1"]

    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "tiny-cpu:v1", "--port", str(port)],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        from bentoedge.cloud.serve import stop_server, wait_ready

        wait_ready(f"http://127.0.0.1:{port}", timeout=120, proc=proc, log=log)
        x = np.random.default_rng(5).random((3, 64), dtype=np.float32)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/predict",
                                     data=json.dumps({"inputs": {"x": x.tolist()}}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            doc = json.loads(resp.read())
        assert doc["model"] == {"name": "tiny", "version": "v1"}
        assert np.allclose(doc["outputs"]["probs"], run_onnx(tiny_sealed.onnx_fp32, x), atol=1e-6)
    finally:
        stop_server(proc)

    # A worker that will not serve (no trusted signer here) stops the server, in one line.
    bare = dict(env, BENTOEDGE_HOME=str(tmp_path / "no-keys"))
    # A server that kept restarting its worker would never exit: the timeout would raise here.
    res = subprocess.run([sys.executable, "-m", "bentoml", "serve", "tiny-cpu:v1", "--port", str(free_port())],
                         env=bare, capture_output=True, text=True, timeout=120)
    out = res.stdout + res.stderr
    assert out.count("bentoedge: refusing to serve tiny:v1") == 1 and "Traceback" not in out, out[-3000:]


@pytest.mark.slow
def test_each_targets_dockerfile_and_containerize_without_docker(tiny_sealed: TinySealed) -> None:
    env = dict(os.environ, BENTOEDGE_HOME=str(tiny_sealed.home), BENTOML_DO_NOT_TRACK="true",
               PATH=os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                    if not (Path(p) / "docker").exists()))
    for target in ("sagemaker", "gpu"):
        res = _cli("bento", tiny_sealed.tag, "--target", target, env=env)
        assert res.returncode == 0, (res.stdout + res.stderr)[-2000:]
    sagemaker = (_bento_dir("tiny-sagemaker:v1") / "env" / "docker" / "Dockerfile").read_text()
    assert "BENTOML_PORT=8080" in sagemaker.replace('"', "").replace(" ", "")
    gpu = (_bento_dir("tiny-gpu:v1") / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM nvidia/cuda:12" in gpu
    assert "onnxruntime-gpu" in (_bento_dir("tiny-gpu:v1") / "env" / "python" / "requirements.txt").read_text()

    res = _cli("containerize", tiny_sealed.tag, "--target", "lambda", env=env)
    assert res.returncode == 0, (res.stdout + res.stderr)[-2000:]
    assert "no Docker engine found" in res.stdout and "bentoml containerize tiny-lambda:v1" in res.stdout
    lam = (_bento_dir("tiny-lambda:v1") / "env" / "docker" / "Dockerfile").read_text()
    assert 'ENTRYPOINT [ "python", "-m", "awslambdaric" ]' in lam and LAMBDA_HANDLER in lam
    assert "awslambdaric" in (_bento_dir("tiny-lambda:v1") / "env" / "python" / "requirements.txt").read_text()


@pytest.mark.slow
def test_bentoml_build_without_a_model_is_refused(tmp_path: Path) -> None:
    wheel = bentoedge_wheel(tmp_path / "wheels")
    (tmp_path / "bentofile.yaml").write_text(
        f'service: "bentoedge.cloud.service:SealedService"\npython:\n  wheels:\n    - "wheels/{wheel.name}"\n')
    env = {k: v for k, v in os.environ.items() if k != "BENTOEDGE_MODEL"}
    bentos = Path(os.environ["BENTOML_HOME"]) / "bentos"
    before = sorted(bentos.rglob("bento.yaml")) if bentos.exists() else []
    res = subprocess.run([sys.executable, "-m", "bentoml", "build"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=180)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "a Bento needs its sealed model" in out and "bentoedge bento" in out, out[-2000:]
    assert (sorted(bentos.rglob("bento.yaml")) if bentos.exists() else []) == before  # nothing built
