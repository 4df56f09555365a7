"""Event bus: tells the rest of the system (and other instances) that something happened.

The bus exists for liveness — refreshing an agent console, dropping a cached session,
waking a dispatcher early. It is never the source of truth: PostgreSQL (or SQLite) is.
Anything that must not miss an event re-reads the database; the bus only makes that
happen sooner.

Delivery to subscribers in this process is sequential and awaited by `publish`, so the
order is the publish order and tests need no sleeps. A subscriber that raises is logged
and skipped: one broken console must not stop ticket creation or the other subscribers.
Subscribers should therefore be quick (set a flag, put on a queue); long work belongs in
the subscriber's own task.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import asyncpg

from ticketing.events import DomainEvent, event_from_dict

log = logging.getLogger(__name__)

Handler = Callable[[DomainEvent], Awaitable[None]]

# PostgreSQL rejects a NOTIFY payload of 8000 bytes or more (default build).
NOTIFY_MAX_BYTES = 8000
_NOTIFY_ONE = "SELECT pg_notify($1, $2)"
# WITH ORDINALITY + ORDER BY: the notifications are queued in the order of the array
_NOTIFY_MANY = (
    "SELECT pg_notify($1, p) FROM unnest($2::text[]) WITH ORDINALITY AS t(p, i) ORDER BY i"
)


@runtime_checkable
class EventBus(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, event: DomainEvent) -> None: ...

    async def publish_many(self, events: Sequence[DomainEvent]) -> None:
        """`publish` for each, in order; one network hop for all of them where there is
        one (a batch of tickets is one NOTIFY round trip, not one per ticket)."""
        ...

    def subscribe(self, handler: Handler) -> Callable[[], None]:
        """Returns the function that undoes the subscription (safe to call twice)."""
        ...


class _Subscribers:
    """The local fan-out shared by both buses, so they fail the same way."""

    def __init__(self) -> None:
        self._handlers: list[Handler] = []

    def subscribe(self, handler: Handler) -> Callable[[], None]:
        self._handlers.append(handler)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._handlers.remove(handler)

        return unsubscribe

    async def deliver(self, event: DomainEvent) -> None:
        # A snapshot, so a handler may unsubscribe itself (or others) while we iterate.
        for handler in tuple(self._handlers):
            try:
                await handler(event)
            except Exception:
                log.exception("event subscriber %r failed on %s", handler, event.name)


class InProcessBus(_Subscribers):
    """For the embedded (SQLite, single-process) setup, where there is nobody else to tell."""

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def publish(self, event: DomainEvent) -> None:
        await self.deliver(event)

    async def publish_many(self, events: Sequence[DomainEvent]) -> None:
        for event in events:
            await self.deliver(event)


class PostgresBus(_Subscribers):
    """Carries events between service instances that share one PostgreSQL database.

    NOTIFY is best-effort: a notification sent while our listening connection is down
    (network blip, server restart, `pg_terminate_backend`) is simply missed. We reconnect
    with exponential backoff and LISTEN again, but do not replay. That is acceptable only
    because the bus is for liveness; consumers that must not miss anything re-read the
    database (e.g. the console polls as well, the SLA sweeper scans deadlines).

    Publishing uses its own connection, never the listening one, so a slow or broken
    publish cannot stall or kill the listener. It is a single connection behind a lock
    rather than a pool: NOTIFY takes well under a millisecond, and one connection keeps
    this instance's events in publish order for the other instances.

    Each notification carries this instance's id and we drop our own echoes: local
    subscribers already got the event directly from `publish`, and must not see it twice.
    """

    _BACKOFF_START = 0.1
    _BACKOFF_CAP = 5.0

    def __init__(
        self,
        dsn: str,
        channel: str = "hotline_events",
        *,
        instance_id: str | None = None,
        health_interval: float = 15.0,
        timeout: float = 5.0,
    ) -> None:
        super().__init__()
        self.dsn = dsn
        self.channel = channel
        self.instance_id = instance_id or uuid.uuid4().hex
        # The termination listener catches a closed socket; the periodic probe catches a
        # half-open one (peer vanished without FIN), which would otherwise look idle forever.
        self._health_interval = health_interval
        self._timeout = timeout
        self._conn: asyncpg.Connection | None = None
        self._publisher: asyncpg.Connection | None = None
        self._publish_lock = asyncio.Lock()
        self._started = False
        self._supervisor: asyncio.Task[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        # Bounded: if subscribers stall, dropping a liveness hint beats unbounded memory.
        self._inbox: asyncio.Queue[DomainEvent] = asyncio.Queue(maxsize=10_000)

    @property
    def listener_pid(self) -> int | None:
        """Backend pid of the LISTEN connection, so tests (and ops) can kill it on purpose."""
        conn = self._conn
        if conn is None or conn.is_closed():
            return None
        return conn.get_server_pid()

    async def start(self) -> None:
        """Fails loudly if the database is unreachable at boot; later losses are retried."""
        if self._started:
            return
        self._publisher = await asyncpg.connect(self.dsn, timeout=self._timeout)
        try:
            conn = await self._listen()
        except BaseException:
            await self._close_quietly(self._publisher)
            self._publisher = None
            raise
        self._started = True
        self._dispatcher = asyncio.create_task(self._dispatch(), name="PostgresBus.dispatch")
        self._supervisor = asyncio.create_task(self._supervise(conn), name="PostgresBus.listen")

    async def stop(self) -> None:
        # First, so that no publish starts and no NOTIFY retry dials a new connection.
        self._started = False
        for task in (self._supervisor, self._dispatcher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._supervisor = self._dispatcher = None
        listener, self._conn = self._conn, None
        if listener is not None:
            await self._close_quietly(listener)
        # a NOTIFY in flight finishes first (bounded by its timeout); then nobody uses it
        async with self._publish_lock:
            publisher, self._publisher = self._publisher, None
            if publisher is not None:
                await self._close_quietly(publisher)

    async def publish(self, event: DomainEvent) -> None:
        """Raises ValueError for an oversized event, before anyone sees it.

        A failed NOTIFY is logged, not raised: by now the change is committed, and
        failing the caller's request over a missed liveness hint would be worse.
        """
        if not self._started:
            raise RuntimeError("PostgresBus.publish() before start()")
        await self.publish_many([event])

    async def publish_many(self, events: Sequence[DomainEvent]) -> None:
        """Every event is encoded (and an oversized one refused) before any is delivered;
        then all of them go out in one statement. PostgreSQL delivers a statement's
        notifications in order, and folds identical payloads into one: harmless for
        liveness hints, and each event carries its own subject anyway."""
        if not self._started:
            raise RuntimeError("PostgresBus.publish() before start()")
        if not events:
            return
        payloads = [self._encode(event) for event in events]
        for event in events:
            await self.deliver(event)
        names = events[0].name if len(events) == 1 else f"{len(events)} events"
        try:
            await self._notify(payloads)
        except _Stopped:
            log.warning("NOTIFY %s dropped: the bus was stopped meanwhile", names)
        except Exception:
            log.exception("NOTIFY %s failed; other instances miss it", names)

    async def _notify(self, payloads: Sequence[str]) -> None:
        async with self._publish_lock:
            for attempt in (1, 2):
                if not self._started:
                    raise _Stopped  # never dial a connection that stop() will not close
                conn = self._publisher
                try:
                    async with asyncio.timeout(self._timeout):
                        if conn is None or conn.is_closed():
                            conn = self._publisher = await asyncpg.connect(self.dsn)
                        if len(payloads) == 1:
                            await conn.execute(_NOTIFY_ONE, self.channel, payloads[0])
                        else:
                            await conn.execute(_NOTIFY_MANY, self.channel, list(payloads))
                    return
                except Exception:
                    # Usually the connection died since its last use (a database restart);
                    # asyncpg then raises anything from OSError to InternalClientError and
                    # may leave the connection half-alive, so drop it and dial afresh, once.
                    if conn is not None:
                        conn.terminate()
                    self._publisher = None
                    if attempt == 2:
                        raise
                    log.warning("NOTIFY failed; reconnecting and retrying once", exc_info=True)

    def _encode(self, event: DomainEvent) -> str:
        payload = json.dumps(
            {"origin": self.instance_id, "event": event.to_dict()},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        size = len(payload.encode("utf-8"))
        if size >= NOTIFY_MAX_BYTES:
            raise ValueError(
                f"event {event.name} is {size} bytes as NOTIFY payload; "
                f"limit is {NOTIFY_MAX_BYTES - 1} (send an id, not the data)"
            )
        return payload

    async def _listen(self) -> asyncpg.Connection:
        conn = await asyncpg.connect(self.dsn, timeout=self._timeout)
        try:
            await conn.add_listener(self.channel, self._on_notify)
        except BaseException:
            await self._close_quietly(conn)
            raise
        self._conn = conn
        return conn

    async def _supervise(self, conn: asyncpg.Connection) -> None:
        while True:
            await self._wait_until_lost(conn)
            self._conn = None
            await self._close_quietly(conn)
            log.warning("event bus lost its LISTEN connection; reconnecting")
            conn = await self._reconnect()
            log.info("event bus listening again (events meanwhile were missed)")

    async def _wait_until_lost(self, conn: asyncpg.Connection) -> None:
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        while not conn.is_closed():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), self._health_interval)
                return
            try:
                await conn.fetchval("SELECT 1", timeout=self._timeout)
            except Exception:
                return

    async def _reconnect(self) -> asyncpg.Connection:
        delay = self._BACKOFF_START
        while True:
            try:
                return await self._listen()
            except Exception as exc:  # whatever it is, the listener must not die of it
                log.warning("event bus reconnect failed (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._BACKOFF_CAP)

    async def _close_quietly(self, conn: asyncpg.Connection) -> None:
        if conn.is_closed():
            return
        try:
            await asyncio.wait_for(conn.close(), self._timeout)
        except Exception:
            conn.terminate()

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        # Runs inside asyncpg's protocol callback: must never raise, never block.
        try:
            message = json.loads(payload)
            if not isinstance(message, dict) or not isinstance(message.get("event"), dict):
                raise ValueError("not an {origin, event} object")
            if message.get("origin") == self.instance_id:
                return
            event = event_from_dict(message["event"])
        except Exception as exc:  # JSONDecodeError, UnknownEvent: all the outside world's fault
            log.warning("dropping bad notification on %s: %s: %.200r", self.channel, exc, payload)
            return
        try:
            self._inbox.put_nowait(event)
        except asyncio.QueueFull:
            log.warning("event bus inbox full; dropping %s", event.name)

    async def _dispatch(self) -> None:
        # One consumer keeps remote events in NOTIFY order for local subscribers.
        while True:
            event = await self._inbox.get()
            await self.deliver(event)


class _Stopped(Exception):
    """PostgresBus.stop() ran while a publish waited for the publisher connection."""


def make_bus(database_url: str) -> EventBus:
    """One instance on SQLite has nobody to notify; PostgreSQL means there may be several."""
    prefix = "postgresql+asyncpg://"
    if database_url.startswith(prefix):
        return PostgresBus("postgresql://" + database_url[len(prefix) :])
    return InProcessBus()
