"""``bentoedge agent ...``: provision a device, run one update cycle, show status, run.

Imports only what a device has (``bentoedge[edge]``): no TensorFlow, BentoML or boto3
at import time.  ``agent sync`` and ``agent run`` get their parts from ``edge.wiring.wire``;
``agent run`` serves the local API (``edge.server.AgentServer``) and runs the sync loop in
the same process until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import errno
import json
import logging
import secrets
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bentoedge.bentos.errors import (
    KeyMissingError,
    UsageError,
)
from bentoedge.bentos.keystore import default_home, load_ed25519_public, write_private
from bentoedge.edge import config as agent_config
from bentoedge.edge.state import DeviceState
from bentoedge.edge.sync.anchor import trusted_root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@click.group()
def agent() -> None:
    """The on-device agent: init, sync, status, run."""


@agent.command("init")
@click.option("--channel", required=True, help="Update channel: file:///path, http(s)://... or s3://bucket/prefix.")
@click.option("--cloud", required=True, help="Cloud endpoint for fallback, e.g. http://host:3000.")
@click.option("--state", type=click.Path(path_type=Path), default=None, help="State folder (default $BENTOEDGE_HOME/agent).")
@click.option("--device-id", default=None, help="Device id (default: generated).")
@click.option("--device-class", default="default", show_default=True, help="Device class for targeted rollouts.")
@click.option("--port", default=agent_config.DEFAULT_PORT, show_default=True, type=int, help="Local API port.")
@click.option("--model", default="", help="Model name to follow (default: the only one published).")
@click.option("--signer", "signers", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Trusted model-signer public key PEM (repeatable; default $BENTOEDGE_HOME/keys/signing.pub).")
@click.option("--root-sha256", default=None, metavar="HEX",
              help="SHA-256 of the channel's 1.root.json, as 'bentoedge channel init' and 'channel status' print it.")
@click.option("--root", "root_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A channel root metadata file you trust (instead of --root-sha256).")
@click.option("--cloud-aws", default="auto", show_default=True, metavar="auto|off|SERVICE:REGION",
              help="SigV4-sign fallback calls for a cloud behind AWS IAM (needs bentoedge[aws]): auto by the "
                   "URL's host (SageMaker runtime, Lambda function URL), off, or e.g. lambda:eu-west-1.")
@click.option("--force", is_flag=True, help="Replace the channel root and signers of an already provisioned device.")
def init(channel: str, cloud: str, state: Path | None, device_id: str | None, device_class: str, port: int,
         model: str, signers: tuple[Path, ...], root_sha256: str | None, root_file: Path | None,
         cloud_aws: str, force: bool) -> None:
    """Provision this device: key pairs (X25519, Ed25519 identity), embedded channel root, trusted signers, agent.toml.

    \b
    The channel root is never taken on trust: give its fingerprint or a root file,
    and every newer root the channel has is verified from it.
      bentoedge agent init --channel s3://bucket/chan --cloud https://api.example \\
          --root-sha256 3f5a...   # printed by 'bentoedge channel init'
    """
    from bentoedge.edge.aws_sign import check_setting

    check_setting(cloud_aws)  # before any key is made: a typo leaves nothing behind
    if (root_sha256 is None) == (root_file is None):
        raise UsageError("pass the channel root's fingerprint with --root-sha256 HEX (printed by 'bentoedge channel "
                         "init' and 'bentoedge channel status') or a trusted root file with --root FILE, not both")
    state = (state or agent_config.default_state()).resolve()
    st = DeviceState(state)
    if st.root_file.exists() and not force:
        raise UsageError(f"{state} is already provisioned (it trusts {st.root_file}); pass --force to replace "
                         "its channel root and signers")
    st.ensure()
    if not signers:
        default = default_home() / "keys" / "signing.pub"
        if not default.exists():
            raise KeyMissingError(f"no model-signer key to trust: pass --signer PUBFILE (none at {default})")
        signers = (default,)
    trusted = tuple(load_ed25519_public(p.read_bytes(), str(p)).hex() for p in signers)
    root, root_version = trusted_root(channel, root_sha256, root_file)
    # Two keys, both kept if they exist: X25519 unwraps model keys, Ed25519 signs cloud calls.
    for key_file, pub_file, make in ((st.key_file, st.pub_file, X25519PrivateKey.generate),
                                     (st.identity_file, st.identity_pub_file, Ed25519PrivateKey.generate)):
        if not key_file.exists():
            key = make()
            write_private(key_file, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
            write_private(pub_file, key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), mode=0o644)
    if not st.token_file.exists():  # kept on --force: local programs already use it
        write_private(st.token_file, secrets.token_urlsafe(32).encode())
    write_private(st.root_file, root, mode=0o644)
    cfg = agent_config.AgentConfig(device_id=device_id or f"dev-{uuid.uuid4().hex[:12]}", channel=channel,
                                   cloud=cloud, state=str(state), port=port, device_class=device_class,
                                   model=model, trusted_signers=trusted, cloud_aws=cloud_aws)
    path = agent_config.save(cfg)
    click.echo(f"device {cfg.device_id} provisioned: config {path}")
    click.echo(f"trusting channel root v{root_version} (verified from the one you gave) and "
               f"{len(trusted)} model signer(s)")
    click.echo(f"local API token: {st.token_file} (send 'Authorization: Bearer <token>' for /status)")
    click.echo(f"public keys: {st.pub_file} (X25519, model keys), {st.identity_pub_file} (Ed25519, identity)")
    click.echo(f"enroll it on the publisher: bentoedge channel enroll {cfg.device_id} {st.pub_file} "
               f"--identity {st.identity_pub_file} --channel {channel} "
               f"&& bentoedge publish NAME:VERSION --channel {channel}")


def _load(config_path: Path | None) -> agent_config.AgentConfig:
    return agent_config.load(config_path)


@agent.command("sync")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None, help="agent.toml path.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--now", is_flag=True,
              help="If 'agent run' is running on this state folder, make it check now and wait for its result.")
@click.option("--wait", "wait_s", default=300.0, show_default=True, type=click.FloatRange(1, 3600),
              help="With --now: how long to wait for the running agent's cycle, in seconds.")
def sync(config_path: Path | None, as_json: bool, now: bool, wait_s: float) -> None:
    """Run one update cycle, then exit: 0 updated or up to date, 1 refused or failed.

    \b
    Examples:
      bentoedge agent sync                  # no agent running: one cycle here
      bentoedge agent sync --now            # an agent is running: it checks at once (SIGUSR1)
      kill -USR1 $(cat STATE/agent.lock)    # the same, by hand
    """
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from bentoedge.edge.wiring import wire

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = _load(config_path)
    holder = DeviceState(cfg.state_dir).holder()
    if holder is not None:
        if not now:
            raise UsageError(f"an agent (pid {holder}) is running on {cfg.state_dir} and checks every "
                             f"{cfg.poll_seconds:g} s; pass --now to make it check at once")
        _wake_running_agent(cfg, holder, wait_s, as_json)
        return
    console = Console(stderr=True)
    # A bar per downloaded file on a terminal; nothing in a log or under --json.
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console, disable=as_json or not console.is_terminal) as bars:
        def on_file(path: str, total: int, have: int) -> Callable[[int], None]:
            task = bars.add_task(path, total=total, completed=have)
            return lambda n: bars.advance(task, n)

        with wire(cfg, progress=on_file) as wired:
            wired.agent.start_up()
            r = wired.agent.sync_once()
    if as_json:
        click.echo(json.dumps({"result": r.result.value, "version": r.version, "reason": r.reason,
                               "stages": dict(r.stages), "requests": r.requests, "bytes": r.bytes}))
    else:
        click.echo(f"{r.result.value}: {r.reason}")
    sys.exit(0 if r.ok else 1)


def _wake_running_agent(cfg: agent_config.AgentConfig, pid: int, wait_s: float, as_json: bool) -> None:
    """Signal the agent holding the state folder, then wait for the cycle it runs to be recorded."""
    import os
    import time

    from bentoedge.edge.sync.machine import Result

    state = DeviceState(cfg.state_dir)
    before = state.read_status().get("cycles", 0)
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        raise UsageError(f"the agent (pid {pid}) that held {cfg.state_dir} has exited; run this again") from None
    except PermissionError:
        raise UsageError(f"the agent (pid {pid}) runs as another user; run this as that user") from None
    click.echo(f"asked the running agent (pid {pid}) to check now; waiting for its result", err=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        status = state.read_status()
        if status.get("cycles", 0) > before:
            result, reason = status.get("last_result"), status.get("last_reason") or status.get("last_error")
            if as_json:
                click.echo(json.dumps({"result": result, "reason": reason, "pid": pid}))
            else:
                click.echo(f"{result}: {reason}")
            sys.exit(0 if result in {r.value for r in Result if r.ok} else 1)
        if state.holder() != pid:
            raise UsageError(f"the agent (pid {pid}) stopped before finishing its check; see its log")
        time.sleep(0.2)
    raise UsageError(f"the agent (pid {pid}) did not finish a check within {wait_s:g} s; see its log, "
                     "or pass a longer --wait")


@agent.command("status")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None, help="agent.toml path.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(config_path: Path | None, as_json: bool) -> None:
    """Show the active version, the last check and error, and failed versions."""
    cfg = _load(config_path)
    st = DeviceState(cfg.state_dir)
    data: dict[str, Any] = st.read_status()
    p = st.pointer()
    data.update({"device_id": cfg.device_id, "channel": cfg.channel, "pointer": {
        "model": p.model, "active": p.active, "previous": list(p.previous)}, "failed": st.failed()})
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    active = f"{p.model}:{p.active}" if p.active else "none (requests go to the cloud)"
    click.echo(f"device     {cfg.device_id} ({cfg.device_class})")
    click.echo(f"channel    {cfg.channel}")
    click.echo(f"active     {active}   previous: {', '.join(p.previous) or '-'}")
    click.echo(f"last check {data.get('last_check') or 'never'}  result: {data.get('last_result') or '-'}")
    if data.get("last_error"):
        click.echo(f"last error {data['last_error']}")
    for key, why in sorted(st.failed().items()):
        click.echo(f"failed     {key}: {why}")


@agent.command("run")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None, help="agent.toml path.")
@click.option("--port", type=int, default=None, help="Override the local API port.")
def run(config_path: Path | None, port: int | None) -> None:
    """Run the sync loop and the local prediction API until SIGTERM or Ctrl-C."""
    from bentoedge.edge.wiring import wire

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = agent_config.with_overrides(_load(config_path), port=port)
    stop = threading.Event()

    wake = threading.Event()

    def _stop(signum: int, frame: Any) -> None:
        stop.set()
        wake.set()

    def _wake(signum: int, frame: Any) -> None:
        wake.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGUSR1, _wake)  # 'agent sync --now
    try:
        wiring = wire(cfg, serve=True)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise UsageError(f"port {cfg.port} is already in use (another agent, or 'bentoedge serve'?); "
                         f"pass --port N, e.g. --port {_free_port()}") from None
    with wiring as wired:
        wired.agent.start_up()
        wired.server.start()
        from bentoedge.edge.server import freeze_start_up_heap

        freeze_start_up_heap()
        click.echo(f"serving on {wired.server.url}", err=True)
        loop = threading.Thread(target=wired.agent.run_forever, args=(stop, wake), name="bentoedge-sync", daemon=True)
        loop.start()
        from bentoedge.edge.reporter import start_reporting

        start_reporting(cfg, cfg.state_dir, wired.agent.status, wired.server.metrics.summary, stop,
                        inputs=wired.server.gateway.inputs.report)
        try:
            while not stop.wait(0.5):
                pass
        finally:
            # Stop answering first, then give a cycle in flight time to finish; leaving the
            # ``with`` releases the state folder once nothing uses it.
            wired.server.stop()
            loop.join(timeout=30)
