"""AWS SigV4 for the device's cloud calls, when its fallback endpoint sits behind AWS IAM.

A SageMaker endpoint is reached only through ``InvokeEndpoint``
(``https://runtime.sagemaker.REGION.amazonaws.com/endpoints/NAME/invocations``), and a
Lambda function URL with AuthType AWS_IAM (``https://ID.lambda-url.REGION.on.aws``) only
with a SigV4 signature; both check it against IAM before the request reaches the service.
``aws_target`` (pure) says whether a cloud URL needs SigV4 and for which service and region:
the agent's ``cloud_aws`` setting is ``auto`` (by the URL's host, the default), ``off``, or
``SERVICE:REGION`` for such an endpoint behind a custom domain.

Signing is botocore's (``SigV4Auth``), with credentials from botocore's usual chain
(environment, ``~/.aws``, an instance or container role); botocore comes with the optional
device extra ``bentoedge[aws]``, so the base device install stays without it, and it is
imported only by a device whose cloud needs it.  The device's own RFC 9421 signature
(``cloud_client.identity_signer``) is made first and is covered by the SigV4 signature, so a
function URL passes both on to the service; SageMaker passes neither header on, so there
IAM alone is the gate (the service runs with ``BENTOEDGE_AUTH=iam``).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bentoedge.bentos.errors import ConfigError

#: (method, url, headers, body) -> the headers SigV4 adds (Authorization, X-Amz-Date, ...).
AwsSigner = Callable[[str, str, Mapping[str, str], bytes], Mapping[str, str]]

SERVICES = ("sagemaker", "lambda")
_SAGEMAKER_HOST = re.compile(r"^runtime\.sagemaker\.([a-z0-9-]+)\.amazonaws\.com$")
_LAMBDA_URL_HOST = re.compile(r"^[a-z0-9]+\.lambda-url\.([a-z0-9-]+)\.on\.aws$")
_EXPLICIT = re.compile(r"^(sagemaker|lambda):([a-z]{2}(-[a-z]+)+-\d+)$")


@dataclass(frozen=True)
class AwsTarget:
    service: str  # the SigV4 service name: "sagemaker" or "lambda"
    region: str


def check_setting(setting: str) -> None:
    """``cloud_aws`` must be auto, off or SERVICE:REGION (ConfigError otherwise)."""
    if setting not in ("auto", "off") and not _EXPLICIT.match(setting):
        raise ConfigError(f"cloud_aws must be auto, off, sagemaker:REGION or lambda:REGION, not {setting!r}")


def aws_target(cloud_url: str, setting: str = "auto") -> AwsTarget | None:
    """Whether calls to ``cloud_url`` are SigV4-signed, and as what; None: they are not."""
    check_setting(setting)
    if setting == "off":
        return None
    explicit = _EXPLICIT.match(setting)
    if explicit:
        return AwsTarget(explicit.group(1), explicit.group(2))
    host = (urllib.parse.urlsplit(cloud_url).hostname or "").lower()
    for service, pattern in (("sagemaker", _SAGEMAKER_HOST), ("lambda", _LAMBDA_URL_HOST)):
        m = pattern.match(host)
        if m:
            return AwsTarget(service, m.group(1))
    return None


def reaches_only_invocations(cloud_url: str) -> bool:
    """A SageMaker runtime URL names the one route it can reach (``.../invocations``): fleet
    reports and other routes of the service cannot go through it."""
    return urllib.parse.urlsplit(cloud_url).path.rstrip("/").endswith("/invocations")


def sigv4_signer(target: AwsTarget) -> AwsSigner:
    """Signs each call afresh with the credentials botocore finds (they may rotate)."""
    try:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.session import Session
    except ImportError:
        raise ConfigError(f"the cloud endpoint is behind AWS IAM ({target.service}, {target.region}) and its calls "
                          "must be SigV4-signed: pip install 'bentoedge[aws]' on this device, or put a function "
                          "URL with AuthType NONE in front (bentoedge deploy lambda --url-auth none)") from None
    try:
        credentials = Session().get_credentials()
    except Exception as exc:  # botocore's credential-chain errors: a damaged ~/.aws file, say
        raise ConfigError(f"cannot read this device's AWS credentials: {' '.join(str(exc).split())}") from None
    if credentials is None:
        raise ConfigError(f"the cloud endpoint is behind AWS IAM ({target.service}, {target.region}) but this device "
                          "has no AWS credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile, "
                          "or set cloud_aws = \"off\" in agent.toml for an endpoint that needs none")

    def sign(method: str, url: str, headers: Mapping[str, str], body: bytes) -> Mapping[str, str]:
        request = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
        SigV4Auth(credentials.get_frozen_credentials(), target.service, target.region).add_auth(request)
        return {k: v for k, v in request.headers.items() if k.lower() not in {h.lower() for h in headers}}
    return sign
