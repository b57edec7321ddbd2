"""Budgets the user states (``--budget OUTPUT=METRIC:VALUE``): parsing, each metric's
arithmetic, and that a stated budget alone decides its output.  Pure: arrays in, rows out."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bentoedge.bentos import quality
from bentoedge.bentos.quality import Budget, argmax_iou, box_iou, parse_budgets

OUTS = ["boxes", "scores", "mask"]


def test_budgets_parse_by_output() -> None:
    got = parse_budgets(["boxes=box_iou:0.9", "scores=max_abs_error:0.05", "boxes=cosine:0.99"], OUTS)
    assert got == {"boxes": [Budget("box_iou", 0.9), Budget("cosine", 0.99)],
                   "scores": [Budget("max_abs_error", 0.05)]}
    assert got["boxes"][0].bound == "min" and got["scores"][0].bound == "max"


@pytest.mark.parametrize(("spec", "words"), [
    ("boxes", "not NAME=METRIC:VALUE"),
    ("boxes=box_iou", "not NAME=METRIC:VALUE"),
    ("=box_iou:1", "not NAME=METRIC:VALUE"),
    ("logits=cosine:0.9", "'logits', which is not an output; the outputs are boxes, scores, mask"),
    ("boxes=iou:0.9", "unknown metric 'iou'"),
    ("boxes=box_iou:high", "'high' is not a number"),
    ("boxes=box_iou:nan", "is not a number"),
])
def test_bad_budgets_are_named(spec: str, words: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_budgets([spec], OUTS)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_box_iou_by_hand() -> None:
    a = np.array([[0, 0, 2, 2], [0, 0, 1, 1]], np.float64)
    b = np.array([[1, 1, 3, 3], [1, 1, 0, 0]], np.float64)  # quarter overlap; the same box, corners swapped
    assert box_iou(a, b) == pytest.approx((1 / 7 + 1.0) / 2)
    assert box_iou(np.zeros((3, 4)), np.zeros((3, 4))) == 1.0  # equal empty boxes agree
    with pytest.raises(ValueError, match="last axis of 4"):
        box_iou(np.zeros((3, 5)), np.zeros((3, 5)))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 20), st.integers(0, 2**31 - 1))
def test_box_iou_is_a_symmetric_share(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0, 10, (n, 4)), rng.uniform(0, 10, (n, 4))
    assert box_iou(a, a) == 1.0
    assert 0.0 <= box_iou(a, b) <= 1.0
    assert box_iou(a, b) == pytest.approx(box_iou(b, a))


def test_argmax_iou_of_masks() -> None:
    ref = np.zeros((1, 4, 4, 3))
    ref[..., 0] = 1.0
    ref[0, :2, :, 0], ref[0, :2, :, 1] = 0.0, 1.0  # top half class 1, bottom half class 0
    got = ref.copy()
    got[0, 1, :, 1], got[0, 1, :, 2] = 0.0, 1.0  # one row of class 1 turned into class 2
    # class 0: 8/8; class 1: 4/8; class 2: 0/4
    assert argmax_iou(ref, got) == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    prob = np.array([[[0.9, 0.1], [0.2, 0.7]]])  # (N, H, W): thresholded at 0.5
    assert argmax_iou(prob, prob) == 1.0
    assert argmax_iou(prob, 1 - prob) == 0.0


def test_a_stated_budget_alone_decides_its_output() -> None:
    rng = np.random.default_rng(1)
    ref = rng.uniform(0, 100, (50, 4))
    shifted = ref + 2.0  # boxes 2 px off: cosine forgives it, the spread-relative error does not
    auto = quality.compare("edge-int8", {"boxes": ref}, {"boxes": shifted}, None, 0.001)
    assert quality.failed(auto)
    stated = {"boxes": [Budget("box_iou", 0.5)]}
    rows = quality.compare("edge-int8", {"boxes": ref}, {"boxes": shifted}, None, 0.001, stated)
    assert not quality.failed(rows)
    gated = [r for r in rows if r.bound is not None]
    assert [r.metric for r in gated] == ["finite", "box_iou"]
    assert {r.metric for r in rows} >= {"cosine_similarity", "relative_mean_error"}  # still reported
    strict = quality.compare("edge-int8", {"boxes": ref}, {"boxes": shifted}, None, 0.001,
                             {"boxes": [Budget("max_abs_error", 1.0)]})
    bad = quality.failed(strict)
    assert [(r.output, r.metric, r.value) for r in bad] == [("boxes", "max_abs_error", 2.0)]
    assert "boxes max_abs_error 2 (budget <= 1)" in quality.summary(strict)


def test_a_stated_budget_still_fails_on_nan_and_shape() -> None:
    ref = np.ones((4, 4))
    rows = quality.compare("a", {"b": ref}, {"b": np.full((4, 4), np.nan)}, None, 0.01, {"b": [Budget("box_iou", 0.5)]})
    assert [r.metric for r in quality.failed(rows)] == ["finite"]
    rows = quality.compare("a", {"b": ref}, {"b": ref[:2]}, None, 0.01, {"b": [Budget("box_iou", 0.5)]})
    assert [r.metric for r in quality.failed(rows)] == ["shape"]


def test_a_budget_that_does_not_fit_the_output_is_named() -> None:
    why = quality.check_budgets({"scores": np.zeros((8, 3))}, {"scores": [Budget("box_iou", 0.9)]})
    assert why is not None and "scores=box_iou:0.9" in why and "[8, 3]" in why
    assert quality.check_budgets({"scores": np.zeros((8, 3))}, {"scores": [Budget("top1_agreement", 0.9)]}) is None
