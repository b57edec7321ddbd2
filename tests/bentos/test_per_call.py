"""Models with a scalar (rank-0) input: their data files hold one call, and they build and serve.

A sample rate beside a recurrent state (Silero VAD in the zoo) is the real case; here a
small ONNX graph of the same form, made with onnx.helper: ``y = x * gain`` with ``x`` of
shape [N, 3], ``gain`` a float scalar, and a state [2, N, 4] carried to ``state_out``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bentoedge.bentos.datasets import check_arrays
from bentoedge.bentos.errors import DataError
from bentoedge.bentos.manifest import Signature, TensorSpec

SIG = Signature(
    inputs=(TensorSpec("x", "float32", (None, 3)), TensorSpec("state", "float32", (2, None, 4)),
            TensorSpec("gain", "float32", ())),
    outputs=(TensorSpec("y", "float32", (None, 3)), TensorSpec("state_out", "float32", (2, None, 4))),
)


def one_call(n: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {"x": rng.normal(size=(n, 3)).astype(np.float32),
            "state": rng.normal(size=(2, n, 4)).astype(np.float32),
            "gain": np.array(2.5, np.float32)}


def test_a_scalar_input_makes_the_model_per_call() -> None:
    assert SIG.per_call
    assert not Signature(SIG.inputs[:2], SIG.outputs).per_call


def test_per_call_data_is_one_call_exactly_as_the_model_takes_it() -> None:
    inputs, labels = check_arrays(one_call(), SIG, "validation")
    assert labels is None
    assert inputs["gain"].shape == () and inputs["state"].shape == (2, 5, 4)


@pytest.mark.parametrize(("change", "words"), [
    ({"state": np.zeros((3, 5, 4), np.float32)}, ("'state'", "(2, N, 4)", "one call")),
    ({"gain": np.zeros((5,), np.float32)}, ("'gain'", "()", "scalar")),
    ({"labels": np.zeros(5, np.int64)}, ("labels", "'gain' is a scalar")),
    ({"x": np.array(["a", "b"])}, ("'x'", "dtype")),
])
def test_per_call_data_that_does_not_fit_is_named(change: dict[str, np.ndarray], words: tuple[str, ...]) -> None:
    with pytest.raises(DataError) as err:
        check_arrays({**one_call(), **change}, SIG, "validation")
    for word in words:
        assert word in str(err.value)


def test_a_missing_array_is_named() -> None:
    data = one_call()
    del data["state"]
    with pytest.raises(DataError, match="no array for input 'state'"):
        check_arrays(data, SIG, "validation")


def _scalar_model(path: Path) -> Path:
    onnx = pytest.importorskip("onnx")
    h = onnx.helper
    f32 = onnx.TensorProto.FLOAT
    graph = h.make_graph(
        [h.make_node("Mul", ["x", "gain"], ["y"]),
         h.make_node("Add", ["state", "one"], ["state_out"])],
        "per_call",
        [h.make_tensor_value_info("x", f32, ["N", 3]), h.make_tensor_value_info("state", f32, [2, "N", 4]),
         h.make_tensor_value_info("gain", f32, [])],
        [h.make_tensor_value_info("y", f32, ["N", 3]), h.make_tensor_value_info("state_out", f32, [2, "N", 4])],
        initializer=[h.make_tensor("one", f32, [], [1.0])],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_per_call_onnx_model_builds_gates_and_answers(keys_home: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from bentoedge.bentos.api import parse_request
    from bentoedge.bentos.build import BuildOptions, build_to_dir
    from bentoedge.bentos.convert import onnx_runner
    from bentoedge.bentos.golden import Golden
    from bentoedge.bentos.health import check
    from bentoedge.bentos.keystore import LocalKeys
    from bentoedge.bentos.recipients import Keyring

    data = tmp_path / "call.npz"
    np.savez(data, **one_call())  # type: ignore[arg-type]
    opts = BuildOptions(source=_scalar_model(tmp_path / "m.onnx"), name="percall", home=keys_home,
                        validation=data, edge=(), cloud=("fp32",))
    sealed = build_to_dir(opts, tmp_path / "out")
    sig = sealed.manifest.signature
    assert sig.per_call and [t.shape for t in sig.inputs] == [(None, 3), (2, None, 4), ()]
    assert {r["output"] for r in sealed.manifest.quality} == {"y", "state_out"}

    ring = Keyring().add_kek(LocalKeys(keys_home).kek())
    golden = Golden.from_bytes(sealed.decrypt(sealed.manifest.golden["cloud"], ring))
    assert golden.inputs["gain"].shape == () and golden.inputs["x"].shape == (5, 3)  # the whole call

    run = onnx_runner(bytes(sealed.decrypt("cloud-fp32", ring)), sig)
    assert check(sealed, sealed.manifest.artifact("cloud-fp32"), run, ring) == 5

    # The API takes the scalar as a JSON number and the answer is the model's own.
    body = b'{"inputs": {"x": [[1, 2, 3]], "state": [[[0, 0, 0, 0]], [[1, 1, 1, 1]]], "gain": 0.5}}'
    arrays = parse_request(body, "application/json", sig)
    out = run(arrays)
    assert out["y"].tolist() == [[0.5, 1.0, 1.5]]
    assert out["state_out"][:, 0, 0].tolist() == [1.0, 2.0]
