"""Display fields for queue items that are not tickets: who wrote, who calls.

A work item only says "conversation 17" or "call 6f1c…"; an agent scanning the
queue needs the channel, the resident's last words or the caller's masked number.
Each enricher reads them for a batch of refs in one query (the feed calls it with
up to 500 refs while it re-reads the queue), never decrypting personal data: the
masked copies the channels and the phone line keep are what a screen may show.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from channels.models import ChannelContact, ChannelMessage, Conversation
from hotline.calls.models import Call, CallbackRequest

conversation_t = Conversation.__table__  # type: ignore[attr-defined]
message_t = ChannelMessage.__table__  # type: ignore[attr-defined]
contact_t = ChannelContact.__table__  # type: ignore[attr-defined]
call_t = Call.__table__  # type: ignore[attr-defined]
callback_t = CallbackRequest.__table__  # type: ignore[attr-defined]

EXCERPT = 60


def _ints(refs: list[str]) -> list[int]:
    return [int(r) for r in refs if r.isdigit() and len(r) < 19]


def excerpt(text: str | None, kind: str | None) -> str | None:
    if text:
        flat = " ".join(text.split())
        return flat if len(flat) <= EXCERPT else flat[: EXCERPT - 1] + "…"
    return f"[{kind}]" if kind else None


async def conversations(conn: AsyncConnection, refs: list[str]) -> dict[str, dict[str, Any]]:
    """Channel, the resident's name if known, the last inbound message as the title."""
    ids = _ints(refs)
    if not ids:
        return {}
    last_in = (
        sa.select(message_t.c.conversation_id, sa.func.max(message_t.c.id).label("mid"))
        .where(message_t.c.conversation_id.in_(ids), message_t.c.direction == "in")
        .group_by(message_t.c.conversation_id)
        .subquery()
    )
    c = conversation_t.c
    rows = await conn.execute(
        sa.select(
            c.id,
            c.channel,
            c.status,
            c.emergency,
            c.emergency_lines,
            c.ticket_number,
            contact_t.c.display_name,
            message_t.c.text,
            message_t.c.kind,
        )
        .select_from(
            conversation_t.outerjoin(contact_t, contact_t.c.id == c.contact_id)
            .outerjoin(last_in, last_in.c.conversation_id == c.id)
            .outerjoin(message_t, message_t.c.id == last_in.c.mid)
        )
        .where(c.id.in_(ids))
    )
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        extra: dict[str, Any] = {
            "channel": r.channel,
            "title": excerpt(r.text, r.kind),
            "status": r.status,
            "contact_name": r.display_name,
            "ticket": r.ticket_number,
        }
        if r.emergency:
            extra["emergency_lines"] = list(r.emergency_lines or [])
        out[str(r.id)] = extra
    return out


async def calls(conn: AsyncConnection, refs: list[str]) -> dict[str, dict[str, Any]]:
    """The caller's masked number and the call's state (queued, ringing...)."""
    if not refs:
        return {}
    rows = await conn.execute(
        sa.select(call_t.c.uuid, call_t.c.caller_masked, call_t.c.state, call_t.c.agent).where(
            call_t.c.uuid.in_(refs)
        )
    )
    return {
        r.uuid: {"channel": "phone", "title": r.caller_masked, "status": r.state, "agent": r.agent}
        for r in rows
    }


async def callbacks(conn: AsyncConnection, refs: list[str]) -> dict[str, dict[str, Any]]:
    """Whom to ring back (masked) and why the promise was made."""
    ids = _ints(refs)
    if not ids:
        return {}
    rows = await conn.execute(
        sa.select(
            callback_t.c.id, callback_t.c.phone_masked, callback_t.c.reason, callback_t.c.status
        ).where(callback_t.c.id.in_(ids))
    )
    return {
        str(r.id): {
            "channel": "phone",
            "title": r.phone_masked,
            "status": r.status,
            "reason": r.reason,
        }
        for r in rows
    }


ENRICHERS = {"conversation": conversations, "call": calls, "callback": callbacks}
