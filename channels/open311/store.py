"""Reading and writing Open311's rows: the side row of a ticket, replays, the request feed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from channels.open311.const import CHANNEL, PRINCIPAL_PREFIX
from channels.open311.forms import RequestQuery
from channels.open311.models import request_t
from ticketing.handlers import ticket_t
from ticketing.models import IdempotencyRecord
from ticketing.store import Database

idem_t = IdempotencyRecord.__table__  # type: ignore[attr-defined]


class SideRowWriter:
    """Writes side rows in groups: one transaction for whatever queued up meanwhile.

    One write transaction per report would make the single SQLite writer the limit;
    requests instead wait for the group their row went out in. Inserts are
    idempotent, so a replay after a crash between ticket and side row fills the gap.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._queue: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def save(self, row: dict[str, Any]) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((row, fut))
        if self._task is None:
            # its own task: a request that goes away must not take others' rows with it
            self._task = asyncio.create_task(self._drain(), name="open311-side-rows")
        await asyncio.shield(fut)

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    async with self.db.write() as conn:
                        await conn.execute(self.db.insert_ignore(request_t, [r for r, _ in batch]))
                except Exception as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                else:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_result(None)
        finally:
            self._task = None
            for _, fut in self._queue:  # cancelled mid-way: nobody waits forever
                if not fut.done():
                    fut.set_exception(RuntimeError("side-row writer stopped"))
            self._queue = []


@dataclass(frozen=True)
class Earlier:
    """A request already answered under one of the keys asked about."""

    key: str
    request_hash: str
    number: str
    created_at: datetime


async def earlier_answers(db: Database, principal: str, keys: Sequence[str]) -> list[Earlier]:
    async with db.read() as conn:
        rows = (
            await conn.execute(
                sa.select(
                    idem_t.c.key, idem_t.c.request_hash, idem_t.c.body, idem_t.c.created_at
                ).where(idem_t.c.principal == principal, idem_t.c.key.in_(list(keys)))
            )
        ).all()
    out = []
    for r in rows:
        number = _number_of(r.body)
        if number:
            out.append(Earlier(r.key, r.request_hash, number, r.created_at))
    return out


def _number_of(body: str) -> str | None:
    try:
        view = json.loads(body)
    except ValueError:
        return None
    number = view.get("number") if isinstance(view, dict) else None
    return number if isinstance(number, str) else None


async def number_for_token(db: Database, token: str) -> str | None:
    """The request created with Idempotency-Key `token` by any Open311 client."""
    async with db.read() as conn:
        rows = (
            await conn.execute(
                sa.select(idem_t.c.body).where(
                    idem_t.c.key == token, idem_t.c.principal.startswith(PRINCIPAL_PREFIX)
                )
            )
        ).all()
    numbers = {n for n in (_number_of(r.body) for r in rows) if n}
    return numbers.pop() if len(numbers) == 1 else None


_COLUMNS = (
    ticket_t.c.number,
    ticket_t.c.status,
    ticket_t.c.category_code,
    ticket_t.c.description,
    ticket_t.c.lead_department,
    ticket_t.c.merged_into,
    ticket_t.c.address,
    ticket_t.c.lat,
    ticket_t.c.lon,
    ticket_t.c.created_at,
    ticket_t.c.updated_at,
    ticket_t.c.closed_at,
    ticket_t.c.feedback_due_at,
    request_t.c.service_code,
    request_t.c.description.label("request_description"),
    request_t.c.address_id,
    request_t.c.media_url,
    request_t.c.ticket_number.label("has_request_row"),
)


async def find_requests(db: Database, q: RequestQuery) -> list[Any]:
    """Tickets filed through Open311, newest first. Tickets from other channels stay
    out: what a caller told an agent on the phone is not for a public feed."""
    c = ticket_t.c
    stmt = (
        sa.select(*_COLUMNS)
        .select_from(ticket_t.outerjoin(request_t, request_t.c.ticket_number == c.number))
        .where(c.channel == CHANNEL)
    )
    if q.ids:
        stmt = stmt.where(c.number.in_(list(q.ids)))
    else:
        if q.start is not None:
            stmt = stmt.where(c.created_at >= q.start)
        if q.end is not None:
            stmt = stmt.where(c.created_at <= q.end)
        if q.service_codes:
            stmt = stmt.where(c.category_code.in_(list(q.service_codes)))
        if q.statuses:
            stmt = stmt.where(c.status.in_([s.value for s in q.statuses]))
    stmt = stmt.order_by(c.created_at.desc(), c.id.desc()).limit(q.limit).offset(q.offset)
    async with db.read() as conn:
        return list((await conn.execute(stmt)).all())
