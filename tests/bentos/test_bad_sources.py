"""`bentoedge build` on files it cannot use: one line with the cause and the next step, never a traceback.

Each case is a real file on disk handed to the real command line in a child process (as a
user runs it), with a private BENTOML_HOME.  The test asserts the exit status (1 or 2), that
nothing in the output is a Python traceback, that the error is one line naming the cause, and
that no partial model was left in the store.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("tensorflow")
pytestmark = pytest.mark.slow


def _onnx_model(path: Path, elem_type: int, shape: list[int | str | None], out_type: int | None = None) -> Path:
    """A one-node Identity graph whose input has the given ONNX element type and shape."""
    import onnx
    from onnx import TensorProto, helper

    out_type = elem_type if out_type is None else out_type
    x = helper.make_tensor_value_info("x", elem_type, shape)
    y = helper.make_tensor_value_info("y", out_type, shape)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    del TensorProto
    onnx.save(model, str(path))
    return path


def _float_onnx(path: Path) -> Path:
    from onnx import TensorProto

    return _onnx_model(path, TensorProto.FLOAT, [None, 4])


def _write(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path
    return make


def _string_input(folder: Path) -> Path:
    from onnx import TensorProto

    return _onnx_model(folder / "strings.onnx", TensorProto.STRING, [None, 2])


def _complex_input(folder: Path) -> Path:
    from onnx import TensorProto

    return _onnx_model(folder / "complex.onnx", TensorProto.COMPLEX64, [None, 2])


def _truncated_onnx(folder: Path) -> Path:
    good = _float_onnx(folder / "good.onnx").read_bytes()
    path = folder / "truncated.onnx"
    path.write_bytes(good[: len(good) // 2])
    return path


def _empty_savedmodel(folder: Path) -> Path:
    path = folder / "not_a_savedmodel"
    path.mkdir()
    (path / "variables").mkdir()
    return path


def _data_case(arrays: dict[str, np.ndarray]) -> Callable[[Path], tuple[Path, list[str]]]:
    """A valid float ONNX model with validation data that does not fit it."""
    def make(folder: Path) -> tuple[Path, list[str]]:
        model = _float_onnx(folder / "ok.onnx")
        data = folder / "validation.npz"
        np.savez(data, **arrays)  # type: ignore[arg-type]
        return model, ["--validation", str(data), "--edge", "none"]
    return make


def _corrupt_npz(folder: Path) -> tuple[Path, list[str]]:
    model = _float_onnx(folder / "ok.onnx")
    data = folder / "validation.npz"
    data.write_bytes(b"PK\x03\x04 this is not a zip archive")
    return model, ["--validation", str(data), "--edge", "none"]


FILE_CASES: dict[str, Callable[[Path], Path]] = {
    "empty .onnx": _write("empty.onnx", b""),
    "random bytes .onnx": _write("noise.onnx", os.urandom(4096)),
    "truncated .onnx": _truncated_onnx,
    "random bytes .tflite": _write("noise.tflite", b"TFL3" + os.urandom(2048)),
    "empty .tflite": _write("empty.tflite", b""),
    "text as .h5": _write("model.h5", b"this is a text file, not HDF5\n"),
    "empty .keras": _write("model.keras", b""),
    "unknown extension": _write("model.pt", b"\x80\x02}q\x00."),
    "folder that is no SavedModel": _empty_savedmodel,
    "string input": _string_input,
    "complex input": _complex_input,
}

DATA_CASES: dict[str, Callable[[Path], tuple[Path, list[str]]]] = {
    "validation names an unknown input": _data_case({"z": np.zeros((4, 4), np.float32)}),
    "validation of the wrong shape": _data_case({"x": np.zeros((4, 7), np.float32)}),
    "validation of strings": _data_case({"x": np.array([["a", "b", "c", "d"]])}),
    "corrupt validation .npz": _corrupt_npz,
}


def _build(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, BENTOML_HOME=str(home / "bentoml"), BENTOML_DO_NOT_TRACK="true")
    return subprocess.run([sys.executable, "-m", "bentoedge", "build", *args, "--name", "bad"],
                          capture_output=True, text=True, timeout=300, env=env)


def _assert_refused(res: subprocess.CompletedProcess[str], home: Path) -> None:
    out = res.stdout + res.stderr
    assert res.returncode in (1, 2), out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    errors = [line for line in out.splitlines() if line.lower().startswith("error:")]
    assert len(errors) == 1 and len(errors[0]) > len("error: ") + 10, out[-3000:]
    models = home / "bentoml" / "models"
    assert not models.exists() or not any(models.rglob("manifest.json")), "a partial model was stored"


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_unusable_source_is_one_line(case: str, tmp_path: Path, keys_home: Path) -> None:
    src = FILE_CASES[case](tmp_path)
    res = _build([str(src)], tmp_path)
    _assert_refused(res, tmp_path)


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_validation_data_that_does_not_fit_is_one_line(case: str, tmp_path: Path, keys_home: Path) -> None:
    src, extra = DATA_CASES[case](tmp_path)
    res = _build([str(src), *extra], tmp_path)
    _assert_refused(res, tmp_path)
    if case != "corrupt validation .npz":
        assert "x" in res.stderr or "z" in res.stderr  # the message names the input at fault
