"""Bringing a sealed model up in the cloud: verify, unwrap, decrypt in memory, run, self-check.

``open_cloud_model`` is the whole start-up path of the cloud service, in the order that
lets nothing unverified run: signature against the trusted signers, data-key unwrap
(local KEK or AWS KMS), decryption into memory with every segment authenticated and the
plaintext checked against its signed SHA-256, ``onnxruntime.InferenceSession(bytes)``
(the plaintext never touches the disk), and the sealed golden samples.  Our copy of the
plaintext is wiped once the session holds its own, except with a GPU provider: ONNX
Runtime keeps those bytes to rebuild the session on the CPU if the GPU fails, so they
live as long as the session.  Any failure is a ``BentoEdgeError`` whose one-line message the
service logs before refusing to start.

``CloudModel.predict`` runs the ONNX Runtime binding (``bentos.runtimes.onnxruntime``):
it maps manifest names onto the session's inputs/outputs (by name, or by position when
an exporter renamed them) and is thread-safe, as ONNX Runtime sessions accept concurrent
``run`` calls.  The build recorded the golden samples through the same binding, so the
service checks the build's answers with the very same code.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bentoedge.bentos import aead, health
from bentoedge.bentos.errors import HealthCheckError, KeyMissingError
from bentoedge.bentos.keystore import LocalKeys, default_home
from bentoedge.bentos.manifest import Artifact, Manifest
from bentoedge.bentos.recipients import Keyring
from bentoedge.bentos.runtimes import SignatureMismatch
from bentoedge.bentos.runtimes import onnxruntime as ort_binding
from bentoedge.bentos.sealed import SealedModel
from bentoedge.cloud.service_core import (
    CloudSettings,
    Placement,
    choose_placement,
    trusted_from_hex,
)


def trusted_signers(settings: CloudSettings, env: Mapping[str, str] = os.environ) -> dict[str, bytes]:
    trusted = trusted_from_hex(settings.trusted_hex)
    trusted.update(LocalKeys(default_home(env)).trusted_signers())
    if not trusted:
        raise KeyMissingError("no trusted signer keys: set BENTOEDGE_TRUSTED_SIGNERS (hex) "
                              "or put signing.pub/trusted/*.pub under $BENTOEDGE_HOME/keys")
    return trusted


def keyring_for(settings: CloudSettings, sealed: SealedModel, env: Mapping[str, str] = os.environ) -> Keyring:
    """The keys this process may unwrap with: a KEK file if present, KMS when wrapped for it."""
    ring = Keyring()
    if settings.kek_file:
        try:
            kek = bytes.fromhex(Path(settings.kek_file).read_text().strip())
        except (OSError, ValueError):
            raise KeyMissingError(f"BENTOEDGE_KEK_FILE={settings.kek_file}: cannot read a hex KEK there") from None
        if len(kek) != 32:
            raise KeyMissingError(f"BENTOEDGE_KEK_FILE={settings.kek_file}: a KEK must be 64 hex digits")
        ring.add_kek(kek)
    else:
        local = LocalKeys(default_home(env))
        if (local.dir / "kek.key").exists():
            ring.add_kek(local.kek())
    wrapped_for_kms = any(w.get("type") == "kms" for ws in sealed.wraps().values() for w in ws)
    if settings.kms if settings.kms is not None else wrapped_for_kms:
        ring.kms_client_factory = _kms_client
    return ring


def _kms_client() -> Any:
    import boto3  # the cloud extra has it; endpoint and region come from the AWS_* env

    return boto3.client("kms")


def onnx_providers() -> list[str]:
    """The ONNX Runtime execution providers on this machine (placement picks from them)."""
    return ort_binding.available_providers()


class CloudModel:
    """One decrypted cloud artifact in an ONNX Runtime session."""

    def __init__(self, manifest: Manifest, artifact: Artifact, model_bytes: bytes,
                 providers: tuple[str, ...], threads: int | None = None) -> None:
        self.manifest = manifest
        self.artifact = artifact
        try:
            self._model = ort_binding.OnnxModel(model_bytes, [t.name for t in manifest.signature.inputs],
                                               [t.name for t in manifest.signature.outputs], providers, threads)
        except SignatureMismatch:
            raise HealthCheckError(f"{artifact.id}: the ONNX graph's inputs/outputs do not match the manifest signature") from None
        self.session = self._model.session
        self.providers = self._model.providers

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._model.run(inputs)


@dataclass(frozen=True)
class Loaded:
    model: CloudModel
    placement: Placement
    golden_count: int
    decrypt_seconds: float
    load_seconds: float


def open_cloud_model(sealed: SealedModel, settings: CloudSettings, env: Mapping[str, str] = os.environ,
                     providers: list[str] | None = None) -> Loaded:
    t0 = time.perf_counter()
    # The signature here; the artifact's bytes are checked as they are decrypted (every segment
    # authenticated, and the signed segment commitment of format 1.1, or the plaintext SHA-256 of 1), so hashing the ciphertext as
    # well would read and hash a large model twice before it serves.
    sealed.verify_signature(trusted_signers(settings, env))
    placement = choose_placement(sealed.manifest, providers if providers is not None else onnx_providers(), settings)
    ring = keyring_for(settings, sealed, env)
    plain = sealed.decrypt(placement.artifact.id, ring)
    t1 = time.perf_counter()
    try:
        model = CloudModel(sealed.manifest, placement.artifact, plain, placement.providers, settings.ort_threads)
    except HealthCheckError:
        raise
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph kinds
        raise HealthCheckError(f"{sealed.manifest.tag}: onnxruntime cannot load {placement.artifact.id}: {exc}") from None
    finally:
        # The session parsed its own copy, but ONNX Runtime keeps our bytes to rebuild the
        # session on the CPU if a GPU provider fails at run time: wipe them only when no
        # such fallback exists.
        if tuple(placement.providers) == ("CPUExecutionProvider",):
            aead.wipe(plain)
    count = golden_check(model, sealed, ring)
    return Loaded(model, placement, count, t1 - t0, time.perf_counter() - t0)


def golden_check(model: CloudModel, sealed: SealedModel, keyring: Keyring) -> int:
    """Run the sealed cloud golden samples; how many passed, or HealthCheckError."""
    return health.check(sealed, model.artifact, model.predict, keyring)
