"""The shared request contract: every malformed request is a RequestError naming what is wrong."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bentoedge.bentos import api
from bentoedge.bentos.errors import RequestError, UnavailableError
from bentoedge.bentos.manifest import Signature, TensorSpec

SIG = Signature(
    inputs=(TensorSpec("x", "float32", (None, 4)), TensorSpec("ids", "int32", (None, 2))),
    outputs=(TensorSpec("y", "float32", (None, 3)),),
)


def body(**inputs: object) -> bytes:
    return json.dumps({"inputs": inputs}).encode()


def good() -> dict[str, object]:
    return {"x": [[0.0, 1.0, 2.0, 3.0]], "ids": [[1, 2]]}


def test_valid_json_request_gives_typed_contiguous_arrays() -> None:
    arrays = api.parse_request(body(**good()), "application/json", SIG)
    assert arrays["x"].dtype == np.float32 and arrays["x"].shape == (1, 4)
    assert arrays["ids"].dtype == np.int32 and arrays["ids"].flags["C_CONTIGUOUS"]


def test_npz_request_is_equivalent_to_json() -> None:
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((2, 4), np.float32), ids=np.ones((2, 2), np.int64))
    arrays = api.parse_request(buf.getvalue(), "application/x-npz", SIG)
    assert arrays["ids"].dtype == np.int32 and arrays["x"].shape == (2, 4)


@pytest.mark.parametrize(
    ("payload", "ctype", "status", "input_name", "fragment"),
    [
        (b"", "application/json", 400, None, "empty"),
        (b"{not json", "application/json", 400, None, "not valid JSON"),
        (b"[1, 2]", "application/json", 400, None, '"inputs"'),
        (body(x=[[0, 1, 2, 3]]), "application/json", 400, "ids", "missing"),
        (body(**good(), extra=[1]), "application/json", 400, "extra", "unknown input"),
        (body(x=[[0, 1, 2]], ids=[[1, 2]]), "application/json", 422, "x", "expected float32[?, 4]"),
        (body(x=[0, 1, 2, 3], ids=[[1, 2]]), "application/json", 422, "x", "shape"),
        (body(x=[[0, 1], [2]], ids=[[1, 2]]), "application/json", 422, "x", "rectangular"),
        (body(x=[["a", "b", "c", "d"]], ids=[[1, 2]]), "application/json", 422, "x", "numbers"),
        (body(x=[[0, 1, 2, 3]], ids=[[1.5, 2]]), "application/json", 422, "ids", "integers"),
        (body(x=[[0, 1, 2, 3]], ids=[[1, 2**40]]), "application/json", 422, "ids", "outside int32"),
        (b'{"inputs": {"x": [[NaN, 1, 2, 3]], "ids": [[1, 2]]}}', "application/json", 422, "x", "NaN"),
        (body(x=[[0, 1, 2, 3], [4, 5, 6, 7]], ids=[[1, 2]]), "application/json", 422, None, "batch size"),
        (body(x=[], ids=[]), "application/json", 422, "x", "shape"),
        (body(**good()), "text/plain", 415, None, "unsupported content type"),
        (b"PK\x03\x04garbage", "application/x-npz", 400, None, ".npz"),
    ],
)
def test_bad_requests_are_refused_with_the_reason(payload: bytes, ctype: str, status: int,
                                                  input_name: str | None, fragment: str) -> None:
    with pytest.raises(RequestError) as info:
        api.parse_request(payload, ctype, SIG)
    err = info.value
    assert err.status == status
    assert err.input_name == input_name
    assert fragment in err.message
    assert err.to_body()["error"] == err.message


def test_deep_json_and_npz_bombs_are_refused() -> None:
    deep = b'{"inputs": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    with pytest.raises(RequestError, match="nests JSON too deeply"):
        api.parse_request(deep, "application/json", SIG)
    buf = io.BytesIO()
    np.savez_compressed(buf, x=np.zeros((1 << 20, 4), np.float32), ids=np.zeros((1, 2), np.int32))
    assert len(buf.getvalue()) < 100_000  # 16 MiB of zeros compress a thousandfold
    with pytest.raises(RequestError) as info:
        api.parse_request(buf.getvalue(), "application/x-npz", SIG, max_payload=1 << 20)
    assert info.value.status == 413 and "expands" in info.value.message


def test_values_beyond_the_dtype_and_odd_dtypes_are_refused() -> None:
    with pytest.raises(RequestError, match="outside float32"):
        api.parse_request(body(x=[[1e300, 0, 0, 0]], ids=[[1, 2]]), "application/json", SIG)
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((1, 4), np.complex64), ids=np.ones((1, 2), np.int32))
    with pytest.raises(RequestError, match="rectangular array of numbers"):
        api.parse_request(buf.getvalue(), "application/x-npz", SIG)


def test_oversized_payload_is_413_before_parsing() -> None:
    with pytest.raises(RequestError) as info:
        api.parse_request(b"x" * 101, "application/json", SIG, max_payload=100)
    assert info.value.status == 413


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512), st.sampled_from(["application/json", "application/x-npz", None]))
def test_arbitrary_bytes_never_escape_as_anything_but_request_error(data: bytes, ctype: str | None) -> None:
    try:
        arrays = api.parse_request(data, ctype, SIG)
    except RequestError as err:
        assert 400 <= err.status < 500
    else:
        assert set(arrays) == {"x", "ids"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["x", "ids", "other"]), json_values, max_size=3))
def test_arbitrary_json_inputs_are_validated_or_refused(inputs: dict[str, object]) -> None:
    try:
        payload = json.dumps({"inputs": inputs}).encode()
    except ValueError:
        return
    try:
        arrays = api.parse_request(payload, "application/json", SIG)
    except RequestError as err:
        assert 400 <= err.status < 500
    else:
        assert arrays["x"].shape[1:] == (4,) and arrays["ids"].shape[1:] == (2,)
        assert arrays["x"].shape[0] == arrays["ids"].shape[0] > 0


def test_response_and_npz_round_trip() -> None:
    out = {"y": np.arange(6, dtype=np.float32).reshape(2, 3)}
    doc = api.response_json(out, "digits", "v1", "edge", fallback_reason=None)
    assert doc == {"outputs": {"y": [[0, 1, 2], [3, 4, 5]]}, "model": {"name": "digits", "version": "v1"},
                   "served_by": "edge"}
    nan = api.response_json({"y": np.array([[1.0, np.nan, np.inf]], np.float32)}, "d", "v1", "cloud")
    assert nan["outputs"]["y"] == [[1.0, None, None]]
    json.dumps(nan, allow_nan=False)  # valid JSON, not the NaN token
    back = api.decode_npz(api.encode_npz(out))
    np.testing.assert_array_equal(back["y"], out["y"])


# -- framing, answers and the answer check: what both servers and the cloud client share -----

@pytest.mark.parametrize(("method", "length", "encoding", "want"), [
    ("POST", "10", None, 10), ("POST", "0", "identity", 0), ("GET", None, None, 0),
    ("POST", None, None, 411), ("POST", "10", "chunked", 411), ("GET", None, "chunked", 411),
    ("POST", "ten", None, 400), ("POST", "-1", None, 400), ("POST", "101", None, 413), ("GET", "101", None, 413),
])
def test_declared_length_refuses_before_reading(method: str, length: str | None, encoding: str | None,
                                                want: int) -> None:
    if want < 400:
        assert api.declared_length(method, length, encoding, 100) == want
        return
    with pytest.raises(RequestError) as info:
        api.declared_length(method, length, encoding, 100)
    assert info.value.status == want


def test_the_limit_is_said_one_way() -> None:
    with pytest.raises(RequestError) as declared:
        api.declared_length("POST", "101", None, 100)
    with pytest.raises(RequestError) as read:
        api.parse_request(b"x" * 101, "application/json", SIG, max_payload=100)
    assert declared.value.message == read.value.message == "the request body is 101 bytes; the limit is 100"
    api.check_size(100, 100)  # at the limit is fine


def test_prediction_reply_negotiates_and_names_the_placement() -> None:
    out = {"y": np.ones((1, 3), np.float32)}
    as_json = api.prediction_reply(out, "tiny", "v2", "cloud", "*/*")
    assert as_json.status == 200 and as_json.content_type == api.JSON
    assert as_json.headers == {api.HEADER_SERVED_BY: "cloud", api.HEADER_VERSION: "v2", api.HEADER_MODEL: "tiny"}
    assert api.read_answer(200, as_json.body, as_json.content_type) == api.response_json(out, "tiny", "v2", "cloud")
    as_npz = api.prediction_reply(out, "tiny", "v2", "edge", "application/x-npz, application/json;q=0.5")
    assert as_npz.content_type == api.NPZ and as_npz.headers[api.HEADER_SERVED_BY] == "edge"
    assert api.read_answer(200, as_npz.body, "application/x-npz") is None
    assert api.placement_headers("cloud", "v2", "", "batch_limit") == {
        api.HEADER_SERVED_BY: "cloud", api.HEADER_VERSION: "v2", api.HEADER_REASON: "batch_limit"}


def test_error_replies() -> None:
    bad = api.error_reply(RequestError("input 'x' is wrong", input_name="x", status=422))
    assert bad.status == 422 and json.loads(bad.body) == {"error": "input 'x' is wrong", "input": "x"}
    assert "Retry-After" not in bad.headers
    busy = api.error_reply(UnavailableError("busy", "overloaded"))
    assert busy.status == 503 and busy.headers["Retry-After"] == "1"
    assert json.loads(busy.body) == {"error": "busy", "reason": "overloaded"}
    wrong = api.method_not_allowed("/predict", "POST")
    assert wrong.status == 405 and wrong.headers == {"Allow": "POST"}
    assert json.loads(wrong.body)["error"].startswith("/predict takes POST")
    assert api.not_found("/x").status == 404


@pytest.mark.parametrize(("status", "body", "ctype"), [
    (200, b"\x00\xffnot json", "application/json"),
    (200, b"[1]", "application/json"),
    (200, b'{"model": {}}', "application/json"),
    (200, b"PK not an archive", "application/x-npz"),
    (422, b'{"input": "x"}', "application/json"),
    (503, b"Service Unavailable", "text/plain"),
])
def test_answers_without_the_contracts_shape_are_refused(status: int, body: bytes, ctype: str) -> None:
    with pytest.raises(api.AnswerError):
        api.read_answer(status, body, ctype)


def test_one_openapi_text_for_both_servers() -> None:
    from bentoedge.bentos.openapi import device_document, prediction_paths

    device = device_document(SIG, "1.0")["paths"]
    cloud = prediction_paths(None, ("cloud",))
    for path in ("/predict", "/invocations"):
        assert path in device and path in cloud
        responses = device[path]["post"]["responses"]
        assert {"400", "401", "403", "411", "413", "415", "422", "503"} <= set(responses)
        assert api.HEADER_REASON in responses["200"]["headers"]
    schema = device["/predict"]["post"]["requestBody"]["content"][api.JSON]["schema"]["properties"]["inputs"]
    assert schema["required"] == ["ids", "x"] and schema["properties"]["x"]["description"] == "float32[?, 4]"
    enum = cloud["/predict"]["post"]["responses"]["200"]["content"][api.JSON]["schema"]["properties"]["served_by"]
    assert enum["enum"] == ["cloud"]


def test_openapi_says_how_integer_io_is_quantized() -> None:
    from bentoedge.bentos.manifest import Quantization, Signature, TensorSpec
    from bentoedge.bentos.openapi import device_document

    q = Quantization("int8", 0.1, -128)
    sig = Signature((TensorSpec("audio", "float32", (None, 3, 40), q),), (TensorSpec("score", "float32", (None, 1)),))
    op = device_document(sig, "0")["paths"]["/predict"]["post"]
    text = json.dumps(op)
    assert "int8 (scale 0.1, zero point -128)" in text and "float32" in text
    assert "score" in json.dumps(op["responses"]["200"])


FLOATS = Signature(inputs=(TensorSpec("x", "float32", (None, None, 3)), TensorSpec("h", "float16", (2,))),
                   outputs=(TensorSpec("y", "float32", (None,)),))
leaf = (st.booleans() | st.integers(-(2**53), 2**53) | st.integers(-(2**70), 2**70)
        | st.floats(width=64, allow_nan=False) | st.floats(width=32, allow_nan=False))


@st.composite
def nearly_rectangular(draw: st.DrawFn) -> object:
    """A rectangular nested list of numbers, sometimes spoiled in one place by any JSON value."""
    shape = draw(st.lists(st.integers(1, 3), min_size=1, max_size=4))
    value = np.asarray(draw(st.lists(leaf, min_size=math.prod(shape), max_size=math.prod(shape))),
                       dtype=object).reshape(shape).tolist()
    if draw(st.booleans()):
        spot: list[object] = value
        for _ in range(draw(st.integers(0, len(shape) - 1))):
            spot = spot[draw(st.integers(0, len(spot) - 1))]  # type: ignore[assignment]
        i = draw(st.integers(0, len(spot)))
        spoil = draw(json_values)
        if i == len(spot):
            spot.append(spoil)
        else:
            spot[i] = spoil
    return value


def _outcome(fn: Callable[[], dict[str, np.ndarray]]) -> object:
    try:
        return {k: (v.dtype, v.shape, v.tobytes()) for k, v in fn().items()}
    except RequestError as err:
        return err.status, str(err)


@settings(max_examples=400, deadline=None)
@given(x=nearly_rectangular(), h=nearly_rectangular() | json_values)
def test_the_fast_json_path_answers_exactly_as_numpy_would(x: object, h: object) -> None:
    # The fast path (np.fromiter over checked lists) against validate_inputs on the parsed
    # document, which converts with np.asarray: the same arrays, or the same refusal.
    try:
        payload = json.dumps({"inputs": {"x": x, "h": h}}).encode()
    except ValueError:
        return
    parsed = json.loads(payload)["inputs"]
    assert _outcome(lambda: api.parse_request(payload, "application/json", FLOATS)) == \
        _outcome(lambda: api.validate_inputs(parsed, FLOATS))


@pytest.mark.parametrize("big", [-(2**63) - 1, 2**64, -(2**70), 10**30])
def test_an_integer_past_64_bits_is_never_rounded_into_range(big: int) -> None:
    # orjson reads such an integer as the nearest double: for -2**63 - 1 that is -2**63, a
    # valid int64.  The standard parser keeps it exact and numpy refuses it; so must we.
    ints = Signature(inputs=(TensorSpec("n", "int64", (None,)),), outputs=(TensorSpec("y", "float32", (None,)),))
    payload = json.dumps({"inputs": {"n": [1, big]}}).encode()
    with pytest.raises(RequestError) as err:
        api.parse_request(payload, "application/json", ints)
    assert err.value.status == 422
    for x in ([[[1.0, 2.0, big]]], [[[big, big, big]]]):
        payload = json.dumps({"inputs": {"x": x, "h": big}}).encode()
        assert _outcome(lambda p=payload: api.parse_request(p, "application/json", FLOATS)) == \
            _outcome(lambda p=payload: api.validate_inputs(json.loads(p)["inputs"], FLOATS))


def test_the_fast_json_path_takes_a_rectangular_image_and_steps_aside_for_anything_else() -> None:
    image = np.random.default_rng(0).random((1, 96, 96, 3)).tolist()
    arr = api.rectangular_numbers(image, 4)
    assert arr is not None and arr.shape == (1, 96, 96, 3) and np.array_equal(arr, np.asarray(image))
    ragged = [[1.0, 2.0], [3.0, 4.0, 5.0], [6.0]]  # six numbers, as a 3x2 would have
    assert api.rectangular_numbers(ragged, 2) is None
    assert api.rectangular_numbers([[1.0, [2.0]]], 2) is None  # a list where a number belongs
    assert api.rectangular_numbers([[1.0, 2.0]], 3) is None  # shallower than the signature
    assert api.rectangular_numbers([[[1.0]]], 2) is None  # deeper
    assert api.rectangular_numbers([[], []], 2) is None  # an empty dimension
    # A string or null in the body sends the request the slow way, which refuses it by name.
    for bad in ('"1.5"', "null"):
        payload = b'{"inputs": {"x": [[[0.5, 1.0, ' + bad.encode() + b']]], "h": [1, 2]}}'
        with pytest.raises(RequestError, match="'x' must be a rectangular array of numbers"):
            api.parse_request(payload, "application/json", FLOATS)
