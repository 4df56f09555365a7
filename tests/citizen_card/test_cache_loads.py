"""`TtlCache.load`: one database read for everyone who misses an entry at the same
moment (a partner's record is one key for all its calls), without weakening what the
cache promises: a change is seen by every call that starts after it."""

from __future__ import annotations

import asyncio

import pytest

from citizen_card.changes import TtlCache


class Db:
    """A slow read whose answer the test changes between calls."""

    def __init__(self) -> None:
        self.value = "v1"
        self.reads = 0
        self.gate = asyncio.Event()

    async def read(self) -> str:
        self.reads += 1
        value = self.value  # what the database held when the read began
        await self.gate.wait()
        return value


async def test_concurrent_misses_share_one_read() -> None:
    cache: TtlCache[str, str] = TtlCache(5.0)
    db = Db()
    calls = [asyncio.ensure_future(cache.load("shop", db.read)) for _ in range(32)]
    await asyncio.sleep(0)
    db.gate.set()
    assert await asyncio.gather(*calls) == ["v1"] * 32
    assert db.reads == 1
    assert await cache.load("shop", db.read) == "v1" and db.reads == 1  # now cached


async def test_a_call_after_a_change_does_not_join_a_read_begun_before_it() -> None:
    cache: TtlCache[str, str] = TtlCache(5.0)
    db = Db()
    before = asyncio.ensure_future(cache.load("card", db.read))
    await asyncio.sleep(0)  # its read has begun and sees v1
    db.value = "lost"  # the card is reported lost ...
    cache.drop("card")  # ... and the cache told
    after = asyncio.ensure_future(cache.load("card", db.read))
    await asyncio.sleep(0)
    db.gate.set()
    assert await before == "v1"  # it began before the change
    assert await after == "lost"  # it began after: its own read
    assert db.reads == 2
    assert cache.get("card") == (True, "lost")  # the read that raced the change is not kept


async def test_keep_decides_what_is_cached_and_errors_reach_every_waiter() -> None:
    cache: TtlCache[int, str | None] = TtlCache(5.0)

    async def none() -> None:
        return None

    assert await cache.load(7, none, keep=lambda v: v is not None) is None
    assert cache.get(7) == (False, None)  # "no such card" is asked again next time

    gate = asyncio.Event()
    reads = []

    async def broken() -> str:
        reads.append(1)
        await gate.wait()
        raise ConnectionError("database down")

    calls = [asyncio.ensure_future(cache.load(8, broken)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert len(reads) == 1  # one read failed, for all three


async def test_waiters_read_again_when_the_reader_is_cancelled() -> None:
    """A client that hangs up mid-request cancels its handler; the calls that were
    waiting for its read must still get an answer, not its cancellation."""
    cache: TtlCache[str, str] = TtlCache(5.0)
    db = Db()
    first = asyncio.ensure_future(cache.load("shop", db.read))
    await asyncio.sleep(0)
    waiting = asyncio.ensure_future(cache.load("shop", db.read))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    db.gate.set()
    assert await waiting == "v1"
    assert db.reads == 2
