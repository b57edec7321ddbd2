"""Sources with several signatures: ``--signature NAME`` picks one, and every artifact runs it.

A SavedModel with two SignatureDefs (``double``: y = 2x, ``negate``: z = -x, different
input and output names, no ``serving_default``) and the TFLite file TensorFlow converts from
both of them.  Without ``--signature`` either is refused in one line naming the choices;
with it, the edge artifact (and the cloud one, from the SavedModel) answers that signature's
function, on the device's own loader too.  A TFLite file cannot give its chosen signature to
the cloud (tf2onnx converts its main graph only): refused in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_support import one_error, run_cli

pytestmark = pytest.mark.slow
X = np.linspace(-2, 2, 12, dtype=np.float32).reshape(4, 3)


@pytest.fixture(scope="module")
def two_signatures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tf = pytest.importorskip("tensorflow")
    folder = tmp_path_factory.mktemp("two-signatures")

    class Two(tf.Module):  # type: ignore[misc]
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="a")])
        def double(self, a: Any) -> dict[str, Any]:
            return {"doubled": 2.0 * a}

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="b")])
        def negate(self, b: Any) -> dict[str, Any]:
            return {"negated": -b}

    module = Two()
    saved = folder / "saved"
    tf.saved_model.save(module, str(saved), signatures={"double": module.double, "negate": module.negate})
    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved), signature_keys=["double", "negate"])
    tflite = folder / "two.tflite"
    tflite.write_bytes(conv.convert())
    for key, name in (("b", X), ("a", X)):
        np.savez(folder / f"val-{key}.npz", **{key: name})
    return {"saved": saved, "tflite": tflite, "val_a": folder / "val-a.npz", "val_b": folder / "val-b.npz"}


def test_without_signature_the_choices_are_named(two_signatures: dict[str, Path], keys_home: Path) -> None:
    for src in (two_signatures["saved"], two_signatures["tflite"]):
        error = one_error(run_cli("build", str(src), "--name", "two", "--validation", str(two_signatures["val_a"]),
                                "--edge", "fp32", "--cloud", "none"))
        assert "2 signatures ('double', 'negate')" in error and "--signature NAME" in error
    error = one_error(run_cli("build", str(two_signatures["tflite"]), "--name", "two", "--signature", "square",
                            "--validation", str(two_signatures["val_a"]), "--edge", "fp32", "--cloud", "none"))
    assert "no signature 'square'" in error and "'double', 'negate'" in error
    assert run_cli("inspect", "two").returncode != 0  # nothing stored


def _edge_answer(sealed: Any, home: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    from bentoedge.bentos.keystore import LocalKeys
    from bentoedge.bentos.recipients import Keyring
    from bentoedge.edge.runtime import health_check, load_edge_model

    ring = Keyring().add_kek(LocalKeys(home).kek())
    model = load_edge_model(sealed, ring)
    health_check(model, sealed, ring)
    return dict(model.predict({"b": x}))


def test_a_savedmodel_signature_reaches_both_targets(two_signatures: dict[str, Path], keys_home: Path,
                                                     tmp_path: Path) -> None:
    from bentoedge.bentos.build import BuildOptions, build_to_dir
    from bentoedge.bentos.convert import onnx_runner
    from bentoedge.bentos.keystore import LocalKeys
    from bentoedge.bentos.recipients import Keyring

    opts = BuildOptions(two_signatures["saved"], "neg", keys_home, validation=two_signatures["val_b"],
                        edge=("fp32",), cloud=("fp32",), signature="negate")
    sealed = build_to_dir(opts, tmp_path / "out")
    sig = sealed.manifest.signature
    assert [t.name for t in sig.inputs] == ["b"] and [t.name for t in sig.outputs] == ["negated"]
    assert _edge_answer(sealed, keys_home, X)["negated"].tolist() == (-X).tolist()
    ring = Keyring().add_kek(LocalKeys(keys_home).kek())
    cloud = onnx_runner(bytes(sealed.decrypt("cloud-fp32", ring)), sig)({"b": X})
    assert cloud["negated"].tolist() == (-X).tolist()


def test_a_tflite_signature_runs_on_the_device_and_not_in_the_cloud(two_signatures: dict[str, Path],
                                                                      keys_home: Path, tmp_path: Path) -> None:
    from bentoedge.bentos.build import BuildOptions, build_to_dir

    opts = BuildOptions(two_signatures["tflite"], "neg", keys_home, validation=two_signatures["val_b"],
                        edge=("fp32",), cloud=(), signature="negate")
    sealed = build_to_dir(opts, tmp_path / "out")
    art = sealed.manifest.artifact("edge-fp32")
    assert art.signature == "negate"  # signed into the manifest: the device runs this one
    assert _edge_answer(sealed, keys_home, X)["negated"].tolist() == (-X).tolist()

    error = one_error(run_cli("build", str(two_signatures["tflite"]), "--name", "negc", "--signature", "negate",
                            "--validation", str(two_signatures["val_b"]), "--edge", "none", "--cloud", "fp32"))
    assert "tf2onnx converts only" in error and "--cloud none" in error


def test_signature_on_a_one_graph_source_is_refused(tmp_path: Path, keys_home: Path) -> None:
    src = tmp_path / "m.onnx"
    src.write_bytes(b"not read")
    error = one_error(run_cli("build", str(src), "--name", "x", "--signature", "main"))
    assert "has one graph: drop --signature" in error
