"""The fleet store: each device's latest signed report, a bounded history, and rollout state.

It sits on the channel's ``Storage`` (``cloud.channel.storage``): a local folder by default
(``$BENTOEDGE_HOME/fleet``), or an S3 prefix at scale (``s3://bucket/prefix``).  Layout:

    latest/<device id>.json                  the newest accepted envelope, as received
    history/<device id>/<seq:020d>.json      the last ``history`` envelopes (oldest pruned)
    rollouts/<model>.json                    a rollout's state (``rollout.State``)

The latest reports sit apart from the history so that reading the whole fleet is one
listing of ``latest/`` (one S3 LIST per 1,000 devices) and one GET per device.

What it keeps:

- Only an envelope that parses (``report.read_stored``) is written, and only when its
  ``seq`` is above the stored latest one: a malformed report, a replay or a late one never
  replaces a good report.  Signature checking is the caller's (the endpoint holds the
  enrolled-device registry); ``put_report`` takes a ``SignedReport``, which only
  ``report.open_envelope`` makes from the wire.
- Each object appears whole (a folder writes aside, fsyncs and renames; an S3 PUT is atomic),
  and the history entry is written before ``latest.json``, so a crash at any point leaves the
  previous latest report, or the new one, and a readable history.  Readers skip leftovers and
  report, never raise on, an unreadable object.
- Rollout state carries a ``revision``; ``save_rollout`` refuses to write over a revision
  other than the one the caller read (two operators, or a controller that crashed and came
  back, do not both act on one state).  Storage offers no compare-and-swap, so a race inside
  one read-and-put stays possible; the controller's actions are idempotent for that reason
  (publishing a wave again writes the same record).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bentoedge.bentos.channel_layout import valid_name
from bentoedge.bentos.errors import FormatError, UsageError
from bentoedge.bentos.fleet_report import DEVICE_ID_RE, Report, SignedReport, is_newer, read_stored
from bentoedge.bentos.keystore import default_home
from bentoedge.bentos.manifest import canonical_json
from bentoedge.cloud.channel.storage import FolderStorage, Storage, open_storage

log = logging.getLogger("bentoedge.fleet")

LATEST = "latest"
HISTORY = "history"
ROLLOUTS = "rollouts"
#: Envelopes kept per device besides the latest.
DEFAULT_HISTORY = 20


def default_url() -> str:
    """The embedded store: a folder under ``$BENTOEDGE_HOME``."""
    return str(default_home() / "fleet")


def open_fleet_store(url: str | None = None, history: int = DEFAULT_HISTORY) -> FleetStore:
    """A store at ``url`` (a path, ``file://`` or ``s3://``), else the default folder."""
    if not url:
        return FleetStore(FolderStorage(Path(default_url())), history)
    return FleetStore(open_storage(url), history)


@dataclass
class Listing:
    """Reports read back, with one line per object that could not be read."""

    reports: list[Report] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class FleetStore:
    def __init__(self, storage: Storage, history: int = DEFAULT_HISTORY) -> None:
        if history < 1:
            raise UsageError(f"a fleet store keeps at least one report of history, not {history}")
        self.storage = storage
        self.history_size = history
        self.url = storage.url

    # ---- reports ----------------------------------------------------------------------------

    @staticmethod
    def _check(device_id: str) -> str:
        if not DEVICE_ID_RE.match(device_id):
            raise UsageError(f"device id {device_id!r}: letters, digits, '.', '_' or '-' (max 128)")
        return device_id

    def _latest_key(self, device_id: str) -> str:
        return f"{LATEST}/{self._check(device_id)}.json"

    def _history_prefix(self, device_id: str) -> str:
        return f"{HISTORY}/{self._check(device_id)}"

    def put_report(self, signed: SignedReport) -> bool:
        """Store a checked report; False (nothing written) when it is not newer than the stored one."""
        parsed = read_stored(signed.envelope)  # what is written is what readers will parse
        if parsed.report != signed.report:
            raise FormatError("the envelope's bytes do not hold the report they came with")
        report = parsed.report
        current = self.latest(report.device_id)
        if not is_newer(report, current.report if current else None):
            return False
        history = self._history_prefix(report.device_id)
        self.storage.put(f"{history}/{report.seq:020d}.json", signed.envelope)
        self.storage.put(self._latest_key(report.device_id), signed.envelope)
        self._prune(history)
        return True

    def _under(self, folder: str) -> list[str]:
        # An S3 listing is by string prefix: "history/dev-1" also lists "history/dev-10/...".
        return [k for k in self.storage.list(folder) if k.startswith(folder + "/")]

    def _prune(self, history: str) -> None:
        entries = self._under(history)
        for key in entries[:-self.history_size]:
            self.storage.delete(key)

    def latest(self, device_id: str) -> SignedReport | None:
        """The device's latest stored report; None when there is none or it cannot be read."""
        key = self._latest_key(device_id)
        data = self.storage.get(key)
        if data is None:
            return None
        try:
            return read_stored(data)
        except FormatError as exc:
            log.warning("fleet store: skipping unreadable %s: %s", key, exc)
            return None

    def device_ids(self) -> list[str]:
        """Every device with a latest report (one listing of ``latest/``)."""
        out = []
        for key in self._under(LATEST):
            name = key.split("/", 1)[1] if key.count("/") == 1 else ""
            device_id = name.removesuffix(".json")
            if name.endswith(".json") and DEVICE_ID_RE.match(device_id):
                out.append(device_id)
        return out

    def latest_all(self, model: str | None = None) -> Listing:
        """The latest report of every device (of ``model``, when given)."""
        out = Listing()
        for device_id in self.device_ids():
            key = self._latest_key(device_id)
            data = self.storage.get(key)
            if data is None:
                continue  # deleted since the listing
            try:
                report = read_stored(data).report
            except FormatError as exc:
                out.problems.append(f"{key}: {exc}")
                continue
            if model is None or report.model == model:
                out.reports.append(report)
        return out

    def history(self, device_id: str) -> Listing:
        """The device's stored reports, oldest first."""
        out = Listing()
        for key in self._under(self._history_prefix(device_id)):
            data = self.storage.get(key)
            if data is None:
                continue
            try:
                out.reports.append(read_stored(data).report)
            except FormatError as exc:
                out.problems.append(f"{key}: {exc}")
        return out

    # ---- rollout state --------------------------------------------------------------------

    @staticmethod
    def _rollout_key(model: str) -> str:
        if not valid_name(model):
            raise UsageError(f"model name {model!r}: lowercase letters, digits, '.', '_' or '-'")
        return f"{ROLLOUTS}/{model}.json"

    def rollout(self, model: str) -> dict[str, Any] | None:
        """The stored rollout document of ``model`` (None: none yet); FormatError when unreadable."""
        data = self.storage.get(self._rollout_key(model))
        if data is None:
            return None
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise FormatError(f"rollout state of {model} in {self.url} is not JSON: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("revision"), int):
            raise FormatError(f"rollout state of {model} in {self.url} lacks its revision")
        return doc

    def save_rollout(self, model: str, doc: dict[str, Any], expect_revision: int | None) -> None:
        """Write ``doc`` (whose ``revision`` must be ``expect_revision`` + 1, or 1 for a new one).

        UsageError when the stored revision is not the one the caller read.
        """
        current = self.rollout(model)
        have = current["revision"] if current else None
        if have != expect_revision:
            raise UsageError(f"the rollout of {model} changed under this step (revision {have}, expected "
                             f"{expect_revision}); another operator or controller is running it: rerun the step")
        want = 1 if expect_revision is None else expect_revision + 1
        if doc.get("revision") != want:
            raise UsageError(f"rollout state revision {doc.get('revision')} must be {want}")
        self.storage.put(self._rollout_key(model), canonical_json(doc))

    def rollout_models(self) -> list[str]:
        return sorted(k.split("/", 1)[1].removesuffix(".json") for k in self._under(ROLLOUTS)
                      if k.endswith(".json"))
