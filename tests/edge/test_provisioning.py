"""``agent init`` trusts a channel root only from an anchor the operator gives (security
finding 1): a fingerprint of ``1.root.json`` or a root file, then every newer root verified
from it.  A forged newer root is refused at provisioning, and a provisioned device is not
re-pointed without ``--force``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root

from bentoedge.cli import cli
from bentoedge.cloud.channel import Channel


@pytest.fixture()
def channel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path, Path]:
    monkeypatch.setenv("BENTOEDGE_HOME", str(tmp_path / "home"))
    folder = tmp_path / "chan"
    Channel.init(folder.as_uri(), tmp_path / "home", root_keys_dir=tmp_path / "offline")
    signer = tmp_path / "signer.pub"
    signer.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return folder.as_uri(), folder, signer


def init(url: str, state: Path, signer: Path, *extra: str) -> Result:
    return CliRunner().invoke(cli, ["agent", "init", "--channel", url, "--cloud", "http://127.0.0.1:9",
                                    "--state", str(state), "--signer", str(signer), "--device-id", "d1", *extra])


def fingerprint(folder: Path) -> str:
    return hashlib.sha256((folder / "metadata" / "1.root.json").read_bytes()).hexdigest()


def forge_root_2(folder: Path) -> None:
    """A 2.root.json that an attacker who can write the bucket makes: new keys, self-signed."""
    md = Metadata[Root].from_bytes((folder / "metadata" / "1.root.json").read_bytes())
    evil = CryptoSigner.generate_ed25519()
    for role in ("root", "targets", "snapshot", "timestamp"):
        for keyid in list(md.signed.roles[role].keyids):
            md.signed.revoke_key(keyid, role)
        md.signed.add_key(evil.public_key, role)
        md.signed.roles[role].threshold = 1
    md.signed.version = 2
    md.signatures.clear()
    md.sign(evil)
    (folder / "metadata" / "2.root.json").write_bytes(md.to_bytes())


def test_a_forged_newer_root_is_refused_at_init(channel: tuple[str, Path, Path], tmp_path: Path) -> None:
    url, folder, signer = channel
    forge_root_2(folder)
    r = init(url, tmp_path / "dev", signer, "--root-sha256", fingerprint(folder))
    assert r.exit_code == 1, r.output
    assert "do not provision" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "dev" / "root.json").exists() and not (tmp_path / "dev" / "agent.toml").exists()


def test_a_genuine_rotation_is_followed(channel: tuple[str, Path, Path], tmp_path: Path) -> None:
    url, folder, signer = channel
    Channel.open(url).rotate("timestamp", tmp_path / "offline")
    r = init(url, tmp_path / "dev", signer, "--root-sha256", fingerprint(folder))
    assert r.exit_code == 0, r.output
    assert "root v2" in r.output
    assert (tmp_path / "dev" / "root.json").read_bytes() == (folder / "metadata" / "2.root.json").read_bytes()


def test_a_wrong_fingerprint_or_no_anchor_is_refused(channel: tuple[str, Path, Path], tmp_path: Path) -> None:
    url, folder, signer = channel
    r = init(url, tmp_path / "dev", signer, "--root-sha256", "0" * 64)
    assert r.exit_code == 1 and "not the --root-sha256" in r.output, r.output
    r = init(url, tmp_path / "dev", signer)
    assert r.exit_code == 2 and "--root-sha256" in r.output, r.output
    assert not (tmp_path / "dev" / "root.json").exists()


def test_a_root_file_anchors_too_and_a_second_init_needs_force(channel: tuple[str, Path, Path], tmp_path: Path) -> None:
    url, folder, signer = channel
    anchor = folder / "metadata" / "1.root.json"
    assert init(url, tmp_path / "dev", signer, "--root", str(anchor)).exit_code == 0
    before = (tmp_path / "dev" / "root.json").read_bytes()
    forge_root_2(folder)
    r = init(url, tmp_path / "dev", signer, "--root", str(anchor))
    assert r.exit_code == 2 and "--force" in r.output, r.output
    r = init(url, tmp_path / "dev", signer, "--root", str(anchor), "--force")
    assert r.exit_code == 1, r.output  # even with --force, the forged root does not verify
    assert (tmp_path / "dev" / "root.json").read_bytes() == before  # the device keeps what it trusted


def test_cloud_aws_is_written_and_a_bad_one_leaves_nothing(channel: tuple[str, Path, Path], tmp_path: Path) -> None:
    from bentoedge.edge import config as agent_config

    url, folder, signer = channel
    r = init(url, tmp_path / "bad", signer, "--root-sha256", fingerprint(folder), "--cloud-aws", "lambda")
    assert r.exit_code == 2 and "cloud_aws must be" in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "bad").exists()
    r = init(url, tmp_path / "dev", signer, "--root-sha256", fingerprint(folder), "--cloud-aws", "lambda:eu-west-1")
    assert r.exit_code == 0, r.output
    assert agent_config.load(tmp_path / "dev" / "agent.toml").cloud_aws == "lambda:eu-west-1"
