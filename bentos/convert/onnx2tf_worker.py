"""The onnx2tf step, run as a script by the interpreter of onnx2tf's own virtualenv.

``bentos.convert.onnx_to_tflite`` starts ``PYTHON -I onnx2tf_worker.py REQUEST RESULT`` in
the build's private workdir; ``-I`` keeps the script's folder (whose ``onnx.py`` would shadow
the onnx package) and the build's own environment variables out of ``sys.path``.  The
script imports nothing of bentoedge: onnx2tf pins numpy, onnx, onnxruntime and TensorFlow at
versions the build's environment does not have, so it only ever runs in that other
interpreter, and hands its result back as files.

REQUEST (JSON): ``onnx`` (the source file), ``workdir``, ``saved_model`` (the folder to
write), ``example`` (an ``.npz`` with one sample per input, by the manifest's input names),
``inputs`` (``name``, ``key``: its name in the SavedModel's signature, ``dtype``, ``shape``
with every dimension fixed) and ``outputs`` (``name``), both in the ONNX graph's order.

What it does:

1. sanitises a copy of the graph: inputs renamed ``in_<i>``, outputs ``out_<i>``, every
   other tensor and node given a plain name (TensorFlow refuses ``@``, ``:`` and leading
   ``/`` in op names), input dimensions fixed, stale shape annotations dropped;
2. runs ``onnx2tf.convert`` on it with every rank 3-5 input kept channels-first (so the
   TFLite input has the ONNX model's layout), without letting onnx2tf save anything;
3. runs the example through ONNX Runtime (on the sanitised copy) and through the
   TensorFlow model, and for each output finds the axis order that turns TensorFlow's
   answer into ONNX's (onnx2tf returns channels-last tensors for some outputs);
4. writes a SavedModel whose ``serving_default`` signature takes and returns tensors under
   the manifest's names, in the ONNX layout, with Keras's exporter (which freezes variables
   the way the TFLite int8 calibrator needs).

RESULT (JSON): ``{"ok": true, "outputs": [{"name", "perm", "max_abs_error"}], "seconds"}``
or ``{"ok": false, "error": "<one line>"}``; the exit code is 0 either way, and anything
else (a crash, a kill) is for the caller to explain from the log.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

#: The dummy image file onnx2tf loads from the working folder (and downloads when missing).
ONNX2TF_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"


def sanitise(model: Any, inputs: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Rename the graph's tensors and nodes in place; returns the new input and output names."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    graph_inputs = [v for v in g.input if v.name not in inits]
    mapping: dict[str, str] = {}
    for i, v in enumerate(graph_inputs):
        mapping[v.name] = f"in_{i}"
    for i, v in enumerate(g.output):
        mapping.setdefault(v.name, f"out_{i}")

    def rename(name: str) -> str:
        if not name:  # an omitted optional input stays omitted
            return name
        if name not in mapping:
            mapping[name] = f"t_{len(mapping)}"
        return mapping[name]

    def walk(graph: Any, depth: int) -> None:
        if depth > 16:
            raise ValueError("subgraphs nested deeper than 16 levels")
        for t in graph.initializer:
            t.name = rename(t.name)
        for coll in (graph.input, graph.output, graph.value_info):
            for v in coll:
                v.name = rename(v.name)
        for k, node in enumerate(graph.node):
            node.name = f"n{depth}_{k}"
            node.input[:] = [rename(n) for n in node.input]
            node.output[:] = [rename(n) for n in node.output]
            for attr in node.attribute:
                if attr.HasField("g"):
                    walk(attr.g, depth + 1)
                for sub in attr.graphs:
                    walk(sub, depth + 1)

    walk(g, 0)
    del g.value_info[:]
    for v, spec in zip(graph_inputs, inputs, strict=True):
        dims = v.type.tensor_type.shape.dim
        if len(dims) != len(spec["shape"]):
            raise ValueError(
                f"input {spec['name']!r} has rank {len(dims)} in the file but "
                f"{len(spec['shape'])} in the request"
            )
        for d, size in zip(dims, spec["shape"], strict=True):
            d.Clear()
            d.dim_value = int(size)
    for v in g.output:  # let the converter infer them; exporters leave -1 and stale symbols
        v.type.tensor_type.ClearField("shape")
    return [mapping.get(v.name, v.name) for v in graph_inputs], [v.name for v in g.output]


def best_perm(got: Any, want: Any, prefer: tuple[int, ...] | None) -> tuple[tuple[int, ...], float]:
    """The axis order of ``got`` closest to ``want`` (identity, then ``prefer``, on ties)."""
    import numpy as np

    rank = got.ndim
    if rank > 6 or got.size != want.size:
        perms: list[tuple[int, ...]] = [tuple(range(rank))]
    else:
        first = [tuple(range(rank))] + ([prefer] if prefer else [])
        perms = first + [p for p in itertools.permutations(range(rank)) if p not in first]
    best: tuple[tuple[int, ...], float] | None = None
    for p in perms:
        moved = np.transpose(got, p)
        if moved.shape != want.shape:
            continue
        err = (
            float(np.max(np.abs(moved.astype(np.float64) - want.astype(np.float64))))
            if want.size
            else 0.0
        )
        if best is None or err < best[1] * 0.5:  # a later order must be clearly better
            best = (p, err)
    if best is None:
        raise ValueError(
            f"the TensorFlow model gives shape {tuple(got.shape)} where ONNX gives "
            f"{tuple(want.shape)}"
        )
    return best


def convert(req: dict[str, Any]) -> dict[str, Any]:
    """Steps 1-4 of the module docstring; returns the RESULT document."""
    started = time.monotonic()
    import numpy as np
    import onnx

    work = Path(req["workdir"])
    np.save(
        work / ONNX2TF_SAMPLE,
        np.random.default_rng(0).uniform(0.0, 1.0, (20, 128, 128, 3)).astype(np.float32),
    )
    model = onnx.load(req["onnx"])
    in_names, out_names = sanitise(model, req["inputs"])
    clean = work / "sanitised.onnx"
    onnx.save(model, str(clean))

    import onnx2tf
    import tensorflow as tf
    import tf_keras

    keep = [
        n for n, spec in zip(in_names, req["inputs"], strict=True) if 3 <= len(spec["shape"]) <= 5
    ]
    shapes = [
        f"{n}:{','.join(str(int(d)) for d in spec['shape'])}"
        for n, spec in zip(in_names, req["inputs"], strict=True)
        if spec["shape"]
    ]
    net = onnx2tf.convert(
        input_onnx_file_path=str(clean),
        output_folder_path=str(work / "onnx2tf-out"),
        overwrite_input_shape=shapes or None,
        keep_ncw_or_nchw_or_ncdhw_input_names=keep or None,
        disable_model_save=True,
        non_verbose=True,
    )

    example = np.load(req["example"])
    feed = {
        n: np.asarray(example[spec["name"]], dtype=spec["dtype"])
        for n, spec in zip(in_names, req["inputs"], strict=True)
    }
    import onnxruntime

    sess = onnxruntime.InferenceSession(str(clean), providers=["CPUExecutionProvider"])
    want = sess.run(out_names, feed)
    tf_in = [_tensor_key(t) for t in net.inputs]
    if sorted(tf_in) != sorted(in_names):
        raise ValueError(f"onnx2tf renamed the inputs ({', '.join(tf_in)}); cannot bind them")
    got = net(
        [tf.constant(feed[n]) for n in tf_in] if len(tf_in) > 1 else tf.constant(feed[tf_in[0]]),
        training=False,
    )
    got = [np.asarray(g) for g in (got if isinstance(got, (list, tuple)) else [got])]
    if len(got) != len(want):
        raise ValueError(f"the TensorFlow model has {len(got)} outputs where ONNX has {len(want)}")
    layouts = getattr(net, "onnx_output_layouts", {}) or {}
    perms: list[tuple[int, ...]] = []
    report = []
    for name, spec, g, w in zip(out_names, req["outputs"], got, want, strict=True):
        nhwc = bool(layouts.get(name)) and g.ndim >= 3
        prefer = (0, g.ndim - 1, *range(1, g.ndim - 1)) if nhwc else None
        perm, err = best_perm(g, np.asarray(w), prefer)
        perms.append(perm)
        report.append({"name": spec["name"], "perm": list(perm), "max_abs_error": err})

    specs = [
        tf.TensorSpec([int(d) for d in spec["shape"]], spec["dtype"], name=spec["key"])
        for spec in req["inputs"]
    ]
    order = [in_names.index(n) for n in tf_in]  # the Keras model's input order, by ONNX position
    names = [spec["name"] for spec in req["outputs"]]

    def serve(*args: Any) -> dict[str, Any]:
        xs = [args[i] for i in order]
        outs = net(xs if len(xs) > 1 else xs[0], training=False)
        outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        return {
            n: (o if list(p) == list(range(len(p))) else tf.transpose(o, p))
            for n, o, p in zip(names, outs, perms, strict=True)
        }

    archive = tf_keras.export.ExportArchive()
    archive.track(net)
    archive.add_endpoint(name="serving_default", fn=serve, input_signature=specs)
    archive.write_out(req["saved_model"])
    return {"ok": True, "outputs": report, "seconds": round(time.monotonic() - started, 3)}


def _tensor_key(t: Any) -> str:
    return str(t.name).split(":")[0]


def _one_line(exc: BaseException) -> str:
    """The exception in one line: its first line, plus TensorFlow's op-level cause when it has one
    (a Keras layer error says which layer first and which op and shapes failed further down)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0].rstrip(".")
    cause = next((ln for ln in lines[1:] if "[Op:" in ln), None)
    if cause is not None:
        op = re.sub(r"^\{\{[^}]*\}\}\s*", "", cause).rstrip(" :").removesuffix("name")
        text += ": " + op.rstrip(" :")
    return f"{type(exc).__name__}: {text[:400]}"


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: onnx2tf_worker.py REQUEST.json RESULT.json", file=sys.stderr)
        return 2
    req_path, result_path = Path(argv[1]).resolve(), Path(argv[2]).resolve()
    req = json.loads(req_path.read_text())
    os.chdir(req["workdir"])
    try:
        result = convert(req)
    except ImportError as exc:
        result = {
            "ok": False,
            "error": f"this interpreter lacks {exc.name or exc}",
            "missing": True,
        }
    except SystemExit as exc:  # onnx2tf exits on some errors after logging them
        result = {"ok": False, "error": f"onnx2tf stopped (exit {exc.code})"}
    except Exception as exc:
        result = {"ok": False, "error": _one_line(exc)}
    result_path.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
