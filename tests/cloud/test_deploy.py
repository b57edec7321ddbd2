"""Serverless deploys: the pure plan as units, and the CLI against a real moto_server process."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from deploy_support import cli, push_images
from service_support import TinySealed

from bentoedge.bentos.errors import DeployError
from bentoedge.cloud.deploy.plan import (
    LambdaCurrent,
    LambdaDesired,
    SageMakerCurrent,
    SageMakerDesired,
    Step,
    plan_lambda,
    plan_sagemaker,
    plan_sagemaker_delete,
    undo,
)

if TYPE_CHECKING:  # boto3/botocore are imported where used: not every test environment has them
    from botocore.stub import Stubber

ROLE = "arn:aws:iam::123456789012:role/bentoedge-exec"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/bentoedge:v1"


def sm(version: str = "v1", **kw: object) -> SageMakerDesired:
    base: dict = {"endpoint": "digits", "model_name": "digits", "model_version": version, "image": IMAGE, "role": ROLE}
    return SageMakerDesired(**(base | kw))  # type: ignore[arg-type]


# ---- pure plan --------------------------------------------------------------------------------

def test_first_deploy_creates_model_config_endpoint() -> None:
    steps = plan_sagemaker(sm(), SageMakerCurrent())
    assert [s.action for s in steps] == ["create_model", "create_endpoint_config", "create_endpoint"]
    serverless = steps[1].args["ProductionVariants"][0]["ServerlessConfig"]  # type: ignore[index]
    assert serverless == {"MemorySizeInMB": 2048, "MaxConcurrency": 5}


def test_same_deploy_again_plans_nothing() -> None:
    d = sm()
    cur = SageMakerCurrent(frozenset({d.sm_model}), frozenset({d.sm_config}), d.sm_config)
    assert plan_sagemaker(d, cur) == []


def test_new_version_is_a_new_config_and_an_update() -> None:
    old = sm("v1")
    cur = SageMakerCurrent(frozenset({old.sm_model}), frozenset({old.sm_config}), old.sm_config)
    steps = plan_sagemaker(sm("v2"), cur)
    assert [s.action for s in steps] == ["create_model", "create_endpoint_config", "update_endpoint"]
    assert steps[-1].args["EndpointConfigName"] == sm("v2").sm_config != old.sm_config


def test_bad_requests_are_refused_before_any_call() -> None:
    with pytest.raises(DeployError, match="IAM role ARN"):
        plan_sagemaker(sm(role=""), SageMakerCurrent())
    with pytest.raises(DeployError, match="no container image"):
        plan_sagemaker(sm(image=""), SageMakerCurrent())
    with pytest.raises(DeployError, match="MemorySizeInMB|SageMaker Serverless takes"):
        plan_sagemaker(sm(memory_mb=1000), SageMakerCurrent())


def test_delete_removes_only_what_this_tool_named() -> None:
    cur = SageMakerCurrent(frozenset({"digits-v1-aa", "other-v1"}), frozenset({"digits-v1-aa-cfg"}), "digits-v1-aa-cfg")
    steps = plan_sagemaker_delete("digits", cur)
    assert [s.describe() for s in steps] == ["delete_endpoint digits", "delete_endpoint_config digits-v1-aa-cfg",
                                             "delete_model digits-v1-aa"]


def test_lambda_plans() -> None:
    d = LambdaDesired("digits-fn", "digits", "v1", IMAGE, ROLE, env={"BENTOEDGE_MODEL": "digits:v1"})
    assert [s.action for s in plan_lambda(d, LambdaCurrent())] == ["create_function"]
    same = LambdaCurrent(True, IMAGE, {"BENTOEDGE_MODEL": "digits:v1"}, 2048)
    assert plan_lambda(d, same) == []
    newer = LambdaDesired("digits-fn", "digits", "v2", IMAGE.replace(":v1", ":v2"), ROLE, env={"BENTOEDGE_MODEL": "digits:v2"})
    assert [s.action for s in plan_lambda(newer, same)] == ["update_function_configuration", "update_function_code"]


def test_undo_inverts_creations_only() -> None:
    assert undo(Step("create_model", "m", {})) == Step("delete_model", "m", {"ModelName": "m"})
    assert undo(Step("update_endpoint", "e", {})) is None


# ---- against moto_server ------------------------------------------------------------------------

def endpoint_config(url: str, name: str) -> str | None:
    import boto3

    client = boto3.client("sagemaker", endpoint_url=url)
    try:
        return str(client.describe_endpoint(EndpointName=name)["EndpointConfigName"])
    except client.exceptions.ClientError:
        return None


def sm_names(url: str, prefix: str) -> tuple[set[str], set[str]]:
    import boto3

    client = boto3.client("sagemaker", endpoint_url=url)
    models = {m["ModelName"] for m in client.list_models(NameContains=prefix)["Models"]}
    configs = {c["EndpointConfigName"] for c in client.list_endpoint_configs(NameContains=prefix)["EndpointConfigs"]}
    return models, configs


def test_sagemaker_create_idempotent_delete(aws: str, tiny_sealed: TinySealed) -> None:
    args = ["deploy", "sagemaker", tiny_sealed.tag, "--endpoint", "tiny-ep", "--image", "example.org/bentoedge:v1",
            "--role", ROLE, "--allow-no-kms"]
    code, out = cli(*args)
    assert code == 0, out
    assert "create model" in out and "create endpoint config" in out and "create endpoint: tiny-ep" in out
    assert "invoke: https://runtime.sagemaker.us-east-1.amazonaws.com/endpoints/tiny-ep/invocations" in out
    first = endpoint_config(aws, "tiny-ep")
    assert first is not None

    code, out = cli(*args)  # same again: nothing to do
    assert code == 0 and "nothing to do" in out and endpoint_config(aws, "tiny-ep") == first

    # The update of a live endpoint is proven against SageMaker's own service model with a
    # Stubber (below): moto does not implement UpdateEndpoint.
    code, out = cli("deploy", "delete", "sagemaker", "tiny-ep")
    assert code == 0, out
    assert endpoint_config(aws, "tiny-ep") is None
    assert sm_names(aws, "tiny-ep") == (set(), set())


# ---- the update of a live endpoint, against the real SageMaker service model (Stubber) ------------

STUB_TIME = datetime(2024, 1, 1, tzinfo=timezone.utc)


@pytest.fixture()
def stubbed(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, dict[str, Stubber]]]:
    """``Clients`` holding real boto3 clients (sagemaker, iam, ecr) whose calls a Stubber answers.

    Every call is checked against botocore's service model and against the exact parameters
    the test expects; nothing goes on the network, and any other client is a failure.
    """
    import boto3
    from botocore.stub import Stubber

    from bentoedge.cloud.deploy.aws import Clients

    made = {name: boto3.client(name, region_name="us-east-1", endpoint_url="http://127.0.0.1:9",
                               aws_access_key_id="testing", aws_secret_access_key="testing")
            for name in ("sagemaker", "iam", "ecr")}
    stubs = {name: Stubber(client) for name, client in made.items()}
    monkeypatch.setattr(boto3, "client", lambda service, *a, **k: pytest.fail(f"unexpected {service} client"))
    for stub in stubs.values():
        stub.activate()
    try:
        yield Clients(_made=made), stubs
    finally:
        for stub in stubs.values():
            stub.deactivate()


def _stub_live_endpoint(stubs: dict[str, Stubber], old: SageMakerDesired, new: SageMakerDesired) -> None:
    """What deploy_sagemaker reads first: the endpoint runs ``old``; then the role and image checks."""
    sm_stub = stubs["sagemaker"]
    sm_stub.add_response("list_models", {"Models": [
        {"ModelName": old.sm_model, "ModelArn": f"arn:aws:sagemaker:us-east-1:123456789012:model/{old.sm_model}",
         "CreationTime": STUB_TIME}]}, {"NameContains": "digits", "MaxResults": 100})
    sm_stub.add_response("list_endpoint_configs", {"EndpointConfigs": [
        {"EndpointConfigName": old.sm_config, "CreationTime": STUB_TIME,
         "EndpointConfigArn": f"arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/{old.sm_config}"}]},
        {"NameContains": "digits", "MaxResults": 100})
    sm_stub.add_response("describe_endpoint", {
        "EndpointName": "digits", "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/digits",
        "EndpointConfigName": old.sm_config, "EndpointStatus": "InService", "CreationTime": STUB_TIME,
        "LastModifiedTime": STUB_TIME}, {"EndpointName": "digits"})
    stubs["iam"].add_response("get_role", {"Role": {
        "Path": "/", "RoleName": "bentoedge-exec", "RoleId": "AROAEXAMPLEEXAMPLE123", "Arn": ROLE,
        "CreateDate": STUB_TIME}}, {"RoleName": "bentoedge-exec"})
    stubs["ecr"].add_response("describe_images", {"imageDetails": [
        {"registryId": "123456789012", "repositoryName": "bentoedge", "imageTags": ["v2"]}]},
        {"repositoryName": "bentoedge", "imageIds": [{"imageTag": "v2"}]})
    sm_stub.add_response("create_model", {"ModelArn": f"arn:aws:sagemaker:us-east-1:123456789012:model/{new.sm_model}"}, {
        "ModelName": new.sm_model, "ExecutionRoleArn": ROLE,
        "PrimaryContainer": {"Image": IMAGE.replace(":v1", ":v2"), "Environment": {"BENTOEDGE_MODEL": "digits:v2"}}})
    sm_stub.add_response("create_endpoint_config", {
        "EndpointConfigArn": f"arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/{new.sm_config}"}, {
        "EndpointConfigName": new.sm_config,
        "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": new.sm_model,
                                "ServerlessConfig": {"MemorySizeInMB": 3072, "MaxConcurrency": 7}}]})


def _versions() -> tuple[SageMakerDesired, SageMakerDesired]:
    old = sm("v1", env={"BENTOEDGE_MODEL": "digits:v1"})
    new = sm("v2", image=IMAGE.replace(":v1", ":v2"), memory_mb=3072, max_concurrency=7,
             env={"BENTOEDGE_MODEL": "digits:v2"})
    assert new.sm_model.startswith("digits-v2-") and new.sm_config.endswith("-cfg")
    assert new.sm_model != old.sm_model and new.sm_config != old.sm_config
    return old, new


def test_sagemaker_new_version_updates_the_live_endpoint(stubbed: tuple[Any, dict[str, Stubber]]) -> None:
    from bentoedge.cloud.deploy.aws import deploy_sagemaker

    clients, stubs = stubbed
    old, new = _versions()
    _stub_live_endpoint(stubs, old, new)
    stubs["sagemaker"].add_response("update_endpoint",
                                    {"EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/digits"},
                                    {"EndpointName": "digits", "EndpointConfigName": new.sm_config})
    said: list[str] = []
    result = deploy_sagemaker(new, clients, say=said.append)
    for stub in stubs.values():
        stub.assert_no_pending_responses()  # every expected call was made, in this order
    assert result.done == (f"create_model {new.sm_model}", f"create_endpoint_config {new.sm_config}",
                           "update_endpoint digits")
    assert result.target == "digits" and result.changed
    assert said[-1] == "update endpoint: digits"


def test_sagemaker_failed_update_rolls_back_the_new_model_and_config(
        stubbed: tuple[Any, dict[str, Stubber]]) -> None:
    from bentoedge.cloud.deploy.aws import deploy_sagemaker

    clients, stubs = stubbed
    old, new = _versions()
    _stub_live_endpoint(stubs, old, new)
    sm_stub = stubs["sagemaker"]
    sm_stub.add_client_error("update_endpoint", "ValidationException", "config is not valid",
                             expected_params={"EndpointName": "digits", "EndpointConfigName": new.sm_config})
    # Newest first; the live endpoint is never deleted, so the old version keeps serving.
    sm_stub.add_response("delete_endpoint_config", {}, {"EndpointConfigName": new.sm_config})
    sm_stub.add_response("delete_model", {}, {"ModelName": new.sm_model})
    with pytest.raises(DeployError, match=r"update_endpoint digits failed .*rolled back "
                                          rf"{new.sm_config}, {new.sm_model}$"):
        deploy_sagemaker(new, clients, say=lambda _: None)
    for stub in stubs.values():
        stub.assert_no_pending_responses()


def test_missing_version_role_or_image_exit_2_and_leave_nothing(aws: str, tiny_sealed: TinySealed) -> None:
    code, out = cli("deploy", "sagemaker", "tiny:v404", "--endpoint", "nope-ep", "--image", "x/y:1", "--role", ROLE)
    assert code == 2 and "no sealed model 'tiny:v404'" in out
    code, out = cli("deploy", "sagemaker", tiny_sealed.tag, "--endpoint", "nope-ep", "--image", "x/y:1",
                    "--role", "arn:aws:iam::123456789012:role/does-not-exist", "--allow-no-kms")
    assert code == 2 and "does-not-exist cannot be used" in out
    code, out = cli("deploy", "sagemaker", tiny_sealed.tag, "--endpoint", "nope-ep", "--image",
                    "123456789012.dkr.ecr.us-east-1.amazonaws.com/missing:v1", "--role", ROLE, "--allow-no-kms")
    assert code == 2 and "not in ECR" in out
    assert endpoint_config(aws, "nope-ep") is None and sm_names(aws, "nope-ep") == (set(), set())


def test_a_model_not_wrapped_for_kms_stops_the_deploy_unless_allowed(aws: str, tiny_sealed: TinySealed) -> None:
    for kind, name_opt in (("sagemaker", "--endpoint"), ("lambda", "--function")):
        code, out = cli("deploy", kind, tiny_sealed.tag, name_opt, "kms-ep", "--image", "x/y:1", "--role", ROLE)
        assert code == 2 and "not all wrapped for KMS" in out and "--allow-no-kms" in out, out
        assert "Traceback" not in out and len(out.strip().splitlines()) == 1, out
    assert endpoint_config(aws, "kms-ep") is None and sm_names(aws, "kms-ep") == (set(), set())


def test_no_aws_credentials_is_one_line_with_the_next_step(tiny_sealed: TinySealed, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    # Nothing on disk either, and no instance metadata service to ask (the only network is loopback).
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("BENTOEDGE_HOME", str(tiny_sealed.home))
    import boto3

    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # earlier tests' session caches their credentials
    code, out = cli("deploy", "sagemaker", tiny_sealed.tag, "--endpoint", "cred-ep", "--image", "x/y:1",
                    "--role", ROLE, "--allow-no-kms", "--endpoint-url", "http://127.0.0.1:9")
    assert code == 2 and "no AWS credentials found" in out and "aws configure" in out, out
    assert "Traceback" not in out and out.strip().splitlines()[-1].startswith("error: no AWS credentials"), out


def test_a_failing_step_rolls_back_what_it_created(aws: str) -> None:
    from bentoedge.cloud.deploy.aws import Clients, run_steps

    d = sm(endpoint="rb-ep")
    steps = plan_sagemaker(d, SageMakerCurrent())
    # Point the endpoint at a config that does not exist, so create_endpoint fails after two creations.
    broken = [*steps[:2], Step("create_endpoint", "rb-ep", {"EndpointName": "rb-ep", "EndpointConfigName": "rb-ep-missing"})]
    said: list[str] = []
    with pytest.raises(DeployError, match="create_endpoint rb-ep failed .*rolled back"):
        run_steps(Clients(aws), "sagemaker", broken, said.append)
    assert sm_names(aws, "rb-ep") == (set(), set()) and endpoint_config(aws, "rb-ep") is None


def test_lambda_create_update_delete(aws: str, tiny_sealed: TinySealed) -> None:
    import boto3

    args = ["deploy", "lambda", tiny_sealed.tag, "--function", "tiny-fn", "--role", ROLE, "--allow-no-kms"]
    push_images(aws)
    code, out = cli(*args, "--image", "123456789012.dkr.ecr.us-east-1.amazonaws.com/bentoedge:v1")
    assert code == 0 and "create function: tiny-fn" in out, out
    lam = boto3.client("lambda", endpoint_url=aws)
    conf = lam.get_function(FunctionName="tiny-fn")
    assert conf["Configuration"]["PackageType"] == "Image"
    assert conf["Configuration"]["Environment"]["Variables"]["BENTOEDGE_MODEL"] == tiny_sealed.tag
    code, out = cli(*args, "--image", "123456789012.dkr.ecr.us-east-1.amazonaws.com/bentoedge:v1")
    assert code == 0 and "nothing to do" in out
    code, out = cli(*args, "--image", "123456789012.dkr.ecr.us-east-1.amazonaws.com/bentoedge:v2")
    assert code == 0 and "update function code: tiny-fn" in out, out
    assert lam.get_function(FunctionName="tiny-fn")["Code"]["ImageUri"].endswith(":v2")
    code, out = cli("deploy", "delete", "lambda", "tiny-fn")
    assert code == 0, out
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_function(FunctionName="tiny-fn")
