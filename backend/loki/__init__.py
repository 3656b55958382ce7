"""Grafana Loki as the LogSource: the HTTP/WebSocket adapter and a caching proxy in front of any
LogSource.

    logs = LokiLogSource(settings.loki)                      # ports.LogSource over Loki's API
    logs = CachedLogSource(LokiLogSource(settings.loki), cache)   # results in the two-level cache
"""

from __future__ import annotations

from .cached import CachedLogSource
from .client import LokiLogSource

__all__ = ["CachedLogSource", "LokiLogSource"]
