"""Checkpoints happen beside the commits, not inside one of them."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest

from ticketing.store import sqlite_pragmas
from ticketing.wal_checkpoint import AUTOCHECKPOINT_PAGES, WalCheckpointer, checkpointing


def _writer(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    sqlite_pragmas(conn)
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body TEXT)")
    return conn


def _fill(conn: sqlite3.Connection, pages: int) -> None:
    for _ in range(pages):  # one ~4 KiB row per commit: about one page each
        conn.execute("INSERT INTO t (body) VALUES (?)", ("x" * 4000,))


def _rows_in_main_file(
    path: Path, tmp: Path, sql: str = "SELECT count(*) FROM t", *params: object
) -> int:
    """Rows the database file itself holds, without its WAL: what checkpoints copied."""
    copy = tmp / "main-file-only.sqlite"
    copy.write_bytes(path.read_bytes())
    conn = sqlite3.connect(copy)
    try:
        return int(conn.execute(sql, params).fetchone()[0])
    except sqlite3.OperationalError:  # not even the table has been copied yet
        return 0
    finally:
        conn.close()
        copy.unlink()


@pytest.mark.parametrize("folder", ["plain", "with space?and#marks%20"])
def test_the_service_connections_leave_checkpoints_to_the_checkpointer(
    tmp_path: Path, folder: str
) -> None:
    (tmp_path / folder).mkdir()
    path = tmp_path / folder / "db.sqlite"
    conn = _writer(path)
    (pages,) = conn.execute("PRAGMA wal_autocheckpoint").fetchone()
    assert pages == AUTOCHECKPOINT_PAGES > 1000  # SQLite's own default is 1,000
    _fill(conn, 1500)  # past SQLite's default: no commit has checkpointed
    cp = WalCheckpointer(path)
    busy, frames, copied = cp.checkpoint()
    assert busy == 0 and frames >= 1500 and copied == frames
    conn.close()


async def test_the_task_copies_the_wal_back_while_writers_go_on(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    conn = _writer(path)
    _fill(conn, 1)
    assert _rows_in_main_file(path, tmp_path) == 0  # all of it is still in the WAL
    async with checkpointing(path, interval_s=0.05):
        _fill(conn, 300)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if _rows_in_main_file(path, tmp_path) == 301:
                break
        assert _rows_in_main_file(path, tmp_path) == 301
        _fill(conn, 1)  # writers go on beside it
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (302,)
    conn.close()


async def test_a_failing_checkpoint_is_one_warning_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cp = WalCheckpointer(tmp_path / "missing-dir" / "db.sqlite")
    with caplog.at_level(logging.INFO, logger="ticketing.wal_checkpoint"):
        assert await cp.run_once() is None
        (tmp_path / "missing-dir").mkdir()
        assert await cp.run_once() is None  # the directory alone: no database is made
        assert list((tmp_path / "missing-dir").iterdir()) == []
        _writer(tmp_path / "missing-dir" / "db.sqlite").close()
        assert await cp.run_once() is not None
    await cp.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "retrying" in warnings[0].getMessage()
    assert any("work again" in r.getMessage() for r in caplog.records)


async def test_no_file_no_task() -> None:
    before = {t.get_name() for t in asyncio.all_tasks()}
    async with checkpointing(None):
        assert {t.get_name() for t in asyncio.all_tasks()} == before


async def test_the_service_checkpoints_its_own_database(sqlite_api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ticket = await sqlite_api.new_ticket()
    path = tmp_path / "test.db"
    sql = "SELECT count(*) FROM ticket WHERE number = ?"
    for _ in range(60):  # the service's interval is a second
        if _rows_in_main_file(path, tmp_path, sql, ticket["number"]):
            break
        await asyncio.sleep(0.1)
    assert _rows_in_main_file(path, tmp_path, sql, ticket["number"]) == 1
