"""The RFC 9421 subset (bentos.httpsig) and the authentication decision (bentos.auth), pure."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from bentoedge.bentos import auth, httpsig
from bentoedge.bentos.errors import FormatError, SignatureError

NOW = 1_800_000_000.0
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
RAW = auth.identity_raw(KEY.public_key())
KID = auth.identity_id(RAW)
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
OTHER_KID = auth.identity_id(auth.identity_raw(OTHER.public_key()))
BODY = b'{"inputs": {"x": [[1.0]]}}'


def _signed(key: Ed25519PrivateKey = KEY, method: str = "POST", path: str = "/predict", body: bytes = BODY,
            created: float = NOW, nonce: str = "n" * 24, kid: str | None = None) -> dict[str, str]:
    kid = kid or auth.identity_id(auth.identity_raw(key.public_key()))
    return {k.lower(): v for k, v in httpsig.sign(key, kid, method, path, body, int(created), nonce).items()}


def _decide(headers: dict[str, str], body: bytes = BODY, path: str = "/predict", method: str = "POST",
            devices: dict[str, auth.Device] | None = None, keys: dict[str, auth.ApiKey] | None = None,
            nonces: auth.NonceCache | None = None, now: float = NOW) -> auth.Verdict:
    devices = {KID: auth.Device(RAW)} if devices is None else devices
    return auth.authenticate(auth.Request(method, path, headers, body), devices, keys or {},
                             nonces if nonces is not None else auth.NonceCache(), now)


# ---- RFC 9421 itself -----------------------------------------------------------------------------

RFC_KEY = b"""-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF
-----END PRIVATE KEY-----
"""


def test_the_signature_base_and_signature_of_rfc_9421_appendix_b_2_6() -> None:
    comps = ("date", "@method", "@path", "@authority", "content-type", "content-length")
    values = {"date": "Tue, 20 Apr 2021 02:07:55 GMT", "@method": "POST", "@path": "/foo",
              "@authority": "example.com", "content-type": "application/json", "content-length": "18"}
    params = ('("date" "@method" "@path" "@authority" "content-type" "content-length")'
              ';created=1618884473;keyid="test-key-ed25519"')
    base = httpsig.signature_base(comps, values, params)
    assert base.endswith(b'"@signature-params": ' + params.encode())
    assert base.count(b"\n") == 6
    key = serialization.load_pem_private_key(RFC_KEY, None)
    assert isinstance(key, Ed25519PrivateKey)
    assert base64.b64encode(key.sign(base)).decode() == (
        "wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==")


def test_content_digest_is_rfc_9530() -> None:
    # RFC 9530 section 2's example: {"hello": "world"}\n
    assert httpsig.content_digest(b'{"hello": "world"}\n') == \
        "sha-256=:RK/0qy18MlBSVnWgjwz6lZEWjP/lF5HF9bvEF8FabDg=:"
    assert httpsig.digest_matches(httpsig.content_digest(b"x"), b"x")
    assert not httpsig.digest_matches(httpsig.content_digest(b"x"), b"y")
    assert not httpsig.digest_matches(None, b"")
    assert not httpsig.digest_matches("sha-512=:AAAA:", b"")


def test_a_signed_request_verifies_and_its_parts_are_as_sent() -> None:
    h = _signed()
    p = httpsig.parse(h["signature-input"], h["signature"])
    assert (p.label, p.components, p.created, p.nonce, p.keyid) == ("sig1", httpsig.COMPONENTS, int(NOW), "n" * 24, KID)
    httpsig.verify(p, RAW, "POST", "/predict", h["content-digest"])


@pytest.mark.parametrize("method,path,digest", [
    ("GET", "/predict", None), ("POST", "/invocations", None), ("POST", "/predict", httpsig.content_digest(b"other")),
])
def test_any_covered_component_changed_fails(method: str, path: str, digest: str | None) -> None:
    h = _signed()
    p = httpsig.parse(h["signature-input"], h["signature"])
    with pytest.raises(SignatureError):
        httpsig.verify(p, RAW, method, path, digest or h["content-digest"])


SIG = "sig1=:" + base64.b64encode(b"\0" * 64).decode() + ":"
GOOD = '("@method" "@path" "content-digest");created=1;nonce="abcdefghijklmnopq";keyid="k"'


@pytest.mark.parametrize("sig_input,sig,why", [
    ("", SIG, "not one RFC 9421"),
    (GOOD + ', sig2=("@method");created=1', SIG, "not one RFC 9421"),
    (GOOD.replace("sig1", ""), SIG, "not one RFC 9421"),
    ("sig1=" + GOOD, SIG.replace("sig1", "sig2"), "different signatures"),
    ('sig1=("@method" "@path");created=1;nonce="abcdefghijklmnop";keyid="k"', SIG, "exactly"),
    ('sig1=("@method" "@path" "content-digest" "@query");created=1;nonce="a";keyid="k"', SIG, "exactly"),
    ('sig1=("@method" "@method" "content-digest");created=1;nonce="a";keyid="k"', SIG, "exactly"),
    ("sig1=" + GOOD + ";created=2", SIG, "twice"),
    ("sig1=" + GOOD.replace("created=1", 'created="1"'), SIG, "wrong type"),
    ("sig1=" + GOOD.replace('keyid="k"', "keyid=7"), SIG, "wrong type"),
    ("sig1=" + GOOD + ';foo="x"', SIG, "not one this service reads"),
    ("sig1=" + GOOD.replace(';keyid="k"', ""), SIG, "lacks keyid"),
    ("sig1=" + GOOD.replace(';nonce="abcdefghijklmnopq"', ""), SIG, "lacks nonce"),
    ("sig1=" + GOOD.replace("created=1;", ""), SIG, "lacks created"),
    ("sig1=" + GOOD + ';alg="rsa-pss-sha512"', SIG, "algorithm"),
    ("sig1=" + GOOD.replace('"k"', '"a\\"b"'), SIG, "not one RFC 9421"),
    ("sig1=" + GOOD, "sig1=:!!!!:", "not one RFC 9421"),
    ("sig1=" + GOOD, "sig1=:AAAA:", "64 bytes"),
    ("sig1=" + GOOD + ";x" * 2000, SIG, "too long"),
])
def test_headers_outside_the_subset_are_refused(sig_input: str, sig: str, why: str) -> None:
    with pytest.raises(SignatureError, match=why):
        httpsig.parse(sig_input, sig)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.text(max_size=120))
def test_parse_never_raises_anything_but_signature_error(sig_input: str, sig: str) -> None:
    try:
        httpsig.parse(sig_input, sig)
    except SignatureError:
        pass


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=512), st.sampled_from(["/predict", "/invocations", "/a%20b"]),
       st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=16, max_size=64))
def test_sign_then_decide_lets_in_any_body_path_and_nonce(body: bytes, path: str, nonce: str) -> None:
    assert _decide(_signed(body=body, path=path, nonce=nonce), body=body, path=path).ok


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=256), st.integers(0, 255), st.integers(0, 7))
def test_any_flipped_body_bit_is_refused(body: bytes, at: int, bit: int) -> None:
    h = _signed(body=body)
    bad = bytearray(body)
    bad[at % len(body)] ^= 1 << bit
    v = _decide(h, body=bytes(bad))
    assert (v.status, "Content-Digest" in v.reason) == (401, True)


# ---- the decision -------------------------------------------------------------------------------

def _forge_digest(h: dict[str, str], body: bytes) -> dict[str, str]:
    return {**h, "content-digest": httpsig.content_digest(body)}


@pytest.mark.parametrize("case,headers,status,why", [
    ("no credentials", {}, 401, "needs credentials"),
    ("garbage signature", {"signature-input": "x", "signature": "y"}, 401, "not one RFC 9421"),
    ("unknown device", _signed(OTHER), 403, "not enrolled"),
    ("stale created", _signed(created=NOW - auth.DEFAULT_WINDOW_S - 1), 401, "window"),
    ("created in the future", _signed(created=NOW + auth.DEFAULT_SKEW_S + 1), 401, "future"),
    ("short nonce", _signed(nonce="short"), 401, "nonce"),
    ("body swapped, digest recomputed", _forge_digest(_signed(), b"{}"), 401, "does not verify"),
    ("no digest", {k: v for k, v in _signed().items() if k != "content-digest"}, 401, "Content-Digest"),
    ("keyid of another device", _signed(OTHER, kid=KID), 401, "does not verify"),
    ("empty api key", {"authorization": "Bearer  "}, 401, "empty"),
    ("unknown api key", {"authorization": "Bearer bek_nope"}, 403, "unknown API key"),
    ("unknown api key (x-api-key)", {"x-api-key": "bek_nope"}, 403, "unknown API key"),
])
def test_refusals(case: str, headers: dict[str, str], status: int, why: str) -> None:
    body = b"{}" if case.startswith("body swapped") else BODY
    v = _decide(headers, body=body)
    assert (v.status, why in v.reason, v.principal) == (status, True, ""), (case, v)


def test_an_edge_of_the_window_is_still_in() -> None:
    assert _decide(_signed(created=NOW - auth.DEFAULT_WINDOW_S)).ok
    assert _decide(_signed(created=NOW + auth.DEFAULT_SKEW_S)).ok


def test_a_revoked_device_is_refused_with_403() -> None:
    v = _decide(_signed(), devices={KID: auth.Device(RAW, revoked=True)})
    assert (v.status, "revoked" in v.reason) == (403, True)


def test_a_replay_within_the_window_is_refused_and_a_fresh_nonce_is_not() -> None:
    cache = auth.NonceCache()
    h = _signed()
    assert _decide(h, nonces=cache).principal == f"device:{KID}"
    again = _decide(h, nonces=cache, now=NOW + 10)
    assert (again.status, "replay" in again.reason) == (401, True)
    assert _decide(_signed(nonce="m" * 24), nonces=cache, now=NOW + 10).ok
    # The same nonce from another device is that device's own.
    assert _decide(_signed(OTHER, nonce="n" * 24), nonces=cache,
                   devices={KID: auth.Device(RAW), OTHER_KID: auth.Device(auth.identity_raw(OTHER.public_key()))}).ok


def test_a_failed_signature_does_not_burn_the_nonce() -> None:
    cache = auth.NonceCache()
    h = _signed()
    assert _decide(h, body=b"tampered", nonces=cache).status == 401
    assert _decide(h, nonces=cache).ok


def test_the_nonce_cache_forgets_after_the_window_and_is_bounded() -> None:
    cache = auth.NonceCache(max_entries=2)
    assert cache.add("k", "a", 10, 0) and cache.add("k", "b", 20, 0)
    assert not cache.add("k", "c", 30, 0)  # full: refused, not grown
    assert not cache.add("k", "a", 10, 5)
    assert cache.add("k", "c", 30, 11) and len(cache) == 2  # "a" expired


def test_api_keys_let_in_unless_revoked() -> None:
    key = auth.new_api_key()
    h = auth.api_key_hash(key)
    keys = {h: auth.ApiKey(auth.api_key_id(h), "app")}
    assert _decide({"authorization": f"Bearer {key}"}, keys=keys).principal == f"apikey:{auth.api_key_id(h)}"
    assert _decide({"x-api-key": key}, keys=keys).ok
    v = _decide({"authorization": f"bearer {key}"}, keys={h: auth.ApiKey("id", "app", revoked=True)})
    assert (v.status, "revoked" in v.reason) == (403, True)


def test_the_registry_document_round_trips_and_is_strict() -> None:
    devices = {KID: auth.Device(RAW), OTHER_KID: auth.Device(auth.identity_raw(OTHER.public_key()), True)}
    doc = auth.registry_document(devices)
    assert auth.parse_registry(doc) == devices
    assert b"dev-" not in doc
    for bad in (b"", b"[]", b'{"format": "x", "devices": {}}',
                b'{"format": "bentoedge.devices/1", "devices": {"k": {"ed25519": "00", "revoked": false}}}',
                doc.replace(b"false", b"0"), doc.replace(KID.encode(), OTHER_KID.encode(), 1)):
        with pytest.raises(FormatError):
            auth.parse_registry(bad)


def test_a_full_replay_cache_is_503_not_forgetting() -> None:
    cache = auth.NonceCache(max_entries=1)
    assert _decide(_signed(nonce="a" * 16), nonces=cache).ok
    v = _decide(_signed(nonce="b" * 16), nonces=cache)
    assert v.status == 503 and "retry" in v.reason
    # Once the first pair's window has passed there is room again.
    later = NOW + auth.DEFAULT_WINDOW_S + auth.DEFAULT_SKEW_S + 1
    assert _decide(_signed(nonce="b" * 16, created=later), nonces=cache, now=later).ok
