"""Benchmark: TFLite size and accuracy per precision, on digits and a MobileNetV2-shaped model.

For the digits classifier (trained in seconds, see examples.digits) it converts fp32,
fp16, dynamic and int8 TFLite and measures size and validation accuracy; for a
MobileNetV2 (random weights, 224x224x3 unless --quick) it measures sizes only (random
weights have no accuracy).  Goals: int8 >= 3.5x smaller than fp32; digits accuracy drop
<= 1 point.  Usage: python -m bench.size_accuracy [--quick]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from bench._common import write_result  # noqa: E402
from bentoedge.bentos import convert  # noqa: E402

PRECISIONS = ("fp32", "fp16", "dynamic", "int8")


def sizes_and_accuracy(model: Path, calib: dict[str, np.ndarray], val: dict[str, np.ndarray] | None,
                       labels: np.ndarray | None) -> list[dict[str, object]]:
    src = convert.open_source(model)
    rows: list[dict[str, object]] = []
    with convert.private_workdir("bentoedge-bench-") as work:
        for p in PRECISIONS:
            data = convert.to_tflite(src, p, calib, work)
            row: dict[str, object] = {"precision": p, "size_bytes": len(data)}
            if val is not None and labels is not None:
                out = convert.tflite_runner(data, src.signature)(val)
                scores = next(iter(out.values()))
                row["accuracy"] = float(np.mean(scores.argmax(1) == labels))
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 96x96 MobileNetV2 (< 60 s)")
    args = ap.parse_args()
    from bentoedge.examples.digits import make_example, make_mobilenet

    with convert.private_workdir("bentoedge-bench-") as work:
        ex = make_example(work / "digits")
        v = np.load(ex["validation"])
        digits = sizes_and_accuracy(ex["model"], dict(np.load(ex["calibration"])), {"x": v["x"]}, v["labels"])
        keras_model = __import__("keras").models.load_model(ex["model"], compile=False)
        float_acc = float(np.mean(np.asarray(keras_model(v["x"])).argmax(1) == v["labels"]))
        size = 96 if args.quick else 224
        mnet = make_mobilenet(work / "mobilenet.keras", input_size=size)
        rng = np.random.default_rng(0)
        calib = {"input_layer": rng.random((8 if args.quick else 32, size, size, 3), dtype=np.float32)}
        name = convert.open_source(mnet).signature.inputs[0].name
        calib = {name: next(iter(calib.values()))}
        mobilenet = sizes_and_accuracy(mnet, calib, None, None)

    def ratio(rows: list[dict[str, object]]) -> float:
        by = {r["precision"]: int(r["size_bytes"]) for r in rows}  # type: ignore[call-overload]
        return by["fp32"] / by["int8"]

    int8_acc = next(float(r["accuracy"]) for r in digits if r["precision"] == "int8")  # type: ignore[arg-type]
    data = {
        "digits": {"float_keras_accuracy": float_acc, "tflite": digits,
                   "int8_size_ratio": ratio(digits), "int8_accuracy_drop_points": 100 * (float_acc - int8_acc)},
        "mobilenet_v2": {"input_size": size, "tflite": mobilenet, "int8_size_ratio": ratio(mobilenet)},
        "goal": {"size_ratio_min": 3.5, "mobilenet_met": ratio(mobilenet) >= 3.5,
                 "digits_size_met": ratio(digits) >= 3.5, "accuracy_drop_points_max": 1.0,
                 "accuracy_met": 100 * (float_acc - int8_acc) <= 1.0},
        "quick": args.quick,
    }
    out = write_result("size_accuracy", data)
    print(f"digits int8 {ratio(digits):.2f}x smaller, drop {data['digits']['int8_accuracy_drop_points']:.2f} pts; "
          f"mobilenet int8 {ratio(mobilenet):.2f}x smaller -> {out}")


if __name__ == "__main__":
    main()
