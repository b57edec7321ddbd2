"""A model's API holds across versions unless the change is declared, at every step.

- ``bentoedge build`` of a version whose outputs differ from the store's newest is refused in
  one line naming the change; ``--breaking`` raises the API major and records it;
- ``channel publish`` refuses an undeclared change against the channel's newest release, and
  marks a declared one ``breaking`` in the signed release record;
- a device never swaps in an incompatible version the channel does not mark breaking (its old
  version keeps serving), and takes a declared one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cli_support import one_error, run_cli
from sync_support import make_device, seal_tiny, signer_pub

from bentoedge.bentos.errors import UsageError
from bentoedge.cloud.channel import Channel
from bentoedge.edge.sync import Result

pytestmark = pytest.mark.slow


def _model(path: Path, output: str, dtype: int = 1) -> Path:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    h = onnx.helper
    nodes = [h.make_node("Sigmoid", ["x"], [output] if dtype == 1 else ["s"])]
    if dtype != 1:
        nodes.append(h.make_node("Cast", ["s"], [output], to=dtype))
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", 1, ["N", 3])],
                         [h.make_tensor_value_info(output, dtype, ["N", 3])])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_build_refuses_an_undeclared_api_change(keys_home: Path, tmp_path: Path) -> None:
    from bentoedge.bentos.store import ModelStore

    base = ["--name", "iris", "--edge", "none", "--cloud", "fp32", "--synthetic-validation", "0:1"]
    assert run_cli("build", str(_model(tmp_path / "v1.onnx", "species")), *base).returncode == 0
    assert run_cli("build", str(_model(tmp_path / "v1b.onnx", "species")), *base).returncode == 0  # same API: fine

    for path, words in ((_model(tmp_path / "v2.onnx", "output_0"), "output 'species' is gone"),
                        (_model(tmp_path / "v3.onnx", "species", dtype=11), "changed dtype float32 -> float64")):
        res = run_cli("build", str(path), *base)
        error = one_error(res)
        assert res.returncode == 2 and "would change the API of iris:v2" in error and words in error
        assert "--breaking" in error and "API major 1 -> 2" in error
    assert not ModelStore().exists("iris", "v3")  # nothing stored

    declared = run_cli("build", str(tmp_path / "v2.onnx"), *base, "--breaking")
    assert declared.returncode == 0, (declared.stdout + declared.stderr)[-2000:]
    extra = ModelStore().get("iris").manifest.extra
    assert extra["api_major"] == 2 and extra["breaking_from"] == "iris:v2"


def test_publish_and_the_device_hold_the_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    ch = Channel.init((tmp_path / "chan").as_uri(), home=home)
    dev = make_device(tmp_path / "dev", ch.url, ch.root_bytes(), signer_pub(home))
    ch.enroll("dev-1", dev.pub_pem)
    ch.publish(seal_tiny(tmp_path / "s1", home, "v1", 1))
    with dev.agent() as agent:
        assert agent.sync_once().result is Result.UPDATED

        renamed = seal_tiny(tmp_path / "s2", home, "v2", 2, output="scores")
        with pytest.raises(UsageError, match="changes the API of tiny:v1.*output 'y' is gone.*--breaking"):
            ch.publish(renamed)
        # A publisher that skipped the check (an older one, or anyone who can write the channel
        # with the signing key): the device still refuses, and v1 keeps serving.
        with monkeypatch.context() as m:
            m.setattr(Channel, "_api_change", lambda self, md, sealed, breaking: False)
            assert not ch.publish(renamed).breaking
        refused = agent.sync_once()
        assert refused.result is Result.REFUSED and "does not mark it breaking" in refused.reason
        assert "output 'y' is gone" in refused.reason
        served = dev.active.get()
        assert served is not None and served.version == "v1"
        assert served.predict({"x": np.zeros((1, 4), np.float32)})["y"].shape == (1, 3)

        # Declared at build (API major 2, signed in the manifest): the device takes it over v1.
        declared = seal_tiny(tmp_path / "s3", home, "v3", 3, output="scores", extra={"api_major": 2})
        ch.publish(declared)
        assert agent.sync_once().result is Result.UPDATED
        served = dev.active.get()
        assert served is not None and served.version == "v3"

        # Declared at publish instead, for a version built without it.
        again = seal_tiny(tmp_path / "s4", home, "v4", 4, output="y")
        with pytest.raises(UsageError, match="output 'scores' is gone"):
            ch.publish(again)
        assert ch.publish(again, breaking=True).breaking
        assert agent.sync_once().result is Result.UPDATED
