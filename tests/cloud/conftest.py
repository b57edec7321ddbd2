"""Fixtures for the cloud tests: a small sealed model in the BentoML store, and one server.

One ``bentoml serve`` process serves the tiny sealed model (``service_support``) for the
whole session, because each start costs seconds on two cores.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_support import TinySealed, free_port, seal_tiny

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:  # the repository's packages, when bentoedge is not pip-installed
    sys.path.insert(0, _ROOT)

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
if "BENTOML_HOME" not in os.environ:  # tests/conftest.py normally does this
    os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="bentoedge-cloud-bentoml-")


@pytest.fixture(scope="session")
def tiny_sealed(tmp_path_factory: pytest.TempPathFactory) -> TinySealed:
    return seal_tiny(tmp_path_factory.mktemp("cloud-home"))


@pytest.fixture(scope="session")
def tiny_server(tiny_sealed: TinySealed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real `bentoml serve` of the tiny sealed model on a loopback port."""
    from cloud.serve import start_server, stop_server, wait_ready

    port = free_port()
    log = tmp_path_factory.mktemp("cloud-logs") / "serve.log"
    proc = start_server(tiny_sealed.tag, port, env={"BENTOEDGE_HOME": str(tiny_sealed.home),
                                                    "BENTOEDGE_MAX_LATENCY_MS": "50",
                                                    "BENTOEDGE_MAX_PAYLOAD": str(64 << 10)}, log=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout=90, proc=proc, log=log)
        yield url
    finally:
        stop_server(proc)


@pytest.fixture(scope="session")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `moto_server` process on loopback (AWS APIs: SageMaker, Lambda, IAM, ECR, KMS)."""
    import subprocess
    import time
    import urllib.request

    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start (exit {proc.poll()})") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
