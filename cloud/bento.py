"""A Bento per sealed model, for each place the cloud service runs: ``bentoedge bento``.

``bento_plan`` (pure) says what ``bentoml.bentos.build`` gets for a model and a target:

- ``cpu``: the cloud service on ONNX Runtime, port 3000 (``bentoml serve TAG`` locally, or
  the image ``bentoml containerize`` makes);
- ``gpu``: a CUDA 12 + cuDNN 9 base and ``onnxruntime-gpu`` (the service picks cloud-fp16 on
  CUDA when the image runs with a GPU);
- ``sagemaker``: the cpu image serving on 8080 (``BENTOML_PORT``), where SageMaker sends
  ``GET /ping`` and ``POST /invocations``; BentoML's entrypoint runs ``bentoml serve`` for the
  ``serve`` argument SageMaker starts a container with;
- ``lambda``: the image's entrypoint is the Lambda runtime interface client (``awslambdaric``)
  calling ``bentoedge.cloud.aws_lambda.handler``, the same ``/predict`` contract, with no
  HTTP server in between.

The Bento is named after the model and target (``NAME-TARGET:VERSION``), carries the sealed
model (still encrypted) as its one ``BentoModel`` and records the model as the Bento argument
``model``, which is how the service finds it under ``bentoml serve TAG`` and in a container
alike.  bentoedge itself travels as a wheel of the code that is running (``bentoedge_wheel``).

``build_bento`` is the shell; ``containerize`` runs ``bentoml containerize`` when a Docker
engine is on the PATH and says so when none is.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bentoedge.bentos.errors import UsageError
from bentoedge.bentos.manifest import Manifest

SERVICE = "bentoedge.cloud.service:SealedService"
TARGETS = ("cpu", "gpu", "sagemaker", "lambda")
#: The base image of the gpu target: CUDA 12 and cuDNN 9, what onnxruntime-gpu 1.18+ needs.
CUDA_BASE = "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04"
LAMBDA_HANDLER = "bentoedge.cloud.aws_lambda.handler"
#: A Dockerfile template for the lambda target: BentoML's image, entered through the Lambda
#: runtime interface client instead of ``bentoml serve``.
LAMBDA_TEMPLATE = """{% extends bento_base_template %}
{% block SETUP_BENTO_ENTRYPOINT %}
USER {{ bento__user }}
ENTRYPOINT [ "python", "-m", "awslambdaric" ]
CMD [ "%s" ]
{% endblock %}
""".replace("%s", LAMBDA_HANDLER)


@dataclass(frozen=True)
class BentoPlan:
    """The arguments of ``bentoml.bentos.build`` for one model and target."""

    name: str
    version: str
    target: str
    model: str
    labels: dict[str, str]
    envs: list[dict[str, str]]
    python: dict[str, Any]
    docker: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)  # build-context file name -> text

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version}"


def bento_name(model: str, target: str) -> str:
    return f"{model}-{target}"


def bento_plan(manifest: Manifest, target: str, wheel: str, requirements: list[str]) -> BentoPlan:
    """What to build for ``manifest``'s model on ``target``; ``wheel`` is the bentoedge wheel's
    file name in the build context, ``requirements`` the cloud extra's packages."""
    if target not in TARGETS:
        raise UsageError(f"--target {target!r}: use one of {', '.join(TARGETS)}")
    if not any(a.target == "cloud" and a.is_model for a in manifest.artifacts):
        raise UsageError(f"{manifest.tag} has no cloud artifact to serve; build it with --cloud fp32|fp16|int8")
    packages = list(requirements)
    envs = [{"name": "BENTOML_DO_NOT_TRACK", "value": "true"},
            {"name": "BENTOEDGE_DEVICE", "value": "auto" if target == "gpu" else "cpu"}]
    docker: dict[str, Any] = {"python_version": "3.11"}
    files: dict[str, str] = {}
    if target == "gpu":
        packages = [p.replace("onnxruntime", "onnxruntime-gpu", 1) if p.startswith("onnxruntime") else p
                    for p in packages]
        docker.update(base_image=CUDA_BASE, system_packages=["python3.11", "python3.11-venv", "python3-pip"])
    if target == "sagemaker":
        envs.append({"name": "BENTOML_PORT", "value": "8080"})
    if target == "lambda":
        packages.append("awslambdaric>=2.0")
        # The handler opens the model the Bento carries, and a Lambda file system is read-only
        # but for /tmp.
        envs += [{"name": "BENTOEDGE_MODEL", "value": manifest.tag},
                 {"name": "BENTOEDGE_HOME", "value": "/tmp/bentoedge"}]
        files["Dockerfile.lambda.j2"] = LAMBDA_TEMPLATE
        docker["dockerfile_template"] = "Dockerfile.lambda.j2"
    return BentoPlan(
        name=bento_name(manifest.name, target), version=manifest.version, target=target, model=manifest.tag,
        labels={"project": "bentoedge", "bentoedge-model": manifest.name, "bentoedge-target": target},
        envs=envs, python={"wheels": [f"wheels/{wheel}"], "packages": packages}, docker=docker, files=files)


def cloud_requirements() -> list[str]:
    """The packages the cloud extra adds to bentoedge's own (bentoml aside: BentoML installs
    itself), as the installed distribution declares them."""
    reqs = importlib.metadata.requires("bentoedge") or []
    out = []
    for req in reqs:
        spec, _, marker = req.partition(";")
        if "extra" in marker and ("'cloud'" in marker or '"cloud"' in marker):
            name = spec.strip()
            if not name.lower().startswith("bentoml"):
                out.append(name.replace(" ", ""))
    return out


# ---- the bentoedge wheel ------------------------------------------------------------------------

def bentoedge_wheel(out_dir: Path) -> Path:
    """A wheel of the bentoedge that is running, written into ``out_dir``: the package folder
    as imported (symlinked areas followed, caches left out) and the installed distribution's
    METADATA, so the image runs this very code with the dependencies it declares."""
    import bentoedge

    dist = importlib.metadata.distribution("bentoedge")
    metadata = dist.read_text("METADATA") or dist.read_text("PKG-INFO")  # PKG-INFO: a source checkout's egg-info
    if not metadata:
        raise UsageError("the installed bentoedge has no METADATA to pack into the Bento; reinstall it with pip")
    package = Path(bentoedge.__file__).resolve().parent
    info = f"bentoedge-{dist.version}.dist-info"
    entries: list[tuple[str, bytes]] = []
    for folder, dirs, files in os.walk(package, followlinks=True):  # bentos/, cloud/, edge/ are symlinks
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for file in sorted(files):
            path = Path(folder) / file
            if path.suffix not in (".pyc", ".pyo"):
                entries.append((f"bentoedge/{path.relative_to(package).as_posix()}", path.read_bytes()))
    entries.append((f"{info}/METADATA", metadata.encode()))
    entries.append((f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: bentoedge\nRoot-Is-Purelib: true\n"
                                     b"Tag: py3-none-any\n"))
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / f"bentoedge-{dist.version}-py3-none-any.whl"
    records = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            records.append(f"{name},sha256={digest},{len(data)}")
        records.append(f"{info}/RECORD,,")
        zf.writestr(f"{info}/RECORD", "\n".join(records) + "\n")
    return wheel


# ---- the shell ----------------------------------------------------------------------------------

def build_bento(tag: str, target: str, progress: Callable[[str], None] | None = None) -> tuple[str, Path]:
    """Build the Bento of sealed model ``tag`` for ``target``; its tag and folder."""
    import tempfile

    import bentoml
    from bentoml._internal.bento.build_config import BentoEnvSchema

    from bentoedge.bentos.store import ModelStore

    manifest = ModelStore().get(tag).manifest
    if ":" not in tag:
        tag = manifest.tag
    with tempfile.TemporaryDirectory(prefix="bentoedge-bento-") as tmp:
        ctx = Path(tmp)
        wheel = bentoedge_wheel(ctx / "wheels")
        plan = bento_plan(manifest, target, wheel.name, cloud_requirements())
        for name, text in plan.files.items():
            (ctx / name).write_text(text)
        try:
            bentoml.bentos.get(plan.tag)
            bentoml.bentos.delete(plan.tag)  # a rebuild replaces it: the model version is the Bento's
        except bentoml.exceptions.NotFound:
            pass
        if progress:
            progress(f"building Bento {plan.tag} ({target}) with {manifest.tag}")
        here = os.getcwd()
        os.chdir(ctx)  # BentoML resolves the wheel's path against the working folder, not build_ctx
        try:
            bento = bentoml.bentos.build(
                SERVICE, name=plan.name, version=plan.version, labels=plan.labels, include=[],
                envs=[BentoEnvSchema(name=e["name"], value=e["value"]) for e in plan.envs],
                python=plan.python, docker=plan.docker, models=[plan.model], build_ctx=str(ctx),
                args={"model": plan.model})
        finally:
            os.chdir(here)
    return str(bento.tag), Path(bento.path)


def containerize(bento_tag: str) -> str | None:
    """``bentoml containerize`` the Bento when a Docker engine is here; None when there is none."""
    if shutil.which("docker") is None:
        return None
    res = subprocess.run([sys.executable, "-m", "bentoml", "containerize", bento_tag], capture_output=True,
                         text=True, timeout=3600)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise UsageError(f"bentoml containerize {bento_tag} failed: {last}")
    return bento_tag
