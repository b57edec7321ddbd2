"""``bentoedge agent run`` imports only what it uses.

A real ``agent run`` process (the console entry point, ``python -m bentoedge``) serves a
synced model until its first 200 on ``/predict``, is stopped with SIGTERM, and writes the
names in ``sys.modules`` at exit.  This environment has everything installed (TensorFlow,
ONNX Runtime, BentoML, boto3), so a module listed here was really imported, not merely
absent: a device install must be able to do without every one of them, and a device pays
start-up time and RSS for each it loads.  (What they cost is measured, not asserted, by
bench/device_startup.py.)
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sync_support import make_device, seal_tiny, signer_pub

from bentoedge.bentos.api import NPZ, encode_npz
from bentoedge.cloud.channel import Channel
from bentoedge.edge import config as agent_config
from bentoedge.edge.wiring import wire

ROOT = Path(__file__).resolve().parents[2]

#: Packages the agent never uses: the build and cloud stacks, AWS, the CLI's rich output.
FORBIDDEN = ("tensorflow", "keras", "tf_keras", "tf2onnx", "onnx", "onnxruntime", "onnx2tf", "bentoml", "boto3",
             "botocore", "s3transfer", "rich", "matplotlib", "pandas", "scipy", "torch", "jax", "moto",
             "bentoedge.cloud", "bentoedge.bentos.build", "bentoedge.bentos.cli", "bentoedge.bentos.store",
             "bentoedge.bentos.convert", "bentoedge.demo", "bentoedge.python_api")

#: Every third-party top-level package ``agent run`` may import, and what for.
ALLOWED = {
    "bentoedge": "itself",
    "click": "the command line (bentoedge agent run --config ...)",
    "numpy": "tensors",
    "ai_edge_litert": "the TFLite runtime", "tflite_runtime": "the TFLite runtime where LiteRT is absent",
    "cython_runtime": "the module every Cython extension makes (tflite-runtime, numpy < 2)",
    "cryptography": "signatures, key unwrap, AES-GCM",
    "blake3": "sealed format 1.1 segment digests",
    "orjson": "JSON bodies",
    "tomli": "agent.toml on Python < 3.11",
    "tuf": "the update channel's metadata", "securesystemslib": "tuf's keys and signatures",
    "urllib3": "imported by tuf.ngclient's package (its default fetcher, which the agent replaces)",
    "google": "securesystemslib's probe for google.cloud (an empty namespace package here)",
    "backports": "urllib3's probe for backports.zstd",
}

RUN_AND_LIST = """
import atexit, json, runpy, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv[0] = "bentoedge"
runpy.run_module("bentoedge", run_name="__main__")
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _first_200(port: int, body: bytes, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> bytes:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("POST", "/predict", body, {"Content-Type": NPZ})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status == 200:
                return data
        except OSError:
            time.sleep(0.02)
        finally:
            conn.close()
    pytest.fail(f"agent run gave no 200 on /predict within {timeout_s} s (exit {proc.poll()})")


def _env() -> dict[str, str]:
    return dict(os.environ)  # the installed bentoedge, as on a device (CI installs the wheel)


def _third_party(modules: list[str]) -> set[str]:
    std = set(sys.stdlib_module_names)
    return {m.split(".")[0] for m in modules if m.split(".")[0] not in std and not m.startswith("_")}


@pytest.mark.slow
def test_agent_run_imports_nothing_it_does_not_use(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ch = Channel.init((tmp_path / "chan").as_uri(), home=home)
    dev = make_device(tmp_path / "dev", ch.url, ch.root_bytes(), signer_pub(home), poll_seconds=3600)
    agent_config.save(dev.config)
    ch.enroll("dev-1", dev.pub_pem)
    ch.publish(seal_tiny(tmp_path / "s1", home, "v1", 1))
    with wire(dev.config) as wired:  # a device that has synced v1 before this start
        assert wired.agent.sync_once().ok
    listed, port = tmp_path / "modules.json", _free_port()
    proc = subprocess.Popen([sys.executable, "-c", RUN_AND_LIST, str(listed), "agent", "run", "--config",
                             str(tmp_path / "dev" / "agent.toml"), "--port", str(port)],
                            env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        answer = _first_200(port, encode_npz({"x": np.ones((1, 4), np.float32)}), proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1].decode()
    assert proc.returncode == 0, err[-2000:]
    assert answer
    modules = json.loads(listed.read_text())
    assert "bentoedge.edge.server" in modules and "bentoedge.edge.sync.agent" in modules  # it did start up
    loaded = [m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert not loaded, f"agent run imported what it never uses: {loaded}"
    unexpected = _third_party(modules) - set(ALLOWED)
    assert not unexpected, f"agent run imported packages not known to be needed: {sorted(unexpected)}"


def test_loading_the_agent_verbs_hides_boto3_only_while_loading() -> None:
    # securesystemslib probes boto3 for a KMS signer the agent never uses; the s3:// fetcher
    # must still be able to import boto3 afterwards.
    pytest.importorskip("boto3")
    code = ("import sys; from bentoedge.cli import load_command; load_command('bentoedge.edge.cli', 'agent'); "
            "hidden = 'boto3' in sys.modules; import boto3; print(hidden, boto3.__name__)")
    r = subprocess.run([sys.executable, "-c", code], env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["False", "boto3"], r.stdout + r.stderr
