"""The Python API: build, load, verify and publish sealed models from a script or a notebook.

    import bentoedge

    manifest = bentoedge.build("digits.keras", name="digits", validation="val.npz")
    model = bentoedge.load("digits:v1", target="edge")      # or target="cloud"
    model.predict({"x": batch})                            # -> {"probs": array}
    bentoedge.verify("digits:v1")                          # raises if anything is off
    bentoedge.publish("digits:v1", channel="file:///srv/channel")

Four functions and the ``Model`` they load, over the same parts the command line uses
(``bentos.build``, ``bentos.store``, ``edge.runtime``, ``cloud.service_model``,
``cloud.channel``): the CLI verbs ``verify`` and ``publish`` call these functions, and the
others share every step below them.  Failures raise the exceptions of
``bentoedge.bentos.errors`` (one ``BentoEdgeError`` family, each with a one-line message).

``import bentoedge`` stays light: each function imports its parts when called, so a device
with only the edge extra can ``load(..., target="edge")`` without TensorFlow, ONNX Runtime
or BentoML installed.  A MODEL reference is ``NAME[:VERSION]`` in the BentoML store, a sealed
folder, or an exported ``.sealed`` file; keys come from ``home`` (default ``$BENTOEDGE_HOME``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from bentoedge.bentos.errors import UsageError

if TYPE_CHECKING:
    from bentoedge.bentos.channel_layout import Release
    from bentoedge.bentos.manifest import Artifact, Manifest
    from bentoedge.bentos.sealed import SealedModel

Target = Literal["edge", "cloud"]
Inputs = Mapping[str, Any] | np.ndarray | Sequence[Any]


@dataclass(frozen=True)
class Verified:
    """What ``verify`` established: who signed the model, and how many artifacts matched."""

    tag: str
    signer_keyid: str
    artifacts: int


class Model:
    """A sealed model decrypted in memory and ready to answer, on LiteRT (edge) or ONNX Runtime (cloud).

    ``predict`` takes inputs by name (or one array when the model has one input), checks them
    against the signed signature exactly as the HTTP API does, and returns outputs by name.
    """

    def __init__(self, manifest: Manifest, target: Target, artifact: Artifact,
                 run: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]) -> None:
        self.manifest = manifest
        self.target: Target = target
        self.artifact = artifact
        self._run = run

    @property
    def tag(self) -> str:
        return self.manifest.tag

    def predict(self, inputs: Inputs) -> dict[str, np.ndarray]:
        from bentoedge.bentos.api import validate_inputs

        sig = self.manifest.signature
        if not isinstance(inputs, Mapping):
            if len(sig.inputs) != 1:
                names = ", ".join(t.name for t in sig.inputs)
                raise UsageError(f"{self.tag} has {len(sig.inputs)} inputs ({names}): pass a dict of them by name")
            inputs = {sig.inputs[0].name: inputs}
        return self._run(validate_inputs(inputs, sig))

    def __repr__(self) -> str:
        return f"<bentoedge.Model {self.tag} {self.target} {self.artifact.id}>"


def build(source: str | Path, name: str, *, version: str | None = None, calibration: str | Path | None = None,
          validation: str | Path | None = None, edge: Sequence[str] = ("int8",), cloud: Sequence[str] = ("fp32",),
          max_drop: float = 0.01, recipients: Sequence[str] = ("kek",), accept_quality: bool = False,
          golden_count: int = 8, output: str | Path | None = None, home: str | Path | None = None,
          progress: Callable[[str], None] | None = None, synthetic_validation: str | None = None,
          budgets: Sequence[str] = (), signature: str | None = None, breaking: bool = False) -> Manifest:
    """Convert, quantize, gate, encrypt and sign ``source`` into the model store (or into the
    new folder ``output``); returns the signed manifest.  Raises ``QualityGateError`` (with
    its ``report``) when an artifact is over budget and ``accept_quality`` is not set.
    Without ``validation`` (or ``calibration``) data, ``synthetic_validation`` ranges such as
    ``"0:1"`` gate on random inputs, recorded in the manifest as not a real accuracy figure.
    ``budgets`` (``"OUTPUT=METRIC:VALUE"``) state an output's metrics, as ``--budget`` does;
    ``signature`` picks a SavedModel's or TFLite file's SignatureDef, as ``--signature`` does;
    ``breaking`` declares an API change from the previous version, as ``--breaking`` does."""
    from bentoedge.bentos.build import BuildOptions, build_to_dir
    from bentoedge.bentos.build import build as build_in_store

    opts = BuildOptions(
        source=Path(source), name=name, home=_home(home), version=version,
        calibration=None if calibration is None else Path(calibration),
        validation=None if validation is None else Path(validation),
        edge=tuple(edge), cloud=tuple(cloud), max_drop=max_drop, accept_quality=accept_quality,
        recipients=tuple(recipients), golden_count=golden_count, synthetic=synthetic_validation,
        budgets=tuple(budgets), signature=signature, breaking=breaking)
    if output is not None:
        return build_to_dir(opts, Path(output), progress=progress).manifest
    return build_in_store(opts, progress=progress).manifest


def load(ref: str | Path, target: Target = "edge", *, home: str | Path | None = None,
         threads: int | None = None, artifact: str | None = None) -> Model:
    """Verify ``ref``'s signature against this machine's trusted keys, decrypt one artifact
    of ``target`` in memory, check it on its golden samples, and return it ready to predict.

    ``artifact`` picks one (e.g. ``"edge-fp32"``); by default the device's preference
    (int8, then the others) or the cloud's placement rules choose."""
    if target not in ("edge", "cloud"):
        raise UsageError(f"target {target!r}: use 'edge' or 'cloud'")
    with _opened(ref) as sealed:
        return _load_edge(sealed, _home(home), threads, artifact) if target == "edge" else \
            _load_cloud(sealed, _home(home), threads, artifact)


def verify(ref: str | Path, *, home: str | Path | None = None) -> Verified:
    """Check ``ref``'s signature against the trusted keys and every artifact's size and hash;
    raises ``SignatureError``/``IntegrityError`` when anything is off."""
    from bentoedge.bentos.keystore import LocalKeys

    with _opened(ref) as sealed:
        info = sealed.verify(LocalKeys(_home(home)).trusted_signers())
        return Verified(sealed.manifest.tag, info.keyid, len(sealed.manifest.artifacts))


def publish(ref: str, channel: str, *, rollout: int = 100, device_classes: Sequence[str] = (),
            min_agent: str = "0", pinned: bool = False, home: str | Path | None = None,
            progress: Callable[[str, int], Callable[[int], None]] | None = None, breaking: bool = False) -> Release:
    """Publish ``ref``'s edge artifacts to ``channel`` (keys wrapped for every enrolled device);
    returns the signed release record.  A version whose API differs from the one before it
    on the channel is refused unless declared (``breaking``, or ``--breaking`` at build)."""
    from bentoedge.cloud.channel.channel import Channel

    if not 0 <= rollout <= 100:
        raise UsageError(f"rollout {rollout}: give a percentage from 0 to 100")
    with _opened(ref) as sealed:
        ch = Channel.open(channel, home=None if home is None else _home(home))
        return ch.publish(sealed, rollout=rollout, device_classes=tuple(device_classes), min_agent=min_agent,
                          pinned=pinned, progress=progress, breaking=breaking)


# ---- the parts ----------------------------------------------------------------------------


def _home(home: str | Path | None) -> Path:
    from bentoedge.bentos.keystore import default_home

    return default_home() if home is None else Path(home)


def _opened(ref: str | Path) -> AbstractContextManager[SealedModel]:
    from bentoedge.bentos.store import open_ref

    return open_ref(ref)


def _load_edge(sealed: SealedModel, home: Path, threads: int | None, artifact: str | None) -> Model:
    from bentoedge.bentos.keystore import LocalKeys
    from bentoedge.bentos.recipients import Keyring
    from bentoedge.edge.runtime import health_check, load_edge_model

    keys = LocalKeys(home)
    sealed.verify_signature(keys.trusted_signers())
    ring = Keyring().add_kek(keys.kek())
    model = load_edge_model(sealed, ring, threads=threads, artifact_id=artifact)
    health_check(model, sealed, ring)
    return Model(sealed.manifest, "edge", model.artifact, model.predict)


def _load_cloud(sealed: SealedModel, home: Path, threads: int | None, artifact: str | None) -> Model:
    from bentoedge.cloud.service_core import CloudSettings
    from bentoedge.cloud.service_model import open_cloud_model

    # Trusted signers and the local KEK from ``home``, as the cloud service takes them from
    # its $BENTOEDGE_HOME; a KMS wrap is used when the model has one.
    settings = CloudSettings(model=sealed.manifest.tag, artifact=artifact, ort_threads=threads)
    loaded = open_cloud_model(sealed, settings, env={"BENTOEDGE_HOME": str(home)})
    return Model(sealed.manifest, "cloud", loaded.model.artifact, loaded.model.predict)
