"""The Lambda handler applies the service's authentication: the same refusals, the same JSON."""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("bentoml")

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from service_support import TinySealed  # noqa: E402

from bentoedge.bentos import auth  # noqa: E402
from bentoedge.bentos.apikeys import ApiKeyStore  # noqa: E402
from bentoedge.cloud.aws_lambda import LambdaHandler  # noqa: E402

DEVICE = Ed25519PrivateKey.generate()
REVOKED = Ed25519PrivateKey.generate()
BODY = json.dumps({"inputs": {"x": np.zeros((1, 64), dtype=np.float32).tolist()}}).encode()


def _event(headers: dict[str, str], body: bytes = BODY, path: str = "/predict", stage: str = "$default"
           ) -> dict[str, Any]:
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "",
        "headers": {"host": "abc.lambda-url.eu-west-1.on.aws", "content-type": "application/json",
                    "content-length": str(len(body)), **{k.lower(): v for k, v in headers.items()}},
        "requestContext": {"accountId": "anonymous", "apiId": "abc", "stage": stage, "requestId": "r",
                           "http": {"method": "POST", "path": path, "protocol": "HTTP/1.1",
                                    "sourceIp": "203.0.113.1", "userAgent": "test"}},
        "isBase64Encoded": True, "body": base64.b64encode(body).decode(),
    }


def _doc(resp: dict[str, Any]) -> dict[str, Any]:
    body = base64.b64decode(resp["body"]) if resp["isBase64Encoded"] else resp["body"].encode()
    doc: dict[str, Any] = json.loads(body)
    return doc


@pytest.fixture
def lam(tiny_sealed: TinySealed, tmp_path: Path) -> tuple[LambdaHandler, ApiKeyStore]:
    registry = tmp_path / "devices.json"
    registry.write_bytes(auth.registry_document({
        auth.identity_id(auth.identity_raw(k.public_key())): auth.Device(auth.identity_raw(k.public_key()), revoked)
        for k, revoked in ((DEVICE, False), (REVOKED, True))}))
    keys = ApiKeyStore(tmp_path / "api_keys.json")
    env = {**os.environ, "BENTOEDGE_MODEL": tiny_sealed.tag, "BENTOEDGE_HOME": str(tiny_sealed.home),
           "BENTOEDGE_DEVICE_REGISTRY": registry.as_uri(), "BENTOEDGE_API_KEYS_FILE": str(keys.path)}
    env.pop("BENTOEDGE_AUTH", None)
    return LambdaHandler(env=env), keys


def _signed(key: Ed25519PrivateKey, path: str = "/predict", body: bytes = BODY, created: float | None = None
            ) -> dict[str, str]:
    return dict(auth.sign_request(key, "POST", path, body, time.time() if created is None else created))


def test_the_attacks_are_refused_and_the_device_answered(lam: tuple[LambdaHandler, ApiKeyStore]) -> None:
    handler, _ = lam
    assert handler(_event({}))["statusCode"] == 401
    good = _signed(DEVICE)
    ok = handler(_event(good))
    assert ok["statusCode"] == 200 and _doc(ok)["served_by"] == "cloud"
    replay = handler(_event(good))
    assert replay["statusCode"] == 401 and "replay" in _doc(replay)["error"]
    assert handler(_event(_signed(REVOKED)))["statusCode"] == 403
    assert handler(_event(_signed(Ed25519PrivateKey.generate())))["statusCode"] == 403
    assert handler(_event(_signed(DEVICE), body=BODY.replace(b"0.0", b"1.0", 1)))["statusCode"] == 401
    assert handler(_event(_signed(DEVICE, created=time.time() - 3600)))["statusCode"] == 401
    refused = handler(_event({}))
    assert "WWW-Authenticate" in refused["headers"] and "needs credentials" in _doc(refused)["error"]


def test_health_routes_are_open(lam: tuple[LambdaHandler, ApiKeyStore]) -> None:
    handler, _ = lam
    event = _event({}, path="/livez")
    event["requestContext"]["http"]["method"] = "GET"
    del event["body"]
    assert handler(event)["statusCode"] == 200


def test_a_signature_covers_the_path_as_sent_under_a_stage(lam: tuple[LambdaHandler, ApiKeyStore]) -> None:
    handler, _ = lam
    assert handler(_event(_signed(DEVICE, path="/prod/predict"), path="/prod/predict", stage="prod"))["statusCode"] == 200
    assert handler(_event(_signed(DEVICE, path="/predict"), path="/prod/predict", stage="prod"))["statusCode"] == 401


def test_api_keys_and_their_revocation(lam: tuple[LambdaHandler, ApiKeyStore]) -> None:
    handler, keys = lam
    key, _ = keys.create("lambda-app")
    assert handler(_event({"authorization": f"Bearer {key}"}))["statusCode"] == 200
    keys.revoke("lambda-app")
    assert handler(_event({"authorization": f"Bearer {key}"}))["statusCode"] == 403


def test_auth_off_is_explicit_and_logged(tiny_sealed: TinySealed, caplog: pytest.LogCaptureFixture) -> None:
    env = {**os.environ, "BENTOEDGE_MODEL": tiny_sealed.tag, "BENTOEDGE_HOME": str(tiny_sealed.home),
           "BENTOEDGE_AUTH": "off"}
    with caplog.at_level(logging.WARNING, logger="bentoml.bentoedge"):
        assert LambdaHandler(env=env)(_event({}))["statusCode"] == 200
    assert any("AUTHENTICATION IS OFF" in r.getMessage() for r in caplog.records)


def test_a_bad_auth_setting_is_a_503_not_a_traceback(tiny_sealed: TinySealed) -> None:
    env = {**os.environ, "BENTOEDGE_MODEL": tiny_sealed.tag, "BENTOEDGE_HOME": str(tiny_sealed.home),
           "BENTOEDGE_AUTH": "maybe"}
    resp = LambdaHandler(env=env)(_event({}))
    assert resp["statusCode"] == 503 and _doc(resp)["reason"] == "model_unavailable"


def test_iam_mode_takes_only_events_iam_signed(tiny_sealed: TinySealed) -> None:
    """BENTOEDGE_AUTH=iam (a function URL with AuthType AWS_IAM): Lambda names the caller it
    checked in requestContext.authorizer.iam; an event without it (the URL switched to NONE,
    or another way in) is refused, and the function still answers the signed one after."""
    env = {**os.environ, "BENTOEDGE_MODEL": tiny_sealed.tag, "BENTOEDGE_HOME": str(tiny_sealed.home),
           "BENTOEDGE_AUTH": "iam"}
    handler = LambdaHandler(env=env)
    unsigned = handler(_event({}))
    assert unsigned["statusCode"] == 401 and "AWS IAM" in _doc(unsigned)["error"]
    forged = _event({"authorization": "AWS4-HMAC-SHA256 Credential=AKIAFAKE/20261202/eu-west-1/lambda/aws4_request"})
    assert handler(forged)["statusCode"] == 401  # a header is not IAM's word: only the request context is
    signed = _event({})
    signed["requestContext"]["authorizer"] = {"iam": {"accessKey": "AKIAEXAMPLE", "accountId": "123456789012",
                                                      "userArn": "arn:aws:iam::123456789012:user/device-7"}}
    ok = handler(signed)
    assert ok["statusCode"] == 200 and _doc(ok)["served_by"] == "cloud"
    assert handler(_event({}))["statusCode"] == 401
