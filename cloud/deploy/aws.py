"""The imperative shell of serverless deploys: read AWS state, check prerequisites, run a plan.

``deploy_sagemaker`` / ``deploy_lambda`` read the current state with boto3, ask
``cloud.deploy.plan`` what to do, check what a plan cannot (the execution role exists in
IAM, an ECR image exists), then run the steps in order.  When a step fails, every
resource this run created is deleted again, newest first, so a failed deploy leaves
no half-made endpoint and an existing endpoint keeps serving its old version; the error
says which call failed and why.

boto3 picks its endpoint from ``AWS_ENDPOINT_URL`` (the tests point it at a
``moto_server`` on loopback) or ``endpoint_url`` given here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    validate_lambda,
    validate_sagemaker,
)

ECR_RE = re.compile(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com/([^:@]+)(?::([\w.-]+))?(?:@(sha256:[0-9a-f]{64}))?$")


@dataclass
class Clients:
    """boto3 clients by service name, made on first use."""

    endpoint_url: str | None = None
    region: str | None = None
    _made: dict[str, Any] = field(default_factory=dict)

    def __call__(self, service: str) -> Any:
        if service not in self._made:
            import boto3

            self._made[service] = boto3.client(service, endpoint_url=self.endpoint_url, region_name=self.region)
        return self._made[service]


@dataclass(frozen=True)
class Result:
    done: tuple[str, ...]   # "create_model name", ... in order
    target: str             # endpoint or function name

    @property
    def changed(self) -> bool:
        return bool(self.done)


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__))


def check_role(clients: Clients, role_arn: str) -> None:
    name = role_arn.rsplit("/", 1)[-1]
    try:
        clients("iam").get_role(RoleName=name)
    except Exception as exc:  # botocore's ClientError, or no credentials
        raise DeployError(f"execution role {role_arn} cannot be used ({_error_code(exc)}); create it or pass another --role") from None


def check_image(clients: Clients, image: str) -> None:
    """An ECR image must exist; other registries cannot be checked from here."""
    m = ECR_RE.match(image)
    if not m:
        return
    repo, tag, digest = m.group(3), m.group(4), m.group(5)
    ident = {"imageDigest": digest} if digest else {"imageTag": tag or "latest"}
    try:
        clients("ecr").describe_images(repositoryName=repo, imageIds=[ident])
    except Exception as exc:
        raise DeployError(f"image {image} is not in ECR ({_error_code(exc)}); push it first (see docs/cloud.md)") from None


def run_steps(clients: Clients, service: str, steps: Sequence[Step], say: Callable[[str], None]) -> tuple[str, ...]:
    """Run ``steps``; on failure undo the creations of this run (newest first) and raise."""
    client = clients(service)
    created: list[Step] = []
    done: list[str] = []
    for step in steps:
        try:
            getattr(client, step.action)(**step.args)
        except Exception as exc:
            rolled = []
            for made in reversed(created):
                inverse = undo(made)
                if inverse is None:
                    continue
                try:
                    getattr(client, inverse.action)(**inverse.args)
                    rolled.append(made.resource)
                except Exception:  # keep undoing the rest; report what stayed
                    say(f"could not roll back {made.describe()}; delete it by hand")
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DeployError(f"{step.describe()} failed ({detail}); rolled back {', '.join(rolled) or 'nothing'}") from None
        if undo(step) is not None:
            created.append(step)
        done.append(step.describe())
        say(f"{step.action.replace('_', ' ')}: {step.resource}")
    return tuple(done)


def sagemaker_current(clients: Clients, endpoint: str) -> SageMakerCurrent:
    sm = clients("sagemaker")
    models = {m["ModelName"] for m in sm.list_models(NameContains=endpoint, MaxResults=100)["Models"]}
    configs = {c["EndpointConfigName"] for c in
               sm.list_endpoint_configs(NameContains=endpoint, MaxResults=100)["EndpointConfigs"]}
    try:
        current = sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    except Exception as exc:
        if _error_code(exc) not in ("ValidationException", "ResourceNotFound"):
            raise DeployError(f"cannot read endpoint {endpoint}: {exc}") from None
        current = None
    owned = f"{endpoint}-"
    return SageMakerCurrent(frozenset(m for m in models if m.startswith(owned)),
                            frozenset(c for c in configs if c.startswith(owned)), current)


def deploy_sagemaker(d: SageMakerDesired, clients: Clients, say: Callable[[str], None] = print) -> Result:
    validate_sagemaker(d)
    steps = plan_sagemaker(d, sagemaker_current(clients, d.endpoint))
    if not steps:
        say(f"endpoint {d.endpoint} already serves {d.model_name}:{d.model_version}; nothing to do")
        return Result((), d.endpoint)
    check_role(clients, d.role)
    check_image(clients, d.image)
    return Result(run_steps(clients, "sagemaker", steps, say), d.endpoint)


def delete_sagemaker(endpoint: str, clients: Clients, say: Callable[[str], None] = print) -> Result:
    steps = plan_sagemaker_delete(endpoint, sagemaker_current(clients, endpoint))
    if not steps:
        raise DeployError(f"no SageMaker endpoint {endpoint!r} or resources of it to delete")
    return Result(run_steps(clients, "sagemaker", steps, say), endpoint)


def lambda_current(clients: Clients, function: str) -> LambdaCurrent:
    try:
        resp = clients("lambda").get_function(FunctionName=function)
    except Exception as exc:
        if _error_code(exc) == "ResourceNotFoundException":
            return LambdaCurrent()
        raise DeployError(f"cannot read Lambda function {function}: {exc}") from None
    conf = resp.get("Configuration", {})
    url = function_url_config(clients, function)
    return LambdaCurrent(True, resp.get("Code", {}).get("ImageUri"),
                         conf.get("Environment", {}).get("Variables", {}), conf.get("MemorySize"),
                         url.get("AuthType") if url else None, policy_statements(clients, function))


def function_url_config(clients: Clients, function: str) -> dict[str, Any] | None:
    """The function's URL configuration (``FunctionUrl``, ``AuthType``), None when it has none."""
    try:
        return dict(clients("lambda").get_function_url_config(FunctionName=function))
    except Exception as exc:
        if _error_code(exc) == "ResourceNotFoundException":
            return None
        raise DeployError(f"cannot read the function URL of {function}: {exc}") from None


def policy_statements(clients: Clients, function: str) -> frozenset[str]:
    """The ids of the statements in the function's resource policy."""
    import json

    try:
        policy = clients("lambda").get_policy(FunctionName=function)["Policy"]
    except Exception as exc:
        if _error_code(exc) == "ResourceNotFoundException":
            return frozenset()
        raise DeployError(f"cannot read the resource policy of {function}: {exc}") from None
    return frozenset(str(st.get("Sid", "")) for st in json.loads(policy).get("Statement", []))


def deploy_lambda(d: LambdaDesired, clients: Clients, say: Callable[[str], None] = print) -> Result:
    validate_lambda(d)
    steps = plan_lambda(d, lambda_current(clients, d.function))
    if not steps:
        say(f"function {d.function} already runs {d.model_name}:{d.model_version}; nothing to do")
        return Result((), d.function)
    check_role(clients, d.role)
    check_image(clients, d.image)
    return Result(run_steps(clients, "lambda", steps, say), d.function)


def delete_lambda(function: str, clients: Clients, say: Callable[[str], None] = print) -> Result:
    if not lambda_current(clients, function).exists:
        raise DeployError(f"no Lambda function {function!r} to delete")
    return Result(run_steps(clients, "lambda", [Step("delete_function", function, {"FunctionName": function})], say),
                  function)
