"""The health check every serving side runs before a model answers: its sealed golden samples.

The device agent (LiteRT) and the cloud service (ONNX Runtime) each decrypt the golden
samples of their target, run them through the model they just loaded, and compare with
the outputs that same artifact gave at build time, within the tolerance the build
recorded in the manifest.  One function for both, so the rule cannot drift apart; and
the build recorded those outputs through the same runtime bindings (``bentos.runtimes``),
so a mismatch means the model or the machine differs, not the glue code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from bentoedge.bentos.api import batch_size
from bentoedge.bentos.errors import HealthCheckError
from bentoedge.bentos.golden import DEFAULT_ATOL, DEFAULT_RTOL, Golden, compare
from bentoedge.bentos.manifest import Artifact, Manifest
from bentoedge.bentos.recipients import Keyring
from bentoedge.bentos.sealed import SealedModel

Predict = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


def tolerance(manifest: Manifest, artifact: Artifact) -> tuple[float, float]:
    """(atol, rtol) recorded for ``artifact`` at build time, or the precision's default."""
    tol = ((manifest.golden or {}).get("tolerances") or {}).get(artifact.id) or {}
    atol = float(tol.get("atol", DEFAULT_ATOL.get(artifact.precision or "fp32", 1e-4)))
    return atol, float(tol.get("rtol", DEFAULT_RTOL))


def check(sealed: SealedModel, artifact: Artifact, predict: Predict, keyring: Keyring) -> int:
    """Run the golden samples of ``artifact``'s target; how many passed, or HealthCheckError."""
    manifest = sealed.manifest
    golden_id = (manifest.golden or {}).get(artifact.target)
    if not golden_id:
        raise HealthCheckError(f"{manifest.tag} carries no {artifact.target} golden samples to check against; "
                               "rebuild it with bentoedge build")
    golden = Golden.from_bytes(sealed.decrypt(golden_id, keyring))
    expected = golden.expected.get(artifact.id)
    if expected is None:
        raise HealthCheckError(f"the golden samples of {manifest.tag} hold no outputs for {artifact.id}")
    atol, rtol = tolerance(manifest, artifact)
    try:
        outputs = predict(golden.inputs)
    except Exception as exc:  # any runtime failure is a failed health check
        raise HealthCheckError(f"{manifest.tag} {artifact.id} failed on its golden samples: {exc}") from None
    problems = compare(dict(outputs), expected, atol, rtol)
    if problems:
        raise HealthCheckError(f"{manifest.tag} {artifact.id} failed its health check: {problems[0]}")
    return batch_size(golden.inputs)
