"""SQLAlchemy over aiosqlite with one thread hop per statement (ticketing.sqlite_driver).

The adapter is measured by the hops it saves, so the tests count them, and they hold
it to what the stock adapter gave: rows, rowcount, lastrowid, executemany, streaming,
errors as SQLAlchemy's exceptions, and rollbacks that still undo.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError

from ticketing.sqlite_driver import OneHopConnection
from ticketing.store import Database


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    d = Database(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", pool_size=2)
    async with d.write() as conn:
        await conn.execute(sa.text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)"))
    yield d
    await d.dispose()


class _Hops:
    """Counts the calls queued to aiosqlite's thread on one connection."""

    def __init__(self, raw: Any) -> None:
        self.n = 0
        self._inner = raw._execute
        raw._execute = self

    async def __call__(self, fn: Any, *args: Any, **kw: Any) -> Any:
        self.n += 1
        return await self._inner(fn, *args, **kw)


async def _driver(conn: Any) -> Any:
    adapted = await conn.get_raw_connection()
    assert isinstance(adapted.dbapi_connection, OneHopConnection)
    return adapted.driver_connection


async def test_a_read_is_one_hop_including_its_end(db: Database) -> None:
    async with db.write() as conn:
        await conn.execute(sa.text("INSERT INTO t (v) VALUES ('a'), ('b')"))
    async with db.read() as conn:
        hops = _Hops(await _driver(conn))
        rows = (await conn.execute(sa.text("SELECT id, v FROM t ORDER BY id"))).all()
    assert [tuple(r) for r in rows] == [(1, "a"), (2, "b")]
    # the stock adapter: cursor, execute, fetchall, close, and a ROLLBACK at the end
    assert hops.n == 1


async def test_rowcount_lastrowid_and_executemany(db: Database) -> None:
    async with db.write() as conn:
        hops = _Hops(await _driver(conn))
        res = await conn.execute(sa.text("INSERT INTO t (v) VALUES ('x')"))
        assert res.lastrowid == 1
        await conn.execute(sa.text("INSERT INTO t (v) VALUES (:v)"), [{"v": "y"}, {"v": "z"}])
        upd = await conn.execute(sa.text("UPDATE t SET v = v || '!' WHERE id > 1"))
        assert upd.rowcount == 2
        n_statements = hops.n
    assert n_statements == 3
    async with db.read() as conn:
        values = (await conn.execute(sa.text("SELECT v FROM t ORDER BY id"))).scalars().all()
    assert values == ["x", "y!", "z!"]


async def test_streaming_still_reads_every_row(db: Database) -> None:
    async with db.write() as conn:
        await conn.execute(
            sa.text("INSERT INTO t (v) VALUES (:v)"), [{"v": f"r{i}"} for i in range(250)]
        )
    async with db.read() as conn:
        result = await conn.stream(sa.text("SELECT v FROM t ORDER BY id"))
        seen = [v async for v in result.scalars()]
    assert len(seen) == 250 and seen[0] == "r0" and seen[-1] == "r249"


async def test_errors_are_sqlalchemys_and_a_failed_write_is_undone(db: Database) -> None:
    async with db.write() as conn:
        await conn.execute(sa.text("INSERT INTO t (v) VALUES ('only')"))
    with pytest.raises(IntegrityError):
        async with db.write() as conn:
            await conn.execute(sa.text("INSERT INTO t (v) VALUES ('new')"))
            await conn.execute(sa.text("INSERT INTO t (v) VALUES ('only')"))
    with pytest.raises(OperationalError):
        async with db.read() as conn:
            await conn.execute(sa.text("SELECT nope FROM t"))
    async with db.read() as conn:
        values = (await conn.execute(sa.text("SELECT v FROM t"))).scalars().all()
    assert values == ["only"]  # 'new' went with its transaction


async def test_a_read_that_wrote_is_rolled_back(db: Database) -> None:
    """The skipped ROLLBACK is only the empty one: a read() that wrote still undoes it."""
    async with db.read() as conn:
        await conn.execute(sa.text("INSERT INTO t (v) VALUES ('never committed')"))
        raw = await _driver(conn)
        assert raw.in_transaction
    async with db.read() as conn:
        assert (await conn.execute(sa.text("SELECT count(*) FROM t"))).scalar_one() == 0
