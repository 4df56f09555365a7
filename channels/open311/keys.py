"""Open311 API keys: issued by an operator (`main.py open311-key`), checked on POST.

A key is 32 random bytes shown once; the table keeps its SHA-256, so lookups are by
hash and a copy of the database grants nothing. Keys are revoked, never deleted, so
the tickets a key filed keep naming who sent them.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from channels.open311.const import KEY_NAME_MAX
from channels.open311.models import api_key_t
from ticketing.models import utcnow
from ticketing.store import Database

NAME_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{KEY_NAME_MAX - 1}}}")


class ApiKeyError(Exception):
    """A key command the registry refuses (bad or duplicate name, unknown key)."""


@dataclass(frozen=True)
class KeyInfo:
    name: str
    created_at: datetime
    revoked_at: datetime | None


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


async def issue_key(db: Database, name: str) -> str:
    """A new key for the client `name`; the only time the key itself is seen."""
    if not NAME_RE.fullmatch(name):
        raise ApiKeyError(
            f"a key name is 1-{KEY_NAME_MAX} ASCII letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    key = secrets.token_urlsafe(32)
    async with db.write() as conn:
        taken = (
            await conn.execute(sa.select(api_key_t.c.id).where(api_key_t.c.name == name))
        ).first()
        if taken:
            raise ApiKeyError(f"a key named {name!r} exists already (revoke it or pick a new name)")
        await conn.execute(
            sa.insert(api_key_t).values(name=name, key_hash=key_hash(key), created_at=utcnow())
        )
    return key


async def revoke_key(db: Database, name: str) -> None:
    async with db.write() as conn:
        result = await conn.execute(
            sa.update(api_key_t)
            .where(api_key_t.c.name == name, api_key_t.c.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
    if not result.rowcount:
        raise ApiKeyError(f"no active key named {name!r}")


async def list_keys(db: Database) -> list[KeyInfo]:
    async with db.read() as conn:
        rows = (await conn.execute(sa.select(api_key_t).order_by(api_key_t.c.name))).all()
    return [KeyInfo(r.name, r.created_at, r.revoked_at) for r in rows]


async def key_owner(db: Database, key: str) -> str | None:
    """The name of the active key `key`, or None."""
    if not key or len(key) > 200:
        return None
    async with db.read() as conn:
        row = (
            await conn.execute(
                sa.select(api_key_t.c.name).where(
                    api_key_t.c.key_hash == key_hash(key), api_key_t.c.revoked_at.is_(None)
                )
            )
        ).first()
    return row.name if row else None
