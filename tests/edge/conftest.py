"""Device API test fixtures (defined in ``api_support``), with the repository on sys.path.

The device tests run in a venv with only ``bentoedge[edge]``; when the package is not
pip-installed, the repository root is put on the path so ``bentos`` and ``edge`` import.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from api_support import dead_cloud_url, keyring, load, make_agent, stub_cloud, trusted  # noqa: E402,F401
