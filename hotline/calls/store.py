"""Call records, callbacks and agents' phones in the database.

Each function is one short transaction. The ACD writes a call's row when the call
arrives (before anybody is told it is queued) and at each step after, so a
crash loses at most the step in flight, never the fact that somebody called.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from hotline.calls.models import AgentProfile, Call, CallbackRequest, CallEvent
from ticketing import workqueue
from ticketing.handlers import Deps, TicketNotFound, append_trail_event, mask_phone
from ticketing.lifecycle import Role
from ticketing.models import Ticket
from ticketing.ports import Principal

call_t = Call.__table__  # type: ignore[attr-defined]
call_event_t = CallEvent.__table__  # type: ignore[attr-defined]
callback_t = CallbackRequest.__table__  # type: ignore[attr-defined]
profile_t = AgentProfile.__table__  # type: ignore[attr-defined]
ticket_t = Ticket.__table__  # type: ignore[attr-defined]
work_item = workqueue.work_item

OPEN_TICKET_STATES = (
    "new",
    "dispatched",
    "accepted",
    "returned",
    "extension_requested",
    "replied",
    "reopened",
)
ACD_CLAIM = "acd"  # waiting calls are shown in the work queue but held by the ACD


def masked(phone: str) -> str:
    return mask_phone(phone) if phone else "unknown"


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat().replace("+00:00", "Z") if dt else None


async def insert_call(
    deps: Deps,
    uuid: str,
    caller: str,
    priority: int,
    state: str,
    now: datetime,
    *,
    queue: str = "12345",
    work_due: datetime | None = None,
) -> None:
    """The call's row, its first trail entry and (while it waits) its work-queue item."""
    row = {
        "uuid": uuid,
        "caller_enc": deps.cipher.encrypt(caller) if caller else None,
        "caller_bidx": deps.cipher.blind_index(caller) if caller else None,
        "caller_masked": masked(caller),
        "queue": queue,
        "priority": priority,
        "state": state,
        "entered_at": now,
    }
    async with deps.db.write() as conn:
        exists = (await conn.execute(sa.select(call_t.c.id).where(call_t.c.uuid == uuid))).first()
        if exists is None:  # FreeSWITCH retries a socket connect: one call, one row
            await conn.execute(sa.insert(call_t), [row])
        await conn.execute(
            sa.insert(call_event_t),
            [{"call_uuid": uuid, "at": now, "kind": state, "actor": None, "data": {}}],
        )
        if state == "queued":
            await conn.execute(
                workqueue.upsert_items(deps.db),
                [
                    {
                        "kind": workqueue.CALL,
                        "ref": uuid,
                        "audience": workqueue.AGENTS,
                        "action": "answer",
                        "priority": priority,
                        "due_at": work_due,
                        "claimed_by": ACD_CLAIM,
                        "claim_expires_at": now + timedelta(days=1),
                        "created_at": now,
                    }
                ],
            )


async def update_call(
    deps: Deps,
    uuid: str,
    now: datetime,
    *,
    event: str | None = None,
    actor: str | None = None,
    data: dict[str, Any] | None = None,
    leave_queue: bool = False,
    **values: Any,
) -> None:
    async with deps.db.write() as conn:
        if values:
            await conn.execute(sa.update(call_t).where(call_t.c.uuid == uuid).values(**values))
        if event:
            await conn.execute(
                sa.insert(call_event_t),
                [{"call_uuid": uuid, "at": now, "kind": event, "actor": actor, "data": data or {}}],
            )
        if leave_queue:
            await conn.execute(
                sa.delete(work_item).where(
                    work_item.c.kind == workqueue.CALL, work_item.c.ref == uuid
                )
            )


async def get_call(deps: Deps, uuid: str) -> dict[str, Any] | None:
    async with deps.db.read() as conn:
        row = (await conn.execute(sa.select(call_t).where(call_t.c.uuid == uuid))).first()
        if row is None:
            return None
        events = (
            await conn.execute(
                sa.select(call_event_t)
                .where(call_event_t.c.call_uuid == uuid)
                .order_by(call_event_t.c.id)
            )
        ).all()
    return {
        **call_row_view(row),
        "events": [
            {"at": _iso(e.at), "kind": e.kind, "actor": e.actor, "data": e.data} for e in events
        ],
    }


def call_row_view(row: Any) -> dict[str, Any]:
    return {
        "uuid": row.uuid,
        "caller": row.caller_masked,
        "state": row.state,
        "priority": row.priority,
        "queue": row.queue,
        "agent": row.agent,
        "entered_at": _iso(row.entered_at),
        "answered_at": _iso(row.answered_at),
        "ended_at": _iso(row.ended_at),
        "wait_s": row.wait_s,
        "talk_s": row.talk_s,
        "hangup_cause": row.hangup_cause,
        "ticket": row.ticket_number,
        "recording": row.recording_path,
    }


async def reconcile_after_restart(deps: Deps, now: datetime) -> int:
    """Calls this process held when it stopped are gone with their sockets: close them
    and drop their queue items so nobody waits on a ghost."""
    live = ("queued", "ringing", "talking", "held", "transferring", "consulting", "conference")
    async with deps.db.write() as conn:
        res = await conn.execute(
            sa.update(call_t)
            .where(call_t.c.state.in_(live))
            .values(state="lost", ended_at=now, hangup_cause="SERVICE_RESTART")
        )
        await conn.execute(sa.delete(work_item).where(work_item.c.kind == workqueue.CALL))
    return int(res.rowcount or 0)


# ---------------------------------------------------------------- caller -> history


async def caller_history(deps: Deps, caller: str, limit: int = 10) -> dict[str, Any]:
    """Open tickets and earlier calls for this number (by blind index, never decrypting
    other people's data), plus the channels' contact and the citizen-card resident."""
    if not caller:
        return {"open_tickets": [], "previous_calls": 0, "contact": None, "resident": None}
    bidx = deps.cipher.blind_index(caller)
    async with deps.db.read() as conn:
        tickets = (
            await conn.execute(
                sa.select(ticket_t.c.number, ticket_t.c.title, ticket_t.c.status)
                .where(
                    ticket_t.c.contact_phone_bidx == bidx,
                    ticket_t.c.status.in_(OPEN_TICKET_STATES),
                )
                .order_by(ticket_t.c.created_at.desc())
                .limit(limit)
            )
        ).all()
        previous = (
            await conn.execute(
                sa.select(sa.func.count()).select_from(call_t).where(call_t.c.caller_bidx == bidx)
            )
        ).scalar_one()
        contact = await _contact(conn, bidx)
        resident = await _resident(conn, bidx)
    return {
        "open_tickets": [
            {"number": t.number, "title": t.title, "status": t.status} for t in tickets
        ],
        "previous_calls": max(0, int(previous) - 1),  # this call has its row already
        "contact": contact,
        "resident": resident,
    }


async def _contact(conn: Any, bidx: str) -> str | None:
    """The channels' phone contact, when the channels package keeps one."""
    try:
        from channels.models import ChannelContact
    except ImportError:  # pragma: no cover - channels not installed
        return None
    t = ChannelContact.__table__  # type: ignore[attr-defined]
    try:
        row = (
            await conn.execute(
                sa.select(t.c.id, t.c.resident_id).where(
                    t.c.channel == "phone", t.c.external_id == bidx
                )
            )
        ).first()
    except sa.exc.DBAPIError:  # table not migrated yet
        await conn.rollback()
        return None
    return f"contact:{row.id}" if row else None


async def _resident(conn: Any, bidx: str) -> str | None:
    """The citizen-card resident's public handle (never the name or ID number)."""
    from citizen_card.models import Resident

    t = Resident.__table__  # type: ignore[attr-defined]
    row = (await conn.execute(sa.select(t.c.handle).where(t.c.phone_bidx == bidx))).first()
    return row.handle if row else None


async def is_returning(deps: Deps, caller: str, now: datetime, within_h: float) -> bool:
    """Called before within the window, or has an open ticket: served ahead of first calls."""
    if not caller:
        return False
    bidx = deps.cipher.blind_index(caller)
    async with deps.db.read() as conn:
        recent = (
            await conn.execute(
                sa.select(call_t.c.id)
                .where(
                    call_t.c.caller_bidx == bidx,
                    call_t.c.entered_at >= now - timedelta(hours=within_h),
                )
                .limit(1)
            )
        ).first()
        if recent:
            return True
        open_ticket = (
            await conn.execute(
                sa.select(ticket_t.c.id)
                .where(
                    ticket_t.c.contact_phone_bidx == bidx,
                    ticket_t.c.status.in_(OPEN_TICKET_STATES),
                )
                .limit(1)
            )
        ).first()
    return open_ticket is not None


# ---------------------------------------------------------------- tickets


async def attach_ticket(deps: Deps, uuid: str, number: str, who: Principal) -> dict[str, Any]:
    """Link the call to a ticket; the ticket's trail records the call (uuid, times,
    recording) so whoever reads the ticket can find the conversation."""
    now = deps.clock()
    async with deps.db.write() as conn:
        row = (await conn.execute(sa.select(call_t).where(call_t.c.uuid == uuid))).first()
        if row is None:
            raise LookupError(uuid)
        await append_trail_event(
            deps,
            conn,
            number,
            who,
            "call_attached",
            {
                "call": uuid,
                "entered_at": _iso(row.entered_at),
                "answered_at": _iso(row.answered_at),
                "ended_at": _iso(row.ended_at),
                "recording": row.recording_path,
                "agent": row.agent,
            },
        )
        await conn.execute(
            sa.update(call_t).where(call_t.c.uuid == uuid).values(ticket_number=number)
        )
        await conn.execute(
            sa.insert(call_event_t),
            [
                {
                    "call_uuid": uuid,
                    "at": now,
                    "kind": "ticket_attached",
                    "actor": who.username,
                    "data": {"ticket": number},
                }
            ],
        )
    return {"uuid": uuid, "ticket": number}


async def ticket_trail(deps: Deps, number: str, action: str, data: dict[str, Any]) -> bool:
    """A trail entry by the system (emergency hand-off); False when there is no ticket."""
    who = Principal("acd", Role.AGENT)
    try:
        async with deps.db.write() as conn:
            await append_trail_event(deps, conn, number, who, action, data)
    except TicketNotFound:
        return False
    return True


# ---------------------------------------------------------------- callbacks


async def create_callback(
    deps: Deps,
    caller: str,
    reason: str,
    now: datetime,
    *,
    call_uuid: str | None,
    due_in_s: float,
    priority: int = 1,
) -> int:
    """The promise and its work item in one transaction: both or neither."""
    due = now + timedelta(seconds=due_in_s)
    async with deps.db.write() as conn:
        res = await conn.execute(
            sa.insert(callback_t).returning(callback_t.c.id),
            [
                {
                    "call_uuid": call_uuid,
                    "phone_enc": deps.cipher.encrypt(caller),
                    "phone_bidx": deps.cipher.blind_index(caller),
                    "phone_masked": masked(caller),
                    "reason": reason,
                    "status": "open",
                    "requested_at": now,
                    "due_at": due,
                }
            ],
        )
        cb_id = int(res.scalar_one())
        await conn.execute(
            workqueue.upsert_items(deps.db),
            [
                {
                    "kind": workqueue.CALLBACK,
                    "ref": str(cb_id),
                    "audience": workqueue.AGENTS,
                    "action": "call_back",
                    "priority": priority,
                    "due_at": due,
                    "claimed_by": None,
                    "claim_expires_at": None,
                    "created_at": now,
                }
            ],
        )
    return cb_id


async def list_callbacks(
    deps: Deps, status: str = "open", limit: int = 100
) -> list[dict[str, Any]]:
    async with deps.db.read() as conn:
        rows = (
            await conn.execute(
                sa.select(callback_t)
                .where(callback_t.c.status == status)
                .order_by(callback_t.c.due_at, callback_t.c.id)
                .limit(limit)
            )
        ).all()
    return [callback_view(r) for r in rows]


def callback_view(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "call": r.call_uuid,
        "caller": r.phone_masked,
        "reason": r.reason,
        "status": r.status,
        "requested_at": _iso(r.requested_at),
        "due_at": _iso(r.due_at),
        "handled_by": r.handled_by,
        "handled_at": _iso(r.handled_at),
        "note": r.note,
    }


async def close_callback(
    deps: Deps, cb_id: int, who: str, status: str, note: str | None
) -> dict[str, Any] | None:
    now = deps.clock()
    async with deps.db.write() as conn:
        row = (
            await conn.execute(
                sa.update(callback_t)
                .where(callback_t.c.id == cb_id, callback_t.c.status == "open")
                .values(status=status, handled_by=who, handled_at=now, note=note)
                .returning(*callback_t.c)
            )
        ).first()
        if row is None:
            return None
        await conn.execute(
            sa.delete(work_item).where(
                work_item.c.kind == workqueue.CALLBACK, work_item.c.ref == str(cb_id)
            )
        )
    return callback_view(row)


# ---------------------------------------------------------------- agents' phones


async def load_profile(deps: Deps, username: str) -> dict[str, Any] | None:
    async with deps.db.read() as conn:
        row = (
            await conn.execute(sa.select(profile_t).where(profile_t.c.username == username))
        ).first()
    return dict(row._mapping) if row else None


async def save_profile(
    deps: Deps, username: str, extension: str | None, dial_string: str, skills: list[str]
) -> None:
    row = {
        "username": username,
        "extension": extension,
        "dial_string": dial_string,
        "skills": skills,
        "updated_at": deps.clock(),
    }
    async with deps.db.write() as conn:
        await conn.execute(
            deps.db.upsert(
                profile_t, [row], ["username"], ["extension", "dial_string", "skills", "updated_at"]
            )
        )


async def clear_old_recordings(deps: Deps, before: datetime) -> list[str]:
    """Forget recording paths of calls older than the retention; return the paths."""
    async with deps.db.write() as conn:
        rows = (
            await conn.execute(
                sa.select(call_t.c.id, call_t.c.recording_path).where(
                    call_t.c.recording_path.is_not(None), call_t.c.entered_at < before
                )
            )
        ).all()
        if rows:
            await conn.execute(
                sa.update(call_t)
                .where(call_t.c.id.in_([r.id for r in rows]))
                .values(recording_path=None)
            )
    return [r.recording_path for r in rows]
