"""Helpers for the ticket domain tests: real handlers over a real store, a hand-set clock.

The fixtures built from them live in conftest.py. Every ticket move goes through the
same pydantic schema the HTTP layer uses, so payloads here are exactly what the API
would hand the handlers.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from pydantic import BaseModel

from hotline.pii import AesGcmCipher
from ticketing import handlers as h
from ticketing import schemas
from ticketing.bus import InProcessBus
from ticketing.catalog import Catalog, seed_from_taxonomy
from ticketing.events import DomainEvent
from ticketing.intake import Intake, NewTicket
from ticketing.lifecycle import Action, Role
from ticketing.ports import Principal
from ticketing.store import Database
from ticketing.taxonomy import load_taxonomy
from ticketing.workdays import WorkCalendar

PII_KEY = base64.b64decode("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")  # tests only
SHANGHAI = ZoneInfo("Asia/Shanghai")
# Monday 20 April 2026, 10:00 in Shanghai: a plain working day, the Labour Day
# holiday (1-5 May, make-up working day Saturday 9 May) ten days ahead.
T0 = datetime(2026, 4, 20, 2, 0, tzinfo=UTC)

AGENT = Principal("agent", Role.AGENT)
AGENT2 = Principal("agent2", Role.AGENT)
SUPERVISOR = Principal("supervisor", Role.SUPERVISOR)
ADMIN = Principal("admin", Role.ADMIN)


def dept(code: str, username: str | None = None) -> Principal:
    return Principal(username or f"{code}-user", Role.DEPARTMENT, code)


URBAN = dept("urban-mgmt")
WATER = dept("water")
HOUSING = dept("housing")
TRANSPORT = dept("transport")

# the same schema per action as ticketing/routes.py
SCHEMAS: dict[Action, type[BaseModel]] = {
    Action.ANSWER: schemas.AnswerIn,
    Action.DISPATCH: schemas.DispatchIn,
    Action.SIGN: schemas.NoteIn,
    Action.RETURN: schemas.ReasonIn,
    Action.REQUEST_EXTENSION: schemas.ExtendIn,
    Action.GRANT_EXTENSION: schemas.GrantExtensionIn,
    Action.REFUSE_EXTENSION: schemas.NoteIn,
    Action.REPLY: schemas.ReplyIn,
    Action.FOLLOW_UP: schemas.FollowUpIn,
    Action.CLOSE: schemas.ReasonIn,
    Action.REOPEN: schemas.ReasonIn,
    Action.MERGE: schemas.MergeIn,
    Action.SUPERVISE: schemas.SuperviseIn,
}


class Clock:
    """Deps.clock that only moves when a test says so."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now

    def set(self, now: datetime) -> datetime:
        self.now = now
        return now


@dataclass
class World:
    deps: h.Deps
    clock: Clock
    intake: Intake
    events: list[DomainEvent]

    @property
    def db(self) -> Database:
        return self.deps.db

    async def create(self, by: Principal = AGENT, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "complaint",
            "title": "路灯不亮",
            "description": "幸福小区南门路灯不亮",
            "channel": "phone",
            "category": "urban.street-lights",
            **fields,
        }
        return await self.intake.create(NewTicket(principal=by, **body))

    async def move(
        self, number: str, action: Action | str, who: Principal, **body: Any
    ) -> dict[str, Any]:
        act = Action(action)
        payload = SCHEMAS[act].model_validate(body).model_dump(mode="json", exclude_none=True)
        return await h.move_ticket(self.deps, h.MoveTicket(number, act, who, payload))

    async def row(self, number: str) -> Any:
        async with self.db.read() as conn:
            return (
                await conn.execute(sa.select(h.ticket_t).where(h.ticket_t.c.number == number))
            ).one()

    async def trail(self, number: str) -> list[Any]:
        async with self.db.read() as conn:
            return list(
                await conn.execute(
                    sa.select(h.event_t)
                    .where(h.event_t.c.ticket_number == number)
                    .order_by(h.event_t.c.seq)
                )
            )

    async def work_item(self, number: str) -> Any | None:
        from ticketing import workqueue

        wi = workqueue.work_item
        async with self.db.read() as conn:
            return (
                await conn.execute(sa.select(wi).where(wi.c.kind == "ticket", wi.c.ref == number))
            ).first()


async def make_deps(url: str, clock: Clock) -> h.Deps:
    db = Database(url)
    await db.create_all()
    catalog = Catalog()
    await seed_from_taxonomy(db, load_taxonomy())
    await catalog.reload(db)
    return h.Deps(
        db=db,
        calendar=WorkCalendar(),
        tz=SHANGHAI,
        bus=InProcessBus(),
        cipher=AesGcmCipher([PII_KEY]),
        catalog=catalog,
        clock=clock,
    )


async def open_world(url: str) -> AsyncIterator[World]:
    clock = Clock()
    deps = await make_deps(url, clock)
    seen: list[DomainEvent] = []
    deps.observers.append(seen.append)
    intake = Intake(deps)
    await intake.start()
    try:
        yield World(deps, clock, intake, seen)
    finally:
        await intake.stop()
        await deps.db.dispose()
