"""The fleet store on a folder and on S3 (a real moto_server): newest wins, history bounded,
bad or replayed reports never overwrite good ones, and a crash mid-write loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fleet_support import make_report, signed

from bentoedge.bentos import fleet_report as rp
from bentoedge.bentos.errors import FormatError, UsageError
from bentoedge.cloud.channel.storage import FolderStorage
from bentoedge.cloud.fleet.store import FleetStore, open_fleet_store

KEY = Ed25519PrivateKey.generate()
ROOT = Path(__file__).resolve().parents[3]


def _exercise(store: FleetStore) -> None:
    assert store.latest("dev-1") is None and store.device_ids() == []
    for seq in range(1, 8):
        assert store.put_report(signed(make_report(seq=seq, sent_at=1000.0 + seq), KEY))
    assert store.put_report(signed(make_report("dev-2", seq=1, model="other"), KEY))
    for seq in range(1, 5):  # "dev-1" is a string prefix of "dev-10": S3 lists both under history/dev-1
        assert store.put_report(signed(make_report("dev-10", seq=seq, model="other"), KEY))
    latest = store.latest("dev-1")
    assert latest is not None and latest.report.seq == 7
    # A replay, and a late report, are ignored and change nothing.
    assert not store.put_report(signed(make_report(seq=7, uptime_s=1.0), KEY))
    assert not store.put_report(signed(make_report(seq=3), KEY))
    assert store.latest("dev-1").report.seq == 7  # type: ignore[union-attr]
    assert [r.seq for r in store.history("dev-1").reports] == [5, 6, 7]  # bounded at 3
    assert [r.seq for r in store.history("dev-10").reports] == [2, 3, 4]
    assert sorted(store.device_ids()) == ["dev-1", "dev-10", "dev-2"]
    assert [r.device_id for r in store.latest_all("digits").reports] == ["dev-1"]
    assert len(store.latest_all().reports) == 3
    # Rollout state: revisions guard against two writers.
    assert store.rollout("digits") is None
    store.save_rollout("digits", {"revision": 1, "phase": "pending"}, None)
    with pytest.raises(UsageError, match="changed under this step"):
        store.save_rollout("digits", {"revision": 1, "phase": "pending"}, None)
    store.save_rollout("digits", {"revision": 2, "phase": "soaking"}, 1)
    assert store.rollout("digits") == {"revision": 2, "phase": "soaking"} and store.rollout_models() == ["digits"]


def test_folder_store(tmp_path: Path) -> None:
    _exercise(FleetStore(FolderStorage(tmp_path / "fleet"), history=3))


def test_default_store_lives_under_bentoedge_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BENTOEDGE_HOME", str(tmp_path))
    store = open_fleet_store()
    store.put_report(signed(make_report(), KEY))
    assert (tmp_path / "fleet" / "latest" / "dev-1.json").exists()


def test_s3_store_against_moto_server(aws_env: str) -> None:
    import boto3

    boto3.client("s3").create_bucket(Bucket="fleet-store")
    _exercise(open_fleet_store("s3://fleet-store/prod/fleet", history=3))
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="fleet-store")["Contents"]]
    assert "prod/fleet/latest/dev-1.json" in keys and "prod/fleet/rollouts/digits.json" in keys


def test_bad_reports_never_reach_the_store(tmp_path: Path) -> None:
    store = FleetStore(FolderStorage(tmp_path))
    good = signed(make_report(seq=1), KEY)
    store.put_report(good)
    other = signed(make_report(seq=2, uptime_s=9.0), KEY)
    with pytest.raises(FormatError):
        store.put_report(rp.SignedReport(other.report, b"{garbage"))
    with pytest.raises(FormatError, match="do not hold"):
        store.put_report(rp.SignedReport(make_report(seq=5), other.envelope))
    assert store.latest("dev-1") == good
    # A latest.json damaged behind the store's back is skipped by readers and reported, never raised.
    (tmp_path / "latest" / "dev-1.json").write_bytes(b"{half")
    assert store.latest("dev-1") is None
    listing = store.latest_all()
    assert listing.reports == [] and "latest/dev-1.json" in listing.problems[0]


class CrashingStorage(FolderStorage):
    """Dies (an exception standing for the process) on its Nth put."""

    def __init__(self, root: Path, crash_at: int) -> None:
        super().__init__(root)
        self.left = crash_at

    def put(self, key: str, data: bytes) -> None:
        self.left -= 1
        if self.left == 0:
            # What a kill during the write leaves: a partial temporary file beside the key.
            dest = self.root / key
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.with_name(f".{dest.name}.tmp-999").write_bytes(data[: len(data) // 2])
            raise KeyboardInterrupt("killed")
        super().put(key, data)


@pytest.mark.parametrize("crash_at", [1, 2])
def test_a_crash_mid_write_leaves_everything_readable(tmp_path: Path, crash_at: int) -> None:
    store = FleetStore(FolderStorage(tmp_path), history=5)
    store.put_report(signed(make_report(seq=1), KEY))
    store.save_rollout("digits", {"revision": 1}, None)
    crashing = FleetStore(CrashingStorage(tmp_path, crash_at), history=5)
    with pytest.raises(KeyboardInterrupt):
        crashing.put_report(signed(make_report(seq=2), KEY))
    latest = store.latest("dev-1")
    assert latest is not None and latest.report.seq == 1  # the old one, whole
    hist = store.history("dev-1")
    assert hist.problems == [] and [r.seq for r in hist.reports] == ([1] if crash_at == 1 else [1, 2])
    with pytest.raises(KeyboardInterrupt):
        FleetStore(CrashingStorage(tmp_path, 1)).save_rollout("digits", {"revision": 2}, 1)
    assert store.rollout("digits") == {"revision": 1}
    # The next write goes through, as if nothing happened.
    assert store.put_report(signed(make_report(seq=3), KEY)) and store.latest("dev-1").report.seq == 3  # type: ignore[union-attr]


def test_a_killed_writer_process_leaves_everything_readable(tmp_path: Path) -> None:
    """A real SIGKILL at an arbitrary instant of a writing loop (bounded: 3000 reports, 20 s)."""
    script = textwrap.dedent(f"""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from fleet_support import make_report, signed
        from bentoedge.cloud.channel.storage import FolderStorage
        from bentoedge.cloud.fleet.store import FleetStore
        store, key = FleetStore(FolderStorage(__import__("pathlib").Path({str(tmp_path)!r})), history=4), Ed25519PrivateKey.generate()
        for seq in range(1, 3001):
            store.put_report(signed(make_report(f"dev-{{seq % 3}}", seq=seq), key))
            store.save_rollout("digits", {{"revision": seq}}, seq - 1 if seq > 1 else None)
            if seq == 20:
                print("going", flush=True)
    """)
    # tests/ holds fleet_support; bentoedge itself is the installed package
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"going"
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(20)
    store = FleetStore(FolderStorage(tmp_path), history=4)
    listing = store.latest_all()
    assert listing.problems == [] and len(listing.reports) == 3
    for dev in ("dev-0", "dev-1", "dev-2"):
        hist = store.history(dev)
        assert hist.problems == [] and 1 <= len(hist.reports) <= 5
    doc = store.rollout("digits")
    assert doc is not None and doc["revision"] >= 20
