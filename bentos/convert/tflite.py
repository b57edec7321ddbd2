"""The edge artifact: a source converted to TFLite at one precision, as bytes in memory.

``to_tflite`` drives TensorFlow's TFLiteConverter: fp32, fp16 (float16 weights),
dynamic (int8 weights, float compute) or int8 (integer kernels, calibrated on
representative inputs), always with float32 I/O so the API and the cloud twin take the
same floats.  A ``.tflite`` source passes through unchanged at its own precision; an
ONNX source is first made into a SavedModel by onnx2tf in its own interpreter
(``convert.onnx_to_tflite``), with every dynamic input dimension fixed from ``example``
(the validation data), and then converted here like any other.

Names: a Keras model is first saved as a SavedModel with one serving signature that
returns a dict of named outputs (``savedmodel_path``), so ``from_saved_model`` keeps the
manifest's names (``from_keras_model`` would call them ``output_0``).  The SavedModel
goes in the build's private workdir; the ONNX converter reuses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bentoedge.bentos.convert.common import first_line, named, tf
from bentoedge.bentos.convert.onnx_to_tflite import onnx_savedmodel
from bentoedge.bentos.convert.sources import Source
from bentoedge.bentos.errors import ConversionError, DataError
from bentoedge.bentos.manifest import Signature

EDGE_PRECISIONS = ("int8", "fp16", "dynamic", "fp32")
#: Calibration samples fed to a converter; more adds build time, not accuracy.
MAX_CALIBRATION = 256


def to_tflite(src: Source, precision: str, calibration: Mapping[str, np.ndarray] | None, workdir: Path,
              example: Mapping[str, np.ndarray] | None = None) -> bytes:
    """The edge artifact at ``precision``, with float32 I/O and the manifest's names.

    ``example`` (inputs by name, samples first) fixes an ONNX source's dynamic dimensions;
    without it the calibration data does.
    """
    if precision not in EDGE_PRECISIONS:
        raise ConversionError(f"unknown edge precision {precision!r}: use {', '.join(EDGE_PRECISIONS)} or none")
    if src.kind == "tflite":
        if precision != src.tflite_precision:
            raise ConversionError(f"{src.path.name} is already a {src.tflite_precision} TFLite model and cannot "
                                  f"be re-quantized; pass --edge {src.tflite_precision}")
        return bytes(src.handle)
    if precision == "int8" and not calibration:
        raise ConversionError("--edge int8 needs --calibration F.npz (representative inputs); "
                              "or pick --edge dynamic, which needs none")
    keys = [t.name for t in src.signature.inputs]
    shapes: list[tuple[int, ...]] | None = None
    if src.kind == "onnx":
        made = onnx_savedmodel(src, workdir, example if example is not None else calibration)
        saved, keys, shapes = made.path, list(made.keys), list(made.shapes)
    else:
        saved = savedmodel_path(src, workdir)
    tf_mod = tf()
    # A SavedModel source converts the signature the build picked; our own exports are serving_default.
    key = (src.signature_key or "serving_default") if src.kind == "savedmodel" else "serving_default"
    conv = tf_mod.lite.TFLiteConverter.from_saved_model(str(saved), signature_keys=[key])
    if precision in ("fp16", "dynamic", "int8"):
        conv.optimizations = [tf_mod.lite.Optimize.DEFAULT]
    if precision == "fp16":
        conv.target_spec.supported_types = [tf_mod.float16]
    if precision == "int8":
        assert calibration is not None
        samples = _calibration_samples(src.signature, calibration, keys, shapes)
        conv.representative_dataset = lambda: iter(samples)
        # Full integer kernels inside; inference_input/output_type stay float32 so the
        # API (and the cloud twin) take the same floats.
        conv.target_spec.supported_ops = [tf_mod.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        return bytes(conv.convert())
    except Exception as exc:
        raise ConversionError(f"TFLite {precision} conversion failed: {first_line(exc)}; "
                              f"try another --edge precision or --edge none") from None


def _calibration_samples(sig: Signature, data: Mapping[str, np.ndarray], keys: list[str],
                         shapes: list[tuple[int, ...]] | None) -> list[dict[str, np.ndarray]]:
    """One-sample feeds by the SavedModel's argument names; checked against fixed shapes if any."""
    n = min(MAX_CALIBRATION, len(next(iter(data.values()))))
    if shapes is not None:
        for t, s in zip(sig.inputs, shapes, strict=True):
            have = tuple(np.shape(data[t.name])[1:])
            if have != tuple(s[1:]):
                raise DataError(f"calibration input {t.name!r} has samples of shape {have}, but the edge "
                                f"artifact is fixed at {tuple(s[1:])} by the validation data; give "
                                "calibration data of the same size")
    return [{k: np.asarray(data[t.name][i:i + 1], dtype=t.dtype) for t, k in zip(sig.inputs, keys, strict=True)}
            for i in range(n)]


def savedmodel_path(src: Source, workdir: Path) -> Path:
    """A SavedModel of the source with a named-output serving signature (made once per build)."""
    if src.kind == "savedmodel":
        return src.path
    out = workdir / "savedmodel"
    if out.exists():
        return out
    tf_mod = tf()
    model, sig = src.handle, src.signature
    specs = [tf_mod.TensorSpec(list(t.shape), t.dtype, name=t.name) for t in sig.inputs]
    out_names = [t.name for t in sig.outputs]

    import keras

    def serve(*args: Any) -> dict[str, Any]:
        return named(model(list(args) if len(args) > 1 else args[0], training=False), out_names)

    # Keras's own exporter freezes its variables the way the TFLite calibrator needs
    # (a tf.Module around the model leaves READ_VARIABLE ops that int8 calibration fails on).
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(name="serving_default", fn=serve, input_signature=specs)
        archive.write_out(str(out), verbose=False)
    except Exception as exc:
        raise ConversionError(f"cannot trace the Keras model for conversion: {first_line(exc)}") from None
    return out
