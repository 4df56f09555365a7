"""SQLAlchemy's aiosqlite adapter with one thread hop per statement.

Why: aiosqlite runs each SQLite call on the connection's own thread, and SQLAlchemy's
adapter makes a separate call for every step of a statement -- open a cursor, execute,
fetch the rows, close the cursor -- plus one for the ROLLBACK that ends every read.
Each hop is a queue hand-off to that thread and a wake-up of the event loop on the way
back. Under wrk, a 5-row ``GET /api/v1/tickets`` cost ~2.2 ms of CPU, of which ~0.9 ms
on the aiosqlite threads, for ~0.1 ms of SQLite work.

Here a statement is one function run on that thread: cursor, execute (or
executemany), the rows and the cursor's ``description``/``rowcount``/``lastrowid``,
close. SQLAlchemy then reads the rows from memory as it already did (the stock adapter
buffers them too). A ROLLBACK with no transaction open (a read: pysqlite opens one
only for DML) is skipped; ``in_transaction`` is read on the loop thread, which is what
aiosqlite's own property does. Server-side cursors (``stream()``) keep the stock
behaviour.

Plugged in as the engine's DBAPI module (``create_async_engine(..., module=...)``), so
the URL stays ``sqlite+aiosqlite://``.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_


class _Finished:
    """What the thread hands back of a cursor it has already closed."""

    __slots__ = ("arraysize", "description", "lastrowid", "rowcount")

    def __init__(self, description: Any, rowcount: int, lastrowid: int | None) -> None:
        self.description = description
        self.rowcount = rowcount
        self.lastrowid = lastrowid
        self.arraysize = 1  # what fetchmany() takes without a size


_NOTHING_YET = _Finished(None, -1, None)


def _run(
    conn: sqlite3.Connection, operation: str, parameters: Any, many: bool
) -> tuple[_Finished, list[Any]]:
    """On the connection's thread: the whole statement, start to finish."""
    cur = conn.cursor()
    try:
        if many:
            cur.executemany(operation, parameters)
        elif parameters is None:
            cur.execute(operation)
        else:
            cur.execute(operation, parameters)
        description = cur.description
        rows = cur.fetchall() if description else []
        return _Finished(description, cur.rowcount, cur.lastrowid), rows
    finally:
        cur.close()


class OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    __slots__ = ()
    _awaitable_cursor_close = False

    def __init__(self, adapt_connection: Any) -> None:
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = _NOTHING_YET  # type: ignore[assignment]
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = deque()

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        return await self._hop(operation, parameters, False)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> Any:
        return await self._hop(operation, seq_of_parameters, True)

    async def _hop(self, operation: Any, parameters: Any, many: bool) -> None:
        conn = self._connection
        async with self._adapt_connection._execute_mutex:
            finished, rows = await conn._execute(_run, conn._conn, operation, parameters, many)
        self._cursor = finished  # type: ignore[assignment]
        self._rows = deque(rows)

    def close(self) -> None:
        self._rows.clear()


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = OneHopCursor

    def rollback(self) -> None:
        conn = self._connection
        # nothing to undo after a read; a closed connection goes the stock way (it raises)
        if conn._connection is not None and not conn._connection.in_transaction:
            return
        super().rollback()


class OneHopDBAPI(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> OneHopConnection:
        connection = aiosqlite.connect(*arg, **kw)
        connection._thread.daemon = True  # as SQLAlchemy does: never block interpreter exit
        return OneHopConnection(self, await_(connection))


def dbapi() -> OneHopDBAPI:
    return OneHopDBAPI(aiosqlite, sqlite3)
