"""Alembic environment for the hotline schema.

Configured by code only (`hotline.migrate.alembic_config`): the database URL comes
from the `sqlalchemy.url` main option that our code sets, never from an ini file.

Online migrations run on an SQLAlchemy async engine through
`connection.run_sync(do_run_migrations)` inside `asyncio.run`. That needs a thread
without a running event loop: async callers must go through
`hotline.migrate.upgrade_head_async`, which runs Alembic in a worker thread.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import sqlalchemy as sa
from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString

# Importing the model modules registers their tables on SQLModel.metadata.
import citizen_card.dbtypes
import ticketing.models
from hotline.schema import load_models

load_models()
config = context.config
target_metadata = SQLModel.metadata


def _database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError(
            "sqlalchemy.url is not set; build the Alembic config with "
            "hotline.migrate.alembic_config(database_url)"
        )
    return url


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Render our column types so generated revisions import what they use."""
    if type_ != "type":
        return False
    if isinstance(obj, ticketing.models.UTCDateTime):
        autogen_context.imports.add("import ticketing.models")
        return "ticketing.models.UTCDateTime()"
    if isinstance(obj, citizen_card.dbtypes.UTCDateTime):
        autogen_context.imports.add("import citizen_card.dbtypes")
        return "citizen_card.dbtypes.UTCDateTime()"
    if isinstance(obj, AutoString):
        # sqlmodel's AutoString is a plain VARCHAR; keep revisions free of sqlmodel.
        return f"sa.String(length={obj.length!r})" if obj.length is not None else "sa.String()"
    return False


def _configure_kwargs(dialect_name: str) -> dict[str, Any]:
    return {
        "target_metadata": target_metadata,
        "compare_type": True,
        "render_as_batch": dialect_name == "sqlite",
        "render_item": render_item,
    }


def run_migrations_offline() -> None:
    """Emit SQL to stdout (`alembic upgrade --sql`) without connecting."""
    url = _database_url()
    context.configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **_configure_kwargs(make_url(url).get_backend_name()),
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, **_configure_kwargs(connection.dialect.name))
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations(url: str) -> None:
    engine = create_async_engine(url, poolclass=sa.pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    # A caller may lend us an open sync connection (e.g. inside run_sync).
    given = config.attributes.get("connection")
    if given is not None:
        do_run_migrations(given)
        return

    url = _database_url()
    if not make_url(url).get_dialect().is_async:
        # A plain sync URL (sqlite:///..., postgresql+psycopg://...) also works.
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as connection:
                do_run_migrations(connection)
        finally:
            engine.dispose()
        return

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "Alembic env.py was run inside a running event loop; "
            "call hotline.migrate.upgrade_head_async() instead of upgrade_head()"
        )
    asyncio.run(run_async_migrations(url))


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
