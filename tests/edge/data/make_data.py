"""Make the tiny TFLite models and sealed models the device tests use; run once, commit the output.

The device tests run in a venv with only ``bentoedge[edge]`` (no TensorFlow), and also on
tflite-runtime 2.14 with numpy < 2, so the models they need are committed files rather
than built at test time.  This script needs the full environment (TensorFlow):

    .venv/bin/python tests/edge/data/make_data.py

It writes, under tests/edge/data/:

    keys/                  a test-only KEK and signing key (never use them for anything else)
    tiny.tflite            x float32[?,4] -> y float32[?,3]   (the raw artifact, for the floor)
    sealed/tiny-1/         edge-fp32 + edge-int8 (int8 inputs and outputs) + golden-edge
    sealed/multi-1/        a float32[?,4], b float32[?,2] -> total float32[?,1], joined float32[?,6]
    sealed/reshape-1/      x float32[?,4] whose graph reshapes to [1,4]: batch > 1 fails at run time
    sealed/fixed-1/        x float32[1,4] artifact under a [?,4] manifest: batch > 1 is a shape limit
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import numpy as np

from bentoedge.bentos.golden import Golden
from bentoedge.bentos.keystore import LocalKeys
from bentoedge.bentos.manifest import Signature, TensorSpec
from bentoedge.bentos.recipients import KekRecipient
from bentoedge.bentos.sealed import Plain, SealRequest, seal

HERE = Path(__file__).resolve().parent


def _convert(fn, specs, int8: bool = False, rep=None) -> bytes:  # type: ignore[no-untyped-def]
    import tensorflow as tf

    module = tf.Module()
    module.f = tf.function(fn, input_signature=specs)
    with tempfile.TemporaryDirectory() as d:
        tf.saved_model.save(module, d, signatures={"serving_default": module.f.get_concrete_function()})
        conv = tf.lite.TFLiteConverter.from_saved_model(d)
        if int8:
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = rep
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
        return bytes(conv.convert())


def _run(model: bytes, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Expected outputs straight from the raw interpreter (what the agent must reproduce)."""
    import tensorflow as tf

    interp = tf.lite.Interpreter(model_content=model)
    runner = interp.get_signature_runner("serving_default")
    details = runner.get_input_details()
    feed = {}
    for k, v in inputs.items():
        scale, zero = details[k]["quantization"]
        if details[k]["dtype"] == np.int8:
            v = np.clip(np.round(v / scale + zero), -128, 127).astype(np.int8)
        feed[k] = v
    out = runner(**feed)
    res = {}
    for k, v in out.items():
        od = runner.get_output_details()[k]
        if od["dtype"] == np.int8:
            scale, zero = od["quantization"]
            v = (v.astype(np.float32) - zero) * scale
        res[k] = np.asarray(v)
    return res


def _seal(name: str, sig: Signature, models: dict[str, tuple[str, bytes]], golden_in: dict[str, np.ndarray],
          keys: LocalKeys, out: Path, tolerances: dict[str, dict[str, float]] | None = None) -> None:
    expected = {art: _run(data, golden_in) for art, (_, data) in models.items()}
    golden = Golden(golden_in, expected)
    arts = [Plain(art, "edge", data, "litert", prec) for art, (prec, data) in models.items()]
    arts.append(Plain("golden-edge", "edge", golden.to_bytes()))
    req = SealRequest(
        name=name, version="1", release=1,
        source={"kind": "tflite", "sha256": hashlib.sha256(next(iter(models.values()))[1]).hexdigest()},
        signature=sig, artifacts=arts,
        golden={"edge": "golden-edge", "count": len(next(iter(golden_in.values()))),
                "tolerances": tolerances or {}})
    target = out / f"{name}-1"
    shutil.rmtree(target, ignore_errors=True)
    seal(req, target, [KekRecipient(keys.kek())], keys.signing_key())


def main() -> None:
    import tensorflow as tf

    rng = np.random.default_rng(7)
    keys = LocalKeys(HERE)
    if not (HERE / "keys").exists():
        keys.init()
    sealed = HERE / "sealed"
    sealed.mkdir(exist_ok=True)
    f32 = "float32"

    w = tf.constant(rng.normal(size=(4, 3)).astype(np.float32))
    b = tf.constant(rng.normal(size=(3,)).astype(np.float32))

    def tiny(x):  # type: ignore[no-untyped-def]
        return {"y": tf.nn.softmax(tf.matmul(x, w) + b)}

    spec = [tf.TensorSpec([None, 4], tf.float32, name="x")]
    calib = rng.normal(size=(64, 4)).astype(np.float32)

    def rep():  # type: ignore[no-untyped-def]
        for row in calib:
            yield {"x": row[None, :]}

    fp32 = _convert(tiny, spec)
    int8 = _convert(tiny, spec, int8=True, rep=rep)
    (HERE / "tiny.tflite").write_bytes(fp32)
    sig = Signature((TensorSpec("x", f32, (None, 4)),), (TensorSpec("y", f32, (None, 3)),))
    golden_x = {"x": rng.normal(size=(3, 4)).astype(np.float32)}
    _seal("tiny", sig, {"edge-fp32": ("fp32", fp32), "edge-int8": ("int8", int8)}, golden_x, keys, sealed,
          {"edge-int8": {"atol": 0.05, "rtol": 0.0}})

    wa = tf.constant(rng.normal(size=(4, 6)).astype(np.float32))

    def multi(a, b_):  # type: ignore[no-untyped-def]
        joined = tf.concat([a, b_], axis=1)
        return {"total": tf.reduce_sum(joined, axis=1, keepdims=True), "joined": joined + tf.matmul(a, wa) * 0.0}

    mspec = [tf.TensorSpec([None, 4], tf.float32, name="a"), tf.TensorSpec([None, 2], tf.float32, name="b")]
    msig = Signature((TensorSpec("a", f32, (None, 4)), TensorSpec("b", f32, (None, 2))),
                     (TensorSpec("total", f32, (None, 1)), TensorSpec("joined", f32, (None, 6))))
    _seal("multi", msig, {"edge-fp32": ("fp32", _convert(multi, mspec))},
          {"a": rng.normal(size=(2, 4)).astype(np.float32), "b": rng.normal(size=(2, 2)).astype(np.float32)},
          keys, sealed)

    def reshape(x):  # type: ignore[no-untyped-def]
        return {"y": tf.nn.softmax(tf.matmul(tf.reshape(x, [1, 4]), w) + b)}

    _seal("reshape", sig, {"edge-fp32": ("fp32", _convert(reshape, spec))},
          {"x": rng.normal(size=(1, 4)).astype(np.float32)}, keys, sealed)

    fixed_spec = [tf.TensorSpec([1, 4], tf.float32, name="x")]
    _seal("fixed", sig, {"edge-fp32": ("fp32", _convert(tiny, fixed_spec))},
          {"x": rng.normal(size=(1, 4)).astype(np.float32)}, keys, sealed)
    total = sum(p.stat().st_size for p in HERE.rglob("*") if p.is_file())
    print(f"wrote {HERE} ({total} bytes)")


if __name__ == "__main__":
    main()
