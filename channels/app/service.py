"""What a signed-in resident does in the app: report, follow their tickets, write, rate.

Plain async functions over the store, the ticket intake and the channel hub; no
HTTP (routes.py turns `AppError` into problem+json).

Every ticket a resident follows in the app has its own thread: a contact
`a<account>/<ticket number>` in the channels' registry, linked to the resident's
phone contact (so agents see one history). Its conversation is linked to the ticket,
so the agent reads the resident's follow-ups in it, the ticket's trail records them,
and the ticket's status changes reach the app's feed. One thread per ticket because
a conversation belongs to one ticket and a contact has one open conversation at a time.

A report is several steps (ticket, photos, thread); each is idempotent and the
Idempotency-Key's record says which request it was, so a retry after a crash
resumes where the first attempt stopped and answers the same ticket.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from channels import bot
from channels import conversations as conv_mod
from channels.app import const
from channels.app.accounts import ResidentPrincipal, SignIn
from channels.app.models import rating_t, request_t
from channels.app.photos import Photo
from channels.contacts import same_person
from channels.hub import ChannelHub
from channels.message import InboundMessage, Kind, Location
from channels.models import contact_t, conversation_t
from ticketing.handlers import (
    ConcurrentUpdate,
    Deps,
    InvalidRequest,
    MoveTicket,
    TicketNotFound,
    add_attachment,
    append_trail_event,
    attachment_t,
    decode_cursor,
    encode_cursor,
    event_t,
    move_ticket,
    ticket_t,
)
from ticketing.intake import IdempotencySpec, Intake, NewTicket
from ticketing.lifecycle import Action, IllegalMove, Satisfaction, Status
from ticketing.models import IdempotencyRecord

idem_t = IdempotencyRecord.__table__  # type: ignore[attr-defined]

SATISFACTION_BY_RATING: dict[int, Satisfaction] = {
    3: Satisfaction.SATISFIED,  # 满意
    2: Satisfaction.BASIC,  # 基本满意
    1: Satisfaction.UNSATISFIED,  # 不满意
}
RATEABLE = frozenset({Status.REPLIED.value, Status.CLOSED.value, Status.ANSWERED.value})


class AppError(Exception):
    """A request the app API refuses: `slug` is the problem type."""

    def __init__(self, slug: str, detail: str, field: str | None = None, **ext: Any) -> None:
        super().__init__(detail)
        self.slug = slug
        self.detail = detail
        self.field = field
        self.ext = ext


@dataclass(frozen=True)
class Report:
    """A validated report, ready to become a ticket."""

    description: str
    kind: str
    category: str | None
    address: str | None
    lat: float | None
    lon: float | None
    photos: tuple[Photo, ...]
    lang: str = "zh"

    def request_hash(self) -> str:
        """What makes two requests with one Idempotency-Key "the same request"."""
        canon = {
            "description": self.description,
            "kind": self.kind,
            "category": self.category,
            "address": self.address,
            "lat": self.lat,
            "lon": self.lon,
            "photos": [p.sha256 for p in self.photos],
        }
        raw = json.dumps(canon, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(b"report\n" + raw.encode()).hexdigest()


def _iso(dt: datetime | None) -> str | None:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z") if dt else None


def _key_ref(account_id: int, key: str) -> str:
    """A short, fixed-length stand-in for an Idempotency-Key in channel message ids."""
    return hashlib.sha256(f"{account_id}\n{key}".encode()).hexdigest()[:32]


def _title(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first[:30] + ("…" if len(first) > 30 else "")


def _store_blob(root: Path, sha: str, data: bytes) -> None:
    """Content-addressed like the staff uploads (temp name, then rename: never half a file)."""
    final = root / sha[:2] / sha
    if final.exists():
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{sha}.{uuid.uuid4().hex}")
    tmp.write_bytes(data)
    os.replace(tmp, final)


class AppService:
    def __init__(
        self,
        deps: Deps,
        hub: ChannelHub,
        intake: Intake,
        signin: SignIn,
        attachment_dir: Path,
        *,
        stale_s: float = const.IN_FLIGHT_STALE_S,
    ) -> None:
        self.deps = deps
        self.hub = hub
        self.intake = intake
        self.signin = signin
        self.attachment_dir = Path(attachment_dir)
        self.stale_s = stale_s
        self._inflight: set[tuple[int, str]] = set()

    # ------------------------------------------------------------------ idempotency

    async def idempotent(
        self,
        who: ResidentPrincipal,
        key: str,
        request_hash: str,
        work: Callable[[], Awaitable[tuple[int, dict[str, Any], str | None]]],
    ) -> tuple[int, dict[str, Any], bool]:
        """(status, body, replayed). The first answer to (account, key) is kept and
        replayed; another body under the same key is refused (422), and so is the key
        while its first request still runs (409). `work` must be safe to run again
        after a crash part-way (it is, on a stale pending record)."""
        ident = (who.account_id, key)
        if ident in self._inflight:
            raise AppError("idempotency-in-progress", "the first request is still running")
        self._inflight.add(ident)
        try:
            now = self.deps.clock()
            r = request_t.c
            where = sa.and_(r.account_id == who.account_id, r.key == key)
            async with self.deps.db.write() as conn:
                inserted = (
                    await conn.execute(
                        self.deps.db.insert_ignore(
                            request_t,
                            [
                                {
                                    "account_id": who.account_id,
                                    "key": key,
                                    "request_hash": request_hash,
                                    "state": "pending",
                                    "ticket_number": None,
                                    "status": None,
                                    "response": None,
                                    "created_at": now,
                                    "updated_at": now,
                                }
                            ],
                        ).returning(r.key)
                    )
                ).first() is not None
                row = (await conn.execute(sa.select(request_t).where(where))).one()
                if row.request_hash != request_hash:
                    raise AppError(
                        "idempotency-key-reuse", "send a new Idempotency-Key for a new request"
                    )
                if row.state == "done":
                    return int(row.status or 200), json.loads(row.response or "null"), True
                if not inserted and now - row.updated_at < timedelta(seconds=self.stale_s):
                    raise AppError("idempotency-in-progress", "the first request is still running")
                # ours, or a stale attempt (a crash part-way): (re)run it, every step is
                # idempotent; claim it by moving updated_at so another instance waits
                await conn.execute(sa.update(request_t).where(where).values(updated_at=now))
            try:
                status, body, number = await work()
            except AppError:
                # refused before anything durable (validation): the key may be used again
                async with self.deps.db.write() as conn:
                    await conn.execute(sa.delete(request_t).where(where, r.state == "pending"))
                raise
            except BaseException:
                # part-way: the next retry resumes at once (no wait for staleness)
                async with self.deps.db.write() as conn:
                    await conn.execute(
                        sa.update(request_t)
                        .where(where, r.state == "pending")
                        .values(updated_at=now - timedelta(seconds=self.stale_s + 1))
                    )
                raise
            async with self.deps.db.write() as conn:
                await conn.execute(
                    sa.update(request_t)
                    .where(where)
                    .values(
                        state="done",
                        status=status,
                        ticket_number=number,
                        response=json.dumps(body, ensure_ascii=False),
                        updated_at=self.deps.clock(),
                    )
                )
            return status, body, False
        finally:
            self._inflight.discard(ident)

    # ------------------------------------------------------------------ reports

    async def create_report(
        self, who: ResidentPrincipal, key: str, report: Report
    ) -> tuple[int, dict[str, Any], bool]:
        if report.category is not None and self.deps.catalog.category(report.category) is None:
            raise AppError("validation-error", f"unknown category {report.category!r}", "category")
        digest = report.request_hash()

        async def work() -> tuple[int, dict[str, Any], str | None]:
            number, lines = await self._report_steps(who, key, digest, report)
            body = await self.ticket_view(who, number)
            body["emergency_lines"] = list(lines)
            return 201, body, number

        return await self.idempotent(who, key, digest, work)

    async def _report_steps(
        self, who: ResidentPrincipal, key: str, digest: str, report: Report
    ) -> tuple[str, tuple[str, ...]]:
        actor = who.actor
        # 1. the ticket, with the key's record in its own transaction (found on a retry)
        async with self.deps.db.read() as conn:
            stored = (
                await conn.execute(
                    sa.select(idem_t.c.body).where(
                        idem_t.c.principal == actor.username, idem_t.c.key == key
                    )
                )
            ).scalar_one_or_none()
        if stored is not None:
            number = json.loads(stored)["number"]
        else:
            emergency = bool(self.hub.config.rules.find(report.description))
            try:
                view = await self.intake.create(
                    NewTicket(
                        kind=report.kind,
                        title=_title(report.description),
                        description=report.description,
                        channel=const.CHANNEL,
                        principal=actor,
                        category=report.category,
                        urgency="emergency" if emergency else None,
                        contact_phone=await self.signin.phone_of(who.account_id),
                        contact_ids={const.CHANNEL: who.thread_prefix},
                        address=report.address,
                        lat=report.lat,
                        lon=report.lon,
                    ),
                    IdempotencySpec(actor.username, key, digest),
                )
            except InvalidRequest as exc:
                raise AppError("validation-error", str(exc), exc.field) from None
            number = view["number"]
        # 2. the photos (content-addressed files; one attachment per content)
        for photo in report.photos:
            await asyncio.to_thread(_store_blob, self.attachment_dir, photo.sha256, photo.data)
            await add_attachment(
                self.deps,
                number,
                actor,
                filename=photo.filename,
                content_type=photo.content_type,
                size=photo.size,
                sha256=photo.sha256,
                storage_key=f"{photo.sha256[:2]}/{photo.sha256}",
            )
        # 3. the ticket's thread: the report as the resident's first message
        ref = _key_ref(who.account_id, key)
        receipt = await self.hub.receive(
            InboundMessage(
                channel=const.CHANNEL,
                sender_id=self._thread(who, number),
                external_id=f"{ref}:report",
                kind=Kind.TEXT,
                sent_at=self.deps.clock(),
                text=report.description,
                media=(),
                location=(
                    Location(report.lat, report.lon, report.address)
                    if report.lat is not None and report.lon is not None
                    else None
                ),
                lang=report.lang,
                data={"ticket": number, "photos": [p.sha256 for p in report.photos]},
            )
        )
        await self._link(who, receipt.conversation_id, number)
        return number, receipt.emergency_lines

    def _thread(self, who: ResidentPrincipal, number: str) -> str:
        return f"{who.thread_prefix}/{number}"

    async def _link(self, who: ResidentPrincipal, conv_id: int, number: str) -> None:
        """The thread's conversation onto the ticket; the thread's contact onto the
        resident (phone contact): both skipped when already done."""
        row = await conv_mod.get_conversation_row(self.deps, conv_id)
        if row.ticket_number != number:
            await conv_mod.link_ticket(self.deps, conv_id, number, who.actor, by_bot=True)
        async with self.deps.db.read() as conn:
            contact = (
                await conn.execute(
                    sa.select(contact_t.c.id, contact_t.c.resident_id).where(
                        contact_t.c.id == row.contact_id
                    )
                )
            ).one()
            phone_resident = None
            if who.contact_id is not None:
                phone_resident = (
                    await conn.execute(
                        sa.select(contact_t.c.resident_id).where(contact_t.c.id == who.contact_id)
                    )
                ).scalar_one_or_none()
        if who.contact_id is not None and (
            contact.resident_id is None or contact.resident_id != phone_resident
        ):
            await self.hub.link_contacts([contact.id, who.contact_id])

    # ------------------------------------------------------------------ reading

    async def _people(self, conn: Any, who: ResidentPrincipal) -> list[Any]:
        if who.contact_id is None:
            return []
        return await same_person(conn, who.contact_id)

    def _mine_clause(self, people: list[Any]) -> Any:
        ids = [p.id for p in people]
        conds = [
            ticket_t.c.number.in_(
                sa.select(conversation_t.c.ticket_number).where(
                    conversation_t.c.contact_id.in_(ids),
                    conversation_t.c.ticket_number.is_not(None),
                )
            )
        ]
        phones = [p.external_id for p in people if p.channel == "phone"]
        if phones:
            conds.append(ticket_t.c.contact_phone_bidx.in_(phones))
        return sa.or_(*conds)

    async def _own_ticket(self, conn: Any, who: ResidentPrincipal, number: str) -> Any:
        """The ticket if it is the resident's; TicketNotFound otherwise (never 403: a
        number is not confirmed to exist)."""
        people = await self._people(conn, who)
        if not people:
            raise TicketNotFound(number)
        row = (
            await conn.execute(
                sa.select(ticket_t).where(ticket_t.c.number == number, self._mine_clause(people))
            )
        ).first()
        if row is None:
            raise TicketNotFound(number)
        return row

    async def my_tickets(
        self, who: ResidentPrincipal, limit: int, cursor: str | None
    ) -> dict[str, Any]:
        c = ticket_t.c
        async with self.deps.db.read() as conn:
            people = await self._people(conn, who)
            if not people:
                return {"items": [], "next_cursor": None}
            q = sa.select(ticket_t).where(self._mine_clause(people))
            if cursor:
                try:
                    at, tid = decode_cursor(cursor)
                except InvalidRequest:
                    raise AppError(
                        "validation-error", "not a cursor from this API", "cursor"
                    ) from None
                q = q.where(sa.or_(c.created_at < at, sa.and_(c.created_at == at, c.id < tid)))
            rows = (
                await conn.execute(q.order_by(c.created_at.desc(), c.id.desc()).limit(limit + 1))
            ).all()
            more = len(rows) > limit
            rows = rows[:limit]
            rated = await self._ratings(conn, [r.number for r in rows])
        return {
            "items": [self._summary(r, rated.get(r.number)) for r in rows],
            "next_cursor": encode_cursor(rows[-1].created_at, rows[-1].id) if more else None,
        }

    async def _ratings(self, conn: Any, numbers: list[str]) -> dict[str, Any]:
        if not numbers:
            return {}
        rows = await conn.execute(sa.select(rating_t).where(rating_t.c.ticket_number.in_(numbers)))
        return {r.ticket_number: r for r in rows}

    def _summary(self, r: Any, rating: Any | None, lang: str = "zh") -> dict[str, Any]:
        return {
            "number": r.number,
            "kind": r.kind,
            "title": r.title,
            "status": r.status,
            "status_text": bot.status_text(r.status, lang),
            "channel": r.channel,
            "created_at": _iso(r.created_at),
            "updated_at": _iso(r.updated_at),
            "can_rate": rating is None and r.status in RATEABLE,
            "rating": None
            if rating is None
            else {"rating": rating.rating, "satisfaction": rating.satisfaction},
        }

    async def ticket_view(self, who: ResidentPrincipal, number: str) -> dict[str, Any]:
        """The public side of the resident's ticket, with its public timeline."""
        async with self.deps.db.read() as conn:
            t = await self._own_ticket(conn, who, number)
            events = (
                await conn.execute(
                    sa.select(event_t)
                    .where(event_t.c.ticket_number == number)
                    .order_by(event_t.c.seq)
                )
            ).all()
            photos = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(attachment_t)
                    .where(
                        attachment_t.c.ticket_number == number,
                        attachment_t.c.uploaded_by == who.actor.username,
                    )
                )
            ).scalar_one()
            rating = (await self._ratings(conn, [number])).get(number)
        cat = self.deps.catalog.categories.get(t.category_code or "")
        view = self._summary(t, rating)
        view.update(
            description=t.description,
            category={"code": t.category_code, "name": cat["name"] if cat else None},
            location={"address": t.address, "lat": t.lat, "lon": t.lon},
            reply=t.reply_text,
            closed_at=_iso(t.closed_at),
            photos=photos,
            timeline=public_timeline(events, self.deps, who.actor.username),
        )
        return view

    # ------------------------------------------------------------------ writing

    async def follow_up(
        self, who: ResidentPrincipal, number: str, text: str, key: str | None, lang: str
    ) -> tuple[int, dict[str, Any], bool]:
        """The resident's message about their ticket: into the ticket's conversation
        (an agent must answer it) and onto the ticket's trail."""
        async with self.deps.db.read() as conn:
            await self._own_ticket(conn, who, number)
        digest = hashlib.sha256(f"message\n{number}\n{text}".encode()).hexdigest()

        async def work() -> tuple[int, dict[str, Any], str | None]:
            ref = _key_ref(who.account_id, key or uuid.uuid4().hex)
            thread = self._thread(who, number)
            conv_id = await self._open_thread(thread)
            if conv_id is None:
                # open the thread's conversation with a silent event and put it on the
                # ticket first, so the message itself lands on the ticket's trail and
                # waits for an agent (linking clears "waiting")
                opened = await self.hub.receive(
                    InboundMessage(
                        channel=const.CHANNEL,
                        sender_id=thread,
                        external_id=f"{ref}:open",
                        kind=Kind.EVENT,
                        sent_at=self.deps.clock(),
                        event="app_thread",
                        lang=lang,
                        data={"ticket": number},
                    )
                )
                conv_id = opened.conversation_id
            await self._link(who, conv_id, number)
            receipt = await self.hub.receive(
                InboundMessage(
                    channel=const.CHANNEL,
                    sender_id=thread,
                    external_id=f"{ref}:message",
                    kind=Kind.TEXT,
                    sent_at=self.deps.clock(),
                    text=text,
                    lang=lang,
                    data={"ticket": number},
                )
            )
            body = {
                "id": receipt.message_id,
                "ticket": number,
                "text": text,
                "replies": list(receipt.replies),
                "emergency_lines": list(receipt.emergency_lines),
            }
            return 201, body, number

        if key is None:
            status, body, _ = await work()
            return status, body, False
        return await self.idempotent(who, key, digest, work)

    async def _open_thread(self, thread: str) -> int | None:
        async with self.deps.db.read() as conn:
            cid = (
                await conn.execute(
                    sa.select(contact_t.c.id).where(
                        contact_t.c.channel == const.CHANNEL, contact_t.c.external_id == thread
                    )
                )
            ).scalar_one_or_none()
            if cid is None:
                return None
            return (
                await conn.execute(
                    sa.select(conversation_t.c.id).where(conversation_t.c.open_key == cid)
                )
            ).scalar_one_or_none()

    async def rate(
        self, who: ResidentPrincipal, number: str, rating: int, comment: str | None
    ) -> dict[str, Any]:
        """Once per ticket, once it has an answer. On a replied ticket the rating is the
        follow-up (回访): satisfied closes it, unsatisfied sends it back for rework; on
        a closed or answered ticket it is recorded on the trail."""
        sat = SATISFACTION_BY_RATING[rating]
        async with self.deps.db.read() as conn:
            t = await self._own_ticket(conn, who, number)
            if (await self._ratings(conn, [number])).get(number) is not None:
                raise AppError("conflict", "this ticket has been rated already")
        if t.status not in RATEABLE:
            raise AppError(
                "illegal-transition",
                "a ticket can be rated once it has an answer",
                status_now=t.status,
            )
        now = self.deps.clock()
        data = {"rating": rating, "satisfaction": sat.value, "channel": const.CHANNEL}
        if comment:
            data["comment"] = comment
        async with self.deps.db.write() as conn:
            await conn.execute(
                sa.insert(rating_t).values(
                    ticket_number=number,
                    account_id=who.account_id,
                    rating=rating,
                    satisfaction=sat.value,
                    comment=comment,
                    created_at=now,
                )
            )
            if t.status != Status.REPLIED.value:
                await append_trail_event(
                    self.deps, conn, number, who.actor, "resident_rating", data
                )
        if t.status == Status.REPLIED.value:
            payload: dict[str, Any] = {"satisfaction": sat.value}
            if comment:
                payload["note"] = comment
            try:
                await move_ticket(
                    self.deps, MoveTicket(number, Action.FOLLOW_UP, who.actor, payload)
                )
            except BaseException as exc:
                async with self.deps.db.write() as conn:
                    await conn.execute(
                        sa.delete(rating_t).where(rating_t.c.ticket_number == number)
                    )
                if isinstance(exc, IllegalMove | ConcurrentUpdate):
                    raise AppError(
                        "illegal-transition", "the ticket changed meanwhile; reload it"
                    ) from None
                raise
        return await self.ticket_view(who, number)


# ---------------------------------------------------------------- the public timeline

_PUBLIC_MOVES = {
    "create": "received",
    "dispatch": "dispatched",
    "sign": "accepted",
    "reply": "replied",
    "answer": "answered",
    "close": "closed",
    "reopen": "reopened",
    "merge": "merged",
}


def public_timeline(events: list[Any], deps: Deps, actor: str) -> list[dict[str, Any]]:
    """The trail as a resident may see it: what happened and when, the department
    that handles it and the answers given; never staff names, notes, reasons,
    internal steps (returns, extensions, supervision) or who looked at their data."""
    out: list[dict[str, Any]] = []
    for e in events:
        data = e.data or {}
        entry: dict[str, Any] = {"at": _iso(e.at), "status": e.to_status}
        if e.action in _PUBLIC_MOVES:
            entry["type"] = _PUBLIC_MOVES[e.action]
            if e.action == "dispatch":
                dept = deps.catalog.departments.get(data.get("lead") or "")
                entry["department"] = dept["name"] if dept else None
            elif e.action == "reply":
                entry["text"] = data.get("reply")
            elif e.action == "answer":
                entry["text"] = data.get("answer")
        elif e.action == "follow_up":
            entry["type"] = "closed" if e.to_status == Status.CLOSED.value else "reopened"
            entry["satisfaction"] = data.get("satisfaction")
        elif e.action == "resident_message":
            entry.update(type="you_wrote", text=data.get("text"))
        elif e.action == "agent_message":
            entry.update(type="hotline_wrote", text=data.get("text"))
        elif e.action == "resident_rating":
            entry.update(type="rated", satisfaction=data.get("satisfaction"))
        elif e.action == "attachment_added" and e.actor == actor:
            entry.update(type="photo_added")
        else:
            continue
        out.append(entry)
    return out
