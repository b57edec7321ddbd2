"""``bentoedge fleet status | device`` and ``bentoedge rollout start | run | watch | abort | status``.

The imperative shell of the fleet: it reads reports and rollout state from the fleet store,
asks the pure parts (``status``, ``rollout``) what they mean, and acts on the signed channel
through the real ``Channel.publish(rollout=...)`` and ``Channel.withdraw``.  One rollout step
(``step``) stores the controller's intent (a new revision) before it touches the channel and
its outcome after, so a crash or a second operator mid-step never publishes a wave twice.

Errors are ``bentos.errors`` and leave through the root command's one-line handler: a
rollout of a version not on the channel, or of a model that already has one running, is a
usage error (exit 2).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from bentoedge.bentos.errors import FormatError, NotFoundError, UsageError
from bentoedge.cloud.fleet import rollout as ro
from bentoedge.cloud.fleet.status import device_view, summarize
from bentoedge.cloud.fleet.store import FleetStore, open_fleet_store

STORE_HELP = "The fleet store: a folder, file:// or s3://BUCKET/PREFIX (default: $BENTOEDGE_HOME/fleet)."


def parse_duration(text: str) -> float:
    """'90', '90s', '30m', '2h', '1d' -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise UsageError(f"duration {text!r}: give a number with s, m, h or d (e.g. 30m)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def parse_waves(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(","))
    except ValueError:
        raise UsageError(f"--waves {text!r}: give percentages separated by commas, e.g. 1,10,50,100") from None


def _split(tag: str) -> tuple[str, str]:
    name, _, version = tag.partition(":")
    if not name or not version:
        raise UsageError(f"give MODEL:VERSION, not {tag!r}")
    return name, version


# ---- the channel, as a rollout touches it --------------------------------------------------------


@dataclass
class ChannelOps:
    """What a rollout does to a channel; the real ones by default, others in tests and the bench."""

    has_version: Callable[[str, str, str], bool]  # (channel url, model, version)
    publish: Callable[[str, str, int], None]  # (channel url, source ref, rollout %)
    withdraw: Callable[[str, str, str], None]  # (channel url, model, version); done if already gone


def _has_version(url: str, model: str, version: str) -> bool:
    from bentoedge.cloud.channel import repo
    from bentoedge.cloud.channel.channel import Channel

    targets = Channel.open(url).load().targets.signed
    try:
        repo.find_release(targets, model, version)
    except NotFoundError:
        return False
    return True


def _publish(url: str, source: str, rollout: int) -> None:
    from bentoedge.python_api import publish

    publish(source, url, rollout=rollout)


def _withdraw(url: str, model: str, version: str) -> None:
    from bentoedge.cloud.channel.channel import Channel

    try:
        Channel.open(url).withdraw(model, version)
    except NotFoundError:
        pass  # withdrawn already (a step that crashed after the channel write)


REAL_OPS = ChannelOps(_has_version, _publish, _withdraw)


# ---- the rollout shell -------------------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    state: ro.State
    channel: str
    source: str


def load_rollout(store: FleetStore, model: str) -> Stored | None:
    doc = store.rollout(model)
    if doc is None:
        return None
    try:
        return Stored(ro.State.from_dict(doc), str(doc["channel"]), str(doc["source"]))
    except KeyError as exc:
        raise FormatError(f"rollout state of {model} in {store.url} lacks {exc}") from None


def _save(store: FleetStore, st: Stored, state: ro.State) -> Stored:
    new = replace(st, state=state)
    store.save_rollout(state.plan.model, {**state.to_dict(), "channel": st.channel, "source": st.source},
                       state.revision - 1 if state.revision > 1 else None)
    return new


def start_rollout(store: FleetStore, plan: ro.Plan, channel: str, source: str, now: float,
                  ops: ChannelOps = REAL_OPS) -> tuple[ro.Action, ro.State]:
    """Record a new rollout and publish its first wave."""
    old = load_rollout(store, plan.model)
    if old is not None and not old.state.terminal:
        raise UsageError(f"{plan.model} already has a rollout running ({old.state.plan.tag}, {old.state.phase}); "
                         f"abort it first: bentoedge rollout abort {plan.model}")
    if not ops.has_version(channel, plan.model, plan.version):
        raise NotFoundError(f"{plan.tag} is not on channel {channel}: publish it first with "
                            f"bentoedge publish {plan.tag} --channel {channel} --rollout 0")
    state = replace(ro.start(plan, now), revision=old.state.revision + 1 if old else 1)
    st = _save(store, Stored(state, channel, source), state)
    return step(store, plan.model, now, ops, stored=st)


def step(store: FleetStore, model: str, now: float, ops: ChannelOps = REAL_OPS,
         stored: Stored | None = None) -> tuple[ro.Action, ro.State]:
    """One controller step for ``model``: decide from the stored reports, act, record."""
    st = stored or load_rollout(store, model)
    if st is None:
        raise NotFoundError(f"no rollout of {model} in the fleet store {store.url}; start one with "
                            "bentoedge rollout start MODEL:VERSION --channel URL")
    state = st.state
    if state.terminal:
        return ro.decide(state, ro.WaveView(), now), state
    plan = state.plan
    view = ro.observe(store.latest_all(model).reports, plan, state.rollout, now, state.previous_rollout)
    action = ro.decide(state, view, now)
    intent = ro.begin(state, action, now)
    if intent is not state:
        st = _save(store, st, intent)
    if action.kind == "publish":
        assert action.rollout is not None
        ops.publish(st.channel, st.source, action.rollout)
        st = _save(store, st, ro.confirm_publish(intent, now))
    elif action.kind == "abort":
        ops.withdraw(st.channel, plan.model, plan.version)
        st = _save(store, st, ro.confirm_abort(intent, now))
    return action, st.state


def abort_rollout(store: FleetStore, model: str, reason: str, now: float,
                  ops: ChannelOps = REAL_OPS) -> ro.State:
    st = load_rollout(store, model)
    if st is None:
        raise NotFoundError(f"no rollout of {model} in the fleet store {store.url}")
    if st.state.phase == "aborted":
        return st.state
    intent = ro.abort_by_hand(st.state, reason, now)
    if intent is not st.state:
        st = _save(store, st, intent)
    ops.withdraw(st.channel, st.state.plan.model, st.state.plan.version)
    return _save(store, st, ro.confirm_abort(st.state, now)).state


# ---- printing -----------------------------------------------------------------------------------


def _echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True))


def _print_status(s: dict[str, Any]) -> None:
    out = Console()
    h = s["health"]
    out.print(f"[bold]{s['devices']} devices[/]{' of ' + s['model'] if s['model'] else ''}: health passed "
              f"{h['passed']}, failed {h['failed']}, unchecked {h['none']}; quiet {s['quiet_count']} "
              f"(silent > {s['quiet_after_s']:.0f} s)")
    t = Table("model", "version", "devices", "passed", "failed", "unchecked", "fallback", "errors", "p99 ms",
              "drift (max PSI)")
    for v in s["versions"]:
        drift = ", ".join(f"{k} {d['max']:.2f}" for k, d in v["drift"].items()) or "-"
        t.add_row(v["model"] or "-", v["version"], str(v["devices"]), str(v["passed"]), str(v["failed"]),
                  str(v["unchecked"]), f"{v['fallback_share']:.1%}", f"{v['error_rate']:.2%}",
                  "-" if v["p99_ms"] is None else f"{v['p99_ms']:.1f}", drift)
    out.print(t)
    if s["quiet"]:
        q = Table("quiet device", "last seen (s ago)", "active")
        for d in s["quiet"]:
            q.add_row(d["device_id"], f"{d['last_seen_s']:.0f}", d["active"] or "-")
        out.print(q)
    if s["worst"]:
        w = Table("worst devices", "score", "active", "why")
        for d in s["worst"]:
            w.add_row(d["device_id"], f"{d['score']:.1f}", d["active"] or "-", "; ".join(d["why"]))
        out.print(w)


def _print_state(state: ro.State, action: ro.Action | None = None) -> None:
    if action is not None:
        click.echo(f"{state.plan.tag}: {action.kind}: {action.reason}")
    click.echo(f"{state.plan.tag}: {state.phase}, wave {state.wave + 1}/{len(state.plan.waves)} at "
               f"{state.rollout}% (revision {state.revision})")


def _rollout_doc(state: ro.State) -> dict[str, Any]:
    return {**state.to_dict(), "rollout": state.rollout, "terminal": state.terminal}


# ---- bentoedge fleet ----------------------------------------------------------------------------


@click.group()
def fleet() -> None:
    """What the devices report: versions, health, quiet devices, fallback and drift.

    \b
    Examples:
      bentoedge fleet status
      bentoedge fleet status --model digits --json --store s3://ops/fleet
      bentoedge fleet device pi-0042
    """


@fleet.command("status")
@click.option("--model", default=None, help="Only the devices following this model.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--store", "store_url", default=None, help=STORE_HELP)
@click.option("--quiet-after", default="1h", show_default=True, help="Silence after which a device is quiet.")
def status(model: str | None, as_json: bool, store_url: str | None, quiet_after: str) -> None:
    """Devices per version and health state, quiet devices, fallback share and drift, worst devices."""
    store = open_fleet_store(store_url)
    listing = store.latest_all(model)
    s = summarize(listing.reports, time.time(), model, parse_duration(quiet_after))
    s["unreadable"] = listing.problems
    if as_json:
        _echo_json(s)
        return
    _print_status(s)
    for p in listing.problems:
        click.secho(f"warning: unreadable report {p}", fg="yellow", err=True)


@fleet.command("device")
@click.argument("device_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--store", "store_url", default=None, help=STORE_HELP)
def device(device_id: str, as_json: bool, store_url: str | None) -> None:
    """One device's latest report and its stored history."""
    store = open_fleet_store(store_url)
    latest = store.latest(device_id)
    if latest is None:
        raise NotFoundError(f"no report from device {device_id} in the fleet store {store.url}")
    view = device_view(latest.report, store.history(device_id).reports, time.time())
    if as_json:
        _echo_json(view)
        return
    r = latest.report
    click.echo(f"{r.device_id} ({r.device_class}, agent {r.agent_version}): {r.model}:{r.active or '-'} "
               f"(previous {r.previous or '-'}), health {r.health.result}, last sync {r.sync.outcome} "
               f"{r.sync.cause}, seen {view['last_seen_s']:.0f} s ago")
    for why in view["why"]:
        click.echo(f"  attention: {why}")
    t = Table("seq", "sent at", "active", "health", "sync", "local", "forwarded", "errors", "max drift")
    for h in view["history"]:
        t.add_row(str(h["seq"]), time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(h["sent_at"])), h["active"] or "-",
                  h["health"], h["sync"], str(h["local"]), str(h["forwarded"]), str(h["errors"]),
                  "-" if h["max_drift"] is None else f"{h['max_drift']:.2f}")
    Console().print(t)


# ---- bentoedge rollout -------------------------------------------------------------------------


@click.group()
def rollout() -> None:
    """Roll a published version out in waves that advance, or abort themselves, from device reports.

    \b
    Examples:
      bentoedge publish digits:v2 --channel s3://ops/chan --rollout 0
      bentoedge rollout start digits:v2 --channel s3://ops/chan --waves 1,10,50,100 \\
          --soak 30m --max-failure-rate 0.05 --min-devices 20
      bentoedge rollout run                 # one step for every rollout (cron, a scheduled function)
      bentoedge rollout watch --model digits --interval 60 --max-steps 500
      bentoedge rollout abort digits        # withdraw the version now

    A wave advances once at least --min-devices of it (or all it holds, when fewer report)
    run the version healthy for --soak; it aborts (the version is withdrawn on the channel,
    devices that took it roll back) when its failure share is over --max-failure-rate.
    Failure: a failed health check, a refused version, a crash loop, or a local error rate
    over --max-error-rate.  Devices silent for --quiet-after are not waited for, and every
    wave decides by --wave-timeout (default 4 soaks, at least soak + 1 h).
    """


@rollout.command("start")
@click.argument("tag")
@click.option("--channel", "channel_url", required=True, help="The channel URL (the version must be on it).")
@click.option("--waves", default="1,10,50,100", show_default=True, help="Rollout percentages, ending at 100.")
@click.option("--soak", default="30m", show_default=True, help="How long a wave's devices must run it healthy.")
@click.option("--max-failure-rate", default=0.05, show_default=True, type=float,
              help="Failure share of a wave's devices that aborts the rollout.")
@click.option("--min-devices", default=20, show_default=True, type=int, help="Devices a wave must hear from.")
@click.option("--max-error-rate", default=0.05, show_default=True, type=float,
              help="Local error share above which a device counts as failed.")
@click.option("--quiet-after", default="1h", show_default=True, help="Silence after which a device is not waited for.")
@click.option("--wave-timeout", default="0", show_default=True, help="Longest a wave waits (0: 4 soaks, >= soak + 1h).")
@click.option("--source", default=None, help="The sealed model to publish (default: MODEL:VERSION from the store).")
@click.option("--store", "store_url", default=None, help=STORE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the rollout state as JSON.")
def start(tag: str, channel_url: str, waves: str, soak: str, max_failure_rate: float, min_devices: int,
          max_error_rate: float, quiet_after: str, wave_timeout: str, source: str | None, store_url: str | None,
          as_json: bool) -> None:
    """Start rolling MODEL:VERSION out and publish its first wave."""
    model, version = _split(tag)
    plan = ro.Plan(model, version, parse_waves(waves), parse_duration(soak), max_failure_rate, min_devices,
                   max_error_rate, quiet_after_s=parse_duration(quiet_after), wave_timeout_s=parse_duration(wave_timeout))
    action, state = start_rollout(open_fleet_store(store_url), plan, channel_url, source or tag, time.time())
    _echo_json(_rollout_doc(state)) if as_json else _print_state(state, action)


def _models(store: FleetStore, model: str | None) -> list[str]:
    if model:
        return [model]
    models = store.rollout_models()
    if not models:
        raise NotFoundError(f"no rollout in the fleet store {store.url}")
    return models


@rollout.command("run")
@click.option("--model", default=None, help="Only this model's rollout (default: every one in the store).")
@click.option("--store", "store_url", default=None, help=STORE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def run(model: str | None, store_url: str | None, as_json: bool) -> None:
    """One step of each rollout: advance, wait or abort, from the reports in the fleet store."""
    store = open_fleet_store(store_url)
    out = []
    for m in _models(store, model):
        action, state = step(store, m, time.time())
        out.append({**_rollout_doc(state), "action": {"kind": action.kind, "reason": action.reason}})
        if not as_json:
            _print_state(state, action)
    if as_json:
        _echo_json(out)


@rollout.command("watch")
@click.option("--model", default=None, help="Only this model's rollout (default: every one in the store).")
@click.option("--interval", default="60s", show_default=True, help="Time between steps.")
@click.option("--max-steps", default=1000, show_default=True, type=click.IntRange(1, 100000),
              help="Stop after this many steps.")
@click.option("--store", "store_url", default=None, help=STORE_HELP)
def watch(model: str | None, interval: str, max_steps: int, store_url: str | None) -> None:
    """Step every --interval until every rollout is done or aborted (at most --max-steps steps)."""
    store = open_fleet_store(store_url)
    pause = parse_duration(interval)
    for n in range(max_steps):
        states = []
        for m in _models(store, model):
            action, state = step(store, m, time.time())
            if action.kind != "wait" or n == 0:
                _print_state(state, action)
            states.append(state)
        if all(s.terminal for s in states):
            return
        if n + 1 < max_steps:
            time.sleep(pause)
    click.echo(f"stopped after {max_steps} steps; rollouts are still running (bentoedge rollout run)")


@rollout.command("abort")
@click.argument("model")
@click.option("--reason", default="aborted by hand", show_default=True, help="Recorded in the rollout state.")
@click.option("--store", "store_url", default=None, help=STORE_HELP)
def abort(model: str, reason: str, store_url: str | None) -> None:
    """Withdraw the version being rolled out of MODEL; devices that took it roll back."""
    state = abort_rollout(open_fleet_store(store_url), model, reason, time.time())
    _print_state(state)


@rollout.command("status")
@click.argument("model", required=False)
@click.option("--store", "store_url", default=None, help=STORE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def rollout_status(model: str | None, store_url: str | None, as_json: bool) -> None:
    """The stored state of each rollout (nothing is decided or changed)."""
    store = open_fleet_store(store_url)
    docs = []
    for m in _models(store, model):
        st = load_rollout(store, m)
        if st is None:
            raise NotFoundError(f"no rollout of {m} in the fleet store {store.url}")
        docs.append({**_rollout_doc(st.state), "channel": st.channel})
        if not as_json:
            _print_state(st.state)
            for t, e in st.state.events[-5:]:
                click.echo(f"  {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(t))}  {e}")
    if as_json:
        _echo_json(docs)
