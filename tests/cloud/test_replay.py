"""The replay cache the cloud service's workers share (cloud.replay.SharedNonceStore).

Two workers are two processes: a nonce one of them recorded must be refused by the other,
so the tests record from a real second interpreter and refuse in this one.
"""

from __future__ import annotations

import logging
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bentoedge.cloud.auth import gate_from_env, shared_nonces
from bentoedge.cloud.replay import SharedNonceStore
from bentoedge.cloud.service_core import CloudSettings

NOW = 1_800_000_000.0


def _record_in_another_process(path: Path, keyid: str, nonce: str) -> bool:
    code = ("import sys; from pathlib import Path; from bentoedge.cloud.replay import SharedNonceStore; "
            f"print(SharedNonceStore(Path(sys.argv[1])).add({keyid!r}, {nonce!r}, {NOW + 300}, {NOW}))")
    res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip() == "True"


def test_a_nonce_recorded_by_one_worker_is_a_replay_for_every_other(tmp_path: Path) -> None:
    path = tmp_path / "run" / "replay.sqlite3"
    here = SharedNonceStore(path)
    assert _record_in_another_process(path, "dev-a", "n" * 16)
    assert here.room(NOW) and not here.add("dev-a", "n" * 16, NOW + 300, NOW)  # the other worker saw it
    assert here.add("dev-b", "n" * 16, NOW + 300, NOW)  # the pair is per key
    assert not _record_in_another_process(path, "dev-b", "n" * 16)  # and the other way round
    assert len(here) == 2


def test_the_file_is_private_to_the_service(tmp_path: Path) -> None:
    path = tmp_path / "run" / "replay.sqlite3"
    SharedNonceStore(path).add("k", "n" * 16, NOW + 1, NOW)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_expired_pairs_are_pruned_and_a_full_store_refuses_rather_than_forgets(tmp_path: Path) -> None:
    store = SharedNonceStore(tmp_path / "r.sqlite3", max_entries=3, prune_every_s=0)
    for i in range(3):
        assert store.room(NOW) and store.add("k", f"{i:016d}", NOW + 10 + i, NOW)
    assert not store.room(NOW)  # full: the 503 in bentos.auth, never a cache that forgets
    assert store.room(NOW + 10.5) and len(store) == 2  # the first window ended
    assert store.add("k", "x" * 16, NOW + 20, NOW + 10.5)
    assert not store.room(NOW + 10.5)


def test_the_service_shares_its_replay_cache_and_lambda_keeps_its_own(tmp_path: Path) -> None:
    env = {"BENTOEDGE_HOME": str(tmp_path)}
    settings = CloudSettings.from_env(env)
    shared = gate_from_env(settings, env)._nonces
    assert isinstance(shared, SharedNonceStore) and shared.path == tmp_path / "run" / "replay.sqlite3"
    assert not isinstance(gate_from_env(settings, env, shared_replay=False)._nonces, SharedNonceStore)
    assert shared_nonces(CloudSettings.from_env({"BENTOEDGE_REPLAY_DB": "memory"}), tmp_path) is None
    own = tmp_path / "elsewhere.sqlite3"
    store = shared_nonces(CloudSettings.from_env({"BENTOEDGE_REPLAY_DB": str(own)}), tmp_path)
    assert isinstance(store, SharedNonceStore) and store.path == own


def test_a_damaged_replay_file_falls_back_to_a_per_process_cache_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    damaged = tmp_path / "replay.sqlite3"
    damaged.write_bytes(b"not a database, " * 64)
    with caplog.at_level(logging.WARNING, logger="bentoml.bentoedge"):
        assert shared_nonces(CloudSettings.from_env({"BENTOEDGE_REPLAY_DB": str(damaged)}), tmp_path) is None
    assert "cannot open the shared replay cache" in caplog.text and "BENTOEDGE_REPLAY_DB" in caplog.text
