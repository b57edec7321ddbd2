"""``bentoedge channel ...`` and ``bentoedge publish``: the publisher's verbs.

Thin: parse flags, call ``cloud.channel.Channel``, print.  Uploads show a rich progress
bar; errors are ``bentos.errors`` and leave through the root command's one-line handler.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from bentoedge.bentos.errors import UsageError
from bentoedge.bentos.keystore import default_home
from bentoedge.cloud.channel.channel import Channel

console = Console(stderr=True)


def _split(tag: str) -> tuple[str, str]:
    name, _, version = tag.partition(":")
    if not name or not version:
        raise UsageError(f"give NAME:VERSION, not {tag!r}")
    return name, version


@click.group()
def channel() -> None:
    """Create and manage a signed update channel (TUF) in a folder or an S3 prefix."""


@channel.command("init")
@click.argument("url")
@click.option("--root-keys", "root_keys", default=3, show_default=True, help="How many offline root keys.")
@click.option("--threshold", default=2, show_default=True, help="Root signatures needed to change trust.")
@click.option("--root-keys-dir", type=click.Path(path_type=Path), default=None,
              help="Where to write the offline root keys (default: beside the publisher state).")
def init(url: str, root_keys: int, threshold: int, root_keys_dir: Path | None) -> None:
    """Create a channel at URL (file:///path or s3://bucket/prefix)."""
    ch = Channel.init(url, default_home(), root_keys, threshold, root_keys_dir)
    click.echo(f"channel {ch.url} created (root {threshold} of {root_keys} keys, consistent snapshots)")
    click.echo(f"publisher state: {ch.state_dir}")
    click.echo(f"root fingerprint: {hashlib.sha256(ch.root_bytes(1)).hexdigest()}")
    click.echo("  provision devices with: bentoedge agent init --channel URL --cloud URL --root-sha256 <fingerprint>")
    click.secho(f"MOVE THE OFFLINE ROOT KEYS AWAY: {ch.root_keys_dir}", fg="yellow")
    click.echo("  they are needed only for 'bentoedge channel rotate' (pass --root-keys-dir then)")


@channel.command("enroll")
@click.argument("device_id")
@click.argument("pubfile", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--identity", "identity", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The device's Ed25519 identity.pub (from 'bentoedge agent init'): lets its signed calls into the cloud.")
@click.option("--channel", "url", required=True, help="The channel URL.")
def enroll(device_id: str, pubfile: Path, identity: Path | None, url: str) -> None:
    """Record a device's X25519 key (PUBFILE) and its identity key; the next publish wraps keys for it.

    Without --identity (a fleet group's shared key, or a device provisioned before
    identities) the device can decrypt what is published but cannot call the cloud.
    """
    ch = Channel.open(url)
    kid = ch.enroll(device_id, pubfile.read_bytes(), identity.read_bytes() if identity else None)
    click.echo(f"enrolled {device_id} (x25519 {kid}); run 'bentoedge publish' to wrap model keys for it")
    if identity is None:
        click.secho(f"note: {device_id} has no identity key, so the cloud will refuse its fallback calls; "
                    f"enroll it again with --identity STATE/identity.pub", fg="yellow", err=True)
    else:
        click.echo("its identity key is in the channel's device registry now")


@channel.command("revoke")
@click.argument("device_id")
@click.option("--channel", "url", required=True, help="The channel URL.")
def revoke(device_id: str, url: str) -> None:
    """Un-enroll DEVICE_ID: no later publish wraps a key for it, and the cloud refuses its calls.

    Versions published before keep the wraps it already holds: publish a new version
    to shut it out of model updates too.
    """
    v = Channel.open(url).revoke(device_id)
    click.echo(f"revoked {device_id}: the channel's device registry (targets v{v}) marks it revoked; "
               "clouds refuse it at their next registry refresh, and later publishes leave it out")


@channel.command("status")
@click.argument("url")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(url: str, as_json: bool) -> None:
    """Show the channel's roles, expiries, published versions and enrolled devices."""
    st = Channel.open(url).status()
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    out = Console()
    out.print(f"root fingerprint (1.root.json SHA-256): {st['root']['fingerprint']}", markup=False)
    out.print(f"[bold]{st['url']}[/]  root v{st['root']['version']} "
              f"({st['root']['threshold']} of {st['root']['keys']} keys)")
    roles = Table("role", "version", "expires")
    for role in ("root", "targets", "snapshot", "timestamp"):
        roles.add_row(role, str(st[role]["version"]), st[role]["expires"])
    out.print(roles)
    rel = Table("model", "version", "release", "rollout", "classes", "min agent", "pinned")
    for r in st["releases"]:
        rel.add_row(r["model"], r["version"], str(r["release"]), f"{r['rollout']}%",
                    ",".join(r["device_classes"]) or "all", r["min_agent"], "yes" if r["pinned"] else "")
    out.print(rel)
    out.print(f"enrolled devices: {', '.join(st['devices']) or 'none'}", markup=False)
    if st["revoked"]:
        out.print(f"revoked devices: {', '.join(st['revoked'])}", markup=False)


@channel.command("refresh")
@click.argument("url")
def refresh(url: str) -> None:
    """Re-sign the timestamp (run daily, e.g. from cron) so devices do not see it expire."""
    v = Channel.open(url).refresh()
    click.echo(f"timestamp re-signed (version {v})")


@channel.command("rotate")
@click.argument("role", type=click.Choice(["root", "targets", "snapshot", "timestamp"]))
@click.option("--channel", "url", required=True, help="The channel URL.")
@click.option("--root-keys-dir", type=click.Path(path_type=Path), default=None,
              help="The offline root key folder (needed to sign the new root).")
@click.option("--threshold", default=2, show_default=True, help="Threshold for new root keys (root only).")
def rotate(role: str, url: str, root_keys_dir: Path | None, threshold: int) -> None:
    """Replace a role's keys; devices follow through the signed root chain."""
    v = Channel.open(url).rotate(role, root_keys_dir, threshold=threshold)
    click.echo(f"{role} keys rotated; root is now version {v}")


@channel.command("withdraw")
@click.argument("tag")
@click.option("--channel", "url", required=True, help="The channel URL.")
def withdraw(tag: str, url: str) -> None:
    """Stop offering NAME:VERSION (devices that run it keep it until a newer one comes)."""
    name, version = _split(tag)
    paths = Channel.open(url).withdraw(name, version)
    click.echo(f"withdrew {tag} ({len(paths)} targets)")


@channel.command("pin")
@click.argument("tag")
@click.option("--channel", "url", required=True, help="The channel URL.")
def pin(tag: str, url: str) -> None:
    """Hold devices at NAME:VERSION: newer versions are not offered until it is re-published."""
    name, version = _split(tag)
    Channel.open(url).pin(name, version)
    click.echo(f"pinned {tag}")


@click.command("publish")
@click.argument("tag")
@click.option("--channel", "url", required=True, help="The channel URL.")
@click.option("--rollout", default=100, show_default=True, type=click.IntRange(0, 100),
              help="Percent of devices (stable cohorts) that may take it.")
@click.option("--device-class", "device_classes", multiple=True, help="Only these device classes (repeatable).")
@click.option("--min-agent", default="0", show_default=True, help="Minimum agent version.")
@click.option("--pin", "pinned", is_flag=True, help="Pin devices to this version.")
@click.option("--breaking", is_flag=True,
              help="Declare that this version changes the API of the one before it (devices then swap it in).")
def publish(tag: str, url: str, rollout: int, device_classes: tuple[str, ...], min_agent: str, pinned: bool,
            breaking: bool) -> None:
    """Publish a sealed model's edge artifacts to a channel (keys wrapped per enrolled device)."""
    from bentoedge.python_api import publish as publish_model

    ch = Channel.open(url)
    if not ch.recipients():
        console.print("[yellow]warning:[/] no device is enrolled; no device can decrypt this version yet "
                      "(bentoedge channel enroll DEVICE_ID PUBFILE, then publish again)")
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console, transient=False) as progress:
        def on_file(path: str, size: int) -> Callable[[int], None]:
            task = progress.add_task(path, total=size)
            return lambda n: progress.advance(task, n)

        rel = publish_model(tag, url, rollout=rollout, device_classes=device_classes, min_agent=min_agent,
                            pinned=pinned, progress=on_file, breaking=breaking)
    click.echo(f"published {rel.model}:{rel.version} release {rel.release} to {ch.url} "
               f"(rollout {rel.rollout}%, classes {','.join(rel.device_classes) or 'all'}, "
               f"{len(ch.recipients())} devices)")
