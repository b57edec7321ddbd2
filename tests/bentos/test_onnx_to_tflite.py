"""ONNX sources to the edge through onnx2tf (``bentos.convert.onnx_to_tflite``).

- Without an onnx2tf interpreter, an edge build of an ONNX source is refused in one line
  naming ``bentoedge setup onnx2tf`` (the real command, in a child process), and the
  cloud-only build of the same file still seals.  These run everywhere.
- With ``$BENTOEDGE_ONNX2TF_PYTHON`` set (CI makes that virtualenv), a real third-party ONNX
  classifier from the zoo (rapidocr's text-direction model, NCHW, dynamic N/H/W) is built for
  the edge at fp32, fp16, dynamic and int8; each edge artifact is decrypted and run by the
  device's own loader on LiteRT and compared with ONNX Runtime on the original file (fp32,
  fp16, dynamic within a stated bound; int8 through the gate's own top-1 figure, which must be
  the device's agreement with ONNX Runtime).  Skipped, saying why, without it.
- The pure parts (shape fixing, signature names, the interpreter lookup, the log hint) and
  the setup command's refusals are checked directly.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from bentoedge.bentos.convert import onnx_to_tflite as o2t
from bentoedge.bentos.errors import ConversionError, DataError, UsageError
from bentoedge.bentos.manifest import Signature, TensorSpec

ONNX2TF_PYTHON = os.environ.get(o2t.ONNX2TF_ENV)
needs_onnx2tf = pytest.mark.skipif(
    not ONNX2TF_PYTHON,
    reason=f"set {o2t.ONNX2TF_ENV} to the python of an onnx2tf=={o2t.ONNX2TF_VERSION} virtualenv "
    "(`bentoedge setup onnx2tf` makes one; CI does)",
)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    child = dict(os.environ if env is None else env, BENTOML_DO_NOT_TRACK="true")
    return subprocess.run(
        [sys.executable, "-m", "bentoedge", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=child,
    )


def _tiny_onnx(path: Path) -> None:
    """An NCHW classifier (Conv, ReLU, global pooling, Softmax) with a dynamic batch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Softmax", ["f"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_an_onnx_edge_build_without_onnx2tf_is_refused_in_one_line(
    keys_home: Path, tmp_path: Path
) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("bentoml")
    model = tmp_path / "tiny.onnx"
    _tiny_onnx(model)
    val = tmp_path / "val.npz"
    np.savez(val, image=np.random.default_rng(0).uniform(0, 1, (6, 3, 8, 8)).astype(np.float32))
    env = {
        k: v for k, v in os.environ.items() if k != o2t.ONNX2TF_ENV
    }  # and a fresh BENTOEDGE_HOME

    res = _cli(
        "build",
        str(model),
        "--name",
        "tiny-edge",
        "--validation",
        str(val),
        "--edge",
        "fp32",
        "--cloud",
        "none",
        env=env,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 2, out[-2000:]
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out[-2000:]
    for words in ("onnx2tf", "bentoedge setup onnx2tf", o2t.ONNX2TF_ENV, "--edge none"):
        assert words in errors[0], errors[0]
    assert _cli("inspect", "tiny-edge", env=env).returncode != 0  # nothing was stored

    cloud = _cli(
        "build",
        str(model),
        "--name",
        "tiny-cloud",
        "--validation",
        str(val),
        "--edge",
        "none",
        "--cloud",
        "fp32",
        env=env,
    )
    assert cloud.returncode == 0, (cloud.stdout + cloud.stderr)[-2000:]
    assert "sealed tiny-cloud:v1" in cloud.stdout


def test_fixed_shapes_take_batch_one_and_the_data_sizes() -> None:
    sig = Signature(
        (TensorSpec("x", "float32", (None, 3, None, None)), TensorSpec("m", "int64", (1, 5))),
        (TensorSpec("y", "float32", (None, 2)),),
    )
    data = {"x": np.zeros((8, 3, 48, 192), np.float32), "m": np.zeros((8, 5), np.int64)}
    assert o2t.fixed_shapes(sig, data) == [(1, 3, 48, 192), (1, 5)]
    with pytest.raises(DataError, match="'x' has a dynamic dimension 2"):
        o2t.fixed_shapes(sig, {"m": data["m"]})


def test_signature_keys_are_the_manifest_names_when_tensorflow_takes_them_all() -> None:
    assert o2t.signature_keys(["x", "input.1", "a/b"]) == ["x", "input.1", "a/b"]
    assert o2t.signature_keys(["x", "state:0"]) == ["in_000", "in_001"]
    assert o2t.signature_keys(["/leading", "x"]) == ["in_000", "in_001"]
    many = o2t.signature_keys([f"bad:{i}" for i in range(12)])
    assert many == sorted(many)  # their sorted order is their position


def test_the_interpreter_comes_from_the_variable_then_the_setup_folder(tmp_path: Path) -> None:
    with pytest.raises(ConversionError) as info:
        o2t.onnx2tf_python({}, tmp_path)
    assert "bentoedge setup onnx2tf" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConversionError, match="not an executable"):
        o2t.onnx2tf_python({o2t.ONNX2TF_ENV: str(tmp_path / "nope")}, tmp_path)
    assert o2t.onnx2tf_python({o2t.ONNX2TF_ENV: sys.executable}, tmp_path) == Path(sys.executable)
    venv = o2t.tool_dir(tmp_path)
    (venv / "bin").mkdir(parents=True)
    os.symlink(sys.executable, venv / "bin" / "python")
    with pytest.raises(ConversionError):  # a half-made virtualenv (no ready marker) is not used
        o2t.onnx2tf_python({}, tmp_path)
    (venv / o2t.READY_MARKER).write_text("{}")
    assert o2t.onnx2tf_python({}, tmp_path) == venv / "bin" / "python"


def test_the_log_hint_is_onnx2tf_s_last_error_line() -> None:
    log = "INFO: fine\n\x1b[31mERROR:\x1b[0m The Foo OP is not supported\nTraceback...\nValueError: late\n"
    assert o2t.log_hint(log) == "The Foo OP is not supported"
    assert o2t.log_hint("noise\nRuntimeError: boom\n") == "RuntimeError: boom"
    assert o2t.log_hint("all good\n") is None


def test_setup_refuses_a_broken_interpreter_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        o2t.setup_onnx2tf(tmp_path, str(tmp_path / "no-python"))
    assert "--python" in str(info.value) and "\n" not in str(info.value)
    assert not o2t.tool_dir(tmp_path).exists()


def test_setup_keeps_a_ready_virtualenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bentoedge.bentos import cli

    venv = o2t.tool_dir(tmp_path)
    (venv / "bin").mkdir(parents=True)
    os.symlink(sys.executable, venv / "bin" / "python")
    (venv / o2t.READY_MARKER).write_text("{}")
    monkeypatch.setenv("BENTOEDGE_HOME", str(tmp_path))
    res = CliRunner().invoke(cli.setup, ["onnx2tf"])
    assert res.exit_code == 0, res.output
    assert "already set up" in res.output and str(venv / "bin" / "python") in res.output


# ---- with onnx2tf: a real zoo model on the real LiteRT ----------------------------------------


def _zoo() -> Any:
    return importlib.import_module("conformance.zoo")


#: Largest |edge - onnxruntime| per precision, times max(1, |onnxruntime|), on the device.
EDGE_ATOL = {"edge-fp32": 1e-5, "edge-fp16": 5e-3, "edge-dynamic": 5e-2}


@needs_onnx2tf
@pytest.mark.slow
def test_a_zoo_onnx_classifier_runs_on_litert_like_onnxruntime(
    keys_home: Path, tmp_path: Path
) -> None:
    pytest.importorskip("tensorflow")
    ort = pytest.importorskip("onnxruntime")
    from bentoedge.bentos.build import BuildOptions, build_to_dir
    from bentoedge.bentos.keystore import LocalKeys
    from bentoedge.bentos.recipients import Keyring
    from bentoedge.edge.runtime import load_edge_model

    zoo = _zoo()
    entry = next(m for m in zoo.MODELS if m.id == "text-direction")
    path = zoo.fetch(entry)
    rng = np.random.default_rng(11)
    x = rng.uniform(-1, 1, (6, 3, 48, 192)).astype(np.float32)
    val = tmp_path / "val.npz"
    np.savez(val, x=x)
    lines: list[str] = []
    opts = BuildOptions(
        source=path,
        name="zoo-cls",
        home=keys_home,
        validation=val,
        calibration=val,
        edge=("fp32", "fp16", "dynamic", "int8"),
        cloud=("fp32",),
        accept_quality=True,
    )
    sealed = build_to_dir(opts, tmp_path / "sealed", progress=lines.append)
    assert any("onnx2tf" in line for line in lines), lines  # the progress line for the long step

    m = sealed.manifest
    assert {a.id for a in m.models("edge")} == {
        "edge-fp32",
        "edge-fp16",
        "edge-dynamic",
        "edge-int8",
    }
    rows = {(r["artifact"], r["metric"]): r for r in m.quality}
    for art in EDGE_ATOL:
        assert rows[(art, "top1_agreement")]["passed"], rows
    failed = [r for r in m.quality if not r["passed"]]
    assert bool(m.extra.get("quality_accepted")) == bool(
        failed
    )  # accept_quality sealed only what failed

    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[
        0
    ]
    ring = Keyring().add_kek(LocalKeys(keys_home).kek())
    out_name = m.signature.outputs[0].name
    for art, atol in EDGE_ATOL.items():
        device = load_edge_model(sealed, ring, artifact_id=art)
        assert device.fixed_shapes == {
            "x": (-1, 3, 48, 192)
        }  # NCHW kept; other sizes go to the cloud
        got = device.predict({"x": x})[out_name]
        assert got.shape == want.shape
        err = float(np.max(np.abs(got - want)))
        assert err <= atol * max(1.0, float(np.max(np.abs(want)))), (art, err)
    # int8 is gated, not bounded here: the gate's top-1 figure is the device's own agreement
    # with ONNX Runtime, and it passed exactly when that reaches 1 - max_drop.
    int8 = load_edge_model(sealed, ring, artifact_id="edge-int8").predict({"x": x})[out_name]
    assert int8.shape == want.shape and np.all(np.isfinite(int8))
    agreement = float(np.mean(np.argmax(int8, axis=1) == np.argmax(want, axis=1)))
    row = rows[("edge-int8", "top1_agreement")]
    assert row["value"] == pytest.approx(agreement)
    assert row["passed"] == (agreement >= 1 - opts.max_drop)
