"""Shared test set-up: private homes for BentoML and bentoedge, and session fixtures.

At import (before any test module imports bentoml) this points ``BENTOML_HOME``,
``BENTOEDGE_HOME`` and ``TMPDIR`` at a fresh session folder (removed at the end) and turns
BentoML's tracking off, so tests never touch the user's store or keys, nor the shared
/tmp.  Nothing heavy is imported here: the device-only CI environment (no TensorFlow,
BentoML or boto3) loads this file too, so fixtures that need those import them when
they run.

Fixtures:
- ``keys_home``: a BENTOEDGE_HOME with a signing key and KEK (session).
- ``digits_example``: the trained digits classifier and its data files (session).
- ``sealed_digits``: digits sealed (edge int8 + cloud fp32, kek) into a plain folder.
- ``sealed_digits_store``: the same, sealed into the BentoML model store.
- ``moto_server``: a real ``moto_server`` process on 127.0.0.1; yields its endpoint URL.
- ``free_port()``: a free TCP port on the loopback interface.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="bentoedge-tests-"))
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
os.environ["BENTOML_HOME"] = str(_SESSION_TMP / "bentoml")
os.environ["BENTOEDGE_HOME"] = str(_SESSION_TMP / "bentoedge")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
# Every temporary file of the session (the code under test's mkdtemp, BentoML's, TensorFlow's,
# and those of the servers it starts) goes inside the session folder, never the shared /tmp
# where another run on the same machine could see or remove it.  pytest's own tmp_path
# folders stay where pytest keeps them, so a failed test's files survive the session.
os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", tempfile.gettempdir())
(_SESSION_TMP / "tmp").mkdir()
os.environ["TMPDIR"] = tempfile.tempdir = str(_SESSION_TMP / "tmp")

#: Seconds a started server may take to answer; a bound, not a timing assertion.
SERVER_START_TIMEOUT = 60.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests marked ``longest`` first, the rest in their usual order.

    With ``-n 2`` (pytest-xdist) the suite ends when its slowest worker does; the demo test
    alone takes minutes, so started last it would leave the other worker idle that long.
    The order is the same in every worker, as xdist requires."""
    items.sort(key=lambda item: item.get_closest_marker("longest") is None)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


def free_port() -> int:
    """A TCP port nobody listens on right now, on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def keys_home() -> Path:
    from bentoedge.bentos.keystore import LocalKeys

    home = Path(os.environ["BENTOEDGE_HOME"])
    LocalKeys(home).init()
    return home


@pytest.fixture(scope="session")
def digits_example(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from bentoedge.examples.digits import make_example

    return make_example(tmp_path_factory.mktemp("digits-example"))


def _digits_options(example: dict[str, Path], home: Path, **kw: Any) -> Any:
    from bentoedge.bentos.build import BuildOptions

    return BuildOptions(source=example["model"], name=kw.pop("name", "digits"), home=home,
                        calibration=example["calibration"], validation=example["validation"],
                        edge=("int8",), cloud=("fp32",), recipients=("kek",), **kw)


@pytest.fixture(scope="session")
def sealed_digits(digits_example: dict[str, Path], keys_home: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Any:
    from bentoedge.bentos.build import build_to_dir

    out = tmp_path_factory.mktemp("sealed-digits") / "digits-v1"
    return build_to_dir(_digits_options(digits_example, keys_home, version="v1"), out, release=1)


@pytest.fixture(scope="session")
def sealed_digits_store(digits_example: dict[str, Path], keys_home: Path) -> Any:
    from bentoedge.bentos.build import build

    return build(_digits_options(digits_example, keys_home, name="digits-store"))


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``moto_server`` process on 127.0.0.1 (S3, KMS, SageMaker, Lambda...); yields its URL."""
    exe = Path(sys.executable).with_name("moto_server")
    if not exe.exists():
        pytest.fail(f"moto_server is not installed at {exe}: pip install 'moto[server]'")
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + SERVER_START_TIMEOUT
            while True:
                try:
                    urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"moto_server did not start (exit {proc.poll()}); see {log_path}")
                    time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.fixture()
def aws_env(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point boto3 at the moto_server with fake credentials; returns the endpoint URL."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    return moto_server
