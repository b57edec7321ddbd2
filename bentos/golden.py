"""Golden samples: a few inputs with the outputs each artifact gave at build time.

The device agent and the cloud service run them as their health check before a model
serves: the same bytes must give the same answers (within a tolerance that allows for
another CPU's kernels).  A golden file is an in-memory ``.npz`` with arrays named
``in/<input>`` and ``out/<artifact id>/<output>``; it is sealed like any artifact, once
per target, so a device never sees the cloud model's outputs.

Pure: arrays in, arrays or a list of problems out.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from bentoedge.bentos.errors import FormatError

#: Default tolerances per precision: absolute error allowed on any output element.
DEFAULT_ATOL = {"fp32": 1e-4, "fp16": 2e-3, "dynamic": 1e-2, "int8": 3e-2}
DEFAULT_RTOL = 1e-3


@dataclass(frozen=True)
class Golden:
    inputs: dict[str, np.ndarray]
    expected: dict[str, dict[str, np.ndarray]]  # artifact id -> output name -> array

    def to_bytes(self) -> bytes:
        arrays = {f"in/{k}": v for k, v in self.inputs.items()}
        for art, outs in self.expected.items():
            arrays.update({f"out/{art}/{k}": v for k, v in outs.items()})
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray) -> Golden:
        try:
            with np.load(io.BytesIO(bytes(data)), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as exc:  # numpy raises several kinds for a bad archive
            raise FormatError(f"golden samples are unreadable: {exc}") from None
        inputs: dict[str, np.ndarray] = {}
        expected: dict[str, dict[str, np.ndarray]] = {}
        for key, arr in arrays.items():
            kind, _, rest = key.partition("/")
            if kind == "in":
                inputs[rest] = arr
            elif kind == "out" and "/" in rest:
                art, _, out = rest.partition("/")
                expected.setdefault(art, {})[out] = arr
        return cls(inputs, expected)

    def subset(self, artifact_ids: list[str]) -> Golden:
        return Golden(self.inputs, {a: self.expected[a] for a in artifact_ids if a in self.expected})


def compare(outputs: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray],
            atol: float, rtol: float = DEFAULT_RTOL) -> list[str]:
    """Problems found comparing a model's outputs with the expected ones; empty if none."""
    problems = []
    for name, want in expected.items():
        got = outputs.get(name)
        if got is None:
            problems.append(f"output {name!r} is missing")
            continue
        got = np.asarray(got)
        if got.shape != want.shape:
            problems.append(f"output {name!r} has shape {got.shape}, expected {want.shape}")
            continue
        if not np.all(np.isfinite(got[np.isfinite(want)] if want.dtype.kind == "f" else got)):
            problems.append(f"output {name!r} has NaN or infinity")
            continue
        err = np.abs(got.astype(np.float64) - want.astype(np.float64))
        limit = atol + rtol * np.abs(want.astype(np.float64))
        if np.any(err > limit):
            problems.append(f"output {name!r} differs by up to {float(err.max()):.3g} (tolerance {atol:g})")
    return problems
