"""The pure parts of the sync agent: version selection and the pointer (the cycle itself:
test_sync_machine.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bentoedge.edge.state import Pointer
from bentoedge.edge.sync import select

names = st.sampled_from(["tiny", "digits"])
versions = st.from_regex(r"v[0-9]{1,3}", fullmatch=True)
classes = st.sampled_from(["default", "pi", "jetson"])
agent_versions = st.sampled_from(["0", "0.1.0", "0.2.0", "1.0", "1.10.0"])

candidates = st.builds(
    select.Candidate, model=names, version=versions, release=st.integers(0, 20),
    device_classes=st.lists(classes, max_size=2, unique=True).map(tuple),
    rollout=st.integers(0, 100), min_agent=agent_versions, pinned=st.booleans())
devices = st.builds(
    select.Device, device_id=st.text(min_size=1, max_size=12), device_class=classes, agent_version=agent_versions,
    model=st.sampled_from(["", "tiny"]), active_model=st.sampled_from([None, "tiny", "digits"]),
    active_release=st.one_of(st.none(), st.integers(0, 20)),
    failed=st.frozensets(st.builds(lambda n, v: f"{n}:{v}", names, versions), max_size=3))


@settings(max_examples=400, deadline=None)
@given(st.lists(candidates, max_size=8), devices)
def test_choice_is_permitted_newest_and_never_a_downgrade(cands: list[select.Candidate], dev: select.Device) -> None:
    choice = select.choose(cands, dev)
    model = select.followed_model(cands, dev)
    if choice.candidate is None:
        # Nothing chosen: then no permitted, newer candidate of the followed model exists
        # (unless a pin holds the device back).
        if model is not None and not any(c.pinned and c.model == model for c in cands):
            newer = [c for c in cands if c.model == model and select.refusal(c, dev) is None
                     and (dev.active_release is None or dev.active_model != model
                          or c.release > dev.active_release)]
            assert newer == []
        return
    c = choice.candidate
    assert c in cands and c.model == model
    assert select.refusal(c, dev) is None
    assert c.key not in dev.failed
    assert not c.device_classes or dev.device_class in c.device_classes
    if dev.active_release is not None and dev.active_model == model:
        assert c.release > dev.active_release
    pool = [x for x in cands if x.model == model and select.refusal(x, dev) is None]
    if any(x.pinned for x in cands if x.model == model):  # a pin, permitted here or not, rules
        assert c.pinned
        pool = [x for x in pool if x.pinned]
    assert c.release == max(x.release for x in pool)


@given(st.text(min_size=1, max_size=20), names, st.integers(0, 100), st.integers(0, 100))
def test_rollout_cohort_is_stable_and_widening_only_adds_devices(dev_id: str, model: str, a: int, b: int) -> None:
    lo, hi = sorted((a, b))
    assert select.cohort(dev_id, model) == select.cohort(dev_id, model)
    base = select.Candidate(model, "v1", 1)
    d = select.Device(dev_id)
    at_lo = select.refusal(select.Candidate(model, "v1", 1, rollout=lo), d) is None
    at_hi = select.refusal(select.Candidate(model, "v1", 1, rollout=hi), d) is None
    assert not at_lo or at_hi
    assert select.refusal(base, d) is None  # 100 %: everyone
    assert select.refusal(select.Candidate(model, "v1", 1, rollout=0), d) is not None


def test_rollout_fraction_is_roughly_the_percentage() -> None:
    taken = sum(select.cohort(f"device-{i}", "tiny") < 25 for i in range(2000))
    assert 400 < taken < 600


def test_version_tuple_orders_numerically() -> None:
    assert select.version_tuple("1.10.0") > select.version_tuple("1.9.2")
    assert select.version_tuple("0.1.0") >= select.version_tuple("0")


def test_several_models_need_a_choice_and_malformed_custom_is_refused() -> None:
    cands = [select.Candidate("a", "v1", 1), select.Candidate("b", "v1", 1)]
    assert select.choose(cands, select.Device("d")).candidate is None
    assert select.choose(cands, select.Device("d", model="b")).candidate == cands[1]
    with pytest.raises(Exception, match="malformed|invalid"):
        select.Candidate.from_custom({"bentoedge": {"model": "../x", "version": "v1", "release": 1}})
    with pytest.raises(Exception, match="malformed"):
        select.Candidate.from_custom({"bentoedge": {"model": "a", "release": "x"}})


def test_candidate_published_at_another_path_is_skipped() -> None:
    class TF:
        custom = {"bentoedge": {"model": "tiny", "version": "v9", "release": 9}}

    good, skipped = select.candidates_from_targets({"tiny/v1/manifest.json": TF()})
    assert good == [] and "not where it is published" in skipped[0]


@given(st.lists(versions, max_size=6))
def test_pointer_keeps_active_and_one_previous(history: list[str]) -> None:
    p = Pointer()
    for v in history:
        before = p
        p = p.activated("tiny", v)
        assert p.active == v and len(p.previous) <= 1 and v not in p.previous
        if before.active and before.active != v:
            assert p.previous == (before.active,)
    assert Pointer.from_bytes(p.to_bytes()) == p


def test_a_pin_holds_even_when_this_device_may_not_take_the_pinned_version() -> None:
    def cand(version: str, release: int, pinned: bool) -> select.Candidate:
        return select.Candidate(model="m", version=version, release=release, pinned=pinned)

    dev = select.Device(device_id="d1", device_class="default", agent_version="0.1.0",
                        failed=frozenset({"m:v2"}))
    choice = select.choose([cand("v1", 1, False), cand("v2", 2, True), cand("v3", 3, False)], dev)
    assert choice.candidate is None and "m:v2 failed on this device before" in choice.reason
