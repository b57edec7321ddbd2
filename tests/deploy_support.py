"""Deploy tests' helpers: the CLI in-process, and container images in moto's ECR."""

from __future__ import annotations

import json

from click.testing import CliRunner


def cli(*args: str) -> tuple[int, str]:
    """``bentoedge ARGS`` in this process: the exit code and everything it printed."""
    from bentoedge.cli import cli as root

    result = CliRunner().invoke(root, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def push_images(moto_url: str, repo: str = "bentoedge", tags: tuple[str, ...] = ("v1", "v2")) -> None:
    """Manifest-only images ``repo:TAG`` in moto's ECR, so a deploy's image check finds them."""
    import boto3

    ecr = boto3.client("ecr", endpoint_url=moto_url)
    try:
        ecr.create_repository(repositoryName=repo)
    except ecr.exceptions.RepositoryAlreadyExistsException:
        pass
    for tag in tags:
        try:
            ecr.put_image(repositoryName=repo, imageTag=tag, imageManifest=json.dumps(
                {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                 "config": {"digest": f"sha256:{tag * 32}"[:71]}, "layers": []}))
        except ecr.exceptions.ImageAlreadyExistsException:
            pass
