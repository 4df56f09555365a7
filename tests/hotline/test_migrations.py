"""Alembic migrations shipped in `hotline.migrations` match `SQLModel.metadata`.

Every model module the migrations cover is imported here, so `SQLModel.metadata`
holds all their tables whatever order the tests run in.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel

from citizen_card.ledger import Ed25519Signer, Ledger
from citizen_card.ledger_models import LEDGER_SEQUENCE_NAME, entry_t, transfer_t
from hotline.migrate import (
    MIGRATIONS_DIR,
    alembic_config,
    needs_migration,
    upgrade_head,
    upgrade_head_async,
)
from hotline.schema import load_models

load_models()
_HEADS = ScriptDirectory.from_config(alembic_config("sqlite+aiosqlite://")).get_heads()
HEAD = _HEADS[0]
MODEL_TABLES = set(SQLModel.metadata.tables)
# Created by revision 0002 (citizen_card); 0001 holds the ticketing tables.
CARD_TABLES = {
    "medical_grant",
    "resident",
    "card",
    "hospital_card",
    "card_event",
    "freeze_receipt",
    "card_counter",
    "partner",
    "partner_nonce",
    "partner_idempotency",  # revision 0009
    "ledger_account",
    "ledger_transfer",
    "ledger_entry",
    "ledger_pending",
    "ledger_sequence",
}
# Created by revision 0001, frozen like the revision itself.
TICKETING_TABLES = {
    "attachment",
    "category",
    "department",
    "idempotency_record",
    "staff_session",
    "staff_user",
    "ticket",
    "ticket_counter",
    "ticket_event",
    "work_item",
}


def _sqlite_urls(path: Path) -> tuple[str, str]:
    """(async URL for our code, sync URL for inspecting with the stdlib driver)."""
    return f"sqlite+aiosqlite:///{path}", f"sqlite:///{path}"


def _table_names(conn: Connection) -> set[str]:
    return set(sa.inspect(conn).get_table_names())


def _version_rows(conn: Connection) -> list[str]:
    return [row[0] for row in conn.execute(sa.text("SELECT version_num FROM alembic_version"))]


def _diff(conn: Connection) -> list[Any]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return compare_metadata(context, SQLModel.metadata)


def _inspect_sqlite(sync_url: str, fn: Any) -> Any:
    engine = sa.create_engine(sync_url)
    try:
        with engine.connect() as conn:
            return fn(conn)
    finally:
        engine.dispose()


async def _inspect_async(url: str, fn: Any) -> Any:
    engine = create_async_engine(url, poolclass=sa.pool.NullPool)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()


def test_package_ships_script_template_and_versions() -> None:
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert (MIGRATIONS_DIR / "script.py.mako").is_file()
    assert len(_HEADS) == 1, f"one linear history, found heads {_HEADS}"


def test_alembic_config_keeps_percent_in_url() -> None:
    url = "postgresql+asyncpg://hotline:p%40ss%25w@db:5432/hotline"
    cfg = alembic_config(url)
    assert cfg.get_main_option("sqlalchemy.url") == url
    assert cfg.get_main_option("script_location") == str(MIGRATIONS_DIR)


def test_upgrade_creates_every_table(tmp_path: Path) -> None:
    db = tmp_path / "nested" / "dir" / "hotline.db"  # parent dirs don't exist yet
    url, sync_url = _sqlite_urls(db)
    upgrade_head(url)
    assert db.is_file()
    tables = _inspect_sqlite(sync_url, _table_names)
    assert tables == MODEL_TABLES | {"alembic_version"}
    assert _inspect_sqlite(sync_url, _version_rows) == [HEAD]


def test_upgrade_twice_is_noop(tmp_path: Path) -> None:
    url, sync_url = _sqlite_urls(tmp_path / "hotline.db")
    upgrade_head(url)

    def add_row(conn: Connection) -> None:
        conn.execute(sa.text("INSERT INTO ticket_counter (day, value) VALUES ('20250101', 7)"))
        conn.commit()

    _inspect_sqlite(sync_url, add_row)
    upgrade_head(url)

    def state(conn: Connection) -> tuple[set[str], list[str], list[Any]]:
        rows = list(conn.execute(sa.text("SELECT day, value FROM ticket_counter")))
        return _table_names(conn), _version_rows(conn), rows

    tables, versions, rows = _inspect_sqlite(sync_url, state)
    assert tables == MODEL_TABLES | {"alembic_version"}
    assert versions == [HEAD]
    assert [tuple(r) for r in rows] == [("20250101", 7)]


def test_sqlite_schema_matches_models(tmp_path: Path) -> None:
    url, sync_url = _sqlite_urls(tmp_path / "hotline.db")
    upgrade_head(url)
    assert _inspect_sqlite(sync_url, _diff) == []


def test_downgrade_to_base_drops_tables(tmp_path: Path) -> None:
    url, sync_url = _sqlite_urls(tmp_path / "hotline.db")
    upgrade_head(url)
    command.downgrade(alembic_config(url), "base")
    assert _inspect_sqlite(sync_url, _table_names) == {"alembic_version"}
    assert _inspect_sqlite(sync_url, _version_rows) == []
    upgrade_head(url)  # and back up again
    assert _inspect_sqlite(sync_url, _table_names) == MODEL_TABLES | {"alembic_version"}


async def test_needs_migration_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "hotline.db"
    url, _ = _sqlite_urls(db)
    assert await needs_migration(url) is True
    assert not db.exists()  # asking must not create the database file
    await upgrade_head_async(url)
    assert await needs_migration(url) is False
    await asyncio.to_thread(command.downgrade, alembic_config(url), "base")
    assert await needs_migration(url) is True


async def test_upgrade_head_in_event_loop_thread_is_refused(tmp_path: Path) -> None:
    url, _ = _sqlite_urls(tmp_path / "hotline.db")
    with pytest.raises(RuntimeError, match="upgrade_head_async"):
        upgrade_head(url)


def test_offline_sql_for_postgres(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = alembic_config("postgresql+asyncpg://hotline@db.invalid:5432/hotline")
    command.upgrade(cfg, "head", sql=True)
    out = capsys.readouterr().out
    assert "CREATE TABLE ticket (" in out
    assert "TIMESTAMP WITH TIME ZONE" in out
    assert "INSERT INTO alembic_version (version_num) VALUES ('0001')" in out
    assert f"UPDATE alembic_version SET version_num='{HEAD}'" in out
    assert "CREATE TABLE ledger_transfer (" in out
    assert f"CREATE SEQUENCE {LEDGER_SEQUENCE_NAME}" in out
    assert "'ledger rows of % are immutable'" in out
    assert "CREATE TRIGGER ledger_entry_immutable BEFORE UPDATE OR DELETE ON ledger_entry" in out


@pytest.mark.postgres
async def test_postgres_upgrade_matches_models(pg_url: str) -> None:
    assert await needs_migration(pg_url) is True
    await upgrade_head_async(pg_url)
    await upgrade_head_async(pg_url)  # second run is a no-op
    assert await needs_migration(pg_url) is False
    assert await _inspect_async(pg_url, _table_names) == MODEL_TABLES | {"alembic_version"}
    assert await _inspect_async(pg_url, _version_rows) == [HEAD]
    assert await _inspect_async(pg_url, _diff) == []


@pytest.mark.postgres
async def test_postgres_downgrade_to_base(pg_url: str) -> None:
    await upgrade_head_async(pg_url)
    cfg = alembic_config(pg_url)
    # Alembic's async env.py drives its own loop: keep it off this one.
    await asyncio.to_thread(command.downgrade, cfg, "0001")
    assert await _inspect_async(pg_url, _table_names) == TICKETING_TABLES | {"alembic_version"}
    assert await _inspect_async(pg_url, _pg_ledger_objects) == ([], [], [])
    await asyncio.to_thread(command.downgrade, cfg, "base")
    assert await _inspect_async(pg_url, _table_names) == {"alembic_version"}
    assert await needs_migration(pg_url) is True
    await upgrade_head_async(pg_url)  # and back up again
    assert await _inspect_async(pg_url, _diff) == []


# ----------------------------------------------------------------------------- citizen card
#
# compare_metadata sees tables, columns, indexes, unique constraints and foreign keys,
# not CHECK constraints, server defaults, sequences or triggers. So a database at
# head is also compared with one made by `create_all` (the models' own DDL, with the
# LEDGER_GUARDS triggers attached to table creation), and the Ledger is run on it.


def _card_schema(conn: Connection) -> dict[str, Any]:
    """What the citizen card tables look like, constraint names aside where the
    models leave them unnamed (the migration names them as PostgreSQL would)."""
    insp = sa.inspect(conn)
    schema: dict[str, Any] = {}
    for table in sorted(CARD_TABLES):
        schema[table] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"], c.get("default"))
                for c in insp.get_columns(table)
            ],
            "pk": insp.get_pk_constraint(table)["constrained_columns"],
            "fks": sorted(
                (tuple(fk["constrained_columns"]), fk["referred_table"], *fk["referred_columns"])
                for fk in insp.get_foreign_keys(table)
            ),
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                for i in insp.get_indexes(table)
            ),
            "uniques": sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(table)),
            "checks": sorted((c["name"], c["sqltext"]) for c in insp.get_check_constraints(table)),
        }
    if conn.dialect.name == "sqlite":
        schema["triggers"] = [
            tuple(row)
            for row in conn.execute(
                sa.text("SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger'")
            )
        ]
        schema["triggers"].sort()
    else:
        schema["ledger_objects"] = _pg_ledger_objects(conn)
    return schema


def _pg_ledger_objects(conn: Connection) -> tuple[list[Any], list[Any], list[Any]]:
    """(triggers, the trigger function, the ledger's SEQUENCE) on PostgreSQL."""
    triggers = conn.execute(
        sa.text(
            "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger "
            "WHERE NOT tgisinternal ORDER BY tgname"
        )
    ).all()
    functions = conn.execute(
        sa.text(
            "SELECT pg_get_functiondef(p.oid) FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = current_schema() AND p.proname = 'ledger_immutable'"
        )
    ).all()
    sequences = conn.execute(
        sa.text(
            "SELECT sequencename, data_type::text, start_value, increment_by, max_value, cycle "
            "FROM pg_sequences WHERE schemaname = current_schema() AND sequencename = :name"
        ),
        {"name": LEDGER_SEQUENCE_NAME},
    ).all()
    return (
        [tuple(r) for r in triggers],
        [tuple(r) for r in functions],
        [tuple(r) for r in sequences],
    )


def _create_card_tables(conn: Connection) -> None:
    tables = [SQLModel.metadata.tables[name] for name in CARD_TABLES]
    SQLModel.metadata.create_all(conn, tables=tables)
    conn.commit()


def test_sqlite_card_schema_matches_create_all(tmp_path: Path) -> None:
    url, sync_url = _sqlite_urls(tmp_path / "migrated.db")
    upgrade_head(url)
    _, ref_url = _sqlite_urls(tmp_path / "create_all.db")
    _inspect_sqlite(ref_url, _create_card_tables)
    migrated = _inspect_sqlite(sync_url, _card_schema)
    assert len(migrated["triggers"]) == 4
    assert migrated == _inspect_sqlite(ref_url, _card_schema)


def test_sqlite_downgrade_to_0001_drops_card_tables(tmp_path: Path) -> None:
    url, sync_url = _sqlite_urls(tmp_path / "hotline.db")
    upgrade_head(url)
    command.downgrade(alembic_config(url), "0001")
    assert _inspect_sqlite(sync_url, _table_names) == TICKETING_TABLES | {"alembic_version"}
    assert _inspect_sqlite(sync_url, _version_rows) == ["0001"]

    def triggers(conn: Connection) -> list[Any]:
        return conn.execute(sa.text("SELECT name FROM sqlite_master WHERE type = 'trigger'")).all()

    assert _inspect_sqlite(sync_url, triggers) == []
    upgrade_head(url)
    assert _inspect_sqlite(sync_url, _diff) == []


@pytest.mark.postgres
async def test_postgres_card_schema_matches_create_all(pg_url: str) -> None:
    engine = create_async_engine(pg_url, poolclass=sa.pool.NullPool)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_create_card_tables)
            reference = await conn.run_sync(_card_schema)
            await conn.execute(sa.text("DROP SCHEMA public CASCADE"))
            await conn.execute(sa.text("CREATE SCHEMA public"))
            await conn.commit()
    finally:
        await engine.dispose()
    await upgrade_head_async(pg_url)
    migrated = await _inspect_async(pg_url, _card_schema)
    triggers, functions, sequences = migrated["ledger_objects"]
    assert (len(triggers), len(functions), len(sequences)) == (3, 1, 1)
    assert migrated == reference


async def _ledger_round_trip(url: str) -> None:
    """One top-up and one payment through the Ledger, then a refused UPDATE of an entry."""
    engine = create_async_engine(url, poolclass=sa.pool.NullPool)
    try:
        ledger = Ledger(engine, Ed25519Signer(key_id="city-test-1"))
        wallet = await ledger.open_account("wallet", "w:migrated")
        shop = await ledger.open_account("merchant", "m:migrated")
        top_up = await ledger.top_up(wallet, 10_000, "topup-1")
        payment = await ledger.pay(wallet, shop, 2_500, "pay-1", partner_id="metro")
        assert payment.seq > top_up.seq
        assert await ledger.balance(wallet) == 7_500
        assert await ledger.balance(shop) == 2_500
        assert await ledger.get_transfer(payment.id) == payment

        stmt = sa.update(entry_t).where(entry_t.c.transfer_id == payment.id).values(amount=1)
        with pytest.raises(sa.exc.DBAPIError, match="immutable"):
            async with engine.begin() as conn:
                await conn.execute(stmt)
        stmt = sa.update(transfer_t).where(transfer_t.c.id == payment.id).values(amount=1)
        with pytest.raises(sa.exc.DBAPIError, match="immutable"):
            async with engine.begin() as conn:
                await conn.execute(stmt)
        assert await ledger.get_transfer(payment.id) == payment
    finally:
        await engine.dispose()


async def test_sqlite_ledger_works_after_upgrade(tmp_path: Path) -> None:
    url, _ = _sqlite_urls(tmp_path / "fresh.db")
    await upgrade_head_async(url)
    await _ledger_round_trip(url)


@pytest.mark.postgres
async def test_postgres_ledger_works_after_upgrade(pg_url: str) -> None:
    await upgrade_head_async(pg_url)
    await _ledger_round_trip(pg_url)


# ----------------------------------------------------------------------------- ticket indexes
# Migration 0015 trimmed the ticket's indexes for the intake; the queries that need
# one must still find it, and the partial ones must exist as partial on both databases.

PARTIAL_TICKET_INDEXES = {
    "ix_ticket_lead_department": "lead_department",
    "ix_ticket_merged_into": "merged_into",
    "ix_ticket_feedback_due_at": "feedback_due_at",
}

INDEXED_QUERIES = {
    "SELECT number FROM ticket WHERE merged_into = '2026112400001'": "ix_ticket_merged_into",
    "SELECT number FROM ticket WHERE lead_department IN ('a', 'b')": "ix_ticket_lead_department",
    "SELECT number FROM ticket WHERE feedback_due_at < '2026-11-24'": "ix_ticket_feedback_due_at",
    # the deadline watcher and the overdue filter: a phase's statuses, then the due time
    "SELECT number FROM ticket WHERE status IN ('new', 'returned') "
    "AND dispatch_due_at < '2026-11-24' AND dispatch_breached_at IS NULL": (
        "ix_ticket_status_created"
    ),
    # the unique (ticket_number, seq)
    "SELECT seq FROM ticket_event WHERE ticket_number = '1' ORDER BY seq": (
        "sqlite_autoindex_ticket_event_1"
    ),
    "SELECT number FROM ticket WHERE kind = 'praise' ORDER BY created_at DESC LIMIT 50": (
        "ix_ticket_created_at"
    ),
}


def _index_sql(conn: Connection) -> dict[str, str]:
    rows = conn.exec_driver_sql(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'ticket'"
    )
    return {name: sql for name, sql in rows if sql}


def test_sqlite_ticket_queries_use_an_index_after_the_trim(tmp_path: Path) -> None:
    url, sync_url = _sqlite_urls(tmp_path / "hotline.db")
    upgrade_head(url)
    indexes = _inspect_sqlite(sync_url, _index_sql)
    for name, col in PARTIAL_TICKET_INDEXES.items():
        assert indexes[name].endswith(f"WHERE {col} IS NOT NULL"), indexes[name]
    for gone in ("ix_ticket_status", "ix_ticket_kind", "ix_ticket_channel"):
        assert gone not in indexes
    engine = sa.create_engine(sync_url)
    with engine.connect() as conn:
        for sql, index in INDEXED_QUERIES.items():
            plan = " ".join(r[-1] for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
            assert f"INDEX {index}" in plan, (sql, plan)
            assert "USE TEMP B-TREE" not in plan, (sql, plan)
    engine.dispose()


def _pg_partial_ticket_indexes(conn: Connection) -> dict[str, str]:
    rows = conn.exec_driver_sql(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'ticket'"
    )
    return {name: d for name, d in rows if name in PARTIAL_TICKET_INDEXES}


def _pg_invalid_indexes(conn: Connection) -> list[str]:
    rows = conn.exec_driver_sql(
        "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE NOT i.indisvalid"
    )
    return [name for (name,) in rows]


@pytest.mark.postgres
async def test_postgres_ticket_indexes_are_partial_and_the_step_runs_again(pg_url: str) -> None:
    await upgrade_head_async(pg_url)
    # as after a failure between the concurrent builds and the version stamp: every
    # step must run again, leaving the same schema
    await asyncio.to_thread(command.stamp, alembic_config(pg_url), "0014")
    await upgrade_head_async(pg_url)
    found = await _inspect_async(pg_url, _pg_partial_ticket_indexes)
    assert set(found) == set(PARTIAL_TICKET_INDEXES)
    for name, col in PARTIAL_TICKET_INDEXES.items():
        assert found[name].endswith(f"WHERE ({col} IS NOT NULL)"), found[name]
    assert await _inspect_async(pg_url, _pg_invalid_indexes) == []
    assert await _inspect_async(pg_url, _version_rows) == [HEAD]
    assert await _inspect_async(pg_url, _diff) == []


def test_offline_postgres_sql_builds_ticket_indexes_outside_a_transaction(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = alembic_config("postgresql+asyncpg://hotline@db.invalid:5432/hotline")
    command.upgrade(cfg, "0014:0015", sql=True)
    out = capsys.readouterr().out
    build = out.index("CREATE INDEX CONCURRENTLY ix_ticket_lead_department_set")
    assert out.rfind("COMMIT;", 0, build) > out.rfind("BEGIN;", 0, build)  # not in a txn
    assert "DROP INDEX CONCURRENTLY IF EXISTS ix_ticket_status;" in out
