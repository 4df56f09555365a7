"""What agents do with conversations: read, reply, turn into a ticket, attach, close.

Plain async functions over the store. A reply is the outbound message, its outbox
row, the conversation no longer waiting and its queue item gone, in one transaction:
the sender task delivers it afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from channels import bot
from channels.contacts import contact_view, load_contact
from channels.intake import ANSWER_TARGET, CLOSED, OPEN, TICKETED, outbound_row, outbox_row
from channels.models import conversation_t, message_t, outbox_t
from ticketing import workqueue
from ticketing.handlers import (
    Deps,
    InvalidRequest,
    TicketNotFound,
    append_trail_event,
    load_ticket,
)
from ticketing.intake import Intake, NewTicket
from ticketing.ports import Principal

MAX_MESSAGES = 500
OPEN_STATUSES = (OPEN, TICKETED, CLOSED)


class ConversationNotFound(Exception):
    pass


class ConversationConflict(Exception):
    """The conversation's state does not allow this (closed, already ticketed)."""


def _iso(dt: datetime | None) -> str | None:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z") if dt else None


def conversation_summary(r: Any) -> dict[str, Any]:
    m = r._mapping if hasattr(r, "_mapping") else r
    due = None
    if m["waiting"] and m["waiting_since"] is not None:
        due = m["waiting_since"] + ANSWER_TARGET
    return {
        "id": m["id"],
        "channel": m["channel"],
        "contact_id": m["contact_id"],
        "status": m["status"],
        "waiting": m["waiting"],
        "waiting_since": _iso(m["waiting_since"]),
        "answer_due_at": _iso(due),
        "emergency": m["emergency"],
        "emergency_lines": list(m["emergency_lines"] or []),
        "ticket_number": m["ticket_number"],
        "in_bot_flow": bool(m["bot_state"]),
        "assigned_to": m["assigned_to"],
        "created_at": _iso(m["created_at"]),
        "last_message_at": _iso(m["last_message_at"]),
        "closed_at": _iso(m["closed_at"]),
    }


def message_view(r: Any, outbox: Any | None = None) -> dict[str, Any]:
    m = r._mapping if hasattr(r, "_mapping") else r
    view: dict[str, Any] = {
        "id": m["id"],
        "direction": m["direction"],
        "author": m["author"],
        "kind": m["kind"],
        "text": m["text"],
        "media": m["media"] or [],
        "location": m["location"],
        "data": m["data"] or {},
        "external_id": m["external_id"],
        "reply_to": m["reply_to"],
        "sent_at": _iso(m["sent_at"]),
        "stored_at": _iso(m["stored_at"]),
    }
    if m["direction"] == "out":
        view["delivery"] = {
            "state": m["delivery"],
            "attempts": outbox.attempts if outbox is not None else 0,
            "last_error": outbox.last_error if outbox is not None else None,
            "sent_at": _iso(outbox.sent_at) if outbox is not None else None,
        }
    return view


@dataclass(frozen=True)
class ConversationFilter:
    channel: str | None = None
    status: str | None = None
    waiting: bool | None = None
    emergency: bool | None = None


async def list_conversations(
    deps: Deps, flt: ConversationFilter, *, limit: int = 50, offset: int = 0
) -> list[dict[str, Any]]:
    """Emergencies first, then the longest-waiting, then the most recent."""
    c = conversation_t.c
    conds = []
    if flt.channel:
        conds.append(c.channel == flt.channel)
    if flt.status:
        conds.append(c.status == flt.status)
    if flt.waiting is not None:
        conds.append(c.waiting.is_(flt.waiting))
    if flt.emergency is not None:
        conds.append(c.emergency.is_(flt.emergency))
    q = (
        sa.select(conversation_t)
        .where(*conds)
        .order_by(
            sa.case((sa.and_(c.emergency, c.waiting), 0), (c.waiting, 1), else_=2),
            c.waiting_since,
            c.last_message_at.desc(),
            c.id.desc(),
        )
        .limit(limit)
        .offset(offset)
    )
    async with deps.db.read() as conn:
        return [conversation_summary(r) for r in await conn.execute(q)]


async def _load(conn: AsyncConnection, deps: Deps, conv_id: int, *, lock: bool = False) -> Any:
    q = sa.select(conversation_t).where(conversation_t.c.id == conv_id)
    if lock and not deps.db.is_sqlite:
        q = q.with_for_update()
    row = (await conn.execute(q)).first()
    if row is None:
        raise ConversationNotFound(conv_id)
    return row


async def get_conversation(deps: Deps, conv_id: int) -> dict[str, Any]:
    async with deps.db.read() as conn:
        conv = await _load(conn, deps, conv_id)
        contact = await load_contact(conn, conv.contact_id)
        msgs = (
            await conn.execute(
                sa.select(message_t)
                .where(message_t.c.conversation_id == conv_id)
                .order_by(message_t.c.id.desc())
                .limit(MAX_MESSAGES)
            )
        ).all()
        out_ids = [m.id for m in msgs if m.direction == "out"]
        boxes: dict[int, Any] = {}
        if out_ids:
            for b in await conn.execute(
                sa.select(outbox_t).where(outbox_t.c.message_id.in_(out_ids))
            ):
                boxes[b.message_id] = b
    view = conversation_summary(conv)
    view["contact"] = contact_view(deps, contact)
    view["messages"] = [message_view(m, boxes.get(m.id)) for m in reversed(msgs)]
    return view


async def _finish_waiting(conn: AsyncConnection, conv_id: int) -> None:
    await conn.execute(workqueue.remove_items(workqueue.CONVERSATION, [str(conv_id)]))


async def store_replies(
    deps: Deps,
    conv_id: int,
    texts: list[str],
    *,
    author: str = "bot",
    reply_to: int | None = None,
    inline: bool = False,
) -> list[int]:
    """Outbound messages to the conversation's resident (outbox rows unless `inline`)."""
    if not texts:
        return []
    now = deps.clock()
    async with deps.db.write() as conn:
        conv = await _load(conn, deps, conv_id)
        contact = await load_contact(conn, conv.contact_id)
        return await _insert_outbound(
            conn, conv, contact, texts, author, now, reply_to=reply_to, inline=inline
        )


async def _insert_outbound(
    conn: AsyncConnection,
    conv: Any,
    contact: Any,
    texts: list[str],
    author: str,
    now: datetime,
    *,
    reply_to: int | None = None,
    inline: bool = False,
    payload: dict[str, Any] | None = None,
    dedupe_key: str | None = None,
    data: dict[str, Any] | None = None,
) -> list[int]:
    rows = [
        outbound_row(conv.id, conv.channel, author, t, now, reply_to, inline, data) for t in texts
    ]
    res = await conn.execute(
        sa.insert(message_t).returning(message_t.c.id, sort_by_parameter_order=True), rows
    )
    ids = [r.id for r in res]
    if not inline:
        await conn.execute(
            sa.insert(outbox_t),
            [
                outbox_row(
                    contact.channel,
                    contact.external_id,
                    mid,
                    payload or {"type": "text", "text": t},
                    now,
                    dedupe_key,
                )
                for mid, t in zip(ids, texts, strict=True)
            ],
        )
    return ids


async def reply(deps: Deps, conv_id: int, who: Principal, text: str) -> dict[str, Any]:
    """An agent's answer: stored and queued for delivery; the conversation stops waiting."""
    now = deps.clock()
    async with deps.db.write() as conn:
        conv = await _load(conn, deps, conv_id, lock=True)
        if conv.status == CLOSED:
            raise ConversationConflict("the conversation is closed; the resident must write again")
        contact = await load_contact(conn, conv.contact_id)
        (mid,) = await _insert_outbound(conn, conv, contact, [text], who.username, now)
        await conn.execute(
            sa.update(conversation_t)
            .where(conversation_t.c.id == conv_id)
            .values(waiting=False, waiting_since=None, assigned_to=who.username, updated_at=now)
        )
        await _finish_waiting(conn, conv_id)
        if conv.ticket_number:
            try:
                await append_trail_event(
                    deps,
                    conn,
                    conv.ticket_number,
                    who,
                    "agent_message",
                    {"channel": conv.channel, "message_id": mid, "text": text[:500]},
                )
            except TicketNotFound:
                pass
        row = (await conn.execute(sa.select(message_t).where(message_t.c.id == mid))).one()
    return message_view(row)


async def close(deps: Deps, conv_id: int, who: Principal) -> dict[str, Any]:
    now = deps.clock()
    async with deps.db.write() as conn:
        conv = await _load(conn, deps, conv_id, lock=True)
        if conv.status != CLOSED:
            await conn.execute(
                sa.update(conversation_t)
                .where(conversation_t.c.id == conv_id)
                .values(
                    status=CLOSED,
                    open_key=None,
                    waiting=False,
                    waiting_since=None,
                    bot_state=None,
                    closed_at=now,
                    updated_at=now,
                    assigned_to=conv.assigned_to or who.username,
                )
            )
            await _finish_waiting(conn, conv_id)
        row = await _load(conn, deps, conv_id)
    return conversation_summary(row)


def transcript(msgs: list[Any], limit: int = 3000) -> str:
    """The resident's words, oldest first: the default ticket description."""
    parts = []
    for m in msgs:
        if m.direction != "in":
            continue
        if m.text:
            parts.append(m.text)
        elif m.kind == "location" and m.location:
            parts.append(
                f"[位置 {m.location.get('label') or ''} {m.location['lat']},{m.location['lon']}]"
            )
        elif m.kind in ("image", "voice", "video"):
            parts.append(f"[{m.kind}]")
    return "\n".join(parts)[:limit]


@dataclass(frozen=True)
class TicketFields:
    kind: str
    title: str | None = None
    description: str | None = None
    category: str | None = None
    urgency: str | None = None
    contact_name: str | None = None
    address: str | None = None
    district: str | None = None
    lat: float | None = None
    lon: float | None = None


async def create_ticket(
    deps: Deps, intake: Intake, conv_id: int, who: Principal, fields: TicketFields
) -> dict[str, Any]:
    """A ticket from the conversation (description defaults to the resident's words,
    location to the last shared one); the conversation is then linked to it."""
    async with deps.db.read() as conn:
        conv = await _load(conn, deps, conv_id)
        if conv.ticket_number:
            raise ConversationConflict(f"already linked to ticket {conv.ticket_number}")
        if conv.status == CLOSED:
            raise ConversationConflict("the conversation is closed")
        contact = await load_contact(conn, conv.contact_id)
        msgs = (
            await conn.execute(
                sa.select(message_t)
                .where(message_t.c.conversation_id == conv_id)
                .order_by(message_t.c.id)
                .limit(MAX_MESSAGES)
            )
        ).all()
    description = fields.description or transcript(msgs)
    if not description.strip():
        raise InvalidRequest("the conversation has no text: give a description", "description")
    loc = next((m.location for m in reversed(msgs) if m.location), None)
    title = fields.title or _title(description)
    ticket = await intake.create(
        NewTicket(
            kind=fields.kind,
            title=title,
            description=description,
            channel=conv.channel if conv.channel in _TICKET_CHANNELS else "web",
            principal=who,
            category=fields.category,
            urgency=fields.urgency or ("emergency" if conv.emergency else None),
            contact_name=fields.contact_name or contact.display_name,
            contact_ids={contact.channel: contact.external_id},
            address=fields.address or (loc or {}).get("label"),
            district=fields.district,
            lat=fields.lat if fields.lat is not None else (loc or {}).get("lat"),
            lon=fields.lon if fields.lon is not None else (loc or {}).get("lon"),
        )
    )
    media = [x for m in msgs if m.direction == "in" for x in (m.media or [])]
    await link_ticket(deps, conv_id, ticket["number"], who, media=media, notify=True)
    return ticket


_TICKET_CHANNELS = frozenset({"wechat", "telegram", "app", "web", "open311", "email"})


def _title(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first[:30] + ("…" if len(first) > 30 else "")


async def attach_ticket(deps: Deps, conv_id: int, number: str, who: Principal) -> dict[str, Any]:
    """Link the conversation to an existing ticket (the resident wrote about it again)."""
    async with deps.db.read() as conn:
        conv = await _load(conn, deps, conv_id)
        if conv.ticket_number and conv.ticket_number != number:
            raise ConversationConflict(f"already linked to ticket {conv.ticket_number}")
        try:
            await load_ticket(deps, conn, number)
        except TicketNotFound:
            raise InvalidRequest(f"no ticket {number}", "number") from None
    await link_ticket(deps, conv_id, number, who, notify=False)
    return {"number": number}


async def link_ticket(
    deps: Deps,
    conv_id: int,
    number: str,
    who: Principal,
    *,
    media: list[dict[str, Any]] | None = None,
    notify: bool = False,
    inline: bool = False,
    reply_to: int | None = None,
    by_bot: bool = False,
) -> None:
    """Conversation -> ticketed, its queue item gone (the ticket has its own), a trail
    entry on the ticket, and (with `notify`) the ticket number told to the resident."""
    now = deps.clock()
    async with deps.db.write() as conn:
        conv = await _load(conn, deps, conv_id, lock=True)
        await conn.execute(
            sa.update(conversation_t)
            .where(conversation_t.c.id == conv_id)
            .values(
                ticket_number=number,
                status=TICKETED if conv.status != CLOSED else CLOSED,
                waiting=False,
                waiting_since=None,
                assigned_to=conv.assigned_to or (None if by_bot else who.username),
                updated_at=now,
            )
        )
        await _finish_waiting(conn, conv_id)
        data: dict[str, Any] = {"conversation_id": conv_id, "channel": conv.channel}
        if media:
            data["media"] = media[:20]
        await append_trail_event(deps, conn, number, who, "conversation_linked", data)
        if notify:
            contact = await load_contact(conn, conv.contact_id)
            await _insert_outbound(
                conn,
                conv,
                contact,
                [bot.ticket_created(number, conv.lang)],
                "bot" if by_bot else who.username,
                now,
                inline=inline,
                reply_to=reply_to,
            )


async def get_conversation_row(deps: Deps, conv_id: int) -> Any:
    async with deps.db.read() as conn:
        return await _load(conn, deps, conv_id)


async def contact_of(deps: Deps, conv_id: int) -> Any:
    async with deps.db.read() as conn:
        conv = await _load(conn, deps, conv_id)
        return await load_contact(conn, conv.contact_id)
