"""The edge runtime on real TFLite artifacts: same answers as the raw interpreter, by name.

Runs on whichever interpreter is installed (LiteRT, or tflite-runtime 2.14 on numpy < 2).
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from api_support import DATA, sealed

from bentoedge.bentos.errors import DecryptionError, HealthCheckError, IntegrityError
from bentoedge.bentos.golden import Golden
from bentoedge.bentos.recipients import Keyring
from bentoedge.edge.runtime import (
    EdgeModel,
    choose_edge_artifact,
    health_check,
    interpreter_class,
    load_edge_model,
)


def raw_predict(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """The floor: set, invoke, get on a bare interpreter (no bentoedge code)."""
    cls, _ = interpreter_class()
    interp = cls(model_content=model_bytes)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.resize_tensor_input(inp["index"], x.shape)
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    return np.asarray(interp.get_tensor(out["index"]))


def test_prefers_int8_and_matches_the_raw_interpreter(load: Callable[..., EdgeModel], keyring: Keyring) -> None:
    model = load("tiny")
    assert model.artifact.id == "edge-int8"  # PRECISION_PREFERENCE
    fp32 = load("tiny", "edge-fp32")
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    want = raw_predict((DATA / "tiny.tflite").read_bytes(), x)
    np.testing.assert_allclose(fp32.predict({"x": x})["y"], want, rtol=1e-6, atol=1e-6)
    # The int8 artifact quantizes the float input and dequantizes the output for the caller.
    got = model.predict({"x": x})["y"]
    assert got.dtype == np.float32 and got.shape == (5, 3)
    np.testing.assert_allclose(got, want, atol=0.06)


def test_the_sealed_plaintext_is_the_committed_raw_artifact(keyring: Keyring) -> None:
    assert bytes(sealed("tiny").decrypt("edge-fp32", keyring)) == (DATA / "tiny.tflite").read_bytes()


def test_multi_input_multi_output_by_name(load: Callable[..., EdgeModel]) -> None:
    model = load("multi")
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.array([[10, 20], [30, 40]], dtype=np.float32)
    out = model.predict({"b": b, "a": a})  # order of the dict must not matter
    np.testing.assert_allclose(out["joined"], np.concatenate([a, b], axis=1), atol=1e-5)
    np.testing.assert_allclose(out["total"][:, 0], np.concatenate([a, b], axis=1).sum(axis=1), atol=1e-4)


def test_dynamic_batch_is_resized_per_request(load: Callable[..., EdgeModel]) -> None:
    model = load("tiny", "edge-fp32")
    x = np.random.default_rng(1).normal(size=(7, 4)).astype(np.float32)
    full = model.predict({"x": x})["y"]
    for n in (1, 7, 3, 1):
        np.testing.assert_allclose(model.predict({"x": x[:n]})["y"], full[:n], rtol=1e-5, atol=1e-6)
    assert model.fixed_shapes == {"x": (-1, 4)}
    # An artifact whose batch is fixed at 1 takes any batch, one sample at a time.
    fixed = load("fixed")
    assert fixed.fixed_shapes == {"x": (-1, 4)}
    per_sample = np.concatenate([fixed.predict({"x": x[i:i + 1]})["y"] for i in range(3)])
    np.testing.assert_allclose(fixed.predict({"x": x[:3]})["y"], per_sample, rtol=1e-6)
    np.testing.assert_allclose(per_sample, full[:3], rtol=1e-5, atol=1e-6)


def test_a_failing_run_raises_and_the_next_good_request_still_works(load: Callable[..., EdgeModel]) -> None:
    model = load("reshape")
    with pytest.raises(Exception):  # noqa: B017 - the runtime's own error type differs by runtime
        model.predict({"x": np.zeros((2, 4), np.float32)})
    assert model.predict({"x": np.ones((1, 4), np.float32)})["y"].shape == (1, 3)


def test_concurrent_requests_on_a_pool_give_each_caller_its_own_answer(load: Callable[..., EdgeModel]) -> None:
    model = load("tiny", "edge-fp32", workers=2)
    rng = np.random.default_rng(2)
    xs = [rng.normal(size=(int(n), 4)).astype(np.float32) for n in rng.integers(1, 6, size=24)]
    want = [load("tiny", "edge-fp32").predict({"x": x})["y"] for x in xs]
    errors: list[str] = []

    def worker(k: int) -> None:
        for _ in range(20):
            for i in range(k, len(xs), 4):
                got = model.predict({"x": xs[i]})["y"]
                if got.shape != want[i].shape or not np.allclose(got, want[i], atol=1e-6):
                    errors.append(f"request {i} got another request's answer")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors


def test_health_check_runs_the_golden_samples(load: Callable[..., EdgeModel], keyring: Keyring) -> None:
    for name in ("tiny", "multi", "reshape", "fixed"):
        assert health_check(load(name), sealed(name), keyring) >= 1
    assert health_check(load("tiny", "edge-fp32"), sealed("tiny"), keyring) == 3


def test_health_check_fails_for_a_model_that_does_not_give_the_golden_answers(
        load: Callable[..., EdgeModel], keyring: Keyring) -> None:
    # The reshape model run against the tiny model's golden samples (batch 3) must fail.
    with pytest.raises(HealthCheckError):
        health_check(load("reshape"), sealed("tiny"), keyring)


def test_threads_setting_reaches_the_interpreter(keyring: Keyring, monkeypatch: pytest.MonkeyPatch) -> None:
    # Wrap the installed interpreter class's own constructor, so whichever module builds it
    # (and however it got hold of the class) the test sees the num_threads it was given.
    cls, _ = interpreter_class()
    original_init = cls.__init__
    signature = inspect.signature(original_init)
    default = signature.parameters["num_threads"].default
    seen: list[Any] = []

    def recording_init(self: Any, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        seen.append(bound.arguments["num_threads"])
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__init__", recording_init)
    x = np.zeros((1, 4), np.float32)
    for threads, want in ((3, 3), (1, 1), (0, None), (None, None)):
        seen.clear()
        model = load_edge_model(sealed("tiny"), keyring, threads=threads, workers=2)
        # One interpreter per worker at least, and every one got the setting.
        assert len(seen) >= 2 and all(v == want for v in seen), f"threads={threads!r}: num_threads={seen}"
        assert model.predict({"x": x})["y"].shape == (1, 3)  # and they really run
    assert default is None  # None is the runtime's own default (let it decide)


def test_a_wrong_key_or_a_modified_artifact_never_loads(tmp_path, keyring: Keyring) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DecryptionError):
        load_edge_model(sealed("tiny"), Keyring().add_kek(b"\x01" * 32))
    import shutil

    copy = tmp_path / "tiny-1"
    shutil.copytree(DATA / "sealed" / "tiny-1", copy)
    art = copy / sealed("tiny").manifest.artifact("edge-int8").file
    data = bytearray(art.read_bytes())
    data[len(data) // 2] ^= 1
    art.write_bytes(bytes(data))
    from bentoedge.bentos.sealed import SealedModel

    with pytest.raises(IntegrityError):
        load_edge_model(SealedModel.open(copy), keyring)


def test_choose_edge_artifact_and_golden_file() -> None:
    manifest = sealed("tiny").manifest
    art = choose_edge_artifact(manifest, ("fp32", "int8"))
    assert art is not None and art.id == "edge-fp32"
    assert choose_edge_artifact(manifest, ()) is not None
    assert Golden.from_bytes(Golden({"x": np.zeros((1, 4))}, {}).to_bytes()).inputs["x"].shape == (1, 4)


def test_waiting_for_a_busy_interpreter_stops_at_the_deadline(load: Callable[..., EdgeModel]) -> None:
    model = load("tiny", "edge-fp32")  # one worker: one interpreter in the pool
    x = np.ones((1, 4), np.float32)
    held = model._pool.get()  # another request is using the only interpreter
    try:
        with pytest.raises(TimeoutError, match="deadline"):
            model.predict({"x": x}, timeout=0.05)
    finally:
        model._pool.put(held)
    assert model.predict({"x": x}, timeout=1.0)["y"].shape == (1, 3)  # and the pool is intact


def test_freed_memory_goes_back_to_the_os_after_a_large_free() -> None:
    # What health_check does after a load: trim the C heap (glibc), a no-op where there is none.
    import platform

    from bentoedge.edge import runtime

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert runtime._malloc_trim() is not None
    runtime.release_freed_memory()  # never raises, glibc or not
