"""What the cloud service decides before it touches a model: settings, trust, which artifact.

The BentoML service (``cloud/service.py``) reads its settings from the environment once,
because ``bentoml serve``, ``bentoml build`` and a container all hand settings to a
service that way.  This module turns that environment into a small ``CloudSettings``
value and picks the artifact to run from (manifest, available ONNX Runtime providers,
settings).  Pure: mappings and manifests in, values or a ``BentoEdgeError`` out; reading
key files and starting runtimes happens in ``cloud/service_model.py``.

Environment (all optional except the model):

    BENTOEDGE_MODEL             name[:version] of the sealed model in the BentoML store
    BENTOEDGE_HOME              local keys (signing.pub, trusted/*.pub, kek.key)
    BENTOEDGE_TRUSTED_SIGNERS   comma-separated hex Ed25519 public keys (containers)
    BENTOEDGE_KEK_FILE          a hex KEK file to unwrap with (instead of $BENTOEDGE_HOME)
    BENTOEDGE_KMS               "1" to unwrap KMS wraps (default: when keys.json has one)
    BENTOEDGE_DEVICE            auto | cpu | cuda    (auto: CUDA when onnxruntime offers it)
    BENTOEDGE_CLOUD_ARTIFACT    an artifact id to force, e.g. cloud-int8
    BENTOEDGE_MAX_BATCH         adaptive batching: largest batch (default 32)
    BENTOEDGE_MAX_LATENCY_MS    adaptive batching: latency budget (default 20); BentoML's dispatcher
                                sheds with 503 what it predicts would miss it (bench/cloud_serving's
                                goodput curves show how much at each concurrency)
    BENTOEDGE_MAX_PAYLOAD       request body limit in bytes (default 16 MiB)
    BENTOEDGE_ORT_THREADS       intra-op threads per session (default: onnxruntime's)
    BENTOEDGE_AUTH              on (default) | off | iam: off lets every request in (local development);
                                iam leaves callers to AWS IAM (SageMaker InvokeEndpoint, or a function
                                URL with AuthType AWS_IAM), which checks a SigV4 signature before the
                                request arrives; the Lambda handler then takes only events IAM signed
    BENTOEDGE_API_KEYS_FILE     hashed API keys (default $BENTOEDGE_HOME/keys/api_keys.json)
    BENTOEDGE_CHANNEL           the channel whose signed device registry lets devices in ...
    BENTOEDGE_CHANNEL_ROOT      ... read from this trusted root.json (TUF)
    BENTOEDGE_CHANNEL_ROOT_SHA256  or the channel's own 1.root.json, taken only when its SHA-256 is
                                this (what ``channel init`` prints; fits a Lambda environment)
    BENTOEDGE_DEVICE_REGISTRY   or a registry file (path or file://) instead of a channel
    BENTOEDGE_REGISTRY_REFRESH_S  how often the registry is fetched again (default 60)
    BENTOEDGE_AUTH_WINDOW_S     how old a device signature may be (default 300)
    BENTOEDGE_FLEET             on (default) | off: accept devices' signed reports at POST /fleet/reports
    BENTOEDGE_FLEET_STORE       where they go: a path, file:// or s3:// (default $BENTOEDGE_HOME/fleet)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bentoedge.bentos.api import DEFAULT_MAX_PAYLOAD
from bentoedge.bentos.errors import ConfigError, HealthCheckError, KeyMissingError
from bentoedge.bentos.manifest import Artifact, Manifest
from bentoedge.bentos.signing import key_id

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
#: Preference among cloud precisions per device: fp16 only pays off on a GPU.
PREFERENCE = {"cuda": ("fp16", "fp32", "int8"), "cpu": ("fp32", "int8", "fp16")}


@dataclass(frozen=True)
class CloudSettings:
    model: str | None
    device: str = "auto"
    artifact: str | None = None
    trusted_hex: tuple[str, ...] = ()
    kek_file: str | None = None
    kms: bool | None = None
    max_batch: int = 32
    max_latency_ms: int = 20
    max_payload: int = DEFAULT_MAX_PAYLOAD
    ort_threads: int | None = None
    auth: bool = True
    auth_by_iam: bool = False  # BENTOEDGE_AUTH=iam: AWS IAM checked the caller before the request came
    api_keys_file: str | None = None
    channel: str | None = None
    channel_root: str | None = None
    channel_root_sha256: str | None = None
    registry: str | None = None
    registry_refresh_s: int = 60
    auth_window_s: int = 300
    replay_db: str | None = None  # the shared replay cache's file, or "memory" (cloud.replay)
    workers: int = 1  # BentoML worker processes of the service

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> CloudSettings:
        device = env.get("BENTOEDGE_DEVICE", "auto").strip().lower() or "auto"
        if device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"BENTOEDGE_DEVICE={device!r}: use auto, cpu or cuda")
        kms = env.get("BENTOEDGE_KMS")
        auth = (env.get("BENTOEDGE_AUTH") or "on").strip().lower()
        if auth not in ("on", "off", "iam", "1", "0", "true", "false"):
            raise ConfigError(f"BENTOEDGE_AUTH={auth!r}: use on, off or iam")
        return cls(
            model=(env.get("BENTOEDGE_MODEL") or "").strip() or None,
            device=device,
            artifact=(env.get("BENTOEDGE_CLOUD_ARTIFACT") or "").strip() or None,
            trusted_hex=tuple(k.strip() for k in env.get("BENTOEDGE_TRUSTED_SIGNERS", "").split(",") if k.strip()),
            kek_file=(env.get("BENTOEDGE_KEK_FILE") or "").strip() or None,
            kms=None if kms is None else kms.strip().lower() in ("1", "true", "yes"),
            max_batch=_int(env, "BENTOEDGE_MAX_BATCH", 32),
            max_latency_ms=_int(env, "BENTOEDGE_MAX_LATENCY_MS", 20),
            max_payload=_int(env, "BENTOEDGE_MAX_PAYLOAD", DEFAULT_MAX_PAYLOAD),
            ort_threads=_int(env, "BENTOEDGE_ORT_THREADS", 0) or None,
            auth=auth in ("on", "1", "true"),
            auth_by_iam=auth == "iam",
            api_keys_file=_str(env, "BENTOEDGE_API_KEYS_FILE"),
            channel=_str(env, "BENTOEDGE_CHANNEL"),
            channel_root=_str(env, "BENTOEDGE_CHANNEL_ROOT"),
            channel_root_sha256=_str(env, "BENTOEDGE_CHANNEL_ROOT_SHA256"),
            registry=_str(env, "BENTOEDGE_DEVICE_REGISTRY"),
            registry_refresh_s=max(1, _int(env, "BENTOEDGE_REGISTRY_REFRESH_S", 60)),
            auth_window_s=max(1, _int(env, "BENTOEDGE_AUTH_WINDOW_S", 300)),
            replay_db=_str(env, "BENTOEDGE_REPLAY_DB"),
            workers=max(1, _int(env, "BENTOEDGE_WORKERS", 1)),
        )


def _str(env: Mapping[str, str], key: str) -> str | None:
    return (env.get(key) or "").strip() or None


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} must be a whole number") from None
    if value < 0:
        raise ConfigError(f"{key}={raw!r} must not be negative")
    return value


def trusted_from_hex(keys: Sequence[str]) -> dict[str, bytes]:
    """Key id -> raw public key for hex-encoded Ed25519 public keys (container trust)."""
    out = {}
    for k in keys:
        try:
            raw = bytes.fromhex(k)
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise KeyMissingError(f"BENTOEDGE_TRUSTED_SIGNERS entry {k[:16]!r}... is not a 64-digit hex Ed25519 public key")
        out[key_id(raw)] = raw
    return out


@dataclass(frozen=True)
class Placement:
    """The artifact to run and the ONNX Runtime providers to run it with, and why."""

    artifact: Artifact
    providers: tuple[str, ...]
    reason: str


def choose_placement(manifest: Manifest, available: Sequence[str], settings: CloudSettings) -> Placement:
    models = {a.id: a for a in manifest.models("cloud") if a.runtime == "onnxruntime"}
    if not models:
        raise HealthCheckError(f"{manifest.tag} has no cloud (ONNX) artifact; rebuild it with --cloud fp32")
    has_cuda = CUDA in available
    if settings.device == "cuda" and not has_cuda:
        raise ConfigError(f"BENTOEDGE_DEVICE=cuda but onnxruntime offers only {list(available)}; install onnxruntime-gpu")
    device = "cuda" if settings.device == "cuda" or (settings.device == "auto" and has_cuda) else "cpu"
    providers = (CUDA, CPU) if device == "cuda" else (CPU,)
    if settings.artifact:
        if settings.artifact not in models:
            raise ConfigError(f"BENTOEDGE_CLOUD_ARTIFACT={settings.artifact!r} is not in {manifest.tag} (has {sorted(models)})")
        return Placement(models[settings.artifact], providers, f"{device}, forced by BENTOEDGE_CLOUD_ARTIFACT")
    ranked = sorted(models.values(), key=lambda a: PREFERENCE[device].index(a.precision)
                    if a.precision in PREFERENCE[device] else 99)
    return Placement(ranked[0], providers, f"{device} ({'GPU found' if has_cuda else 'no GPU'})")


def batchable(manifest: Manifest) -> bool:
    """Adaptive batching needs one input whose first dimension alone is dynamic (the batch):
    requests with another free dimension could not be stacked into one batch."""
    ins = manifest.signature.inputs
    return (len(ins) == 1 and bool(ins[0].shape) and ins[0].shape[0] is None
            and all(d is not None for d in ins[0].shape[1:]))
