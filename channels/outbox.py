"""Outbound delivery: a durable outbox and the task that empties it.

A reply is an outbound message plus an outbox row, written in the transaction that
decided it; this task delivers afterwards through the channel's `ChannelSender`,
retrying with exponential backoff, and writes the outcome on both the row and the
message (so an agent sees "sent" / "failed" on their reply). Rows are claimed with a
lease (`next_attempt_at` moved forward, `FOR UPDATE SKIP LOCKED` on PostgreSQL), so
several instances share the work and a crash mid-send only delays the row until its
lease lapses: delivery is at least once. Pending rows are picked up at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

import sqlalchemy as sa

from channels.models import message_t, outbox_t
from ticketing.store import Database, log_pass_failure

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
MAX_RETRY_AFTER_S = 3600.0  # a flood wait beyond this is taken as this (then asked again)
BACKOFF_START_S = 2.0
BACKOFF_CAP_S = 600.0
LEASE_S = 60.0
NO_SENDER_RETRY_S = 60.0
BATCH = 50


class DeliveryError(Exception):
    """A send failed. `permanent`: retrying cannot help (blocked the account, bad
    recipient); otherwise the outbox retries with backoff. `retry_after`: the channel
    said when to try again (flood control): the outbox waits that long and the try
    does not count against `MAX_ATTEMPTS`, so a long flood wait delays a reply rather
    than failing it."""

    def __init__(
        self, message: str, *, permanent: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


@runtime_checkable
class ChannelSender(Protocol):
    """Delivers one payload to one recipient on one channel.

    Payloads are JSON objects with a `type`:
    - `{"type": "text", "text": ...}`: a reply from an agent or the bot;
    - `{"type": "ticket_update", "number", "status", "status_text", "action",
      "text", "lang"}`: a ticket status change (WeChat renders a template message,
      Telegram and the app a text / feed entry).
    Raise DeliveryError on failure; return normally once the channel accepted it.
    """

    channel: str

    async def send(self, recipient: str, payload: dict[str, Any]) -> None: ...


def backoff(attempts: int) -> float:
    """Seconds before retry number `attempts` (1-based): 2, 4, 8, ... capped at 10 min."""
    return float(min(BACKOFF_CAP_S, BACKOFF_START_S * (2 ** max(0, attempts - 1))))


class OutboxWorker:
    def __init__(
        self,
        db: Database,
        senders: dict[str, ChannelSender],
        clock: Callable[[], datetime],
        *,
        poll_s: float = 2.0,
        max_attempts: int = MAX_ATTEMPTS,
        concurrency: int = 16,
    ) -> None:
        self.db = db
        self.senders = senders
        self.clock = clock
        self.poll_s = poll_s
        self.max_attempts = max_attempts
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sem = asyncio.Semaphore(concurrency)

    def wake(self) -> None:
        """New rows were written here: deliver now rather than at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="channel-outbox")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                n = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log_pass_failure(log, exc, "outbox pass failed; retrying")
                n = 0
            if n >= BATCH:
                continue  # more may be due
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            self._wake.clear()

    async def run_once(self) -> int:
        """Claim the due rows and deliver them; returns how many were claimed."""
        rows = await self._claim()
        if rows:
            await asyncio.gather(*(self._deliver(r) for r in rows))
        return len(rows)

    async def _claim(self) -> list[dict[str, Any]]:
        now = self.clock()
        c = outbox_t.c
        due = sa.and_(c.state == "pending", c.next_attempt_at <= now)
        pick = sa.select(c.id).where(due).order_by(c.next_attempt_at, c.id).limit(BATCH)
        async with self.db.write() as conn:
            if not self.db.is_sqlite:
                ids = (await conn.execute(pick.with_for_update(skip_locked=True))).scalars().all()
                if not ids:
                    return []
                target: Any = c.id.in_(list(ids))
            else:
                target = c.id.in_(pick.scalar_subquery())
            res = await conn.execute(
                sa.update(outbox_t)
                .where(target, due)
                .values(next_attempt_at=now + timedelta(seconds=LEASE_S))
                .returning(*outbox_t.c)
            )
            return [dict(r._mapping) for r in res]

    async def _deliver(self, row: dict[str, Any]) -> None:
        sender = self.senders.get(row["channel"])
        if sender is None:
            await self._update(
                row, pending=True, delay=NO_SENDER_RETRY_S, error="no sender for this channel"
            )
            return
        attempts = row["attempts"] + 1
        try:
            async with self._sem:
                await sender.send(row["recipient"], row["payload"])
        except DeliveryError as exc:
            if exc.retry_after is not None and not exc.permanent:
                wait = min(max(exc.retry_after, 1.0), MAX_RETRY_AFTER_S)
                log.info(
                    "outbox %s to %s: the channel asks to wait %.0f s (not counted as a try)",
                    row["id"],
                    row["channel"],
                    wait,
                )
                await self._update(row, pending=True, delay=wait, error=str(exc))
                return
            final = exc.permanent or attempts >= self.max_attempts
            log.warning(
                "outbox %s to %s failed (attempt %d%s): %s",
                row["id"],
                row["channel"],
                attempts,
                ", giving up" if final else "",
                exc,
            )
            await self._update(
                row, attempts=attempts, pending=not final, delay=backoff(attempts), error=str(exc)
            )
            return
        except Exception as exc:  # a sender bug must not kill the worker
            log.exception("outbox %s: sender for %s crashed", row["id"], row["channel"])
            final = attempts >= self.max_attempts
            await self._update(
                row,
                attempts=attempts,
                pending=not final,
                delay=backoff(attempts),
                error=f"{type(exc).__name__}: {exc}",
            )
            return
        await self._update(row, attempts=attempts, sent=True)

    async def _update(
        self,
        row: dict[str, Any],
        *,
        attempts: int | None = None,
        pending: bool = False,
        sent: bool = False,
        delay: float = 0.0,
        error: str | None = None,
    ) -> None:
        now = self.clock()
        state = "sent" if sent else ("pending" if pending else "failed")
        values: dict[str, Any] = {
            "state": state,
            "next_attempt_at": now + timedelta(seconds=delay),
            "last_error": (error or "")[:500] or None,
        }
        if attempts is not None:
            values["attempts"] = attempts
        if sent:
            values["sent_at"] = now
        async with self.db.write() as conn:
            await conn.execute(sa.update(outbox_t).where(outbox_t.c.id == row["id"]).values(values))
            if row["message_id"] is not None:
                await conn.execute(
                    sa.update(message_t)
                    .where(message_t.c.id == row["message_id"])
                    .values(delivery=state)
                )
