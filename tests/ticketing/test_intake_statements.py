"""The SQLite writer process gets hand-built INSERTs: they must store exactly what
SQLAlchemy's own INSERT of the same rows stores, and the shortcuts behind them must
spell exactly what the slow originals spell (stored audit hashes depend on it)."""

from __future__ import annotations

import json
import random
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sqlite_dialect

from ticketing import intake as intake_mod
from ticketing.audit import _canonical_time
from ticketing.handlers import _iso, event_t, ticket_t
from ticketing.models import SQLModel, UTCDateTime

SHANGHAI = ZoneInfo("Asia/Shanghai")


def _ticket(i: int) -> dict[str, Any]:
    at = datetime(2026, 11, 24, 8, 0, i, 1000 * i, tzinfo=SHANGHAI if i % 2 else UTC)
    return {
        "number": f"20261124{i:05d}",
        "kind": "complaint",
        "title": f'噪音 {i} "quoted" \\ back',
        "description": "和平路工地夜间施工" * (i + 1),
        "category_code": None if i % 3 == 0 else "urban.noise",
        "channel": "wechat",
        "urgency": "normal",
        "priority": 2,
        "status": "new",
        "lead_department": None,
        "assist_departments": [] if i % 2 else ["water", "街道"],
        "contact_name": "李先生" if i % 2 else None,
        "contact_phone_enc": None,
        "contact_phone_bidx": None,
        "contact_ids": {} if i % 3 else {"wechat": f"o{i}", "tg": None},
        "address": "西城区",
        "district": "西城区",
        "lat": 39.9 + i / 1e6 if i % 2 else None,
        "lon": 116.4 if i % 2 else None,
        "merged_into": None,
        "satisfaction": None,
        "reply_text": None,
        "supervision_count": 0,
        "reopen_count": 0,
        "created_by": "agent",
        "created_at": at,
        "updated_at": at,
        "dispatched_at": None,
        "dispatch_due_at": at + timedelta(hours=24),
        "feedback_due_at": None,
        "dispatch_warned_at": None,
        "dispatch_breached_at": None,
        "feedback_warned_at": None,
        "feedback_breached_at": None,
        "closed_at": None,
        "version": 1,
        "event_seq": 1,
        "last_hash": f"{i:064x}",
    }


def _event(t: dict[str, Any]) -> dict[str, Any]:
    return {
        "ticket_number": t["number"],
        "seq": 1,
        "at": t["created_at"],
        "actor": "agent",
        "actor_role": "agent",
        "action": "create",
        "from_status": None,
        "to_status": "new",
        "data": {"channel": "wechat", "kind": "complaint", "category": t["category_code"]},
        "prev_hash": "0" * 64,
        "hash": t["last_hash"],
    }


def _stored(conn: sqlite3.Connection, table: sa.Table) -> list[tuple[Any, ...]]:
    return conn.execute(f'SELECT * FROM "{table.name}" ORDER BY id').fetchall()


@pytest.mark.parametrize("n", [1, 7, 45])  # 45 tickets need more than one INSERT
def test_hand_built_inserts_store_what_sqlalchemy_stores(tmp_path: Any, n: int) -> None:
    tickets = [_ticket(i) for i in range(n)]
    events = [_event(t) for t in tickets]
    rows = intake_mod._Rows(tickets, events, [], [], [None] * n)
    statements = intake_mod._SqlitePlans(sqlite_dialect.dialect()).statements(rows)
    per = 999 // (len(ticket_t.columns) - 1)  # SQLite's old limit of 999 parameters
    assert sum(1 for sql, _ in statements if '"ticket"' in sql) == -(-n // per)

    ours, theirs = tmp_path / "ours.db", tmp_path / "theirs.db"
    for path in (ours, theirs):
        SQLModel.metadata.create_all(sa.create_engine(f"sqlite:///{path}"))
    with sqlite3.connect(ours) as conn:
        for sql, params in statements:
            conn.execute(sql, params)
    engine = sa.create_engine(f"sqlite:///{theirs}")
    with engine.begin() as conn:
        conn.execute(sa.insert(ticket_t), tickets)
        conn.execute(sa.insert(event_t), events)

    a, b = sqlite3.connect(ours), sqlite3.connect(theirs)
    for table in (ticket_t, event_t):
        assert _stored(a, table) == _stored(b, table)
        assert len(_stored(a, table)) == n


@pytest.mark.parametrize(
    "value",
    [
        [],
        {},
        {"a": "1"},
        {"a": 1},
        {"a": True},
        {"a": 1.0},
        {"a": None},
        {"b": "x", "a": "y"},  # insertion order is kept, not sorted
        {"a": "y", "b": "x"},
        {"名": "王\u2028", "q": 'say "hi" \\'},
        ["a", 1, None],
        {"nested": {"a": "1"}},
    ],
)
def test_json_shortcut_spells_what_json_dumps_spells(value: Any) -> None:
    for _ in range(2):  # the second time from the memo
        assert intake_mod._json_text(value) == json.dumps(value)


def test_json_memo_never_confuses_equal_values_of_other_types() -> None:
    # 1 == True == 1.0 and they hash alike: only string values may share a memo entry
    for value in (
        {"k": 1},
        {"k": True},
        {"k": 1.0},
        {"k": "1"},
        {"k": 1},
        {True: "a"},
        {1: "a"},
        {1.0: "a"},
        {"1": "a"},
    ):
        assert intake_mod._json_text(value) == json.dumps(value)


def test_canonical_time_spells_what_strftime_spells() -> None:
    rng = random.Random(7)
    zones = [
        UTC,
        SHANGHAI,
        timezone(timedelta(hours=-3, minutes=-30)),
        ZoneInfo("America/New_York"),
    ]
    for _ in range(5000):
        tz = rng.choice(zones)
        at = datetime.fromtimestamp(rng.uniform(-6.2e10, 4e9), tz)
        at = at.replace(microsecond=rng.choice([0, rng.randrange(10**6)]))
        assert _canonical_time(at) == at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    early = datetime(999, 3, 4, 5, 6, 7, 8, tzinfo=UTC)  # strftime does not pad the year
    assert _canonical_time(early) == early.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _random_times(n: int) -> list[datetime]:
    rng = random.Random(11)
    zones = [UTC, SHANGHAI, timezone(timedelta(hours=5, minutes=45)), ZoneInfo("Europe/Berlin")]
    out = []
    for _ in range(n):
        at = datetime.fromtimestamp(rng.uniform(-6.2e10, 4e9), rng.choice(zones))
        out.append(at.replace(microsecond=rng.choice([0, rng.randrange(10**6)])))
    return out


def test_sqlite_datetime_text_is_sqlalchemys() -> None:
    column = sa.Column("at", UTCDateTime())
    process = column.type.dialect_impl(sqlite_dialect.dialect()).bind_processor(
        sqlite_dialect.dialect()
    )
    assert process is not None
    for at in _random_times(3000):
        intake_mod._DATETIME_TEXT.clear()
        assert intake_mod._sqlite_datetime(at) == process(at), at
    with pytest.raises(ValueError):
        intake_mod._sqlite_datetime(datetime(2026, 1, 1))


def test_view_times_are_utc_iso_with_z() -> None:
    for at in _random_times(3000):
        expected = at.astimezone(UTC).isoformat().replace("+00:00", "Z")
        assert _iso(at) == expected, at
        assert _iso(at) == expected  # from the memo
    assert _iso(None) is None
