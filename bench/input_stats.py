"""What the per-input statistics cost a locally answered request (``edge.inputs.InputWatch``).

Every request the device answers itself adds its inputs to the running statistics the fleet
reports carry (counts, moments, range, NaN/Inf, fixed-bin histogram).  This measures that
``observe`` call per request for three input sizes: the tiny test model's 1x4, the digits
example's 1x64 and a 1x96x96x3 image (sampled down to ``SAMPLE_VALUES`` values), next to
the work the same request already does in the same run: the raw LiteRT ``invoke`` of the
tiny model (the floor of a local answer) and parsing the request's JSON body against the
signature (``bentos.api.parse_request``, which every local answer pays).

    python -m bench.input_stats   -> bench/results/input_stats.json

Medians of ``ROUNDS`` timed loops of ``CALLS`` calls each; one process, so only the ratios
within this run mean anything.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from bench._common import write_result
from bentoedge.bentos.api import parse_request
from bentoedge.bentos.drift import reference_stats
from bentoedge.bentos.manifest import Signature, TensorSpec
from bentoedge.bentos.runtimes.litert import LiteRTModel
from bentoedge.edge.inputs import SAMPLE_VALUES, InputWatch

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "data" / "sync_tiny_fp32.tflite"
ROUNDS, CALLS = 7, 2000


def per_call_us(fn: Callable[[], Any], calls: int = CALLS) -> float:
    """Median over ``ROUNDS`` loops of the mean microseconds per call."""
    fn()
    times = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(times)


def case(name: str, shape: tuple[int, ...], floor_us: float | None) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    sig = Signature((TensorSpec("x", "float32", (None, *shape[1:])),), (TensorSpec("y", "float32", (None, 1)),))
    reference = reference_stats({"x": rng.normal(0, 1, (200, *shape[1:]))})
    model = SimpleNamespace(name="m", version="v1", signature=sig,
                            manifest=SimpleNamespace(extra={"reference_stats": reference}))
    x = rng.normal(0, 1, shape).astype(np.float32)
    watch = InputWatch()
    observe_us = per_call_us(lambda: watch.observe(model, {"x": x}))
    body = json.dumps({"inputs": {"x": x.tolist()}}).encode()
    calls = max(20, CALLS * 4 // max(4, x.size // 16))
    parse_us = per_call_us(lambda: parse_request(body, "application/json", sig, 64 << 20), calls)
    report_us = per_call_us(lambda: watch.report("m", "v1"), 200)
    return {"name": name, "values": int(x.size), "looked_at": min(int(x.size), SAMPLE_VALUES * 2),
            "p50_ms": round(observe_us / 1000, 6), "observe_us": round(observe_us, 2),
            "parse_json_us": round(parse_us, 2), "floor_invoke_us": None if floor_us is None else round(floor_us, 2),
            "share_of_parse": round(observe_us / parse_us, 4), "report_build_us": round(report_us, 2)}


def main() -> None:
    tiny = LiteRTModel(TINY.read_bytes(), ["x"], ["y"], 1)
    x4 = {"x": np.ones((1, 4), np.float32)}
    invoke_us = per_call_us(lambda: tiny.run(x4))
    cases = [case("tiny 1x4", (1, 4), invoke_us), case("digits 1x64", (1, 64), None),
             case("image 1x96x96x3 (sampled)", (1, 96, 96, 3), None)]
    write_result("input_stats", {
        "what": "edge.inputs.InputWatch.observe per locally answered request, next to the request's own work",
        "sample_values": SAMPLE_VALUES, "floor_invoke_tiny_us": round(invoke_us, 2), "cases": cases})
    for c in cases:
        print(f"{c['name']:>28}: observe {c['observe_us']:8.1f} us  parse {c['parse_json_us']:9.1f} us  "
              f"report {c['report_build_us']:6.1f} us")
    print(f"tiny raw invoke: {invoke_us:.1f} us")


if __name__ == "__main__":
    main()
