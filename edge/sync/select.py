"""Which published version a device may take: a pure function of (candidates, device facts).

The channel's targets metadata lists each version's ``manifest.json`` target with custom
data (release counter, device classes, rollout percentage, minimum agent version, pinned),
parsed strictly by ``bentos.channel_layout`` into a ``Candidate`` (its ``Release``).
``choose`` picks the newest version this device is permitted to run:

- the model it follows (``config.model``, else the active model, else the only one),
- a device class the version names (no classes: every class),
- a rollout cohort: ``sha256(model:device_id) % 100 < rollout``, stable across polls, so a
  10 % rollout reaches the same 10 % of devices every time and widening it only adds some,
- an agent at least ``min_agent``,
- never a version that failed here before, and never a release at or below the active one
  (a signed but older release is a rollback attack, or simply not news),
- when the channel pins a version, only that one (and still never a downgrade).

No I/O, no clock: tested exhaustively with hypothesis.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bentoedge.bentos.channel_layout import Release, releases_in

#: The device's name for a published version's release record: the same class the
#: publisher writes (``bentos.channel_layout.Release``), so both sides parse one format.
Candidate = Release


@dataclass(frozen=True)
class Device:
    device_id: str
    device_class: str = "default"
    agent_version: str = "0"
    model: str = ""  # the model to follow; "" follows the active one, or the only one published
    active_model: str | None = None
    active_release: int | None = None
    failed: frozenset[str] = field(default_factory=frozenset)  # "model:version"


@dataclass(frozen=True)
class Choice:
    candidate: Candidate | None
    reason: str


def cohort(device_id: str, model: str) -> int:
    """The device's stable rollout bucket for ``model``, 0..99."""
    digest = hashlib.sha256(f"{model}:{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def version_tuple(v: str) -> tuple[int, ...]:
    """'1.10.0' > '1.9.2'; non-numeric parts count as 0 (pre-releases are not special)."""
    return tuple(int(p) if p.isdigit() else 0 for p in re.split(r"[.\-+]", v.strip()) if p != "")


def refusal(c: Candidate, d: Device) -> str | None:
    """Why ``d`` may not take ``c`` (None: it may), ignoring the release order."""
    if c.key in d.failed:
        return f"{c.key} failed on this device before"
    if c.device_classes and d.device_class not in c.device_classes and "*" not in c.device_classes:
        return f"{c.key} is for device classes {', '.join(c.device_classes)}, not {d.device_class}"
    if cohort(d.device_id, c.model) >= max(0, min(100, c.rollout)):
        return f"{c.key} is rolled out to {c.rollout}% of devices, not yet to this one"
    if version_tuple(d.agent_version) < version_tuple(c.min_agent):
        return f"{c.key} needs agent {c.min_agent} or newer (this is {d.agent_version})"
    return None


def followed_model(cands: Iterable[Candidate], d: Device) -> str | None:
    if d.model:
        return d.model
    if d.active_model:
        return d.active_model
    names = {c.model for c in cands}
    return next(iter(names)) if len(names) == 1 else None


def choose(cands: Iterable[Candidate], d: Device) -> Choice:
    cands = list(cands)
    model = followed_model(cands, d)
    if model is None:
        if not cands:
            return Choice(None, "nothing is published on the channel")
        names = ", ".join(sorted({c.model for c in cands}))
        return Choice(None, f"the channel carries several models ({names}); set model in agent.toml")
    mine = [c for c in cands if c.model == model]
    if not mine:
        return Choice(None, f"no version of {model} is published")
    pins = [c for c in mine if c.pinned]
    if pins:  # a pin holds the fleet on that version: nothing else, even if the pin is not for us
        mine = pins
    allowed = [c for c in mine if refusal(c, d) is None]
    if not allowed:
        return Choice(None, refusal(max(mine, key=_order), d) or "no permitted version")
    best = max(allowed, key=_order)
    if d.active_release is not None and d.active_model == model and best.release <= d.active_release:
        return Choice(None, f"up to date (active release {d.active_release}, newest permitted {best.key} "
                            f"release {best.release})")
    return Choice(best, f"{best.key} release {best.release} is the newest permitted version")


def _order(c: Candidate) -> tuple[int, str]:
    return (c.release, c.version)


def candidates_from_targets(targets: Mapping[str, Any]) -> tuple[list[Candidate], list[str]]:
    """Candidates from the ``manifest.json`` targets of a trusted targets map (path -> TargetFile).

    Returns the candidates and one line per skipped malformed entry; the parsing and the
    path check are ``channel_layout.releases_in``, which the publisher reads with too.
    """
    return releases_in(targets)
