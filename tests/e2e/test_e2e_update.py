"""End to end: publish to a real channel (a folder, and S3 on a real ``moto_server`` process
on loopback), let a device take v1, swap to v2 while a client keeps predicting (zero failed
requests), then publish a tampered v3 that the device refuses while v2 keeps serving."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sync_support import make_device, seal_tiny, signer_pub

from bentoedge.cloud.channel import Channel
from bentoedge.cloud.channel.channel import hashed_name
from bentoedge.cloud.channel.storage import S3Storage, Storage, open_storage
from bentoedge.edge.active import ActiveModel
from bentoedge.edge.sync import Result

pytestmark = pytest.mark.slow
VENV_BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    exe = VENV_BIN / "moto_server"
    if not exe.exists():
        pytest.fail(f"moto_server is not installed at {exe}: pip install 'moto[server]'")
    port = _free_port()
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("moto_server did not start within 30 s")
        import boto3

        boto3.client("s3").create_bucket(Bucket="fleet")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Hammer:
    """A client predicting in a loop (bounded in count and time), recording every failure.

    It paces itself (a fraction of a millisecond between calls) so that the count bound
    cannot run out before the swap it is there to watch: a tiny model answers in
    microseconds, and an unpaced loop once spent its 200,000 calls before v2 arrived."""

    def __init__(self, active: ActiveModel) -> None:
        self.active = active
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.versions: set[str] = set()
        self.count = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        x = {"x": np.ones((1, 4), np.float32)}
        deadline = time.monotonic() + 60
        while not self.stop.is_set() and self.count < 200_000 and time.monotonic() < deadline:
            model = self.active.get()
            try:
                assert model is not None, "no model active"
                y = model.predict(x)["y"]
                assert y.shape == (1, 3) and abs(float(y.sum()) - 1.0) < 1e-3
                self.versions.add(model.version)
            except Exception as exc:
                self.failures.append(repr(exc))
            self.count += 1
            self.stop.wait(0.0002)

    def __enter__(self) -> Hammer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def flip_a_bit(storage: Storage, ch: Channel, path: str) -> None:
    sha = ch.load().targets.signed.targets[path].hashes["sha256"]
    key = "targets/" + hashed_name(path, sha)
    data = bytearray(storage.get(key) or b"")
    assert data
    data[len(data) // 3] ^= 0x10
    storage.put(key, bytes(data))


@pytest.mark.parametrize("kind", ["folder", "s3"])
def test_publish_swap_under_load_and_refuse_tampered(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if kind == "s3":
        request.getfixturevalue("s3_endpoint")
        url = f"s3://fleet/{tmp_path.name}"
    else:
        url = (tmp_path / "chan").as_uri()
    home = tmp_path / "home"
    ch = Channel.init(url, home=home)
    storage = open_storage(url)
    assert isinstance(storage, S3Storage) == (kind == "s3")
    dev = make_device(tmp_path / "dev", ch.url, ch.root_bytes(), signer_pub(home), poll_seconds=0.05)
    ch.enroll("dev-1", dev.pub_pem)
    ch.publish(seal_tiny(tmp_path / "s1", home, "v1", 1))
    with dev.agent() as agent:
        assert agent.sync_once().result is Result.UPDATED
        with Hammer(dev.active) as client:
            time.sleep(0.2)
            ch.publish(seal_tiny(tmp_path / "s2", home, "v2", 2))
            stop = threading.Event()
            loop = threading.Thread(target=agent.run_forever, args=(stop,), daemon=True)
            loop.start()
            deadline = time.monotonic() + 30
            while dev.active.get().version != "v2" and time.monotonic() < deadline:  # type: ignore[union-attr]
                time.sleep(0.05)
            time.sleep(0.2)
            stop.set()
            loop.join(timeout=30)
        assert client.failures == [] and client.count > 100
        assert client.versions == {"v1", "v2"}
        assert agent.status()["active"]["version"] == "v2"

        ch.publish(seal_tiny(tmp_path / "s3", home, "v3", 3))
        flip_a_bit(storage, ch, "tiny/v3/artifacts/edge-fp32.tflite.enc")
        results = [agent.sync_once() for _ in range(3)]  # refused every time, and retried
        assert [r.result for r in results] == [Result.ERROR] * 3
        assert all("Mismatch" in r.reason and "tiny:v3 is not installed" in r.reason for r in results)
        assert dev.active.get().version == "v2"  # type: ignore[union-attr]
        assert agent.state.pointer().active == "v2"
        # The tampering is in storage, not in anything signed: once the bytes are right again
        # (here the same bit flipped back), the device takes v3; nobody can block it for good.
        assert "tiny:v3" not in agent.status()["failed"]
        flip_a_bit(storage, ch, "tiny/v3/artifacts/edge-fp32.tflite.enc")
        assert agent.sync_once().result is Result.UPDATED
        assert dev.active.get().version == "v3"  # type: ignore[union-attr]
