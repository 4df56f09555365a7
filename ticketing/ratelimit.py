"""Counting recent events per key, for throttles that need no shared state.

Used where a per-instance count is enough as a second line behind a shared one (a
staff account's lockout lives in the database; the per-address count of failed
sign-ins only has to slow one address down on the instance it hits).
"""

from __future__ import annotations

import time
from collections import deque


class SlidingWindow:
    """Events per key in the last `window_s` seconds (this instance only)."""

    def __init__(self, limit: int, window_s: float, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self._events: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._events.get(key)
        if q is None:
            if len(self._events) >= self.max_keys:
                self._events.clear()  # a flood of addresses: forget rather than grow
            q = self._events[key] = deque()
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def retry_after(self, key: str, now: float | None = None) -> int | None:
        """Seconds to wait when the key is at its limit, else None."""
        now = time.monotonic() if now is None else now
        q = self._recent(key, now)
        if len(q) < self.limit:
            return None
        return max(1, int(q[0] + self.window_s - now) + 1)

    def add(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._recent(key, now).append(now)
