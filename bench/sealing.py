"""Benchmark: what sealing costs at load time, for a model of at least 100 MB.

Builds an ONNX model with large random MatMul weights, seals it with bentos.aead, and
times in the same run (a) plain load: read the file and ``InferenceSession(bytes)``,
(b) sealed load: read the ciphertext, decrypt into memory, ``InferenceSession(bytes)``.
Also measures single-thread decryption throughput.  Goals: ratio <= 1.15, >= 1 GB/s.
The plaintext model file is written to a private temp folder that is removed afterwards
(it stands for the user's own source file).  Usage: python bench/sealing.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import write_result  # noqa: E402
from bentos import aead  # noqa: E402
from bentos.convert import private_workdir  # noqa: E402


def make_model(mb: int) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    dim = 1024
    n = max(1, (mb << 20) // (dim * dim * 4))
    rng = np.random.default_rng(0)
    inits, nodes, prev = [], [], "x"
    for i in range(n):
        w = (rng.standard_normal((dim, dim)) / 32).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, dim])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, dim])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return bytes(model.SerializeToString())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (< 60 s)")
    args = ap.parse_args()
    import onnxruntime as ort

    reps = 2 if args.quick else 5
    plain = make_model(104)
    key = os.urandom(32)
    ad = b"bentoedge/1|bench|v1|cloud-fp32"
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    with private_workdir("bentoedge-bench-") as work:
        src, enc = work / "model.onnx", work / "model.onnx.enc"
        src.write_bytes(plain)
        with open(enc, "wb") as f:
            aead.encrypt_stream(key, [plain[i:i + (8 << 20)] for i in range(0, len(plain), 8 << 20)], f, ad)
        size_enc = enc.stat().st_size
        plain_t, sealed_t, dec_t = [], [], []
        for _ in range(reps):
            t = time.perf_counter()
            ort.InferenceSession(src.read_bytes(), so, providers=["CPUExecutionProvider"])
            plain_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            with open(enc, "rb", buffering=0) as f:
                buf = aead.decrypt_file(key, f, size_enc, ad)
            t_dec = time.perf_counter()
            ort.InferenceSession(bytes(buf), so, providers=["CPUExecutionProvider"])
            sealed_t.append(time.perf_counter() - t)
            dec_t.append(t_dec - t)
            del buf
        ct = enc.read_bytes()
    mem = []
    for _ in range(reps):
        t = time.perf_counter()
        aead.decrypt(key, ct, ad)
        mem.append(time.perf_counter() - t)
    p, s = statistics.median(plain_t), statistics.median(sealed_t)
    gbps = len(plain) / statistics.median(mem) / 1e9
    data = {
        "model_bytes": len(plain), "ciphertext_bytes": size_enc, "repetitions": reps,
        "plain_load_s": {"median": p, "samples": plain_t},
        "sealed_load_s": {"median": s, "samples": sealed_t, "decrypt_median": statistics.median(dec_t)},
        "ratio_sealed_over_plain": s / p,
        "decrypt_gb_per_s_one_thread": gbps,
        "goal": {"ratio_max": 1.15, "ratio_met": s / p <= 1.15, "decrypt_gb_per_s_min": 1.0,
                 "decrypt_met": gbps >= 1.0},
    }
    out = write_result("sealing", data)
    print(f"plain {p:.3f}s sealed {s:.3f}s ratio {s / p:.3f}; decrypt {gbps:.2f} GB/s -> {out}")


if __name__ == "__main__":
    main()
