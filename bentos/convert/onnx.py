"""The cloud artifact: a source converted to ONNX at one precision, as bytes in memory.

``onnx_fp32`` converts Keras, SavedModel and TFLite sources with tf2onnx (an ONNX source
passes through) and renames the graph's inputs and outputs to the manifest's names where
the converter chose others.  ``onnx_fp16`` turns weights and compute into float16 while
keeping float32 I/O (onnxconverter-common when installed, graph surgery by hand
otherwise); ``onnx_int8`` is ONNX Runtime's dynamic weight quantization, which needs no
calibration data.  ``to_onnx`` picks among them, deriving from an fp32 model already made.

tf2onnx, onnx and onnxruntime are imported inside the functions that need them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bentoedge.bentos.convert.common import first_line, named, onnx, tf
from bentoedge.bentos.convert.sources import Source
from bentoedge.bentos.errors import ConversionError
from bentoedge.bentos.manifest import Signature
from bentoedge.bentos.runtimes import onnxruntime as ort_binding

CLOUD_PRECISIONS = ("fp32", "fp16", "int8")
#: The opset tf2onnx targets; onnxruntime >= 1.18 (the extras' floor) runs it.
OPSET = 17


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
    """The float32 ONNX model of ``src``, with the manifest's input and output names."""
    if src.kind == "onnx":
        return bytes(src.handle)
    try:
        import tf2onnx
    except ImportError:
        raise ConversionError("the cloud ONNX artifact needs tf2onnx: pip install tf2onnx, or pass --cloud none") from None
    tf_mod = tf()
    sig = src.signature
    try:
        if src.kind == "tflite":
            if src.signature_key is not None:
                raise ConversionError(
                    f"{src.path.name} holds several signatures and tf2onnx converts only a TFLite file's main "
                    "graph, not the one --signature picked; pass --cloud none (and build the cloud artifact "
                    "from the SavedModel or ONNX the file came from)")
            path = workdir / "source.tflite"
            path.write_bytes(bytes(src.handle))
            proto, _ = tf2onnx.convert.from_tflite(str(path), opset=OPSET)
            path.unlink()
            return _rename_io(proto, sig)
        specs = [tf_mod.TensorSpec([None if d is None else d for d in t.shape], t.dtype, name=t.name)
                 for t in sig.inputs]
        out_names = [t.name for t in sig.outputs]
        if src.kind == "keras":
            model = src.handle

            @tf_mod.function(input_signature=specs)
            def fn(*args: Any) -> dict[str, Any]:
                return named(model(list(args) if len(args) > 1 else args[0], training=False), out_names)
        else:
            serving = src.handle.signatures[src.signature_key or "serving_default"]
            in_names = [t.name for t in sig.inputs]

            @tf_mod.function(input_signature=specs)
            def fn(*args: Any) -> dict[str, Any]:
                outs = serving(**dict(zip(in_names, args, strict=True)))
                return {n: outs[n] for n in out_names}
        proto, _ = tf2onnx.convert.from_function(fn, input_signature=specs, opset=OPSET)
        return _rename_io(proto, sig)
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(f"ONNX conversion failed: {first_line(exc)}; pass --cloud none to skip it") from None


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
    onnx_mod = onnx()
    model = onnx_mod.load_model_from_string(data)
    try:
        from onnxconverter_common import float16
    except ImportError:
        float16 = None
    if float16 is not None:
        converted = float16.convert_float_to_float16(model, keep_io_types=True)
        return bytes(converted.SerializeToString())
    return bytes(_fp16_by_hand(onnx_mod, model).SerializeToString())


def _fp16_by_hand(onnx_mod: Any, model: Any) -> Any:
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
            if attr.type == onnx_mod.AttributeProto.TENSOR and node.output[0] not in keep32:
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
    ort_binding.module()  # a missing onnxruntime says what to install before the import below fails
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = workdir / "cloud-fp32.onnx", workdir / "cloud-int8.onnx"
    src.write_bytes(data)
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        return dst.read_bytes()
    except Exception as exc:
        raise ConversionError(f"ONNX int8 quantization failed: {first_line(exc)}; pick another --cloud precision") from None
    finally:
        src.unlink(missing_ok=True)
        dst.unlink(missing_ok=True)
