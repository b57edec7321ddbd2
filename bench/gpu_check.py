"""The GPU check: build a model, serve it on CUDA and on the CPU, compare the answers, time both.

What ``bentoedge containerize --target gpu`` promises, run where a GPU is: the service on a
CUDA machine picks the ``cloud-fp16`` artifact (``service_core.choose_placement``), its
answers agree with the CPU ``cloud-fp32`` artifact, and both are timed beside the raw ONNX
Runtime call (the floor) on the same device.  ``bench/gpu_check.sh`` sets up the environment
(onnxruntime-gpu) and runs this; about five minutes, most of it installing.

    python -m bench.gpu_check              # needs CUDAExecutionProvider; writes bench/results/gpu_check.json
    python -m bench.gpu_check --cpu-dry-run  # no GPU: runs every step with the CPU in CUDA's place and
                                             # writes nothing to bench/results (a check of the script)

Figures: p50 and p99 per request at concurrency 1 and 16 (batch 1) for the service on each
device, the raw session on each device, max absolute error and top-1 agreement of fp16-on-CUDA
against fp32-on-CPU over the same inputs.  Goal: top-1 agreement >= 0.99, max |error| <= 1e-2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _raw(model: bytes, providers: list[str], xs: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(model, providers=providers)
    name = sess.get_inputs()[0].name
    dtype = np.float16 if "float16" in sess.get_inputs()[0].type else np.float32
    for x in xs[:50]:
        sess.run(None, {name: x[None, :].astype(dtype)})
    lat = []
    for x in xs:
        t = time.perf_counter()
        sess.run(None, {name: x[None, :].astype(dtype)})
        lat.append(time.perf_counter() - t)
    out = np.asarray(sess.run(None, {name: xs.astype(dtype)})[0], dtype=np.float32)
    return {"p50_ms": float(np.percentile(lat, 50)) * 1e3, "p99_ms": float(np.percentile(lat, 99)) * 1e3,
            "providers": sess.get_providers()}, out  # type: ignore[dict-item]


def _served(tag: str, label: str, env: dict[str, str], xs: np.ndarray, work: Path) -> tuple[dict[str, Any], np.ndarray]:
    import http.client

    from bench.cloud_serving import free_port, load
    from bentoedge.cloud.serve import start_server, stop_server, wait_ready

    port, log = free_port(), work / f"serve-{label}.log"
    proc = start_server(tag, port, log=log, env={"BENTOEDGE_AUTH": "off", **env})
    try:
        wait_ready(f"http://127.0.0.1:{port}", timeout=180, proc=proc, log=log)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/predict", json.dumps({"inputs": {"x": xs.tolist()}}), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        doc = json.loads(resp.read())
        conn.close()
        if resp.status != 200:
            raise SystemExit(f"error: the {label} service answered {resp.status}: {doc}")
        out = np.asarray(next(iter(doc["outputs"].values())), dtype=np.float32)
        bodies = [json.dumps({"inputs": {"x": x[None, :].tolist()}}).encode() for x in xs]
        load(port, "/predict", bodies[:20], 1)
        figures = {f"c{c}": {k: v for k, v in load(port, "/predict", bodies, c).items() if k != "served_by"}
                   for c in (1, 16)}
        placed = [line for line in log.read_text(errors="replace").splitlines() if "bentoedge: serving" in line][-1:]
        artifact = next((w for line in placed for w in line.split() if w.startswith("cloud-")), "")
        return {"artifact": artifact, "placement_log": placed, **figures}, out
    finally:
        stop_server(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-dry-run", action="store_true", help="no GPU: the CPU stands in for CUDA; writes no result")
    ap.add_argument("--requests", type=int, default=500)
    args = ap.parse_args()

    import onnxruntime as ort

    have_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if not have_cuda and not args.cpu_dry_run:
        print("error: onnxruntime offers no CUDAExecutionProvider here (providers: "
              f"{', '.join(ort.get_available_providers())}); run bench/gpu_check.sh on a machine with an NVIDIA "
              "GPU, or pass --cpu-dry-run to check the script", file=sys.stderr)
        raise SystemExit(2)
    gpu_device, gpu_providers = (("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]) if have_cuda
                                 else ("cpu", ["CPUExecutionProvider"]))

    work = Path(tempfile.mkdtemp(prefix="bentoedge-gpu-check-"))
    os.environ.update({"BENTOML_HOME": str(work / "bentoml"), "BENTOML_DO_NOT_TRACK": "true",
                       "BENTOEDGE_HOME": str(work / "home")})
    try:
        from bench._common import write_result
        from bentoedge.bentos.build import BuildOptions, build
        from bentoedge.bentos.keystore import LocalKeys
        from bentoedge.bentos.recipients import Keyring
        from bentoedge.examples.digits import make_example

        home = work / "home"
        LocalKeys(home).init()
        print("building digits with cloud fp32 and fp16 ...", flush=True)
        example = make_example(work / "example")
        sealed = build(BuildOptions(source=example["model"], name="digits-gpu", home=home, version="g1",
                                    calibration=example["calibration"], validation=example["validation"],
                                    edge=(), cloud=("fp32", "fp16")))
        keyring = Keyring().add_kek(LocalKeys(home).kek())
        xs = np.random.default_rng(0).random((args.requests, 64), dtype=np.float32)
        raw_cpu, ref = _raw(sealed.decrypt("cloud-fp32", keyring), ["CPUExecutionProvider"], xs)
        raw_gpu, _ = _raw(sealed.decrypt("cloud-fp16", keyring), gpu_providers, xs)
        print("serving on", gpu_device, "and on the CPU ...", flush=True)
        # On CUDA the service must pick cloud-fp16 by itself; in a dry run it is told to, so the
        # fp16 path is what runs either way.
        gpu_env = {"BENTOEDGE_DEVICE": "cuda"} if have_cuda else {"BENTOEDGE_DEVICE": "cpu",
                                                                  "BENTOEDGE_CLOUD_ARTIFACT": "cloud-fp16"}
        served_gpu, out_gpu = _served(sealed.manifest.tag, gpu_device, gpu_env, xs, work)
        served_cpu, out_cpu = _served(sealed.manifest.tag, "cpu", {"BENTOEDGE_DEVICE": "cpu"}, xs, work)
        max_err = float(np.max(np.abs(out_gpu - ref)))
        top1 = float(np.mean(out_gpu.argmax(axis=1) == ref.argmax(axis=1)))
        data = {"model": "examples/digits (64 -> 512 -> 256 -> 10 MLP)", "requests": args.requests,
                "gpu": have_cuda, "raw_onnxruntime": {"cpu_fp32": raw_cpu, f"{gpu_device}_fp16": raw_gpu},
                "service": {"gpu_fp16" if have_cuda else "dry_run_fp16_on_cpu": served_gpu, "cpu_fp32": served_cpu},
                "gpu_side_artifact": served_gpu["artifact"],  # cloud-fp16: picked on CUDA by itself
                "agreement": {"max_abs_error_vs_cpu_fp32": max_err, "top1_agreement": top1,
                              "cpu_service_max_abs_error": float(np.max(np.abs(out_cpu - ref)))},
                "goal": "top-1 agreement >= 0.99 and max |error| <= 1e-2 (fp16 on CUDA vs fp32 on the CPU)",
                "goal_met": top1 >= 0.99 and max_err <= 1e-2 and served_gpu["artifact"] == "cloud-fp16"}
        print(json.dumps(data, indent=2, default=str))
        if have_cuda:
            print("wrote", write_result("gpu_check", data))
        else:
            print("--cpu-dry-run: no result written (the CPU stood in for CUDA)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
