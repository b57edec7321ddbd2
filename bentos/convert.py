"""Conversion: open a source model and turn it into TFLite (edge) and ONNX (cloud) bytes.

Sources are Keras files (``.keras``, ``.h5``), TensorFlow SavedModel folders, ``.onnx``
and ``.tflite`` files.  ``open_source`` reads one and works out its I/O ``Signature``;
``to_tflite`` and ``to_onnx`` produce one artifact at a given precision, as bytes in
memory; ``reference`` runs the source itself in float, which is what the quality gate
compares every artifact against; ``run_tflite``/``run_onnx`` run an artifact from bytes.

Names: TFLite and ONNX artifacts carry the manifest's input and output names.  A Keras
model is first saved as a SavedModel with one serving signature that returns a dict of
named outputs, so ``from_saved_model`` keeps the names (``from_keras_model`` would call
them ``output_0``); ONNX models are renamed in the graph where a converter chose others.

Converters need files at build time (the SavedModel, ONNX Runtime's quantizer).  They go
in a private 0700 folder (``private_workdir``) that is removed in a ``finally``, so the
build leaves no plaintext model behind; at run time nothing is ever written in the clear.

TensorFlow, tf2onnx, onnx and onnxruntime are imported lazily, only for the step that
needs them, and a missing one is reported with what to install or which flag to pass.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bentoedge.bentos.errors import ConversionError, SourceError
from bentoedge.bentos.manifest import DTYPES, Signature, TensorSpec

EDGE_PRECISIONS = ("int8", "fp16", "dynamic", "fp32")
CLOUD_PRECISIONS = ("fp32", "fp16", "int8")
KINDS = ("keras", "savedmodel", "onnx", "tflite")
#: Calibration samples fed to a converter; more adds build time, not accuracy.
MAX_CALIBRATION = 256
_CHUNK = 256

Arrays = dict[str, np.ndarray]
Runner = Callable[[Mapping[str, np.ndarray]], Arrays]


@contextmanager
def private_workdir(prefix: str = "bentoedge-build-") -> Iterator[Path]:
    """A 0700 temporary folder for converter files, removed whatever happens."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _tf() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import tensorflow as tf
    except ImportError:
        raise ConversionError("this step needs TensorFlow: pip install 'bentoedge[build]'") from None
    return tf


def _ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConversionError("this step needs onnxruntime: pip install 'bentoedge[build]'") from None
    return ort


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ConversionError("this step needs onnx: pip install 'bentoedge[build]'") from None
    return onnx


# ---- sources ----------------------------------------------------------------------------------


def detect_kind(path: Path) -> str:
    if not path.exists():
        raise SourceError(f"model source {path} does not exist")
    if path.is_dir():
        if (path / "saved_model.pb").exists() or (path / "saved_model.pbtxt").exists():
            return "savedmodel"
        raise SourceError(f"{path} is a folder but not a TensorFlow SavedModel (no saved_model.pb)")
    suffix = path.suffix.lower()
    kinds = {".keras": "keras", ".h5": "keras", ".hdf5": "keras", ".onnx": "onnx", ".tflite": "tflite"}
    if suffix not in kinds:
        raise SourceError(f"unsupported model file {path.name!r}: give a .keras, .h5, .onnx or .tflite file "
                          "or a SavedModel folder")
    return kinds[suffix]


def source_sha256(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@dataclass
class Source:
    """An opened source model: what it is, its I/O signature and a handle to run it."""

    path: Path
    kind: str
    sha256: str
    signature: Signature
    handle: Any  # keras.Model | loaded SavedModel | bytes (onnx, tflite)
    tflite_precision: str | None = None  # for .tflite sources: what the file already is

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "file": self.path.name, "sha256": self.sha256}


def open_source(path: Path) -> Source:
    path = Path(path)
    kind = detect_kind(path)
    digest = source_sha256(path)
    if kind == "keras":
        model = _load_keras(path)
        return Source(path, kind, digest, _keras_signature(model), model)
    if kind == "savedmodel":
        loaded, sig = _load_savedmodel(path)
        return Source(path, kind, digest, sig, loaded)
    data = path.read_bytes()
    if kind == "onnx":
        return Source(path, kind, digest, onnx_signature(data), data)
    sig, precision = tflite_signature(data)
    return Source(path, kind, digest, sig, data, tflite_precision=precision)


def _load_keras(path: Path) -> Any:
    _tf()
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # keras raises ValueError, OSError, zipfile errors...
        raise SourceError(f"cannot load Keras model {path.name}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _dtype_name(dtype: Any) -> str:
    name = str(np.dtype(getattr(dtype, "as_numpy_dtype", dtype)))
    if name not in DTYPES:
        raise SourceError(f"unsupported tensor dtype {name}; bentoedge handles {', '.join(DTYPES)}")
    return name


def _shape(dims: Any) -> tuple[int | None, ...]:
    return tuple(None if d is None or (isinstance(d, int) and d < 0) else int(d) for d in dims)


def _keras_signature(model: Any) -> Signature:
    inputs = tuple(TensorSpec(_tensor_name(t), _dtype_name(t.dtype), _shape(t.shape)) for t in model.inputs)
    names = list(getattr(model, "output_names", None) or [f"output_{i}" for i in range(len(model.outputs))])
    outputs = tuple(TensorSpec(n, _dtype_name(t.dtype), _shape(t.shape))
                    for n, t in zip(names, model.outputs, strict=True))
    return _checked(Signature(inputs, outputs))


def _tensor_name(t: Any) -> str:
    return str(t.name).split(":")[0]


def _checked(sig: Signature) -> Signature:
    try:
        return Signature.from_dict(sig.to_dict())
    except Exception as exc:
        raise SourceError(f"the model's inputs/outputs cannot be described: {exc}") from None


def _load_savedmodel(path: Path) -> tuple[Any, Signature]:
    tf = _tf()
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise SourceError(f"cannot load SavedModel {path}: {_first_line(exc)}") from None
    fn = loaded.signatures.get("serving_default")
    if fn is None:
        raise SourceError(f"SavedModel {path} has no 'serving_default' signature; export one with named outputs")
    in_specs = fn.structured_input_signature[1]
    outs = fn.structured_outputs
    inputs = tuple(TensorSpec(n, _dtype_name(s.dtype), _shape(s.shape.as_list())) for n, s in in_specs.items())
    outputs = tuple(TensorSpec(n, _dtype_name(s.dtype), _shape(s.shape.as_list())) for n, s in outs.items())
    return loaded, _checked(Signature(inputs, outputs))


_ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 3: "int8", 2: "uint8", 5: "int16", 6: "int32",
                7: "int64", 9: "bool"}


def onnx_signature(data: bytes) -> Signature:
    onnx = _onnx()
    try:
        model = onnx.load_model_from_string(data)
        onnx.checker.check_model(model)
    except Exception as exc:
        raise SourceError(f"not a valid ONNX model: {_first_line(exc)}") from None
    inits = {i.name for i in model.graph.initializer}

    def spec(v: Any) -> TensorSpec:
        t = v.type.tensor_type
        if t.elem_type not in _ONNX_DTYPES:
            raise SourceError(f"ONNX tensor {v.name!r} has an unsupported element type {t.elem_type}")
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
        return TensorSpec(v.name, _ONNX_DTYPES[t.elem_type], dims)

    inputs = tuple(spec(v) for v in model.graph.input if v.name not in inits)
    outputs = tuple(spec(v) for v in model.graph.output)
    return _checked(Signature(inputs, outputs))


def _interpreter(data: bytes) -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = _tf().lite.Interpreter  # noqa: N806 - a class
    try:
        interp = Interpreter(model_content=bytes(data))
    except Exception as exc:
        raise SourceError(f"not a valid TFLite model: {_first_line(exc)}") from None
    return interp


def _tflite_io(interp: Any) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """Input and output details by name: the signature's names if it has one, else tensor names."""
    sigs = interp.get_signature_list()
    if sigs:
        runner = interp.get_signature_runner(next(iter(sigs)))
        return runner.get_input_details(), runner.get_output_details(), True
    ins = {_tensor_name(d): d for d in interp.get_input_details()}
    outs = {_tensor_name(d): d for d in interp.get_output_details()}
    return ins, outs, False


def tflite_signature(data: bytes) -> tuple[Signature, str]:
    interp = _interpreter(data)
    ins, outs, _ = _tflite_io(interp)

    def spec(name: str, d: Mapping[str, Any]) -> TensorSpec:
        dims = d.get("shape_signature", d["shape"])
        return TensorSpec(name, _dtype_name(d["dtype"]), _shape([int(x) for x in dims]))

    sig = _checked(Signature(tuple(spec(n, d) for n, d in ins.items()), tuple(spec(n, d) for n, d in outs.items())))
    return sig, tflite_precision(interp)


def tflite_precision(interp: Any) -> str:
    """What a converted TFLite model is: fp32, fp16, dynamic (int8 weights) or int8 (integer ops)."""
    types = [np.dtype(d["dtype"]) for d in interp.get_tensor_details()]
    has_f16 = any(t == np.float16 for t in types)
    n_int8 = sum(t == np.int8 for t in types)
    n_f32 = sum(t == np.float32 for t in types)
    if n_int8 and n_int8 >= n_f32:
        return "int8"
    if n_int8:
        return "dynamic"
    return "fp16" if has_f16 else "fp32"


# ---- edge: TFLite -----------------------------------------------------------------------------


def to_tflite(src: Source, precision: str, calibration: Mapping[str, np.ndarray] | None, workdir: Path) -> bytes:
    """The edge artifact at ``precision``, with float32 I/O and the manifest's names."""
    if precision not in EDGE_PRECISIONS:
        raise ConversionError(f"unknown edge precision {precision!r}: use {', '.join(EDGE_PRECISIONS)} or none")
    if src.kind == "onnx":
        raise ConversionError("converting an ONNX source to TFLite needs an ONNX->TensorFlow converter "
                              "(pip install onnx2tf), which bentoedge does not drive yet; pass --edge none "
                              "or build from the Keras/SavedModel source")
    if src.kind == "tflite":
        if precision != src.tflite_precision:
            raise ConversionError(f"{src.path.name} is already a {src.tflite_precision} TFLite model and cannot "
                                  f"be re-quantized; pass --edge {src.tflite_precision}")
        return bytes(src.handle)
    if precision == "int8" and not calibration:
        raise ConversionError("--edge int8 needs --calibration F.npz (representative inputs); "
                              "or pick --edge dynamic, which needs none")
    tf = _tf()
    saved = savedmodel_path(src, workdir)
    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved), signature_keys=["serving_default"])
    if precision in ("fp16", "dynamic", "int8"):
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        conv.target_spec.supported_types = [tf.float16]
    if precision == "int8":
        assert calibration is not None
        samples = _calibration_samples(src.signature, calibration)
        conv.representative_dataset = lambda: iter(samples)
        # Full integer kernels inside; inference_input/output_type stay float32 so the
        # API (and the cloud twin) take the same floats.
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        return bytes(conv.convert())
    except Exception as exc:
        raise ConversionError(f"TFLite {precision} conversion failed: {_first_line(exc)}; "
                              f"try another --edge precision or --edge none") from None


def _calibration_samples(sig: Signature, data: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    n = min(MAX_CALIBRATION, len(next(iter(data.values()))))
    return [{t.name: np.asarray(data[t.name][i:i + 1], dtype=t.dtype) for t in sig.inputs} for i in range(n)]


def savedmodel_path(src: Source, workdir: Path) -> Path:
    """A SavedModel of the source with a named-output serving signature (made once per build)."""
    if src.kind == "savedmodel":
        return src.path
    out = workdir / "savedmodel"
    if out.exists():
        return out
    tf = _tf()
    model, sig = src.handle, src.signature
    specs = [tf.TensorSpec(list(t.shape), t.dtype, name=t.name) for t in sig.inputs]
    out_names = [t.name for t in sig.outputs]

    import keras

    def serve(*args: Any) -> dict[str, Any]:
        return _named(model(list(args) if len(args) > 1 else args[0], training=False), out_names)

    # Keras's own exporter freezes its variables the way the TFLite calibrator needs
    # (a tf.Module around the model leaves READ_VARIABLE ops that int8 calibration fails on).
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(name="serving_default", fn=serve, input_signature=specs)
        archive.write_out(str(out), verbose=False)
    except Exception as exc:
        raise ConversionError(f"cannot trace the Keras model for conversion: {_first_line(exc)}") from None
    return out


def _named(outs: Any, names: list[str]) -> dict[str, Any]:
    if isinstance(outs, Mapping):
        return {n: outs[n] for n in names}
    if not isinstance(outs, (list, tuple)):
        outs = [outs]
    return dict(zip(names, outs, strict=True))


# ---- cloud: ONNX ------------------------------------------------------------------------------


def to_onnx(src: Source, precision: str, calibration: Mapping[str, np.ndarray] | None, workdir: Path,
            fp32: bytes | None = None) -> bytes:
    """The cloud artifact at ``precision`` (``fp32`` given when already made, to derive from)."""
    if precision not in CLOUD_PRECISIONS:
        raise ConversionError(f"unknown cloud precision {precision!r}: use {', '.join(CLOUD_PRECISIONS)} or none")
    base = fp32 if fp32 is not None else onnx_fp32(src, workdir)
    if precision == "fp32":
        return base
    if precision == "fp16":
        return onnx_fp16(base)
    return onnx_int8(base, workdir)


def onnx_fp32(src: Source, workdir: Path) -> bytes:
    if src.kind == "onnx":
        return bytes(src.handle)
    try:
        import tf2onnx
    except ImportError:
        raise ConversionError("the cloud ONNX artifact needs tf2onnx: pip install tf2onnx, or pass --cloud none") from None
    tf = _tf()
    sig = src.signature
    try:
        if src.kind == "tflite":
            path = workdir / "source.tflite"
            path.write_bytes(bytes(src.handle))
            proto, _ = tf2onnx.convert.from_tflite(str(path), opset=17)
            path.unlink()
            return _rename_io(proto, sig)
        specs = [tf.TensorSpec([None if d is None else d for d in t.shape], t.dtype, name=t.name) for t in sig.inputs]
        out_names = [t.name for t in sig.outputs]
        if src.kind == "keras":
            model = src.handle

            @tf.function(input_signature=specs)
            def fn(*args: Any) -> dict[str, Any]:
                return _named(model(list(args) if len(args) > 1 else args[0], training=False), out_names)
        else:
            serving = src.handle.signatures["serving_default"]
            in_names = [t.name for t in sig.inputs]

            @tf.function(input_signature=specs)
            def fn(*args: Any) -> dict[str, Any]:
                outs = serving(**dict(zip(in_names, args, strict=True)))
                return {n: outs[n] for n in out_names}
        proto, _ = tf2onnx.convert.from_function(fn, input_signature=specs, opset=17)
        return _rename_io(proto, sig)
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(f"ONNX conversion failed: {_first_line(exc)}; pass --cloud none to skip it") from None


def _rename_io(proto: Any, sig: Signature) -> bytes:
    """Give the graph's inputs and outputs the manifest's names (converters add ':0' and such)."""
    g = proto.graph
    inits = {i.name for i in g.initializer}
    graph_inputs = [v for v in g.input if v.name not in inits]
    mapping: dict[str, str] = {}
    for want, have in zip([t.name for t in sig.inputs], graph_inputs, strict=True):
        mapping[have.name] = want
    for want, have in zip([t.name for t in sig.outputs], g.output, strict=True):
        mapping[have.name] = want
    mapping = {k: v for k, v in mapping.items() if k != v}
    if mapping:
        for v in list(g.input) + list(g.output) + list(g.value_info):
            v.name = mapping.get(v.name, v.name)
        for node in g.node:
            for i, n in enumerate(node.input):
                node.input[i] = mapping.get(n, n)
            for i, n in enumerate(node.output):
                node.output[i] = mapping.get(n, n)
    return bytes(proto.SerializeToString())


def onnx_fp16(data: bytes) -> bytes:
    """Float16 weights and compute with float32 I/O kept, so clients send the same floats.

    Uses onnxconverter-common's converter when installed; otherwise converts float
    initializers, constants and casts directly and adds Cast nodes at the graph's edges.
    """
    onnx = _onnx()
    model = onnx.load_model_from_string(data)
    try:
        from onnxconverter_common import float16
    except ImportError:
        float16 = None
    if float16 is not None:
        converted = float16.convert_float_to_float16(model, keep_io_types=True)
        return bytes(converted.SerializeToString())
    return bytes(_fp16_by_hand(onnx, model).SerializeToString())


def _fp16_by_hand(onnx: Any, model: Any) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph

    def half(t: Any) -> Any:
        if t.data_type != TensorProto.FLOAT:
            return t
        arr = numpy_helper.to_array(t).astype(np.float16)
        return numpy_helper.from_array(arr, t.name)

    # Inputs that ONNX requires in float32 whatever the compute type (Resize scales).
    keep32 = {n.input[2] for n in g.node if n.op_type == "Resize" and len(n.input) > 2 and n.input[2]}
    new_inits = [half(t) if t.name not in keep32 else t for t in g.initializer]
    del g.initializer[:]
    g.initializer.extend(new_inits)
    for node in g.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and node.output[0] not in keep32:
                attr.t.CopyFrom(half(attr.t))
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
    del g.value_info[:]
    pre, post = [], []
    for v in g.input:
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            cast = v.name + "__fp16"
            for node in g.node:
                for i, n in enumerate(node.input):
                    if n == v.name:
                        node.input[i] = cast
            pre.append(helper.make_node("Cast", [v.name], [cast], to=TensorProto.FLOAT16))
    for v in g.output:
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            inner = v.name + "__fp16"
            for node in g.node:
                for i, n in enumerate(node.output):
                    if n == v.name:
                        node.output[i] = inner
                for i, n in enumerate(node.input):
                    if n == v.name:
                        node.input[i] = inner
            post.append(helper.make_node("Cast", [inner], [v.name], to=TensorProto.FLOAT))
    nodes = pre + list(g.node) + post
    del g.node[:]
    g.node.extend(nodes)
    return model


def onnx_int8(data: bytes, workdir: Path) -> bytes:
    """Dynamic int8 quantization of weights (ONNX Runtime): no calibration data needed."""
    _ort()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = workdir / "cloud-fp32.onnx", workdir / "cloud-int8.onnx"
    src.write_bytes(data)
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        return dst.read_bytes()
    except Exception as exc:
        raise ConversionError(f"ONNX int8 quantization failed: {_first_line(exc)}; pick another --cloud precision") from None
    finally:
        src.unlink(missing_ok=True)
        dst.unlink(missing_ok=True)


# ---- running models (the gate and the golden samples) -----------------------------------------


def reference(src: Source) -> Runner:
    """Run the source model itself in float: the baseline every artifact is judged against."""
    sig = src.signature
    out_names = [t.name for t in sig.outputs]
    if src.kind == "keras":
        model = src.handle

        def run_keras(inputs: Mapping[str, np.ndarray]) -> Arrays:
            xs = [np.asarray(inputs[t.name], dtype=t.dtype) for t in sig.inputs]
            parts: list[Arrays] = []
            for lo in range(0, len(xs[0]), _CHUNK):
                chunk = [x[lo:lo + _CHUNK] for x in xs]
                outs = _named(model(chunk if len(chunk) > 1 else chunk[0], training=False), out_names)
                parts.append({k: np.asarray(v) for k, v in outs.items()})
            return _concat(parts, out_names)

        return run_keras
    if src.kind == "savedmodel":
        tf = _tf()
        serving = src.handle.signatures["serving_default"]

        def run_saved(inputs: Mapping[str, np.ndarray]) -> Arrays:
            n = len(next(iter(inputs.values())))
            parts = []
            for lo in range(0, n, _CHUNK):
                outs = serving(**{t.name: tf.constant(np.asarray(inputs[t.name][lo:lo + _CHUNK], dtype=t.dtype))
                                  for t in sig.inputs})
                parts.append({k: np.asarray(outs[k]) for k in out_names})
            return _concat(parts, out_names)

        return run_saved
    if src.kind == "onnx":
        return onnx_runner(bytes(src.handle), sig)
    return tflite_runner(bytes(src.handle), sig)


def _concat(parts: list[Arrays], names: list[str]) -> Arrays:
    return {n: np.concatenate([p[n] for p in parts]) for n in names}


def onnx_runner(data: bytes, sig: Signature) -> Runner:
    ort = _ort()
    try:
        sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ConversionError(f"ONNX Runtime cannot load the model: {_first_line(exc)}") from None
    out_names = [t.name for t in sig.outputs]

    def run(inputs: Mapping[str, np.ndarray]) -> Arrays:
        n = len(next(iter(inputs.values())))
        parts = []
        for lo in range(0, n, _CHUNK):
            feed = {t.name: np.asarray(inputs[t.name][lo:lo + _CHUNK], dtype=t.dtype) for t in sig.inputs}
            parts.append(dict(zip(out_names, sess.run(out_names, feed), strict=True)))
        return _concat(parts, out_names)

    return run


def tflite_runner(data: bytes, sig: Signature) -> Runner:
    interp = _interpreter(data)
    ins, outs, named = _tflite_io(interp)
    in_names, out_names = [t.name for t in sig.inputs], [t.name for t in sig.outputs]
    if not (named and set(ins) == set(in_names) and set(outs) == set(out_names)):
        # No matching signature: converters keep the source's order, so match by position.
        ins_l, outs_l = interp.get_input_details(), interp.get_output_details()
        if len(ins_l) != len(in_names) or len(outs_l) != len(out_names):
            raise ConversionError("the TFLite model's inputs/outputs do not match the source signature")
        ins, outs = dict(zip(in_names, ins_l, strict=True)), dict(zip(out_names, outs_l, strict=True))

    def invoke(batch: Mapping[str, np.ndarray]) -> Arrays:
        for name, arr in batch.items():
            interp.resize_tensor_input(ins[name]["index"], arr.shape, strict=False)
        interp.allocate_tensors()
        for name, arr in batch.items():
            interp.set_tensor(ins[name]["index"], _quantize(arr, ins[name]))
        interp.invoke()
        return {n: _dequantize(interp.get_tensor(outs[n]["index"]), outs[n]) for n in out_names}

    def run(inputs: Mapping[str, np.ndarray]) -> Arrays:
        arrays = {t.name: np.asarray(inputs[t.name], dtype=np.float32 if t.dtype == "float32" else t.dtype)
                  for t in sig.inputs}
        n = len(next(iter(arrays.values())))
        try:
            parts = [invoke({k: v[lo:lo + _CHUNK] for k, v in arrays.items()}) for lo in range(0, n, _CHUNK)]
        except (ValueError, RuntimeError):
            # A model with a fixed batch of 1 cannot be resized: run sample by sample.
            parts = [invoke({k: v[i:i + 1] for k, v in arrays.items()}) for i in range(n)]
        return _concat(parts, out_names)

    return run


def _quantize(arr: np.ndarray, d: Mapping[str, Any]) -> np.ndarray:
    scale, zero = d.get("quantization", (0.0, 0))
    dtype = np.dtype(d["dtype"])
    if dtype.kind in "iu" and scale:
        info = np.iinfo(dtype)
        return np.clip(np.round(arr / scale + zero), info.min, info.max).astype(dtype)
    return arr.astype(dtype, copy=False)


def _dequantize(arr: np.ndarray, d: Mapping[str, Any]) -> np.ndarray:
    scale, zero = d.get("quantization", (0.0, 0))
    if np.dtype(d["dtype"]).kind in "iu" and scale:
        return (arr.astype(np.float32) - zero) * scale
    return np.array(arr)
