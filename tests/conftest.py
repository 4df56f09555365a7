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


async def _as_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(ADMIN_DSN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _create_db() -> str:
    name = f"hotline_t_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    await _as_admin(f'CREATE DATABASE "{name}"')
    base = ADMIN_DSN.rsplit("/", 1)[0]
    return f"{base}/{name}".replace("postgresql://", "postgresql+asyncpg://", 1)


async def _drop_db(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    await _as_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
async def capped_pg_url(pg_url: str) -> AsyncIterator[str]:
    """The test database as a role PostgreSQL lets open no connection: every connect is
    refused by the server itself with SQLSTATE 53300 (too_many_connections), as when
    it is out of connection slots ("sorry, too many clients already")."""
    role = f"capped_{uuid.uuid4().hex[:10]}"
    await _as_admin(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 0')
    from sqlalchemy.engine import make_url

    yield make_url(pg_url).set(username=role, password=None).render_as_string(hide_password=False)
    await _as_admin(f'DROP ROLE IF EXISTS "{role}"')


@pytest.fixture
def pg_dsn(pg_url: str) -> str:
    """The same database as a plain asyncpg DSN."""
    return _asyncpg_dsn(pg_url)


# ---------------------------------------------------------------- the service under test

PII_KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # 32 bytes, tests only
PASSWORD = "test-password-1"
STAFF = {
    "agent": ("agent", None),
    "agent2": ("agent", None),
    "supervisor": ("supervisor", None),
    "admin": ("admin", None),
    "urban": ("department", "urban-mgmt"),
    "water": ("department", "water"),
    "transport": ("department", "transport"),
}


def make_settings(tmp_path, database_url: str, **overrides):  # type: ignore[no-untyped-def]
    from hotline.settings import load_settings

    values = {
        "database_url": database_url,
        "pii_keys": PII_KEY,
        "attachment_dir": tmp_path / "attachments",
        "holiday_override_file": tmp_path / "no-holidays.yaml",
        "card_keyring_file": tmp_path / "citycard-keyring.json",
        "card_service_key_file": tmp_path / "citycard-service.pem",
        "esl_host": "",  # no FreeSWITCH link unless a test brings its simulator
        "recording_dir": tmp_path / "recordings",
        "voicemail_dir": tmp_path / "voicemail",
        # a full collection of the whole test process at every app start costs seconds
        # over a run; tests/hotline/test_gc_tuning.py turns it on
        "gc_freeze": False,
        **overrides,
    }
    return load_settings(**values)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path) -> str:  # type: ignore[no-untyped-def]
    """Runs the test once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/test.db"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def sqlite_url(tmp_path) -> str:  # type: ignore[no-untyped-def]
    return f"sqlite+aiosqlite:///{tmp_path}/test.db"


class Api:
    """A signed-in test client: `await api.post("/api/v1/tickets", {...}, as_="agent")`."""

    def __init__(self, client, app) -> None:  # type: ignore[no-untyped-def]
        self.client = client
        self.app = app
        self.tokens: dict[str, str] = {}

    async def token(self, who: str) -> str:
        if who not in self.tokens:
            r = await self.client.post(
                "/api/v1/auth/login", json={"username": who, "password": PASSWORD}
            )
            assert r.status == 200, await r.text()
            self.tokens[who] = (await r.json())["token"]
        return self.tokens[who]

    async def headers(self, who: str | None, extra: dict | None = None) -> dict:
        h = dict(extra or {})
        if who:
            h["Authorization"] = f"Bearer {await self.token(who)}"
        return h

    async def get(self, path: str, as_: str | None = "agent", **kw):  # type: ignore[no-untyped-def]
        return await self.client.get(
            path, headers=await self.headers(as_, kw.pop("headers", None)), **kw
        )

    async def post(self, path: str, json=None, as_: str | None = "agent", **kw):  # type: ignore[no-untyped-def]
        return await self.client.post(
            path, json=json, headers=await self.headers(as_, kw.pop("headers", None)), **kw
        )

    async def patch(self, path: str, json=None, as_: str | None = "admin", **kw):  # type: ignore[no-untyped-def]
        return await self.client.patch(
            path, json=json, headers=await self.headers(as_, kw.pop("headers", None)), **kw
        )

    async def new_ticket(self, as_: str = "agent", **fields) -> dict:  # type: ignore[no-untyped-def]
        body = {
            "kind": "complaint",
            "title": "路灯不亮",
            "description": "幸福小区南门路灯不亮",
            "channel": "phone",
            "category": "urban.street-lights",
            **fields,
        }
        r = await self.post("/api/v1/tickets", body, as_=as_)
        assert r.status == 201, await r.text()
        return await r.json()

    async def move(
        self,
        number: str,
        action: str,
        body: dict | None = None,
        as_: str = "agent",
        status: int = 200,
    ) -> dict:  # type: ignore[no-untyped-def]
        r = await self.post(f"/api/v1/tickets/{number}/{action}", body or {}, as_=as_)
        assert r.status == status, await r.text()
        return await r.json()


_HASH: list[str] = []


async def _seed(deps) -> None:  # type: ignore[no-untyped-def]
    """Taxonomy and staff; the argon2 hash is computed once per session (it is slow
    by design, and login still verifies it for real)."""
    from hotline.auth import create_user, hash_password
    from ticketing.catalog import seed_from_taxonomy
    from ticketing.lifecycle import Role
    from ticketing.taxonomy import load_taxonomy

    await seed_from_taxonomy(deps.db, load_taxonomy())
    await deps.catalog.reload(deps.db)
    if not _HASH:
        _HASH.append(await hash_password(PASSWORD))
    for name, (role, dept) in STAFF.items():
        await create_user(deps, name, PASSWORD, Role(role), dept, password_hash=_HASH[0])


@pytest.fixture
async def api(aiohttp_client, db_url, tmp_path):  # type: ignore[no-untyped-def]
    """The whole service on a fresh database (SQLite and PostgreSQL), seeded with staff."""
    from hotline.app import create_app
    from hotline.appkeys import DEPS
    from hotline.bootstrap import build_deps

    # tables straight from the models (fast); tests/hotline/test_migrations.py proves the
    # migrations build the same schema, and test_smoke_api runs the real migrate path
    deps = build_deps(make_settings(tmp_path, db_url))
    await deps.db.create_all()
    app = create_app(
        make_settings(tmp_path, db_url), deps=deps, migrate=False, watch_deadlines=False
    )
    client = await aiohttp_client(app)
    await _seed(app[DEPS])
    return Api(client, app)


@pytest.fixture
async def sqlite_api(aiohttp_client, sqlite_url, tmp_path):  # type: ignore[no-untyped-def]
    """The service on SQLite only, for tests about HTTP rather than storage."""
    from hotline.app import create_app
    from hotline.appkeys import DEPS
    from hotline.bootstrap import build_deps

    deps = build_deps(make_settings(tmp_path, sqlite_url))
    await deps.db.create_all()
    app = create_app(
        make_settings(tmp_path, sqlite_url), deps=deps, migrate=False, watch_deadlines=False
    )
    client = await aiohttp_client(app)
    await _seed(app[DEPS])
    return Api(client, app)
