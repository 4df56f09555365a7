"""Plain asyncpg connections for the card's hot paths on PostgreSQL.

A payment and a partner-journal batch are a handful of statements on one
connection. Through SQLAlchemy's pool each checkout also costs a pre-ping round
trip (kept there for good reason, see ticketing.store) and a greenlet hop per
call; at a thousand payments a second that is most of the work. So the ledger's
payment transactions and the journal's batches take connections from a small
asyncpg pool of their own: no pre-ping, no reset on release (every use is one
transaction, committed or rolled back, and only transaction-level advisory locks
are taken). A connection whose backend went away is noticed by asyncpg and
replaced; the statement that met it fails once and is retried where that is safe
(the ledger's idempotency makes a payment's retry safe).

The pool is made lazily, in the running event loop, and `close()` may be called
any number of times (the next use makes a new one).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

DEFAULT_SIZE = 12


async def _no_reset(_conn: asyncpg.Connection) -> None:
    """Every use ended its transaction; session state is never changed."""


class RawPool:
    def __init__(self, engine: AsyncEngine, *, size: int = DEFAULT_SIZE) -> None:
        url = engine.url.set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self.size = size
        self._pool: asyncpg.Pool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._creating: asyncio.Lock | None = None

    async def _get(self) -> asyncpg.Pool:
        loop = asyncio.get_running_loop()
        if self._pool is not None and self._loop is loop:
            return self._pool
        if self._creating is None or self._loop is not loop:
            self._creating, self._pool, self._loop = asyncio.Lock(), None, loop
        async with self._creating:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self._dsn, min_size=1, max_size=self.size, reset=_no_reset
                )
        return self._pool

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        pool = await self._get()
        async with pool.acquire() as conn:
            yield conn

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None and self._loop is asyncio.get_running_loop():
            await pool.close()
        elif pool is not None:
            pool.terminate()
