"""The device report: what a device tells the cloud about itself, signed with its identity key.

A report is one JSON object (``Report.to_dict``), sent as canonical bytes (sorted keys, no
whitespace, UTF-8, no NaN) inside a signed envelope:

    {"format": "bentoedge.fleet-envelope/1", "alg": "ed25519", "device_id": ID,
     "payload": base64(report bytes), "signature": base64(Ed25519(DOMAIN + report bytes))}

The signature covers the exact bytes, so nothing is re-serialised before it is checked, and
the domain prefix keeps a report signature from passing for any other message the same key
signs.  ``device_id`` is outside the payload too, so the receiver can find the device's
public key before it trusts anything; ``open_envelope`` then requires both to agree.

Replays: every report carries the device's ``seq`` (strictly increasing across its reports,
kept on the device) and ``sent_at`` (Unix seconds).  ``is_newer`` is the store's rule (a
report not above the stored ``seq`` is a replay or late, and ignored), and ``check_fresh``
refuses one sent too far from the receiver's clock.

Parsing is strict (``Report.from_bytes``): exact JSON types, the device id rule, bounded
strings, counts and sizes, unknown fields refused; every way a report can be wrong is one
``FormatError`` naming the field.  A whole envelope is at most ``MAX_ENVELOPE_BYTES``.

Keys are parameters (cryptography's Ed25519 objects): the device identity key lives with
the agent and the enrolled-device registry with the cloud.  Pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bentoedge.bentos.channel_layout import valid_name
from bentoedge.bentos.drift import MAX_BINS, Bins, InputStats
from bentoedge.bentos.errors import FormatError, SignatureError
from bentoedge.bentos.manifest import canonical_json

FORMAT = "bentoedge.fleet-report/1"
ENVELOPE_FORMAT = "bentoedge.fleet-envelope/1"
#: Prefixed to the report bytes before signing: a report signature means nothing else.
DOMAIN = b"bentoedge/fleet-report/1\n"
#: The largest report payload and signed envelope accepted (a full report is a few KiB).
MAX_REPORT_BYTES = 48 << 10
MAX_ENVELOPE_BYTES = 64 << 10
#: Bounds on what one report lists.
MAX_INPUTS = 32
MAX_REASONS = 32
MAX_VERSIONS = 16
MAX_TEXT = 256
#: The rule for device ids (the channel's enroll rule): they become fleet store key segments.
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
#: A reason or input name, as the router and the manifest spell them.
LABEL_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:,-]{0,127}\Z")
HEALTH = ("passed", "failed", "none")
SYNC_OUTCOMES = ("updated", "up_to_date", "error", "refused", "rolled_back", "none")


@dataclass(frozen=True)
class Health:
    result: str = "none"  # passed | failed | none (not checked yet)
    detail: str = ""
    at: float | None = None  # when the check ran (Unix seconds)


@dataclass(frozen=True)
class SyncResult:
    outcome: str = "none"  # updated | up_to_date | error | refused | rolled_back | none
    cause: str = ""
    at: float | None = None


@dataclass(frozen=True)
class Requests:
    local: int = 0
    forwarded: Mapping[str, int] = field(default_factory=dict)  # by the router's reason
    errors: int = 0  # local model failures (500s)
    p50_ms: float | None = None
    p99_ms: float | None = None

    @property
    def total_forwarded(self) -> int:
        return sum(self.forwarded.values())

    @property
    def error_rate(self) -> float:
        return self.errors / self.local if self.local else 0.0

    @property
    def fallback_share(self) -> float:
        total = self.local + self.total_forwarded
        return self.total_forwarded / total if total else 0.0


@dataclass(frozen=True)
class InputReport:
    """One input's statistics as sent (``drift.InputStats``) and its drift score (PSI)."""

    stats: InputStats
    drift: float | None = None


@dataclass(frozen=True)
class Report:
    device_id: str
    seq: int
    sent_at: float
    device_class: str = "default"
    agent_version: str = "0"
    model: str = ""  # the followed model ("" when none yet)
    active: str | None = None  # active version
    previous: str | None = None
    active_since: float | None = None  # when the active version was swapped in
    uptime_s: float = 0.0
    health: Health = field(default_factory=Health)
    sync: SyncResult = field(default_factory=SyncResult)
    refused: tuple[str, ...] = ()  # versions on this device's failed list
    strikes: Mapping[str, int] = field(default_factory=dict)  # agent deaths during a version's health check
    requests: Requests = field(default_factory=Requests)
    inputs: Mapping[str, InputReport] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Construction checks, so a Report that exists is one from_dict would accept.
        _check_report(self)

    # ---- wire form ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "device_id": self.device_id, "seq": self.seq, "sent_at": self.sent_at,
            "device_class": self.device_class, "agent_version": self.agent_version, "model": self.model,
            "active": self.active, "previous": self.previous, "active_since": self.active_since,
            "uptime_s": self.uptime_s,
            "health": {"result": self.health.result, "detail": self.health.detail, "at": self.health.at},
            "sync": {"outcome": self.sync.outcome, "cause": self.sync.cause, "at": self.sync.at},
            "refused": list(self.refused), "strikes": dict(self.strikes),
            "requests": {"local": self.requests.local, "forwarded": dict(self.requests.forwarded),
                         "errors": self.requests.errors, "p50_ms": self.requests.p50_ms,
                         "p99_ms": self.requests.p99_ms},
            "inputs": {name: _input_dict(i) for name, i in self.inputs.items()},
        }

    def to_bytes(self) -> bytes:
        try:
            data = canonical_json(self.to_dict())
        except ValueError as exc:  # NaN or an infinity in a number field
            raise FormatError(f"report of {self.device_id} holds a number JSON cannot carry: {exc}") from None
        if len(data) > MAX_REPORT_BYTES:
            raise FormatError(f"report of {self.device_id} is {len(data)} bytes, over the {MAX_REPORT_BYTES} "
                              "byte bound: fewer inputs or bins")
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> Report:
        if len(data) > MAX_REPORT_BYTES:
            raise FormatError(f"report is {len(data)} bytes, over the {MAX_REPORT_BYTES} byte bound")
        try:
            doc = json.loads(data, parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            raise FormatError(f"report is not JSON: {exc}") from None
        report = cls.from_dict(doc)
        if report.to_bytes() != data:
            raise FormatError("report bytes are not canonical JSON (sorted keys, no whitespace)")
        return report

    @classmethod
    def from_dict(cls, doc: object) -> Report:
        d = _obj(doc, "report", {"format", "device_id", "seq", "sent_at", "device_class", "agent_version", "model",
                                 "active", "previous", "active_since", "uptime_s", "health", "sync", "refused",
                                 "strikes", "requests", "inputs"})
        if d["format"] != FORMAT:
            raise FormatError(f"report format {d['format']!r} is not {FORMAT}")
        h = _obj(d["health"], "health", {"result", "detail", "at"})
        s = _obj(d["sync"], "sync", {"outcome", "cause", "at"})
        r = _obj(d["requests"], "requests", {"local", "forwarded", "errors", "p50_ms", "p99_ms"})
        inputs = _obj(d["inputs"], "inputs", None)
        return cls(
            device_id=_str(d["device_id"], "device_id"), seq=_int(d["seq"], "seq"),
            sent_at=_num(d["sent_at"], "sent_at"), device_class=_str(d["device_class"], "device_class"),
            agent_version=_str(d["agent_version"], "agent_version"), model=_str(d["model"], "model"),
            active=_opt_str(d["active"], "active"), previous=_opt_str(d["previous"], "previous"),
            active_since=_opt_num(d["active_since"], "active_since"), uptime_s=_num(d["uptime_s"], "uptime_s"),
            health=Health(_str(h["result"], "health.result"), _str(h["detail"], "health.detail"),
                          _opt_num(h["at"], "health.at")),
            sync=SyncResult(_str(s["outcome"], "sync.outcome"), _str(s["cause"], "sync.cause"),
                            _opt_num(s["at"], "sync.at")),
            refused=tuple(_str(v, "refused[]") for v in _list(d["refused"], "refused")),
            strikes={_str(k, "strikes"): _int(v, f"strikes.{k}") for k, v in _obj(d["strikes"], "strikes", None).items()},
            requests=Requests(
                local=_int(r["local"], "requests.local"),
                forwarded={_str(k, "requests.forwarded"): _int(v, f"requests.forwarded.{k}")
                           for k, v in _obj(r["forwarded"], "requests.forwarded", None).items()},
                errors=_int(r["errors"], "requests.errors"), p50_ms=_opt_num(r["p50_ms"], "requests.p50_ms"),
                p99_ms=_opt_num(r["p99_ms"], "requests.p99_ms")),
            inputs={_str(k, "inputs"): _input_from(v, f"inputs.{k}") for k, v in inputs.items()},
        )


# ---- signing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedReport:
    """A report whose signature checked out, with the exact envelope bytes (kept for audit)."""

    report: Report
    envelope: bytes


def sign(report: Report, key: Ed25519PrivateKey) -> bytes:
    """The signed envelope of ``report`` under the device's identity key."""
    payload = report.to_bytes()
    sig = key.sign(DOMAIN + payload)
    return canonical_json({"format": ENVELOPE_FORMAT, "alg": "ed25519", "device_id": report.device_id,
                           "payload": base64.b64encode(payload).decode(),
                           "signature": base64.b64encode(sig).decode()})


def envelope_device(envelope: bytes) -> str:
    """The device id an envelope claims, read before anything is trusted (to find its key)."""
    return _unpack(envelope)[0]


def open_envelope(envelope: bytes, key: Ed25519PublicKey) -> SignedReport:
    """Check the envelope's signature against the device's public key; return the report.

    ``SignatureError`` for a bad signature, ``FormatError`` for anything malformed.
    """
    device_id, payload, sig = _unpack(envelope)
    try:
        key.verify(sig, DOMAIN + payload)
    except InvalidSignature:
        raise SignatureError(f"report signature of {device_id} does not verify with its enrolled key") from None
    report = Report.from_bytes(payload)
    if report.device_id != device_id:
        raise FormatError(f"envelope names device {device_id} but the report is from {report.device_id}")
    return SignedReport(report, envelope)


def read_stored(envelope: bytes) -> SignedReport:
    """A stored envelope parsed without its key (the store checked it before writing it)."""
    device_id, payload, _ = _unpack(envelope)
    report = Report.from_bytes(payload)
    if report.device_id != device_id:
        raise FormatError(f"envelope names device {device_id} but the report is from {report.device_id}")
    return SignedReport(report, envelope)


def _unpack(envelope: bytes) -> tuple[str, bytes, bytes]:
    if len(envelope) > MAX_ENVELOPE_BYTES:
        raise FormatError(f"report envelope is {len(envelope)} bytes, over the {MAX_ENVELOPE_BYTES} byte bound")
    try:
        doc = json.loads(envelope, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"report envelope is not JSON: {exc}") from None
    d = _obj(doc, "envelope", {"format", "alg", "device_id", "payload", "signature"})
    if d["format"] != ENVELOPE_FORMAT or d["alg"] != "ed25519":
        raise FormatError(f"report envelope must be {ENVELOPE_FORMAT} with alg ed25519")
    device_id = _str(d["device_id"], "device_id")
    if not DEVICE_ID_RE.match(device_id):
        raise FormatError(f"device id {device_id!r}: letters, digits, '.', '_' or '-' (max 128)")
    try:
        payload = base64.b64decode(_str(d["payload"], "payload", MAX_REPORT_BYTES * 2), validate=True)
        sig = base64.b64decode(_str(d["signature"], "signature"), validate=True)
    except binascii.Error:
        raise FormatError("report envelope: payload and signature must be base64") from None
    if len(sig) != 64:
        raise FormatError("report envelope: an Ed25519 signature is 64 bytes")
    return device_id, payload, sig


# ---- replays ------------------------------------------------------------------------------


def is_newer(report: Report, stored: Report | None) -> bool:
    """Whether ``report`` may replace ``stored``: a higher ``seq`` (else a replay, or late)."""
    return stored is None or report.seq > stored.seq


def check_fresh(report: Report, now: float, max_skew_s: float = 24 * 3600.0) -> None:
    """Refuse (FormatError) a report sent more than ``max_skew_s`` away from ``now``."""
    if abs(report.sent_at - now) > max_skew_s:
        raise FormatError(f"report of {report.device_id} was sent at {report.sent_at:.0f}, "
                          f"{abs(report.sent_at - now):.0f} s from the receiver's clock (at most {max_skew_s:.0f})")


# ---- strict parsing helpers -----------------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _obj(value: object, where: str, keys: set[str] | None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FormatError(f"report field {where} must be an object")
    if keys is not None:
        missing, extra = keys - set(value), set(value) - keys
        if missing:
            raise FormatError(f"report field {where} lacks {', '.join(sorted(missing))}")
        if extra:
            raise FormatError(f"report field {where} has unknown fields {', '.join(sorted(extra))}")
    return value


def _list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise FormatError(f"report field {where} must be a list")
    return value


def _str(value: object, where: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise FormatError(f"report field {where} must be a string of at most {limit} characters")
    return value


def _opt_str(value: object, where: str) -> str | None:
    return None if value is None else _str(value, where)


def _int(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise FormatError(f"report field {where} must be a whole number >= 0")
    return value


def _num(value: object, where: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise FormatError(f"report field {where} must be a finite number")
    return value


def _opt_num(value: object, where: str) -> float | None:
    return None if value is None else _num(value, where)


def _input_dict(i: InputReport) -> dict[str, Any]:
    s = i.stats
    return {"count": s.count, "mean": s.mean, "std": s.std, "m2": s.m2, "min": s.min, "max": s.max,
            "nan": s.nan, "inf": s.inf,
            "bins": None if s.bins is None else {"lo": s.bins.lo, "hi": s.bins.hi, "n": s.bins.n},
            "histogram": list(s.histogram), "drift": i.drift}


def _input_from(value: object, where: str) -> InputReport:
    d = _obj(value, where, {"count", "mean", "std", "m2", "min", "max", "nan", "inf", "bins", "histogram", "drift"})
    bins = None
    if d["bins"] is not None:
        b = _obj(d["bins"], f"{where}.bins", {"lo", "hi", "n"})
        bins = Bins(_num(b["lo"], f"{where}.bins.lo"), _num(b["hi"], f"{where}.bins.hi"), _int(b["n"], f"{where}.bins.n"))
    stats = InputStats(count=_int(d["count"], f"{where}.count"), mean=_num(d["mean"], f"{where}.mean"),
                       m2=_num(d["m2"], f"{where}.m2"), min=_opt_num(d["min"], f"{where}.min"),
                       max=_opt_num(d["max"], f"{where}.max"), nan=_int(d["nan"], f"{where}.nan"),
                       inf=_int(d["inf"], f"{where}.inf"), bins=bins,
                       histogram=tuple(_int(c, f"{where}.histogram[]") for c in _list(d["histogram"], where)))
    _num(d["std"], f"{where}.std")  # derived from m2 and written for readers; checked, not trusted
    return InputReport(stats, _opt_num(d["drift"], f"{where}.drift"))


def _check_report(r: Report) -> None:
    if not isinstance(r.device_id, str) or not DEVICE_ID_RE.match(r.device_id):
        raise FormatError(f"device id {r.device_id!r}: letters, digits, '.', '_' or '-' (max 128)")
    if r.model and not valid_name(r.model):
        raise FormatError(f"report model {r.model!r} is not a valid model name")
    for name, v in (("active", r.active), ("previous", r.previous), *(("refused", x) for x in r.refused),
                    *(("strikes", x) for x in r.strikes)):
        if v is not None and not valid_name(v):
            raise FormatError(f"report field {name}: {v!r} is not a valid version")
    if r.health.result not in HEALTH:
        raise FormatError(f"report field health.result must be one of {', '.join(HEALTH)}")
    if r.sync.outcome not in SYNC_OUTCOMES:
        raise FormatError(f"report field sync.outcome must be one of {', '.join(SYNC_OUTCOMES)}")
    if len(r.refused) > MAX_VERSIONS or len(r.strikes) > MAX_VERSIONS:
        raise FormatError(f"report lists more than {MAX_VERSIONS} refused or struck versions")
    if len(r.requests.forwarded) > MAX_REASONS or not all(LABEL_RE.match(k) for k in r.requests.forwarded):
        raise FormatError(f"report field requests.forwarded: at most {MAX_REASONS} reasons, each a plain label")
    if len(r.inputs) > MAX_INPUTS or not all(LABEL_RE.match(k) for k in r.inputs):
        raise FormatError(f"report field inputs: at most {MAX_INPUTS} inputs, each a plain name")
    for text in (r.device_class, r.agent_version, r.health.detail, r.sync.cause):
        if not isinstance(text, str) or len(text) > MAX_TEXT:
            raise FormatError(f"report text fields are strings of at most {MAX_TEXT} characters")
    for name, i in r.inputs.items():
        s = i.stats
        size = s.bins.size if s.bins else 0
        if len(s.histogram) != size or (s.bins and s.bins.n > MAX_BINS):
            raise FormatError(f"report field inputs.{name}: the histogram must have one count per bin ({size})")
        if s.nan + s.inf > s.count or (s.bins and sum(s.histogram) != s.finite):
            raise FormatError(f"report field inputs.{name}: counts disagree (histogram, NaN and Inf vs count)")
