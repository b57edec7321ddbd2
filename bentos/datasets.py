"""Calibration and validation data: ``.npz`` files checked against a model's signature.

A data file holds one array per model input, named like the input (a single-input model
may use ``x``), all with the same number of samples, plus an optional ``labels`` array
(validation only).  ``check_arrays`` is the pure decision (arrays in, inputs and labels
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
    scalars = [t.name for t in sig.inputs if not t.shape]
    if scalars:
        # Data holds samples along a first axis, and a rank-0 input has none (a sample rate
        # beside a recurrent state, say): such a model cannot be gated or sampled yet.
        raise DataError(f"input {scalars[0]!r} is a scalar (rank 0), so {role} data cannot hold samples of it; "
                        "bentoedge cannot gate models with scalar inputs yet: wrap the model so the value is a "
                        "constant or a [batch] input")
    inputs: dict[str, np.ndarray] = {}
    for t in sig.inputs:
        key = t.name if t.name in arrays else ("x" if len(sig.inputs) == 1 and "x" in arrays else None)
        if key is None:
            have = ", ".join(sorted(arrays)) or "nothing"
            raise DataError(f"{role} data has no array for input {t.name!r} (has {have}); "
                            f"save one array per input named {', '.join(names)}")
        arr = np.asarray(arrays[key])
        if arr.dtype.kind not in "fiub":
            raise DataError(f"{role} array {key!r} has dtype {arr.dtype}; input {t.name!r} takes {t.dtype}")
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


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"


def synthetic_inputs(sig: Signature, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic random inputs, for checks when the user gave no data."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in sig.inputs:
        dims = [n if i == 0 and d is None else d for i, d in enumerate(t.shape)]
        if any(d is None for d in dims):
            raise DataError(f"input {t.name!r} has dynamic dimensions {_shape_text(t.shape)}; "
                            "pass --validation data so the build can run the model")
        shape = tuple(int(d) for d in dims)  # type: ignore[arg-type]
        out[t.name] = (rng.random(shape) if np.dtype(t.dtype).kind == "f" else
                       rng.integers(0, 2, shape)).astype(t.dtype)
    return out
