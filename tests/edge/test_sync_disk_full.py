"""A full disk during an update: the last good version keeps serving, the status says why,
and the update goes through once there is room again.

The device's state folder lives on a real, small tmpfs, filled to the last byte, so every
write the agent attempts (TUF metadata, staging, strikes, pointer, status) meets ENOSPC
from the kernel.  Mounting needs CAP_SYS_ADMIN (root in a container, as in CI); where it is
not allowed the test says so and is skipped.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sync_support import make_device, seal_tiny, signer_pub

from bentoedge.cloud.channel import Channel
from bentoedge.edge.sync import Result


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mnt)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or done.returncode}); needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path) -> Path:
    """Write a filler file until the kernel says the disk is full; returns it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 4096, 1):  # big steps, then the last few bytes of the last block
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_disk_full_during_an_update_keeps_the_old_version(tmp_path: Path, small_disk: Path) -> None:
    home = tmp_path / "home"
    ch = Channel.init((tmp_path / "chan").as_uri(), home=home)
    dev = make_device(small_disk / "state", ch.url, ch.root_bytes(), signer_pub(home))
    ch.enroll("dev-1", dev.pub_pem)
    ch.publish(seal_tiny(tmp_path / "s1", home, "v1", 1))
    x = {"x": np.ones((1, 4), np.float32)}
    with dev.agent() as agent:
        assert agent.sync_once().result is Result.UPDATED
        ch.publish(seal_tiny(tmp_path / "s2", home, "v2", 2))
        filler = fill(small_disk)
        for _ in range(3):
            r = agent.sync_once()
            assert r.result is Result.ERROR, r
            assert "No space left on device" in r.reason, r.reason
            model = dev.active.get()
            assert model is not None and model.version == "v1"
            assert model.predict(x)["y"].shape == (1, 3)  # still answering
            assert agent.state.pointer().active == "v1"
        status = agent.status()
        assert status["active"]["version"] == "v1" and "No space left" in status["last_error"]
        assert "tiny:v2" not in status["failed"]  # the disk's fault, not the version's
        os.unlink(filler)
        r = agent.sync_once()
        assert r.result is Result.UPDATED, r
        assert dev.active.get().version == "v2"  # type: ignore[union-attr]
    # A restart finds a whole, valid active version on that disk.
    with dev.agent() as again:
        again.start_up()
        assert again.state.pointer().active == "v2" and dev.active.get().version == "v2"  # type: ignore[union-attr]
