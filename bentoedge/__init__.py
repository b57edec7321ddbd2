"""bentoedge: one model, sealed once, served in the cloud (BentoML) and on edge devices (LiteRT).

The command line (``bentoedge.cli``) ties ``bentos`` (build), ``cloud`` and ``edge`` together;
the Python API is ``build``, ``load``, ``verify`` and ``publish`` (``bentoedge.python_api``),
imported on first use so that ``import bentoedge`` costs nothing on a device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bentoedge.python_api import Model, Verified, build, load, publish, verify

__all__ = ["Model", "Verified", "build", "load", "publish", "verify"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from bentoedge import python_api

        return getattr(python_api, name)
    raise AttributeError(f"module 'bentoedge' has no attribute {name!r}")
