"""Shared helpers for the benchmark scripts: where results go and what machine made them.

Every script in ``bench/`` ends with ``write_result(name, data)``, which stores
``bench/results/<name>.json`` with the script's figures plus an ``environment`` block
(machine, CPU count, library versions, date), so ``bench/report.py`` can render every
result the same way and a number is never read without knowing where it came from.
Writes go to a temporary name and are renamed into place, so an interrupted run never
leaves a half-written result behind.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

#: Distributions whose versions explain a benchmark figure.
PACKAGES = ("bentoedge", "numpy", "cryptography", "tensorflow-cpu", "tensorflow", "keras", "ai-edge-litert",
            "tflite-runtime", "onnx", "onnxruntime", "onnxruntime-gpu", "tf2onnx", "bentoml", "tuf", "boto3")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _versions() -> dict[str, str]:
    out = {}
    for dist in PACKAGES:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def environment() -> dict[str, Any]:
    """Machine, interpreter, library versions and date (UTC) of this run."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count() or 0,
        "cpus_usable": usable,
        "versions": _versions(),
    }


def write_result(name: str, data: dict[str, Any]) -> Path:
    """Write ``data`` plus ``environment()`` to ``bench/results/<name>.json``; return the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    doc = {**data, "environment": environment()}
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 10.0) -> None:
    """Terminate a server a benchmark started, and kill it if it does not stop in time."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
