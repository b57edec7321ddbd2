"""API compatibility across versions is pure: two signatures in, the breaking changes out."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bentoedge.bentos.api_compat import breaking_changes, describe
from bentoedge.bentos.manifest import Signature, TensorSpec


def sig(inputs: dict[str, tuple[str, tuple[int | None, ...]]],
        outputs: dict[str, tuple[str, tuple[int | None, ...]]]) -> Signature:
    return Signature(tuple(TensorSpec(n, d, s) for n, (d, s) in inputs.items()),
                     tuple(TensorSpec(n, d, s) for n, (d, s) in outputs.items()))


V1 = sig({"x": ("float32", (None, 4))}, {"species": ("float32", (None, 3))})


@pytest.mark.parametrize(("new", "words"), [
    (sig({"x": ("float32", (None, 4))}, {"output_0": ("float32", (None, 3))}), ["output 'species' is gone"]),
    (sig({"x": ("int64", (None, 4))}, {"species": ("float32", (None, 3))}), ["input 'x' changed dtype float32 -> int64"]),
    (sig({"x": ("float32", (None, 4))}, {"species": ("float16", (None, 3))}), ["output 'species' changed dtype"]),
    (sig({"x": ("float32", (1, 4))}, {"species": ("float32", (None, 3))}), ["input 'x' narrowed dimension 0"]),
    (sig({"x": ("float32", (None, 5))}, {"species": ("float32", (None, 3))}), ["input 'x' narrowed dimension 1"]),
    (sig({"x": ("float32", (None, 4, 1))}, {"species": ("float32", (None, 3))}), ["input 'x' changed rank"]),
    (sig({"x": ("float32", (None, 4))}, {"species": ("float32", (None, None))}), ["output 'species' changed dimension 1"]),
    (sig({"x": ("float32", (None, 4)), "mask": ("bool", (None,))}, {"species": ("float32", (None, 3))}),
     ["input 'mask' is new"]),
    (sig({"features": ("float32", (None, 4))}, {"species": ("float32", (None, 3))}),
     ["input 'x' is gone", "input 'features' is new"]),
])
def test_what_breaks_clients_is_named(new: Signature, words: list[str]) -> None:
    changes = breaking_changes(V1, new)
    assert len(changes) == len(words)
    for change, word in zip(changes, words, strict=True):
        assert word in change


@pytest.mark.parametrize("new", [
    V1,
    sig({"x": ("float32", (None, 4))}, {"species": ("float32", (None, 3)), "logits": ("float32", (None, 3))}),
    sig({"x": ("float32", (None, None))}, {"species": ("float32", (None, 3))}),  # input widened
])
def test_what_old_clients_can_still_use_is_fine(new: Signature) -> None:
    assert breaking_changes(V1, new) == []


def test_an_output_may_narrow_and_an_input_may_widen() -> None:
    old = sig({"x": ("float32", (8, 4))}, {"y": ("float32", (None, None))})
    assert breaking_changes(old, sig({"x": ("float32", (None, 4))}, {"y": ("float32", (None, 3))})) == []
    assert breaking_changes(sig({"x": ("float32", (None, 4))}, {"y": ("float32", (None, 3))}), old)  # and not back


def test_describe_keeps_to_one_line() -> None:
    text = describe([f"change {i}" for i in range(5)])
    assert text == "change 0; change 1; change 2 (and 2 more)"


DIMS = st.one_of(st.none(), st.integers(1, 4))
TENSORS = st.dictionaries(st.sampled_from(["a", "b", "c"]),
                          st.tuples(st.sampled_from(["float32", "int64"]), st.lists(DIMS, max_size=3).map(tuple)),
                          min_size=1, max_size=3)
SIGS = st.builds(sig, TENSORS, TENSORS)


@settings(max_examples=300, deadline=None)
@given(SIGS, SIGS, SIGS)
def test_compatibility_is_reflexive_and_transitive(a: Signature, b: Signature, c: Signature) -> None:
    assert breaking_changes(a, a) == []
    if not breaking_changes(a, b) and not breaking_changes(b, c):
        assert breaking_changes(a, c) == []
