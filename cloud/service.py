"""The BentoML service that serves a sealed model in the cloud (``bentoml serve bentoedge.cloud.service:SealedService``).

Which model: ``BENTOEDGE_MODEL="name[:version]"``, read when this module is imported, so
``bentoml build`` records the sealed model as the Bento's model dependency (``BentoModel``)
and ``bentoml serve`` loads that same model.  Without a version the newest release in the
store is taken; without the variable, inside a container, the model the Bento was built
with (its bento.yaml).

Start-up (``cloud.service_model.open_cloud_model``) verifies the signature, unwraps the
cloud artifact's key (local KEK or AWS KMS), decrypts it in memory into an ONNX Runtime
session (CUDA + fp16 when a GPU is there, CPU + fp32/int8 otherwise) and runs the sealed
golden samples.  Any failure is logged as one line (``bentoedge: refusing to serve ...``)
and the worker does not start, so /readyz never answers 200 for a model that is not the
signed one.

The API (docs/design.md, the prediction API) lives in ``cloud.service_http``, mounted at /predict,
/invocations and /ping, with a middleware around the whole server that adds the
contract's routes to BentoML's /docs.json and answers BentoML's own 404/405 in JSON; it calls ``infer`` below, a batchable ``@bentoml.api``, through
BentoML's adaptive-batching dispatcher.  ``infer`` is also reachable on its own BentoML
route (/infer, BentoML's JSON form ``{"x": [...]}``) for BentoML clients.

All settings come from the environment (``cloud.service_core`` lists them).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import anyio
import bentoml
import numpy as np

from bentoedge.bentos.api import validate_inputs
from bentoedge.bentos.errors import BentoEdgeError, NotFoundError, RequestError, UnavailableError
from bentoedge.bentos.manifest import Signature
from bentoedge.bentos.sealed import SealedModel
from bentoedge.bentos.store import ModelStore, sealed_path_of, split_tag
from bentoedge.cloud.auth import Gate, gate_from_env
from bentoedge.cloud.service_core import CloudSettings, batchable
from bentoedge.cloud.service_http import ContractMiddleware, find_batcher, logger, make_app
from bentoedge.cloud.service_model import Loaded, open_cloud_model

SETTINGS = CloudSettings.from_env()


def _bento_model() -> str | None:
    """Inside a built Bento (a container), the sealed model it was built with."""
    bento_yaml = Path(os.environ.get("BENTO_PATH", "/nonexistent")) / "bento.yaml"
    if not bento_yaml.is_file():
        return None
    import yaml  # a BentoML dependency

    doc = yaml.safe_load(bento_yaml.read_text()) or {}
    tags = [m.get("tag") for svc in doc.get("services") or [] for m in svc.get("models") or []]
    return str(tags[0]) if tags else None


def _resolve_tag(spec: str | None) -> str | None:
    """``name`` -> ``name:vN`` of the newest release in the store, so the Bento pins one version."""
    if not spec:
        return _bento_model()
    name, version = split_tag(spec)
    if version:
        return f"{name}:{version}"
    try:
        return ModelStore().get(name).manifest.tag
    except NotFoundError:
        return name  # let BentoML resolve it (e.g. inside a Bento, whose store is its own)


def _bento_argument() -> str | None:
    """The model a Bento was built for: ``bentoedge bento`` records it as the Bento argument
    ``model``, and BentoML sets a Bento's arguments before it imports the service, under
    ``bentoml build``, ``bentoml serve TAG`` and in a container alike."""
    value = getattr(bentoml.use_arguments(), "model", None)
    return str(value) if value else None


def _building_a_bento() -> bool:
    """Whether this import is ``bentoml build`` making a Bento of the service."""
    return len(sys.argv) > 1 and sys.argv[1] == "build" and Path(sys.argv[0]).name in ("bentoml", "__main__.py")


MODEL_TAG = _resolve_tag(SETTINGS.model or _bento_argument())
#: Requests run unbatched at once when the dispatcher sheds them (``SealedService._unbatched_after_shed``).
DIRECT_SLOTS = max(2, os.cpu_count() or 2)
if MODEL_TAG is None and _building_a_bento():
    # A Bento without its sealed model would build "successfully" and never serve.
    raise bentoml.exceptions.BentoMLException(
        "bentoedge: a Bento needs its sealed model: run `bentoedge bento NAME:VERSION`, or set "
        "BENTOEDGE_MODEL=name:version for `bentoml build`")


def _stop_the_server() -> bool:
    """Take the whole ``bentoml serve`` down with a worker that will not serve: its arbiter
    would otherwise start the worker again every few seconds, logging the same refusal for
    as long as it is left running, and /readyz would never answer.  True when it was told."""
    import signal

    parent = os.getppid()
    try:
        cmdline = Path(f"/proc/{parent}/cmdline").read_bytes()
    except OSError:  # not Linux: the arbiter's restarts are the price there
        return False
    if b"bentoml" not in cmdline or b"serve" not in cmdline:
        return False
    os.kill(parent, signal.SIGTERM)
    return True


def _fleet_intake(gate: Gate) -> Any:
    """Where devices' signed reports go (``POST /fleet/reports``): the fleet store at
    ``BENTOEDGE_FLEET_STORE`` (a path, ``file://`` or ``s3://``; default ``$BENTOEDGE_HOME/fleet``),
    or nowhere with ``BENTOEDGE_FLEET=off``."""
    if os.environ.get("BENTOEDGE_FLEET", "on").strip().lower() == "off":
        return None
    from bentoedge.cloud.fleet.intake import FleetIntake
    from bentoedge.cloud.fleet.store import open_fleet_store

    return FleetIntake(open_fleet_store(os.environ.get("BENTOEDGE_FLEET_STORE") or None), gate.device)


def _current() -> SealedService:
    """The service instance of this worker (BentoML makes one per worker process)."""
    return bentoml.get_current_service()


def _gate() -> Gate:
    """The worker's authentication gate; raises until the service is up (the middleware then refuses)."""
    return _current().gate


def _signature() -> Signature | None:
    """The served model's signature for the OpenAPI text, or None before the service is up."""
    try:
        return _current().signature
    except Exception:  # not instantiated yet, or refusing to serve: document the generic shape
        return None


@bentoml.service(
    name="bentoedge",
    traffic={"timeout": 60, "max_concurrency": 256},
    workers=SETTINGS.workers,  # BENTOEDGE_WORKERS; they share one replay cache (cloud.replay)
)
@bentoml.asgi_app(make_app(_current), path="/", name="bentoedge-api")
class SealedService:
    """A sealed bentoedge model: POST /predict with {"inputs": {...}} (see /docs.json)."""

    if MODEL_TAG:
        model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        self.max_payload = SETTINGS.max_payload
        self._ready = False
        self._warned_unbatched = False
        self._warned_shed = False
        self._direct_slots: anyio.Semaphore | None = None  # made in the worker's event loop
        try:
            self.gate = gate_from_env(SETTINGS)
            self.intake = _fleet_intake(self.gate)
            if not MODEL_TAG:
                raise NotFoundError("BENTOEDGE_MODEL is not set; set it to name[:version] of a sealed model")
            sealed = SealedModel.open(sealed_path_of(self.model))
            self.loaded: Loaded = open_cloud_model(sealed, SETTINGS)
        except BentoEdgeError as exc:
            # One line that says why; the worker then exits and the server never becomes ready.
            logger.error("bentoedge: refusing to serve %s: %s", MODEL_TAG, exc)
            if _stop_the_server():
                sys.stderr.flush()
                os._exit(3)  # at once: an exception here would only add the server's tracebacks
            raise SystemExit(3) from None
        manifest = sealed.manifest
        self.name, self.version, self.signature = manifest.name, manifest.version, manifest.signature
        self.batchable = batchable(manifest) and len(manifest.signature.outputs) == 1
        self._input = manifest.signature.inputs[0].name
        self._output = manifest.signature.outputs[0].name
        p = self.loaded.placement
        logger.info("bentoedge: serving %s with %s on %s [%s]; %d golden samples passed; decrypt %.3fs, ready %.3fs",
                    manifest.tag, p.artifact.id, ",".join(self.loaded.model.providers), p.reason,
                    self.loaded.golden_count, self.loaded.decrypt_seconds, self.loaded.load_seconds)
        self.gate.announce()
        self.gate.start()
        self._ready = True

    def is_ready(self) -> bool:
        return self._ready

    def __is_ready__(self) -> bool:
        return self._ready

    @bentoml.api(batchable=True, max_batch_size=max(1, SETTINGS.max_batch),
                 max_latency_ms=max(1, SETTINGS.max_latency_ms))
    def infer(self, x: np.ndarray) -> np.ndarray:
        """The model on a batch of its single input; /predict batches requests into this."""
        if not self.batchable:
            raise bentoml.exceptions.InvalidArgument(
                "this model takes several inputs or outputs; use POST /predict with named inputs")
        try:
            arrays = validate_inputs({self._input: x}, self.signature)
        except RequestError as exc:
            raise bentoml.exceptions.InvalidArgument(exc.message) from None
        return self.loaded.model.predict(arrays)[self._output]

    async def run(self, arrays: dict[str, np.ndarray], server: Any) -> dict[str, np.ndarray]:
        """Validated inputs -> outputs, through BentoML's batching when the model allows it."""
        if self.batchable:
            batcher = find_batcher(server, "infer")
            if batcher is not None:
                try:
                    out = await batcher(arrays[self._input])
                except bentoml.exceptions.ServiceUnavailable as exc:
                    return await self._unbatched_after_shed(arrays, exc)
                return {self._output: np.asarray(out)}
            if not self._warned_unbatched:
                self._warned_unbatched = True
                logger.warning("bentoedge: BentoML's batch dispatcher was not found; serving unbatched")
        return await anyio.to_thread.run_sync(self.loaded.model.predict, arrays)

    async def _unbatched_after_shed(self, arrays: dict[str, np.ndarray], exc: Exception) -> dict[str, np.ndarray]:
        """A request BentoML's dispatcher shed, run on its own while a direct slot is free.

        The dispatcher sheds when its latency model predicts a miss of ``max_latency_ms``, and
        that model learns only from batches it runs: under clients that retry at once it can
        shed every request and so never learn it is wrong (the soak bench saw 371,364 of
        373,570 requests shed over 10 minutes at concurrency 8).  A bounded number of direct
        runs keeps answering then; past them the request is shed (503) for real."""
        if self._direct_slots is None:
            self._direct_slots = anyio.Semaphore(DIRECT_SLOTS)
        try:
            self._direct_slots.acquire_nowait()
        except anyio.WouldBlock:
            raise UnavailableError(f"the cloud service is overloaded ({exc}); retry later", "overloaded") from None
        try:
            if not self._warned_shed:
                self._warned_shed = True
                logger.warning("bentoedge: BentoML's dispatcher shed a request; serving such requests unbatched "
                               "(at most %d at once) while it does", DIRECT_SLOTS)
            return await anyio.to_thread.run_sync(self.loaded.model.predict, arrays)
        finally:
            self._direct_slots.release()


# Around the whole server: authentication first (BentoML's own /infer included), then
# BentoML's /docs.json and its own 404/405 keep the contract too.
SealedService.add_asgi_middleware(ContractMiddleware, signature=_signature, gate=_gate,  # type: ignore[attr-defined]
                                  max_payload=SETTINGS.max_payload)
