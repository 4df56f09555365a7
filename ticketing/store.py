"""The database handle: engine, read/write transactions, dialect differences.

SQLite allows one writer at a time; rather than let concurrent writers collide
and retry on SQLITE_BUSY, writes in this process queue on one asyncio lock while
reads go straight to their own WAL snapshot. PostgreSQL needs no such lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlmodel import SQLModel

from ticketing import models as _models  # noqa: F401  (registers the tables)
from ticketing import sqlite_driver
from ticketing.wal_checkpoint import AUTOCHECKPOINT_PAGES


class StoreUnavailable(Exception):
    """The database cannot be reached; callers answer 503 and keep nothing half-done."""


def _sqlite_path(url: str) -> Path | None:
    tail = url.split("///", 1)[1] if "///" in url else ""
    if not tail or tail.startswith(":memory:"):
        return None
    return Path(tail.split("?", 1)[0])


class Database:
    def __init__(self, url: str, *, echo: bool = False, pool_size: int = 10) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            path = _sqlite_path(url)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}
            # No ROLLBACK on the way back into the pool: every checkout ends its own
            # transaction (engine.begin() commits or rolls back; Connection.close() rolls
            # back what a read left open), so the pool's reset was a second, empty
            # rollback, i.e. one more hop into aiosqlite's thread per write (~0.3-0.5 ms
            # of CPU on a ~2 ms write transaction).
            kwargs["pool_reset_on_return"] = None
            if url.startswith("sqlite+aiosqlite"):
                kwargs["module"] = sqlite_driver.dbapi()  # one thread hop per statement
            # the same pool as PostgreSQL's: the default (5 + 10 overflow) closed and
            # reopened a connection, and its aiosqlite thread, on most checkouts under load
            if path is not None:  # an in-memory database has one connection (StaticPool)
                kwargs.update(pool_size=pool_size, max_overflow=pool_size)
        else:
            # Pre-ping stays (one round trip per checkout, i.e. per write batch for the
            # intake): without it, the first use of a pooled connection whose backend was
            # terminated fails with asyncpg's "cannot switch to state 15; another operation
            # is in progress" (InternalClientError), which is a 500, not a 503.
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", sqlite_pragmas)

    @functools.cached_property
    def sqlite_file(self) -> Path | None:
        """The database file on SQLite (None for PostgreSQL or an in-memory database);
        parsed once: the writers ask for it on every batch."""
        return _sqlite_path(self.url) if self.url.startswith("sqlite") else None

    @property
    def write_lock(self) -> asyncio.Lock | None:
        """The process-wide SQLite writer lock, for other writers on the same file."""
        return self._write_lock

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction: committed on exit, rolled back on error."""
        lock = self._write_lock or contextlib.nullcontext()
        async with lock:
            try:
                async with self.engine.begin() as conn:
                    yield conn
            except (OperationalError, DBAPIError, OSError) as exc:
                if is_unavailable(exc):
                    raise StoreUnavailable(str(exc)) from exc
                raise

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self.engine.connect() as conn:
                yield conn
        except (OperationalError, DBAPIError, OSError) as exc:
            if is_unavailable(exc):
                raise StoreUnavailable(str(exc)) from exc
            raise

    async def ping(self) -> bool:
        try:
            async with self.read() as conn:
                await conn.execute(sa.text("SELECT 1"))
            return True
        except Exception:
            return False

    async def create_all(self) -> None:
        """Create tables directly (tests); production uses Alembic migrations."""
        async with self.engine.begin() as conn:
            await conn.run_sync(SQLModel.metadata.create_all)

    async def dispose(self) -> None:
        await self.engine.dispose()

    def upsert(
        self,
        table: sa.Table,
        rows: Sequence[dict[str, Any]],
        keys: Sequence[str],
        update: Sequence[str],
        keep_if_same: tuple[Sequence[str], Sequence[str]] | None = None,
    ) -> sa.Insert:
        """INSERT ... ON CONFLICT (keys) DO UPDATE, in this database's dialect.

        `keep_if_same=(watched, kept)`: the `kept` columns keep their stored values when
        none of the `watched` columns change (e.g. a claim survives a priority bump).
        """
        ins: Any = (sqlite.insert if self.is_sqlite else postgresql.insert)(table).values(
            list(rows)
        )
        set_: dict[str, Any] = {c: ins.excluded[c] for c in update}
        if keep_if_same:
            watched, kept = keep_if_same
            same = sa.and_(*(table.c[w] == ins.excluded[w] for w in watched))
            for k in kept:
                set_[k] = sa.case((same, table.c[k]), else_=ins.excluded[k])
        return ins.on_conflict_do_update(index_elements=list(keys), set_=set_)

    def insert_ignore(self, table: sa.Table, rows: Sequence[dict[str, Any]]) -> sa.Insert:
        ins: Any = (sqlite.insert if self.is_sqlite else postgresql.insert)(table).values(
            list(rows)
        )
        return ins.on_conflict_do_nothing()


def sqlite_pragmas(dbapi_conn: Any, _record: Any = None) -> None:
    """What every SQLite connection of the service runs first (also used by the intake)."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: a ticket acknowledged is on disk even after a power cut; group commit
    # makes the fsync cheap per ticket.
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    # checkpoints run beside the commits (ticketing.wal_checkpoint); this is the net
    cur.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
    cur.close()


# SQLSTATE classes that mean "the database cannot serve us now", not "this statement is
# wrong": 08 connection exception, 53 insufficient resources (too many connections,
# disk full, out of memory), 57P operator intervention (shutdown, crash recovery,
# starting up). A client should retry these later; they are never our bug. (The same
# rule as citizen_card.dberrors: the two packages do not import each other.)
UNAVAILABLE_SQLSTATES = ("08", "53", "57P")


def sqlstate(exc: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE of a driver error, also when SQLAlchemy or our own
    exceptions wrap it (``orig`` and ``__cause__``, a few levels deep)."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return None
        code = getattr(seen, "sqlstate", None) or getattr(seen, "pgcode", None)
        if isinstance(code, str):
            return code
        seen = getattr(seen, "orig", None) or seen.__cause__
    return None


def first_line(exc: BaseException) -> str:
    """The driver's own message, one line: what a log needs of an unavailable database."""
    return (str(getattr(exc, "orig", None) or exc).splitlines() or [""])[0][:200]


def answers_unavailable(exc: BaseException) -> bool:
    """Whether a request that failed with `exc` is answered 503 "retry shortly":
    StoreUnavailable, or a database driver's error that means the same. (A bare
    OSError from elsewhere in a handler is not taken for the database.)"""
    return isinstance(exc, StoreUnavailable) or (sqlstate(exc) is not None and is_unavailable(exc))


def log_pass_failure(logger: logging.Logger, exc: BaseException, message: str, *args: Any) -> None:
    """A background pass failed and will run again. A database that cannot serve now
    (unreachable, out of connection slots, shutting down) is one WARNING line: it is not
    our bug, and a traceback per pass per loop while PostgreSQL is out of slots would
    bury real faults. Anything else keeps its traceback at ERROR."""
    if is_unavailable(exc):
        logger.warning(message + " (database unavailable: %s)", *args, first_line(exc))
    else:
        logger.error(message, *args, exc_info=exc)


def is_unavailable(exc: BaseException) -> bool:
    """Whether an error means the database cannot be reached (answer 503), not a bug."""
    code = sqlstate(exc)
    if code is not None and code.startswith(UNAVAILABLE_SQLSTATES):
        return True
    text = str(exc).lower()
    needles = (
        "connection refused",
        "could not connect",
        "connection is closed",
        "connection was closed",
        "terminating connection",
        "cannot connect",
        "unable to open database",
        "disk i/o error",
        "the database system is",
        "connection reset",
        "connectionrefused",
    )
    return isinstance(exc, OSError) or any(n in text for n in needles)
