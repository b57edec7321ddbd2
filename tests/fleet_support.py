"""Building device reports for the fleet tests (and the fleet simulation's shape of them)."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bentoedge.bentos import fleet_report as rp
from bentoedge.bentos.drift import Bins, accumulate, empty


def make_report(device_id: str = "dev-1", seq: int = 1, sent_at: float = 1000.0, **kw: Any) -> rp.Report:
    inputs = kw.pop("inputs", None)
    if inputs is None:
        st = accumulate(empty(Bins(0.0, 1.0, 4)), [0.1, 0.2, 0.6, 0.9, float("nan")])
        inputs = {"x": rp.InputReport(st, 0.01)}
    defaults: dict[str, Any] = {
        "device_class": "pi4", "agent_version": "0.1.0", "model": "digits", "active": "v1", "previous": None,
        "active_since": 0.0, "uptime_s": 500.0, "health": rp.Health("passed", "8 golden samples", 900.0),
        "sync": rp.SyncResult("up_to_date", "", 990.0),
        "requests": rp.Requests(local=100, forwarded={"batch_limit": 3}, errors=0, p50_ms=1.5, p99_ms=4.0),
    }
    defaults.update(kw)
    return rp.Report(device_id=device_id, seq=seq, sent_at=sent_at, inputs=inputs, **defaults)


def signed(report: rp.Report, key: Ed25519PrivateKey) -> rp.SignedReport:
    return rp.open_envelope(rp.sign(report, key), key.public_key())
