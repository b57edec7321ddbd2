"""The publisher: channel layout, what a publish uploads, maintenance verbs, the CLI,
and the device fetchers it is read with (file, HTTP with Range resume)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sync_support import RangeHandler, make_device, seal_tiny, serve_folder, signer_pub
from tuf.api.metadata import Metadata

from bentoedge.bentos.errors import KeyMissingError, NotFoundError, UsageError
from bentoedge.bentos.recipients import parse_keys_document
from bentoedge.cli import cli
from bentoedge.cloud.channel import Channel, repo
from bentoedge.cloud.channel.storage import FolderStorage, open_storage
from bentoedge.edge.fetchers import FileFetcher, HttpFetcher
from bentoedge.edge.sync import SyncAgent


@pytest.fixture
def chan(tmp_path: Path) -> tuple[Channel, Path]:
    home = tmp_path / "home"
    return Channel.init((tmp_path / "chan").as_uri(), home=home), home


def test_layout_and_private_state_stay_apart(chan: tuple[Channel, Path], tmp_path: Path) -> None:
    ch, home = chan
    files = FolderStorage(tmp_path / "chan").list("")
    assert files == ["metadata/1.root.json", "metadata/1.snapshot.json", "metadata/1.targets.json",
                     "metadata/timestamp.json"]
    root = Metadata.from_bytes((tmp_path / "chan/metadata/1.root.json").read_bytes()).signed
    assert root.consistent_snapshot and root.roles["root"].threshold == 2 and len(root.roles["root"].keyids) == 3
    assert sorted(p.name for p in (ch.state_dir / "keys").iterdir()) == ["snapshot.pem", "targets.pem", "timestamp.pem"]
    assert len(list((ch.state_dir / "offline-root").glob("*.pem"))) == 3
    assert oct((ch.state_dir / "keys" / "targets.pem").stat().st_mode & 0o777) == "0o600"
    ts = Metadata.from_bytes((tmp_path / "chan/metadata/timestamp.json").read_bytes()).signed
    assert (ts.expires - repo.utcnow()).total_seconds() <= 86400
    with pytest.raises(UsageError, match="already exists"):
        Channel.init(ch.url, home=home)


def test_publish_uploads_only_edge_parts_with_device_wraps(chan: tuple[Channel, Path], tmp_path: Path) -> None:
    ch, home = chan
    dev = make_device(tmp_path / "dev", ch.url, ch.root_bytes(), signer_pub(home))
    ch.enroll("dev-1", dev.pub_pem)
    sealed = seal_tiny(tmp_path / "s1", home, "v1", 1)
    before = (sealed.path / "keys.json").read_bytes()
    rel = ch.publish(sealed, rollout=40, device_classes=("pi",), min_agent="0.1.0")
    assert (sealed.path / "keys.json").read_bytes() == before  # the store's copy is untouched
    targets = ch.load().targets.signed.targets
    assert sorted(targets) == ["tiny/v1/artifacts/edge-fp32.tflite.enc", "tiny/v1/artifacts/golden-edge.npz.enc",
                               "tiny/v1/keys.json", "tiny/v1/manifest.json", "tiny/v1/manifest.sig"]
    custom = targets["tiny/v1/manifest.json"].custom["bentoedge"]
    assert (custom["release"], custom["rollout"], custom["device_classes"], custom["min_agent"]) == (1, 40, ["pi"], "0.1.0")
    assert rel.rollout == 40
    uploaded = FolderStorage(tmp_path / "chan").list("targets")
    assert not any("cloud" in f for f in uploaded)
    sha = targets["tiny/v1/keys.json"].hashes["sha256"]
    wraps = parse_keys_document((tmp_path / "chan/targets/tiny/v1" / f"{sha}.keys.json").read_bytes())
    assert set(wraps) == {"edge-fp32", "golden-edge"}
    assert all(w["type"] == "x25519" and "label" not in w for ws in wraps.values() for w in ws)
    assert b"dev-1" not in (tmp_path / "chan/targets/tiny/v1" / f"{sha}.keys.json").read_bytes()


def test_enrolling_later_and_republishing_lets_the_new_device_decrypt(chan: tuple[Channel, Path], tmp_path: Path) -> None:
    ch, home = chan
    sealed = seal_tiny(tmp_path / "s1", home, "v1", 1)
    ch.publish(sealed)
    dev = make_device(tmp_path / "dev", ch.url, ch.root_bytes(), signer_pub(home))
    with SyncAgent(dev.config, dev.active) as agent:
        r = agent.sync_once()
        assert r.result == "error" and "this device (dev-1) is not enrolled for tiny:v1" in r.reason, r.reason
        assert "bentoedge channel enroll dev-1 " in r.reason and "then publish tiny:v1 again" in r.reason
        assert agent.status()["failed"] == {}  # the device's missing key is not the version's fault
        ch.enroll("dev-1", dev.pub_pem)
        ch.publish(sealed)
        assert agent.sync_once().result == "updated"


def test_release_order_withdraw_pin_refresh_rotate(chan: tuple[Channel, Path], tmp_path: Path) -> None:
    ch, home = chan
    ch.publish(seal_tiny(tmp_path / "s1", home, "v1", 1))
    ch.publish(seal_tiny(tmp_path / "s2", home, "v2", 2))
    with pytest.raises(UsageError, match="never go back"):
        ch.publish(seal_tiny(tmp_path / "s0", home, "v0", 2))
    ch.pin("tiny", "v1")
    rels = {r.version: r for r in repo.releases(ch.load().targets.signed)}
    assert rels["v1"].pinned and not rels["v2"].pinned
    ch.withdraw("tiny", "v2")
    assert [r.version for r in repo.releases(ch.load().targets.signed)] == ["v1"]
    with pytest.raises(NotFoundError):
        ch.withdraw("tiny", "v2")
    ts = ch.load().timestamp.signed.version
    assert ch.refresh() == ts + 1
    assert ch.rotate("snapshot") == 2
    st = ch.status()
    assert st["root"]["version"] == 2 and st["releases"][0]["version"] == "v1"
    with pytest.raises(KeyMissingError, match="offline root keys"):
        ch.rotate("targets", root_keys_dir=tmp_path / "empty")


def test_cli_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("BENTOEDGE_HOME", str(home))
    url = (tmp_path / "chan").as_uri()
    run = CliRunner().invoke
    r = run(cli, ["channel", "init", url, "--root-keys-dir", str(tmp_path / "offline")])
    assert r.exit_code == 0 and "MOVE THE OFFLINE ROOT KEYS AWAY" in r.output, r.output
    seal_tiny(tmp_path / "s1", home, "v1", 1)  # creates the signing key the device trusts
    fingerprint = next(line.split()[-1] for line in r.output.splitlines() if line.startswith("root fingerprint:"))
    r = run(cli, ["agent", "init", "--channel", url, "--cloud", "http://127.0.0.1:9",
                  "--state", str(tmp_path / "dev"), "--device-id", "d1", "--root-sha256", fingerprint])
    assert r.exit_code == 0 and "channel enroll d1" in r.output, r.output
    assert oct((tmp_path / "dev/device.key").stat().st_mode & 0o777) == "0o600"
    r = run(cli, ["channel", "enroll", "d1", str(tmp_path / "dev/device.pub"), "--channel", url])
    assert r.exit_code == 0, r.output
    r = run(cli, ["channel", "status", url, "--json"])
    assert json.loads(r.output)["devices"] == ["d1"]
    r = run(cli, ["channel", "rotate", "timestamp", "--channel", url])
    assert r.exit_code == 0 and "root is now version 2" in r.output, r.output
    r = run(cli, ["channel", "withdraw", "tiny:v9", "--channel", url])
    assert r.exit_code == 2 and "not published" in r.output
    r = run(cli, ["agent", "status", "--config", str(tmp_path / "dev/agent.toml"), "--json"])
    assert json.loads(r.output)["pointer"]["active"] is None
    r = run(cli, ["channel", "init", "ftp://x/y"])
    assert r.exit_code == 2


@pytest.fixture
def http_channel(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    with serve_folder(tmp_path) as base:
        yield base, tmp_path


def test_fetchers_resume_and_report_missing_as_404(http_channel: tuple[str, Path]) -> None:
    from tuf.api import exceptions

    base, folder = http_channel
    data = os.urandom(300_000)
    (folder / "blob").write_bytes(data)
    for fetcher, url in ((HttpFetcher(), f"{base}/blob"), (FileFetcher(), (folder / "blob").as_uri())):
        chunks, start = fetcher.fetch_from(url, 100_000)
        assert start == 100_000 and b"".join(chunks) == data[100_000:]
        assert fetcher.requests == 1 and fetcher.bytes == 200_000
        with pytest.raises(exceptions.DownloadHTTPError) as err:
            fetcher.download_bytes(url + "-missing", 10)
        assert err.value.status_code == 404


def test_agent_resumes_a_partial_download_over_http(http_channel: tuple[str, Path]) -> None:
    base, folder = http_channel
    home = folder / "home"
    ch = Channel.init((folder / "chan").as_uri(), home=home)
    dev = make_device(folder / "dev", f"{base}/chan", ch.root_bytes(), signer_pub(home))
    ch.enroll("dev-1", dev.pub_pem)
    sealed = seal_tiny(folder / "s1", home, "v1", 1)
    ch.publish(sealed)
    art = sealed.path / "artifacts" / "edge-fp32.tflite.enc"
    digest = hashlib.sha256(art.read_bytes()).hexdigest()[:16]  # partial files are named after the signed hash
    part = folder / "dev" / "staging" / "v1" / "artifacts" / f"edge-fp32.tflite.enc.{digest}.part"
    part.parent.mkdir(parents=True)
    half = art.stat().st_size // 2
    part.write_bytes(art.read_bytes()[:half])
    seen: dict[str, list[int]] = {}

    def progress(path: str, total: int, have: int) -> Callable[[int], None]:
        seen[path] = [total, have, 0]
        return lambda n: seen[path].__setitem__(2, seen[path][2] + n)

    with SyncAgent(dev.config, dev.active, progress=progress) as agent:
        r = agent.sync_once()
    assert r.result == "updated", r
    assert [rng for path, rng in RangeHandler.ranges if path.endswith(".edge-fp32.tflite.enc")] == [f"bytes={half}-"]
    # Progress starts at what was already there and counts the rest, file by file.
    assert seen["tiny/v1/artifacts/edge-fp32.tflite.enc"] == [art.stat().st_size, half, art.stat().st_size - half]
    assert all(have + got == total for total, have, got in seen.values()) and "tiny/v1/manifest.json" in seen
    assert not part.exists() and (folder / "dev/versions/v1/artifacts/edge-fp32.tflite.enc").read_bytes() == art.read_bytes()
    assert open_storage(ch.url).url == ch.url
