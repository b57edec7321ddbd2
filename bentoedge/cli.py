"""The ``bentoedge`` command: one entry point over the build, cloud and device commands.

Each area keeps its own verbs beside its code (``bentos/cli.py``, ``cloud/cli.py``,
``edge/cli.py``); this root loads a verb's module only when that verb runs, so a device
with only ``bentoedge[edge]`` installed can run ``bentoedge agent ...`` without
TensorFlow, BentoML or boto3, and ``--help`` stays fast.

Errors bentoedge understands (``bentos.errors``) are printed as one line and exit with
their code: 1 when a verification or quality gate failed, 2 for bad usage or input.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from bentoedge.bentos.errors import BentoEdgeError

# verb -> (module, attribute, one-line help shown in `bentoedge --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "keys": ("bentoedge.bentos.cli", "keys", "Create and show the local signing key and KEK."),
    "build": ("bentoedge.bentos.cli", "build", "Convert, quantize, gate, encrypt and sign a model."),
    "setup": ("bentoedge.bentos.cli", "setup", "Install the build tools bentoedge runs in environments of their own (onnx2tf)."),
    "inspect": ("bentoedge.bentos.cli", "inspect", "Show a sealed model's manifest and quality report (no key needed)."),
    "verify": ("bentoedge.bentos.cli", "verify", "Check a sealed model's signature and hashes; exit 1 if bad."),
    "export": ("bentoedge.bentos.cli", "export", "Write a sealed model to one file."),
    "import": ("bentoedge.bentos.cli", "import_", "Read a sealed model from a file into the store."),
    "list": ("bentoedge.bentos.cli", "list_", "List the sealed models in the store."),
    "serve": ("bentoedge.cloud.cli", "serve", "Serve a sealed model with `bentoml serve`."),
    "bento": ("bentoedge.cloud.cli", "bento", "Build a Bento of a sealed model for cpu, gpu, SageMaker or Lambda."),
    "containerize": ("bentoedge.cloud.cli", "containerize", "Build a sealed model's Bento and its container image."),
    "deploy": ("bentoedge.cloud.cli", "deploy", "Deploy to SageMaker Serverless or Lambda, update, delete."),
    "channel": ("bentoedge.cloud.channel.cli", "channel", "Create and manage a signed update channel (TUF)."),
    "publish": ("bentoedge.cloud.channel.cli", "publish", "Publish a sealed model's edge artifact to a channel."),
    "fleet": ("bentoedge.cloud.fleet.cli", "fleet", "What the devices report: versions, health, quiet devices, drift."),
    "rollout": ("bentoedge.cloud.fleet.cli", "rollout", "Roll a version out in waves that advance or abort from reports."),
    "agent": ("bentoedge.edge.cli", "agent", "The on-device agent: init, run, sync, status."),
    "demo": ("bentoedge.demo", "demo", "Run the whole story on embedded defaults."),
}

#: Modules a verb's dependencies probe for at import although the verb never uses them:
#: securesystemslib (under tuf) tries ``import boto3`` for its AWS KMS signer, and where boto3
#: happens to be installed that costs ``agent run`` about 80 ms of start-up and 20 MB of RSS.
#: The agent only verifies signatures (it never signs with KMS), and its ``s3://`` fetcher
#: imports boto3 itself when a channel needs it, after the verb has loaded.
UNUSED_PROBES: dict[str, tuple[str, ...]] = {"bentoedge.edge.cli": ("boto3", "botocore")}


@contextmanager
def _hidden(names: tuple[str, ...]) -> Iterator[None]:
    """While loading, ``import NAME`` raises ImportError (a probe takes its fallback);
    afterwards NAME imports normally again.  Names already imported are left alone."""
    added = [n for n in names if n not in sys.modules]
    for name in added:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in added:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


def load_command(module: str, attr: str) -> Any:
    """A verb's command object, its module imported without the probes it does not need."""
    with _hidden(UNUSED_PROBES.get(module, ())):
        return getattr(importlib.import_module(module), attr)


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[cmd_name]
        try:
            return load_command(module, attr)
        except ImportError as exc:
            missing = exc.name or str(exc)
            extra = {"bentoedge.bentos.cli": "build", "bentoedge.cloud.cli": "cloud",
                     "bentoedge.cloud.channel.cli": "cloud", "bentoedge.cloud.fleet.cli": "cloud", "bentoedge.edge.cli": "edge"}.get(module, "all")
            click.secho(f"error: 'bentoedge {cmd_name}' needs {missing}, which is not installed: "
                        f"pip install 'bentoedge[{extra}]'", fg="red", err=True)
            ctx.exit(2)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, _, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BentoEdgeError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(exc.exit_code)
        except OSError as exc:  # a path, port or permission the user gave us: bad input, not a crash
            where = f" ({exc.filename})" if exc.filename else ""
            click.secho(f"error: {exc.strerror or exc}{where}", fg="red", err=True)
            ctx.exit(2)
        except (click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            # A bug of ours, not the user's mistake: still one line, with the way to the detail.
            if os.environ.get("BENTOEDGE_DEBUG"):
                raise
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            click.secho(f"error: unexpected {type(exc).__name__}: {first} (rerun with BENTOEDGE_DEBUG=1 "
                        "for the traceback, and please report it)", fg="red", err=True)
            ctx.exit(1)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="bentoedge")
def cli() -> None:
    """bentoedge: one model, sealed once, served in the cloud and on edge devices.

    \b
    Typical flow:
      bentoedge keys init
      bentoedge build model.keras --name digits --calibration cal.npz --validation val.npz
      bentoedge serve digits                       # cloud endpoint (bentoml serve)
      bentoedge channel init file:///srv/channel && bentoedge publish digits:v1 --channel ...
      bentoedge agent init --channel ... --cloud http://... && bentoedge agent run

    Keys and defaults live under $BENTOEDGE_HOME (~/.bentoedge); sealed models in the
    BentoML store under $BENTOML_HOME.  Exit codes: 0 ok, 1 verification or quality gate
    failed, 2 bad usage or input.
    """
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")


def main() -> None:
    cli(prog_name="bentoedge")


if __name__ == "__main__":
    main()
