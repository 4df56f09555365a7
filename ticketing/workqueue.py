"""The work queue: one list of "something a person must act on now".

Tickets register their item here whenever their status changes; conversations and
calls will register their own kinds. Claiming is safe under concurrency: on
PostgreSQL `FOR UPDATE SKIP LOCKED`, on SQLite one conditional UPDATE (SQLite runs
one writer at a time, so the sub-select and the update are atomic together).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from ticketing.lifecycle import Role, Status
from ticketing.models import WorkItem
from ticketing.ports import Principal
from ticketing.store import Database

AGENTS = "agents"
SUPERVISORS = "supervisors"
TICKET = "ticket"
CONVERSATION = "conversation"
# a caller waiting in the phone queue (shown, held by the ACD, which offers it itself)
CALL = "call"
# a caller we promised to ring back (claimed and worked by an agent)
CALLBACK = "callback"

work_item = WorkItem.__table__  # type: ignore[attr-defined]


def department_audience(code: str) -> str:
    return f"dept:{code}"


@dataclass(frozen=True)
class Need:
    audience: str
    action: str
    due_at: datetime | None


def ticket_need(
    status: Status,
    lead: str | None,
    dispatch_due: datetime | None,
    feedback_due: datetime | None,
) -> Need | None:
    """Who must act on a ticket in this status, and by when; None once nothing is due."""
    if status in (Status.NEW, Status.RETURNED, Status.REOPENED):
        return Need(AGENTS, "dispatch", dispatch_due)
    if status is Status.DISPATCHED and lead:
        return Need(department_audience(lead), "sign", feedback_due)
    if status is Status.ACCEPTED and lead:
        return Need(department_audience(lead), "reply", feedback_due)
    if status is Status.EXTENSION_REQUESTED:
        return Need(SUPERVISORS, "decide_extension", feedback_due)
    if status is Status.REPLIED:
        return Need(AGENTS, "follow_up", None)
    return None


def audiences_for(principal: Principal) -> list[str]:
    """Which queue items a person sees: agents the floor's, a department its own."""
    if principal.role is Role.AGENT:
        return [AGENTS]
    if principal.role is Role.SUPERVISOR:
        return [AGENTS, SUPERVISORS]
    if principal.role is Role.DEPARTMENT and principal.department_code:
        return [department_audience(principal.department_code)]
    return []


def ticket_item_row(number: str, need: Need, priority: int, now: datetime) -> dict[str, Any]:
    return {
        "kind": TICKET,
        "ref": number,
        "audience": need.audience,
        "action": need.action,
        "priority": priority,
        "due_at": need.due_at,
        "claimed_by": None,
        "claim_expires_at": None,
        "created_at": now,
    }


async def sync_ticket_item(
    db: Database,
    conn: AsyncConnection,
    number: str,
    need: Need | None,
    priority: int,
    now: datetime,
) -> None:
    """Make the ticket's queue item match its state (inside the move's transaction)."""
    if need is None:
        await conn.execute(
            sa.delete(work_item).where(work_item.c.kind == TICKET, work_item.c.ref == number)
        )
        return
    row = ticket_item_row(number, need, priority, now)
    await conn.execute(
        db.upsert(
            work_item,
            [row],
            ["kind", "ref"],
            ["audience", "action", "priority", "due_at", "claimed_by", "claim_expires_at"],
            # a claim survives changes that leave the same person the same job
            keep_if_same=(["audience", "action"], ["claimed_by", "claim_expires_at"]),
        )
    )


def conversation_item_row(
    conversation_id: int, priority: int, due_at: datetime | None, now: datetime
) -> dict[str, Any]:
    """A written conversation waiting for an agent (the channels package keeps it in
    step: present while the resident's last message is unanswered)."""
    return {
        "kind": CONVERSATION,
        "ref": str(conversation_id),
        "audience": AGENTS,
        "action": "answer",
        "priority": priority,
        "due_at": due_at,
        "claimed_by": None,
        "claim_expires_at": None,
        "created_at": now,
    }


def upsert_items(db: Database) -> sa.Insert:
    """Insert-or-refresh of queue items (any kind), to execute with a list of rows
    (`conversation_item_row`, ...): one cached statement however many rows. A claim
    survives a refresh that leaves the same person the same job."""
    ins: Any = (sqlite.insert if db.is_sqlite else postgresql.insert)(work_item)
    same = sa.and_(
        work_item.c.audience == ins.excluded.audience, work_item.c.action == ins.excluded.action
    )
    set_: dict[str, Any] = {
        c: ins.excluded[c] for c in ("audience", "action", "priority", "due_at")
    }
    for kept in ("claimed_by", "claim_expires_at"):
        set_[kept] = sa.case((same, work_item.c[kept]), else_=ins.excluded[kept])
    return ins.on_conflict_do_update(index_elements=["kind", "ref"], set_=set_)


def remove_items(kind: str, refs: list[str]) -> sa.Delete:
    return sa.delete(work_item).where(work_item.c.kind == kind, work_item.c.ref.in_(refs))


def _order() -> list[Any]:
    # NULL deadlines last on both backends
    return [
        work_item.c.priority,
        sa.case((work_item.c.due_at.is_(None), 1), else_=0),
        work_item.c.due_at,
        work_item.c.id,
    ]


# built once: constructing the statement cost more than running it
_LIST_ITEMS = (
    sa.select(work_item)
    .where(work_item.c.audience.in_(sa.bindparam("audiences", expanding=True)))
    .order_by(*_order())
    .limit(sa.bindparam("limit", type_=sa.Integer))
)


async def list_items(
    conn: AsyncConnection, audiences: list[str], *, limit: int = 100
) -> list[dict[str, Any]]:
    if not audiences:
        return []
    rows = await conn.execute(_LIST_ITEMS, {"audiences": list(audiences), "limit": limit})
    return [dict(r._mapping) for r in rows]


async def claim_next(
    db: Database,
    conn: AsyncConnection,
    audiences: list[str],
    claimer: str,
    now: datetime,
    ttl_s: int,
    *,
    exclude_kinds: frozenset[str] = frozenset(),
) -> dict[str, Any] | None:
    """Take the most urgent unclaimed (or lapsed) item; never the same one twice."""
    if not audiences:
        return None
    free = sa.or_(work_item.c.claimed_by.is_(None), work_item.c.claim_expires_at < now)
    pick = (
        sa.select(work_item.c.id)
        .where(work_item.c.audience.in_(audiences), free)
        .order_by(*_order())
        .limit(1)
    )
    if exclude_kinds:
        pick = pick.where(work_item.c.kind.not_in(sorted(exclude_kinds)))
    if not db.is_sqlite:
        pick = pick.with_for_update(skip_locked=True)
        picked = (await conn.execute(pick)).scalar_one_or_none()
        if picked is None:
            return None
        target: Any = work_item.c.id == picked
    else:
        target = work_item.c.id == pick.scalar_subquery()
    stmt = (
        sa.update(work_item)
        .where(target, free)
        .values(claimed_by=claimer, claim_expires_at=now + timedelta(seconds=ttl_s))
        .returning(*work_item.c)
    )
    row = (await conn.execute(stmt)).first()
    return dict(row._mapping) if row else None


async def held_by(conn: AsyncConnection, kind: str, claimer: str, now: datetime) -> int:
    """How many items of a kind this person holds now (claimed, claim not lapsed)."""
    q = sa.select(sa.func.count()).where(
        work_item.c.kind == kind,
        work_item.c.claimed_by == claimer,
        work_item.c.claim_expires_at >= now,
    )
    return int((await conn.execute(q)).scalar_one())
