"""Per-input statistics, fixed bins, and the PSI against the build's reference statistics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bentoedge.bentos import drift
from bentoedge.bentos.errors import DataError, FormatError

floats = st.floats(-1e6, 1e6, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(floats, min_size=1, max_size=40), st.lists(floats, min_size=0, max_size=40))
def test_merging_batches_equals_one_pass(a: list[float], b: list[float]) -> None:
    bins = drift.Bins(-10.0, 10.0, 8)
    one = drift.accumulate(drift.empty(bins), a + b)
    two = drift.accumulate(drift.accumulate(drift.empty(bins), a), b)
    assert one.count == two.count == len(a) + len(b)
    assert one.histogram == two.histogram and sum(one.histogram) == one.finite
    assert one.min == min(a + b) and one.max == max(a + b)
    assert math.isclose(one.mean, float(np.mean(a + b)), rel_tol=1e-9, abs_tol=1e-6)
    assert math.isclose(two.std, float(np.std(a + b)), rel_tol=1e-6, abs_tol=1e-3)


def test_nan_and_inf_are_counted_apart_and_bins_include_both_ends() -> None:
    s = drift.accumulate(drift.empty(drift.Bins(0.0, 1.0, 2)), [float("nan"), float("inf"), -5.0, 0.0, 0.5, 1.0, 7.0])
    assert (s.count, s.nan, s.inf, s.finite) == (7, 1, 1, 5)
    assert s.histogram == (1, 1, 2, 1)  # under, [0, .5), [.5, 1], over
    assert s.nan_share == pytest.approx(1 / 7) and s.min == -5.0 and s.max == 7.0


def test_reference_and_psi() -> None:
    rng = np.random.default_rng(0)
    ref = drift.reference_stats({"x": rng.normal(0, 1, 5000), "c": np.full(10, 3.0)})
    assert set(ref) == {"c", "x"} and math.isclose(sum(ref["x"]["histogram"]), 1.0)
    assert ref["c"]["bins"] == {"lo": 2.5, "hi": 3.5, "n": drift.DEFAULT_BINS}
    bins = drift.bins_of(ref["x"])
    same = drift.accumulate(drift.empty(bins), rng.normal(0, 1, 5000))
    shifted = drift.accumulate(drift.empty(bins), rng.normal(1.5, 1, 5000))
    assert drift.drift_level(drift.drift_score(same, ref["x"])) == "none"
    assert drift.drift_level(drift.drift_score(shifted, ref["x"])) == "significant"
    assert drift.drift_score(drift.empty(bins), ref["x"]) is None
    with pytest.raises(DataError):
        drift.drift_score(drift.accumulate(drift.empty(drift.Bins(0, 1, 3)), [0.5]), ref["x"])
    with pytest.raises(DataError, match="no finite value"):
        drift.reference_stats({"x": np.array([np.nan])})


@pytest.mark.parametrize("lo,hi,n", [(1.0, 1.0, 4), (0.0, math.inf, 4), (0.0, 1.0, 0), (0.0, 1.0, 65)])
def test_bad_bins_are_refused(lo: float, hi: float, n: int) -> None:
    with pytest.raises(FormatError):
        drift.Bins(lo, hi, n)


def test_a_build_records_its_validation_data_as_the_drift_reference(tmp_path: Path, keys_home: Path) -> None:
    from bentoedge.bentos.build import BuildOptions, build_to_dir

    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    h = onnx.helper
    graph = h.make_graph([h.make_node("Relu", ["x"], ["y"])], "g", [h.make_tensor_value_info("x", 1, ["N", 2])],
                         [h.make_tensor_value_info("y", 1, ["N", 2])])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    x = np.random.default_rng(0).normal(3.0, 2.0, (400, 2)).astype(np.float32)
    np.savez(tmp_path / "val.npz", x=x)
    sealed = build_to_dir(BuildOptions(tmp_path / "m.onnx", "relu", keys_home, validation=tmp_path / "val.npz",
                                       edge=(), cloud=("fp32",)), tmp_path / "out")
    ref = sealed.manifest.extra["reference_stats"]["x"]
    assert ref["count"] == x.size and abs(ref["mean"] - float(x.mean())) < 1e-4
    assert drift.drift_score(drift.accumulate(drift.empty(drift.bins_of(ref)), x), ref) == pytest.approx(0.0, abs=1e-9)
    shifted = drift.accumulate(drift.empty(drift.bins_of(ref)), x + 3.0)
    assert drift.drift_score(shifted, ref) > 0.25  # a real shift scores as one
