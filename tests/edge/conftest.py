"""Device API test fixtures, defined in ``tests/api_support.py`` (on pytest's ``pythonpath``)."""

from __future__ import annotations

from api_support import dead_cloud_url, keyring, load, make_agent, stub_cloud, trusted  # noqa: F401
