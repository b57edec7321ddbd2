"""PyTorch through ONNX: ``torch.onnx.export(dynamo=True)`` -> ``bentoedge build model.onnx``.

Torch is not a dependency: the export runs under ``$BENTOEDGE_TORCH_PYTHON`` (CI makes a
virtualenv with the CPU build of torch), and the test is skipped, saying so, without it.
The exported model is built for the cloud (fp32 and int8 ONNX), verified, and its answers
through the cloud service's loader are compared with torch's own on the same inputs.  With
onnx2tf set up (``$BENTOEDGE_ONNX2TF_PYTHON``; CI's onnx2tf stage) the edge build converts it
to TFLite and the device's loader on LiteRT answers like torch; without it, the edge build is
refused in one line naming ``bentoedge setup onnx2tf``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("bentoml")
pytestmark = pytest.mark.slow

TORCH_PYTHON = os.environ.get("BENTOEDGE_TORCH_PYTHON")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bentoedge", *args], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, BENTOML_DO_NOT_TRACK="true"))


@pytest.mark.skipif(not TORCH_PYTHON, reason="set BENTOEDGE_TORCH_PYTHON to an interpreter with torch (CI does)")
def test_a_pytorch_export_serves_like_torch(keys_home: Path, tmp_path: Path) -> None:
    from bentoedge.bentos.store import ModelStore
    from bentoedge.cloud.service_core import CloudSettings
    from bentoedge.cloud.service_model import open_cloud_model

    assert TORCH_PYTHON is not None
    export = subprocess.run([TORCH_PYTHON, str(Path(__file__).with_name("torch_export.py")), str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert export.returncode == 0, export.stderr[-3000:]
    data = np.load(tmp_path / "data.npz")
    val = tmp_path / "val.npz"
    np.savez(val, image=data["image"])
    model = str(tmp_path / "net.onnx")

    edge = _cli("build", model, "--name", "torchnet-edge", "--validation", str(val), "--edge", "fp32", "--cloud", "none")
    if os.environ.get("BENTOEDGE_ONNX2TF_PYTHON"):
        from bentoedge.bentos.keystore import LocalKeys
        from bentoedge.bentos.recipients import Keyring
        from bentoedge.edge.runtime import health_check, load_edge_model

        assert edge.returncode == 0, (edge.stdout + edge.stderr)[-3000:]
        sealed_edge = ModelStore().get("torchnet-edge")
        ring = Keyring().add_kek(LocalKeys(keys_home).kek())
        device = load_edge_model(sealed_edge, ring)
        assert health_check(device, sealed_edge, ring) > 0
        got = device.predict({"image": data["image"]})["probs"]
        assert got.shape == data["probs"].shape
        assert float(np.max(np.abs(got - data["probs"]))) <= 1e-4, "edge-fp32 on LiteRT vs torch"
    else:
        assert edge.returncode == 2 and "Traceback" not in edge.stderr and "bentoedge setup onnx2tf" in edge.stderr

    built = _cli("build", model, "--name", "torchnet", "--validation", str(val), "--calibration", str(val),
                 "--edge", "none", "--cloud", "fp32", "--cloud", "int8", "--accept-quality")
    assert built.returncode == 0, (built.stdout + built.stderr)[-3000:]
    assert _cli("verify", "torchnet").returncode == 0
    sealed = ModelStore().get("torchnet")
    for artifact, atol in (("cloud-fp32", 1e-5), ("cloud-int8", 5e-2)):
        loaded = open_cloud_model(sealed, CloudSettings(model="torchnet", device="cpu", artifact=artifact))
        got = loaded.model.predict({"image": data["image"]})["probs"]
        assert got.shape == data["probs"].shape
        assert float(np.max(np.abs(got - data["probs"]))) <= atol, artifact
