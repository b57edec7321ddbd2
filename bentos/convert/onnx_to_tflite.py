"""ONNX sources to the edge: onnx2tf, run in a virtualenv of its own, makes the SavedModel
that ``convert.tflite.to_tflite`` turns into TFLite at every precision.

onnx2tf (``ONNX2TF_REQUIREMENTS``) pins exact old numpy, onnx, onnxruntime and TensorFlow
releases that conflict with the build's own, so it is an isolated build tool: an
interpreter of its own, found by ``onnx2tf_python`` (``$BENTOEDGE_ONNX2TF_PYTHON``, else the
virtualenv ``bentoedge setup onnx2tf`` made under ``$BENTOEDGE_HOME/tools/onnx2tf``), runs
``onnx2tf_worker.py`` as a child process.  Without one, building an ONNX source for the edge
is refused in one line that names the setup command; cloud-only builds never need it.

``onnx_savedmodel`` is the shell around the worker.  It fixes every dynamic input dimension
(``fixed_shapes``: a dynamic batch becomes 1, which the LiteRT binding runs sample by sample
like any batch-of-one model, and other dynamic dimensions take the validation data's
size, so the device forwards other sizes to the cloud), writes the request and one example
sample into the build's private workdir, runs the worker there with ``TMPDIR`` inside it
and a timeout, and returns the SavedModel the worker wrote: signature ``serving_default``
with the manifest's input and output names (``signature_keys``), inputs in the ONNX
layout (NCHW stays NCHW) and outputs transposed back to the ONNX layout where onnx2tf
made them channels-last.  The TFLite converter, quantization and the quality gate then
run in the build's own environment exactly as for a Keras source.

``setup_onnx2tf`` is the one-command setup: a virtualenv made by ``python -m venv`` and
``pip install`` of the pinned requirement, marked ready only once pip succeeded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from bentoedge.bentos.convert.sources import Source
from bentoedge.bentos.errors import ConversionError, DataError, UsageError
from bentoedge.bentos.manifest import Signature

ONNX2TF_ENV = "BENTOEDGE_ONNX2TF_PYTHON"
TIMEOUT_VAR = "BENTOEDGE_ONNX2TF_TIMEOUT"
ONNX2TF_VERSION = "1.29.24"
#: onnx2tf pins every dependency itself (tensorflow 2.19.0, onnx 1.19.1, numpy 1.26.4, ...).
ONNX2TF_REQUIREMENTS = (f"onnx2tf=={ONNX2TF_VERSION}",)
#: The Pythons TensorFlow 2.19 (onnx2tf's pin) has wheels for.
PYTHONS = ((3, 10), (3, 12))
SETUP_COMMAND = "bentoedge setup onnx2tf"
#: Seconds one conversion may take (a small model takes about 20 s on two cores).
DEFAULT_TIMEOUT_S = 1800.0
SETUP_TIMEOUT_S = 3600.0
READY_MARKER = "bentoedge-ready.json"
WORKER = Path(__file__).with_name("onnx2tf_worker.py")
#: The folder under the build's workdir that holds everything of this step.
STEP_DIR = "onnx2tf"
#: Names TensorFlow takes for a signature argument (it names an op after it).
_TF_ARG = re.compile(r"[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

Progress = Callable[[str], None]


def tool_dir(home: Path) -> Path:
    """Where ``bentoedge setup onnx2tf`` puts the virtualenv."""
    return Path(home) / "tools" / "onnx2tf"


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _refusal() -> str:
    return (
        f"building an ONNX source for the edge needs onnx2tf, which is not set up: run "
        f"`{SETUP_COMMAND}` once (about 2 minutes, 2.6 GB) or set {ONNX2TF_ENV} to an interpreter that "
        f"has onnx2tf=={ONNX2TF_VERSION}; or pass --edge none for a cloud-only build"
    )


def onnx2tf_python(environ: Mapping[str, str], home: Path) -> Path:
    """The interpreter to run onnx2tf with, or ConversionError (one line) saying how to get one."""
    given = environ.get(ONNX2TF_ENV, "").strip()
    if given:
        path = Path(given)
        if not path.is_file() or not os.access(path, os.X_OK):
            raise ConversionError(
                f"{ONNX2TF_ENV}={given} is not an executable Python interpreter; point it at "
                f"the bin/python of a virtualenv with onnx2tf=={ONNX2TF_VERSION}, or unset "
                f"it and run `{SETUP_COMMAND}`"
            )
        return path
    venv = tool_dir(home)
    python = _venv_python(venv)
    if (venv / READY_MARKER).is_file() and python.is_file():
        return python
    raise ConversionError(_refusal())


def signature_keys(names: list[str]) -> list[str]:
    """Names for the SavedModel's signature arguments: the manifest's own when TensorFlow takes
    them all (the LiteRT binding then binds by name), else ``in_000``, ``in_001`` ... for all
    of them, whose sorted order is their position (the binding then binds by position)."""
    if all(_TF_ARG.fullmatch(n) for n in names) and len(set(names)) == len(names):
        return list(names)
    return [f"in_{i:03d}" for i in range(len(names))]


def fixed_shapes(sig: Signature, example: Mapping[str, np.ndarray]) -> list[tuple[int, ...]]:
    """Every input's shape with no dynamic dimension left: a dynamic batch is 1, others the data's."""
    if sig.per_call:  # no samples axis: the edge artifact takes exactly the shapes of the data's call
        return [tuple(int(d) for d in np.shape(example[t.name])) for t in sig.inputs]
    out: list[tuple[int, ...]] = []
    for t in sig.inputs:
        arr = example.get(t.name)
        dims: list[int] = []
        for i, d in enumerate(t.shape):
            if d is not None:
                dims.append(int(d))
            elif i == 0:
                dims.append(1)
            elif arr is not None and np.ndim(arr) == len(t.shape):
                dims.append(int(np.shape(arr)[i]))
            else:
                raise DataError(
                    f"input {t.name!r} has a dynamic dimension {i} that the edge artifact must fix; "
                    "pass --validation data of the size the device should take"
                )
        out.append(tuple(dims))
    return out


@dataclass(frozen=True)
class OnnxSavedModel:
    """The worker's product: the SavedModel, its signature's input names and fixed shapes."""

    path: Path
    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    seconds: float


def onnx_savedmodel(
    src: Source,
    workdir: Path,
    example: Mapping[str, np.ndarray] | None,
    environ: Mapping[str, str] | None = None,
    home: Path | None = None,
) -> OnnxSavedModel:
    """The SavedModel onnx2tf makes of an ONNX source (made once per workdir, then reused)."""
    if src.kind != "onnx":
        raise ConversionError(f"onnx2tf converts ONNX sources, not {src.kind}")
    step = Path(workdir) / STEP_DIR
    done = step / "product.json"
    if done.is_file():
        doc = json.loads(done.read_text())
        return OnnxSavedModel(
            Path(doc["path"]),
            tuple(doc["keys"]),
            tuple(tuple(s) for s in doc["shapes"]),
            float(doc["seconds"]),
        )
    from bentoedge.bentos.keystore import default_home

    env = dict(os.environ if environ is None else environ)
    python = onnx2tf_python(env, home if home is not None else default_home(env))
    sig = src.signature
    if example is None:
        raise DataError(
            "converting an ONNX source for the edge needs example inputs: pass --validation F.npz"
        )
    shapes = fixed_shapes(sig, example)
    keys = signature_keys([t.name for t in sig.inputs])
    if src.path.suffix.lower() != ".onnx" or not src.path.is_file():
        raise ConversionError(f"{src.path} is not an .onnx file onnx2tf can read")
    if step.exists():  # what an earlier, failed attempt in this workdir left
        shutil.rmtree(step)
    step.mkdir(mode=0o700)
    (step / "tmp").mkdir(mode=0o700)
    sample = {
        t.name: np.asarray(example[t.name][: s[0]] if s and not sig.per_call else example[t.name], dtype=t.dtype)
        for t, s in zip(sig.inputs, shapes, strict=True)
    }
    for t, s, arr in zip(sig.inputs, shapes, sample.values(), strict=True):
        if arr.shape != s:
            raise DataError(
                f"input {t.name!r}: the edge artifact is fixed at {s} but the data gives {arr.shape}; "
                "give --validation data with at least one whole sample"
            )
    np.savez(step / "example.npz", **sample)  # type: ignore[arg-type]
    saved = step / "savedmodel"
    request = {
        "onnx": str(src.path.resolve()),
        "workdir": str(step),
        "saved_model": str(saved),
        "example": str(step / "example.npz"),
        "inputs": [
            {"name": t.name, "key": k, "dtype": t.dtype, "shape": list(s)}
            for t, k, s in zip(sig.inputs, keys, shapes, strict=True)
        ],
        "outputs": [{"name": t.name} for t in sig.outputs],
    }
    (step / "request.json").write_text(json.dumps(request))
    result = _run_worker(python, step, env)
    if not result.get("ok"):
        raise ConversionError(_failure(src, result, step / "worker.log"))
    if not (saved / "saved_model.pb").is_file():
        raise ConversionError(
            f"onnx2tf wrote no SavedModel for {src.path.name}; pass --edge none for a cloud-only build"
        )
    seconds = float(result.get("seconds", 0.0))
    done.write_text(
        json.dumps(
            {
                "path": str(saved),
                "keys": keys,
                "shapes": [list(s) for s in shapes],
                "seconds": seconds,
            }
        )
    )
    return OnnxSavedModel(saved, tuple(keys), tuple(shapes), seconds)


def _timeout(env: Mapping[str, str]) -> float:
    raw = env.get(TIMEOUT_VAR, "").strip()
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise UsageError(f"{TIMEOUT_VAR}={raw} is not a number of seconds") from None


def _child_env(python: Path, step: Path, env: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment: the venv's bin first on PATH (onnx2tf runs ``onnxsim`` from it),
    temporary files inside the private step folder, and none of the build's Python settings."""
    child = {k: v for k, v in env.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    child["PATH"] = os.pathsep.join([str(python.parent), env.get("PATH", os.defpath)])
    if (python.parent.parent / "pyvenv.cfg").is_file():
        child["VIRTUAL_ENV"] = str(python.parent.parent)
    child["TMPDIR"] = str(step / "tmp")
    child.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    child["CUDA_VISIBLE_DEVICES"] = child.get("CUDA_VISIBLE_DEVICES", "")  # conversion is CPU work
    return child


def _run_worker(python: Path, step: Path, env: Mapping[str, str]) -> dict[str, Any]:
    log_path, result_path = step / "worker.log", step / "result.json"
    cmd = [str(python), "-I", str(WORKER), str(step / "request.json"), str(result_path)]
    timeout = _timeout(env)
    with open(log_path, "wb") as log:
        code = _run_group(cmd, step, _child_env(python, step, env), log, timeout)
    if code is None:
        return {
            "ok": False,
            "error": f"onnx2tf took over {timeout:.0f} s and was stopped "
            f"(raise {TIMEOUT_VAR} for a large model)",
        }
    if result_path.is_file():
        try:
            doc = json.loads(result_path.read_text())
            if isinstance(doc, dict):
                return doc
        except ValueError:
            pass
    return {"ok": False, "error": f"the onnx2tf process ended with exit code {code} and no result"}


def _run_group(
    cmd: list[str], cwd: Path, env: Mapping[str, str], log: IO[bytes], timeout: float
) -> int | None:
    """Run ``cmd`` in a process group of its own; its exit code, or None when it ran out of time
    (the whole group, onnx2tf's onnxsim children included, is killed then)."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=dict(env),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return None
    except BaseException:  # Ctrl-C: take the converter down with the build
        _kill_group(proc)
        raise


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait(timeout=30)


def log_hint(text: str) -> str | None:
    """The most telling line of onnx2tf's output: its last ERROR line, else the last exception line."""
    lines = [_ANSI.sub("", ln).strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    for ln in reversed(lines):
        if ln.startswith("ERROR") or "ERROR:" in ln:
            return ln.split("ERROR:", 1)[-1].strip()[:240] or None
    for ln in reversed(lines):
        if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", ln):
            return ln[:240]
    return None


def _failure(src: Source, result: Mapping[str, Any], log_path: Path) -> str:
    if result.get("missing"):
        return (
            f"the onnx2tf interpreter {result.get('error', '')}; run `{SETUP_COMMAND} --force` "
            f"or point {ONNX2TF_ENV} at a virtualenv with onnx2tf=={ONNX2TF_VERSION}"
        )
    why = str(result.get("error") or "onnx2tf failed")
    try:
        hint = log_hint(log_path.read_text(errors="replace")[-200_000:])
    except OSError:
        hint = None
    if hint and hint not in why:
        why = f"{why}: {hint}"
    flow = control_flow_ops(src)
    if flow:  # the likeliest cause, named first: onnx2tf maps control flow only in simple cases
        why = f"it holds control flow ({', '.join(flow)} op), which onnx2tf could not map ({why})"
    return (
        f"onnx2tf cannot convert {src.path.name} for the edge: {why}; pass --edge none for a "
        "cloud-only build"
    ).replace("\n", " ")


#: ONNX ops whose subgraphs run conditionally or repeatedly: TFLite has no general equivalent.
CONTROL_FLOW_OPS = ("If", "Loop", "Scan")


def control_flow_ops(src: Source) -> list[str]:
    """The control-flow op types in the main graph of an ONNX source, in the order they appear."""
    try:
        from bentoedge.bentos.convert.common import onnx

        graph = onnx().load_from_string(bytes(src.handle)).graph
    except Exception:  # an unreadable graph names nothing here: the converter's error stands
        return []
    return list(dict.fromkeys(n.op_type for n in graph.node if n.op_type in CONTROL_FLOW_OPS))


# ---- setup ----------------------------------------------------------------------------------


def python_version(python: str) -> tuple[int, int]:
    """``(major, minor)`` of an interpreter, or UsageError when it does not run."""
    if python == sys.executable:
        return sys.version_info[:2]
    try:
        res = subprocess.run(
            [python, "-c", "import sys; print(sys.version_info[0], sys.version_info[1])"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"cannot run {python}: {exc}; give an interpreter with --python") from None
    parts = res.stdout.split()
    if res.returncode != 0 or len(parts) != 2:
        raise UsageError(
            f"{python} is not a working Python interpreter; give another with --python"
        )
    return int(parts[0]), int(parts[1])


def setup_onnx2tf(
    home: Path,
    base_python: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Make (or find) the onnx2tf virtualenv under ``home``; returns its interpreter."""
    note = progress or (lambda _msg: None)
    venv = tool_dir(home)
    python = _venv_python(venv)
    if (venv / READY_MARKER).is_file() and python.is_file() and not force:
        note(f"onnx2tf is already set up in {venv} (--force rebuilds it)")
        return python
    base = base_python or sys.executable
    version = python_version(base)
    lo, hi = PYTHONS
    if not lo <= version <= hi:
        raise UsageError(
            f"onnx2tf=={ONNX2TF_VERSION} pins TensorFlow 2.19, which needs Python "
            f"{lo[0]}.{lo[1]}-{hi[0]}.{hi[1]}, and {base} is {version[0]}.{version[1]}: "
            f"give one with --python (e.g. --python python3.11)"
        )
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    log_path = venv.parent / "onnx2tf-setup.log"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        note(f"creating a virtualenv for onnx2tf in {venv}")
        _setup_step([base, "-m", "venv", str(venv)], log, 600.0, log_path, venv)
        note(
            f"installing {' '.join(ONNX2TF_REQUIREMENTS)} and its pinned TensorFlow "
            f"(about 2.6 GB; 2 minutes or more; log {log_path})"
        )
        _setup_step(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                *ONNX2TF_REQUIREMENTS,
            ],
            log,
            SETUP_TIMEOUT_S,
            log_path,
            venv,
        )
    (venv / READY_MARKER).write_text(
        json.dumps(
            {
                "requirements": list(ONNX2TF_REQUIREMENTS),
                "seconds": round(time.monotonic() - started, 1),
            }
        )
    )
    note(f"onnx2tf is ready in {venv} ({time.monotonic() - started:.0f} s)")
    return python


def _setup_step(cmd: list[str], log: IO[bytes], timeout: float, log_path: Path, venv: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    try:
        code = _run_group(cmd, venv.parent, env, log, timeout)
    except OSError as exc:
        raise UsageError(
            f"cannot run {cmd[0]}: {exc.strerror or exc}; give an interpreter with --python"
        ) from None
    if code == 0:
        return
    log.flush()
    tail = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in tail if ln.startswith("ERROR")]
    why = (errors or tail or ["no output"])[-1][:240]
    shutil.rmtree(venv, ignore_errors=True)
    what = "timed out" if code is None else f"exit {code}"
    raise ConversionError(
        f"setting up onnx2tf failed ({cmd[2] if len(cmd) > 2 else cmd[0]}: {what}): {why}; "
        f"see {log_path}"
    )
