"""Ticket use cases: plain async functions over the store, no HTTP, no vendor SDK.

Each lifecycle move is one transaction: read the ticket (locked on PostgreSQL),
ask the state machine, apply the action's effect, append the chained audit event,
update the queue item, commit, then tell the bus. Moves are routed by the table
`EFFECTS` at the bottom.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ticketing import workqueue
from ticketing.audit import GENESIS, event_hash, verify_chain
from ticketing.bus import EventBus
from ticketing.catalog import Catalog
from ticketing.deadlines import (
    DISPATCH_DEFAULTS,
    FEEDBACK_DEFAULTS,
    Duration,
    Urgency,
    due_at,
    extend,
)
from ticketing.events import DomainEvent, TicketTransitioned
from ticketing.lifecycle import (
    Action,
    Role,
    Satisfaction,
    Status,
    allowed_actions,
    plan_move,
)
from ticketing.models import Attachment, Ticket, TicketEvent, utcnow
from ticketing.ports import PiiCipher, Principal
from ticketing.store import Database
from ticketing.workdays import WorkCalendar

ticket_t = Ticket.__table__  # type: ignore[attr-defined]
event_t = TicketEvent.__table__  # type: ignore[attr-defined]
attachment_t = Attachment.__table__  # type: ignore[attr-defined]

URGENCY_PRIORITY = {Urgency.EMERGENCY: 0, Urgency.URGENT: 1, Urgency.NORMAL: 2}
DISPATCH_PHASE = (Status.NEW, Status.RETURNED, Status.REOPENED)
FEEDBACK_PHASE = (Status.DISPATCHED, Status.ACCEPTED, Status.EXTENSION_REQUESTED)


class TicketNotFound(Exception):
    pass


class InvalidRequest(Exception):
    """A well-formed request the domain cannot accept; `field` names the culprit."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class ConcurrentUpdate(Exception):
    """Another instance changed the ticket between our read and our write."""


@dataclass
class Deps:
    """Everything the handlers need, built once by the bootstrap."""

    db: Database
    calendar: WorkCalendar
    tz: ZoneInfo
    bus: EventBus
    cipher: PiiCipher
    catalog: Catalog = field(default_factory=Catalog)
    clock: Callable[[], datetime] = utcnow
    claim_ttl_s: int = 600
    # local observers (metrics): unlike bus subscribers, never see other instances' events
    observers: list[Callable[[DomainEvent], None]] = field(default_factory=list)
    # kinds of queue item a person must not be handed right now (the phone line: no
    # more conversations for an agent whose call and chats already fill their load)
    claim_filter: Callable[[AsyncConnection, str], Awaitable[frozenset[str]]] | None = None


async def announce(deps: Deps, events: Sequence[DomainEvent]) -> None:
    """After commit: count locally, then tell the bus (and through it other instances)."""
    for ev in events:
        for observe in deps.observers:
            observe(ev)
    await deps.bus.publish_many(events)


# ---------------------------------------------------------------- deadlines

_URGENCIES = {u.value: u for u in Urgency}
_STATUSES = {s.value: s for s in Status}


def urgency_of(value: str) -> Urgency:
    """`Urgency(value)` (ValueError included) without the Enum call on the hot path."""
    return _URGENCIES.get(value) or Urgency(value)


def limits_for(
    deps: Deps, category_code: str | None, urgency: Urgency
) -> tuple[Duration, Duration]:
    """Dispatch and feedback limits: the category's own, else the urgency's default."""
    cat = deps.catalog.category(category_code) if category_code else None
    dispatch = DISPATCH_DEFAULTS[urgency]
    feedback = FEEDBACK_DEFAULTS[urgency]
    # a category's limits are for its normal cases; an emergency is never slower
    if cat and urgency is urgency_of(cat["urgency"]):
        if cat["dispatch_limit"]:
            dispatch = Duration.parse(cat["dispatch_limit"])
        if cat["feedback_limit"]:
            feedback = Duration.parse(cat["feedback_limit"])
    return dispatch, feedback


# ---------------------------------------------------------------- audit trail


def chain_event(
    number: str,
    seq: int,
    prev_hash: str,
    at: datetime,
    principal: Principal,
    action: str,
    from_status: str | None,
    to_status: str,
    data: dict[str, Any],
) -> dict[str, Any]:
    """One audit row with its hash; the caller stores seq/hash back on the ticket."""
    h = event_hash(
        prev_hash,
        ticket_number=number,
        seq=seq,
        at=at,
        actor=principal.username,
        actor_role=principal.role.value,
        action=action,
        from_status=from_status,
        to_status=to_status,
        data=data,
    )
    return {
        "ticket_number": number,
        "seq": seq,
        "at": at,
        "actor": principal.username,
        "actor_role": principal.role.value,
        "action": action,
        "from_status": from_status,
        "to_status": to_status,
        "data": data,
        "prev_hash": prev_hash,
        "hash": h,
    }


async def load_ticket(deps: Deps, conn: AsyncConnection, number: str, *, lock: bool = False) -> Any:
    q = sa.select(ticket_t).where(ticket_t.c.number == number)
    if lock and not deps.db.is_sqlite:
        q = q.with_for_update()
    row = (await conn.execute(q)).first()
    if row is None:
        raise TicketNotFound(number)
    return row


def can_see(principal: Principal, row: Any) -> bool:
    """Department users see only tickets their department leads or assists on."""
    if principal.role is not Role.DEPARTMENT:
        return True
    code = principal.department_code
    return bool(code) and (row.lead_department == code or code in (row.assist_departments or []))


# ---------------------------------------------------------------- views


def mask_phone(e164: str) -> str:
    """138****5678: enough for the resident to recognise, useless to a leak."""
    national = e164[3:] if e164.startswith("+86") else e164.lstrip("+")
    if len(national) <= 7:
        return "*" * len(national)
    return national[:3] + "*" * (len(national) - 7) + national[-4:]


def ticket_view(
    deps: Deps, row: Any, principal: Principal | None = None, *, phone: str | None = None
) -> dict[str, Any]:
    """The API's ticket. `phone`: the contact's masked phone when the caller already has
    it (the intake, which just encrypted it); otherwise it is decrypted from the row."""
    now = deps.clock()
    status = _STATUSES.get(row.status) or Status(row.status)
    if phone is None and row.contact_phone_enc:
        plain = deps.cipher.decrypt(row.contact_phone_enc)
        phone = mask_phone(plain) if plain else None
    cat = deps.catalog.categories.get(row.category_code or "")
    overdue = is_overdue(status, row.dispatch_due_at, row.feedback_due_at, now)
    view: dict[str, Any] = {
        "number": row.number,
        "kind": row.kind,
        "title": row.title,
        "description": row.description,
        "category": {"code": row.category_code, "name": cat["name"] if cat else None},
        "channel": row.channel,
        "urgency": row.urgency,
        "priority": row.priority,
        "status": row.status,
        "lead_department": row.lead_department,
        "assist_departments": list(row.assist_departments or []),
        "contact": {
            "name": row.contact_name,
            "phone": phone,
            "channel_ids": dict(row.contact_ids or {}),
        },
        "location": {
            "address": row.address,
            "district": row.district,
            "lat": row.lat,
            "lon": row.lon,
        },
        "merged_into": row.merged_into,
        "reply": row.reply_text,
        "satisfaction": row.satisfaction,
        "supervision_count": row.supervision_count,
        "reopen_count": row.reopen_count,
        "deadlines": {
            "dispatch_due_at": _iso(row.dispatch_due_at),
            "feedback_due_at": _iso(row.feedback_due_at),
            "overdue": overdue,
        },
        "created_by": row.created_by,
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
        "dispatched_at": _iso(row.dispatched_at),
        "closed_at": _iso(row.closed_at),
        "version": row.version,
    }
    if principal is not None:
        view["allowed_actions"] = allowed_actions(
            status, principal.role, is_lead=principal.department_code == row.lead_department
        )
    return view


def event_view(row: Any) -> dict[str, Any]:
    return {
        "seq": row.seq,
        "at": _iso(row.at),
        "actor": row.actor,
        "actor_role": row.actor_role,
        "action": row.action,
        "from_status": row.from_status,
        "to_status": row.to_status,
        "data": row.data,
        "hash": row.hash,
    }


_ISO: dict[datetime, str] = {}  # a view shows created_at, updated_at and deadlines


def _iso(dt: datetime | None) -> str | None:
    """ISO 8601 in UTC with Z. Memoised: equal aware datetimes are the same instant,
    which is all the text depends on (naive ones never equal aware ones)."""
    if not dt:
        return None
    text = _ISO.get(dt)
    if text is None:
        utc = dt if dt.tzinfo is UTC else dt.astimezone(UTC)
        text = utc.isoformat()[:-6] + "Z"  # less its "+00:00"
        if len(_ISO) >= 4096:
            _ISO.clear()
        _ISO[dt] = text
    return text


def is_overdue(
    status: Status, dispatch_due: datetime | None, feedback_due: datetime | None, now: datetime
) -> bool:
    if status in DISPATCH_PHASE:
        return dispatch_due is not None and dispatch_due < now
    if status in FEEDBACK_PHASE:
        return feedback_due is not None and feedback_due < now
    return False


def overdue_clause(now: datetime) -> Any:
    c = ticket_t.c
    return sa.or_(
        sa.and_(c.status.in_([s.value for s in DISPATCH_PHASE]), c.dispatch_due_at < now),
        sa.and_(c.status.in_([s.value for s in FEEDBACK_PHASE]), c.feedback_due_at < now),
    )


# ---------------------------------------------------------------- queries


async def get_ticket(deps: Deps, number: str, principal: Principal) -> dict[str, Any]:
    async with deps.db.read() as conn:
        row = await load_ticket(deps, conn, number)
    if not can_see(principal, row):
        raise TicketNotFound(number)
    return ticket_view(deps, row, principal)


async def ticket_events(deps: Deps, number: str, principal: Principal) -> list[dict[str, Any]]:
    async with deps.db.read() as conn:
        row = await load_ticket(deps, conn, number)
        if not can_see(principal, row):
            raise TicketNotFound(number)
        rows = await conn.execute(
            sa.select(event_t).where(event_t.c.ticket_number == number).order_by(event_t.c.seq)
        )
        return [event_view(r) for r in rows]


@dataclass(frozen=True)
class TicketFilter:
    status: Sequence[str] = ()
    kind: str | None = None
    category: str | None = None
    department: str | None = None
    channel: str | None = None
    overdue: bool | None = None
    q: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None


def encode_cursor(created_at: datetime, ticket_id: int) -> str:
    raw = json.dumps([created_at.astimezone(UTC).isoformat(), ticket_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, tid = json.loads(raw)
        when = datetime.fromisoformat(at)
        if when.tzinfo is None:
            raise ValueError("a cursor's time has an offset")
        return when.astimezone(UTC), int(tid)  # year 1 at +14:00: OverflowError
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidRequest("cursor is not one this API issued", "cursor") from exc


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def list_tickets(
    deps: Deps, principal: Principal, flt: TicketFilter, *, limit: int, cursor: str | None
) -> dict[str, Any]:
    """Newest first, keyset-paginated on (created_at, id) so pages never shift."""
    c = ticket_t.c
    q = sa.select(ticket_t)
    conds: list[Any] = []
    if principal.role is Role.DEPARTMENT:
        code = principal.department_code or ""
        conds.append(
            sa.or_(
                c.lead_department == code,
                sa.cast(c.assist_departments, sa.Text).like(_like(f'"{code}"'), escape="\\"),
            )
        )
    if flt.status:
        conds.append(c.status.in_(list(flt.status)))
    if flt.kind:
        conds.append(c.kind == flt.kind)
    if flt.category:
        conds.append(c.category_code.in_(deps.catalog.category_and_descendants(flt.category)))
    if flt.department:
        conds.append(
            sa.or_(
                c.lead_department == flt.department,
                sa.cast(c.assist_departments, sa.Text).like(
                    _like(f'"{flt.department}"'), escape="\\"
                ),
            )
        )
    if flt.channel:
        conds.append(c.channel == flt.channel)
    now = deps.clock()
    if flt.overdue is True:
        conds.append(overdue_clause(now))
    elif flt.overdue is False:
        conds.append(sa.not_(overdue_clause(now)))
    if flt.q:
        # Chinese has no spaces: a substring match finds 路灯 inside 路灯不亮
        pat = _like(flt.q)
        like = (
            (lambda col: col.like(pat, escape="\\"))
            if deps.db.is_sqlite
            else (lambda col: col.ilike(pat, escape="\\"))
        )
        conds.append(sa.or_(like(c.title), like(c.description), like(c.address), c.number == flt.q))
    if flt.created_from:
        conds.append(c.created_at >= flt.created_from)
    if flt.created_to:
        conds.append(c.created_at < flt.created_to)
    if cursor:
        at, tid = decode_cursor(cursor)
        conds.append(sa.or_(c.created_at < at, sa.and_(c.created_at == at, c.id < tid)))
    q = q.where(*conds).order_by(c.created_at.desc(), c.id.desc()).limit(limit + 1)
    async with deps.db.read() as conn:
        rows = (await conn.execute(q)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [ticket_view(deps, r, principal) for r in rows],
        "next_cursor": encode_cursor(rows[-1].created_at, rows[-1].id) if more else None,
    }


# ---------------------------------------------------------------- moves


@dataclass(frozen=True)
class MoveTicket:
    number: str
    action: Action
    principal: Principal
    payload: dict[str, Any]


Effect = Callable[
    [Deps, AsyncConnection, Any, dict[str, Any], datetime],
    Awaitable[tuple[dict[str, Any], dict[str, Any]]],
]


async def _answer(
    deps: Deps, conn: AsyncConnection, t: Any, p: dict[str, Any], now: datetime
) -> tuple[dict[str, Any], dict[str, Any]]:
    return {"reply_text": p["answer"], "closed_at": now}, {"answer": p["answer"]}


async def _dispatch(
    deps: Deps, conn: AsyncConnection, t: Any, p: dict[str, Any], now: datetime
) -> tuple[dict[str, Any], dict[str, Any]]:
    lead = p.get("department")
    how = "chosen"
    if not lead:
        cat = deps.catalog.category(t.category_code) if t.category_code else None
        lead, how = (cat["default_department"], "category") if cat else (None, "")
    if not lead:
        lead, how = deps.catalog.fallback_for_district(t.district), "district_fallback"
    if not lead:
        raise InvalidRequest(
            "no department given, the category names none and the district has no fallback unit",
            "department",
        )
    if deps.catalog.department(lead) is None:
        raise InvalidRequest(f"unknown or inactive department {lead!r}", "department")
    assist = list(dict.fromkeys(p.get("assist") or []))
    for code in assist:
        if deps.catalog.department(code) is None:
            raise InvalidRequest(f"unknown or inactive department {code!r}", "assist")
        if code == lead:
            raise InvalidRequest("the lead department cannot also assist", "assist")
    _, feedback = limits_for(deps, t.category_code, Urgency(t.urgency))
    # a re-dispatch gives the new department its full time
    feedback_due = due_at(now, feedback, deps.calendar, deps.tz)
    changes = {
        "lead_department": lead,
        "assist_departments": assist,
        "dispatched_at": now,
        "feedback_due_at": feedback_due,
        "feedback_warned_at": None,
        "feedback_breached_at": None,
    }
    data = {"lead": lead, "assist": assist, "routed_by": how, "feedback_due_at": _iso(feedback_due)}
    if p.get("note"):
        data["note"] = p["note"]
    return changes, data


async def _note_only(
    deps: Deps, conn: AsyncConnection, t: Any, p: dict[str, Any], now: datetime
) -> tuple[dict[str, Any], dict[str, Any]]:
    return {}, {k: v for k, v in p.items() if v is not None}


async def _return(
    deps: Deps, conn: AsyncConnection, t: Any, p: dict[str, Any], now: datetime
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Back on the desk: the desk gets a fresh dispatch allowance from now (it could not
    have re-dispatched before the department returned it)."""
    dispatch, _ = limits_for(deps, t.category_code, Urgency(t.urgency))
    due = due_at(now, dispatch, deps.calendar, deps.tz)
    changes = {"dispatch_due_at": due, "dispatch_warned_at": None, "dispatch_breached_at": None}
    return changes, {"reason": p["reason"], "dispatch_due_at": _iso(due)}


async def _request_extension(
    deps: Deps, conn: AsyncConnection, t: Any, p: dict[str, Any], now: datetime
) -> tuple[dict[str, Any], dict[str, Any]]:
    extra = Duration.parse(p["extra"])
    return {}, {"extra": str(extra), "reason": p["reason"]}


async def _grant_extension(
    deps: Deps, conn: AsyncConnection, t: Any, p: dict[str, Any], now: datetime
) -> tuple[dict[str, Any], dict[str, Any]]:
    requested = (
        await conn.execute(
            sa.select(event_t.c.data)
            .where(
                event_t.c.ticket_number == t.number,
                event_t.c.action == Action.REQUEST_EXTENSION.value,
            )
            .order_by(event_t.c.seq.desc())
            .limit(1)
        )
    ).scalar_one()
    extra = Duration.parse(p.get("extra") or requested["extra"])
    base = t.feedback_due_at or now
    new_due = extend(base, extra, deps.calendar, deps.tz)
    changes = {"feedback_due_at": new_due, "feedback_warned_at": None, "feedback_breached_at": None}
    data = {"extra": str(extra), "from_due_at": _iso(base), "to_due_at": _iso(new_due)}
    if p.get("note"):
        data["note"] = p["note"]
    return changes, data


async def _reply(
    deps: Deps, conn: AsyncConnection, t: Any, p: dict[str, Any], now: datetime
) -> tuple[dict[str, Any], dict[str, Any]]:
    return {"reply_text": p["reply"]}, {"reply": p["reply"]}


async def _follow_up(
    deps: Deps, conn: AsyncConnection, t: Any, p: dict[str, Any], now: datetime
) -> tuple[dict[str, Any], dict[str, Any]]:
    sat = Satisfaction(p["satisfaction"])
    data = {"satisfaction": sat.value, **({"note": p["note"]} if p.get("note") else {})}
    if sat is Satisfaction.UNSATISFIED:
        return _reopen_changes(deps, t, now), data
    return {"satisfaction": sat.value, "closed_at": now}, data


def _reopen_changes(deps: Deps, t: Any, now: datetime) -> dict[str, Any]:
    dispatch, _ = limits_for(deps, t.category_code, Urgency(t.urgency))
    return {
        "satisfaction": None,
        "closed_at": None,
        "reopen_count": t.reopen_count + 1,
        "dispatch_due_at": due_at(now, dispatch, deps.calendar, deps.tz),
        "dispatch_warned_at": None,
        "dispatch_breached_at": None,
    }


async def _close(
    deps: Deps, conn: AsyncConnection, t: Any, p: dict[str, Any], now: datetime
) -> tuple[dict[str, Any], dict[str, Any]]:
    return {"closed_at": now}, {"reason": p["reason"]}


async def _reopen(
    deps: Deps, conn: AsyncConnection, t: Any, p: dict[str, Any], now: datetime
) -> tuple[dict[str, Any], dict[str, Any]]:
    return _reopen_changes(deps, t, now), {"reason": p["reason"]}


async def _merge(
    deps: Deps, conn: AsyncConnection, t: Any, p: dict[str, Any], now: datetime
) -> tuple[dict[str, Any], dict[str, Any]]:
    into = p["into"]
    if into == t.number:
        raise InvalidRequest("a ticket cannot be merged into itself", "into")
    try:
        parent = await load_ticket(deps, conn, into, lock=True)
    except TicketNotFound:
        raise InvalidRequest(f"no ticket {into}", "into") from None
    if parent.status == Status.MERGED.value:
        raise InvalidRequest(
            f"ticket {into} is itself merged into {parent.merged_into}; merge into that one",
            "into",
        )
    # tickets already merged into this one follow it to the new parent, so every
    # duplicate keeps receiving the surviving ticket's updates
    kids = (
        (await conn.execute(sa.select(ticket_t.c.number).where(ticket_t.c.merged_into == t.number)))
        .scalars()
        .all()
    )
    if kids:
        await conn.execute(
            sa.update(ticket_t).where(ticket_t.c.merged_into == t.number).values(merged_into=into)
        )
        who = Principal("system", Role.SUPERVISOR)
        for kid in kids:
            await _append_system_event(
                deps, conn, kid, who, "merge_reparented", {"from": t.number, "parent": into}, now
            )
    return {"merged_into": into}, {"into": into, **({"children": list(kids)} if kids else {})}


async def _supervise(
    deps: Deps, conn: AsyncConnection, t: Any, p: dict[str, Any], now: datetime
) -> tuple[dict[str, Any], dict[str, Any]]:
    return (
        {"supervision_count": t.supervision_count + 1, "priority": max(0, t.priority - 1)},
        {"note": p["note"]},
    )


async def move_ticket(deps: Deps, cmd: MoveTicket) -> dict[str, Any]:
    now = deps.clock()
    published: list[DomainEvent] = []
    async with deps.db.write() as conn:
        if cmd.action is Action.MERGE and not deps.db.is_sqlite:
            # two agents merging a pair of duplicates into each other at once would lock
            # them in opposite orders (deadlock): take both locks in one order first
            pair = sorted({cmd.number, str(cmd.payload.get("into"))})
            await conn.execute(
                sa.select(ticket_t.c.id)
                .where(ticket_t.c.number.in_(pair))
                .order_by(ticket_t.c.number)
                .with_for_update()
            )
        t = await load_ticket(deps, conn, cmd.number, lock=True)
        who = cmd.principal
        if not can_see(who, t):
            raise TicketNotFound(cmd.number)
        sat = cmd.payload.get("satisfaction")
        new_status = plan_move(
            cmd.action,
            t.status,
            who.role,
            is_lead=who.department_code is not None and who.department_code == t.lead_department,
            satisfaction=Satisfaction(sat) if sat else None,
        )
        changes, data = await EFFECTS[cmd.action](deps, conn, t, cmd.payload, now)
        ev = chain_event(
            t.number,
            t.event_seq + 1,
            t.last_hash or GENESIS,
            now,
            who,
            cmd.action.value,
            t.status,
            new_status.value,
            data,
        )
        changes.update(
            status=new_status.value,
            updated_at=now,
            version=t.version + 1,
            event_seq=ev["seq"],
            last_hash=ev["hash"],
        )
        res = await conn.execute(
            sa.update(ticket_t)
            .where(ticket_t.c.number == t.number, ticket_t.c.version == t.version)
            .values(**changes)
        )
        if res.rowcount != 1:
            raise ConcurrentUpdate(t.number)
        await conn.execute(sa.insert(event_t), [ev])
        merged = {**t._mapping, **changes}
        need = workqueue.ticket_need(
            new_status,
            merged["lead_department"],
            merged["dispatch_due_at"],
            merged["feedback_due_at"],
        )
        await workqueue.sync_ticket_item(deps.db, conn, t.number, need, merged["priority"], now)
        if cmd.action is Action.MERGE:
            await _append_system_event(
                deps, conn, cmd.payload["into"], who, "merge_in", {"child": t.number}, now
            )
        await _mirror_to_children(deps, conn, t.number, who, cmd.action.value, new_status, now)
        row = await load_ticket(deps, conn, t.number)
        published.append(
            TicketTransitioned(t.number, cmd.action.value, t.status, new_status.value, who.username)
        )
    await announce(deps, published)
    return ticket_view(deps, row, who)


async def _append_system_event(
    deps: Deps,
    conn: AsyncConnection,
    number: str,
    who: Principal,
    action: str,
    data: dict[str, Any],
    now: datetime,
) -> None:
    """A trail entry that does not change the status (merge notices, PII reads)."""
    t = await load_ticket(deps, conn, number, lock=True)
    ev = chain_event(
        number, t.event_seq + 1, t.last_hash or GENESIS, now, who, action, t.status, t.status, data
    )
    await conn.execute(
        sa.update(ticket_t)
        .where(ticket_t.c.number == number)
        .values(event_seq=ev["seq"], last_hash=ev["hash"], version=t.version + 1, updated_at=now)
    )
    await conn.execute(sa.insert(event_t), [ev])


async def append_trail_event(
    deps: Deps,
    conn: AsyncConnection,
    number: str,
    who: Principal,
    action: str,
    data: dict[str, Any],
) -> None:
    """Add a status-neutral entry to a ticket's trail inside the caller's transaction
    (a resident's follow-up message on a channel). TicketNotFound if there is none."""
    await _append_system_event(deps, conn, number, who, action, data, deps.clock())


async def _mirror_to_children(
    deps: Deps,
    conn: AsyncConnection,
    parent: str,
    who: Principal,
    action: str,
    status: Status,
    now: datetime,
) -> None:
    """Merged tickets follow their parent: each child's trail records its updates."""
    kids = (
        (await conn.execute(sa.select(ticket_t.c.number).where(ticket_t.c.merged_into == parent)))
        .scalars()
        .all()
    )
    for kid in kids:
        await _append_system_event(
            deps,
            conn,
            kid,
            who,
            "parent_update",
            {"parent": parent, "action": action, "parent_status": status.value},
            now,
        )


async def reveal_contact(
    deps: Deps, number: str, principal: Principal, reason: str
) -> dict[str, Any]:
    """The full phone number, for a callback; every reveal is written to the trail."""
    now = deps.clock()
    async with deps.db.write() as conn:
        t = await load_ticket(deps, conn, number, lock=True)
        if not can_see(principal, t):
            raise TicketNotFound(number)
        await _append_system_event(
            deps, conn, number, principal, "contact_viewed", {"reason": reason}, now
        )
    phone = deps.cipher.decrypt(t.contact_phone_enc) if t.contact_phone_enc else None
    return {"name": t.contact_name, "phone": phone}


# ---------------------------------------------------------------- attachments


async def add_attachment(deps: Deps, number: str, who: Principal, **meta: Any) -> dict[str, Any]:
    """Metadata row plus a trail entry; the bytes are already stored by content hash."""
    now = deps.clock()
    async with deps.db.write() as conn:
        t = await load_ticket(deps, conn, number, lock=True)
        if not can_see(who, t):
            raise TicketNotFound(number)
        same = (
            await conn.execute(
                sa.select(attachment_t).where(
                    attachment_t.c.ticket_number == number,
                    attachment_t.c.sha256 == meta["sha256"],
                )
            )
        ).first()
        if same is not None:  # a retried upload: the file is already on the ticket
            return {**_attachment_view(same), "duplicate": True}
        row = {**meta, "ticket_number": number, "uploaded_by": who.username, "uploaded_at": now}
        res = await conn.execute(sa.insert(attachment_t).values(**row).returning(attachment_t.c.id))
        row["id"] = res.scalar_one()
        await _append_system_event(
            deps,
            conn,
            number,
            who,
            "attachment_added",
            {
                "id": row["id"],
                "filename": meta["filename"],
                "sha256": meta["sha256"],
                "size": meta["size"],
            },
            now,
        )
    return _attachment_view(row)


def _attachment_view(r: Any) -> dict[str, Any]:
    m = dict(r) if isinstance(r, dict) else dict(r._mapping)
    return {
        "id": m["id"],
        "filename": m["filename"],
        "content_type": m["content_type"],
        "size": m["size"],
        "sha256": m["sha256"],
        "uploaded_by": m["uploaded_by"],
        "uploaded_at": _iso(m["uploaded_at"]),
        "url": f"/api/v1/attachments/{m['id']}",
    }


async def list_attachments(deps: Deps, number: str, who: Principal) -> list[dict[str, Any]]:
    async with deps.db.read() as conn:
        t = await load_ticket(deps, conn, number)
        if not can_see(who, t):
            raise TicketNotFound(number)
        rows = await conn.execute(
            sa.select(attachment_t)
            .where(attachment_t.c.ticket_number == number)
            .order_by(attachment_t.c.id)
        )
        return [_attachment_view(r) for r in rows]


async def get_attachment(deps: Deps, att_id: int, who: Principal) -> dict[str, Any]:
    async with deps.db.read() as conn:
        row = (
            await conn.execute(sa.select(attachment_t).where(attachment_t.c.id == att_id))
        ).first()
        if row is None:
            raise TicketNotFound(f"attachment {att_id}")
        t = await load_ticket(deps, conn, row.ticket_number)
    if not can_see(who, t):
        raise TicketNotFound(f"attachment {att_id}")
    return dict(row._mapping)


# ---------------------------------------------------------------- audit check


async def verify_trails(deps: Deps, numbers: Sequence[str] | None = None) -> dict[str, Any]:
    """Recompute every chain (or the given tickets'); report each break."""
    breaks: list[dict[str, Any]] = []
    checked = 0
    async with deps.db.read() as conn:
        tq = sa.select(ticket_t.c.number, ticket_t.c.last_hash).order_by(ticket_t.c.number)
        if numbers:
            tq = tq.where(ticket_t.c.number.in_(list(numbers)))
        heads = {r.number: r.last_hash for r in await conn.execute(tq)}
        eq = sa.select(event_t).order_by(event_t.c.ticket_number, event_t.c.seq)
        if numbers:
            eq = eq.where(event_t.c.ticket_number.in_(list(numbers)))
        current: list[Any] = []
        current_number: str | None = None

        def flush() -> None:
            nonlocal checked
            if current_number is None:
                return
            checked += 1
            found = verify_chain(current, expected_last=heads.pop(current_number, None))
            breaks.extend(b.to_dict() for b in found)

        result = await conn.stream(eq)
        async for r in result:
            if r.ticket_number != current_number:
                flush()
                current, current_number = [], r.ticket_number
            current.append(r)
        flush()
    for number, head in heads.items():
        checked += 1
        if head:
            breaks.append({"ticket": number, "seq": 1, "problem": "trail is missing"})
    return {"checked": checked, "intact": not breaks, "breaks": breaks}


# ---------------------------------------------------------------- queue


async def queue_view(deps: Deps, principal: Principal, limit: int = 100) -> list[dict[str, Any]]:
    async with deps.db.read() as conn:
        items = await workqueue.list_items(conn, workqueue.audiences_for(principal), limit=limit)
    return [_item_view(i) for i in items]


async def claim_next(deps: Deps, principal: Principal) -> dict[str, Any] | None:
    async with deps.db.write() as conn:
        exclude = (
            await deps.claim_filter(conn, principal.username) if deps.claim_filter else frozenset()
        )
        item = await workqueue.claim_next(
            deps.db,
            conn,
            workqueue.audiences_for(principal),
            principal.username,
            deps.clock(),
            deps.claim_ttl_s,
            exclude_kinds=exclude,
        )
    return _item_view(item) if item else None


def _item_view(i: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": i["id"],
        "kind": i["kind"],
        "ref": i["ref"],
        "audience": i["audience"],
        "action": i["action"],
        "priority": i["priority"],
        "due_at": _iso(i["due_at"]),
        "claimed_by": i["claimed_by"],
        "claim_expires_at": _iso(i["claim_expires_at"]),
    }


EFFECTS: dict[Action, Effect] = {
    Action.ANSWER: _answer,
    Action.DISPATCH: _dispatch,
    Action.SIGN: _note_only,
    Action.RETURN: _return,
    Action.REQUEST_EXTENSION: _request_extension,
    Action.GRANT_EXTENSION: _grant_extension,
    Action.REFUSE_EXTENSION: _note_only,
    Action.REPLY: _reply,
    Action.FOLLOW_UP: _follow_up,
    Action.CLOSE: _close,
    Action.REOPEN: _reopen,
    Action.MERGE: _merge,
    Action.SUPERVISE: _supervise,
}
