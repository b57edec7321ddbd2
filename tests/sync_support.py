"""Test support for the update channel and the sync agent: tiny real sealed models, devices.

Models are sealed with the real ``bentos.sealed.seal`` around a real 1 KB TFLite model
(``tests/data/sync_tiny_fp32.tflite``: softmax(x @ W + b), x of shape [n, 4]), with golden
samples computed by the real LiteRT interpreter, so the agent's health check is genuine.
``broken_golden=True`` seals expected outputs that are off, so the health check fails.
A ``Device`` is what ``agent init`` leaves behind; ``Device.agent()`` gets its sync agent
from ``edge.wiring.wire``, the same wiring ``agent run`` uses.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bentoedge.bentos.golden import Golden
from bentoedge.bentos.keystore import LocalKeys
from bentoedge.bentos.manifest import Signature, TensorSpec
from bentoedge.bentos.recipients import KekRecipient
from bentoedge.bentos.sealed import Plain, SealedModel, SealRequest, seal
from bentoedge.bentos.signing import raw_public
from bentoedge.edge.active import ActiveModel
from bentoedge.edge.config import AgentConfig
from bentoedge.edge.runtime import interpreter_class
from bentoedge.edge.sync.agent import CrashHook, SyncAgent
from bentoedge.edge.sync.download import DownloadProgress
from bentoedge.edge.wiring import wire

TINY = Path(__file__).parent / "data" / "sync_tiny_fp32.tflite"
SIG = Signature((TensorSpec("x", "float32", (None, 4)),), (TensorSpec("y", "float32", (None, 3)),))


def run_tflite(model: bytes, x: np.ndarray) -> np.ndarray:
    cls, _ = interpreter_class()
    interp = cls(model_content=model)
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], x.shape)
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    return np.asarray(interp.get_tensor(interp.get_output_details()[0]["index"]))


def seal_tiny(out: Path, home: Path, version: str, release: int, name: str = "tiny",
              model_bytes: bytes | None = None, broken_golden: bool = False,
              signer: Ed25519PrivateKey | None = None, output: str = "y",
              extra: dict[str, object] | None = None) -> SealedModel:
    """The committed tiny LiteRT model sealed as ``name:version``; ``output`` renames its output
    in the manifest (an API change, for the compatibility tests) and ``extra`` adds to it."""
    keys = LocalKeys(home)
    keys.init()
    model = model_bytes if model_bytes is not None else TINY.read_bytes()
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    y = run_tflite(model, x) + (0.5 if broken_golden else 0.0)
    golden = Golden({"x": x}, {"edge-fp32": {output: y.astype(np.float32)}})
    sig = SIG if output == "y" else Signature(SIG.inputs, (TensorSpec(output, "float32", (None, 3)),))
    req = SealRequest(
        name=name, version=version, release=release, source={"kind": "tflite", "sha256": "0" * 64},
        signature=sig, extra=extra or {},
        artifacts=[Plain("edge-fp32", "edge", model, "litert", "fp32"),
                   Plain("golden-edge", "edge", golden.to_bytes()),
                   Plain("cloud-fp32", "cloud", os.urandom(256), "onnxruntime", "fp32")],
        golden={"edge": "golden-edge", "count": 2, "tolerances": {"edge-fp32": {"atol": 1e-4, "rtol": 1e-3}}},
    )
    seal(req, out, [KekRecipient(keys.kek())], signer or keys.signing_key())
    return SealedModel.open(out)


@dataclass
class Device:
    config: AgentConfig
    key: X25519PrivateKey
    pub_pem: bytes
    active: ActiveModel
    identity: Ed25519PrivateKey | None = None
    identity_pem: bytes = b""

    def agent(self, config: AgentConfig | None = None, *, crash: CrashHook | None = None,
              progress: DownloadProgress | None = None) -> SyncAgent:
        """This device's sync agent serving into ``active``, wired as on a device (``config``
        replaces the device's, e.g. to divert its channel); use it in a ``with``."""
        return wire(config or self.config, active=self.active, crash=crash, progress=progress).agent


def make_device(state: Path, channel_url: str, root: bytes, signer_pub: bytes, device_id: str = "dev-1",
                device_class: str = "default", **extra: object) -> Device:
    """What ``agent init`` does, in-process: key pairs (X25519, Ed25519 identity), trust anchor, config."""
    state.mkdir(parents=True, exist_ok=True)
    key = X25519PrivateKey.generate()
    (state / "device.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (state / "device.pub").write_bytes(pub)
    identity = Ed25519PrivateKey.generate()
    (state / "identity.key").write_bytes(identity.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    identity_pem = identity.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)
    (state / "identity.pub").write_bytes(identity_pem)
    (state / "root.json").write_bytes(root)
    cfg = AgentConfig(device_id=device_id, channel=channel_url, cloud="http://127.0.0.1:9", state=str(state),
                      device_class=device_class, trusted_signers=(signer_pub.hex(),), **extra)  # type: ignore[arg-type]
    return Device(cfg, key, pub, ActiveModel(), identity, identity_pem)


def signer_pub(home: Path) -> bytes:
    LocalKeys(home).init()
    return raw_public(LocalKeys(home).signing_key().public_key())


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """A static file handler that honours ``Range: bytes=N-`` (the stdlib one ignores it),
    as S3, CDNs and nginx do; quiet, and counting requests per path."""

    counts: dict[str, int] = {}
    ranges: list[tuple[str, str]] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def send_head(self):  # type: ignore[no-untyped-def]
        self.counts[self.path] = self.counts.get(self.path, 0) + 1
        rng = self.headers.get("Range", "")
        if rng:
            self.ranges.append((self.path, rng))
        m = re.fullmatch(r"bytes=(\d+)-", rng)
        path = Path(self.translate_path(self.path))
        if not m or not path.is_file():
            return super().send_head()
        start, size = int(m.group(1)), path.stat().st_size
        if start >= size:
            self.send_error(416)
            return None
        f = open(path, "rb")  # noqa: SIM115 - closed by the base class after copyfile
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        return f


@contextmanager
def serve_folder(folder: Path, tls: ssl.SSLContext | None = None) -> Iterator[str]:
    """Serve ``folder`` on a loopback port in a thread (over TLS with ``tls``); yields the base URL."""
    handler = functools.partial(RangeHandler, directory=str(folder))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        srv.socket = tls.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(timeout=5)


def tls_for_loopback(folder: Path, name: str = "test") -> tuple[ssl.SSLContext, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it: the server's TLS
    context, and the CA's PEM file for a client to trust (``SSL_CERT_FILE``)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    (folder / f"{name}-ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / f"{name}-server.pem").write_bytes(cert.public_bytes(pem) + key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(folder / f"{name}-server.pem")
    return ctx, folder / f"{name}-ca.pem"
