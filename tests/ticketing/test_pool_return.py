"""SQLite connections go back into the pool with no transaction open (ticketing.store).

The pool does not roll back on return (a second, empty rollback per write); these
tests hold every way the service uses a pooled connection to ending its own
transaction, or the next user of that connection would read an old snapshot.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from ticketing.store import Database


@pytest.fixture
async def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    d = Database(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", pool_size=1)
    async with d.write() as conn:
        await conn.execute(sa.text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
    yield d
    await d.dispose()


def _write_elsewhere(db: Database, value: str) -> None:
    """Another process's write, on a connection of its own."""
    assert db.sqlite_file is not None
    with sqlite3.connect(db.sqlite_file) as other:
        other.execute("INSERT INTO t (v) VALUES (?)", (value,))


async def _values(db: Database) -> list[str]:
    async with db.read() as conn:
        return list((await conn.execute(sa.text("SELECT v FROM t ORDER BY id"))).scalars())


async def _pooled_in_transaction(db: Database) -> bool:
    async with db.engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        return bool(raw._conn.in_transaction)  # aiosqlite's sqlite3 connection


async def test_a_read_that_wrote_leaves_nothing_open_for_the_next_checkout(db: Database) -> None:
    """A read() context never commits: what it wrote goes, and so does its lock."""
    async with db.read() as conn:
        await conn.execute(sa.text("INSERT INTO t (v) VALUES ('never committed')"))
    assert not await _pooled_in_transaction(db)
    _write_elsewhere(db, "a")  # would wait out the timeout on a lock left held
    assert await _values(db) == ["a"]  # the same pooled connection, a fresh snapshot


async def test_a_write_commits_or_rolls_back_before_the_connection_is_reused(
    db: Database,
) -> None:
    async with db.write() as conn:
        await conn.execute(sa.text("INSERT INTO t (v) VALUES ('mine')"))
    assert not await _pooled_in_transaction(db)
    with pytest.raises(RuntimeError):
        async with db.write() as conn:
            await conn.execute(sa.text("INSERT INTO t (v) VALUES ('undone')"))
            raise RuntimeError("the handler failed")
    assert not await _pooled_in_transaction(db)
    _write_elsewhere(db, "theirs")
    assert await _values(db) == ["mine", "theirs"]


async def test_a_transaction_begun_on_the_driver_connection_ends_with_its_checkout(
    db: Database,
) -> None:
    """The ledger and the partner journal take SQLite's write lock themselves (BEGIN
    IMMEDIATE on the driver connection inside engine.begin())."""
    with pytest.raises(RuntimeError):
        async with db.engine.begin() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            await raw.execute("BEGIN IMMEDIATE")
            await raw.execute("INSERT INTO t (v) VALUES ('raw')")
            raise RuntimeError("failed mid-transaction")
    assert not await _pooled_in_transaction(db)
    _write_elsewhere(db, "after")  # the write lock was released
    assert await _values(db) == ["after"]
