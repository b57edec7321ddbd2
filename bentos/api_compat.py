"""Is a new version's API one that clients of the old version can still call?

A model's API is its signature (``manifest.Signature``): input and output names, dtypes and
shapes.  ``breaking_changes`` lists, in words, every change that an existing client could
trip over; an empty list means the new version may replace the old behind a running
endpoint.  What counts (request side strict, answer side tolerant of additions):

- an input added, removed or renamed; an output removed or renamed (an added output is fine);
- a dtype or a rank that changed, on any input or output;
- an input dimension narrowed (dynamic -> fixed, or one fixed size -> another); widening a
  fixed input dimension to dynamic is fine;
- an output dimension widened (fixed -> dynamic) or changed (one fixed size -> another);
  an output that becomes fixed where it was dynamic is fine.

A breaking change is allowed only when declared: ``bentoedge build --breaking`` raises the
API major (``extra.api_major`` in the signed manifest), ``channel publish`` refuses an
undeclared change against the channel's newest release and marks a declared one ``breaking``
in the signed release record (``publish --breaking`` declares it there for a version built
without), and a device swaps in a version incompatible with the one it serves only when its
manifest's API major is higher or its release record says ``breaking`` (``edge.sync``).
Pure: signatures in, sentences out.
"""

from __future__ import annotations

from bentoedge.bentos.manifest import Manifest, Signature, TensorSpec

#: The manifest ``extra`` key of the API major version (1 when absent).
API_MAJOR = "api_major"


def api_major(manifest: Manifest) -> int:
    value = manifest.extra.get(API_MAJOR, 1)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else 1


def _dims(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _tensor_changes(kind: str, old: TensorSpec, new: TensorSpec) -> list[str]:
    where = f"{kind} {old.name!r}"
    if old.dtype != new.dtype:
        return [f"{where} changed dtype {old.dtype} -> {new.dtype}"]
    if len(old.shape) != len(new.shape):
        return [f"{where} changed rank {_dims(old.shape)} -> {_dims(new.shape)}"]
    for i, (a, b) in enumerate(zip(old.shape, new.shape, strict=True)):
        if a == b:
            continue
        # An input may only widen (fixed -> dynamic: it accepts more); an output may only
        # narrow (dynamic -> fixed: it promises more).
        fine = (a is not None and b is None) if kind == "input" else (a is None and b is not None)
        if not fine:
            how = "narrowed" if kind == "input" and b is not None else "changed"
            return [f"{where} {how} dimension {i}: {_dims(old.shape)} -> {_dims(new.shape)}"]
    return []


def breaking_changes(old: Signature, new: Signature) -> list[str]:
    """Every change from ``old`` to ``new`` that an existing client could trip over."""
    out: list[str] = []
    old_in, new_in = {t.name: t for t in old.inputs}, {t.name: t for t in new.inputs}
    old_out, new_out = {t.name: t for t in old.outputs}, {t.name: t for t in new.outputs}
    out += [f"input {n!r} is gone" for n in old_in if n not in new_in]
    out += [f"input {n!r} is new (old requests lack it)" for n in new_in if n not in old_in]
    out += [f"output {n!r} is gone" for n in old_out if n not in new_out]
    for n, spec in old_in.items():
        if n in new_in:
            out += _tensor_changes("input", spec, new_in[n])
    for n, spec in old_out.items():
        if n in new_out:
            out += _tensor_changes("output", spec, new_out[n])
    return out


def describe(changes: list[str], limit: int = 3) -> str:
    """The first few changes in one line, and how many more."""
    shown = "; ".join(changes[:limit])
    return shown + (f" (and {len(changes) - limit} more)" if len(changes) > limit else "")
