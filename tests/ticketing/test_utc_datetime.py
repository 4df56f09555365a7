"""UTCDateTime's SQLite read path (`datetime.fromisoformat`) gives what the stock one gave."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.types import TypeDecorator

from ticketing.models import UTCDateTime
from ticketing.store import Database

SAMPLES = [
    "2026-11-23 09:41:40.837457",  # what SQLAlchemy stores
    "2026-11-23 09:41:40",  # CURRENT_TIMESTAMP, or a row written by hand
    "2026-11-23 09:41:40.5",
    "2026-02-17 00:00:00.000000",
    "0999-01-02 03:04:05.000006",
]


def _processors() -> tuple[object, object]:
    dialect = sqlite.dialect()
    t = UTCDateTime().dialect_impl(dialect)
    ours = t.result_processor(dialect, None)
    stock = TypeDecorator.result_processor(t, dialect, None)
    return ours, stock


@pytest.mark.parametrize("text", SAMPLES)
def test_the_fast_path_reads_what_the_stock_path_reads(text: str) -> None:
    ours, stock = _processors()
    got = ours(text)  # type: ignore[operator]
    assert got == stock(text)  # type: ignore[operator]
    assert got.tzinfo is UTC


def test_none_and_unparseable_text_go_the_stock_way() -> None:
    ours, stock = _processors()
    assert ours(None) is None  # type: ignore[operator]
    with pytest.raises(ValueError):
        stock("not a time")  # type: ignore[operator]
    with pytest.raises(ValueError):
        ours("not a time")  # type: ignore[operator]


async def test_round_trip_through_sqlite(tmp_path: Path) -> None:
    md = sa.MetaData()
    t = sa.Table(
        "t", md, sa.Column("id", sa.Integer, primary_key=True), sa.Column("at", UTCDateTime())
    )
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    try:
        async with db.write() as conn:
            await conn.run_sync(md.create_all)
            at = datetime(2026, 11, 23, 9, 41, 40, 837457, tzinfo=UTC)
            await conn.execute(t.insert(), [{"at": at}, {"at": None}])
        async with db.read() as conn:
            rows = (await conn.execute(sa.select(t.c.at).order_by(t.c.id))).scalars().all()
        assert rows == [at, None]
        assert rows[0].tzinfo is UTC
    finally:
        await db.dispose()
