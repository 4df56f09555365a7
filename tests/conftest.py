"""Shared fixtures.

PostgreSQL: `HOTLINE_TEST_PG_URL` names a database to use (CI creates a unique one
per run). Without it we try the local server (127.0.0.1:5432, trust auth) and make
a throw-away database ourselves. If neither works the PostgreSQL tests are skipped
locally, but under CI (`CI=true`) they fail: a missing database must not look green.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

ADMIN_DSN = os.environ.get("HOTLINE_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _create_db() -> str:
    import asyncpg

    name = f"hotline_t_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(ADMIN_DSN, timeout=5)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = ADMIN_DSN.rsplit("/", 1)[0]
    return f"{base}/{name}".replace("postgresql://", "postgresql+asyncpg://", 1)


async def _drop_db(url: str) -> None:
    import asyncpg

    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(ADMIN_DSN, timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A PostgreSQL database for this test session (SQLAlchemy asyncpg URL)."""
    given = os.environ.get("HOTLINE_TEST_PG_URL")
    if given:
        yield given
        return
    try:
        url = asyncio.run(_create_db())
    except Exception as exc:  # pragma: no cover - depends on the machine
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL unavailable under CI: {exc}")
        pytest.skip(f"PostgreSQL unavailable locally: {exc}")
    yield url
    asyncio.run(_drop_db(url))


@pytest.fixture
async def pg_url(pg_server_url: str) -> AsyncIterator[str]:
    """A clean schema per test: drop and recreate `public` in the session database."""
    import asyncpg

    conn = await asyncpg.connect(_asyncpg_dsn(pg_server_url))
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    finally:
        await conn.close()
    yield pg_server_url


@pytest.fixture
def pg_dsn(pg_url: str) -> str:
    """The same database as a plain asyncpg DSN."""
    return _asyncpg_dsn(pg_url)
