"""Example models for tests, benchmarks and the demo, made from nothing in seconds.

- ``make_example(out_dir)``: a small dense Keras classifier trained on scikit-learn's
  bundled 8x8 digits (1797 images, no download), with ``calibration.npz`` (key ``x``) and
  ``validation.npz`` (keys ``x`` and ``labels``).  The model's input is named ``x``
  (64 features scaled to [0, 1]) and its output ``probs`` (10 softmax scores), so the
  prediction API reads ``{"inputs": {"x": [[...64 floats...]]}}``.
- ``make_mobilenet(out_path)``: keras.applications.MobileNetV2 with random weights
  (``weights=None``), the size and shape of a real vision model, for size/latency benches.
- ``make_multi_io(out_path)``: two inputs, two outputs (a classifier head and a
  regression head), with a dynamic batch dimension, for the conversion tests.

Seeds are fixed so two runs give the same data and nearly the same weights.
Run ``python -m examples.digits OUT_DIR`` to write the digits example there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

SEED = 20240601


def _keras() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    keras.utils.set_random_seed(SEED)
    return keras


def digits_data() -> tuple[np.ndarray, np.ndarray]:
    """(x, labels): 1797 digits as float32 in [0, 1], shape (N, 64), and int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


def make_example(out_dir: Path, epochs: int = 30) -> dict[str, Path]:
    """Train the digits classifier and write ``model``, ``calibration`` and ``validation`` files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keras = _keras()
    x, y = digits_data()
    order = np.random.default_rng(SEED).permutation(len(x))
    x, y = x[order], y[order]
    train, val = slice(0, 1400), slice(1400, None)
    inp = keras.Input((64,), name="x")
    # Two wide layers (167k weights): big enough that int8 shrinks the weights rather than the
    # file's fixed overhead, still trained in seconds and run in microseconds.
    h = keras.layers.Dense(512, activation="relu", name="hidden1")(inp)
    h = keras.layers.Dense(256, activation="relu", name="hidden2")(h)
    out = keras.layers.Dense(10, activation="softmax", name="probs")(h)
    model = keras.Model(inp, out, name="digits")
    model.compile(optimizer=keras.optimizers.Adam(0.001), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x[train], y[train], epochs=epochs, batch_size=64, verbose=0, shuffle=True)
    paths = {"model": out_dir / "digits.keras", "calibration": out_dir / "calibration.npz",
             "validation": out_dir / "validation.npz"}
    model.save(paths["model"])
    np.savez(paths["calibration"], x=x[train][:200])
    np.savez(paths["validation"], x=x[val], labels=y[val])
    return paths


def make_mobilenet(out_path: Path, input_size: int = 224, alpha: float = 1.0) -> Path:
    """A MobileNetV2 (random weights, 1000 classes) saved as a .keras file at ``out_path``."""
    keras = _keras()
    model = keras.applications.MobileNetV2(input_shape=(input_size, input_size, 3), alpha=alpha,
                                           weights=None, classes=1000)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model.save(out_path)
    return out_path


def make_multi_io(out_path: Path) -> Path:
    """A tiny untrained model: inputs ``image`` (8x8x1) and ``meta`` (3), outputs ``label`` and ``score``."""
    keras = _keras()
    image = keras.Input((8, 8, 1), name="image")
    meta = keras.Input((3,), name="meta")
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(image)
    h = keras.layers.Flatten(name="flat")(h)
    h = keras.layers.Concatenate(name="join")([h, meta])
    h = keras.layers.Dense(16, activation="relu", name="dense")(h)
    label = keras.layers.Dense(5, activation="softmax", name="label")(h)
    score = keras.layers.Dense(2, name="score")(h)
    model = keras.Model([image, meta], [label, score], name="multi")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model.save(out_path)
    return out_path


def multi_io_data(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for ``make_multi_io``'s model, as a build's .npz would hold them."""
    rng = np.random.default_rng(seed)
    return {"image": rng.random((n, 8, 8, 1), dtype=np.float32),
            "meta": rng.standard_normal((n, 3)).astype(np.float32)}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m examples.digits OUT_DIR", file=sys.stderr)
        return 2
    for kind, path in make_example(Path(args[0])).items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
