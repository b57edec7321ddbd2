"""SigV4 on the device: which cloud URLs need it (pure), and a clear line where botocore is missing."""

from __future__ import annotations

import builtins
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bentoedge.bentos.errors import ConfigError
from bentoedge.edge.aws_sign import AwsTarget, aws_target, reaches_only_invocations, sigv4_signer
from bentoedge.edge.cloud_client import CloudClient
from bentoedge.edge.config import AgentConfig

SAGEMAKER = "https://runtime.sagemaker.eu-west-1.amazonaws.com/endpoints/digits/invocations"
LAMBDA_URL = "https://abcdefghijklmnopqrstuvwxyz012345.lambda-url.us-east-2.on.aws"


def test_aws_hosts_are_recognised_and_others_are_not() -> None:
    assert aws_target(SAGEMAKER) == AwsTarget("sagemaker", "eu-west-1")
    assert aws_target(LAMBDA_URL + "/") == AwsTarget("lambda", "us-east-2")
    assert aws_target("http://127.0.0.1:3000") is None
    assert aws_target("https://runtime.sagemaker.eu-west-1.amazonaws.com.evil.example/x") is None
    assert aws_target(SAGEMAKER, "off") is None
    assert aws_target("https://models.example.com", "sagemaker:ap-southeast-2") == AwsTarget("sagemaker",
                                                                                            "ap-southeast-2")


@given(st.text(max_size=30))
def test_a_setting_is_auto_off_or_service_region_and_nothing_else(setting: str) -> None:
    valid = setting in ("auto", "off") or (setting.startswith(("sagemaker:", "lambda:")) and
                                           aws_target("https://x.example", setting) is not None)
    try:
        aws_target("https://x.example", setting)
    except ConfigError as exc:
        assert not valid and "cloud_aws must be" in str(exc)
    else:
        assert setting in ("auto", "off") or valid
    if not valid:
        with pytest.raises(ConfigError, match="cloud_aws"):
            AgentConfig(device_id="d", channel="file:///c", cloud="http://127.0.0.1:1", state="/s", cloud_aws=setting)


def test_a_sagemaker_url_is_posted_to_as_it_is_and_reaches_nothing_else() -> None:
    assert reaches_only_invocations(SAGEMAKER) and not reaches_only_invocations(LAMBDA_URL)
    client = CloudClient(SAGEMAKER)
    assert client._path == "/endpoints/digits/invocations"
    assert client._url == SAGEMAKER
    assert CloudClient(LAMBDA_URL)._path == "/predict"
    with pytest.raises(ValueError, match="only the service's /invocations"):
        CloudClient(SAGEMAKER, path="/fleet/reports")


def test_without_botocore_the_device_says_to_install_the_aws_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_botocore(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "botocore" or name.startswith("botocore."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_botocore)
    with pytest.raises(ConfigError, match=r"pip install 'bentoedge\[aws\]'"):
        sigv4_signer(AwsTarget("sagemaker", "eu-west-1"))


def test_without_credentials_the_device_says_where_they_go(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    pytest.importorskip("botocore")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata call off loopback
    with pytest.raises(ConfigError, match="no AWS credentials"):
        sigv4_signer(AwsTarget("lambda", "us-east-1"))
