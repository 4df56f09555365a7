"""Cache invalidation for the card's hot reads, on this instance and the others.

The partner API answers thousands of calls a second from a few facts that rarely
change: a partner's keys and scopes, the status-list version, a card's status. Each
instance keeps them in memory for a short time (`TtlCache`) and drops them the moment
they change: here at once, on the other instances when the event bus delivers the
change (the hotline wires `ChangeFeed.publish` to its bus and feeds what the bus
delivers into `ChangeFeed.received`). The time-to-live is the backstop for a lost
bus message, so it stays short.

This module knows nothing of the bus; `citizen_card` imports no other package.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")

Listener = Callable[[str, str], None]
Publisher = Callable[[str, str], Awaitable[None]]

# topics
PARTNER = "partner"  # key: partner id
CARD = "card"  # key: card number ("" = any)


class ChangeFeed:
    """Who must forget what when something changed (topic, key)."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self.publish: Publisher | None = None  # set by the hotline: the bus

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def received(self, topic: str, key: str) -> None:
        """A change seen here or announced by another instance."""
        for listener in tuple(self._listeners):
            try:
                listener(topic, key)
            except Exception:  # one broken cache must not stop the others
                log.exception("cache invalidation failed for %s %s", topic, key)

    async def changed(self, topic: str, key: str) -> None:
        """Forget here first (synchronously), then tell the other instances."""
        self.received(topic, key)
        if self.publish is not None:
            try:
                await self.publish(topic, key)
            except Exception:  # the TTL still bounds how long others may be stale
                log.exception("could not announce %s %s to other instances", topic, key)


class TtlCache(Generic[K, V]):
    """A small dict whose entries live at most `ttl_s` seconds; bounded by clearing
    when full.

    Each entry lives a random share of the TTL, between (1 - `jitter`) and 1 times it.
    Entries filled together (the first second of load, or after a `drop()`) would
    otherwise all expire in the same instant and all be read again together; spread
    out, their reads come a few at a time. (What did show in the partner API's p99 was
    one key missed by many calls at once: `load` answers that.) The TTL stays the
    bound on staleness."""

    def __init__(
        self,
        ttl_s: float,
        *,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        jitter: float = 0.5,
    ) -> None:
        if not 0.0 <= jitter < 1.0:
            raise ValueError("jitter is a share of the TTL in [0, 1)")
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.jitter = jitter
        self._clock = clock
        self._data: dict[K, tuple[float, V]] = {}
        self.generation = 0  # bumped by every invalidation: a read that raced one is not kept
        self._loading: dict[K, asyncio.Future[V]] = {}  # reads in flight (see `load`)

    def get(self, key: K) -> tuple[bool, V | None]:
        hit = self._data.get(key)
        if hit is None or hit[0] <= self._clock():
            return False, None
        return True, hit[1]

    def put(self, key: K, value: V, generation: int | None = None) -> None:
        """Keep `value`, unless an invalidation happened since `generation` was read."""
        if generation is not None and generation != self.generation:
            return
        if len(self._data) >= self.max_entries:
            self._data.clear()
        life = self.ttl_s * (1.0 - self.jitter * random.random())
        self._data[key] = (self._clock() + life, value)

    def drop(self, key: K | None = None) -> None:
        self.generation += 1
        if key is None:
            self._data.clear()
            self._loading.clear()
        else:
            self._data.pop(key, None)
            # a read begun before the change may return the old value: callers who
            # come after it start their own (those already waiting came before it)
            self._loading.pop(key, None)

    async def load(
        self,
        key: K,
        read: Callable[[], Awaitable[V]],
        keep: Callable[[V], bool] | None = None,
    ) -> V:
        """The cached value, or one read for everyone who misses at the same time.

        Without this, an entry that expires under load sends every request of that
        instant to the database at once (a partner's record is one key for all of its
        calls): they overflow the connection pool, new connections are opened and
        closed, and the partner API's p99 shows it. `keep(value)` says whether to cache
        what was read (default: always); a change during the read keeps nothing.
        """
        found, value = self.get(key)
        if found:
            return value  # type: ignore[return-value]
        while (pending := self._loading.get(key)) is not None:
            try:
                return await asyncio.shield(pending)
            except _ReadAbandoned:
                continue  # its reader was cancelled: read again (or join the next one)
        generation = self.generation
        fut: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._loading[key] = fut
        try:
            value = await read()
        except BaseException as exc:
            cancelled = isinstance(exc, asyncio.CancelledError)
            fut.set_exception(_ReadAbandoned() if cancelled else exc)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody waited
            raise
        finally:
            if self._loading.get(key) is fut:
                del self._loading[key]
        if keep is None or keep(value):
            self.put(key, value, generation)
        fut.set_result(value)
        return value


class _ReadAbandoned(Exception):
    """The caller doing a shared read was cancelled; its waiters read again."""
