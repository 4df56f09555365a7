"""The contact registry: one resident, many addresses (WeChat, Telegram, app, phone).

An agent links contacts they know to be one person; from then on the agent sees one
history (every conversation and ticket of every linked contact) and the bot's "my
tickets" answers across channels. Phone numbers are personal data: the contact keeps
the keyed blind index as its id and the number only encrypted.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from channels.models import contact_t, conversation_t, resident_t
from ticketing.handlers import Deps, InvalidRequest, mask_phone, ticket_t
from ticketing.intake import normalise_phone

PHONE = "phone"


class ContactNotFound(Exception):
    pass


def _iso(dt: datetime | None) -> str | None:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z") if dt else None


def contact_view(deps: Deps, r: Any) -> dict[str, Any]:
    m = r._mapping if hasattr(r, "_mapping") else r
    ident = m["external_id"]
    if m["channel"] == PHONE:
        plain = deps.cipher.decrypt(m["address_enc"]) if m["address_enc"] else None
        ident = mask_phone(plain) if plain else "***"
    return {
        "id": m["id"],
        "channel": m["channel"],
        "address": ident,
        "display_name": m["display_name"],
        "resident_id": m["resident_id"],
        "subscribed": m["subscribed"],
        "created_at": _iso(m["created_at"]),
    }


async def load_contact(conn: AsyncConnection, contact_id: int) -> Any:
    row = (await conn.execute(sa.select(contact_t).where(contact_t.c.id == contact_id))).first()
    if row is None:
        raise ContactNotFound(contact_id)
    return row


async def phone_contact(deps: Deps, conn: AsyncConnection, raw_phone: str) -> int:
    """The contact for a phone number (created if new): what the telephony side and
    an agent's "this is also +86 138..." both use."""
    e164 = normalise_phone(raw_phone)
    bidx = deps.cipher.blind_index(e164)
    row = {
        "channel": PHONE,
        "external_id": bidx,
        "address_enc": deps.cipher.encrypt(e164),
        "display_name": None,
        "resident_id": None,
        "subscribed": True,
        "created_at": deps.clock(),
    }
    await conn.execute(deps.db.insert_ignore(contact_t, [row]))
    found = await conn.execute(
        sa.select(contact_t.c.id).where(
            contact_t.c.channel == PHONE, contact_t.c.external_id == bidx
        )
    )
    return int(found.scalar_one())


async def link(
    deps: Deps, contact_ids: list[int], phone: str | None = None, display_name: str | None = None
) -> dict[str, Any]:
    """Make the contacts (and the phone number, if given) one resident.

    Residents already behind any of them are merged into the oldest one, so linking
    is associative: linking A-B then B-C gives the same resident as A-B-C.
    """
    ids = list(dict.fromkeys(contact_ids))
    if not ids and not phone:
        raise InvalidRequest("name at least one contact", "contact_ids")
    if len(ids) > 50:
        raise InvalidRequest("at most 50 contacts at once", "contact_ids")
    now = deps.clock()
    c = contact_t.c
    async with deps.db.write() as conn:
        if phone:
            ids.append(await phone_contact(deps, conn, phone))
        q = sa.select(contact_t).where(c.id.in_(ids)).order_by(c.id)
        if not deps.db.is_sqlite:
            q = q.with_for_update()
        rows = (await conn.execute(q)).all()
        missing = set(ids) - {r.id for r in rows}
        if missing:
            raise ContactNotFound(sorted(missing)[0])
        residents = sorted({r.resident_id for r in rows if r.resident_id is not None})
        if residents:
            keep = residents[0]
            if len(residents) > 1:
                await conn.execute(
                    sa.update(contact_t)
                    .where(c.resident_id.in_(residents[1:]))
                    .values(resident_id=keep)
                )
                await conn.execute(sa.delete(resident_t).where(resident_t.c.id.in_(residents[1:])))
        else:
            res = await conn.execute(
                sa.insert(resident_t)
                .values(display_name=display_name, citizen_ref=None, created_at=now)
                .returning(resident_t.c.id)
            )
            keep = int(res.scalar_one())
        await conn.execute(sa.update(contact_t).where(c.id.in_(ids)).values(resident_id=keep))
        if display_name:
            await conn.execute(
                sa.update(resident_t)
                .where(resident_t.c.id == keep)
                .values(display_name=display_name)
            )
        return await resident_view(deps, conn, keep)


async def resident_view(deps: Deps, conn: AsyncConnection, resident_id: int) -> dict[str, Any]:
    res = (await conn.execute(sa.select(resident_t).where(resident_t.c.id == resident_id))).first()
    contacts = await conn.execute(
        sa.select(contact_t).where(contact_t.c.resident_id == resident_id).order_by(contact_t.c.id)
    )
    return {
        "id": resident_id,
        "display_name": res.display_name if res else None,
        "contacts": [contact_view(deps, r) for r in contacts],
    }


async def same_person(conn: AsyncConnection, contact_id: int) -> list[Any]:
    """The contact and every contact linked with it."""
    row = await load_contact(conn, contact_id)
    if row.resident_id is None:
        return [row]
    rows = await conn.execute(
        sa.select(contact_t)
        .where(contact_t.c.resident_id == row.resident_id)
        .order_by(contact_t.c.id)
    )
    return list(rows)


async def ticket_numbers(conn: AsyncConnection, contacts: list[Any], limit: int = 50) -> list[str]:
    """The person's tickets, newest first: from their conversations and, for linked
    phone numbers, tickets that carry the same number (calls to 12345)."""
    ids = [r.id for r in contacts]
    conv_numbers = sa.select(conversation_t.c.ticket_number).where(
        conversation_t.c.contact_id.in_(ids), conversation_t.c.ticket_number.is_not(None)
    )
    conds = [ticket_t.c.number.in_(conv_numbers)]
    phones = [r.external_id for r in contacts if r.channel == PHONE]
    if phones:
        conds.append(ticket_t.c.contact_phone_bidx.in_(phones))
    rows = await conn.execute(
        sa.select(ticket_t.c.number)
        .where(sa.or_(*conds))
        .order_by(ticket_t.c.created_at.desc())
        .limit(limit)
    )
    return [r.number for r in rows]


async def history(deps: Deps, contact_id: int) -> dict[str, Any]:
    """What an agent sees about whoever wrote: linked contacts, conversations, tickets."""
    from channels.conversations import conversation_summary  # one-way: avoids a cycle

    async with deps.db.read() as conn:
        people = await same_person(conn, contact_id)
        ids = [r.id for r in people]
        convs = await conn.execute(
            sa.select(conversation_t)
            .where(conversation_t.c.contact_id.in_(ids))
            .order_by(conversation_t.c.last_message_at.desc())
            .limit(100)
        )
        conv_views = [conversation_summary(r) for r in convs]
        numbers = await ticket_numbers(conn, people)
        tickets = []
        if numbers:
            rows = await conn.execute(
                sa.select(
                    ticket_t.c.number,
                    ticket_t.c.title,
                    ticket_t.c.status,
                    ticket_t.c.channel,
                    ticket_t.c.created_at,
                )
                .where(ticket_t.c.number.in_(numbers))
                .order_by(ticket_t.c.created_at.desc())
            )
            tickets = [
                {
                    "number": r.number,
                    "title": r.title,
                    "status": r.status,
                    "channel": r.channel,
                    "created_at": _iso(r.created_at),
                }
                for r in rows
            ]
    first = people[0]
    return {
        "contact": contact_view(deps, next(p for p in people if p.id == contact_id)),
        "resident_id": first.resident_id,
        "linked_contacts": [contact_view(deps, p) for p in people if p.id != contact_id],
        "conversations": conv_views,
        "tickets": tickets,
    }
