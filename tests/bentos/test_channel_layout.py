"""The channel's wire format: the release record round-trips, malformed records are refused,
and the publisher (``cloud.channel.repo``) and the device (``edge.sync.select``) agree."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tuf.api.metadata import Targets

from bentoedge.bentos import channel_layout as layout
from bentoedge.bentos import manifest, sealed
from bentoedge.bentos.channel_layout import Release
from bentoedge.bentos.errors import FormatError
from bentoedge.cloud.channel import repo
from bentoedge.edge.sync import select

names = st.from_regex(r"[a-z0-9]([a-z0-9._-]{0,20}[a-z0-9])?", fullmatch=True)
text = st.text(max_size=12)
releases = st.builds(
    Release, model=names, version=names, release=st.integers(0, 2**40),
    device_classes=st.lists(text, max_size=3).map(tuple), rollout=st.integers(0, 100),
    min_agent=text, pinned=st.booleans(), files=st.lists(text, max_size=4).map(tuple))


@settings(max_examples=300, deadline=None)
@given(releases)
def test_the_wire_form_round_trips_through_json(rel: Release) -> None:
    custom = json.loads(json.dumps(rel.to_custom()))  # what TUF metadata stores and serves
    assert Release.from_custom(custom) == rel


def good() -> dict[str, Any]:
    return {"model": "tiny", "version": "v1", "release": 1}


@pytest.mark.parametrize("change", [
    {"model": "../x"}, {"model": "Tiny"}, {"version": "v1/../../etc"}, {"version": ""},
    {"release": "1"}, {"release": True}, {"release": -1}, {"release": 1.0},
    {"rollout": 101}, {"rollout": -1}, {"rollout": "50"}, {"pinned": 1}, {"min_agent": 1},
    {"device_classes": "pi"}, {"device_classes": [1]}, {"files": "tiny/v1/manifest.json"}, {"files": [None]},
])
def test_a_malformed_record_is_refused(change: dict[str, Any]) -> None:
    with pytest.raises(FormatError, match="malformed|invalid"):
        Release.from_custom({layout.CUSTOM_KEY: {**good(), **change}})


@pytest.mark.parametrize("custom", [None, [], "x", {}, {"other": {}}, {layout.CUSTOM_KEY: []},
                                    {layout.CUSTOM_KEY: {"model": "tiny", "version": "v1"}}])
def test_a_missing_record_is_refused(custom: object) -> None:
    with pytest.raises(FormatError, match="malformed"):
        Release.from_custom(custom)


def test_defaults_and_unknown_keys() -> None:
    # A newer publisher's extra field must not make older devices skip the version.
    rel = Release.from_custom({layout.CUSTOM_KEY: {**good(), "future": {"x": 1}}})
    assert rel == Release("tiny", "v1", 1)
    assert (rel.rollout, rel.device_classes, rel.min_agent, rel.pinned, rel.files) == (100, (), "0", False, ())


def test_paths_and_names() -> None:
    path = layout.target_path("tiny", "v1", layout.artifact_file("edge-int8", "litert"))
    assert path == "tiny/v1/artifacts/edge-int8.tflite.enc"
    assert layout.hashed_target_key(path, "ab" * 32) == f"targets/tiny/v1/artifacts/{'ab' * 32}.edge-int8.tflite.enc"
    assert layout.hashed_name("manifest.json", "00") == "00.manifest.json"
    assert layout.metadata_key("root", 3) == "metadata/3.root.json"
    assert layout.root_version_of("metadata/12.root.json") == 12
    assert layout.root_version_of("metadata/timestamp.json") is None
    assert layout.is_manifest_target("tiny/v1/manifest.json") and not layout.is_manifest_target("tiny/v1/keys.json")
    # the sealed folder and the manifest's own name rule are the layout's
    assert (sealed.MANIFEST, sealed.SIGNATURE, sealed.KEYS) == layout.REQUIRED_FILES
    assert manifest.NAME_RE.pattern == manifest.VERSION_RE.pattern == layout.NAME_RE.pattern


def test_relative_files_refuse_paths_outside_the_version() -> None:
    files = tuple(layout.target_path("tiny", "v1", f) for f in (*layout.REQUIRED_FILES, "artifacts/a.tflite.enc"))
    rel = Release("tiny", "v1", 1, files=files)
    assert rel.relative_files() == (*layout.REQUIRED_FILES, "artifacts/a.tflite.enc")
    for bad in ("tiny/v2/keys.json", "tiny/v1/artifacts/../x", "tiny/v1/artifacts/.hidden", "tiny/v1/other.json"):
        with pytest.raises(FormatError, match="outside its version folder"):
            Release("tiny", "v1", 1, files=(*files, bad)).relative_files()
    with pytest.raises(FormatError, match="lacks"):
        Release("tiny", "v1", 1, files=files[1:]).relative_files()


@settings(max_examples=100, deadline=None)
@given(st.lists(releases, max_size=5, unique_by=lambda r: (r.model, r.version)))
def test_publisher_and_device_read_the_same_records(rels: list[Release]) -> None:
    targets = Targets()
    for r in rels:
        files = {name: (1, "00" * 32) for name in (*layout.REQUIRED_FILES, "artifacts/m.tflite.enc")}
        repo.set_version(targets, r, files)
    published = repo.releases(targets)
    device, skipped = select.candidates_from_targets(targets.targets)
    assert skipped == []
    assert sorted(device, key=lambda c: (c.model, c.release, c.version)) == published
    for c in device:  # the files the publisher lists are the ones the device may fetch
        assert set(c.relative_files()) == {*layout.REQUIRED_FILES, "artifacts/m.tflite.enc"}
    assert select.Candidate is repo.Release is Release


def test_a_record_at_another_path_is_skipped_by_both() -> None:
    targets = Targets()
    repo.set_version(targets, Release("tiny", "v1", 1), {layout.MANIFEST: (1, "00" * 32)})
    tf = targets.targets.pop("tiny/v1/manifest.json")
    targets.targets["tiny/v9/manifest.json"] = tf
    cands, skipped = select.candidates_from_targets(targets.targets)
    assert cands == [] and "not where it is published" in skipped[0]
    with pytest.raises(Exception, match="not where it is published"):
        repo.releases(targets)


def test_a_trailing_newline_is_no_loophole() -> None:
    """``$`` matches before a final newline; the rules end at the true end of the string."""
    assert layout.FILE_RE.match("manifest.json") and not layout.FILE_RE.match("manifest.json\n")
    assert not layout.FILE_RE.match("artifacts/a.enc\n")
    assert layout.valid_name("v1") and not layout.valid_name("v1\n")
