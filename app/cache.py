"""Short-lived per-process caches for reference data read on every request (rules, collection points)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Any


class TtlCache:
    """Entries live `ttl_s` seconds on the monotonic clock. Each worker process holds its own, so a change made
    in another worker shows here within `ttl_s`; writers in this process call clear(). Misses (None) are not
    kept, so unknown keys cannot grow it."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[Hashable, tuple[Any, float]] = {}

    def get(self, key: Hashable, load: Callable[[], Any]) -> Any:
        now = self._clock()
        with self._lock:
            hit = self._entries.get(key)
        if hit is not None and now - hit[1] < self.ttl_s:
            return hit[0]
        value = load()
        if value is not None:
            with self._lock:
                self._entries[key] = (value, now)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
