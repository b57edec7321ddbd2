"""The build-side verbs of ``bentoedge``: keys, build, setup, inspect, verify, export, import, list.

Each verb is a thin shell: it parses flags, calls ``bentos.build``/``bentos.store``/
``bentos.sealed`` and prints.  Errors are ``bentos.errors`` exceptions that the root
command (``bentoedge.cli``) prints as one line with their exit code (1 verification or
quality gate failed, 2 bad usage or input).  A model is named ``NAME[:VERSION]`` (looked
up in the BentoML store) or by PATH (a sealed folder, or a file made by ``export``).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO, Any

import click
from rich.console import Console
from rich.markup import escape as rich_escape
from rich.table import Table

from bentoedge.bentos import quality
from bentoedge.bentos.errors import NotFoundError, QualityGateError
from bentoedge.bentos.keystore import LocalKeys, default_home
from bentoedge.bentos.sealed import SealedModel
from bentoedge.bentos.signing import SignatureInfo


def _console(err: bool = False, file: IO[str] | None = None) -> Console:
    return Console(stderr=err, file=file, highlight=False, soft_wrap=True, log_path=False)


def _flush_c_streams() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no libc to ask (not Linux/macOS): nothing buffered to lose
        pass


@contextmanager
def quiet_converters(quiet: bool) -> Iterator[IO[str] | None]:
    """While converters run, send file descriptors 1 and 2 to a private temporary file.

    TensorFlow, the TFLite converter and interpreter, absl and ONNX Runtime write their logs
    from C++ straight to the process's stdout and stderr (and Python warnings go there too),
    so no logging setting reaches all of them; a build shows its own progress instead.
    Yields a stream on the real stderr for that progress (None when not ``quiet``: the
    caller then uses stderr as usual, and ``--verbose`` sees everything).
    """
    if not quiet:
        yield None
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    real_err = os.fdopen(os.dup(saved[2]), "w", buffering=1)
    try:
        with tempfile.TemporaryFile() as sink:
            for fd in (1, 2):
                os.dup2(sink.fileno(), fd)
            try:
                yield real_err
            finally:
                for stream in (sys.stdout, sys.stderr):
                    stream.flush()
                _flush_c_streams()  # what C++ buffered must land in the sink, not after it
                for fd, keep in saved.items():
                    os.dup2(keep, fd)
    finally:
        for keep in saved.values():
            os.close(keep)
        real_err.close()


def _keys() -> LocalKeys:
    return LocalKeys(default_home())


def open_model(ref: str) -> AbstractContextManager[SealedModel]:
    """A sealed model by PATH (folder or exported file) or NAME[:VERSION] in the store."""
    from bentoedge.bentos.store import open_ref

    return open_ref(ref)


def untrusted(value: object) -> str:
    """Text from a manifest, safe to print: control characters (escape sequences, CR/LF that
    would forge a line) shown as escapes, and Rich markup shown as text, never interpreted."""
    text = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in str(value))
    return rich_escape(text)


def quality_table(rows: Sequence[quality.Row], title: str = "Quality report") -> Table:
    table = Table(title=title, title_justify="left")
    for col in quality.HEADER:
        table.add_column(col, justify="right" if col in ("float baseline", "value", "budget") else "left")
    for cells, row in zip(quality.table_rows(rows), rows, strict=True):
        table.add_row(*(untrusted(c) for c in cells), style=None if row.passed else "bold red")
    return table


def _rows(manifest_quality: Sequence[Any]) -> list[quality.Row]:
    return [quality.Row(**dict(r)) for r in manifest_quality]


# ---- keys -------------------------------------------------------------------------------------


@click.group()
def keys() -> None:
    """Create, show and trust signing keys; keys live in $BENTOEDGE_HOME/keys.

    \b
    bentoedge keys init          make the signing key and the local KEK (never overwrites)
    bentoedge keys show          print key ids and trusted signers
    bentoedge keys trust FILE    accept models signed by another key (a signing.pub PEM)
    bentoedge keys api ...       API keys for applications that call the cloud service
    """


@keys.command("init")
def keys_init() -> None:
    """Create the Ed25519 signing key and the local KEK (files 0600); print their ids.

    Existing keys are kept: losing a KEK loses every model sealed for it.
    """
    ks = _keys()
    ids = ks.init()
    made = ", ".join(ids.created) or "nothing new (keys already exist)"
    click.echo(f"keys in {ks.dir}: created {made}")
    click.echo(f"signing key id: {ids.signing}")
    click.echo(f"kek id:         {ids.kek}")


@keys.command("show")
def keys_show() -> None:
    """Print the signing key id, the KEK id and the trusted signers."""
    from bentoedge.bentos.recipients import kek_id
    from bentoedge.bentos.signing import key_id

    ks = _keys()
    click.echo(f"keys in {ks.dir}")
    click.echo(f"signing key id: {key_id(ks.signing_key().public_key())}")
    click.echo(f"kek id:         {kek_id(ks.kek())}")
    for kid in ks.trusted_signers():
        click.echo(f"trusted signer: {kid}")


@keys.command("trust")
@click.argument("pubfile", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def keys_trust(pubfile: Path) -> None:
    """Trust models signed by the Ed25519 public key in PUBFILE (PEM, e.g. another signing.pub)."""
    click.echo(f"trusted signer {_keys().trust(pubfile.read_bytes())}")


@keys.group("api")
def keys_api() -> None:
    """API keys that let applications call the cloud service (stored as SHA-256 hashes only).

    \b
    The service reads $BENTOEDGE_HOME/keys/api_keys.json (or BENTOEDGE_API_KEYS_FILE);
    clients send 'Authorization: Bearer <key>'.
    """


def _api_store() -> Any:
    from bentoedge.bentos.apikeys import ApiKeyStore

    path = os.environ.get("BENTOEDGE_API_KEYS_FILE") or str(_keys().dir / "api_keys.json")
    return ApiKeyStore(Path(path))


@keys_api.command("create")
@click.argument("name")
def keys_api_create(name: str) -> None:
    """Make a key for application NAME and print it once (it is not stored, only its hash)."""
    store = _api_store()
    key, rec = store.create(name)
    click.echo(key)
    click.echo(f"API key {rec['id']} for {name} stored (hashed) in {store.path}; the key above is shown only now",
               err=True)


@keys_api.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def keys_api_list(as_json: bool) -> None:
    """List API keys: id, name, created, revoked (never the keys)."""
    recs = [{k: r.get(k) for k in ("id", "name", "created", "revoked")} for r in _api_store().records()]
    if as_json:
        click.echo(json.dumps(recs, indent=2))
        return
    for r in recs:
        click.echo(f"{r['id']}  {r['name']:<24} {r['created']}{'  REVOKED' if r['revoked'] else ''}")
    if not recs:
        click.echo("no API keys (bentoedge keys api create NAME)")


@keys_api.command("revoke")
@click.argument("which")
def keys_api_revoke(which: str) -> None:
    """Revoke the API key named WHICH (or with that id); the service refuses it from its next request."""
    rec = _api_store().revoke(which)
    click.echo(f"revoked API key {rec['id']} ({rec['name']})")


# ---- build ------------------------------------------------------------------------------------


@click.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Model name (lowercase letters, digits, . _ -).")
@click.option("--version", "version", default=None, help="Version name; default v<release>.")
@click.option("--calibration", type=click.Path(path_type=Path), default=None,
              help=".npz of representative inputs (one array per input; 'x' for a single input). "
                   "Needed for --edge int8.")
@click.option("--validation", type=click.Path(path_type=Path), default=None,
              help=".npz of validation inputs, with optional 'labels', for the quality gate.")
@click.option("--edge", "edge", multiple=True, default=(), metavar="int8|fp16|dynamic|fp32|none",
              help="Edge (TFLite) precision; repeat for several. Default int8. An .onnx SOURCE needs "
                   "onnx2tf for this: `bentoedge setup onnx2tf` once.")
@click.option("--cloud", "cloud", multiple=True, default=(), metavar="fp32|fp16|int8|none",
              help="Cloud (ONNX) precision; repeat for several. Default fp32.")
@click.option("--max-drop", type=float, default=0.01, show_default=True,
              help="Largest accuracy drop (or 1 - cosine similarity) a quantized artifact may show.")
@click.option("--recipient", "recipients", multiple=True, default=(), metavar="kek|kms:ARN|x25519:PUBFILE",
              help="Who may decrypt; repeat for several. Default kek (the local key).")
@click.option("--accept-quality", is_flag=True, help="Seal even when the quality gate fails (recorded).")
@click.option("--golden", "golden_count", type=int, default=8, show_default=True,
              help="Validation samples kept as golden samples for health checks.")
@click.option("--synthetic-validation", "synthetic", metavar="LO:HI|NAME=LO:HI,...",
              help="No --validation data: gate on random inputs in these ranges (recorded in the "
                   "manifest as not a real accuracy figure).")
@click.option("--verbose", is_flag=True, help="Show the converters' own output (TensorFlow, TFLite, ONNX Runtime).")
@click.option("--breaking", is_flag=True,
              help="Declare that this version changes the API of the previous one (input/output names, "
                   "dtypes or shapes): raises the API major; without it such a build is refused.")
@click.option("--signature", metavar="NAME",
              help="The SignatureDef to build from, for a SavedModel or .tflite file that holds several "
                   "(default: serving_default, or the only one).")
@click.option("--budget", "budgets", multiple=True, metavar="OUTPUT=METRIC:VALUE",
              help="Gate OUTPUT on METRIC instead of the automatic rows; repeat for several. Metrics: "
                   "cosine, max_abs_error, mean_abs_error, relative_mean_error (min or max as named), "
                   "top1_agreement, argmax_iou (masks), box_iou (boxes).")
def build(source: Path, name: str, version: str | None, calibration: Path | None, validation: Path | None,
          edge: tuple[str, ...], cloud: tuple[str, ...], max_drop: float, recipients: tuple[str, ...],
          accept_quality: bool, golden_count: int, synthetic: str | None, verbose: bool, breaking: bool,
          signature: str | None, budgets: tuple[str, ...]) -> None:
    """Convert, quantize, gate, encrypt and sign SOURCE into the model store.

    SOURCE is a Keras model (.keras, .h5), a SavedModel folder, an .onnx or a .tflite file.
    Every artifact is compared with the float model on --validation; over budget the build
    exits 1 with the table and stores nothing, unless --accept-quality.

    An .onnx SOURCE reaches the edge through onnx2tf, in a virtualenv of its own (made once by
    `bentoedge setup onnx2tf`, or $BENTOEDGE_ONNX2TF_PYTHON); the TFLite input keeps the ONNX
    layout, and dynamic dimensions are fixed (batch 1, others the --validation data's size).

    \b
    Examples:
      bentoedge build digits.keras --name digits --calibration cal.npz --validation val.npz \\
          --edge int8 --cloud fp32 --recipient kek
      bentoedge build face.tflite --name face --synthetic-validation 0:1 --edge fp16
      bentoedge build det.onnx --name det --validation val.npz --edge int8 \\
          --budget boxes=box_iou:0.9 --budget scores=max_abs_error:0.05
    """
    from bentoedge.bentos.build import BuildOptions
    from bentoedge.bentos.build import build as run_build

    opts = BuildOptions(
        source=source, name=name, home=default_home(), version=version, calibration=calibration,
        validation=validation, edge=edge or ("int8",), cloud=cloud or ("fp32",), max_drop=max_drop,
        accept_quality=accept_quality, recipients=recipients or ("kek",), golden_count=golden_count,
        synthetic=synthetic, budgets=budgets, signature=signature, breaking=breaking)
    try:
        with quiet_converters(not verbose) as progress_stream:
            err = _console(err=True, file=progress_stream)
            with err.status("building", spinner="dots") as status:
                def progress(msg: str) -> None:
                    err.log(msg)
                    status.update(msg)

                sealed = run_build(opts, progress=progress)
    except QualityGateError as exc:
        err = _console(err=True)
        rows = exc.report if isinstance(exc.report, list) else []
        err.print(quality_table(rows, "Quality gate FAILED"))
        raise
    out = _console()
    out.print(quality_table(_rows(sealed.manifest.quality)))
    m = sealed.manifest
    out.print(f"sealed {m.tag} (release {m.release}): "
              + ", ".join(f"{a.id} {a.size / 1024:.0f} KiB" for a in m.artifacts if a.is_model))
    if m.extra.get("quality_accepted"):
        out.print("[yellow]warning: sealed although the quality gate failed (--accept-quality)[/]")
    if m.extra.get("synthetic_validation"):
        out.print(f"[yellow]note: {SYNTHETIC_NOTE}[/]")


#: What build and inspect say of a model gated on --synthetic-validation (fixed text, never the manifest's).
SYNTHETIC_NOTE = ("the quality gate ran on random inputs (--synthetic-validation): its figures are agreement "
                  "with the float model, not a real accuracy figure")


# ---- setup ------------------------------------------------------------------------------------


@click.group()
def setup() -> None:
    """Install the build tools bentoedge runs in environments of their own.

    \b
    bentoedge setup onnx2tf     onnx2tf for ONNX sources' edge artifacts ($BENTOEDGE_HOME/tools/onnx2tf)
    """


@setup.command("onnx2tf")
@click.option("--python", "base_python", default=None, metavar="PYTHON",
              help="Interpreter (3.10-3.12) to base the virtualenv on; default this one.")
@click.option("--force", is_flag=True, help="Make it again even if it is ready.")
def setup_onnx2tf(base_python: str | None, force: bool) -> None:
    """Make the onnx2tf virtualenv `bentoedge build` uses for ONNX sources' edge artifacts.

    It goes in $BENTOEDGE_HOME/tools/onnx2tf (about 2.6 GB; a few minutes), because onnx2tf
    pins TensorFlow, onnx and numpy releases of its own. $BENTOEDGE_ONNX2TF_PYTHON, when set,
    names another interpreter to use instead.
    """
    from bentoedge.bentos.convert.onnx_to_tflite import ONNX2TF_ENV
    from bentoedge.bentos.convert.onnx_to_tflite import setup_onnx2tf as make

    python = make(default_home(), base_python, force=force, progress=click.echo)
    click.echo(f"bentoedge build now converts ONNX sources for the edge with {python} "
               f"(or set {ONNX2TF_ENV}={python})")


# ---- inspect / verify -------------------------------------------------------------------------


@click.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest and signer as JSON.")
def inspect(model: str, as_json: bool) -> None:
    """Show MODEL's manifest, quality report and signer; no key needed.

    MODEL is NAME[:VERSION] from the store, a sealed folder or an exported file.
    The signer is shown as recorded; use `bentoedge verify` to check it.
    """
    with open_model(model) as sealed:
        m = sealed.manifest
        signer = SignatureInfo.from_bytes(sealed.signature_bytes)
        if as_json:
            doc = {"manifest": m.to_dict(), "signer": {"alg": signer.alg, "keyid": signer.keyid,
                                                       "public_key": signer.public_key.hex()}}
            click.echo(json.dumps(doc, indent=2, sort_keys=True))
            return
        out = _console()
        u = untrusted  # every string below comes from a file nobody has verified yet
        out.print(f"[bold]{u(m.tag)}[/] release {u(m.release)}, created {u(m.created)}, "
                  f"recorded signer {u(signer.keyid)} [dim](not checked: run bentoedge verify)[/]")
        out.print(f"source: {u(m.source.get('kind'))} {u(m.source.get('file', ''))} sha256 {u(m.source.get('sha256'))}")
        for kind, specs in (("input", m.signature.inputs), ("output", m.signature.outputs)):
            for t in specs:
                out.print(f"{kind} {u(t.name)}: {u(t.dtype)} {u(tuple('N' if d is None else d for d in t.shape))}")
        arts = Table(title="Artifacts", title_justify="left")
        for col in ("id", "target", "runtime", "precision", "size", "sha256"):
            arts.add_column(col)
        for a in m.artifacts:
            arts.add_row(u(a.id), u(a.target), u(a.runtime or "-"), u(a.precision or "-"), f"{a.size:,}", u(a.sha256[:16]))
        out.print(arts)
        if m.quality:
            out.print(quality_table(_rows(m.quality)))
        if m.extra.get("quality_accepted"):
            out.print("[yellow]sealed although the quality gate failed (--accept-quality)[/]")
        if m.extra.get("synthetic_validation"):
            out.print(f"[yellow]{SYNTHETIC_NOTE}[/]")


@click.command()
@click.argument("model")
def verify(model: str) -> None:
    """Check MODEL's signature against the trusted keys and every artifact's hash; exit 1 if bad.

    Trusted keys are this machine's signing key and those added with `bentoedge keys trust`.
    """
    from bentoedge.python_api import verify as verify_model

    ok = verify_model(model, home=default_home())
    click.echo(f"ok: {ok.tag} is signed by trusted key {ok.signer_keyid}; "
               f"{ok.artifacts} artifacts match their signed hashes")


# ---- store ------------------------------------------------------------------------------------


@click.command()
@click.argument("model")
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="File to write (one tar of the sealed folder).")
def export(model: str, output: Path) -> None:
    """Write MODEL (NAME:VERSION in the store) to one file that `bentoedge import` reads."""
    from bentoedge.bentos.store import export_file

    with open_model(model) as sealed:
        export_file(sealed, output)
        click.echo(f"exported {sealed.manifest.tag} to {output} ({output.stat().st_size:,} bytes)")


@click.command("import")
@click.argument("file", type=click.Path(path_type=Path))
def import_(file: Path) -> None:
    """Verify FILE (made by `bentoedge export`) and add it to the store; nothing is kept on failure."""
    from bentoedge.bentos.store import ModelStore

    if not file.is_file():
        raise NotFoundError(f"{file} does not exist; give a file made by 'bentoedge export'")
    trusted = _keys().trusted_signers()

    def check(candidate: SealedModel) -> None:
        candidate.verify(trusted)

    sealed = ModelStore().import_file(file, check)
    click.echo(f"imported {sealed.manifest.tag} (release {sealed.manifest.release})")


@click.command("list")
def list_() -> None:
    """List the sealed models in the BentoML store ($BENTOML_HOME)."""
    from bentoedge.bentos.store import ModelStore

    table = Table(title="Sealed models", title_justify="left")
    for col in ("model", "release", "created", "artifacts", "quality"):
        table.add_column(col)
    for m in ModelStore().list():
        ok = all(bool(r.get("passed")) for r in m.quality)
        table.add_row(m.tag, str(m.release), m.created, ", ".join(a.id for a in m.models("edge") + m.models("cloud")),
                      "passed" if ok else "accepted below budget")
    _console().print(table)
