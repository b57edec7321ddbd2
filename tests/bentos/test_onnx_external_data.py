"""ONNX models that keep their weights in files beside them (external data, as exporters write
large models): read in at build, answers equal to the original file in ONNX Runtime, the
source digest covers the weights, and a missing data file is one line naming it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bentoedge.bentos.errors import SourceError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _external_model(folder: Path, seed: int = 0) -> tuple[Path, np.ndarray]:
    from onnx import helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    w = np.random.default_rng(seed).normal(size=(16, 32)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "ext",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 32])],
                              [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    assert path.stat().st_size < 1024 and (folder / "ext.onnx.data").stat().st_size == w.nbytes
    return path, w


def test_external_weights_are_read_in_and_answer_like_the_original(keys_home: Path, tmp_path: Path) -> None:
    from bentoedge.bentos.build import BuildOptions, build_to_dir
    from bentoedge.bentos.convert import onnx_runner, open_source
    from bentoedge.bentos.keystore import LocalKeys
    from bentoedge.bentos.recipients import Keyring

    path, _ = _external_model(tmp_path / "a")
    x = np.random.default_rng(1).normal(size=(6, 16)).astype(np.float32)
    np.savez(tmp_path / "val.npz", x=x)
    sealed = build_to_dir(BuildOptions(path, "ext", keys_home, validation=tmp_path / "val.npz", edge=(),
                                       cloud=("fp32",)), tmp_path / "out")
    ring = Keyring().add_kek(LocalKeys(keys_home).kek())
    got = onnx_runner(bytes(sealed.decrypt("cloud-fp32", ring)), sealed.manifest.signature)({"x": x})["y"]
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]
    assert np.array_equal(got, want)

    other, _ = _external_model(tmp_path / "b", seed=1)  # same .onnx bytes, other weights
    assert other.read_bytes() == path.read_bytes()
    assert open_source(other).sha256 != open_source(path).sha256


def test_a_missing_data_file_is_named(tmp_path: Path) -> None:
    from bentoedge.bentos.convert import open_source

    path, _ = _external_model(tmp_path)
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(SourceError) as err:
        open_source(path)
    assert "'ext.onnx.data', which is not beside it" in str(err.value) and "\n" not in str(err.value)
