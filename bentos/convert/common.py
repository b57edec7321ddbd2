"""What every conversion step shares: lazy heavy imports, the private workdir, tidy messages.

TensorFlow and onnx are imported here, inside functions, only for the step that needs
them, and a missing one is reported with what to install; importing this module (and
so ``bentos.convert``) needs nothing beyond numpy.

Converters need files at build time (the SavedModel, ONNX Runtime's quantizer).  They go
in a private 0700 folder (``private_workdir``) that is removed in a ``finally``, so the
build leaves no plaintext model behind; at run time nothing is ever written in the clear.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bentoedge.bentos.errors import ConversionError


@contextmanager
def private_workdir(prefix: str = "bentoedge-build-") -> Iterator[Path]:
    """A 0700 temporary folder for converter files, removed whatever happens."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def tf() -> Any:
    """The tensorflow module (its C++ logging quietened), or ConversionError saying what to install."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import tensorflow
    except ImportError:
        raise ConversionError("this step needs TensorFlow: pip install 'bentoedge[build]'") from None
    return tensorflow


def onnx() -> Any:
    """The onnx module, or ConversionError saying what to install."""
    try:
        import onnx
    except ImportError:
        raise ConversionError("this step needs onnx: pip install 'bentoedge[build]'") from None
    return onnx


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, capped: converters raise pages of trace."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def named(outs: Any, names: list[str]) -> dict[str, Any]:
    """A model's outputs (dict, list or single tensor) as a dict by the manifest's output names."""
    if isinstance(outs, Mapping):
        return {n: outs[n] for n in names}
    if not isinstance(outs, (list, tuple)):
        outs = [outs]
    return dict(zip(names, outs, strict=True))
