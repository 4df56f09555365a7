"""The live queue behind every console: a mirror of the work queue, pushed over websockets.

Each instance keeps the whole work queue in memory (the *mirror*), refreshed from
the database whenever the bus says an item may have changed, and in full every few
seconds as a safety net (a PostgreSQL NOTIFY lost during a reconnect, a writer that
forgot to announce). Every change to the mirror gets the next number of this
instance's sequence and goes to the sockets whose audiences it touches.

The contract with a client (documented in hotline/console/README.md):

- On connect the first frame is either a `snapshot` (all items the user sees, with
  the sequence number they reflect) or, when the client passed `instance` and
  `after` and this instance still holds every event since, a `resume` with the
  missed events. Nothing is sent between the two, because the snapshot is taken
  from the mirror in the same step that registers the socket (no await in between).
- Then `events` frames: `[{seq, op: "upsert"|"remove", key, item, at}]`, seq strictly
  increasing per instance. A client drops events with seq <= what it has; on a
  new `instance` id (restart, another instance behind the balancer) it must take
  the snapshot, which the server sends by itself.
- A socket that cannot keep up (too much unsent) is closed with code 4008; the
  client reconnects and resumes. Nothing is lost; it is only late.

Fan-out is the hot path (hundreds of consoles, bursts of events): sockets are kept
grouped by their audiences, each batch is encoded once per group into one complete
websocket frame, and that same bytes object is written straight to every socket's
transport. No task, no queue and no copy per socket: the kernel and the transport
buffer what a client has not read yet, and a socket whose buffer passes
`MAX_UNSENT_BYTES` is cut off (4008). Frames are therefore never compressed (a
per-socket deflate context could not share one encoding).

What a burst costs is batches x sockets (one system call per socket and frame), so
batches are paced by what the last write took (`FANOUT_PACE`, at most
`FANOUT_MAX_GAP_S`), and the re-read behind each batch is kept to one hand-over
between the event loop and the database: a thread of its own with a plain connection
on SQLite (`SqliteReader`), a connection kept open in autocommit otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import struct
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from aiohttp import WSCloseCode, web
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

import channels
from hotline.acd import events as acd
from ticketing.events import (
    DeadlineBreached,
    DeadlineWarning,
    DomainEvent,
    SessionRevoked,
    TicketCreated,
    TicketTransitioned,
    WorkItemChanged,
)
from ticketing.handlers import DISPATCH_PHASE, FEEDBACK_PHASE, Deps, ticket_t
from ticketing.lifecycle import Status
from ticketing.models import WorkItem
from ticketing.store import Database, log_pass_failure, sqlite_pragmas

log = logging.getLogger(__name__)

work_item = WorkItem.__table__  # type: ignore[attr-defined]

RING_SIZE = 5000
OUTBOX_FRAMES = 256  # frames queued for a socket that is not written directly
MAX_UNSENT_BYTES = 4 * 1024 * 1024  # a console this far behind reconnects and resumes
SNAPSHOT_LIMIT = 2000
SLOW_CONSUMER = 4008  # websocket close code: the client fell behind and must resume
CHUNK = 500
# Pacing of the fan-out: a batch is written to every socket with one system call each
# (about 15 us a socket on loopback, whatever its size), so what a burst costs is
# batches x sockets. The next batch is read no sooner than FANOUT_PACE times what the
# last write took, counted from its start (the fan-out keeps to about a quarter of the
# event loop), and never held back more than FANOUT_MAX_GAP_S: with a handful of
# consoles there is no wait at all.
FANOUT_PACE = 4.0
FANOUT_MAX_GAP_S = 0.020
WATCHERS = frozenset({"supervisor", "admin"})

Key = tuple[str, str]  # (kind, ref)
# kind -> loader of extra display fields for refs of that kind (conversations, calls)
Enricher = Callable[[AsyncConnection, list[str]], Awaitable[dict[str, dict[str, Any]]]]


def _iso(dt: datetime | None) -> str | None:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z") if dt else None


def item_key(kind: str, ref: str) -> str:
    return f"{kind}:{ref}"


def sort_key(item: dict[str, Any]) -> tuple[Any, ...]:
    """Emergencies first, then priority, then the nearest deadline, then age."""
    return (
        not item["emergency"],
        item["priority"],
        item["due_at"] is None,
        item["due_at"] or "",
        item["since"] or "",
        item["key"],
    )


def _ticket_risk(row: Any) -> str | None:
    if row.t_status is None:
        return None
    status = Status(row.t_status)
    if status in DISPATCH_PHASE:
        warned, breached = row.dispatch_warned_at, row.dispatch_breached_at
    elif status in FEEDBACK_PHASE:
        warned, breached = row.feedback_warned_at, row.feedback_breached_at
    else:
        return None
    return "breached" if breached else "warning" if warned else None


def item_view(row: Any) -> dict[str, Any]:
    """What a console shows for one queue item (generic fields, plus the ticket's).

    Emergencies are priority 0 (tickets, calls) or below (a conversation with
    emergency words is -1, above every ticket)."""
    view: dict[str, Any] = {
        "key": item_key(row.kind, row.ref),
        "id": row.id,
        "kind": row.kind,
        "ref": row.ref,
        "audience": row.audience,
        "action": row.action,
        "priority": row.priority,
        "emergency": row.priority <= 0,
        "due_at": _iso(row.due_at),
        "since": _iso(row.created_at),
        "claimed_by": row.claimed_by,
        "title": None,
        "channel": None,
        "status": None,
        "risk": None,
    }
    if row.kind == "ticket" and row.t_status is not None:
        view.update(
            title=row.title,
            channel=row.channel,
            status=row.t_status,
            ticket_kind=row.t_kind,
            urgency=row.urgency,
            category=row.category_code,
            lead_department=row.lead_department,
            risk=_ticket_risk(row),
        )
    return view


def _select() -> sa.Select[Any]:
    t = ticket_t.c
    return sa.select(
        work_item,
        t.title,
        t.channel,
        t.status.label("t_status"),
        t.kind.label("t_kind"),
        t.urgency,
        t.category_code,
        t.lead_department,
        t.dispatch_warned_at,
        t.dispatch_breached_at,
        t.feedback_warned_at,
        t.feedback_breached_at,
    ).select_from(
        work_item.outerjoin(
            ticket_t, sa.and_(work_item.c.kind == "ticket", t.number == work_item.c.ref)
        )
    )


class SqliteReader:
    """The live path's re-reads on an SQLite file: a plain connection on a thread of
    its own, one hand-over per re-read.

    Why not the async engine: through aiosqlite one SELECT is five hand-overs between
    the event loop and aiosqlite's thread (cursor, execute, fetchall, close, the pool's
    rollback), and each waits for the loop to come round and for the GIL to change
    hands. During a burst of tickets a 1 ms query took 10-40 ms that way, and every
    event behind it waited as long. Here the whole re-read (every chunk of every kind,
    rows turned into items) is one job for the thread: SQLite runs without the GIL,
    SQLAlchemy still does the typing, and the loop is woken once, with the result.

    Kinds with an enricher (conversations, calls, callbacks) still go through the
    async engine: their enrichers take an AsyncConnection."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(
            url.replace("+aiosqlite", "", 1), connect_args={"timeout": 30}, pool_size=1
        )
        sa.event.listen(self.engine, "connect", sqlite_pragmas)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="console-feed-read")
        self._stmt = _by_refs(postgres=False)

    async def views(self, by_kind: dict[str, list[str]]) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._views, by_kind)

    def _views(self, by_kind: dict[str, list[str]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        with self.engine.connect() as conn:
            for kind, refs in by_kind.items():
                for i in range(0, len(refs), CHUNK):
                    rows = conn.execute(self._stmt, {"kind": kind, "refs": refs[i : i + CHUNK]})
                    out += [item_view(r) for r in rows]
        return out

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self.engine.dispose)
        self._thread.shutdown(wait=False)


def _by_refs(*, postgres: bool) -> sa.Select[Any]:
    """The items of one kind with the given refs (`kind`, `refs`), built once so every
    re-read reuses one compiled statement. On PostgreSQL the refs go as one array
    parameter: an IN list would be a new SQL text, so a new prepared statement, for
    every batch size."""
    refs = (
        work_item.c.ref == sa.any_(sa.bindparam("refs", type_=postgresql.ARRAY(sa.String)))
        if postgres
        else work_item.c.ref.in_(sa.bindparam("refs", expanding=True))
    )
    return _select().where(work_item.c.kind == sa.bindparam("kind"), refs)


_CALL_EVENTS = (
    acd.CallQueued,
    acd.CallOffered,
    acd.CallAnswered,
    acd.CallAbandoned,
    acd.CallEnded,
    acd.CallTransferred,
    acd.EmergencyHandedOff,
)


def keys_of(event: DomainEvent) -> list[Key]:
    """Which queue items an event may have changed (the routing table of the feed)."""
    if isinstance(event, TicketCreated | TicketTransitioned | DeadlineWarning | DeadlineBreached):
        return [("ticket", event.number)]
    if isinstance(event, WorkItemChanged):
        return [(event.kind, event.ref)]
    if isinstance(event, channels.ConversationUpdated | channels.EmergencyAlert):
        return [("conversation", str(event.conversation_id))]
    if isinstance(event, _CALL_EVENTS):
        return [("call", event.uuid)]
    if isinstance(event, acd.CallbackRequested):
        keys: list[Key] = [("callback", str(event.callback_id))]
        return keys + ([("call", event.uuid)] if event.uuid else [])
    if isinstance(event, acd.EmergencyAlert) and event.uuid:
        return [("call", event.uuid)]
    return []


def alert_of(event: DomainEvent) -> dict[str, Any] | None:
    """An emergency a supervisor must see now, as the wall and the banner show it."""
    if isinstance(event, channels.EmergencyAlert):
        return {
            "source": "channel",
            "key": item_key("conversation", str(event.conversation_id)),
            "channel": event.channel,
            "lines": [x for x in event.lines.split(",") if x],
            "text": event.excerpt,
        }
    if isinstance(event, acd.EmergencyAlert):
        return {
            "source": "phone",
            "key": item_key("call", event.uuid) if event.uuid else None,
            "channel": "phone",
            "lines": [event.line],
            "text": event.reason,
        }
    return None


def ws_text_frame(payload: bytes) -> bytes:
    """One unmasked, final text frame (RFC 6455 section 5.2), as a server sends it."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    return header + payload


class Frame:
    """A frame encoded once and shared by every socket it goes to."""

    __slots__ = ("_raw", "text")

    def __init__(self, data: Any) -> None:
        self.text = _dumps(data)
        self._raw: bytes | None = None

    @property
    def raw(self) -> bytes:
        if self._raw is None:
            self._raw = ws_text_frame(self.text.encode())
        return self._raw


@dataclass(eq=False)
class Subscriber:
    """One open console socket.

    `transport` is set when frames can be written to the connection directly (an
    uncompressed server socket); otherwise frames go through `outbox` and a writer
    task that lives only while the outbox has frames."""

    ws: web.WebSocketResponse
    username: str
    role: str
    audiences: frozenset[str]
    token_hash: str | None
    transport: asyncio.Transport | None = None
    outbox: deque[str] = field(default_factory=deque)
    writer: asyncio.Task[None] | None = None
    closing: bool = False


@dataclass(frozen=True)
class _Event:
    seq: int
    audiences: frozenset[str]  # the item's audience before and after the change
    data: dict[str, Any]


class QueueFeed:
    def __init__(
        self,
        deps: Deps,
        *,
        reconcile_s: float = 10.0,
        ring_size: int = RING_SIZE,
        enrichers: dict[str, Enricher] | None = None,
    ) -> None:
        self.deps = deps
        # the live path reads through connections of its own: a burst of API requests
        # holding the shared pool must not queue the queue's updates behind them
        self.db: Database = deps.db
        self.reader: SqliteReader | None = None
        # the live path's own connection, kept open in autocommit (see _read_live)
        self._live: AsyncConnection | None = None
        self._by_refs = _by_refs(postgres=False)
        self.instance = uuid.uuid4().hex[:16]
        self.seq = 0
        self.reconcile_s = reconcile_s
        self.enrichers: dict[str, Enricher] = dict(enrichers or {})
        self.mirror: dict[str, dict[str, Any]] = {}
        self.ring: deque[_Event] = deque(maxlen=ring_size)
        self.subscribers: set[Subscriber] = set()
        # the same sockets, by audience set (fan-out) and by user (pushes to one agent)
        self.groups: dict[frozenset[str], set[Subscriber]] = {}
        self.by_user: dict[str, set[Subscriber]] = {}
        self.ready = asyncio.Event()
        self._pending: dict[Key, float] = {}
        self._touched: set[str] = set()  # keys refreshed since the last reconcile began
        self._wake = asyncio.Event()
        self._next_batch = 0.0  # time.monotonic() before which no new batch is read
        self._tasks: list[asyncio.Task[None]] = []
        # the emergency alerts of an item while it is in the queue (pinned on top)
        self.pins: dict[str, dict[str, Any]] = {}
        # tells other parts (the wall) that something changed, after the sockets
        self.listeners: list[Callable[[list[dict[str, Any]]], None]] = []
        # alerts for supervisors, newest last (the wall lists them)
        self.alerts: deque[dict[str, Any]] = deque(maxlen=100)
        # With no console connected the mirror is not kept: re-reading queue items after
        # every ticket and message would cost the intake path for nobody. The first
        # console to arrive re-reads the whole queue first (`fresh`); `_attaching`
        # keeps the live path running while it does.
        self._stale = False
        self._attaching = 0

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        shared = self.deps.db
        if not (shared.is_sqlite and shared.sqlite_file is None):  # in-memory: one database
            self.db = Database(shared.url, pool_size=1)
        if shared.is_sqlite and shared.sqlite_file is not None:
            self.reader = SqliteReader(shared.url)
        self._by_refs = _by_refs(postgres=not shared.is_sqlite)
        await self.reconcile()
        # compile the live path's statements now, not on the first event of a burst
        await self.refresh({(kind, ""): time.time() for kind in ("ticket", *self.enrichers)})
        self.ready.set()
        self._tasks = [
            asyncio.create_task(self._run(), name="console-feed"),
            asyncio.create_task(self._tick(), name="console-feed-reconcile"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.close_all()
        await self._drop_live(broken=False)
        if self.db is not self.deps.db:
            await self.db.engine.dispose()
            self.db = self.deps.db
        if self.reader is not None:
            await self.reader.close()
            self.reader = None

    async def close_all(self) -> None:
        subs = list(self.subscribers)
        for sub in subs:
            self._forget(sub)
        await asyncio.gather(
            *(self._close(s, WSCloseCode.GOING_AWAY, "server shutting down") for s in subs)
        )

    async def on_event(self, event: DomainEvent) -> None:
        """Bus subscriber: notes what to refresh and relays what a person must see now
        (the bus wants quick subscribers: nothing here waits)."""
        if isinstance(event, SessionRevoked):
            for sub in list(self.subscribers):
                if sub.token_hash == event.token_hash:
                    self._close_soon(sub, WSCloseCode.POLICY_VIOLATION, "signed out")
            return
        alert = alert_of(event)
        if alert is not None:
            self._alert(alert)
        if isinstance(event, acd.CallScreenPop):
            self.push_to_user(event.agent, {"type": "screen_pop", **dataclasses.asdict(event)})
        elif isinstance(event, acd.AgentStateEvent):
            self.push_to_user(event.username, {"type": "agent_state", **dataclasses.asdict(event)})
        keys = keys_of(event)
        if not keys:
            return
        now = time.time()
        for key in keys:
            self._pending.setdefault(key, now)
        self._wake.set()

    def _alert(self, alert: dict[str, Any]) -> None:
        alert = {**alert, "at": _iso(self.deps.clock())}
        self.alerts.append(alert)
        if alert["key"]:
            self.pins[alert["key"]] = alert
        self.push(lambda s: s.role in WATCHERS, {"type": "alert", "alert": alert})

    # ------------------------------------------------------------ sockets

    def snapshot(self, audiences: Iterable[str]) -> dict[str, Any]:
        """The items these audiences see and the sequence number they reflect."""
        wanted = set(audiences)
        items = sorted((i for i in self.mirror.values() if i["audience"] in wanted), key=sort_key)
        return {
            "type": "snapshot",
            "instance": self.instance,
            "seq": self.seq,
            "items": items[:SNAPSHOT_LIMIT],
            "truncated": len(items) > SNAPSHOT_LIMIT,
        }

    def attach(
        self, sub: Subscriber, *, instance: str | None = None, after: int | None = None
    ) -> str:
        """Register a socket and send its first frame; returns "snapshot" or "resume".

        Synchronous on purpose: no event can slip between the first frame and the
        live events that follow it."""
        first: dict[str, Any]
        kind = "snapshot"
        if instance == self.instance and after is not None and self._can_resume(after):
            kind = "resume"
            first = {
                "type": "resume",
                "instance": self.instance,
                "seq": self.seq,
                "events": [
                    _seen_by(e.data, sub.audiences)
                    for e in self.ring
                    if e.seq > after and e.audiences & sub.audiences
                ],
            }
        else:
            first = self.snapshot(sub.audiences)
        self.subscribers.add(sub)
        self.groups.setdefault(sub.audiences, set()).add(sub)
        self.by_user.setdefault(sub.username, set()).add(sub)
        self._offer(sub, Frame(first))
        return kind

    def _idle(self) -> bool:
        return not self.subscribers and not self._attaching

    @contextlib.asynccontextmanager
    async def fresh(self) -> AsyncIterator[None]:
        """Hold while handing out a snapshot or attaching a socket: the mirror is
        brought up to date first if it went stale while nobody was watching."""
        self._attaching += 1
        try:
            if self._stale:
                self._stale = False
                try:
                    await self.reconcile()
                except BaseException:
                    self._stale = True
                    raise
            yield
        finally:
            self._attaching -= 1

    def _can_resume(self, after: int) -> bool:
        if self._stale:
            return False  # events went unrecorded while nobody was watching
        if after > self.seq or after < 0:
            return False
        if after == self.seq:
            return True
        return bool(self.ring) and self.ring[0].seq <= after + 1

    def _forget(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        group = self.groups.get(sub.audiences)
        if group is not None:
            group.discard(sub)
            if not group:
                del self.groups[sub.audiences]
        mine = self.by_user.get(sub.username)
        if mine is not None:
            mine.discard(sub)
            if not mine:
                del self.by_user[sub.username]

    async def detach(self, sub: Subscriber) -> None:
        self._forget(sub)
        if sub.writer is not None:
            sub.writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sub.writer

    def _offer(self, sub: Subscriber, frame: Frame) -> None:
        """Send now if the connection takes it, else queue; cut off a socket too far behind."""
        if sub.closing:
            return
        transport = sub.transport
        if transport is not None:
            if transport.is_closing():
                return  # the peer went away; the handler's read loop ends and detaches
            if transport.get_write_buffer_size() > MAX_UNSENT_BYTES:
                self._slow(sub)
                return
            transport.write(frame.raw)
            return
        if len(sub.outbox) >= OUTBOX_FRAMES:
            self._slow(sub)
            return
        sub.outbox.append(frame.text)
        if sub.writer is None or sub.writer.done():
            sub.writer = asyncio.create_task(self._write(sub), name=f"console-ws-{sub.username}")

    async def _write(self, sub: Subscriber) -> None:
        try:
            while sub.outbox:
                await sub.ws.send_str(sub.outbox.popleft())
        except (ConnectionResetError, RuntimeError):
            pass  # the peer went away; the handler's read loop ends and detaches

    def _slow(self, sub: Subscriber) -> None:
        log.warning("console socket of %s fell behind; closing it", sub.username)
        self._close_soon(sub, SLOW_CONSUMER, "too slow; resume")

    def _close_soon(self, sub: Subscriber, code: int, reason: str) -> None:
        if sub.closing:
            return
        sub.closing = True
        self._forget(sub)
        task = asyncio.create_task(self._close(sub, code, reason))
        self._tasks.append(task)
        task.add_done_callback(lambda t: t in self._tasks and self._tasks.remove(t))

    async def _close(self, sub: Subscriber, code: int, reason: str) -> None:
        self._forget(sub)
        sub.closing = True
        if sub.writer is not None:
            sub.writer.cancel()
        with contextlib.suppress(Exception):
            await sub.ws.close(code=code, message=reason.encode())

    def push(self, sub_filter: Callable[[Subscriber], bool], frame: dict[str, Any]) -> int:
        """Send a frame outside the queue sequence (alerts, hints) to some sockets."""
        shared = Frame(frame)
        sent = 0
        for sub in list(self.subscribers):
            if sub_filter(sub):
                self._offer(sub, shared)
                sent += 1
        return sent

    def push_to_user(self, username: str, frame: dict[str, Any]) -> int:
        """A frame for one user's consoles (a screen pop, their phone state)."""
        subs = self.by_user.get(username)
        if not subs:
            return 0
        shared = Frame(frame)
        for sub in list(subs):
            self._offer(sub, shared)
        return len(subs)

    # ------------------------------------------------------------ refreshing

    async def _tick(self) -> None:
        """The safety net runs beside the live path, never in front of it: a burst's
        events are not held up behind a full re-read."""
        while True:
            await asyncio.sleep(self.reconcile_s)
            if self._idle():
                self._stale = True
                continue
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log_pass_failure(
                    log, exc, "console feed reconcile failed; retrying on the next tick"
                )

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            # what the bus announces meanwhile joins this batch (see FANOUT_PACE)
            wait = self._next_batch - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._wake.clear()
            pending, self._pending = self._pending, {}
            if not pending:
                continue
            if self._idle():
                self._stale = True  # the next console re-reads everything
                continue
            try:
                await self.refresh(pending)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # the database blinked: the next reconcile re-reads everything
                log_pass_failure(
                    log, exc, "console feed refresh failed; the next reconcile catches up"
                )

    async def refresh(self, pending: dict[Key, float]) -> list[dict[str, Any]]:
        """Re-read the given items and publish what changed."""
        by_kind: dict[str, list[str]] = {}
        for kind, ref in pending:
            by_kind.setdefault(kind, []).append(ref)
        fresh: dict[str, dict[str, Any]] = {}
        if self.reader is not None:
            plain = {k: refs for k, refs in by_kind.items() if k not in self.enrichers}
            if plain:
                fresh.update((v["key"], v) for v in await self.reader.views(plain))
            by_kind = {k: refs for k, refs in by_kind.items() if k in self.enrichers}
        if by_kind:
            fresh.update(await self._read_live(by_kind))
        stamps = {item_key(k, r): at for (k, r), at in pending.items()}
        self._touched.update(stamps)
        return self._apply(stamps.keys(), fresh, stamps)

    async def _read_live(self, by_kind: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
        """Re-read items through the async engine, on a connection kept for the feed.

        Why kept, and in autocommit: a connection taken from the pool for each re-read
        costs a ping on checkout, a BEGIN and a ROLLBACK on return, each a round trip
        that waits for the event loop to come round; during a burst that was most of a
        re-read's time. In autocommit every SELECT sees what was committed before it,
        as in a fresh transaction. A connection that died meanwhile (database restart)
        fails the first try; the re-read is then tried once more on a new one."""
        if self.db is self.deps.db:  # in-memory SQLite: the one shared database
            async with self.db.read() as conn:
                return await self._read_kinds(conn, by_kind)
        try:
            return await self._read_kinds(await self._live_connection(), by_kind)
        except Exception:
            log.warning("console feed: live read failed; retrying on a new connection")
            await self._drop_live(broken=True)
            return await self._read_kinds(await self._live_connection(), by_kind)

    async def _read_kinds(
        self, conn: AsyncConnection, by_kind: dict[str, list[str]]
    ) -> dict[str, dict[str, Any]]:
        fresh: dict[str, dict[str, Any]] = {}
        for kind, refs in by_kind.items():
            for i in range(0, len(refs), CHUNK):
                params = {"kind": kind, "refs": refs[i : i + CHUNK]}
                views = [item_view(r) for r in await conn.execute(self._by_refs, params)]
                await self._enrich(conn, kind, views)
                fresh.update((v["key"], v) for v in views)
        return fresh

    async def _live_connection(self) -> AsyncConnection:
        if self._live is None:
            conn = await self.db.engine.connect()
            try:
                self._live = await conn.execution_options(isolation_level="AUTOCOMMIT")
            except BaseException:
                await conn.close()
                raise
        return self._live

    async def _drop_live(self, *, broken: bool) -> None:
        conn, self._live = self._live, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            if broken:
                await conn.invalidate()  # never back into the pool
            else:
                await conn.close()

    async def reconcile(self) -> list[dict[str, Any]]:
        """Re-read the whole queue: catches whatever the bus did not say.

        Items refreshed while this read was under way are newer than what it read,
        so they are left alone."""
        self._touched = set()
        async with self.db.read() as conn:
            rows = (await conn.execute(_select())).all()
            views = []
            for i in range(0, len(rows), CHUNK):
                # a big queue is many milliseconds of Python: let live events through
                views += [item_view(r) for r in rows[i : i + CHUNK]]
                await asyncio.sleep(0)
            by_kind: dict[str, list[dict[str, Any]]] = {}
            for v in views:
                by_kind.setdefault(v["kind"], []).append(v)
            for kind, vs in by_kind.items():
                await self._enrich(conn, kind, vs)
        fresh = {v["key"]: v for v in views}
        keys = (set(self.mirror) | set(fresh)) - self._touched
        return self._apply(sorted(keys), fresh, {})

    async def _enrich(self, conn: AsyncConnection, kind: str, views: list[dict[str, Any]]) -> None:
        enricher = self.enrichers.get(kind)
        if enricher is None or not views:
            return
        try:
            extra = await enricher(conn, [v["ref"] for v in views])
        except Exception:
            log.exception("queue enricher for %s failed; showing generic items", kind)
            return
        for v in views:
            v.update(extra.get(v["ref"], {}))

    def _apply(
        self, keys: Iterable[str], fresh: dict[str, dict[str, Any]], stamps: dict[str, float]
    ) -> list[dict[str, Any]]:
        now = time.time()
        out: list[_Event] = []
        for key in keys:
            old = self.mirror.get(key)
            new = fresh.get(key)
            pin = self.pins.get(key)
            if new is None:
                self.pins.pop(key, None)  # handled: the alert has done its work
            elif pin is not None:
                new["emergency"] = True
                new["alert"] = pin
            if old == new:
                continue
            self.seq += 1
            audiences = frozenset(
                a for a in ((old or {}).get("audience"), (new or {}).get("audience")) if a
            )
            data = {
                "seq": self.seq,
                "op": "upsert" if new else "remove",
                "key": key,
                "item": new,
                "at": stamps.get(key, now),
            }
            if new is None:
                del self.mirror[key]
            else:
                self.mirror[key] = new
            ev = _Event(self.seq, audiences, data)
            self.ring.append(ev)
            out.append(ev)
        if out:
            self._broadcast(out)
            for listener in self.listeners:
                listener([e.data for e in out])
        return [e.data for e in out]

    def _broadcast(self, events: list[_Event]) -> None:
        """One encoding per audience group, the same bytes written to all its sockets."""
        started = time.monotonic()
        for audiences, subs in list(self.groups.items()):
            mine = [_seen_by(e.data, audiences) for e in events if e.audiences & audiences]
            if not mine:
                continue
            frame = Frame({"type": "events", "instance": self.instance, "events": mine})
            for sub in list(subs):
                self._offer(sub, frame)
        took = time.monotonic() - started
        self._next_batch = started + min(FANOUT_PACE * took, FANOUT_MAX_GAP_S)


def _seen_by(data: dict[str, Any], audiences: frozenset[str]) -> dict[str, Any]:
    """An item that moved to someone else's queue is, for these audiences, removed."""
    item = data["item"]
    if item is not None and item["audience"] not in audiences:
        return {**data, "op": "remove", "item": None}
    return data


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))
