"""When BentoML's dispatcher sheds, the service answers from a few direct slots before it 503s.

The dispatcher's latency model learns only from the batches it runs, so under clients that
retry at once it can shed everything and never recover (bench/soak.py saw it).  Here the
dispatcher is a stand-in that sheds every request, and the service's own ``run`` is driven
directly: requests up to ``DIRECT_SLOTS`` at once are answered by the model, the next one
is the contract's 503 ``overloaded``.
"""

from __future__ import annotations

import threading
from typing import Any

import anyio
import numpy as np
import pytest

pytest.importorskip("bentoml")


def test_shed_requests_are_served_directly_up_to_the_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    import bentoml

    from bentoedge.bentos.errors import UnavailableError
    from bentoedge.cloud import service

    release = threading.Event()
    running = []

    class Model:
        def predict(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            running.append(1)
            release.wait(10)
            return {"y": arrays["x"] * 2}

    async def shedding_batcher(x: Any) -> Any:
        raise bentoml.exceptions.ServiceUnavailable("predicted to miss max_latency_ms")

    monkeypatch.setattr(service, "find_batcher", lambda server, name: shedding_batcher)
    svc: Any = object.__new__(service.SealedService.inner)
    svc.batchable, svc._input, svc._output = True, "x", "y"
    svc._warned_unbatched = svc._warned_shed = False
    svc._direct_slots = None
    svc.loaded = type("Loaded", (), {"model": Model()})()
    x = np.ones((1, 3), np.float32)
    answers: list[Any] = []

    async def scenario() -> None:
        async def one() -> None:
            try:
                answers.append(await svc.run({"x": x}, None))
            except UnavailableError as exc:
                answers.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(service.DIRECT_SLOTS):
                tg.start_soon(one)
            while len(running) < service.DIRECT_SLOTS:
                await anyio.sleep(0.01)
            await one()  # every slot busy: shed for real
            release.set()

    anyio.run(scenario)
    served = [a for a in answers if isinstance(a, dict)]
    shed = [a for a in answers if isinstance(a, UnavailableError)]
    assert len(served) == service.DIRECT_SLOTS and np.array_equal(served[0]["y"], x * 2)
    assert len(shed) == 1 and shed[0].reason == "overloaded"
