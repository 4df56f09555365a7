"""Schema migrations (Alembic) shipped inside the `hotline` package.

No alembic.ini is needed: `alembic_config` points Alembic at the migrations next to
this file and hands it the database URL. Async code calls `upgrade_head_async`,
which runs Alembic (whose env.py drives its own event loop) in a worker thread.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import pool
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    """An Alembic config for `database_url`, built in code (no ini file on disk)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Config values go through ConfigParser interpolation: a '%' (URL-encoded
    # password) must be doubled or it breaks get_main_option in env.py.
    cfg.set_main_option("sqlalchemy.url", _url_text(database_url).replace("%", "%%"))
    return cfg


def _url_text(database_url: str | URL) -> str:
    if isinstance(database_url, URL):
        return database_url.render_as_string(hide_password=False)
    return database_url


def _sqlite_file(database_url: str | URL) -> Path | None:
    """The database file of an SQLite URL; None for other backends or memory."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database
    if not database or database == ":memory:":
        return None
    if database.startswith("file:"):  # URI form (?uri=true)
        database = database[len("file:") :].split("?", 1)[0]
        if not database or database == ":memory:" or url.query.get("mode") == "memory":
            return None
    return Path(database)


def _ensure_sqlite_dir(database_url: str | URL) -> None:
    path = _sqlite_file(database_url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


def upgrade_head(database_url: str) -> None:
    """Bring the schema to the newest revision (sync; not from an event loop's thread)."""
    _ensure_sqlite_dir(database_url)
    command.upgrade(alembic_config(database_url), "head")


async def upgrade_head_async(database_url: str) -> None:
    """`upgrade_head` in a worker thread, so it neither blocks nor nests the loop."""
    await asyncio.to_thread(upgrade_head, database_url)


def _head_revisions(database_url: str) -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config(database_url)).get_heads())


async def needs_migration(database_url: str) -> bool:
    """True when the database has no alembic_version table or is not at head."""
    heads = await asyncio.to_thread(_head_revisions, database_url)
    path = _sqlite_file(database_url)
    if path is not None and not await asyncio.to_thread(path.exists):
        return True  # don't create an empty database file just to look
    engine = create_async_engine(database_url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as conn:
            current = await conn.run_sync(
                lambda sync_conn: set(MigrationContext.configure(sync_conn).get_current_heads())
            )
    finally:
        await engine.dispose()
    return current != heads
