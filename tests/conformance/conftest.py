"""The servers the contract table and the fuzzer run against, each as a ``contract_cases.Server``.

- ``edge_server``: a real device agent (``edge.server.AgentServer``) on loopback, serving
  the committed LiteRT ``tiny`` model, with no cloud (every answer is its own); made with
  the device tests' fixtures (``api_support``).
- ``cloud_server``: one real ``bentoml serve`` of the cloud service for the session,
  serving a tiny sealed ONNX model (``service_support.seal_tiny``), started the way
  tests/cloud/conftest.py starts its own.
- ``lambda_server``: the AWS Lambda handler (``cloud.aws_lambda.LambdaHandler``) in this
  process, with the same kind of model under its own name, authentication off; called with
  events built by ``lambda_support`` (session).

All run with the body limit ``contract_cases.LIMIT``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from api_support import keyring, load, make_agent  # noqa: F401
from contract_cases import LIMIT, Model, Server

from bentoedge.edge.runtime import EdgeModel
from bentoedge.edge.server import AgentServer


@pytest.fixture()
def edge_server(make_agent: Callable[..., AgentServer], load: Callable[..., EdgeModel]) -> Server:  # noqa: F811
    agent = make_agent(load("tiny", "edge-fp32"), max_body=LIMIT)
    return Server("edge", agent.port, Model("tiny", "1", "x", 4, "y", 3))


@pytest.fixture(scope="session")
def cloud_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    pytest.importorskip("bentoml")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from service_support import free_port, seal_tiny

    from bentoedge.cloud.serve import start_server, stop_server, wait_ready

    # Its own name, so it does not collide with tests/cloud's "tiny" in a shared BentoML store.
    sealed = seal_tiny(tmp_path_factory.mktemp("contract-home"), name="contract")
    port = free_port()
    log = tmp_path_factory.mktemp("contract-logs") / "serve.log"
    proc = start_server(sealed.tag, port, env={"BENTOEDGE_HOME": str(sealed.home), "BENTOEDGE_AUTH": "off",
                                               "BENTOEDGE_MAX_PAYLOAD": str(LIMIT)}, log=log)
    try:
        wait_ready(f"http://127.0.0.1:{port}", timeout=120, proc=proc, log=log)
        yield Server("cloud", port, Model("contract", "v1", "x", 64, "probs", 10))
    finally:
        stop_server(proc)


@pytest.fixture(scope="session")
def lambda_server(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Server]:
    """The handler (a ``LambdaHandler``) and what it serves; its model opens on the first event."""
    pytest.importorskip("bentoml")  # the model store the model is sealed into
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from service_support import seal_tiny

    from bentoedge.cloud.aws_lambda import LambdaHandler

    # Its own name, so it does not collide with the cloud server's "contract" in the same store.
    sealed = seal_tiny(tmp_path_factory.mktemp("contract-lambda-home"), name="contract-lambda")
    env = {
        **os.environ,
        "BENTOEDGE_MODEL": sealed.tag,
        "BENTOEDGE_HOME": str(sealed.home),
        "BENTOEDGE_MAX_PAYLOAD": str(LIMIT),
        "BENTOEDGE_AUTH": "off",
    }
    return LambdaHandler(env=env), Server("cloud", 0, Model("contract-lambda", "v1", "x", 64, "probs", 10))
