"""The gate's options on the command line: no validation data refuses in one line, or gates on
``--synthetic-validation`` ranges that the manifest (and ``inspect``) mark as not a real
accuracy figure; ``--budget`` states an output's metric, and a bad one is refused in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cli_support import one_error, run_cli

from bentoedge.bentos.datasets import parse_ranges, synthetic_inputs
from bentoedge.bentos.errors import DataError
from bentoedge.bentos.manifest import Signature, TensorSpec

SIG = Signature(
    inputs=(TensorSpec("image", "float32", (None, 4)), TensorSpec("ids", "int64", (None, 2))),
    outputs=(TensorSpec("y", "float32", (None, 3)),),
)


def test_one_range_for_every_input_or_one_per_name() -> None:
    assert parse_ranges("0:1", SIG) == {"image": (0.0, 1.0), "ids": (0.0, 1.0)}
    assert parse_ranges("image=-1:1, ids=0:9", SIG) == {"image": (-1.0, 1.0), "ids": (0.0, 9.0)}
    assert parse_ranges("ids=3:5,0:255", SIG) == {"image": (0.0, 255.0), "ids": (3.0, 5.0)}


@pytest.mark.parametrize(("spec", "words"), [
    ("", "needs a range"),
    ("1:0", "LO <= HI"),
    ("a:b", "not LO:HI"),
    ("0-1", "not LO:HI"),
    ("inf:1", "not LO:HI"),
    ("mask=0:1,0:1", "'mask', which is not an input"),
    ("image=0:1", "no range for input 'ids'"),
])
def test_bad_ranges_are_named(spec: str, words: str) -> None:
    with pytest.raises(DataError, match=words.replace("(", r"\(")):
        parse_ranges(spec, SIG)


def test_random_inputs_stay_in_their_ranges_and_dtypes() -> None:
    arrays = synthetic_inputs(SIG, 64, {"image": (-2.0, -1.0), "ids": (3.0, 5.0)})
    assert arrays["image"].dtype == np.float32 and arrays["image"].shape == (64, 4)
    assert arrays["image"].min() >= -2.0 and arrays["image"].max() <= -1.0
    assert arrays["ids"].dtype == np.int64 and set(np.unique(arrays["ids"])) == {3, 4, 5}
    with pytest.raises(DataError, match="holds no integer"):
        synthetic_inputs(SIG, 4, {"image": (0.0, 1.0), "ids": (0.2, 0.8)})


@pytest.mark.slow
def _sigmoid_model(tmp_path: Path) -> Path:
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    h = onnx.helper
    f32 = onnx.TensorProto.FLOAT
    graph = h.make_graph([h.make_node("Sigmoid", ["x"], ["y"])], "g",
                         [h.make_tensor_value_info("x", f32, ["N", 3])],
                         [h.make_tensor_value_info("y", f32, ["N", 3])])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    src = tmp_path / "sig.onnx"
    onnx.save(model, str(src))
    return src


@pytest.mark.slow
def test_build_without_data_refuses_then_gates_on_stated_ranges(keys_home: Path, tmp_path: Path) -> None:
    src = _sigmoid_model(tmp_path)
    base = ["build", str(src), "--name", "synth", "--edge", "none", "--cloud", "fp32"]

    error = one_error(run_cli(*base))
    assert "--validation F.npz" in error and "--synthetic-validation" in error
    assert run_cli("inspect", "synth").returncode != 0  # nothing stored

    built = run_cli(*base, "--synthetic-validation", "-3:3")
    assert built.returncode == 0, (built.stdout + built.stderr)[-2000:]
    assert "not a real accuracy figure" in built.stdout

    from bentoedge.bentos.store import ModelStore

    extra = ModelStore().get("synth").manifest.extra
    assert extra["synthetic_validation"]["ranges"] == {"x": [-3.0, 3.0]}
    inspected = run_cli("inspect", "synth")
    assert inspected.returncode == 0 and "not a real accuracy figure" in inspected.stdout


@pytest.mark.slow
def test_stated_budgets_gate_and_bad_ones_are_one_line(keys_home: Path, tmp_path: Path) -> None:
    src = _sigmoid_model(tmp_path)
    base = ["build", str(src), "--name", "budgeted", "--edge", "none", "--cloud", "int8",
            "--synthetic-validation", "-3:3"]
    assert "'z', which is not an output; the outputs are y" in one_error(run_cli(*base, "--budget", "z=cosine:0.9"))
    assert "does not fit output 'y'" in one_error(run_cli(*base, "--budget", "y=box_iou:0.9"))
    # int8 weights on a weightless graph change nothing: a zero error budget holds exactly
    built = run_cli(*base, "--budget", "y=max_abs_error:0", "--budget", "y=cosine:0.999")
    assert built.returncode == 0, (built.stdout + built.stderr)[-2000:]

    from bentoedge.bentos.store import ModelStore

    rows = ModelStore().get("budgeted").manifest.quality
    gated = [(r["metric"], r["bound"], r["budget"]) for r in rows if r["bound"] is not None]
    assert gated == [("finite", "min", 1.0), ("max_abs_error", "max", 0.0), ("cosine", "min", 0.999)]
