"""Pure decisions of the cloud service: settings from the environment, artifact and device choice."""

from __future__ import annotations

import pytest

from bentoedge.bentos.errors import ConfigError, HealthCheckError, KeyMissingError
from bentoedge.bentos.manifest import Artifact, Manifest, Signature, TensorSpec
from bentoedge.cloud.service_core import (
    CPU,
    CUDA,
    CloudSettings,
    batchable,
    choose_placement,
    trusted_from_hex,
)


def art(id_: str, target: str = "cloud", runtime: str | None = "onnxruntime", precision: str | None = "fp32") -> Artifact:
    return Artifact(id_, target, runtime, precision, f"artifacts/{id_}.enc", 1, "0" * 64, "0" * 64,
                    {"scheme": "aes256gcm-stream/1", "segment_size": 65536})


def manifest(*arts: Artifact, inputs: tuple[TensorSpec, ...] = (TensorSpec("x", "float32", (None, 4)),)) -> Manifest:
    return Manifest("m", "v1", 1, "2026-01-01T00:00:00Z", {}, Signature(inputs, (TensorSpec("y", "float32", (None, 2)),)),
                    tuple(arts))


ALL = manifest(art("cloud-fp32"), art("cloud-fp16", precision="fp16"), art("cloud-int8", precision="int8"),
               art("edge-int8", "edge", "litert", "int8"), art("golden-cloud", runtime=None, precision=None))


def test_gpu_takes_fp16_on_cuda_and_cpu_takes_fp32() -> None:
    p = choose_placement(ALL, [CUDA, CPU], CloudSettings(model="m"))
    assert (p.artifact.id, p.providers) == ("cloud-fp16", (CUDA, CPU))
    p = choose_placement(ALL, [CPU], CloudSettings(model="m"))
    assert (p.artifact.id, p.providers) == ("cloud-fp32", (CPU,))


def test_cpu_falls_back_to_int8_and_env_can_force() -> None:
    only_int8 = manifest(art("cloud-int8", precision="int8"))
    assert choose_placement(only_int8, [CPU], CloudSettings(model="m")).artifact.id == "cloud-int8"
    forced = CloudSettings.from_env({"BENTOEDGE_CLOUD_ARTIFACT": "cloud-int8", "BENTOEDGE_DEVICE": "cpu"})
    p = choose_placement(ALL, [CUDA, CPU], forced)
    assert (p.artifact.id, p.providers) == ("cloud-int8", (CPU,))


def test_bad_choices_are_explained() -> None:
    with pytest.raises(ConfigError, match="onnxruntime-gpu"):
        choose_placement(ALL, [CPU], CloudSettings(model="m", device="cuda"))
    with pytest.raises(ConfigError, match="not in m:v1"):
        choose_placement(ALL, [CPU], CloudSettings(model="m", artifact="cloud-bf16"))
    with pytest.raises(HealthCheckError, match="no cloud"):
        choose_placement(manifest(art("edge-int8", "edge", "litert", "int8")), [CPU], CloudSettings(model="m"))


def test_settings_from_env_validates() -> None:
    s = CloudSettings.from_env({"BENTOEDGE_MODEL": "digits:v2", "BENTOEDGE_MAX_BATCH": "8", "BENTOEDGE_KMS": "true"})
    assert (s.model, s.max_batch, s.kms, s.device) == ("digits:v2", 8, True, "auto")
    with pytest.raises(ConfigError, match="BENTOEDGE_MAX_BATCH"):
        CloudSettings.from_env({"BENTOEDGE_MAX_BATCH": "lots"})
    with pytest.raises(ConfigError, match="BENTOEDGE_DEVICE"):
        CloudSettings.from_env({"BENTOEDGE_DEVICE": "tpu"})


def test_trusted_keys_from_hex() -> None:
    raw = bytes(range(32))
    trusted = trusted_from_hex([raw.hex()])
    assert list(trusted.values()) == [raw]
    with pytest.raises(KeyMissingError, match="not a 64-digit hex"):
        trusted_from_hex(["abcd"])


def test_batching_needs_one_input_with_a_dynamic_batch() -> None:
    assert batchable(ALL)
    assert not batchable(manifest(art("cloud-fp32"), inputs=(TensorSpec("x", "float32", (1, 4)),)))
    assert not batchable(manifest(art("cloud-fp32"), inputs=(TensorSpec("a", "float32", (None, 4)),
                                                             TensorSpec("b", "float32", (None, 4)))))
