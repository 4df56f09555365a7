"""Ticket intake with group commit.

Every new ticket must be on disk before its 201 goes out, but one commit per
ticket through the ORM tops out near a thousand a second. So request tasks do all
per-ticket work (validation, deadlines, encryption) themselves and hand a ready
row to one writer task, which takes whatever has queued up, numbers it, writes
tickets, first audit events, queue items and idempotency records in one
transaction, commits, and only then wakes the waiting requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import phonenumbers
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ticketing import workqueue
from ticketing.audit import GENESIS
from ticketing.deadlines import Urgency, due_at
from ticketing.events import TicketCreated
from ticketing.handlers import (
    URGENCY_PRIORITY,
    Deps,
    InvalidRequest,
    announce,
    chain_event,
    event_t,
    limits_for,
    ticket_t,
    ticket_view,
)
from ticketing.lifecycle import Kind, Status
from ticketing.models import IdempotencyRecord
from ticketing.ports import Principal

log = logging.getLogger(__name__)
idem_t = IdempotencyRecord.__table__  # type: ignore[attr-defined]
work_t = workqueue.work_item

CHANNELS = frozenset({"phone", "wechat", "telegram", "app", "web", "open311", "email", "walk_in"})
MAX_BATCH = 256


@dataclass(frozen=True)
class NewTicket:
    kind: str
    title: str
    description: str
    channel: str
    principal: Principal
    category: str | None = None
    urgency: str | None = None
    contact_name: str | None = None
    contact_phone: str | None = None
    contact_ids: dict[str, str] = field(default_factory=dict)
    address: str | None = None
    district: str | None = None
    lat: float | None = None
    lon: float | None = None


@dataclass(frozen=True)
class IdempotencySpec:
    principal: str
    key: str
    request_hash: str


@dataclass
class _Pending:
    row: dict[str, Any]
    principal: Principal
    idem: IdempotencySpec | None
    future: asyncio.Future[dict[str, Any]]


def normalise_phone(raw: str) -> str:
    """E.164 inside; residents type 138 1234 5678, 0755-12345678 or +86..."""
    try:
        num = phonenumbers.parse(raw, "CN")
    except phonenumbers.NumberParseException as exc:
        raise InvalidRequest(f"not a phone number: {exc}", "contact.phone") from None
    if not phonenumbers.is_valid_number(num):
        raise InvalidRequest("not a valid phone number", "contact.phone")
    return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)


def prepare(deps: Deps, cmd: NewTicket, now: datetime) -> dict[str, Any]:
    """All per-ticket work that needs no database: done in the request's own task."""
    try:
        Kind(cmd.kind)
    except ValueError:
        raise InvalidRequest(
            f"kind must be one of {', '.join(k.value for k in Kind)}", "kind"
        ) from None
    if cmd.channel not in CHANNELS:
        raise InvalidRequest(f"channel must be one of {', '.join(sorted(CHANNELS))}", "channel")
    cat = None
    if cmd.category is not None:
        cat = deps.catalog.category(cmd.category)
        if cat is None:
            raise InvalidRequest(f"unknown category {cmd.category!r}", "category")
    if cmd.urgency is not None:
        try:
            urgency = Urgency(cmd.urgency)
        except ValueError:
            raise InvalidRequest(
                f"urgency must be one of {', '.join(u.value for u in Urgency)}", "urgency"
            ) from None
    else:
        urgency = Urgency(cat["urgency"]) if cat else Urgency.NORMAL
    dispatch, _ = limits_for(deps, cmd.category, urgency)
    phone = normalise_phone(cmd.contact_phone) if cmd.contact_phone else None
    return {
        "kind": cmd.kind,
        "title": cmd.title,
        "description": cmd.description,
        "category_code": cmd.category,
        "channel": cmd.channel,
        "urgency": urgency.value,
        "priority": URGENCY_PRIORITY[urgency],
        "status": Status.NEW.value,
        "lead_department": None,
        "assist_departments": [],
        "contact_name": cmd.contact_name,
        "contact_phone_enc": deps.cipher.encrypt(phone) if phone else None,
        "contact_phone_bidx": deps.cipher.blind_index(phone) if phone else None,
        "contact_ids": dict(cmd.contact_ids),
        "address": cmd.address,
        "district": cmd.district,
        "lat": cmd.lat,
        "lon": cmd.lon,
        "created_by": cmd.principal.username,
        "created_at": now,
        "updated_at": now,
        "dispatch_due_at": due_at(now, dispatch, deps.calendar, deps.tz),
        "version": 1,
    }


class Intake:
    """The single writer for new tickets (one per service instance)."""

    def __init__(self, deps: Deps, *, max_batch: int = MAX_BATCH) -> None:
        self.deps = deps
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0  # for the benchmark's report
        self._publishing: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ticket-intake-writer")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._queue.empty():
            p = self._queue.get_nowait()
            if not p.future.done():
                p.future.set_exception(RuntimeError("service shutting down"))

    async def create(self, cmd: NewTicket, idem: IdempotencySpec | None = None) -> dict[str, Any]:
        """Returns the stored ticket's view once its transaction has committed."""
        if self._task is None:
            raise RuntimeError("intake not started")
        row = prepare(self.deps, cmd, self.deps.clock())
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(row, cmd.principal, idem, fut))
        return await fut

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit_isolating(batch)
            except Exception:  # never let the writer die
                log.exception("intake writer failed on a batch of %d", len(batch))

    async def _commit_isolating(self, batch: list[_Pending]) -> None:
        try:
            done = await self._commit(batch)
        except Exception as exc:
            if len(batch) == 1:
                if not batch[0].future.done():
                    batch[0].future.set_exception(exc)
                return
            # one bad row must not fail its neighbours: retry halves
            mid = len(batch) // 2
            await self._commit_isolating(batch[:mid])
            await self._commit_isolating(batch[mid:])
            return
        self.batches += 1
        for p, view in done:
            if not p.future.done():
                p.future.set_result(view)
        # the bus may be a network hop (NOTIFY): never hold the next batch for it
        task = asyncio.create_task(self._publish([p.row for p, _ in done]))  # noqa: RUF006
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish(self, rows: list[dict[str, Any]]) -> None:
        events = [
            TicketCreated(r["number"], r["kind"], r["channel"], r["category_code"], r["urgency"])
            for r in rows
        ]
        try:
            await announce(self.deps, events)
        except Exception:
            log.exception("could not publish ticket.created for %d tickets", len(rows))

    async def _commit(self, batch: list[_Pending]) -> list[tuple[_Pending, dict[str, Any]]]:
        deps = self.deps
        async with deps.db.write() as conn:
            by_day: dict[str, list[_Pending]] = defaultdict(list)
            for p in batch:
                by_day[p.row["created_at"].astimezone(deps.tz).strftime("%Y%m%d")].append(p)
            for day, items in by_day.items():
                last = await _allocate(conn, day, len(items))
                for i, p in enumerate(items):
                    p.row["number"] = format_number(day, last - len(items) + 1 + i)
            tickets, events, works, idems, out = [], [], [], [], []
            for p in batch:
                r = p.row
                ev = chain_event(
                    r["number"],
                    1,
                    GENESIS,
                    r["created_at"],
                    p.principal,
                    "create",
                    None,
                    Status.NEW.value,
                    {
                        "channel": r["channel"],
                        "kind": r["kind"],
                        "category": r["category_code"],
                        "urgency": r["urgency"],
                    },
                )
                r["event_seq"], r["last_hash"] = 1, ev["hash"]
                tickets.append(r)
                events.append(ev)
                need = workqueue.ticket_need(Status.NEW, None, r["dispatch_due_at"], None)
                assert need is not None
                works.append(
                    workqueue.ticket_item_row(r["number"], need, r["priority"], r["created_at"])
                )
            await conn.execute(sa.insert(ticket_t), tickets)
            ids = await conn.execute(
                sa.select(ticket_t.c.number, ticket_t.c.id).where(
                    ticket_t.c.number.in_([t["number"] for t in tickets])
                )
            )
            id_by_number = {n: i for n, i in ids}
            for p in batch:
                p.row["id"] = id_by_number[p.row["number"]]
                view = ticket_view(deps, _RowView(p.row), p.principal)
                out.append((p, view))
                if p.idem:
                    idems.append(
                        {
                            "principal": p.idem.principal,
                            "key": p.idem.key,
                            "request_hash": p.idem.request_hash,
                            "status": 201,
                            "body": json.dumps(view, ensure_ascii=False),
                            "created_at": p.row["created_at"],
                        }
                    )
            await conn.execute(sa.insert(event_t), events)
            await conn.execute(sa.insert(work_t), works)
            if idems:
                await conn.execute(sa.insert(idem_t), idems)
        return out


class _RowView:
    """Attribute access over a dict, so the view code reads rows and dicts alike."""

    __slots__ = ("_d",)

    def __init__(self, d: dict[str, Any]) -> None:
        self._d = d

    def __getattr__(self, name: str) -> Any:
        try:
            return self._d[name]
        except KeyError:
            return _ROW_DEFAULTS.get(name)


_ROW_DEFAULTS: dict[str, Any] = {"supervision_count": 0, "reopen_count": 0}


def format_number(day: str, seq: int) -> str:
    """YYYYMMDD + 5 digits (wider past 99,999 a day): digits only, read aloud easily."""
    return f"{day}{seq:05d}"


async def _allocate(conn: AsyncConnection, day: str, n: int) -> int:
    """Reserve n numbers for `day`; returns the last one (same SQL on both backends)."""
    res = await conn.execute(
        sa.text(
            "INSERT INTO ticket_counter (day, value) VALUES (:day, :n) "
            "ON CONFLICT (day) DO UPDATE SET value = ticket_counter.value + :n "
            "RETURNING value"
        ),
        {"day": day, "n": n},
    )
    return int(res.scalar_one())
