"""The model a device serves right now, shared by the sync agent (writer) and the API (readers).

The sync agent loads and health-checks a new version off to the side, then ``swap``s it
in: one reference assignment under a lock.  A request takes the current model once at
its start (``get``) and finishes on it, so a swap never drops or mixes an in-flight
request; the old model is freed when its last request lets go of it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Protocol

import numpy as np

from bentoedge.bentos.manifest import Artifact, Manifest, Signature


class ServingModel(Protocol):
    manifest: Manifest
    artifact: Artifact
    signature: Signature

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    def predict(self, inputs: Mapping[str, np.ndarray], timeout: float | None = None) -> dict[str, np.ndarray]: ...


class ActiveModel:
    def __init__(self, model: ServingModel | None = None) -> None:
        self._lock = threading.Lock()
        self._model = model

    def get(self) -> ServingModel | None:
        return self._model

    def swap(self, model: ServingModel | None) -> ServingModel | None:
        with self._lock:
            old, self._model = self._model, model
        return old
