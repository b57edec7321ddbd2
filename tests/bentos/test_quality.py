"""The quality gate is pure: arrays in, rows out.  Exhaustive over the decision's branches."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bentoedge.bentos import quality


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


RNG = np.random.default_rng(0)
PROBS = softmax(RNG.standard_normal((200, 10)) * 3)
LABELS = PROBS.argmax(1)


def by_metric(rows: list[quality.Row]) -> dict[str, quality.Row]:
    return {r.metric: r for r in rows}


def test_identical_classifier_passes_with_labels() -> None:
    rows = by_metric(quality.compare("edge-int8", {"p": PROBS}, {"p": PROBS.copy()}, LABELS, 0.01))
    assert rows["accuracy"].value == 1.0 and rows["accuracy"].passed
    assert rows["top1_agreement"].bound is None  # reported, the accuracy row gates
    assert not quality.failed(list(rows.values()))


def test_accuracy_drop_over_budget_fails() -> None:
    worse = PROBS.copy()
    flip = np.arange(5)  # 5 of 200 wrong = 2.5 points
    worse[flip] = np.roll(worse[flip], 1, axis=1)
    rows = quality.compare("edge-int8", {"p": PROBS}, {"p": worse}, LABELS, 0.01)
    bad = quality.failed(rows)
    assert [r.metric for r in bad] == ["accuracy"]
    assert bad[0].value == 0.975 and bad[0].budget == 0.99
    assert quality.compare("edge-int8", {"p": PROBS}, {"p": worse}, LABELS, 0.03)[1].passed


def test_agreement_gates_without_labels() -> None:
    worse = PROBS.copy()
    worse[:10] = np.roll(worse[:10], 1, axis=1)
    rows = by_metric(quality.compare("a", {"p": PROBS}, {"p": worse}, None, 0.01))
    assert rows["top1_agreement"].value == 0.95 and not rows["top1_agreement"].passed
    assert "accuracy" not in rows


def test_regression_outputs_use_errors_and_cosine() -> None:
    ref = RNG.standard_normal((50, 3))
    close = ref + 1e-3
    rows = by_metric(quality.compare("a", {"y": ref}, {"y": close}, None, 0.01))
    assert set(rows) == {"finite", "max_abs_error", "mean_abs_error", "cosine_similarity", "relative_mean_error"}
    assert rows["relative_mean_error"].passed
    assert abs(rows["max_abs_error"].value - 1e-3) < 1e-6 and rows["cosine_similarity"].passed
    far = by_metric(quality.compare("a", {"y": ref}, {"y": -ref}, None, 0.01))
    assert far["cosine_similarity"].value == -1.0 and not far["cosine_similarity"].passed


def test_nan_and_shape_mismatch_fail() -> None:
    nan = PROBS.copy()
    nan[0, 0] = np.nan
    rows = quality.compare("a", {"p": PROBS}, {"p": nan}, LABELS)
    assert [r.metric for r in quality.failed(rows)] == ["finite"]
    assert rows[0].value is not None and rows[0].value < 1
    rows = quality.compare("a", {"p": PROBS}, {"p": PROBS[:10]}, LABELS)
    assert quality.failed(rows)[0].metric == "shape"
    rows = quality.compare("a", {"p": PROBS}, {}, LABELS)
    assert quality.failed(rows)[0].metric == "shape"


def test_multi_output_labels_apply_to_first_fitting_output() -> None:
    reg = RNG.standard_normal((200, 2))
    rows = quality.compare("a", {"label": PROBS, "score": reg}, {"label": PROBS, "score": reg}, LABELS)
    metrics = [(r.output, r.metric) for r in rows]
    assert ("label", "accuracy") in metrics and ("score", "cosine_similarity") in metrics


def test_is_classifier() -> None:
    assert quality.is_classifier(PROBS)
    assert not quality.is_classifier(RNG.standard_normal((10, 4)))  # logits, no labels
    assert quality.is_classifier(RNG.standard_normal((10, 4)), np.arange(10) % 4)
    assert not quality.is_classifier(PROBS[:, :1])
    assert not quality.is_classifier(np.ones((3, 2, 2)) / 2)


def test_table_and_json_safe_rows() -> None:
    rows = quality.compare("edge-int8", {"p": PROBS}, {"p": PROBS}, LABELS)
    text = quality.format_table(rows)
    assert text.splitlines()[0].split()[:3] == ["artifact", "output", "metric"]
    assert "edge-int8" in text and ">= 0.99" in text
    import json

    json.dumps([r.to_dict() for r in rows], allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(2, 6), st.floats(0.0, 1.0), st.integers(0, 2**31 - 1))
def test_rows_are_consistent(n: int, c: int, max_drop: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ref = softmax(rng.standard_normal((n, c)))
    cand = softmax(rng.standard_normal((n, c)))
    labels = rng.integers(0, c, n)
    for row in quality.compare("a", {"p": ref}, {"p": cand}, labels, max_drop):
        assert row.value is not None
        if row.bound == "min":
            assert row.passed == (row.value >= row.budget - 1e-9)
        if row.metric == "accuracy":
            assert row.budget is not None and row.baseline is not None
            assert abs(row.budget - (row.baseline - max_drop)) < 1e-5


def test_an_offset_that_cosine_forgives_fails_the_relative_error() -> None:
    """A regression output shifted by its own spread keeps a high cosine (the blind spot)."""
    ref = 100.0 + RNG.standard_normal((200, 1))
    shifted = ref + 1.0
    rows = by_metric(quality.compare("cloud-int8", {"y": ref}, {"y": shifted}, None, 0.01))
    assert rows["cosine_similarity"].passed
    assert not rows["relative_mean_error"].passed and abs(rows["relative_mean_error"].value - 1.0) < 0.1
    assert quality.next_step(quality.failed(list(rows.values()))).startswith("try --cloud fp16")


def test_labels_that_cannot_belong_to_the_model_are_named() -> None:
    three = np.full((7, 3), 1 / 3)
    assert quality.check_labels({"p": three}, np.arange(7) % 3) is None
    why = quality.check_labels({"p": three}, np.arange(7))
    assert why is not None and "0..6" in why and "3 classes" in why
    assert quality.check_labels({"y": RNG.standard_normal((7,))}, np.arange(7)) is not None


@given(st.sampled_from(["edge-int8", "edge-dynamic", "edge-fp16", "cloud-int8", "cloud-fp16"]))
def test_next_step_names_a_higher_precision(artifact: str) -> None:
    row = quality.Row(artifact, "y", "cosine_similarity", 1.0, 0.5, 0.99, "min", False)
    target, _, precision = artifact.partition("-")
    order = ["int8", "dynamic", "fp16", "fp32"] if target == "edge" else ["int8", "fp16", "fp32"]
    suggested = quality.next_step([row]).split()[2]
    assert order.index(suggested) > order.index(precision)
