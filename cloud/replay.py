"""The replay cache shared by every worker of the cloud service on one host.

``bentos.auth.authenticate`` refuses a device signature whose nonce it has seen within the
window; it asks a ``NonceStore`` (``room``, ``add``).  ``NonceCache`` keeps the pairs in one
process, which is enough for the Lambda handler (one process an instance) but not for a
``bentoml serve`` with several workers: a signed request captured on the wire and sent again
would be taken by any worker that had not seen it.  ``SharedNonceStore`` keeps them in one
SQLite file that all workers open (WAL, so readers never wait for the writer), and the
(key id, nonce) primary key makes "seen before?" and "record it" one atomic INSERT across
processes.  SQLite is the standard library's, so the shell adds no dependency.

Replicas on other hosts do not share this file: there the replay window is per host (a
load balancer with session affinity by device, or one shared store per fleet, closes it).

The file holds only key ids, nonces and expiry times, never bodies.  Durability is not
needed (``synchronous=OFF``): a nonce matters only for the few minutes of its window, and a
worker's crash loses nothing the OS has been handed.  Expired rows are pruned at most once a
``prune_every_s``; the count that bounds the store (``max_entries``, as ``NonceCache``) is
read then and kept up to date by this worker in between, so the hot path is one INSERT.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path

from bentoedge.bentos.auth import MAX_NONCES

logger = logging.getLogger("bentoml.bentoedge")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nonces (
    keyid TEXT NOT NULL, nonce TEXT NOT NULL, until REAL NOT NULL, PRIMARY KEY (keyid, nonce)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS nonces_until ON nonces (until);
"""


class SharedNonceStore:
    """(key id, nonce) pairs seen within the window, in a SQLite file shared by processes."""

    def __init__(self, path: Path, max_entries: int = MAX_NONCES, prune_every_s: float = 1.0) -> None:
        self.path = path
        self._max = max_entries
        self._prune_every_s = prune_every_s
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # ours alone; SQLite's -wal/-shm copy the mode
        # One connection for this process; the gate's lock already serializes its calls.
        self._db = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._pruned_at = float("-inf")
        self._count = 0

    def room(self, now: float) -> bool:
        """Whether another pair fits once the expired ones are gone (False if the file fails)."""
        with self._lock:
            try:
                if now - self._pruned_at >= self._prune_every_s:
                    self._db.execute("DELETE FROM nonces WHERE until < ?", (now,))
                    self._count = self._db.execute("SELECT count(*) FROM nonces").fetchone()[0]
                    self._pruned_at = now
            except sqlite3.Error as exc:
                logger.warning("bentoedge: the replay cache %s failed (%s): refusing signed requests "
                               "until it answers", self.path, exc)
                return False
            return self._count < self._max

    def add(self, keyid: str, nonce: str, until: float, now: float) -> bool:
        """Record a pair; False when any worker recorded it already (a replay), or the file fails
        (refusing is the safe answer when "seen before?" cannot be told)."""
        with self._lock:
            try:
                self._db.execute("INSERT INTO nonces (keyid, nonce, until) VALUES (?, ?, ?)", (keyid, nonce, until))
            except sqlite3.IntegrityError:
                return False
            except sqlite3.Error as exc:
                logger.warning("bentoedge: the replay cache %s failed (%s)", self.path, exc)
                return False
            self._count += 1
            return True

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM nonces").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
