"""Benchmark: the third-party model zoo, one table in one run.

For every model of the conformance zoo (``tests/conformance/zoo.py``, models that ship inside
packages on the registry) this builds it with ``bentoedge build`` and records: the source
format, the artifacts built, each artifact's size against the source file, the quality gate's
deciding metric, and the p50 latency of one single-sample call per target (the device's
``EdgeModel``, the cloud's ``CloudModel``, both decrypted in memory) next to the floor: the
original file run in its own runtime (LiteRT for .tflite, ONNX Runtime for .onnx, Keras for
.h5) on the same input.  Models bentoedge refuses for a target are listed with the refusal.

    python -m bench.model_zoo [--quick]   ->  bench/results/model_zoo.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import write_result
from tests.conformance.zoo import MODELS, ZooModel, fetch


def _p50_ms(fn: Callable[[], object], n: int) -> float:
    fn()  # warm-up: first call allocates
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return round(statistics.median(times), 4)


def _gate(manifest: Any, artifact: str) -> str:
    rows = [r for r in manifest.quality if r.get("artifact") == artifact and r.get("bound")
            and r.get("metric") != "finite"]
    if not rows:
        return "-"
    worst = min(rows, key=lambda r: (r.get("passed", True), -abs(float(r["value"]) - float(r["baseline"] or 0))))
    return f"{worst['metric']} {worst['value']:.4g} ({worst['output']})"


def _floor(model: ZooModel, path: Path, inputs: list[np.ndarray]) -> Callable[[], object]:
    """One call of the original file in its own runtime, everything loaded beforehand."""
    if model.kind == "tflite":
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # the legacy runtime
            from tflite_runtime.interpreter import Interpreter
        interp = Interpreter(model_path=str(path))
        interp.allocate_tensors()
        ins, outs = interp.get_input_details(), interp.get_output_details()
        raw = [x.astype(d["dtype"]) for x, d in zip(inputs, ins, strict=True)]  # values do not matter for time

        def tflite_call() -> object:
            for d, x in zip(ins, raw, strict=True):
                interp.set_tensor(d["index"], x)
            interp.invoke()
            return [interp.get_tensor(d["index"]) for d in outs]
        return tflite_call
    if model.kind == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {i.name: x for i, x in zip(sess.get_inputs(), inputs, strict=True)}
        return lambda: sess.run(None, feed)
    import keras

    net = keras.models.load_model(path, compile=False)
    return lambda: net(inputs[0], training=False)


def measure(model: ZooModel, work: Path, n: int) -> list[dict[str, Any]]:
    from bentoedge.bentos.convert import open_source
    from bentoedge.bentos.keystore import LocalKeys
    from bentoedge.bentos.recipients import Keyring
    from bentoedge.bentos.store import ModelStore
    from bentoedge.cloud.service_core import CloudSettings
    from bentoedge.cloud.service_model import open_cloud_model
    from bentoedge.edge.runtime import load_edge_model

    path = fetch(model)
    names = [t.name for t in open_source(path).signature.inputs]
    arrays = model.inputs(np.random.default_rng(7))
    by_name = {names[int(i)]: arrays[i] for i in sorted(arrays)}
    data = work / f"{model.id}.npz"
    np.savez(data, **by_name)  # type: ignore[arg-type]
    source_bytes = path.stat().st_size
    base: dict[str, Any] = {"model": model.id, "package": model.package, "format": model.kind,
            "source_bytes": path.stat().st_size}
    if model.edge is None and model.cloud is None:
        return [{**base, "target": "-", "artifact": "refused", "note": "; ".join(" ".join(w) for w in model.refusals.values())}]
    name = f"zoo-{model.id}"
    res = subprocess.run([sys.executable, "-m", "bentoedge", "build", str(path), "--name", name, "--validation", str(data),
                          "--calibration", str(data), "--edge", model.edge or "none", "--cloud", model.cloud or "none"],
                         capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        return [{**base, "target": "-", "artifact": "build failed", "note": res.stderr.strip().splitlines()[-1][:200]}]
    sealed = ModelStore().get(name)
    sig = sealed.manifest.signature
    # One sample a call; a per-call model (a scalar input: no samples axis) takes its whole call.
    def first(arr: np.ndarray) -> np.ndarray:
        return arr if sig.per_call else arr[:1]

    one = {t.name: first(by_name[n]) for t, n in zip(sig.inputs, names, strict=True)}
    original = [first(by_name[n]) for n in names]
    floor = _p50_ms(_floor(model, path, original), n)
    rows = []
    for art in sealed.manifest.artifacts:
        if art.runtime == "litert":
            ring = Keyring().add_kek(LocalKeys(Path(os.environ["BENTOEDGE_HOME"])).kek())
            edge = load_edge_model(sealed, ring, artifact_id=art.id)
            p50 = _p50_ms(lambda edge=edge: edge.predict(one), n)  # type: ignore[misc]
        elif art.runtime == "onnxruntime":
            cloud = open_cloud_model(sealed, CloudSettings(model=name, device="cpu")).model
            p50 = _p50_ms(lambda cloud=cloud: cloud.predict(one), n)  # type: ignore[misc]
        else:
            continue
        rows.append({**base, "target": art.target, "artifact": art.id, "size_bytes": art.size,
                     "size_vs_source": round(art.size / source_bytes, 3), "gate": _gate(sealed.manifest, art.id),
                     "p50_ms": p50, "floor_p50_ms": floor,
                     "vs_floor": round(p50 / floor, 2) if floor else None})
    for target, words in model.refusals.items():
        rows.append({**base, "target": target, "artifact": "refused", "note": " ".join(words)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer timed calls per model")
    args = parser.parse_args()
    n = 20 if args.quick else 100
    with tempfile.TemporaryDirectory(prefix="bentoedge-zoo-bench-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("BENTOEDGE_HOME", str(work / "home"))
        os.environ.setdefault("BENTOML_HOME", str(work / "bentoml"))
        subprocess.run([sys.executable, "-m", "bentoedge", "keys", "init"], capture_output=True, check=False)
        rows: list[dict[str, Any]] = []
        for model in MODELS:
            print(f"   {model.id} ...", flush=True)
            rows.extend(measure(model, work, n))
    write_result("model_zoo", {
        "goal": "every model serves on each target it is built for, at a latency near the raw runtime on the original file",
        "method": f"single-sample p50 over {n} calls after one warm-up, in process; floor = the original file in its runtime",
        "models": rows,
    })


if __name__ == "__main__":
    main()
