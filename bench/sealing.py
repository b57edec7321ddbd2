"""Benchmark: what sealing costs at load time, for a model of at least 100 MB.

Builds an ONNX model with large random MatMul weights, seals it as a cloud artifact with
bentos.sealed.seal (KEK recipient, signed manifest), and times in the same run
(a) plain load: read the file and ``InferenceSession(bytes)``,
(b) sealed load, the path the cloud service takes (``cloud.service_model.open_cloud_model``):
check the manifest signature, unwrap the key, decrypt into memory while checking the signed
plaintext SHA-256 (``SealedModel.decrypt``), ``InferenceSession(bytes)``.
Also measures single-thread decryption throughput.  Goals: ratio <= 1.15, >= 1 GB/s.
The plaintext model file is written to a private temp folder that is removed afterwards
(it stands for the user's own source file).  Usage: python -m bench.sealing [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from bench._common import write_result  # noqa: E402
from bentoedge.bentos import aead  # noqa: E402
from bentoedge.bentos.convert import private_workdir  # noqa: E402
from bentoedge.bentos.keystore import LocalKeys  # noqa: E402
from bentoedge.bentos.manifest import Signature, TensorSpec  # noqa: E402
from bentoedge.bentos.recipients import KekRecipient, Keyring, WrapContext  # noqa: E402
from bentoedge.bentos.sealed import Plain, SealedModel, SealRequest, seal  # noqa: E402


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
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    with private_workdir("bentoedge-bench-") as work:
        src = work / "model.onnx"
        src.write_bytes(plain)
        keys = LocalKeys(work / "home")
        keys.init()
        sig = Signature((TensorSpec("x", "float32", (None, 1024)),), (TensorSpec("y", "float32", (None, 1024)),))
        sealed_dir = work / "sealed"
        seal(SealRequest("bench", "v1", 1, {"kind": "onnx", "sha256": "0" * 64}, sig,
                         [Plain("cloud-fp32", "cloud", plain, "onnxruntime", "fp32")]),
             sealed_dir, [KekRecipient(keys.kek())], keys.signing_key())
        sealed = SealedModel.open(sealed_dir)
        ring = Keyring().add_kek(keys.kek())
        trusted = keys.trusted_signers()
        size_enc = sealed.manifest.artifact("cloud-fp32").size
        plain_t, sealed_t, dec_t = [], [], []
        for _ in range(reps):
            t = time.perf_counter()
            ort.InferenceSession(src.read_bytes(), so, providers=["CPUExecutionProvider"])
            plain_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            sealed.verify_signature(trusted)
            buf = sealed.decrypt("cloud-fp32", ring)
            t_dec = time.perf_counter()
            ort.InferenceSession(buf, so, providers=["CPUExecutionProvider"])
            sealed_t.append(time.perf_counter() - t)
            dec_t.append(t_dec - t)
            del buf
        ct = (sealed_dir / sealed.manifest.artifact("cloud-fp32").file).read_bytes()
        ad = b"bentoedge/1|bench|v1|cloud-fp32"
        key = ring.unwrap(sealed.wraps()["cloud-fp32"], WrapContext("bench", "v1", "cloud-fp32",
                                                                    sealed.manifest.artifact("cloud-fp32").sha256))
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
