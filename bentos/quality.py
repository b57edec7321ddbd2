"""The quality gate: is a converted or quantized artifact still the model it came from?

Every artifact is run on the validation inputs and compared with the float source
model.  For a classifier output (2-D scores, one row per sample) the rows are top-1
agreement with the float model and, when labels are given, accuracy; for any other
output they are max and mean absolute error and cosine similarity.  Each row says which
way its budget points (``bound``: the value must stay at or above a ``min``, at or below
a ``max``, or ``None`` for a figure that is reported but not gated):

- accuracy            >= float accuracy - max_drop              (with labels)
- top1_agreement      >= 1 - max_drop                           (gated only without labels,
                                                                 where it bounds the drop)
- cosine_similarity   >= 1 - max_drop                           (non-classifier outputs)
- finite              == 1.0 (share of finite values; NaN/inf always fails)

The user may state the metrics of an output instead (``--budget NAME=METRIC:VALUE``, parsed
by ``parse_budgets``): ``cosine``, ``max_abs_error``, ``mean_abs_error``,
``relative_mean_error``, ``top1_agreement`` (argmax over the last axis), ``argmax_iou`` (masks)
or ``box_iou`` (detections, a last axis of 4); that output is then gated on those alone and
its automatic rows are reported only.

Pure: arrays in, ``Row``s out.  ``bentos.build`` runs the models and decides what to do
with a failed row (refuse, or seal with ``--accept-quality``); the rows go into
``manifest.quality`` as dicts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

#: How far from 1 a row of softmax scores may sum and still count as probabilities.
PROB_SUM_TOL = 1e-2


@dataclass(frozen=True)
class Row:
    artifact: str
    output: str
    metric: str
    baseline: float | None  # the float model's own figure (1.0 for agreement/cosine)
    value: float | None  # None when not a finite number
    budget: float | None
    bound: str | None  # "min" | "max" | None (reported, not gated)
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "output": self.output, "metric": self.metric,
                "baseline": self.baseline, "value": self.value, "budget": self.budget,
                "bound": self.bound, "passed": self.passed}


def _num(x: float) -> float | None:
    x = float(x)
    return round(x, 6) if math.isfinite(x) else None


def _row(artifact: str, output: str, metric: str, baseline: float | None, value: float,
         budget: float | None, bound: str | None) -> Row:
    v = _num(value)
    if bound is None or budget is None:
        passed = True
    elif v is None:
        passed = False
    else:  # judge the exact value: rounding for display must not fail a model exactly at its budget
        exact = float(value)
        passed = exact >= budget - 1e-12 if bound == "min" else exact <= budget + 1e-12
    return Row(artifact, output, metric, None if baseline is None else _num(baseline), v,
               None if budget is None else _num(budget), bound, passed)


def is_classifier(reference: np.ndarray, labels: np.ndarray | None = None) -> bool:
    """Scores of shape (N, C>1): probabilities, or any scores when integer labels fit them."""
    ref = np.asarray(reference)
    if ref.ndim != 2 or ref.shape[1] < 2 or ref.shape[0] == 0 or ref.dtype.kind != "f":
        return False
    if labels is not None and _labels_fit(labels, ref):
        return True
    finite = np.all(np.isfinite(ref))
    return bool(finite and np.all(ref >= 0) and np.allclose(ref.sum(axis=1), 1.0, atol=PROB_SUM_TOL))


def _labels_fit(labels: np.ndarray, ref: np.ndarray) -> bool:
    lab = np.asarray(labels)
    return (lab.ndim == 1 and len(lab) == len(ref) and lab.dtype.kind in "iu"
            and bool(np.all((lab >= 0) & (lab < ref.shape[1]))))


def compare(artifact: str, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
            labels: np.ndarray | None = None, max_drop: float = 0.01,
            budgets: Mapping[str, Sequence[Budget]] | None = None) -> list[Row]:
    """Quality rows for one artifact: every output of ``reference`` checked in ``candidate``.

    An output with ``budgets`` (the user's ``--budget``) is gated on exactly those metrics; the
    automatic rows are still computed for it, but reported only."""
    rows: list[Row] = []
    labels_used = False
    for name, ref_raw in reference.items():
        if budgets and name in budgets:
            rows.extend(_budget_rows(artifact, name, ref_raw, candidate.get(name), budgets[name], labels, max_drop))
            continue
        ref = np.asarray(ref_raw)
        got_raw = candidate.get(name)
        if got_raw is None or np.asarray(got_raw).shape != ref.shape:
            rows.append(Row(artifact, name, "shape", None, None, None, "min", False))
            continue
        got = np.asarray(got_raw, dtype=np.float64)
        ref64 = ref.astype(np.float64)
        finite = float(np.mean(np.isfinite(got))) if got.size else 1.0
        rows.append(_row(artifact, name, "finite", 1.0, finite, 1.0, "min"))
        if finite < 1.0:
            continue
        use_labels = labels is not None and not labels_used and _labels_fit(labels, ref)
        if is_classifier(ref, labels if use_labels else None):
            agreement = float(np.mean(np.argmax(got, axis=1) == np.argmax(ref64, axis=1)))
            if use_labels:
                assert labels is not None
                labels_used = True
                lab = np.asarray(labels)
                base_acc = float(np.mean(np.argmax(ref64, axis=1) == lab))
                acc = float(np.mean(np.argmax(got, axis=1) == lab))
                rows.append(_row(artifact, name, "accuracy", base_acc, acc, base_acc - max_drop, "min"))
                rows.append(_row(artifact, name, "top1_agreement", 1.0, agreement, None, None))
            else:
                rows.append(_row(artifact, name, "top1_agreement", 1.0, agreement, 1.0 - max_drop, "min"))
            continue
        err = np.abs(got - ref64)
        rows.append(_row(artifact, name, "max_abs_error", 0.0, float(err.max()) if err.size else 0.0, None, None))
        rows.append(_row(artifact, name, "mean_abs_error", 0.0, float(err.mean()) if err.size else 0.0, None, None))
        rows.append(_row(artifact, name, "cosine_similarity", 1.0, cosine(ref64, got), 1.0 - max_drop, "min"))
        # Cosine alone is blind to an offset or a scale error on a regression output: judge the
        # mean error against the output's own spread too (RELATIVE_ERROR_FACTOR x max_drop).
        rows.append(_row(artifact, name, "relative_mean_error", 0.0, relative_mean_error(ref64, got),
                         RELATIVE_ERROR_FACTOR * max_drop, "max"))
    return rows


# ---- budgets the user states (--budget NAME=METRIC:VALUE) -------------------------------------

@dataclass(frozen=True)
class Budget:
    """One stated budget: ``metric`` of an output must stay at or above (``min``) or at or
    below (``max``) ``value``."""

    metric: str
    value: float

    @property
    def bound(self) -> str:
        return METRICS[self.metric][1]


def _top1(ref: np.ndarray, got: np.ndarray) -> float:
    if ref.ndim < 1 or ref.shape[-1] < 2:
        raise ValueError("top1_agreement needs scores with a class axis last")
    return float(np.mean(np.argmax(got, axis=-1) == np.argmax(ref, axis=-1)))


def _labels_of(x: np.ndarray) -> np.ndarray:
    """Per-pixel class ids of a mask output: argmax over the class axis of (N, H, W, C>1)
    scores, or an (N, H, W) / (N, H, W, 1) probability map thresholded at 0.5."""
    if x.ndim >= 4 and x.shape[-1] > 1:
        return np.argmax(x, axis=-1)
    return (x >= 0.5).astype(np.int64)


def argmax_iou(ref: np.ndarray, got: np.ndarray) -> float:
    """Mean intersection over union across the classes present in either mask (1.0 when both
    are empty)."""
    a, b = _labels_of(ref), _labels_of(got)
    ious = []
    for c in np.union1d(np.unique(a), np.unique(b)):
        inter = np.sum((a == c) & (b == c))
        union = np.sum((a == c) | (b == c))
        ious.append(inter / union)
    return float(np.mean(ious)) if ious else 1.0


def box_iou(ref: np.ndarray, got: np.ndarray) -> float:
    """Mean IoU of corresponding boxes (last axis of 4 corner coordinates, x/y order either way;
    the corners of each box are sorted, so flipped boxes compare by their area)."""
    if ref.ndim < 1 or ref.shape[-1] != 4:
        raise ValueError("box_iou needs boxes: a last axis of 4 coordinates")
    r, g = ref.reshape(-1, 4), got.reshape(-1, 4)

    def corners(b: np.ndarray) -> tuple[np.ndarray, ...]:
        return (np.minimum(b[:, 0], b[:, 2]), np.minimum(b[:, 1], b[:, 3]),
                np.maximum(b[:, 0], b[:, 2]), np.maximum(b[:, 1], b[:, 3]))

    (rx0, ry0, rx1, ry1), (gx0, gy0, gx1, gy1) = corners(r), corners(g)
    iw = np.clip(np.minimum(rx1, gx1) - np.maximum(rx0, gx0), 0, None)
    ih = np.clip(np.minimum(ry1, gy1) - np.maximum(ry0, gy0), 0, None)
    inter = iw * ih
    union = (rx1 - rx0) * (ry1 - ry0) + (gx1 - gx0) * (gy1 - gy0) - inter
    same = np.all(r == g, axis=1)
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), np.where(same, 1.0, 0.0))
    return float(np.mean(iou)) if iou.size else 1.0


#: Metric name -> (how to compute it from reference and candidate, which way its budget points).
METRICS: dict[str, tuple[Callable[[np.ndarray, np.ndarray], float], str]] = {
    "cosine": (lambda r, g: cosine(r, g), "min"),
    "max_abs_error": (lambda r, g: float(np.max(np.abs(g - r))) if r.size else 0.0, "max"),
    "mean_abs_error": (lambda r, g: float(np.mean(np.abs(g - r))) if r.size else 0.0, "max"),
    "relative_mean_error": (lambda r, g: relative_mean_error(r, g), "max"),
    "top1_agreement": (_top1, "min"),
    "argmax_iou": (argmax_iou, "min"),
    "box_iou": (box_iou, "min"),
}


def parse_budgets(specs: Sequence[str], outputs: Sequence[str]) -> dict[str, list[Budget]]:
    """``NAME=METRIC:VALUE`` specs (``--budget``, repeatable) by output name; ValueError with a
    one-line reason for a spec that names no output or metric, or has no number."""
    out: dict[str, list[Budget]] = {}
    for spec in specs:
        name, eq, rest = spec.partition("=")
        metric, colon, value_text = rest.rpartition(":")
        if not eq or not colon or not name or not metric:
            raise ValueError(f"--budget {spec!r} is not NAME=METRIC:VALUE (e.g. scores=top1_agreement:0.99)")
        if name not in outputs:
            raise ValueError(f"--budget {spec!r} names {name!r}, which is not an output; the outputs are "
                             + ", ".join(outputs))
        if metric not in METRICS:
            raise ValueError(f"--budget {spec!r}: unknown metric {metric!r}; use one of {', '.join(METRICS)}")
        try:
            value = float(value_text)
        except ValueError:
            value = float("nan")
        if not math.isfinite(value):
            raise ValueError(f"--budget {spec!r}: {value_text!r} is not a number")
        out.setdefault(name, []).append(Budget(metric, value))
    return out


def _budget_rows(artifact: str, name: str, ref_raw: np.ndarray, got_raw: np.ndarray | None,
                 budgets: Sequence[Budget], labels: np.ndarray | None, max_drop: float) -> list[Row]:
    ref = np.asarray(ref_raw)
    if got_raw is None or np.asarray(got_raw).shape != ref.shape:
        return [Row(artifact, name, "shape", None, None, None, "min", False)]
    got, ref64 = np.asarray(got_raw, dtype=np.float64), ref.astype(np.float64)
    finite = float(np.mean(np.isfinite(got))) if got.size else 1.0
    rows = [_row(artifact, name, "finite", 1.0, finite, 1.0, "min")]
    if finite < 1.0:
        return rows
    # The automatic rows, reported only: the user's budgets decide for this output.
    rows.extend(replace(r, budget=None, bound=None, passed=True)
                for r in compare(artifact, {name: ref}, {name: got_raw}, labels, max_drop) if r.metric != "finite")
    for b in budgets:  # check_budgets has made sure each metric fits its output's shape
        compute, bound = METRICS[b.metric]
        rows.append(_row(artifact, name, b.metric, compute(ref64, ref64), compute(ref64, got), b.value, bound))
    return rows


def check_budgets(reference: Mapping[str, np.ndarray], budgets: Mapping[str, Sequence[Budget]]) -> str | None:
    """Why a stated budget cannot apply to the float model's own outputs (None when all fit)."""
    for name, wanted in budgets.items():
        ref = np.asarray(reference[name], dtype=np.float64)
        for b in wanted:
            try:
                METRICS[b.metric][0](ref, ref)
            except ValueError as exc:
                return f"--budget {name}={b.metric}:{b.value:g} does not fit output {name!r} of shape {list(ref.shape)}: {exc}"
    return None


#: The relative mean error budget is this many times --max-drop (0.1 of the spread at 0.01).
RELATIVE_ERROR_FACTOR = 10.0


def relative_mean_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean absolute error over the reference's own scale (its standard deviation, else its
    mean magnitude), so a budget means the same for outputs in [0, 1] and in [0, 1000]."""
    ref, got = np.ravel(reference).astype(np.float64), np.ravel(candidate).astype(np.float64)
    if ref.size == 0:
        return 0.0
    err = float(np.mean(np.abs(got - ref)))
    scale = float(np.std(ref)) or float(np.mean(np.abs(ref)))
    if scale == 0.0:
        return 0.0 if err == 0.0 else float("inf")
    return err / scale


def check_labels(reference: Mapping[str, np.ndarray], labels: np.ndarray | None) -> str | None:
    """Why ``labels`` cannot belong to this model (None when they fit one of its outputs).

    Labels are class ids for a classifier output of shape (N, C); ids outside 0..C-1 mean the
    data is for another model, which must not pass silently as "no accuracy figure".
    """
    if labels is None:
        return None
    lab = np.asarray(labels)
    scores = {n: np.asarray(r) for n, r in reference.items() if np.asarray(r).ndim == 2 and np.asarray(r).shape[1] >= 2}
    if any(_labels_fit(lab, r) for r in scores.values()):
        return None
    found = f"labels range {int(lab.min())}..{int(lab.max())}" if lab.size else "no labels"
    if not scores:
        return f"validation has {found} but the model has no (samples, classes) output to check them against"
    classes = ", ".join(f"{n!r} has {r.shape[1]} classes" for n, r in scores.items())
    return f"validation {found} do not fit the model ({classes}); check the file belongs to this model"


#: The precision to try next when one fails its gate, by target.
NEXT_PRECISION = {"edge": {"int8": "dynamic", "dynamic": "fp16", "fp16": "fp32"},
                  "cloud": {"int8": "fp16", "fp16": "fp32"}}


def next_step(failed_rows: list[Row]) -> str:
    """What to try after a failed gate: the next precision up for each artifact that failed."""
    tries: list[str] = []
    for art in dict.fromkeys(r.artifact for r in failed_rows):
        target, _, precision = art.partition("-")
        up = NEXT_PRECISION.get(target, {}).get(precision)
        if up and f"--{target} {up}" not in tries:
            tries.append(f"--{target} {up}")
    first = f"try {' '.join(tries)} (the next precision up), " if tries else ""
    return f"{first}raise --max-drop or pass --accept-quality"


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays seen as flat vectors; 1.0 when both are all zeros."""
    x, y = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if nx == 0.0 and ny == 0.0:
        return 1.0
    if nx == 0.0 or ny == 0.0:
        return 0.0
    return float(np.dot(x, y) / (nx * ny))


def failed(rows: Sequence[Row]) -> list[Row]:
    return [r for r in rows if not r.passed]


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def table_rows(rows: Sequence[Row]) -> list[tuple[str, ...]]:
    """(artifact, output, metric, float baseline, value, budget, passed) as display strings."""
    out: list[tuple[str, ...]] = []
    for r in rows:
        budget = "-" if r.bound is None else f"{'>=' if r.bound == 'min' else '<='} {_fmt(r.budget)}"
        out.append((r.artifact, r.output, r.metric, _fmt(r.baseline), _fmt(r.value), budget,
                    "yes" if r.passed else "NO"))
    return out


HEADER = ("artifact", "output", "metric", "float baseline", "value", "budget", "passed")


def format_table(rows: Sequence[Row]) -> str:
    """A plain-text table of the rows (for logs and messages; the CLI draws a rich one)."""
    body = [HEADER, *table_rows(rows)]
    widths = [max(len(line[i]) for line in body) for i in range(len(HEADER))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                     for line in body)


def summary(rows: Sequence[Row]) -> str:
    bad = failed(rows)
    if not bad:
        return f"all {len(rows)} quality checks passed"
    return "; ".join(f"{r.artifact} {r.output} {r.metric} {_fmt(r.value)} (budget "
                     f"{'>=' if r.bound == 'min' else '<='} {_fmt(r.budget)})" for r in bad)
