"""Per-input statistics over fixed bins, and drift from the validation data as a PSI.

A device must tell the cloud what its model is being fed without sending the inputs.  It
keeps, per input, a running ``InputStats``: the count of values, their mean and spread
(Chan's parallel update, so batches merge in any order), min, max, how many were NaN or
infinite, and a histogram over *fixed* bins.  The bins come from the build: the
validation data's range per input (``reference_stats``), cut into ``n`` equal bins plus
one underflow and one overflow bin.  A device's histogram and the reference's then count
the same intervals, and the population stability index compares them:

    PSI = sum_i (p_i - q_i) * ln(p_i / q_i)     p: observed share, q: reference share

with each share floored at ``EPS`` so an empty bin does not divide by zero.  The usual
reading: under 0.1 no drift, 0.1 to 0.25 some, over 0.25 a shift worth a look
(``drift_level``).

NaN and infinite values count towards ``count`` and their own counters but not towards the
moments or the histogram.  Pure: numpy in, values out; no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from bentoedge.bentos.errors import DataError, FormatError

#: Equal-width bins between the reference's min and max (plus underflow and overflow).
DEFAULT_BINS = 10
#: The most bins a report may carry per input (the size bound of a report depends on it).
MAX_BINS = 64
#: The floor of a bin's share in the PSI.
EPS = 1e-4
#: PSI levels: below the first "none", below the second "moderate", above "significant".
PSI_LEVELS = (0.1, 0.25)


@dataclass(frozen=True)
class Bins:
    """``n`` equal bins over [lo, hi] (hi falls in the last), one bin below lo and one above hi."""

    lo: float
    hi: float
    n: int = DEFAULT_BINS

    def __post_init__(self) -> None:
        if not (isinstance(self.n, int) and not isinstance(self.n, bool) and 1 <= self.n <= MAX_BINS):
            raise FormatError(f"a histogram has 1..{MAX_BINS} bins, not {self.n!r}")
        if not (math.isfinite(self.lo) and math.isfinite(self.hi) and self.lo < self.hi):
            raise FormatError(f"histogram range [{self.lo!r}, {self.hi!r}) must be finite with lo < hi")

    @property
    def size(self) -> int:
        """Counters in a histogram over these bins: n + underflow + overflow."""
        return self.n + 2

    def count(self, values: np.ndarray) -> np.ndarray:
        """Counts of finite ``values`` per bin (int64, ``size`` long)."""
        scaled = (values - self.lo) / (self.hi - self.lo) * self.n
        idx = np.clip(np.floor(scaled), -1, self.n)
        idx[values == self.hi] = self.n - 1
        idx = idx.astype(np.int64) + 1
        return np.bincount(idx, minlength=self.size)


@dataclass(frozen=True)
class InputStats:
    """What one input received: counts, moments, range and a fixed-bin histogram."""

    count: int = 0  # every value seen, NaN and infinities included
    mean: float = 0.0  # of the finite values
    m2: float = 0.0  # sum of squared deviations from the mean (finite values)
    min: float | None = None
    max: float | None = None
    nan: int = 0
    inf: int = 0
    bins: Bins | None = None
    histogram: tuple[int, ...] = ()  # empty when there are no bins

    @property
    def finite(self) -> int:
        return self.count - self.nan - self.inf

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.finite) if self.finite else 0.0

    @property
    def nan_share(self) -> float:
        return self.nan / self.count if self.count else 0.0

    @property
    def inf_share(self) -> float:
        return self.inf / self.count if self.count else 0.0


def empty(bins: Bins | None = None) -> InputStats:
    """No values yet; with ``bins``, a histogram of zeros over them."""
    return InputStats(bins=bins, histogram=(0,) * bins.size if bins else ())


def accumulate(stats: InputStats, values: Any) -> InputStats:
    """``stats`` with every element of ``values`` (any shape) added."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        return stats
    nan = int(np.isnan(arr).sum())
    inf = int(np.isinf(arr).sum())
    fin = arr[np.isfinite(arr)]
    batch = InputStats(count=int(arr.size), nan=nan, inf=inf, bins=stats.bins)
    if fin.size:
        mean = float(fin.mean())
        batch = replace(batch, mean=mean, m2=float(((fin - mean) ** 2).sum()), min=float(fin.min()),
                        max=float(fin.max()))
    hist = tuple(int(c) for c in stats.bins.count(fin)) if stats.bins else ()
    return merge(stats, replace(batch, histogram=hist))


def merge(a: InputStats, b: InputStats) -> InputStats:
    """Both together (the bins must agree); the order does not matter beyond rounding."""
    if a.bins != b.bins:
        raise DataError("cannot merge input statistics over different bins")
    na, nb = a.finite, b.finite
    n = na + nb
    if n == 0:
        mean, m2 = 0.0, 0.0
    else:
        delta = b.mean - a.mean
        mean = a.mean + delta * nb / n
        m2 = a.m2 + b.m2 + delta * delta * na * nb / n
    lows = [v for v in (a.min, b.min) if v is not None]
    highs = [v for v in (a.max, b.max) if v is not None]
    hist = tuple(x + y for x, y in zip(a.histogram, b.histogram, strict=True)) if a.bins else ()
    return InputStats(count=a.count + b.count, mean=mean, m2=m2, min=min(lows) if lows else None,
                      max=max(highs) if highs else None, nan=a.nan + b.nan, inf=a.inf + b.inf,
                      bins=a.bins, histogram=hist)


def psi(observed: tuple[int, ...] | list[int], reference: tuple[float, ...] | list[float]) -> float:
    """The population stability index of two histograms over the same bins (counts or shares)."""
    if len(observed) != len(reference) or not observed:
        raise DataError(f"PSI needs two histograms over the same bins ({len(observed)} vs {len(reference)})")
    po, pr = float(sum(observed)), float(sum(reference))
    if po <= 0 or pr <= 0:
        raise DataError("PSI needs histograms with at least one value each")
    total = 0.0
    for o, r in zip(observed, reference, strict=True):
        p, q = max(o / po, EPS), max(r / pr, EPS)
        total += (p - q) * math.log(p / q)
    return total


def drift_level(score: float | None) -> str:
    """'none', 'moderate' or 'significant' for a PSI, 'unknown' without one."""
    if score is None:
        return "unknown"
    return "none" if score < PSI_LEVELS[0] else "moderate" if score < PSI_LEVELS[1] else "significant"


# ---- the reference, recorded at build ----------------------------------------------------------


def reference_stats(arrays: Mapping[str, Any], bins: int = DEFAULT_BINS) -> dict[str, dict[str, Any]]:
    """Per input, the validation data's statistics as plain JSON for the manifest.

    ``{name: {"count", "mean", "std", "min", "max", "bins": {"lo", "hi", "n"}, "histogram":
    [shares]}}``: the bins span the finite values' range (a constant input gets a unit-wide
    range around its value), and the histogram holds shares that sum to 1.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, values in sorted(arrays.items()):
        arr = np.asarray(values, dtype=np.float64).ravel()
        fin = arr[np.isfinite(arr)]
        if fin.size == 0:
            raise DataError(f"input {name!r}: the reference data has no finite value to take statistics of")
        lo, hi = float(fin.min()), float(fin.max())
        if not lo < hi:
            lo, hi = lo - 0.5, hi + 0.5
        b = Bins(lo, hi, bins)
        st = accumulate(empty(b), arr)
        total = sum(st.histogram)
        out[name] = {"count": st.count, "mean": st.mean, "std": st.std, "min": st.min, "max": st.max,
                     "bins": {"lo": lo, "hi": hi, "n": bins},
                     "histogram": [c / total for c in st.histogram]}
    return out


def bins_of(reference: Mapping[str, Any]) -> Bins:
    """The bins of one input's reference entry (``reference_stats(...)[name]``); FormatError if bad."""
    try:
        spec = reference["bins"]
        return Bins(float(spec["lo"]), float(spec["hi"]), spec["n"])
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"malformed reference statistics: {exc}") from None


def drift_score(stats: InputStats, reference: Mapping[str, Any]) -> float | None:
    """PSI of ``stats`` against one input's reference entry; None before any finite value."""
    if stats.bins is None or sum(stats.histogram) == 0:
        return None
    if stats.bins != bins_of(reference):
        raise DataError("the input statistics were not counted over the reference's bins")
    return psi(stats.histogram, [float(x) for x in reference["histogram"]])
