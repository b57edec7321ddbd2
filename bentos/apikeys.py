"""API keys for applications that call the cloud service: made, listed, revoked, checked.

``bentoedge keys api create NAME`` prints a key once (``bek_...``); only its SHA-256 is
kept, in ``$BENTOEDGE_HOME/keys/api_keys.json`` (0600), the file the service reads
(``BENTOEDGE_API_KEYS_FILE`` names another):

    {"format": "bentoedge.api-keys/1",
     "keys": [{"id": "<12 hex>", "name": "...", "sha256": "<64 hex>", "created": "...", "revoked": false}]}

A stolen copy of the file lets nobody in.  The service re-reads the file when its size or
modification time changes, so a revocation holds from the next request on.
"""

from __future__ import annotations

import json
import os
import re
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bentoedge.bentos import auth
from bentoedge.bentos.errors import ConfigError, UsageError
from bentoedge.bentos.keystore import write_private

FORMAT = "bentoedge.api-keys/1"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ApiKeyStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._hashes: dict[str, auth.ApiKey] = {}

    def records(self) -> list[dict[str, Any]]:
        try:
            doc = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return []
        except ValueError as exc:
            raise ConfigError(f"{self.path} is not an API key file ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("keys"), list):
            raise ConfigError(f"{self.path} is not a {FORMAT} file")
        return [dict(r) for r in doc["keys"]]

    def _save(self, records: list[dict[str, Any]]) -> None:
        write_private(self.path, json.dumps({"format": FORMAT, "keys": records}, indent=1).encode())

    def create(self, name: str) -> tuple[str, dict[str, Any]]:
        """A new key for ``name``: the key itself (shown once) and its record."""
        if not NAME_RE.fullmatch(name):
            raise UsageError(f"API key name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
        records = self.records()
        if any(r["name"] == name and not r["revoked"] for r in records):
            raise UsageError(f"an API key named {name!r} exists; revoke it first or pick another name")
        key = auth.new_api_key()
        digest = auth.api_key_hash(key)
        record = {"id": auth.api_key_id(digest), "name": name, "sha256": digest,
                  "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(), "revoked": False}
        self._save([*records, record])
        return key, record

    def revoke(self, which: str) -> dict[str, Any]:
        """Revoke the live key named ``which`` (or with that id)."""
        records = self.records()
        hits = [r for r in records if not r["revoked"] and which in (r["name"], r["id"])]
        if not hits:
            raise UsageError(f"no live API key named {which!r} in {self.path} (see 'bentoedge keys api list')")
        for r in hits:
            r["revoked"] = True
        self._save(records)
        return hits[0]

    def hashes(self) -> dict[str, auth.ApiKey]:
        """SHA-256 -> key, re-read only when the file changed; an unreadable file lets no key in."""
        try:
            st = os.stat(self.path)
            seen: tuple[int, int] | None = (st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            seen = None
        with self._lock:
            if seen != self._seen:
                try:
                    recs = self.records() if seen is not None else []
                    self._hashes = {str(r["sha256"]): auth.ApiKey(str(r["id"]), str(r["name"]), bool(r["revoked"]))
                                    for r in recs}
                except (ConfigError, KeyError, TypeError):
                    self._hashes = {}
                self._seen = seen
            return self._hashes
