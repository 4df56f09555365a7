"""Local days in SQL (ticketing.performance.local_day), checked against Python's zoneinfo."""

from __future__ import annotations

from datetime import UTC, date, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from ticketing.models import UTCDateTime
from ticketing.performance import Period, local_day


@pytest.mark.parametrize(
    ("zone", "first", "last"),
    [
        ("Asia/Shanghai", date(2026, 11, 1), date(2026, 11, 3)),  # one offset: date(+480 min)
        ("Europe/Berlin", date(2026, 10, 24), date(2026, 10, 26)),  # DST ends on the 25th
        ("America/New_York", date(2026, 3, 7), date(2026, 3, 9)),  # DST starts on the 8th
    ],
)
def test_sqlite_local_day_matches_zoneinfo(zone: str, first: date, last: date) -> None:
    tz = ZoneInfo(zone)
    period = Period(first, last, tz)
    meta = sa.MetaData()
    t = sa.Table("t", meta, sa.Column("at", UTCDateTime(), nullable=False))
    engine = sa.create_engine("sqlite://")
    meta.create_all(engine)
    instants = [period.start + timedelta(minutes=17 * i) for i in range(3 * 24 * 60 // 17)]
    instants = [at for at in instants if at < period.end]
    with engine.begin() as conn:
        conn.execute(t.insert(), [{"at": at} for at in instants])
        got = [
            (row.at, row.day)
            for row in conn.execute(
                sa.select(t.c.at, local_day(t.c.at, period, sqlite=True).label("day"))
            )
        ]
    assert len(got) == len(instants)
    for at, day in got:
        assert day == at.astimezone(tz).date().isoformat(), at.astimezone(UTC)
