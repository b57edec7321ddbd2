"""Build a sealed model: convert, quantize, gate, then encrypt and sign.

``build`` is what ``bentoedge build`` runs; it seals into the BentoML model store.
``build_to_dir`` does the same into a plain folder without BentoML (the channel and device
code use it in tests).  Both go through ``prepare``, which

1. checks the keys and recipients first (a missing key fails in a second, not after a
   conversion),
2. opens the source and loads the calibration/validation data against its signature (no
   data at all is refused, unless ``synthetic`` ranges ask for random inputs, which the
   manifest then records as ``extra.synthetic_validation``: not a real accuracy figure),
3. converts each requested edge (TFLite) and cloud (ONNX) artifact into memory, in a
   private 0700 temp folder for converter files that is removed in a ``finally`` (an ONNX
   source reaches the edge through onnx2tf in its own interpreter, ``convert.onnx_to_tflite``,
   refused in one line before any conversion when none is set up),
4. runs every artifact and the float source on the validation inputs and gates them
   (``bentos.quality``); over budget raises ``QualityGateError`` with the rows, unless
   ``accept_quality``,
5. records the validation data's statistics per input (``extra.reference_stats``, what a
   device's drift score compares with) and golden samples (a few validation inputs and each artifact's own outputs) per
   target, and returns a ``SealRequest`` that ``bentos.sealed.seal`` writes atomically.

Artifacts run through ``bentos.runtimes`` (via ``convert.tflite_runner``/``onnx_runner``),
the same LiteRT and ONNX Runtime bindings the device and the cloud service serve with,
so the golden outputs are recorded by the code that later checks them.

Nothing is written to the store until every step passed, so a failed build leaves nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bentoedge.bentos import quality
from bentoedge.bentos.api import batch_size
from bentoedge.bentos.api_compat import API_MAJOR, api_major, breaking_changes, describe
from bentoedge.bentos.datasets import load_npz, parse_ranges, synthetic_inputs
from bentoedge.bentos.drift import reference_stats
from bentoedge.bentos.errors import (
    ConversionError,
    DataError,
    FormatError,
    QualityGateError,
    UsageError,
)
from bentoedge.bentos.golden import DEFAULT_ATOL, DEFAULT_RTOL, Golden
from bentoedge.bentos.keystore import LocalKeys, parse_recipient
from bentoedge.bentos.manifest import Manifest, Signature, check_name, check_version
from bentoedge.bentos.recipients import Recipient
from bentoedge.bentos.sealed import Plain, SealedModel, SealRequest, seal

if TYPE_CHECKING:
    from bentoedge.bentos.store import ModelStore

Progress = Callable[[str], None]
#: Validation samples the gate runs when no file was given (fp32-only builds).
SYNTHETIC_SAMPLES = 32


@dataclass(frozen=True)
class BuildOptions:
    source: Path
    name: str
    home: Path  # BENTOEDGE_HOME (keys)
    version: str | None = None  # default f"v{release}"
    calibration: Path | None = None
    validation: Path | None = None
    edge: tuple[str, ...] = ("int8",)
    cloud: tuple[str, ...] = ("fp32",)
    max_drop: float = 0.01
    accept_quality: bool = False
    recipients: tuple[str, ...] = ("kek",)
    golden_count: int = 8
    synthetic: str | None = None  # --synthetic-validation ranges ("0:1", "x=-1:1,y=0:255"), no data given
    budgets: tuple[str, ...] = ()  # --budget NAME=METRIC:VALUE, the user's metrics for an output
    signature: str | None = None  # --signature: a SavedModel's or TFLite file's SignatureDef
    breaking: bool = False  # --breaking: the API may change from the previous version (major + 1)


@dataclass(frozen=True)
class Prepared:
    request: SealRequest
    recipients: tuple[Recipient, ...]
    keys: LocalKeys
    rows: tuple[quality.Row, ...]


def _precisions(values: tuple[str, ...], allowed: tuple[str, ...], flag: str) -> tuple[str, ...]:
    out: list[str] = []
    for v in values:
        for p in str(v).lower().split(","):
            p = p.strip()
            if p in ("", "none"):
                continue
            if p not in allowed:
                raise UsageError(f"{flag} {p!r} is not one of {', '.join(allowed)}, none")
            if p not in out:
                out.append(p)
    return tuple(out)


def _note(progress: Progress | None, msg: str) -> None:
    if progress is not None:
        progress(msg)


def _check_tag(name: str, version: str | None = None) -> None:
    """A bad --name or --version is the user's input (exit 2), not a failed verification."""
    try:
        check_name(name)
        if version is not None:
            check_version(version)
    except FormatError as exc:
        raise UsageError(str(exc)) from None


def prepare(opts: BuildOptions, release: int, version: str, progress: Progress | None = None,
            previous: Manifest | None = None) -> Prepared:
    """Everything up to sealing: keys, conversion, gate, golden samples (no store, no output dir).

    ``previous`` is the newest version of the model already built: its API must still hold,
    unless ``opts.breaking`` declares the change (checked before any conversion)."""
    from bentoedge.bentos import convert

    _check_tag(opts.name, version)
    if not 0.0 <= opts.max_drop <= 1.0:
        raise UsageError(f"--max-drop must be between 0 and 1, got {opts.max_drop}")
    edge = _precisions(opts.edge, convert.EDGE_PRECISIONS, "--edge")
    cloud = _precisions(opts.cloud, convert.CLOUD_PRECISIONS, "--cloud")
    if not edge and not cloud:
        raise UsageError("nothing to build: --edge and --cloud are both none")
    keys = LocalKeys(Path(opts.home))
    keys.signing_key()  # a missing key should fail now, not after minutes of conversion
    recipients = tuple(parse_recipient(spec, keys) for spec in (opts.recipients or ("kek",)))
    for target, wanted in (("edge", edge), ("cloud", cloud)):
        if wanted and not any(target in r.targets for r in recipients):
            raise UsageError(f"no recipient may read the {target} artifacts; add --recipient kek or "
                             f"{'x25519:PUBFILE' if target == 'edge' else 'kms:ARN'} (or --{target} none)")

    _note(progress, f"opening {opts.source}")
    src = convert.open_source(Path(opts.source), opts.signature)
    sig = src.signature
    try:
        budgets = quality.parse_budgets(opts.budgets, [t.name for t in sig.outputs])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    api = _declare_api(opts, version, sig, previous)
    calib = load_npz(Path(opts.calibration), sig, "calibration")[0] if opts.calibration else None
    labels = None
    synthetic: dict[str, Any] | None = None
    if opts.validation:
        val, labels = load_npz(Path(opts.validation), sig, "validation")
    elif calib is not None:
        val = calib
    elif opts.synthetic is not None:
        ranges = parse_ranges(opts.synthetic, sig)
        val = synthetic_inputs(sig, SYNTHETIC_SAMPLES, ranges)
        # Recorded so that no one reads the gate's figures as the model's accuracy.
        synthetic = {"samples": SYNTHETIC_SAMPLES, "ranges": {k: list(v) for k, v in ranges.items()},
                     "note": "random inputs: the quality figures are agreement with the float model, "
                             "not a real accuracy figure"}
    else:
        names = ", ".join(t.name for t in sig.inputs)
        raise DataError(f"no validation data: pass --validation F.npz (one array per input: {names}) so the "
                        "quality gate can compare every artifact with the float model, or "
                        "--synthetic-validation LO:HI to gate on random inputs in that range")
    if src.kind == "onnx" and edge:
        # Before any conversion: without onnx2tf the edge target is refused in one line.
        convert.onnx2tf_python(os.environ, Path(opts.home))

    plains: list[Plain] = []
    runners: dict[str, convert.Runner] = {}
    with convert.private_workdir() as work:
        if src.kind == "onnx" and edge:
            _note(progress, "converting the ONNX model to TensorFlow with onnx2tf (20 s or more)")
            made = convert.onnx_savedmodel(src, work, val, home=Path(opts.home))
            _note(progress, f"onnx2tf done in {made.seconds:.0f} s; inputs fixed at "
                            + ", ".join(f"{t.name} {s}" for t, s in zip(sig.inputs, made.shapes, strict=True)))
        for p in edge:
            _note(progress, f"converting edge-{p} (TFLite)")
            data = convert.to_tflite(src, p, calib, work, example=val)
            # A TFLite source passes through whole: its artifact runs the signature picked.
            key = src.signature_key if src.kind == "tflite" else None
            plains.append(Plain(f"edge-{p}", "edge", data, "litert", p, signature=key))
            runners[f"edge-{p}"] = convert.tflite_runner(data, sig, key)
        fp32_onnx: bytes | None = None
        for p in sorted(cloud, key=lambda q: q != "fp32"):
            _note(progress, f"converting cloud-{p} (ONNX)")
            if fp32_onnx is None:
                fp32_onnx = convert.onnx_fp32(src, work)
            data = convert.to_onnx(src, p, calib, work, fp32=fp32_onnx)
            plains.append(Plain(f"cloud-{p}", "cloud", data, "onnxruntime", p))
            runners[f"cloud-{p}"] = convert.onnx_runner(data, sig)

    _note(progress, "quality gate on one validation call" if sig.per_call
          else f"quality gate on {batch_size(val)} validation samples")
    reference = convert.reference(src)
    ref_out = reference(val)
    if (why := quality.check_labels(ref_out, labels) or quality.check_budgets(ref_out, budgets)) is not None:
        raise DataError(why)
    rows: list[quality.Row] = []
    outputs: dict[str, dict[str, np.ndarray]] = {}
    for art_id, run in runners.items():
        try:
            outputs[art_id] = run(val)
        except Exception as exc:
            raise ConversionError(f"{art_id} does not run on the validation data: {exc}") from None
        rows.extend(quality.compare(art_id, ref_out, outputs[art_id], labels, opts.max_drop, budgets))
    bad = quality.failed(rows)
    if bad and not opts.accept_quality:
        raise QualityGateError(f"quality gate failed: {quality.summary(rows)}; {quality.next_step(bad)}",
                               report=rows)

    _note(progress, "recording golden samples")
    # A per-call model's golden sample is its whole validation call: nothing there to slice.
    n = 1 if sig.per_call else max(1, min(opts.golden_count, batch_size(val)))
    g_in = dict(val) if sig.per_call else {k: v[:n] for k, v in val.items()}
    tolerances: dict[str, dict[str, float]] = {}
    golden: dict[str, Any] = {"edge": None, "cloud": None, "count": n, "tolerances": tolerances}
    for target in ("edge", "cloud"):
        ids = [p.id for p in plains if p.target == target]
        if not ids:
            continue
        expected = {a: {k: v if sig.per_call else v[:n] for k, v in outputs[a].items()} for a in ids}
        for art in plains:
            if art.id in ids:
                # Scale the absolute tolerance with the outputs, so logits and
                # probabilities get the same relative slack on another CPU's kernels.
                peak = max(float(np.max(np.abs(v))) if v.size else 0.0 for v in expected[art.id].values())
                tolerances[art.id] = {"atol": DEFAULT_ATOL[art.precision or "fp32"] * max(1.0, peak),
                                      "rtol": DEFAULT_RTOL}
        plains.append(Plain(f"golden-{target}", target, Golden(g_in, expected).to_bytes()))
        golden[target] = f"golden-{target}"

    extra: dict[str, Any] = {**api, "quality_accepted": True} if bad else dict(api)
    if synthetic is not None:
        extra["synthetic_validation"] = synthetic
    else:
        # What devices compare their inputs with (fleet reports carry a drift score per input,
        # never the inputs); random inputs are no reference for real traffic.
        extra["reference_stats"] = reference_stats(val)
    req = SealRequest(
        name=opts.name, version=version, release=release, source=src.describe(), signature=sig,
        artifacts=plains, quality=[r.to_dict() for r in rows], golden=golden, extra=extra,
    )
    return Prepared(req, recipients, keys, tuple(rows))



def _declare_api(opts: BuildOptions, version: str, sig: Signature, previous: Manifest | None) -> dict[str, Any]:
    """The manifest's API record (``api_major``, and ``breaking_from`` when declared), or a
    UsageError for an undeclared change that would break clients of ``previous``."""
    if previous is None:
        return {API_MAJOR: 1}
    major = api_major(previous)
    changes = breaking_changes(previous.signature, sig)
    if changes and not opts.breaking:
        raise UsageError(f"{opts.name}:{version} would change the API of {previous.tag}: {describe(changes)}; keep "
                         f"the names, dtypes and shapes, or pass --breaking to declare it (API major {major} -> "
                         f"{major + 1})")
    if opts.breaking:
        return {API_MAJOR: major + 1, "breaking_from": previous.tag}
    return {API_MAJOR: major}


def build(opts: BuildOptions, store: ModelStore | None = None, progress: Progress | None = None) -> SealedModel:
    """Build ``opts`` and add it to the BentoML model store; returns the opened sealed model."""
    from bentoedge.bentos.store import ModelStore

    store = store if store is not None else ModelStore()
    _check_tag(opts.name)
    release = store.next_release(opts.name)
    version = opts.version or f"v{release}"
    _check_tag(opts.name, version)
    if store.exists(opts.name, version):
        raise UsageError(f"{opts.name}:{version} is already in the store; pick another --version")
    previous = store.get(opts.name).manifest if release > 1 else None
    prepared = prepare(opts, release, version, progress, previous)
    _note(progress, f"encrypting and signing {opts.name}:{version}")
    signer = prepared.keys.signing_key()
    return store.add(opts.name, version, release,
                     lambda out: seal(prepared.request, out, prepared.recipients, signer))


def build_to_dir(opts: BuildOptions, out_dir: Path, release: int = 1, progress: Progress | None = None) -> SealedModel:
    """Build ``opts`` into the folder ``out_dir`` (which must not exist); no BentoML needed."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise UsageError(f"{out_dir} already exists; give a new output folder")
    version = opts.version or f"v{release}"
    prepared = prepare(opts, release, version, progress)
    _note(progress, f"encrypting and signing {opts.name}:{version}")
    seal(prepared.request, out_dir, prepared.recipients, prepared.keys.signing_key())
    return SealedModel.open(out_dir)
