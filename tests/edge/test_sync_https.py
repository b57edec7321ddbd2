"""The channel over HTTPS: the device's HTTP fetcher (standard library only) verifies the
server's certificate, so a device takes updates from a channel whose certificate it trusts
and refuses, keeping its version, one it does not (a man in the middle with his own CA)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from sync_support import make_device, seal_tiny, serve_folder, signer_pub, tls_for_loopback

from bentoedge.cloud.channel import Channel
from bentoedge.edge.sync import Result


def test_https_channel_trusted_and_impostor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    ch = Channel.init((tmp_path / "site" / "chan").as_uri(), home=home)
    good, good_ca = tls_for_loopback(tmp_path / "tls", "channel")
    evil, _ = tls_for_loopback(tmp_path / "tls", "impostor")
    monkeypatch.setenv("SSL_CERT_FILE", str(good_ca))  # the device trusts the channel's CA only
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with serve_folder(tmp_path / "site", tls=good) as base:
        assert base.startswith("https://")
        dev = make_device(tmp_path / "dev", f"{base}/chan", ch.root_bytes(), signer_pub(home))
        ch.enroll("dev-1", dev.pub_pem)
        ch.publish(seal_tiny(tmp_path / "s1", home, "v1", 1))
        with dev.agent() as agent:
            r = agent.sync_once()
            assert r.result is Result.UPDATED and r.bytes > 0, r
    ch.publish(seal_tiny(tmp_path / "s2", home, "v2", 2))
    with serve_folder(tmp_path / "site", tls=evil) as evil_base:
        port = evil_base.rsplit(":", 1)[1]
        diverted = dataclasses.replace(dev.config, channel=f"https://127.0.0.1:{port}/chan")  # the impostor answers
        with dev.agent(diverted) as agent:
            r = agent.sync_once()
            assert r.result is Result.ERROR and "CERTIFICATE_VERIFY_FAILED" in r.reason, r
            assert dev.active.get().version == "v1"  # type: ignore[union-attr]
