"""Fixtures for the cloud tests: a small sealed model in the BentoML store, and one server.

One ``bentoml serve`` process serves the tiny sealed model (``service_support``) for the
whole session, because each start costs seconds on two cores.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from service_support import TinySealed, free_port, seal_tiny


@pytest.fixture(scope="session")
def tiny_sealed(tmp_path_factory: pytest.TempPathFactory) -> TinySealed:
    return seal_tiny(tmp_path_factory.mktemp("cloud-home"))


@pytest.fixture(scope="session")
def tiny_server(tiny_sealed: TinySealed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real `bentoml serve` of the tiny sealed model on a loopback port."""
    from bentoedge.cloud.serve import start_server, stop_server, wait_ready

    port = free_port()
    log = tmp_path_factory.mktemp("cloud-logs") / "serve.log"
    proc = start_server(tiny_sealed.tag, port, env={"BENTOEDGE_HOME": str(tiny_sealed.home),
                                                    "BENTOEDGE_AUTH": "off",  # auth has its own tests
                                                    "BENTOEDGE_MAX_LATENCY_MS": "50",
                                                    "BENTOEDGE_MAX_PAYLOAD": str(64 << 10)}, log=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout=90, proc=proc, log=log)
        yield url
    finally:
        stop_server(proc)


@pytest.fixture(scope="session")
def moto_url(moto_server: str) -> str:
    """The session's one real ``moto_server`` process (tests/conftest.py), by the name these tests use."""
    return moto_server


@pytest.fixture()
def aws(moto_url: str, tiny_sealed: TinySealed, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """AWS settings for boto3 pointed at moto_server, and the execution role deploys name."""
    import boto3

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_ENDPOINT_URL": moto_url, "BENTOEDGE_HOME": str(tiny_sealed.home)}.items():
        monkeypatch.setenv(k, v)
    iam = boto3.client("iam", endpoint_url=moto_url)
    try:
        iam.create_role(RoleName="bentoedge-exec", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17",
                        "Statement": []}))
    except iam.exceptions.EntityAlreadyExistsException:
        pass
    yield moto_url
