"""The signed device report: canonical bytes, strict parsing, size bounds, Ed25519 envelopes."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fleet_support import make_report

from bentoedge.bentos import fleet_report as rp
from bentoedge.bentos.drift import Bins, accumulate, empty
from bentoedge.bentos.errors import FormatError, SignatureError


def test_round_trip_is_byte_for_byte() -> None:
    r = make_report()
    data = r.to_bytes()
    assert rp.Report.from_bytes(data) == r
    assert data == json.dumps(json.loads(data), sort_keys=True, separators=(",", ":")).encode()
    assert r.requests.fallback_share == pytest.approx(3 / 103)
    assert r.inputs["x"].stats.nan_share == pytest.approx(0.2)


def test_sign_and_open() -> None:
    key = Ed25519PrivateKey.generate()
    r = make_report()
    env = rp.sign(r, key)
    assert rp.envelope_device(env) == "dev-1"
    assert rp.open_envelope(env, key.public_key()).report == r
    with pytest.raises(SignatureError, match="does not verify"):
        rp.open_envelope(env, Ed25519PrivateKey.generate().public_key())


def _tamper(env: bytes, **fields: object) -> bytes:
    doc = json.loads(env)
    doc.update(fields)
    return json.dumps(doc).encode()


def test_forged_envelopes_are_refused() -> None:
    key = Ed25519PrivateKey.generate()
    env = rp.sign(make_report(), key)
    other = make_report(device_id="dev-2", seq=9).to_bytes()
    forged = _tamper(env, payload=base64.b64encode(other).decode())
    with pytest.raises(SignatureError):
        rp.open_envelope(forged, key.public_key())
    # The right signature over another device's report: the ids disagree.
    sig = base64.b64encode(key.sign(rp.DOMAIN + other)).decode()
    with pytest.raises(FormatError, match="envelope names device dev-1"):
        rp.open_envelope(_tamper(env, payload=base64.b64encode(other).decode(), signature=sig), key.public_key())
    # A signature without the domain prefix is not a report signature.
    bare = base64.b64encode(key.sign(make_report().to_bytes())).decode()
    with pytest.raises(SignatureError):
        rp.open_envelope(_tamper(env, signature=bare), key.public_key())


@pytest.mark.parametrize("mangle, message", [
    (lambda d: d.pop("seq"), "lacks seq"),
    (lambda d: d.update(extra=1), "unknown fields extra"),
    (lambda d: d.update(seq=-1), "seq must be a whole number"),
    (lambda d: d.update(seq=True), "seq must be a whole number"),
    (lambda d: d.update(sent_at="now"), "sent_at must be a finite number"),
    (lambda d: d.update(device_id="../x"), "device id"),
    (lambda d: d.update(active="V1!"), "not a valid version"),
    (lambda d: d["health"].update(result="fine"), "health.result"),
    (lambda d: d["sync"].update(outcome="meh"), "sync.outcome"),
    (lambda d: d["requests"].update(forwarded={"a b": 1}), "requests.forwarded"),
    (lambda d: d["inputs"]["x"].update(histogram=[1, 2]), "one count per bin"),
    (lambda d: d["inputs"]["x"].update(nan=99), "counts disagree"),
    (lambda d: d.update(format="other/1"), "format"),
    (lambda d: d.update(refused="v1"), "refused must be a list"),
])
def test_malformed_reports_are_one_format_error(mangle: Callable[[dict[str, Any]], object], message: str) -> None:
    doc = make_report().to_dict()
    mangle(doc)
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(FormatError, match=message):
        rp.Report.from_bytes(data)


def test_not_json_non_canonical_nan_and_oversized() -> None:
    with pytest.raises(FormatError, match="not JSON"):
        rp.Report.from_bytes(b"{nope")
    with pytest.raises(FormatError, match="not JSON"):
        rp.Report.from_bytes(make_report().to_bytes().replace(b'"uptime_s":500.0', b'"uptime_s":NaN'))
    with pytest.raises(FormatError, match="canonical"):
        rp.Report.from_bytes(json.dumps(make_report().to_dict(), indent=1).encode())
    with pytest.raises(FormatError, match="byte bound"):
        rp.Report.from_bytes(b" " * (rp.MAX_REPORT_BYTES + 1))
    with pytest.raises(FormatError, match="byte bound"):
        rp.envelope_device(b" " * (rp.MAX_ENVELOPE_BYTES + 1))
    with pytest.raises(FormatError, match="JSON cannot carry"):
        make_report(uptime_s=float("nan")).to_bytes()


def test_a_full_report_fits_the_bound() -> None:
    st = accumulate(empty(Bins(0.0, 1.0, 64)), [0.5] * 10)
    inputs = {f"input_{i}": rp.InputReport(st, 0.1) for i in range(rp.MAX_INPUTS)}
    forwarded = {f"reason_{i}": 10**9 for i in range(rp.MAX_REASONS)}
    r = make_report(inputs=inputs, requests=rp.Requests(local=10**12, forwarded=forwarded, errors=5),
                    health=rp.Health("failed", "x" * rp.MAX_TEXT), refused=tuple(f"v{i}" for i in range(16)))
    assert len(r.to_bytes()) <= rp.MAX_REPORT_BYTES
    with pytest.raises(FormatError, match="at most 32 inputs"):
        make_report(inputs={f"i{i}": rp.InputReport(st) for i in range(33)})


def test_replays_and_freshness() -> None:
    old, new = make_report(seq=4), make_report(seq=5)
    assert rp.is_newer(new, old) and rp.is_newer(old, None)
    assert not rp.is_newer(old, new) and not rp.is_newer(new, new)
    rp.check_fresh(new, now=1000.0 + 60)
    with pytest.raises(FormatError, match="from the receiver's clock"):
        rp.check_fresh(new, now=1000.0 + 2 * 24 * 3600)
