"""What the local model was fed: per-input running statistics on the request path, for reports.

``InputWatch.observe`` runs after every prediction the device answered itself (the gateway
calls it; forwarded requests are the cloud's to watch).  Per input it adds the request's
values to a running count, NaN and infinity counts, mean and sum of squared deviations
(Chan's parallel update, the same as ``bentos.drift.merge``), min, max and a histogram over
the *fixed* bins of the manifest's ``extra.reference_stats`` (the validation data's range,
recorded at build).  ``report`` turns them into the ``bentos.fleet_report.InputReport``s a
device report carries, with the PSI drift score against the reference.

Cost and memory: a request's values are copied into a small per-input buffer (``BUFFER``
values, 16 KiB), and only when it fills, and before every report, are they folded into the
running figures, by a few vectorised numpy passes over the whole buffer.  Folding per
request cost 40-50 microseconds even for 4 values (numpy's fixed cost per call, about twenty
calls), three times the request's own JSON parse; the copy costs a few microseconds and the
fold is shared by every request in the buffer (bench/input_stats.py).  So memory is fixed per
input (the buffer, a dozen counters and a histogram of ``bins + 2`` integers) whatever the
traffic; values wait in memory only until their buffer is folded, and are never written to
disk or sent.  An input with more than ``SAMPLE_VALUES`` values in one request (an image) is
sampled by a fixed stride down to about that many, so the cost per request stays bounded on
a 96x96x3 image too; the stride keeps every part of the tensor represented, and the counts
then say how many values were *looked at*, which the shares and the PSI do not depend on.

The statistics belong to one model version: when the active version changes they start
again (its reference, and so its bins, may differ).  Thread-safe: one lock,
held for a copy per request and, now and then, a fold.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bentoedge.bentos import fleet_report as rp
from bentoedge.bentos.drift import Bins, InputStats, bins_of, drift_score
from bentoedge.bentos.errors import BentoEdgeError

log = logging.getLogger("bentoedge.agent")

#: The most values of one input looked at per request (larger inputs are sampled by stride).
SAMPLE_VALUES = 4096
#: Values of one input held before they are folded into its running figures.
BUFFER = 2048


@dataclass
class _Running:
    """One input's running figures (mutable: updated under the watch's lock)."""

    bins: Bins | None
    reference: Mapping[str, Any] | None
    count: int = 0
    nan: int = 0
    inf: int = 0
    finite: int = 0
    mean: float = 0.0
    m2: float = 0.0
    lo: float = float("inf")
    hi: float = float("-inf")
    hist: np.ndarray | None = None
    buf: np.ndarray = field(default_factory=lambda: np.empty(BUFFER, np.float64))
    fill: int = 0

    def take(self, values: np.ndarray) -> None:
        """Buffer ``values`` (flat, already sampled); fold when the buffer would overflow."""
        n = values.size
        if n >= BUFFER:
            self.add(batch_figures(values, self.bins))
            return
        if self.fill + n > BUFFER:
            self.flush()
        self.buf[self.fill:self.fill + n] = values
        self.fill += n

    def flush(self) -> None:
        if self.fill:
            self.add(batch_figures(self.buf[:self.fill], self.bins))
            self.fill = 0

    def add(self, b: _Batch) -> None:
        self.count += b.count
        self.nan += b.nan
        self.inf += b.inf
        if b.finite:
            n = self.finite + b.finite
            delta = b.mean - self.mean
            self.mean += delta * b.finite / n
            self.m2 += b.m2 + delta * delta * self.finite * b.finite / n
            self.finite = n
            self.lo, self.hi = min(self.lo, b.lo), max(self.hi, b.hi)
        if b.hist is not None:
            self.hist = b.hist if self.hist is None else self.hist + b.hist

    def stats(self) -> InputStats:
        hist: tuple[int, ...] = ()
        if self.bins is not None:
            hist = tuple(int(c) for c in self.hist) if self.hist is not None else (0,) * self.bins.size
        return InputStats(count=self.count, mean=self.mean if self.finite else 0.0, m2=self.m2,
                          min=self.lo if self.finite else None, max=self.hi if self.finite else None,
                          nan=self.nan, inf=self.inf, bins=self.bins, histogram=hist)


@dataclass(frozen=True)
class _Batch:
    count: int
    nan: int
    inf: int
    finite: int
    mean: float
    m2: float
    lo: float
    hi: float
    hist: np.ndarray | None


def sampled(values: Any, sample: int = SAMPLE_VALUES) -> np.ndarray:
    """``values`` flat, every k-th one when there are more than ``sample`` (a view, no copy)."""
    arr = np.asarray(values).ravel()
    return arr[:: -(-arr.size // sample)] if arr.size > sample else arr


def batch_figures(values: np.ndarray, bins: Bins | None, sample: int = SAMPLE_VALUES) -> _Batch:
    """The figures of some values of one input (pure): sampled by stride above ``sample``."""
    arr = sampled(values, sample)
    if arr.dtype.kind not in "fc":
        arr = arr.astype(np.float64)
    ok = np.isfinite(arr)
    finite = int(np.count_nonzero(ok))
    if finite == arr.size:
        fin, nan, inf = arr, 0, 0
    else:
        fin = arr[ok]
        nan = int(np.count_nonzero(np.isnan(arr)))
        inf = arr.size - finite - nan
    if finite:
        mean = float(fin.mean(dtype=np.float64))
        m2 = float(np.var(fin, dtype=np.float64)) * finite
        lo, hi = float(fin.min()), float(fin.max())
    else:
        mean = m2 = 0.0
        lo, hi = float("inf"), float("-inf")
    hist = bins.count(fin.astype(np.float64, copy=False)) if bins is not None else None
    return _Batch(int(arr.size), nan, inf, finite, mean, m2, lo, hi, hist)


class InputWatch:
    """Per-input statistics of the active version's locally served requests; thread-safe."""

    def __init__(self, sample: int = SAMPLE_VALUES) -> None:
        self._lock = threading.Lock()
        self._sample = sample
        self._key: tuple[str, str] | None = None
        self._inputs: dict[str, _Running] = {}

    def _reset(self, model: Any) -> None:
        """Start again for ``model``: its inputs, and the bins of its reference statistics."""
        manifest = getattr(model, "manifest", None)
        extra = getattr(manifest, "extra", None) or {}
        refs = extra.get("reference_stats") if isinstance(extra, Mapping) else None
        refs = refs if isinstance(refs, Mapping) else {}
        names = [t.name for t in model.signature.inputs if rp.LABEL_RE.match(t.name)][: rp.MAX_INPUTS]
        inputs: dict[str, _Running] = {}
        for name in names:
            ref = refs.get(name)
            bins = None
            if isinstance(ref, Mapping):
                try:
                    bins = bins_of(ref)
                except BentoEdgeError as exc:  # a bad reference costs the drift score, not the request
                    log.warning("%s:%s input %s: no drift score (%s)", model.name, model.version, name, exc)
                    ref = None
            inputs[name] = _Running(bins, ref if bins is not None else None)
        self._key, self._inputs = (model.name, model.version), inputs

    def observe(self, model: Any, arrays: Mapping[str, np.ndarray]) -> None:
        """Add one locally answered request's inputs (``model`` answered it)."""
        key = (model.name, model.version)
        with self._lock:
            if key != self._key:
                self._reset(model)
            for name, running in self._inputs.items():
                values = arrays.get(name)
                if values is not None:
                    running.take(sampled(values, self._sample))

    def report(self, model: str, version: str | None) -> dict[str, rp.InputReport]:
        """The inputs of ``model:version`` as a report carries them (empty for another version)."""
        with self._lock:
            if self._key != (model, version):
                return {}
            for r in self._inputs.values():
                r.flush()
            running = {name: (r.stats(), r.reference) for name, r in self._inputs.items()}
        out: dict[str, rp.InputReport] = {}
        for name, (stats, ref) in running.items():
            score = None
            if ref is not None:
                try:
                    score = drift_score(stats, ref)
                except BentoEdgeError:
                    score = None
            out[name] = rp.InputReport(stats, None if score is None else round(score, 6))
        return out
