"""Conversion: open a source model and turn it into TFLite (edge) and ONNX (cloud) bytes.

The package is split by job; this module re-exports the API the build, the CLI, the
benchmarks and the tests use, so they import ``bentoedge.bentos.convert`` only:

- ``sources``: ``open_source`` reads a Keras file, SavedModel, ``.onnx`` or ``.tflite``
  and works out its I/O ``Signature``;
- ``tflite``: ``to_tflite`` makes the edge artifact at a precision (fp32, fp16, dynamic, int8);
- ``onnx_to_tflite``: an ONNX source's SavedModel, made by onnx2tf in an interpreter of its
  own (``onnx_savedmodel``; ``onnx2tf_python`` finds it, ``setup_onnx2tf`` makes it), which
  ``to_tflite`` then converts; ``onnx2tf_worker`` is the script that interpreter runs;
- ``onnx``: ``onnx_fp32``/``to_onnx`` make the cloud artifact (fp32, fp16 surgery, int8);
- ``runners``: ``reference`` runs the source in float for the quality gate, and
  ``tflite_runner``/``onnx_runner`` run artifacts through the serving sides' own
  runtime bindings (``bentos.runtimes``) for the gate and the golden samples;
- ``common``: the private build workdir and the lazy imports the others share.

Artifacts are bytes in memory; converter files live only in ``private_workdir``.
TensorFlow, tf2onnx, onnx and onnxruntime are imported lazily, only for the step that
needs them, so importing this package needs numpy alone.
"""

from __future__ import annotations

from bentoedge.bentos.convert.common import private_workdir
from bentoedge.bentos.convert.onnx import CLOUD_PRECISIONS, onnx_fp16, onnx_fp32, onnx_int8, to_onnx
from bentoedge.bentos.convert.onnx_to_tflite import (
    ONNX2TF_ENV,
    OnnxSavedModel,
    onnx2tf_python,
    onnx_savedmodel,
    setup_onnx2tf,
)
from bentoedge.bentos.convert.runners import (
    CHUNK,
    Arrays,
    Runner,
    onnx_runner,
    reference,
    tflite_runner,
)
from bentoedge.bentos.convert.sources import (
    KINDS,
    Source,
    detect_kind,
    onnx_signature,
    open_source,
    source_sha256,
    tflite_precision,
    tflite_signature,
)
from bentoedge.bentos.convert.tflite import (
    EDGE_PRECISIONS,
    MAX_CALIBRATION,
    savedmodel_path,
    to_tflite,
)

__all__ = [
    "CHUNK",
    "CLOUD_PRECISIONS",
    "EDGE_PRECISIONS",
    "KINDS",
    "MAX_CALIBRATION",
    "ONNX2TF_ENV",
    "OnnxSavedModel",
    "Arrays",
    "Runner",
    "Source",
    "detect_kind",
    "onnx_fp16",
    "onnx_fp32",
    "onnx2tf_python",
    "onnx_int8",
    "onnx_runner",
    "onnx_savedmodel",
    "onnx_signature",
    "open_source",
    "private_workdir",
    "reference",
    "savedmodel_path",
    "setup_onnx2tf",
    "source_sha256",
    "tflite_precision",
    "tflite_runner",
    "tflite_signature",
    "to_onnx",
    "to_tflite",
]
