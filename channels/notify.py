"""Ticket status changes -> a message to the resident on the channel they used.

Subscribed to the bus (`ticket.transitioned`). Every instance may see the same event
(PostgreSQL NOTIFY), so each notification carries a dedupe key made of the ticket,
the trail entry the move wrote and the contact: the outbox's unique constraint lets
exactly one of them through. A closed ticket also closes its conversations, so the
resident's next message opens a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from channels import bot
from channels.conversations import _insert_outbound
from channels.intake import CLOSED
from channels.models import contact_t, conversation_t, outbox_t
from ticketing import workqueue
from ticketing.events import DomainEvent, TicketTransitioned
from ticketing.handlers import Deps, event_t, ticket_t

log = logging.getLogger(__name__)

# what a resident is told about; internal steps (returned, extension asked) are not
NOTIFY_STATUSES = frozenset(
    {"answered", "dispatched", "accepted", "replied", "closed", "reopened", "merged"}
)


def update_text(number: str, status: str, reply: str | None, lang: str) -> str:
    st = bot.status_text(status, lang)
    if lang == "en":
        return f"Ticket {number}: {st}." + (f" Reply: {reply}" if reply else "")
    return f"您的工单 {number} 有新进展：{st}。" + (f"答复：{reply}" if reply else "")


async def notify_transition(deps: Deps, ev: TicketTransitioned) -> int:
    """Queue the resident notifications for one move; returns how many were queued."""
    if ev.to_status not in NOTIFY_STATUSES or ev.from_status == ev.to_status:
        return 0
    now = deps.clock()
    queued = 0
    async with deps.db.write() as conn:
        convs = (
            await conn.execute(
                sa.select(conversation_t)
                .where(conversation_t.c.ticket_number == ev.number)
                .order_by(conversation_t.c.id.desc())
            )
        ).all()
        if not convs:
            return 0
        seq = (
            await conn.execute(
                sa.select(sa.func.max(event_t.c.seq)).where(
                    event_t.c.ticket_number == ev.number,
                    event_t.c.action == ev.action,
                    event_t.c.to_status == ev.to_status,
                )
            )
        ).scalar_one_or_none() or 0
        ticket = (
            await conn.execute(
                sa.select(ticket_t.c.reply_text).where(ticket_t.c.number == ev.number)
            )
        ).first()
        reply = ticket.reply_text if ticket and ev.to_status in ("replied", "answered") else None
        latest: dict[int, Any] = {}
        for c in convs:  # newest first: the conversation a contact used last
            latest.setdefault(c.contact_id, c)
        contacts = {
            r.id: r
            for r in await conn.execute(
                sa.select(contact_t).where(contact_t.c.id.in_(list(latest)))
            )
        }
        for cid, conv in latest.items():
            contact = contacts.get(cid)
            if contact is None or not contact.subscribed:
                continue
            key = f"t:{ev.number}:{seq}:{cid}"
            exists = await conn.execute(
                sa.select(outbox_t.c.id).where(outbox_t.c.dedupe_key == key)
            )
            if exists.first() is not None:
                continue
            text = update_text(ev.number, ev.to_status, reply, conv.lang)
            payload = {
                "type": "ticket_update",
                "number": ev.number,
                "status": ev.to_status,
                "status_text": bot.status_text(ev.to_status, conv.lang),
                "action": ev.action,
                "reply": reply,
                "text": text,
                "lang": conv.lang,
                "at": now.isoformat(),  # when it changed (a template's time field)
            }
            await _insert_outbound(
                conn,
                conv,
                contact,
                [text],
                "system",
                now,
                payload=payload,
                dedupe_key=key,
                data={"ticket": ev.number, "status": ev.to_status},
            )
            queued += 1
        if ev.to_status == CLOSED:
            open_ids = [c.id for c in convs if c.status != CLOSED]
            if open_ids:
                await conn.execute(
                    sa.update(conversation_t)
                    .where(conversation_t.c.id.in_(open_ids))
                    .values(
                        status=CLOSED,
                        open_key=None,
                        waiting=False,
                        waiting_since=None,
                        bot_state=None,
                        closed_at=now,
                        updated_at=now,
                    )
                )
                await conn.execute(
                    workqueue.remove_items(workqueue.CONVERSATION, [str(i) for i in open_ids])
                )
    return queued


class Notifier:
    """Takes transitions off the bus quickly (a queue) and queues notifications in its
    own task, so a slow database never slows the bus's other subscribers."""

    def __init__(self, deps: Deps, wake_outbox: Callable[[], None]) -> None:
        self.deps = deps
        self.wake_outbox = wake_outbox
        self._queue: asyncio.Queue[TicketTransitioned] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None

    async def on_event(self, ev: DomainEvent) -> None:
        if isinstance(ev, TicketTransitioned):
            self._queue.put_nowait(ev)

    async def start(self) -> None:
        self._unsubscribe = self.deps.bus.subscribe(self.on_event)
        self._task = asyncio.create_task(self._run(), name="channel-notifier")

    async def stop(self) -> None:
        if self._unsubscribe:
            self._unsubscribe()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def drain(self) -> None:
        """Return once every transition seen so far is handled (tests, shutdown)."""
        if self._task is not None and not self._task.done():
            await self._queue.join()
            return
        while not self._queue.empty():
            await self._one(self._queue.get_nowait())
            self._queue.task_done()

    async def _run(self) -> None:
        while True:
            ev = await self._queue.get()
            try:
                await self._one(ev)
            finally:
                self._queue.task_done()

    async def _one(self, ev: TicketTransitioned) -> None:
        for attempt in range(3):
            try:
                if await notify_transition(self.deps, ev):
                    self.wake_outbox()
                return
            except IntegrityError:
                return  # another instance queued it first
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not queue the notification for %s", ev.number)
                await asyncio.sleep(0.5 * (attempt + 1))
