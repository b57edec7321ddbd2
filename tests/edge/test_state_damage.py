"""A hand-damaged device state (security finding 11): no crash loop, nothing outside the
state folder served, nothing deleted on a guess."""

from __future__ import annotations

from pathlib import Path

import pytest

from bentoedge.edge.state import DeviceState, Pointer


@pytest.mark.parametrize("damage", [
    b'{"previous": 7}', b'{"active": "../../x/versions/v2"}', b'{"active": "v1", "previous": ["../v0"]}',
    b'{"model": "m\\n", "active": "v1"}', b"[1, 2]", b"not json", b'{"active": 5}',
])
def test_a_damaged_pointer_reads_as_none_and_prunes_nothing(damage: bytes, tmp_path: Path) -> None:
    state = DeviceState(tmp_path / "state")
    (state.versions / "v1").mkdir(parents=True)
    (state.versions / "v2").mkdir()
    state.pointer_file.write_bytes(damage)
    assert state.pointer() == Pointer()
    assert state.prune() == []
    assert sorted(p.name for p in state.versions.iterdir()) == ["v1", "v2"]


def test_a_good_pointer_still_prunes_what_it_does_not_name(tmp_path: Path) -> None:
    state = DeviceState(tmp_path / "state")
    for v in ("v1", "v2", "v3"):
        (state.versions / v).mkdir(parents=True)
    state.set_pointer(Pointer("m", "v3", ("v2",)))
    assert state.pointer() == Pointer("m", "v3", ("v2",))
    assert state.prune() == ["v1"]


@pytest.mark.parametrize("version", ["../x", "a/b", "", "..", "v1\n", "V1"])
def test_no_version_path_leaves_versions(version: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        DeviceState(tmp_path).version_dir(version)
