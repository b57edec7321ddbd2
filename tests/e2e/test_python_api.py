"""The Python API end to end: build a sealed model, load it for the edge and the cloud and
compare both with the raw runtimes on the decrypted artifacts, verify it (and see a tampered
copy refused), publish it to a channel, and check that ``import bentoedge`` stays light."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from service_support import run_onnx
from sync_support import run_tflite

import bentoedge
from bentoedge.bentos.errors import IntegrityError, RequestError, UsageError
from bentoedge.bentos.keystore import LocalKeys
from bentoedge.bentos.recipients import Keyring
from bentoedge.bentos.sealed import SealedModel

pytestmark = pytest.mark.slow  # converts a model


@pytest.fixture(scope="module")
def built(digits_example: dict[str, Path], keys_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pyapi") / "digits-api"
    said: list[str] = []
    manifest = bentoedge.build(digits_example["model"], "digits-api", version="v1", output=out,
                               calibration=digits_example["calibration"], validation=digits_example["validation"],
                               edge=["int8"], cloud=["fp32"], home=keys_home, progress=said.append)
    assert manifest.tag == "digits-api:v1" and {a.id for a in manifest.artifacts if a.is_model} >= {
        "edge-int8", "cloud-fp32"}
    assert said, "the build reports its progress"
    return out


def test_load_predicts_what_the_raw_runtimes_answer(built: Path, digits_example: dict[str, Path],
                                                    keys_home: Path) -> None:
    x = np.load(digits_example["validation"])["x"][:5].astype(np.float32)
    ring = Keyring().add_kek(LocalKeys(keys_home).kek())
    sealed = SealedModel.open(built)
    edge = bentoedge.load(built, target="edge", home=keys_home)
    assert edge.target == "edge" and edge.artifact.id == "edge-int8" and edge.manifest.tag == "digits-api:v1"
    out = edge.predict({"x": x})
    (name,) = out
    np.testing.assert_array_equal(out[name], run_tflite(sealed.decrypt("edge-int8", ring), x))
    np.testing.assert_array_equal(edge.predict(x)[name], out[name])  # one input: a bare array is enough
    cloud = bentoedge.load(str(built), target="cloud", home=keys_home)
    assert cloud.target == "cloud" and cloud.artifact.id == "cloud-fp32"
    np.testing.assert_allclose(cloud.predict({"x": x})[name], run_onnx(sealed.decrypt("cloud-fp32", ring), x),
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(RequestError, match="'x'"):
        edge.predict({"x": np.zeros((2, 3), np.float32)})  # the HTTP API's own check and message
    with pytest.raises(UsageError, match="target 'gpu'"):
        bentoedge.load(built, target="gpu", home=keys_home)  # type: ignore[arg-type]


def test_verify_names_the_signer_and_refuses_a_tampered_copy(built: Path, keys_home: Path, tmp_path: Path) -> None:
    ok = bentoedge.verify(built, home=keys_home)
    assert ok.tag == "digits-api:v1" and ok.artifacts >= 3 and ok.signer_keyid
    bad = tmp_path / "bad"
    shutil.copytree(built, bad)
    enc = next((bad / "artifacts").glob("*edge-int8*"))
    data = bytearray(enc.read_bytes())
    data[-40] ^= 1
    enc.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        bentoedge.verify(bad, home=keys_home)
    with pytest.raises(IntegrityError, match="failed authentication"):
        bentoedge.load(bad, target="edge", home=keys_home)  # a flipped bit never decrypts


def test_publish_puts_the_release_on_a_channel(built: Path, keys_home: Path, tmp_path: Path) -> None:
    from bentoedge.cloud.channel.channel import Channel

    url = (tmp_path / "chan").as_uri()
    Channel.init(url, home=keys_home)
    rel = bentoedge.publish(str(built), url, rollout=25, home=keys_home)
    assert (rel.model, rel.version, rel.rollout) == ("digits-api", "v1", 25)
    with pytest.raises(UsageError, match="rollout 101"):
        bentoedge.publish(str(built), url, rollout=101, home=keys_home)


def test_import_bentoedge_is_light() -> None:
    code = ("import sys, bentoedge; bentoedge.load; bentoedge.Model\n"
            "print(sorted(m for m in ('tensorflow', 'onnxruntime', 'bentoml', 'keras', 'boto3') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
