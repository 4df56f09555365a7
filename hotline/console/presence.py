"""Agents' states as set in the console, the ones the ACD uses too.

Until the phone line (ACD) lands, this table is the record of who is available,
on a break, in wrap-up or logged out; the supervisor wall counts it. The ACD may
write its own states here (ringing, on_call) under the same names.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from hotline.console.models import AgentPresence
from ticketing.store import Database

presence_t = AgentPresence.__table__  # type: ignore[attr-defined]

AGENT_STATES = ("available", "break", "wrap_up", "logged_out")


async def set_state(db: Database, username: str, state: str, now: datetime) -> dict[str, Any]:
    row = {"username": username, "state": state, "since": now}
    async with db.write() as conn:
        await conn.execute(db.upsert(presence_t, [row], ["username"], ["state", "since"]))
    return {"username": username, "state": state, "since": _iso(now)}


async def get_state(db: Database, username: str) -> dict[str, Any]:
    async with db.read() as conn:
        row = (
            await conn.execute(sa.select(presence_t).where(presence_t.c.username == username))
        ).first()
    if row is None:
        return {"username": username, "state": "logged_out", "since": None}
    return {"username": row.username, "state": row.state, "since": _iso(row.since)}


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")
