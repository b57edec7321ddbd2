"""``bentoedge serve`` and ``bentoedge deploy``: the cloud verbs of the command line.

``serve`` runs ``bentoml serve bentoedge.cloud.service:SealedService`` for one sealed model as a
child process, passes its output through, forwards SIGINT/SIGTERM to it, and exits 1 when
the service refuses the model (bad signature, key or artifact) instead of letting
BentoML restart it forever.

``deploy`` verifies the sealed model locally, then creates or updates a SageMaker
Serverless endpoint or a Lambda container function (``cloud.deploy``), printing each
resource it creates; ``deploy delete`` removes them.  The container gets the model tag,
the signer's public key and ``BENTOEDGE_KMS=1`` in its environment: in AWS the data keys
come from KMS.
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import socket
import subprocess
import sys
from typing import Any

import click

from bentoedge.bentos.errors import DeployError, HealthCheckError, UsageError
from bentoedge.bentos.keystore import LocalKeys, default_home
from bentoedge.bentos.sealed import SealedModel
from bentoedge.cloud.deploy.plan import URL_AUTH


def _sealed(tag: str) -> SealedModel:
    from bentoedge.bentos.store import ModelStore

    return ModelStore().get(tag)  # NotFoundError (exit 2) names what the store has


def _check_port_free(host: str, port: int) -> None:
    """Say a busy port in one line before BentoML's arbiter fails on it with a traceback."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            with socket.socket() as free:
                free.bind((host, 0))
                other = free.getsockname()[1]
            raise UsageError(f"port {port} on {host} is already in use (another 'bentoedge serve' or an agent?); "
                             f"pass --port N, e.g. --port {other}") from None


@click.command("serve")
@click.argument("model")
@click.option("--port", "-p", default=3000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 for all).")
@click.option("--no-auth", "no_auth", is_flag=True,
              help="Let every request in, unauthenticated (local development only; same as BENTOEDGE_AUTH=off).")
def serve(model: str, port: int, host: str, no_auth: bool) -> None:
    """Serve sealed model MODEL (NAME[:VERSION]) with `bentoml serve` until stopped.

    \b
    Callers need a device signature or an API key (bentoedge keys api create NAME);
    devices are let in from the channel's signed registry: set BENTOEDGE_CHANNEL and
    BENTOEDGE_CHANNEL_ROOT (a trusted root.json).  --no-auth switches this off.
    """
    from bentoedge.cloud.serve import REFUSAL, serve_command, server_env

    sealed = _sealed(model)
    tag = sealed.manifest.tag
    _check_port_free(host, port)
    click.echo(f"serving {tag} on http://{host}:{port} (POST /predict, /docs.json, /readyz)", err=True)
    if no_auth:
        click.secho("WARNING: authentication is off (--no-auth): anyone who can reach this port can query the model",
                    fg="red", err=True)
    proc = subprocess.Popen(serve_command(port, host), env=server_env(tag, {"BENTOEDGE_AUTH": "off"} if no_auth else None),
                            stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)

    def forward(signum: int, _frame: Any) -> None:
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    refused = False
    assert proc.stdout is not None
    for raw in proc.stdout:
        sys.stderr.write(raw.decode(errors="replace"))
        if REFUSAL.encode() in raw:
            refused = True
            forward(signal.SIGTERM, None)
    code = proc.wait()
    if refused:
        raise HealthCheckError(f"the cloud service refused {tag}; see the line above")
    sys.exit(code if code >= 0 else 0)


_TARGET = click.option("--target", type=click.Choice(["cpu", "gpu", "sagemaker", "lambda"]), default="cpu",
                       show_default=True, help="Where the image runs: CPU, CUDA GPU, SageMaker (port 8080, "
                                               "/ping, /invocations) or Lambda (awslambdaric).")


@click.command("bento")
@click.argument("model")
@_TARGET
def bento(model: str, target: str) -> None:
    """Build a Bento of sealed model MODEL (NAME[:VERSION]) for TARGET, named NAME-TARGET:VERSION.

    The Bento carries the sealed model (still encrypted) and finds it by itself: serve it with
    `bentoml serve NAME-cpu:VERSION`, or make an image of it with `bentoedge containerize`.

    \b
    Examples:
      bentoedge bento iris:v1                      # iris-cpu:v1
      bentoedge bento iris:v1 --target sagemaker   # iris-sagemaker:v1, serving on 8080
    """
    from bentoedge.cloud.bento import build_bento

    tag, path = build_bento(model, target, progress=lambda msg: click.echo(msg, err=True))
    click.echo(f"built Bento {tag} at {path}\nserve it: bentoml serve {tag}\nimage: bentoedge containerize {model} "
               f"--target {target}")


@click.command("containerize")
@click.argument("model")
@_TARGET
def containerize(model: str, target: str) -> None:
    """Build the Bento of MODEL for TARGET and its container image (`bentoml containerize`).

    Without a Docker engine here the Bento is still built, and the command says where to
    run `bentoml containerize` instead.

    \b
    Example:
      bentoedge containerize iris:v1 --target lambda
    """
    from bentoedge.cloud.bento import build_bento
    from bentoedge.cloud.bento import containerize as make_image

    tag, path = build_bento(model, target, progress=lambda msg: click.echo(msg, err=True))
    click.echo(f"built Bento {tag} at {path}")
    if make_image(tag) is None:
        click.echo(f"no Docker engine found here (docker is not on the PATH): the Bento is ready; run "
                   f"`bentoml containerize {tag}` where Docker runs (or `bentoml export {tag}` to move it)")
        return
    click.echo(f"built image {tag} (docker images {tag.split(':')[0]})")


@click.group("deploy")
def deploy() -> None:
    """Deploy a sealed model's Bento image to SageMaker Serverless or Lambda; update; delete."""


def _aws_options(f: Any) -> Any:
    f = _aws_errors(f)
    f = click.option("--region", default=None, help="AWS region (default: from the AWS config).")(f)
    f = click.option("--endpoint-url", default=None, envvar="AWS_ENDPOINT_URL",
                     help="AWS API endpoint (for a local moto_server).")(f)
    return f


def _aws_errors(f: Any) -> Any:
    """AWS's own failures (no credentials, an API refusal) as one line with the next step."""
    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            from botocore import exceptions as aws
        except ImportError:
            raise DeployError("deploying needs boto3: pip install 'bentoedge[cloud]'") from None
        try:
            return f(*args, **kwargs)
        except aws.NoCredentialsError:
            raise DeployError("no AWS credentials found: configure them (aws configure, AWS_PROFILE, or "
                              "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) and run this again") from None
        except aws.NoRegionError:
            raise DeployError("no AWS region set: pass --region or set AWS_DEFAULT_REGION") from None
        except aws.ClientError as exc:
            err = exc.response.get("Error", {})
            raise DeployError(f"AWS refused {exc.operation_name}: {err.get('Code', '?')}: {err.get('Message', exc)}"
                              ) from None
        except aws.EndpointConnectionError as exc:
            raise DeployError(f"cannot reach AWS at {exc.kwargs.get('endpoint_url', '?')}: check --endpoint-url and "
                              "the network") from None
    return wrapper


_ALLOW_NO_KMS = click.option("--allow-no-kms", is_flag=True,
                             help="Deploy even though the cloud artifacts are not wrapped for KMS (the "
                                  "container must then get its key another way).")


def _container_env(sealed: SealedModel, allow_no_kms: bool = False) -> dict[str, str]:
    info = sealed.verify(LocalKeys(default_home()).trusted_signers(), target="cloud")
    wraps = sealed.wraps()
    cloud_ids = [a.id for a in sealed.manifest.artifacts if a.target == "cloud"]
    if not all(any(w.get("type") == "kms" for w in wraps.get(i, [])) for i in cloud_ids):
        problem = (f"{sealed.manifest.tag}'s cloud artifacts are not all wrapped for KMS, so the container will "
                   "not be able to unwrap them")
        if not allow_no_kms:
            raise DeployError(f"{problem}: build with --recipient kms:ARN, or pass --allow-no-kms to deploy anyway")
        click.secho(f"warning: {problem} (--allow-no-kms)", fg="yellow", err=True)
    return {"BENTOEDGE_MODEL": sealed.manifest.tag, "BENTOEDGE_TRUSTED_SIGNERS": info.public_key.hex(),
            "BENTOEDGE_KMS": "1", "BENTOML_DO_NOT_TRACK": "true"}


#: SageMaker InvokeEndpoint is SigV4-signed and checked by IAM, and it passes only its own
#: headers on to the container: a device's signature headers never arrive, so IAM is the gate.
SAGEMAKER_AUTH = {"BENTOEDGE_AUTH": "iam"}


@deploy.command("sagemaker")
@click.argument("model")
@click.option("--endpoint", required=True, help="SageMaker endpoint name.")
@click.option("--image", required=True, help="Container image URI (ECR) built from the Bento.")
@click.option("--role", required=True, help="Execution role ARN SageMaker assumes.")
@click.option("--memory", default=2048, show_default=True, type=int, help="MemorySizeInMB (1024-6144).")
@click.option("--max-concurrency", default=5, show_default=True, type=int, help="MaxConcurrency (1-200).")
@_ALLOW_NO_KMS
@_aws_options
def sagemaker(model: str, endpoint: str, image: str, role: str, memory: int, max_concurrency: int,
              allow_no_kms: bool, region: str | None, endpoint_url: str | None) -> None:
    """Create or update SageMaker Serverless endpoint ENDPOINT to serve MODEL (NAME:VERSION)."""
    from bentoedge.cloud.deploy.aws import Clients, deploy_sagemaker
    from bentoedge.cloud.deploy.plan import SageMakerDesired

    sealed = _sealed(model)
    m = sealed.manifest
    d = SageMakerDesired(endpoint, m.name, m.version, image, role, memory, max_concurrency,
                         _container_env(sealed, allow_no_kms) | SAGEMAKER_AUTH)
    clients = Clients(endpoint_url, region)
    result = deploy_sagemaker(d, clients, say=click.echo)
    if result.changed:
        click.echo(f"endpoint {endpoint} -> {m.tag} ({len(result.done)} change(s))")
    where = clients("sagemaker").meta.region_name
    # What a caller (or a device with AWS credentials, signing SigV4) posts to:
    click.echo(f"invoke: https://runtime.sagemaker.{where}.amazonaws.com/endpoints/{endpoint}/invocations "
               "(SigV4; a device without AWS credentials needs a function URL or gateway in front)")


@deploy.command("lambda")
@click.argument("model")
@click.option("--function", "function", required=True, help="Lambda function name.")
@click.option("--image", required=True, help="Container image URI (ECR) built from the Bento.")
@click.option("--role", required=True, help="Execution role ARN Lambda assumes.")
@click.option("--memory", default=2048, show_default=True, type=int, help="MemorySize in MB (128-10240).")
@click.option("--timeout", "timeout_s", default=60, show_default=True, type=int, help="Timeout in seconds.")
@click.option("--url-auth", type=click.Choice(sorted(URL_AUTH)), default=None,
              help="Give the function a URL: iam (callers sign SigV4; devices need bentoedge[aws]) or none "
                   "(public: the service checks device signatures against --channel's registry).")
@click.option("--channel", default=None, help="The channel whose signed device registry lets devices in.")
@click.option("--channel-root-sha256", default=None, metavar="HEX",
              help="SHA-256 of the channel's 1.root.json ('bentoedge channel init' printed it).")
@_ALLOW_NO_KMS
@_aws_options
def lambda_(model: str, function: str, image: str, role: str, memory: int, timeout_s: int, url_auth: str | None,
            channel: str | None, channel_root_sha256: str | None, allow_no_kms: bool, region: str | None,
            endpoint_url: str | None) -> None:
    """Create or update Lambda container function FUNCTION to serve MODEL (NAME:VERSION).

    \b
    Examples:
      bentoedge deploy lambda digits:v2 --function digits --image 1234.dkr.ecr.eu-west-1.amazonaws.com/digits:v2 \\
          --role arn:aws:iam::123456789012:role/digits --url-auth iam
      bentoedge deploy lambda digits:v2 ... --url-auth none --channel s3://fleet/digits --channel-root-sha256 3f5a...
    """
    from bentoedge.cloud.deploy.aws import Clients, deploy_lambda, function_url_config
    from bentoedge.cloud.deploy.plan import LambdaDesired

    if channel and not channel_root_sha256:
        raise UsageError("--channel needs --channel-root-sha256 HEX (printed by 'bentoedge channel init'), so the "
                         "function trusts the channel's root and nothing else")
    sealed = _sealed(model)
    m = sealed.manifest
    clients = Clients(endpoint_url, region)
    if url_auth is None:
        # No --url-auth keeps the URL the function has, and the settings that go with it: a
        # redeploy must not turn an IAM URL's function into one that refuses every caller.
        existing = function_url_config(clients, function)
        url_auth = {v: k for k, v in URL_AUTH.items()}.get(existing["AuthType"]) if existing else None
    # The image (bentoedge containerize --target lambda) enters through awslambdaric and the
    # handler, which reads the model and settings from this environment.
    env = _container_env(sealed, allow_no_kms) | {"BENTOEDGE_HOME": "/tmp/bentoedge"}
    if channel:
        env |= {"BENTOEDGE_CHANNEL": channel, "BENTOEDGE_CHANNEL_ROOT_SHA256": str(channel_root_sha256).lower()}
    elif url_auth == "iam":
        env["BENTOEDGE_AUTH"] = "iam"  # no registry to check devices against: IAM alone lets callers in
    d = LambdaDesired(function, m.name, m.version, image, role, memory, timeout_s, env,
                      URL_AUTH[url_auth] if url_auth else None)
    result = deploy_lambda(d, clients, say=click.echo)
    if result.changed:
        click.echo(f"function {function} -> {m.tag} ({len(result.done)} change(s))")
    url = function_url_config(clients, function)
    if url is None:
        click.echo("no function URL: pass --url-auth iam|none to give devices one (or put API Gateway in front)")
    else:
        how = ("callers sign SigV4 (a device needs AWS credentials and bentoedge[aws])" if url["AuthType"] == "AWS_IAM"
               else "public; devices sign with their identity keys")
        click.echo(f"invoke: {url['FunctionUrl'].rstrip('/')} ({how}); use it as the device's --cloud")


@deploy.command("delete")
@click.argument("platform", type=click.Choice(["sagemaker", "lambda"]))
@click.argument("name")
@_aws_options
def delete(platform: str, name: str, region: str | None, endpoint_url: str | None) -> None:
    """Delete SageMaker endpoint NAME (with its configs and models) or Lambda function NAME."""
    from bentoedge.cloud.deploy.aws import Clients, delete_lambda, delete_sagemaker

    clients = Clients(endpoint_url, region)
    result = (delete_sagemaker if platform == "sagemaker" else delete_lambda)(name, clients, say=click.echo)
    click.echo(f"deleted {name} ({len(result.done)} resource(s))")
