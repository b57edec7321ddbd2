"""Calibration and validation data: ``.npz`` files checked against a model's signature.

A data file holds one array per model input, named like the input (a single-input model
may use ``x``), all with the same number of samples, plus an optional ``labels`` array
(validation only).  A model with a scalar input (``Signature.per_call``) has no samples
axis, so its file holds one call's arrays exactly as the model takes them.  ``check_arrays`` is the pure decision (arrays in, inputs and labels
out, or a ``DataError`` saying exactly which array is wrong and what was expected);
``load_npz`` is the thin I/O around it.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bentoedge.bentos.errors import DataError
from bentoedge.bentos.manifest import Signature

LABELS = "labels"


def load_npz(path: Path, sig: Signature, role: str) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Read ``path`` (``role`` is "calibration" or "validation", for messages) and check it."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise DataError(f"{role} file {path} does not exist") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{role} file {path} is not a readable .npz ({exc}); save it with numpy.savez") from None
    return check_arrays(arrays, sig, role)


def check_arrays(arrays: Mapping[str, np.ndarray], sig: Signature,
                 role: str) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    names = [t.name for t in sig.inputs]
    if sig.per_call:
        return _one_call(arrays, sig, role), None
    inputs: dict[str, np.ndarray] = {}
    for t in sig.inputs:
        key = _array_key(arrays, sig, t.name, role)
        arr = _numeric(arrays[key], key, t.name, t.dtype, role)
        if arr.ndim != len(t.shape):
            raise DataError(f"{role} array {key!r} has shape {arr.shape}; input {t.name!r} expects "
                            f"{_shape_text(t.shape)} (samples first)")
        for i, (have_d, want_d) in enumerate(zip(arr.shape, t.shape, strict=True)):
            if want_d is not None and have_d != want_d and not (i == 0 and want_d == 1):
                raise DataError(f"{role} array {key!r} has shape {arr.shape}; input {t.name!r} expects "
                                f"{_shape_text(t.shape)}")
        inputs[t.name] = arr.astype(t.dtype, copy=False)
    counts = {len(a) for a in inputs.values()}
    if len(counts) != 1 or 0 in counts:
        raise DataError(f"{role} arrays must hold the same number of samples (>0), got "
                        + ", ".join(f"{k}: {len(v)}" for k, v in inputs.items()))
    n = counts.pop()
    labels = None
    if LABELS in arrays and LABELS not in names:
        labels = np.asarray(arrays[LABELS])
        if labels.ndim != 1 or len(labels) != n or labels.dtype.kind not in "iu":
            raise DataError(f"{role} 'labels' must be {n} integer class ids, got shape {labels.shape} "
                            f"dtype {labels.dtype}")
    return inputs, labels


def _array_key(arrays: Mapping[str, np.ndarray], sig: Signature, name: str, role: str) -> str:
    if name in arrays:
        return name
    if len(sig.inputs) == 1 and "x" in arrays:
        return "x"
    have = ", ".join(sorted(arrays)) or "nothing"
    raise DataError(f"{role} data has no array for input {name!r} (has {have}); "
                    f"save one array per input named {', '.join(t.name for t in sig.inputs)}")


def _numeric(value: np.ndarray, key: str, name: str, dtype: str, role: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiub":
        raise DataError(f"{role} array {key!r} has dtype {arr.dtype}; input {name!r} takes {dtype}")
    return arr


def _one_call(arrays: Mapping[str, np.ndarray], sig: Signature, role: str) -> dict[str, np.ndarray]:
    """A per-call model's data: each array exactly one call's input, fixed dimensions matched."""
    scalar = next(t.name for t in sig.inputs if not t.shape)
    if LABELS in arrays and LABELS not in {t.name for t in sig.inputs}:
        raise DataError(f"{role} data has 'labels', but input {scalar!r} is a scalar, so the file holds one "
                        "call rather than samples that labels could name; drop the labels array")
    inputs: dict[str, np.ndarray] = {}
    for t in sig.inputs:
        key = _array_key(arrays, sig, t.name, role)
        arr = _numeric(arrays[key], key, t.name, t.dtype, role)
        fits = arr.ndim == len(t.shape) and all(
            d is None or have == d for have, d in zip(arr.shape, t.shape, strict=True))
        if not fits or 0 in arr.shape:
            raise DataError(f"{role} array {key!r} has shape {arr.shape}; input {t.name!r} expects "
                            f"{_shape_text(t.shape)} as one call (input {scalar!r} is a scalar, so the "
                            "file holds one call's arrays, not samples)")
        inputs[t.name] = arr.astype(t.dtype, copy=False)
    return inputs


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"


Range = tuple[float, float]


def parse_ranges(spec: str, sig: Signature) -> dict[str, Range]:
    """``--synthetic-validation``'s ranges: ``LO:HI`` for every input, or ``NAME=LO:HI,...``
    naming each input (inputs not named take the first range given)."""
    names = [t.name for t in sig.inputs]
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise DataError("--synthetic-validation needs a range, such as 0:1 or x=-1:1")
    ranges: dict[str, Range] = {}
    default: Range | None = None
    for part in parts:
        name, _, text = part.rpartition("=")
        lo_text, sep, hi_text = text.partition(":")
        try:
            lo, hi = float(lo_text), float(hi_text)
        except ValueError:
            lo, hi = float("nan"), float("nan")
        if not sep or not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
            raise DataError(f"--synthetic-validation range {part!r} is not LO:HI with LO <= HI (e.g. 0:1 or x=-1:1)")
        if not name:
            default = default or (lo, hi)
        elif name not in names:
            raise DataError(f"--synthetic-validation names {name!r}, which is not an input; the inputs are "
                            + ", ".join(names))
        else:
            ranges[name] = (lo, hi)
    missing = [n for n in names if n not in ranges]
    if missing and default is None:
        raise DataError(f"--synthetic-validation gives no range for input {missing[0]!r}; add {missing[0]}=LO:HI "
                        "or one LO:HI for every input")
    return {n: ranges.get(n) or default for n in names}  # type: ignore[misc]


def synthetic_inputs(sig: Signature, n: int, ranges: Mapping[str, Range] | None = None,
                     seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic random inputs in ``ranges`` (default [0, 1) for floats, {0, 1} for integers),
    for checks when the user gave no data; ``n`` samples (a per-call model: one call of batch ``n``)."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in sig.inputs:
        dims = [n if d is None and (i == 0 or sig.per_call) else d for i, d in enumerate(t.shape)]
        if any(d is None for d in dims):
            raise DataError(f"input {t.name!r} has dynamic dimensions {_shape_text(t.shape)}; "
                            "pass --validation data so the build can run the model")
        shape = tuple(int(d) for d in dims)  # type: ignore[arg-type]
        lo, hi = (ranges or {}).get(t.name, (0.0, 1.0))
        arr: np.ndarray
        if np.dtype(t.dtype).kind == "f":
            arr = rng.uniform(lo, hi, shape)
        elif int(np.ceil(lo)) > int(np.floor(hi)):
            raise DataError(f"input {t.name!r} takes {t.dtype} and the range {lo:g}:{hi:g} holds no integer")
        else:
            arr = rng.integers(int(np.ceil(lo)), int(np.floor(hi)) + 1, shape)
        out[t.name] = np.asarray(arr).astype(t.dtype)
    return out
