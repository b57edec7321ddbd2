"""A device falls back to the cloud through the AWS Lambda handler, end to end, on loopback.

The device is a real agent (``edge.server.AgentServer``) with the committed LiteRT ``tiny``
model, and its real cloud client (``edge.cloud_client``) forwards over HTTP.  What stands in
for AWS is small and in this file: a stdlib HTTP server in a thread that does what a Lambda
function URL does, turning each HTTP request into a payload format 2.0 event (a base64 body
for .npz), calling ``cloud.aws_lambda``'s handler, and turning its answer back into HTTP.
The cloud model is a sealed ONNX model with the device model's signature, in a plain sealed
folder (``BENTOEDGE_MODEL`` as a path); the handler's opener counts how often it opens it.

With ``iam_keys`` set, the stand-in does what a function URL with AuthType AWS_IAM does:
it checks the SigV4 signature (recomputed with botocore from the secret it knows), answers
403 ``{"Message":"Forbidden"}`` without invoking the function when it does not verify, and
names the caller in ``requestContext.authorizer.iam`` when it does.
"""

from __future__ import annotations

import base64
import dataclasses
import hmac
import http.client
import io
import json
import os
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from api_support import DATA, agent_config, load_edge_model, sealed  # noqa: E402
from service_support import CountingOpener  # noqa: E402

from bentoedge.bentos.api import (  # noqa: E402
    HEADER_REASON,
    HEADER_SERVED_BY,
    HEADER_VERSION,
    JSON,
    NPZ,
    decode_npz,
)
from bentoedge.bentos.keystore import LocalKeys  # noqa: E402
from bentoedge.bentos.recipients import Keyring  # noqa: E402
from bentoedge.cloud.aws_lambda import LambdaHandler  # noqa: E402
from bentoedge.edge.active import ActiveModel  # noqa: E402
from bentoedge.edge.server import AgentServer  # noqa: E402

W = np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(4, 3)


def cloud_onnx() -> bytes:
    """x float32[?,4] -> y = softmax(x @ W) float32[?,3]: the device model's signature."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["z"]),
            helper.make_node("Softmax", ["z"], ["y"], axis=-1),
        ],
        "tiny-lambda",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(W, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return bytes(model.SerializeToString())


def run_onnx(model: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(["y"], {"x": x})[0])


def seal_cloud(out: Path, home: Path) -> bytes:
    from bentoedge.bentos.golden import Golden
    from bentoedge.bentos.manifest import Signature, TensorSpec
    from bentoedge.bentos.recipients import KekRecipient
    from bentoedge.bentos.sealed import Plain, SealRequest, seal

    keys = LocalKeys(home)
    keys.init()
    model = cloud_onnx()
    gx = np.random.default_rng(5).normal(size=(2, 4)).astype(np.float32)
    golden = Golden({"x": gx}, {"cloud-fp32": {"y": run_onnx(model, gx)}})
    req = SealRequest(
        name="tinylambda",
        version="l1",
        release=1,
        source={"kind": "onnx", "sha256": "0" * 64},
        signature=Signature(
            (TensorSpec("x", "float32", (None, 4)),), (TensorSpec("y", "float32", (None, 3)),)
        ),
        artifacts=[
            Plain("cloud-fp32", "cloud", model, "onnxruntime", "fp32"),
            Plain("golden-cloud", "cloud", golden.to_bytes()),
        ],
        golden={
            "edge": None,
            "cloud": "golden-cloud",
            "count": 2,
            "tolerances": {"cloud-fp32": {"atol": 1e-5, "rtol": 1e-4}},
        },
    )
    seal(req, out, [KekRecipient(keys.kek())], keys.signing_key())
    return model


class FunctionUrl(BaseHTTPRequestHandler):
    """What AWS does in front of the function: HTTP request -> event -> handler -> HTTP answer."""

    protocol_version = "HTTP/1.1"
    server: Any

    def do_POST(self) -> None:
        self._invoke()

    def do_GET(self) -> None:
        self._invoke()

    def _invoke(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        caller = None
        if self.server.iam_keys is not None:
            caller = verify_sigv4(self.command, f"http://{self.headers['Host']}{self.path}",
                                  {k.lower(): v for k, v in self.headers.items()}, body, self.server.iam_keys)
            if caller is None:
                self.server.refused += 1
                data = b'{"Message":"Forbidden"}'
                self.send_response(403)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        text = kind == JSON
        path = self.path.split("?")[0]
        event = {
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": path,
            "rawQueryString": "",
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "requestContext": {
                "accountId": "anonymous",
                "apiId": "loopback",
                "stage": "$default",
                "requestId": f"req-{self.server.calls}",
                "routeKey": "$default",
                "http": {
                    "method": self.command,
                    "path": path,
                    "protocol": "HTTP/1.1",
                    "sourceIp": "127.0.0.1",
                    "userAgent": self.headers.get("User-Agent", ""),
                },
            },
            "isBase64Encoded": not text,
        }
        if caller is not None:
            event["requestContext"]["authorizer"] = {  # type: ignore[index]
                "iam": {"accessKey": caller, "accountId": "123456789012",
                        "userArn": f"arn:aws:iam::123456789012:user/{caller}"}}
        if body:
            event["body"] = body.decode("utf-8") if text else base64.b64encode(body).decode("ascii")
        self.server.calls += 1
        resp = self.server.lambda_handler(event, None)
        data = (
            base64.b64decode(resp["body"])
            if resp["isBase64Encoded"]
            else resp["body"].encode("utf-8")
        )
        self.send_response(resp["statusCode"])
        for key, value in resp["headers"].items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


_SIGV4 = re.compile(r"^AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                    r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$")


def verify_sigv4(method: str, url: str, headers: dict[str, str], body: bytes, secrets: dict[str, str]) -> str | None:
    """The access key whose SigV4 signature this request carries and that verifies; else None."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    m = _SIGV4.match(headers.get("authorization", ""))
    if not m or m.group(1) not in secrets or not headers.get("x-amz-date", "").startswith(m.group(2)):
        return None
    key, _, region, service, signed, signature = m.groups()
    if service != "lambda" or "host" not in signed.split(";"):
        return None
    request = AWSRequest(method=method, url=url, data=body,
                         headers={h: headers[h] for h in signed.split(";") if h != "host" and h in headers})
    request.context["timestamp"] = headers["x-amz-date"]
    signer = SigV4Auth(Credentials(key, secrets[key]), service, region)
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    return key if hmac.compare_digest(expected, signature) else None


@pytest.fixture()
def lambda_cloud(tmp_path: Path) -> Iterator[tuple[str, Path, bytes, CountingOpener, Any]]:
    home = tmp_path / "home"
    folder = tmp_path / "tinylambda-l1"
    model = seal_cloud(folder, home)
    opener = CountingOpener()
    env = {**os.environ, "BENTOEDGE_MODEL": str(folder), "BENTOEDGE_HOME": str(home), "BENTOEDGE_AUTH": "off"}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FunctionUrl)
    httpd.daemon_threads = True
    httpd.lambda_handler = LambdaHandler(opener=opener, env=env)  # type: ignore[attr-defined]
    httpd.calls = 0  # type: ignore[attr-defined]
    httpd.iam_keys = None  # type: ignore[attr-defined]
    httpd.refused = 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", folder, model, opener, httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _post(
    agent: AgentServer, body: bytes, kind: str = JSON, accept: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=30)
    headers = {"Content-Type": kind, **({"Accept": accept} if accept else {})}
    try:
        conn.request("POST", "/predict", body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _json(x: np.ndarray) -> bytes:
    return json.dumps({"inputs": {"x": x.tolist()}}).encode()


def test_a_device_falls_back_through_the_lambda_handler(
    lambda_cloud: tuple[str, Path, bytes, CountingOpener, Any],
) -> None:
    url, folder, onnx_bytes, opener, httpd = lambda_cloud
    keyring = Keyring().add_kek(LocalKeys(DATA).kek())
    edge_model = load_edge_model(sealed("tiny"), keyring, artifact_id="edge-fp32")
    x = np.random.default_rng(6).normal(size=(3, 4)).astype(np.float32)
    with AgentServer(
        agent_config(cloud=url, timeout=10.0, max_batch=2), ActiveModel(edge_model)
    ) as agent:
        # Within the device's limits: answered locally, Lambda untouched.
        status, headers, body = _post(agent, _json(x[:2]))
        assert status == 200 and headers[HEADER_SERVED_BY] == "edge"
        assert httpd.calls == 0
        # Over the batch limit: forwarded to the function, whose ONNX Runtime answer comes back.
        status, headers, body = _post(agent, _json(x))
        doc = json.loads(body)
        assert status == 200, doc
        assert doc["served_by"] == "cloud" and headers[HEADER_SERVED_BY] == "cloud"
        assert doc["fallback_reason"] == "batch_limit" and headers[HEADER_REASON] == "batch_limit"
        assert doc["model"] == {"name": "tinylambda", "version": "l1"}
        np.testing.assert_allclose(
            doc["outputs"]["y"], run_onnx(onnx_bytes, x), rtol=1e-5, atol=1e-6
        )
        # An .npz request asking for an .npz answer: base64 both ways through the event, bytes to the client.
        buf = io.BytesIO()
        np.savez(buf, x=x)
        status, headers, body = _post(agent, buf.getvalue(), NPZ, accept=NPZ)
        assert status == 200 and headers["content-type"] == NPZ
        assert headers[HEADER_SERVED_BY] == "cloud" and headers[HEADER_VERSION] == "l1"
        np.testing.assert_allclose(
            decode_npz(body)["y"], run_onnx(onnx_bytes, x), rtol=1e-5, atol=1e-6
        )
        # No local model: the function answers everything, its 4xx relayed as it said it.
        agent.active.swap(None)
        status, headers, body = _post(agent, _json(np.ones((1, 2), np.float32)))
        assert (
            status == 422
            and headers[HEADER_SERVED_BY] == "cloud"
            and json.loads(body)["input"] == "x"
        )
        status, headers, body = _post(agent, _json(x[:1]))
        assert status == 200 and json.loads(body)["fallback_reason"] == "no_model"
    assert httpd.calls == 4
    assert (
        opener.opened == [str(Path(opener.opened[0]))] and len(opener.opened) == 1
    )  # one cold start


def test_a_device_signs_sigv4_for_a_function_url_behind_iam(
    lambda_cloud: tuple[str, Path, bytes, CountingOpener, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--url-auth iam: the function trusts IAM (BENTOEDGE_AUTH=iam), the URL checks SigV4.
    A device with the right credentials is answered by the function; one with a wrong secret
    is refused at the URL (the function never runs) and the device still answers what it can."""
    pytest.importorskip("botocore")
    url, _, onnx_bytes, _, httpd = lambda_cloud
    httpd.iam_keys = {"AKIADEVICE7": "s3cr3t-device-7"}
    httpd.lambda_handler._env["BENTOEDGE_AUTH"] = "iam"
    keyring = Keyring().add_kek(LocalKeys(DATA).kek())
    edge_model = load_edge_model(sealed("tiny"), keyring, artifact_id="edge-fp32")
    x = np.random.default_rng(7).normal(size=(3, 4)).astype(np.float32)
    config = dataclasses.replace(agent_config(cloud=url, timeout=10.0, max_batch=2), cloud_aws="lambda:us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIADEVICE7")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-device-7")
    with AgentServer(config, ActiveModel(edge_model)) as agent:
        status, headers, body = _post(agent, _json(x))  # over the batch limit: forwarded, signed
        doc = json.loads(body)
        assert status == 200 and headers[HEADER_SERVED_BY] == "cloud", doc
        np.testing.assert_allclose(doc["outputs"]["y"], run_onnx(onnx_bytes, x), rtol=1e-5, atol=1e-6)
        buf = io.BytesIO()
        np.savez(buf, x=x)
        status, headers, body = _post(agent, buf.getvalue(), NPZ, accept=NPZ)  # the binary body is signed too
        assert status == 200 and headers[HEADER_SERVED_BY] == "cloud"
    assert httpd.calls == 2 and httpd.refused == 0

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "a-guess")  # a device that does not hold the secret
    with AgentServer(config, ActiveModel(edge_model)) as agent:
        status, headers, body = _post(agent, _json(x))
        # AWS's 403 is no answer of ours: the device serves the batch itself and says why.
        doc = json.loads(body)
        assert status == 200 and doc["served_by"] == "edge" and "cloud_bad_answer" in doc["degraded"], doc
        status, headers, body = _post(agent, _json(x[:2]))
        assert status == 200 and headers[HEADER_SERVED_BY] == "edge"
    assert httpd.calls == 2 and httpd.refused == 1
    # And an unsigned request straight to the URL gets nowhere near the function either.
    conn = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=10)
    conn.request("POST", "/predict", body=_json(x), headers={"Content-Type": JSON})
    assert conn.getresponse().status == 403
    conn.close()
    assert httpd.calls == 2
