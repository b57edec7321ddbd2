"""What a serverless deploy must do: a pure function of (desired state, current state) -> steps.

SageMaker Serverless Inference needs three resources: a *model* (image, role, environment),
an *endpoint config* (the model plus ``ServerlessConfig``: MemorySizeInMB, MaxConcurrency)
and the *endpoint*.  Models and configs are immutable in SageMaker, so each version gets
its own, named after the endpoint, the sealed model version and a short hash of what
they hold; a new version is a new config followed by ``update_endpoint`` (SageMaker
switches traffic when the new one is healthy).  Lambda needs one function
(``PackageType='Image'``); a new version is ``update_function_code``.  It may have a
*function URL* (``--url-auth``): ``AWS_IAM`` (callers sign SigV4) or ``NONE`` (public; the
service checks device signatures itself), which also needs the two resource-policy
statements AWS asks of public URLs since October 2025 (``lambda:InvokeFunctionUrl`` with
``FunctionUrlAuthType=NONE`` and ``lambda:InvokeFunction`` with ``InvokedViaFunctionUrl``).
Moving a URL from NONE to AWS_IAM removes those statements again.

Deploying the same thing twice plans nothing, which is what makes deploys idempotent.
No I/O here: ``cloud.deploy.aws`` reads the current state and runs the steps.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from bentoedge.bentos.errors import DeployError

ROLE_RE = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
ENDPOINT_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
SAGEMAKER_MEMORY = (1024, 2048, 3072, 4096, 5120, 6144)


@dataclass(frozen=True)
class Step:
    """One call to make: ``action`` names the boto3 operation, ``args`` its parameters."""

    action: str
    resource: str
    args: Mapping[str, object] = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.action} {self.resource}"


@dataclass(frozen=True)
class SageMakerDesired:
    endpoint: str
    model_name: str      # the sealed model's name
    model_version: str
    image: str
    role: str
    memory_mb: int = 2048
    max_concurrency: int = 5
    env: Mapping[str, str] = field(default_factory=dict)

    def content_hash(self) -> str:
        doc = {"image": self.image, "role": self.role, "env": dict(self.env), "memory": self.memory_mb,
               "concurrency": self.max_concurrency, "model": f"{self.model_name}:{self.model_version}"}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:8]

    @property
    def sm_model(self) -> str:
        return _resource_name(self.endpoint, self.model_version, self.content_hash())

    @property
    def sm_config(self) -> str:
        return _resource_name(self.endpoint, self.model_version, self.content_hash(), "cfg")


def _resource_name(*parts: str) -> str:
    """SageMaker names: letters, digits and hyphens, at most 63 characters."""
    name = "-".join(re.sub(r"[^a-zA-Z0-9]+", "-", p).strip("-") for p in parts)
    return name[:63].rstrip("-")


@dataclass(frozen=True)
class SageMakerCurrent:
    models: frozenset[str] = frozenset()
    configs: frozenset[str] = frozenset()
    endpoint_config: str | None = None  # the config the endpoint runs; None: no endpoint


def validate_sagemaker(d: SageMakerDesired) -> None:
    if not ENDPOINT_RE.match(d.endpoint):
        raise DeployError(f"endpoint name {d.endpoint!r}: use letters, digits and hyphens (max 63)")
    if not d.image:
        raise DeployError("no container image given: pass --image URI (build it with `bentoml containerize`)")
    if not ROLE_RE.match(d.role or ""):
        raise DeployError(f"execution role {d.role!r} is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME); pass --role")
    if d.memory_mb not in SAGEMAKER_MEMORY:
        raise DeployError(f"--memory {d.memory_mb}: SageMaker Serverless takes one of {SAGEMAKER_MEMORY}")
    if not 1 <= d.max_concurrency <= 200:
        raise DeployError(f"--max-concurrency {d.max_concurrency}: SageMaker Serverless takes 1 to 200")


def plan_sagemaker(d: SageMakerDesired, cur: SageMakerCurrent) -> list[Step]:
    validate_sagemaker(d)
    steps: list[Step] = []
    if cur.endpoint_config == d.sm_config:
        return steps
    if d.sm_model not in cur.models:
        steps.append(Step("create_model", d.sm_model, {
            "ModelName": d.sm_model, "ExecutionRoleArn": d.role,
            "PrimaryContainer": {"Image": d.image, "Environment": dict(d.env)}}))
    if d.sm_config not in cur.configs:
        steps.append(Step("create_endpoint_config", d.sm_config, {
            "EndpointConfigName": d.sm_config,
            "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": d.sm_model,
                                    "ServerlessConfig": {"MemorySizeInMB": d.memory_mb,
                                                         "MaxConcurrency": d.max_concurrency}}]}))
    action = "create_endpoint" if cur.endpoint_config is None else "update_endpoint"
    steps.append(Step(action, d.endpoint, {"EndpointName": d.endpoint, "EndpointConfigName": d.sm_config}))
    return steps


def plan_sagemaker_delete(endpoint: str, cur: SageMakerCurrent, owned_prefix: str | None = None) -> list[Step]:
    """Delete the endpoint, then the configs and models this tool made for it."""
    prefix = owned_prefix or f"{endpoint}-"
    steps = []
    if cur.endpoint_config is not None:
        steps.append(Step("delete_endpoint", endpoint, {"EndpointName": endpoint}))
    steps += [Step("delete_endpoint_config", c, {"EndpointConfigName": c}) for c in sorted(cur.configs) if c.startswith(prefix)]
    steps += [Step("delete_model", m, {"ModelName": m}) for m in sorted(cur.models) if m.startswith(prefix)]
    return steps


#: Function URL auth types, by the spelling of ``--url-auth``.
URL_AUTH = {"iam": "AWS_IAM", "none": "NONE"}
#: The resource-policy statements a public (AuthType NONE) function URL needs, by id.
PUBLIC_URL_STATEMENTS: Mapping[str, Mapping[str, object]] = {
    "bentoedge-url-public": {"Action": "lambda:InvokeFunctionUrl", "Principal": "*", "FunctionUrlAuthType": "NONE"},
    "bentoedge-url-invoke": {"Action": "lambda:InvokeFunction", "Principal": "*", "InvokedViaFunctionUrl": True},
}


@dataclass(frozen=True)
class LambdaDesired:
    function: str
    model_name: str
    model_version: str
    image: str
    role: str
    memory_mb: int = 2048
    timeout_s: int = 60
    env: Mapping[str, str] = field(default_factory=dict)
    url_auth: str | None = None  # "AWS_IAM" or "NONE": a function URL with that AuthType; None: leave URLs be


@dataclass(frozen=True)
class LambdaCurrent:
    exists: bool = False
    image: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    memory_mb: int | None = None
    url_auth: str | None = None  # the function URL's AuthType; None: no URL
    statements: frozenset[str] = frozenset()  # resource-policy statement ids


def validate_lambda(d: LambdaDesired) -> None:
    if not re.match(r"^[a-zA-Z0-9-_]{1,64}$", d.function):
        raise DeployError(f"function name {d.function!r}: use letters, digits, '-' or '_' (max 64)")
    if not d.image:
        raise DeployError("no container image given: pass --image URI (an ECR image built from the Bento)")
    if not ROLE_RE.match(d.role or ""):
        raise DeployError(f"execution role {d.role!r} is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME); pass --role")
    if not 128 <= d.memory_mb <= 10240:
        raise DeployError(f"--memory {d.memory_mb}: Lambda takes 128 to 10240 MB")
    if d.url_auth not in (None, *URL_AUTH.values()):
        raise DeployError(f"function URL auth {d.url_auth!r}: use iam or none")
    if d.url_auth == "NONE" and d.env.get("BENTOEDGE_AUTH", "on") != "on":
        raise DeployError("a function URL with --url-auth none is public: the service must check callers itself, "
                          f"but BENTOEDGE_AUTH={d.env.get('BENTOEDGE_AUTH')}; use --url-auth iam")
    if d.url_auth == "NONE" and not d.env.get("BENTOEDGE_CHANNEL"):
        raise DeployError("a function URL with --url-auth none is public, and the service can check callers only "
                          "against the channel's device registry: pass --channel URL --channel-root-sha256 HEX, "
                          "or use --url-auth iam")


def plan_lambda(d: LambdaDesired, cur: LambdaCurrent) -> list[Step]:
    validate_lambda(d)
    env = {"Variables": dict(d.env)}
    if not cur.exists:
        return [Step("create_function", d.function, {
            "FunctionName": d.function, "PackageType": "Image", "Code": {"ImageUri": d.image}, "Role": d.role,
            "MemorySize": d.memory_mb, "Timeout": d.timeout_s, "Environment": env, "Publish": True}),
            *plan_function_url(d, LambdaCurrent())]
    steps = []
    if dict(cur.env) != dict(d.env) or cur.memory_mb != d.memory_mb:
        steps.append(Step("update_function_configuration", d.function, {
            "FunctionName": d.function, "MemorySize": d.memory_mb, "Timeout": d.timeout_s, "Environment": env}))
    if cur.image != d.image:
        steps.append(Step("update_function_code", d.function,
                          {"FunctionName": d.function, "ImageUri": d.image, "Publish": True}))
    return steps + plan_function_url(d, cur)


def plan_function_url(d: LambdaDesired, cur: LambdaCurrent) -> list[Step]:
    """The function URL ``d.url_auth`` asks for, and exactly the public statements it needs.

    The configuration change comes first when closing a URL (NONE -> AWS_IAM), and the
    public statements go only after it, so at no point is an IAM URL's policy left public
    or a public URL's left without its AuthType."""
    if d.url_auth is None:
        return []
    steps: list[Step] = []
    url_args = {"FunctionName": d.function, "AuthType": d.url_auth}
    if cur.url_auth is None:
        steps.append(Step("create_function_url_config", d.function, url_args))
    elif cur.url_auth != d.url_auth:
        steps.append(Step("update_function_url_config", d.function, url_args))
    for sid, statement in PUBLIC_URL_STATEMENTS.items():
        if d.url_auth == "NONE" and sid not in cur.statements:
            steps.append(Step("add_permission", sid, {"FunctionName": d.function, "StatementId": sid, **statement}))
        if d.url_auth != "NONE" and sid in cur.statements:
            steps.append(Step("remove_permission", sid, {"FunctionName": d.function, "StatementId": sid}))
    return steps


def undo(step: Step) -> Step | None:
    """The step that removes what ``step`` created (rollback); None for updates."""
    inverse = {"create_model": ("delete_model", "ModelName"),
               "create_endpoint_config": ("delete_endpoint_config", "EndpointConfigName"),
               "create_endpoint": ("delete_endpoint", "EndpointName"),
               "create_function": ("delete_function", "FunctionName"),
               "create_function_url_config": ("delete_function_url_config", "FunctionName")}
    if step.action == "add_permission":
        return Step("remove_permission", step.resource,
                    {"FunctionName": step.args["FunctionName"], "StatementId": step.resource})
    if step.action not in inverse:
        return None
    action, key = inverse[step.action]
    return Step(action, step.resource, {key: step.resource})
