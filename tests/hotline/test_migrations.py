"""Alembic migrations shipped in `hotline.migrations` match `SQLModel.metadata`."""

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

import ticketing.models  # noqa: F401  (registers the tables)
from hotline.migrate import (
    MIGRATIONS_DIR,
    alembic_config,
    needs_migration,
    upgrade_head,
    upgrade_head_async,
)

MODEL_TABLES = set(SQLModel.metadata.tables)


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
    heads = ScriptDirectory.from_config(alembic_config("sqlite+aiosqlite://")).get_heads()
    assert heads == ["0001"]


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
    assert _inspect_sqlite(sync_url, _version_rows) == ["0001"]


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
    assert versions == ["0001"]
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


@pytest.mark.postgres
async def test_postgres_upgrade_matches_models(pg_url: str) -> None:
    assert await needs_migration(pg_url) is True
    await upgrade_head_async(pg_url)
    await upgrade_head_async(pg_url)  # second run is a no-op
    assert await needs_migration(pg_url) is False
    assert await _inspect_async(pg_url, _table_names) == MODEL_TABLES | {"alembic_version"}
    assert await _inspect_async(pg_url, _version_rows) == ["0001"]
    assert await _inspect_async(pg_url, _diff) == []


@pytest.mark.postgres
async def test_postgres_downgrade_to_base(pg_url: str) -> None:
    await upgrade_head_async(pg_url)
    cfg = alembic_config(pg_url)
    # Alembic's async env.py drives its own loop: keep it off this one.
    await asyncio.to_thread(command.downgrade, cfg, "base")
    assert await _inspect_async(pg_url, _table_names) == {"alembic_version"}
    assert await needs_migration(pg_url) is True
