"""Opening a source model and reading its I/O signature.

Sources are Keras files (``.keras``, ``.h5``), TensorFlow SavedModel folders, ``.onnx``
and ``.tflite`` files.  ``open_source`` reads one into a ``Source``: what kind it is, its
SHA-256 (recorded in the manifest), the ``Signature`` (input and output names, dtypes,
shapes) every artifact built from it will carry, and a handle the converters
(``convert.tflite``, ``convert.onnx``) and the float reference (``convert.runners``) use.

Anything wrong with the source itself is a SourceError naming the file.  TensorFlow and
onnx are imported only when a source of their kind is opened; a ``.tflite`` source is
read with the same LiteRT binding (``bentos.runtimes.litert``) devices run.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bentoedge.bentos.convert.common import first_line, onnx, tf
from bentoedge.bentos.errors import BentoEdgeError, SourceError
from bentoedge.bentos.manifest import DTYPES, Quantization, Signature, TensorSpec
from bentoedge.bentos.runtimes import litert

KINDS = ("keras", "savedmodel", "onnx", "tflite")


def detect_kind(path: Path) -> str:
    """Which of ``KINDS`` the file or folder at ``path`` is, from its suffix or contents."""
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
    """SHA-256 of a file, or of a folder's files with their relative names (so renames count)."""
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
    #: The signature used: a SavedModel's (default ``serving_default``), or a TFLite file's when
    #: it holds several (None for one or none: the file runs as it is).
    signature_key: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "file": self.path.name, "sha256": self.sha256}


def open_source(path: Path, signature: str | None = None) -> Source:
    """Open the model at ``path`` and work out its signature; SourceError if it cannot be.

    ``signature`` picks one of a SavedModel's or a TFLite file's SignatureDefs (the build's
    ``--signature``); Keras and ONNX sources have one graph and take none."""
    path = Path(path)
    kind = detect_kind(path)
    if signature is not None and kind in ("keras", "onnx"):
        raise SourceError(f"--signature picks a SignatureDef of a SavedModel or a .tflite file; {path.name} is "
                          f"{kind}, which has one graph: drop --signature")
    digest = source_sha256(path)
    if kind == "keras":
        model = _load_keras(path)
        return Source(path, kind, digest, _keras_signature(model), model)
    if kind == "savedmodel":
        loaded, sig, key = _load_savedmodel(path, signature)
        return Source(path, kind, digest, sig, loaded, signature_key=key)
    data = path.read_bytes()
    if kind == "onnx":
        data, merged = _onnx_with_external_data(path, data)
        if merged:  # the weights came from files beside it: the digest covers what is built
            digest = hashlib.sha256(data).hexdigest()
        return Source(path, kind, digest, onnx_signature(data), data)
    sig, precision, tflite_key = tflite_signature(data, signature, path.name)
    return Source(path, kind, digest, sig, data, tflite_precision=precision, signature_key=tflite_key)


def _pick_signature(keys: list[str], wanted: str | None, what: str, default: str | None = None) -> str | None:
    """The SignatureDef to use among ``keys``: ``wanted``, else ``default`` or the only one; a
    SourceError naming the choices when that is ambiguous or ``wanted`` is not there."""
    listed = ", ".join(repr(k) for k in keys) or "none"
    if wanted is not None:
        if wanted not in keys:
            raise SourceError(f"{what} has no signature {wanted!r} (it has {listed}); pass one of them to --signature")
        return wanted
    if default is not None and default in keys:
        return default
    if len(keys) > 1:
        raise SourceError(f"{what} has {len(keys)} signatures ({listed}); pick one with --signature NAME")
    return keys[0] if keys else None


def _load_keras(path: Path) -> Any:
    tf()
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # keras raises ValueError, OSError, zipfile errors...
        raise SourceError(f"cannot load Keras model {path.name}: {first_line(exc)}") from None


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
    # The manifest's own parser is the rule for what a signature may be: round-trip through it.
    try:
        return Signature.from_dict(sig.to_dict())
    except Exception as exc:
        raise SourceError(f"the model's inputs/outputs cannot be described: {exc}") from None


def _load_savedmodel(path: Path, signature: str | None = None) -> tuple[Any, Signature, str]:
    tf_mod = tf()
    try:
        loaded = tf_mod.saved_model.load(str(path))
    except Exception as exc:
        raise SourceError(f"cannot load SavedModel {path}: {first_line(exc)}") from None
    key = _pick_signature(list(loaded.signatures), signature, f"SavedModel {path}", default="serving_default")
    if key is None:
        raise SourceError(f"SavedModel {path} has no signatures; export one (serving_default) with named outputs")
    fn = loaded.signatures[key]
    in_specs = fn.structured_input_signature[1]
    outs = fn.structured_outputs
    inputs = tuple(TensorSpec(n, _dtype_name(s.dtype), _shape(s.shape.as_list())) for n, s in in_specs.items())
    outputs = tuple(TensorSpec(n, _dtype_name(s.dtype), _shape(s.shape.as_list())) for n, s in outs.items())
    return loaded, _checked(Signature(inputs, outputs)), key


_ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 3: "int8", 2: "uint8", 5: "int16", 6: "int32",
                7: "int64", 9: "bool"}


def _onnx_with_external_data(path: Path, data: bytes) -> tuple[bytes, bool]:
    """An ONNX file's bytes with any external-data tensors (weights kept in files beside it, as
    exporters do for large models) read in, so every later step sees one self-contained model."""
    onnx_mod = onnx()
    from onnx.external_data_helper import uses_external_data

    try:
        model = onnx_mod.load_model_from_string(data)  # external data is read only below, from files
    except Exception as exc:
        raise SourceError(f"not a valid ONNX model: {first_line(exc)}") from None
    external = [t for t in _graph_tensors(model.graph) if uses_external_data(t)]
    if not external:
        return data, False
    for t in external:
        location = next((e.value for e in t.external_data if e.key == "location"), "")
        if not (path.parent / location).is_file():
            raise SourceError(f"{path.name} keeps tensor {t.name!r} in {location!r}, which is not beside it: copy "
                              "the model's data files into the folder of the .onnx file")
    try:
        onnx_mod.load_external_data_for_model(model, str(path.parent))
        return model.SerializeToString(), True
    except Exception as exc:  # protobuf's 2 GB limit, a short data file, a location outside the folder
        raise SourceError(f"cannot read the external data of {path.name}: {first_line(exc)}") from None


def _graph_tensors(graph: Any) -> list[Any]:
    """Every tensor a graph holds: its initializers and node attributes, subgraphs included."""
    out = list(graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            out.extend([attr.t] if attr.HasField("t") else [])
            out.extend(attr.tensors)
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                out.extend(_graph_tensors(sub))
    return out


def onnx_signature(data: bytes) -> Signature:
    """The signature of an ONNX model (initializers are not inputs); SourceError if invalid."""
    onnx_mod = onnx()
    try:
        model = onnx_mod.load_model_from_string(data)
        onnx_mod.checker.check_model(model)
    except Exception as exc:
        raise SourceError(f"not a valid ONNX model: {first_line(exc)}") from None
    inits = {i.name for i in model.graph.initializer}

    def spec(v: Any) -> TensorSpec:
        t = v.type.tensor_type
        if t.elem_type not in _ONNX_DTYPES:
            raise SourceError(f"ONNX tensor {v.name!r} has an unsupported element type {t.elem_type}")
        # Exporters write a dynamic dim as a symbol, as nothing, or as dim_value -1 (or 0).
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim)
        return TensorSpec(v.name, _ONNX_DTYPES[t.elem_type], dims)

    inputs = tuple(spec(v) for v in model.graph.input if v.name not in inits)
    outputs = tuple(spec(v) for v in model.graph.output)
    return _checked(Signature(inputs, outputs))


def open_tflite(data: bytes) -> Any:
    """A LiteRT interpreter over ``data``; SourceError if the bytes are not a TFLite model."""
    try:
        return litert.load_interpreter(bytes(data))
    except BentoEdgeError:  # no runtime installed: say what to install, not "invalid model"
        raise
    except Exception as exc:
        raise SourceError(f"not a valid TFLite model: {first_line(exc)}") from None


def tflite_signature(data: bytes, signature: str | None = None,
                     what: str = "the TFLite model") -> tuple[Signature, str, str | None]:
    """The signature of a TFLite model, its precision, and the SignatureDef key chosen when the
    file holds several (None otherwise).

    With a SignatureDef its names are used; without one (most published files) the tensor
    names, in the model's order, made API-safe and unique (``api_names``).  Integer inputs
    and outputs that carry a scale are float32 at the API, with the integer form recorded.
    """
    interp = open_tflite(data)
    keys = litert.signature_keys(interp)
    if signature is not None and not keys:
        raise SourceError(f"{what} has no signatures (SignatureDefs) to pick from: drop --signature")
    key = _pick_signature(keys, signature, what)
    ins, outs, named = litert.io_details(interp, key)
    if named:
        in_items, out_items = list(ins.items()), list(outs.items())
    else:  # by position, as the binding binds them: two tensors may share a name
        in_list, out_list = interp.get_input_details(), interp.get_output_details()
        in_items = list(zip(api_names([litert.tensor_name(d) for d in in_list], "input"), in_list, strict=True))
        out_items = list(zip(api_names([litert.tensor_name(d) for d in out_list], "output"), out_list, strict=True))

    def spec(name: str, d: Mapping[str, Any]) -> TensorSpec:
        dims = d.get("shape_signature", d["shape"])
        dtype = _dtype_name(d["dtype"])
        scale, zero = d.get("quantization", (0.0, 0))
        if dtype in ("int8", "uint8", "int16") and scale:
            return TensorSpec(name, "float32", _shape([int(x) for x in dims]), Quantization(dtype, float(scale), int(zero)))
        return TensorSpec(name, dtype, _shape([int(x) for x in dims]))

    ins_spec = [spec(n, d) for n, d in in_items]
    outs_spec = [spec(n, d) for n, d in out_items]
    if ins_spec and all(t.shape[:1] == (1,) for t in ins_spec):
        # A batch fixed at 1 (most published files): the bindings run a batch one sample at a
        # time, so the API takes any batch and the signature says so.
        ins_spec = [_free_batch(t) for t in ins_spec]
        outs_spec = [_free_batch(t) if t.shape[:1] == (1,) else t for t in outs_spec]
    sig = _checked(Signature(tuple(ins_spec), tuple(outs_spec)))
    return sig, tflite_precision(interp), key if len(keys) > 1 else None


def _free_batch(t: TensorSpec) -> TensorSpec:
    return TensorSpec(t.name, t.dtype, (None, *t.shape[1:]), t.quantized)


def api_names(raw: list[str], kind: str) -> list[str]:
    """Tensor names a client can type: ``[A-Za-z0-9_.-]`` only, never empty, unique in order.

    Converters leave names such as ``serving_default_input_1`` or
    ``model/conv2d/BiasAdd;model/conv2d/Conv2D``; the last path segment is what a person
    recognises, and a clash gets ``_2``, ``_3`` ...
    """
    out: list[str] = []
    for i, name in enumerate(raw):
        tail = name.split(";")[0].rstrip("/").split("/")[-1]
        clean = re.sub(r"[^A-Za-z0-9_.-]+", "_", tail).strip("_.-") or f"{kind}_{i}"
        candidate, n = clean, 2
        while candidate in out:
            candidate, n = f"{clean}_{n}", n + 1
        out.append(candidate)
    return out


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
