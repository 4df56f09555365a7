"""The resident's notification feed: written by the app's ChannelSender, read by
polling (cursor = the feed's sequence number) or as Server-Sent Events.

The hub's outbox hands every reply and ticket update for channel "app" to
`AppSender.send`, which stores it as the account's next notification. Numbers are
taken under the account's row lock, so they commit in order: a reader who has seen
N and asks for "after N" never misses one (the SSE `id` is that number, so
`Last-Event-ID` resumes exactly). The outbox delivers at least once; the
notification remembers which outbox row it delivered, and a redelivery of that row
adds nothing. Waking readers is the bus's job (`app.notification`, across
instances); the database stays the truth, and a stream also re-reads on every
heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import sqlalchemy as sa
from aiohttp import web

from channels.app import const
from channels.app.models import account_t, notification_t
from channels.models import outbox_t
from channels.outbox import DeliveryError
from ticketing.events import DomainEvent, register_event
from ticketing.handlers import Deps

log = logging.getLogger(__name__)
RECIPIENT_RE = re.compile(r"^a([0-9]{1,18})(?:/([0-9]{13,16}))?$")


@register_event
@dataclass(frozen=True)
class AppNotified(DomainEvent):
    """A resident's feed has a new entry: open streams (on any instance) read it."""

    name: ClassVar[str] = "app.notification"
    account_id: int
    seq: int


def account_of(recipient: str) -> int | None:
    """The account behind an app contact id (`a12`, or `a12/<ticket>` for a ticket's thread)."""
    m = RECIPIENT_RE.match(recipient)
    return int(m.group(1)) if m else None


def thread_ticket(recipient: str) -> str | None:
    """The ticket a thread's contact id names (`a12/<ticket>`), if any."""
    m = RECIPIENT_RE.match(recipient)
    return m.group(2) if m else None


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def notification_view(r: Any) -> dict[str, Any]:
    """What the resident sees: the text and the ticket it is about, never who on the
    staff wrote it."""
    m = r._mapping if hasattr(r, "_mapping") else r
    payload = m["payload"] or {}
    return {
        "id": m["seq"],
        "kind": m["kind"],
        "text": m["text"],
        "ticket": m["ticket_number"],
        "status": m["status"],
        "status_text": payload.get("status_text"),
        "at": _iso(m["created_at"]),
    }


class Feed:
    """Stores notifications and wakes the streams waiting for them."""

    def __init__(self, deps: Deps, heartbeat_s: float = const.SSE_HEARTBEAT_S) -> None:
        self.deps = deps
        self.heartbeat_s = heartbeat_s
        self._waiters: dict[int, set[asyncio.Event]] = {}
        self._unsubscribe: Callable[[], None] | None = None
        self.closing = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.closing = False
        self._unsubscribe = self.deps.bus.subscribe(self._on_event)

    async def stop(self) -> None:
        self.closing = True
        if self._unsubscribe:
            self._unsubscribe()
            self._unsubscribe = None
        for events in self._waiters.values():
            for ev in events:
                ev.set()

    async def _on_event(self, ev: DomainEvent) -> None:
        if isinstance(ev, AppNotified):
            self.wake(ev.account_id)

    def wake(self, account_id: int) -> None:
        for ev in self._waiters.get(account_id, ()):
            ev.set()

    @contextlib.contextmanager
    def listening(self, account_id: int) -> Any:
        ev = asyncio.Event()
        self._waiters.setdefault(account_id, set()).add(ev)
        try:
            yield ev
        finally:
            waiters = self._waiters.get(account_id)
            if waiters is not None:
                waiters.discard(ev)
                if not waiters:
                    del self._waiters[account_id]

    # ------------------------------------------------------------------ writing

    async def store(
        self, recipient: str, payload: dict[str, Any], *, outbox_id: int | None = None
    ) -> int | None:
        """The next notification of the recipient's account; None when it was stored
        before (an outbox redelivery). DeliveryError(permanent) for an unknown account."""
        account_id = account_of(recipient)
        if account_id is None:
            raise DeliveryError(f"not an app recipient: {recipient[:40]!r}", permanent=True)
        text = str(payload.get("text") or "")
        kind = "ticket_update" if payload.get("type") == "ticket_update" else "message"
        now = self.deps.clock()
        a = account_t.c
        async with self.deps.db.write() as conn:
            q = sa.select(a.feed_seq).where(a.id == account_id)
            if not self.deps.db.is_sqlite:
                q = q.with_for_update()
            seq = (await conn.execute(q)).scalar_one_or_none()
            if seq is None:
                raise DeliveryError(f"no app account {account_id}", permanent=True)
            if outbox_id is None:
                found, again = await self._outbox_row(conn, recipient, payload)
                if again:
                    return None
                outbox_id = found
            elif (
                await conn.execute(
                    sa.select(notification_t.c.seq).where(notification_t.c.outbox_id == outbox_id)
                )
            ).first() is not None:
                return None
            seq += 1
            await conn.execute(
                sa.insert(notification_t).values(
                    account_id=account_id,
                    seq=seq,
                    kind=kind,
                    ticket_number=payload.get("number") or thread_ticket(recipient),
                    status=payload.get("status"),
                    text=text,
                    payload=payload,
                    outbox_id=outbox_id,
                    created_at=now,
                )
            )
            await conn.execute(sa.update(account_t).where(a.id == account_id).values(feed_seq=seq))
        try:
            await self.deps.bus.publish(AppNotified(account_id, seq))
        except Exception:  # liveness only: streams re-read on their heartbeat anyway
            log.exception("could not announce app notification %s/%s", account_id, seq)
        return seq

    async def _outbox_row(
        self, conn: Any, recipient: str, payload: dict[str, Any]
    ) -> tuple[int | None, bool]:
        """(the outbox row being delivered, whether it was delivered before).

        The sender protocol passes only (recipient, payload): the row is the oldest
        pending one for this recipient with this payload that no notification holds
        yet. All of them held already means this is a redelivery."""
        o = outbox_t.c
        rows = (
            await conn.execute(
                sa.select(o.id, o.payload)
                .where(o.channel == const.CHANNEL, o.recipient == recipient, o.state == "pending")
                .order_by(o.id)
                .limit(200)
            )
        ).all()
        same = [r.id for r in rows if r.payload == payload]
        if not same:
            return None, False
        held = set(
            (
                await conn.execute(
                    sa.select(notification_t.c.outbox_id).where(
                        notification_t.c.outbox_id.in_(same)
                    )
                )
            )
            .scalars()
            .all()
        )
        free = [i for i in same if i not in held]
        return (free[0], False) if free else (None, True)

    # ------------------------------------------------------------------ reading

    async def page(self, account_id: int, after: int, limit: int) -> list[dict[str, Any]]:
        n = notification_t.c
        async with self.deps.db.read() as conn:
            rows = await conn.execute(
                sa.select(notification_t)
                .where(n.account_id == account_id, n.seq > after)
                .order_by(n.seq)
                .limit(limit)
            )
            return [notification_view(r) for r in rows]

    async def stream(
        self,
        request: web.Request,
        account_id: int,
        after: int,
        still_signed_in: Callable[[], Awaitable[bool]],
    ) -> web.StreamResponse:
        """Server-Sent Events: the backlog after `after`, then each new entry as it
        comes; a comment line every `self.heartbeat_s` keeps proxies from closing the
        connection, and the stream ends when the token stops being valid."""
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache, no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(request)
        cursor = after
        try:
            await resp.write(b"retry: 3000\n\n")
            with self.listening(account_id) as woken:
                while not self.closing:
                    woken.clear()  # before reading: a wake-up during the read is kept
                    items = await self.page(account_id, cursor, const.FEED_PAGE)
                    for item in items:
                        await resp.write(sse_event(item))
                        cursor = item["id"]
                    if len(items) == const.FEED_PAGE:
                        continue
                    try:
                        await asyncio.wait_for(woken.wait(), self.heartbeat_s)
                    except TimeoutError:
                        if not await still_signed_in():
                            break
                        await resp.write(b": heartbeat\n\n")
        except ConnectionResetError:
            pass  # the app went away: nothing to clean up
        return resp


def sse_event(item: dict[str, Any]) -> bytes:
    data = json.dumps(item, ensure_ascii=False, separators=(",", ":"))
    return f"id: {item['id']}\nevent: notification\ndata: {data}\n\n".encode()


class AppSender:
    """The hub's sender for channel "app": delivery is storing into the feed."""

    channel = const.CHANNEL

    def __init__(self, feed: Feed) -> None:
        self.feed = feed

    async def start(self) -> None:
        await self.feed.start()

    async def stop(self) -> None:
        await self.feed.stop()

    async def send(self, recipient: str, payload: dict[str, Any]) -> None:
        try:
            await self.feed.store(recipient, payload)
        except DeliveryError:
            raise
        except Exception as exc:  # the database: the outbox retries with backoff
            raise DeliveryError(f"feed not written: {type(exc).__name__}") from exc
