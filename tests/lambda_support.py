"""What a Lambda function URL does with an HTTP request, for tests that call the handler in-process.

``function_url_event`` builds the event AWS delivers for one HTTP request (payload format
2.0: headers in lower case, the query string apart, a text body for JSON and text media
types and a base64 one otherwise), and ``http_answer`` turns the handler's answer back into
the HTTP status, headers and body AWS sends the client.  The contract table
(tests/conformance/test_contract_lambda.py) and the fuzzer (test_schemathesis.py) both
reach ``cloud.aws_lambda``'s handler through these two, so the handler is tested through
one model of AWS, not one per test.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from bentoedge.bentos.api import JSON, media_type

#: Media types a function URL hands over as text; AWS base64-encodes every other body.
TEXT_TYPES = (JSON, "text/json", "text/csv", "text/plain")
HOST = "contract.lambda-url.eu-west-1.on.aws"


def function_url_event(method: str, target: str, headers: Mapping[str, str], body: bytes | None,
                       request_id: str = "test") -> dict[str, Any]:
    """The event AWS builds from an HTTP request (``body`` None: the request carried none).

    ``target`` is the request target, a path with an optional ``?query``; ``headers`` are the
    ones the client sent (their names in any case: AWS lowers them).
    """
    path, _, query = target.partition("?")
    sent = {"host": HOST, "x-forwarded-proto": "https", **{k.lower(): v for k, v in headers.items()}}
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": sent,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "contract",
            "domainName": HOST,
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.9",
                "userAgent": sent.get("user-agent", "test"),
            },
            "requestId": request_id,
            "routeKey": "$default",
            "stage": "$default",
        },
        "isBase64Encoded": False,
    }
    if body is not None:
        text = media_type(sent.get("content-type")) in TEXT_TYPES
        try:
            event["body"] = body.decode("utf-8") if text else base64.b64encode(body).decode("ascii")
        except UnicodeDecodeError:  # not text after all: AWS sends such bytes base64-encoded
            text = False
            event["body"] = base64.b64encode(body).decode("ascii")
        event["isBase64Encoded"] = not text
    return event


def http_answer(resp: Mapping[str, Any]) -> tuple[int, dict[str, str], bytes]:
    """The HTTP answer AWS makes of the handler's response (header names in lower case)."""
    assert set(resp) == {"statusCode", "headers", "body", "isBase64Encoded"}
    body = (
        base64.b64decode(resp["body"])
        if resp["isBase64Encoded"]
        else str(resp["body"]).encode("utf-8")
    )
    return (
        int(resp["statusCode"]),
        {str(k).lower(): str(v) for k, v in resp["headers"].items()},
        body,
    )
