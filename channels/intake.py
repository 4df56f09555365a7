"""Inbound messages -> contacts, conversations, queue items: group-committed.

Every channel retries and every message must be on disk before the channel is told
"received". One transaction per message tops out far below what a busy WeChat
account sends, so request tasks do the pure work (emergency words) and hand the
message to one writer task, which takes whatever has queued up and, in one
transaction on either backend:

1. finds which (channel, external id) pairs are already stored (retries: their
   stored answers are returned, nothing is written twice);
2. resolves contacts (cached: contacts are never deleted) and creates new ones;
3. loads the contacts' open conversations (row-locked on PostgreSQL) or opens them;
4. runs each message through the bot and the emergency rule, in arrival order;
5. inserts the messages, their immediate answers (and, when the channel cannot
   answer inline, their outbox rows), updates the conversations, and puts waiting
   conversations on the agents' work queue with the 3-minute answer target;
6. notes a trail entry for the ticket of a ticketed conversation.

The decisions are written once (`InboundWriter._write`) against a small `_Tx`
surface with two implementations. On an SQLite file the batch is one call into a
thread of our own that owns a plain `sqlite3` connection (same pragmas: WAL,
synchronous=FULL) and runs BEGIN IMMEDIATE, a handful of indexed SELECTs, one
executemany per table and COMMIT, under the process's write lock: SQLAlchemy's
per-row parameter processing cost more than everything else in the batch. The
statements are SQLAlchemy's own, compiled once for the dialect, and values are
converted by SQLAlchemy's bind processors (with checked shortcuts for JSON and
UTC timestamps), so rows are stored exactly as the rest of the service stores
them. PostgreSQL (and an in-memory SQLite) run the same statements through
SQLAlchemy Core in `AsyncConnection.run_sync`.

Trail entries for ticketed conversations are appended right after the commit,
before any channel is answered.

The unique constraints are the last word across instances: if another instance
stored one of the batch's messages (or opened a conversation) between our read and
our insert, the whole batch rolls back and is redone, and the redo sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import operator
import sqlite3
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError

from channels import bot
from channels.emergency_words import EmergencyRules, Match, answer, lines_of
from channels.message import InboundMessage, Kind, Receipt
from channels.models import contact_t, conversation_t, message_t, outbox_t
from ticketing import workqueue
from ticketing.group_commit import GroupCommit
from ticketing.handlers import Deps, TicketNotFound, append_trail_event
from ticketing.lifecycle import Role
from ticketing.models import UTCDateTime
from ticketing.ports import Principal
from ticketing.store import StoreUnavailable, is_unavailable, sqlite_pragmas

log = logging.getLogger(__name__)

MAX_BATCH = 256
ANSWER_TARGET = timedelta(minutes=3)  # GB/T 33358-2016: text channels answered in 3 min
EMERGENCY_PRIORITY = -1  # above every ticket (emergency tickets are 0)
NORMAL_PRIORITY = 2
CONTACT_CACHE = 100_000
MAX_TEXT = 10_000
CHUNK = 400  # keys per IN (...) list
STOP_WRITE_TIMEOUT_S = 35.0  # a batch already in SQLite's hands (busy_timeout is 30 s)
OPEN, TICKETED, CLOSED = "open", "ticketed", "closed"

Key = tuple[str, str]  # (channel, the channel's id)


def conversation_ref(conversation_id: int) -> str:
    return str(conversation_id)


@dataclass
class Handled:
    """What the writer decided for one message; the hub acts on `effect` afterwards."""

    receipt: Receipt
    effect: bot.Effect | None = None
    emergency: list[Match] = field(default_factory=list)
    sender_id: str = ""
    lang: str = "zh"
    channel: str = ""
    excerpt: str = ""  # the message's first words, for alerts
    waiting: bool = False
    emergency_conversation: bool = False
    # the conversation's queue item was added or its priority / deadline changed in
    # this batch (a resident writing again to a conversation already waiting does not
    # change the item, so consoles need not re-read it)
    item_changed: bool = False


@dataclass
class _Pending:
    msg: InboundMessage
    inline: bool
    matches: list[Match]
    future: asyncio.Future[Handled]


class _Retry(Exception):
    """Another instance won a unique constraint race: redo the batch."""


# ---------------------------------------------------------------------- the transaction


class _Tx(Protocol):
    """The reads and writes of one batch transaction (see `_CoreTx`, `_SqliteTx`)."""

    def stored(self, keys: Sequence[Key]) -> dict[Key, tuple[int, int]]:
        """(message id, conversation id) of the keys already stored."""
        ...

    def add_contacts(self, rows: list[dict[str, Any]]) -> None:
        """Insert, skipping those another writer created meanwhile."""
        ...

    def contact_ids(self, keys: Sequence[Key]) -> dict[Key, int]: ...

    def set_subscribed(self, flips: dict[int, bool]) -> None: ...

    def open_conversations(self, contact_ids: Sequence[int]) -> list[dict[str, Any]]:
        """Full rows, row-locked where the backend can."""
        ...

    def add_conversations(self, rows: list[dict[str, Any]]) -> dict[int, int]:
        """contact id -> new conversation id, leaving out contacts that already have an
        open one (another writer's)."""
        ...

    def add_messages(self, rows: list[dict[str, Any]]) -> list[int]:
        """Their ids, in the rows' order."""
        ...

    def add_outbox(self, rows: list[dict[str, Any]]) -> None: ...

    def update_conversations(self, convs: list[dict[str, Any]]) -> None: ...

    def upsert_items(self, rows: list[dict[str, Any]]) -> None: ...

    def replies_to(self, message_ids: Sequence[int]) -> dict[int, list[str]]: ...

    def conversation_facts(
        self, conversation_ids: Sequence[int]
    ) -> dict[int, tuple[str | None, list[str]]]:
        """(ticket number, emergency lines) per conversation."""
        ...


_CONV_FIELDS = (
    "waiting",
    "waiting_since",
    "emergency",
    "emergency_lines",
    "bot_state",
    "lang",
    "last_message_at",
    "updated_at",
)


class _Statements:
    """The batch's SQLAlchemy statements, built once per database (cached compiles)."""

    def __init__(self, db: Any) -> None:
        mc, cc, vc = message_t.c, contact_t.c, conversation_t.c
        self.stored = sa.select(mc.id, mc.channel, mc.external_id, mc.conversation_id).where(
            sa.tuple_(mc.channel, mc.external_id).in_(sa.bindparam("keys", expanding=True))
        )
        self.contacts = sa.select(cc.id, cc.channel, cc.external_id).where(
            sa.tuple_(cc.channel, cc.external_id).in_(sa.bindparam("keys", expanding=True))
        )
        self.add_contact = _insert_ignore(db, contact_t)
        self.subscribed = (
            sa.update(contact_t)
            .where(cc.id == sa.bindparam("b_id"))
            .values(subscribed=sa.bindparam("b_subscribed"))
        )
        conv = sa.select(*(vc[c] for c in _CONV_READ)).where(
            vc.open_key.in_(sa.bindparam("ids", expanding=True))
        )
        self.open_conversations = (
            conv.order_by(vc.id) if db.is_sqlite else conv.order_by(vc.id).with_for_update()
        )
        self.add_conversations = _insert_ignore(db, conversation_t).returning(vc.id, vc.open_key)
        self.add_message = sa.insert(message_t)
        self.add_messages = sa.insert(message_t).returning(mc.id, sort_by_parameter_order=True)
        self.add_outbox = sa.insert(outbox_t)
        self.update_conversation = (
            sa.update(conversation_t)
            .where(vc.id == sa.bindparam("b_id"))
            .values({f: sa.bindparam(f"b_{f}") for f in _CONV_FIELDS})
        )
        self.upsert_items = workqueue.upsert_items(db)
        self.replies = (
            sa.select(mc.reply_to, mc.text)
            .where(mc.reply_to.in_(sa.bindparam("ids", expanding=True)))
            .order_by(mc.id)
        )
        self.facts = sa.select(vc.id, vc.ticket_number, vc.emergency_lines).where(
            vc.id.in_(sa.bindparam("ids", expanding=True))
        )


def _conv_params(c: dict[str, Any]) -> dict[str, Any]:
    return {"b_id": c["id"], **{f"b_{f}": c[f] for f in _CONV_FIELDS}}


class _CoreTx:
    """`_Tx` on a synchronous SQLAlchemy connection (PostgreSQL; in-memory SQLite)."""

    def __init__(self, conn: sa.Connection, st: _Statements) -> None:
        self.conn = conn
        self.st = st

    def stored(self, keys: Sequence[Key]) -> dict[Key, tuple[int, int]]:
        out = {}
        for chunk in _chunks(list(keys), CHUNK):
            for r in self.conn.execute(self.st.stored, {"keys": chunk}):
                out[(r.channel, r.external_id)] = (r.id, r.conversation_id)
        return out

    def add_contacts(self, rows: list[dict[str, Any]]) -> None:
        self.conn.execute(self.st.add_contact, rows)

    def contact_ids(self, keys: Sequence[Key]) -> dict[Key, int]:
        out = {}
        for chunk in _chunks(list(keys), CHUNK):
            for r in self.conn.execute(self.st.contacts, {"keys": chunk}):
                out[(r.channel, r.external_id)] = r.id
        return out

    def set_subscribed(self, flips: dict[int, bool]) -> None:
        rows = [{"b_id": cid, "b_subscribed": on} for cid, on in flips.items()]
        self.conn.execute(self.st.subscribed, rows)

    def open_conversations(self, contact_ids: Sequence[int]) -> list[dict[str, Any]]:
        out = []
        for chunk in _chunks(list(contact_ids), CHUNK):
            out += [
                dict(r._mapping)
                for r in self.conn.execute(self.st.open_conversations, {"ids": chunk})
            ]
        return out

    def add_conversations(self, rows: list[dict[str, Any]]) -> dict[int, int]:
        return {r.open_key: r.id for r in self.conn.execute(self.st.add_conversations, rows)}

    def add_messages(self, rows: list[dict[str, Any]]) -> list[int]:
        return [r.id for r in self.conn.execute(self.st.add_messages, rows)]

    def add_outbox(self, rows: list[dict[str, Any]]) -> None:
        self.conn.execute(self.st.add_outbox, rows)

    def update_conversations(self, convs: list[dict[str, Any]]) -> None:
        self.conn.execute(self.st.update_conversation, [_conv_params(c) for c in convs])

    def upsert_items(self, rows: list[dict[str, Any]]) -> None:
        self.conn.execute(self.st.upsert_items, rows)

    def replies_to(self, message_ids: Sequence[int]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for r in self.conn.execute(self.st.replies, {"ids": list(message_ids)}):
            out.setdefault(r.reply_to, []).append(r.text or "")
        return out

    def conversation_facts(
        self, conversation_ids: Sequence[int]
    ) -> dict[int, tuple[str | None, list[str]]]:
        rows = self.conn.execute(self.st.facts, {"ids": list(conversation_ids)})
        return {r.id: (r.ticket_number, list(r.emergency_lines or ())) for r in rows}


# ---------------------------------------------------------------------- SQLite, plainly


def _sqlite_datetime(value: datetime) -> str:
    """UTCDateTime on SQLite: naive UTC in SQLAlchemy's storage format ("+00:00" cut
    off the ISO form; one C call for the usual UTC value)."""
    tz = value.tzinfo
    if tz is None:
        raise ValueError("naive datetime given to a UTC column")
    utc = value if tz is UTC else value.astimezone(UTC)
    return utc.isoformat(" ", "microseconds")[:-6]


def _json_text(value: Any) -> str:
    if not value and (value == [] or value == {}):
        return "[]" if isinstance(value, list) else "{}"
    return json.dumps(value)


def _json_value(text: str) -> Any:
    if text == "[]":
        return []
    if text == "null":
        return None
    return json.loads(text)


_SAMPLES: dict[type, tuple[Any, ...]] = {
    UTCDateTime: (
        datetime(2026, 4, 20, 15, 59, 59, 123456, tzinfo=UTC),
        datetime(2026, 4, 20, 8, 0, tzinfo=UTC).astimezone(),
        datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
    ),
    sa.JSON: (
        [],
        {},
        ["119", "120"],
        {"account": "gh_x", "msg_type": "text", "n": 1.5, "name": "王女士", "x": {"a": [1]}},
        {"ref": "m", "kind": "image", "url": None, "type": "image/jpeg"},
    ),
}
_FAST: dict[type, Callable[[Any], Any]] = {UTCDateTime: _sqlite_datetime, sa.JSON: _json_text}


def _bind_converter(type_: Any, dialect: sa.Dialect) -> tuple[Callable[[Any], Any], Any] | None:
    """(value -> what SQLAlchemy would hand the driver, what it hands for None), or None
    when values go as they are. The shortcuts are used only if they agree with
    SQLAlchemy's own processor on samples."""
    process = type_.dialect_impl(dialect).bind_processor(dialect)
    if process is None:
        return None
    for kind, fast in _FAST.items():
        if isinstance(type_, kind) and all(fast(v) == process(v) for v in _SAMPLES[kind]):
            return fast, process(None)
    return process, process(None)


class _SqlitePlan:
    """One statement compiled for SQLite, and row -> positional parameters for it."""

    def __init__(
        self,
        stmt: Any,
        dialect: sa.Dialect,
        keys: Sequence[str] | None = None,
        strip: str = "",
    ) -> None:
        compiled = stmt.compile(dialect=dialect, column_keys=list(keys) if keys else None)
        if getattr(compiled, "insert_prefetch", None) or getattr(compiled, "update_prefetch", None):
            raise ValueError(f"{stmt} would need Python-side defaults: give every column")
        self.sql: str = compiled.string
        names = list(compiled.positiontup or ())
        self.names = [n[len(strip) :] if strip and n.startswith(strip) else n for n in names]
        self.converters = []
        for i, n in enumerate(names):
            conv = _bind_converter(compiled.binds[n].type, dialect)
            if conv is not None:
                self.converters.append((i, conv[0], conv[1]))
        self._get = operator.itemgetter(*self.names) if len(self.names) > 1 else None

    def one(self, row: dict[str, Any]) -> tuple[Any, ...]:
        values = list(self._get(row)) if self._get else [row[self.names[0]]]
        for i, process, none in self.converters:
            v = values[i]
            values[i] = none if v is None else process(v)
        return tuple(values)

    def many(self, rows: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [self.one(r) for r in rows]


def _result_converter(type_: Any, dialect: sa.Dialect) -> Callable[[Any], Any] | None:
    """Stored value -> what SQLAlchemy would give, with a checked shortcut for JSON."""
    process = type_.dialect_impl(dialect).result_processor(dialect, None)
    if process is not None and isinstance(type_, sa.JSON):
        samples = ("[]", "null", '["119", "120"]', '{"step": "kind", "n": 1.5}')
        if all(_json_value(v) == process(v) for v in samples):
            return _json_value
    return process


# what the writer reads of an open conversation (and writes back: _CONV_FIELDS)
_CONV_READ = (
    "id",
    "contact_id",
    "channel",
    "status",
    "waiting",
    "waiting_since",
    "emergency",
    "emergency_lines",
    "ticket_number",
    "bot_state",
    "lang",
)


class _SqlitePlans:
    """Everything `_SqliteTx` executes, prepared once per database."""

    def __init__(self, st: _Statements, dialect: sa.Dialect) -> None:
        def keys(table: sa.Table) -> list[str]:
            return [c.name for c in table.columns if c is not table.autoincrement_column]

        self.add_contact = _SqlitePlan(st.add_contact, dialect, keys(contact_t))
        self.subscribed = _SqlitePlan(st.subscribed, dialect, strip="b_")
        self.add_conversation = _SqlitePlan(st.add_conversations, dialect, keys(conversation_t))
        self.add_message = _SqlitePlan(st.add_message, dialect, keys(message_t))
        self.add_outbox = _SqlitePlan(st.add_outbox, dialect, keys(outbox_t))
        self.update_conversation = _SqlitePlan(st.update_conversation, dialect, strip="b_")
        item = workqueue.conversation_item_row(0, 0, None, datetime.now(UTC))
        self.upsert_items = _SqlitePlan(st.upsert_items, dialect, list(item))
        self.conversation_columns = list(_CONV_READ)
        self.conversation_results = [
            _result_converter(conversation_t.c[c].type, dialect) for c in _CONV_READ
        ]
        self.lines_result = _result_converter(conversation_t.c.emergency_lines.type, dialect)
        cols = ", ".join(f'"{c}"' for c in self.conversation_columns)
        self.conversation_select = f"SELECT {cols} FROM conversation WHERE open_key IN "


def _marks(n: int) -> str:
    return "(" + ",".join("?" * n) + ")"


class _SqliteTx:
    """`_Tx` on a plain `sqlite3` connection inside BEGIN IMMEDIATE (reads need no
    locks: the transaction already holds the database's write lock)."""

    def __init__(self, conn: sqlite3.Connection, plans: _SqlitePlans) -> None:
        self.conn = conn
        self.p = plans

    def _by_channel(self, table: str, cols: str, keys: Sequence[Key]) -> list[Any]:
        per: dict[str, list[str]] = {}
        for ch, ext in keys:
            per.setdefault(ch, []).append(ext)
        rows: list[Any] = []
        for ch, exts in per.items():
            for chunk in _chunks(exts, CHUNK):
                rows += self.conn.execute(
                    f"SELECT {cols} FROM {table} WHERE channel = ? AND external_id IN "
                    + _marks(len(chunk)),
                    (ch, *chunk),
                ).fetchall()
        return rows

    def stored(self, keys: Sequence[Key]) -> dict[Key, tuple[int, int]]:
        rows = self._by_channel(
            "channel_message", "id, channel, external_id, conversation_id", keys
        )
        return {(ch, ext): (mid, cid) for mid, ch, ext, cid in rows}

    def add_contacts(self, rows: list[dict[str, Any]]) -> None:
        self.conn.executemany(self.p.add_contact.sql, self.p.add_contact.many(rows))

    def contact_ids(self, keys: Sequence[Key]) -> dict[Key, int]:
        rows = self._by_channel("channel_contact", "id, channel, external_id", keys)
        return {(ch, ext): cid for cid, ch, ext in rows}

    def set_subscribed(self, flips: dict[int, bool]) -> None:
        rows = [{"id": cid, "subscribed": on} for cid, on in flips.items()]
        self.conn.executemany(self.p.subscribed.sql, self.p.subscribed.many(rows))

    def open_conversations(self, contact_ids: Sequence[int]) -> list[dict[str, Any]]:
        out = []
        names, procs = self.p.conversation_columns, self.p.conversation_results
        for chunk in _chunks(list(contact_ids), CHUNK):
            sql = self.p.conversation_select + _marks(len(chunk)) + " ORDER BY id"
            for raw in self.conn.execute(sql, chunk):
                out.append(
                    {
                        n: (f(v) if f is not None and v is not None else v)
                        for n, f, v in zip(names, procs, raw, strict=True)
                    }
                )
        return out

    def add_conversations(self, rows: list[dict[str, Any]]) -> dict[int, int]:
        out = {}
        plan = self.p.add_conversation
        for row in rows:  # one by one: sqlite3's executemany cannot return rows
            found = self.conn.execute(plan.sql, plan.one(row)).fetchone()
            if found is not None:
                out[int(found[1])] = int(found[0])
        return out

    def add_messages(self, rows: list[dict[str, Any]]) -> list[int]:
        cur, plan, ids = self.conn.cursor(), self.p.add_message, []
        for row in rows:
            cur.execute(plan.sql, plan.one(row))
            ids.append(int(cur.lastrowid or 0))
        return ids

    def add_outbox(self, rows: list[dict[str, Any]]) -> None:
        self.conn.executemany(self.p.add_outbox.sql, self.p.add_outbox.many(rows))

    def update_conversations(self, convs: list[dict[str, Any]]) -> None:
        plan = self.p.update_conversation
        self.conn.executemany(plan.sql, plan.many(convs))

    def upsert_items(self, rows: list[dict[str, Any]]) -> None:
        self.conn.executemany(self.p.upsert_items.sql, self.p.upsert_items.many(rows))

    def replies_to(self, message_ids: Sequence[int]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for chunk in _chunks(list(message_ids), CHUNK):
            sql = (
                "SELECT reply_to, text FROM channel_message WHERE reply_to IN "
                + _marks(len(chunk))
                + " ORDER BY id"
            )
            for reply_to, text in self.conn.execute(sql, chunk):
                out.setdefault(reply_to, []).append(text or "")
        return out

    def conversation_facts(
        self, conversation_ids: Sequence[int]
    ) -> dict[int, tuple[str | None, list[str]]]:
        out = {}
        lines = self.p.lines_result
        for chunk in _chunks(list(conversation_ids), CHUNK):
            sql = "SELECT id, ticket_number, emergency_lines FROM conversation WHERE id IN "
            sql += _marks(len(chunk))
            for cid, number, raw in self.conn.execute(sql, chunk):
                value = lines(raw) if lines is not None and raw is not None else raw
                out[cid] = (number, list(value or ()))
        return out


class _SqliteWriter:
    """A `sqlite3` connection used by one thread only: each batch is one call into that
    thread (BEGIN IMMEDIATE ... COMMIT), not one hop per statement."""

    def __init__(self, path: Path, plans: _SqlitePlans) -> None:
        self.path = path
        self.plans = plans
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="channel-intake-sqlite")
        self._conn: sqlite3.Connection | None = None  # only ever touched in that thread

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        conn = self._conn or self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(_SqliteTx(conn, self.plans), *args)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        self.close()  # closing rolls back; the next batch reconnects
                raise
        except (sqlite3.Error, OSError) as exc:
            if is_unavailable(exc) or isinstance(exc, sqlite3.InterfaceError):
                self.close()
            raise
        return out

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        try:
            sqlite_pragmas(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()


# ---------------------------------------------------------------------- the writer


class InboundWriter:
    """The single writer for inbound messages (one per service instance)."""

    def __init__(
        self,
        deps: Deps,
        rules: EmergencyRules,
        *,
        max_batch: int = MAX_BATCH,
        after_commit: Callable[[list[Handled]], Awaitable[None]] | None = None,
        outbox_written: Callable[[], None] | None = None,
    ) -> None:
        self.deps = deps
        self.rules = rules
        self.after_commit = after_commit
        self.outbox_written = outbox_written or (lambda: None)
        self._writer: GroupCommit[_Pending, Handled] = GroupCommit(
            "channel-intake-writer", self._commit_retrying, self._committed, max_batch=max_batch
        )
        self._contacts: OrderedDict[Key, int] = OrderedDict()
        self._background: set[asyncio.Task[None]] = set()
        self._statements: _Statements | None = None
        self._sqlite: _SqliteWriter | None = None

    @property
    def batches(self) -> int:
        return self._writer.batches

    async def start(self) -> None:
        self._writer.start()

    async def stop(self) -> None:
        await self._writer.stop()
        if self._background:
            await asyncio.wait(set(self._background), timeout=5)
        if self._sqlite is not None:
            writer, self._sqlite = self._sqlite, None
            await asyncio.get_running_loop().run_in_executor(writer.executor, writer.close)
            writer.executor.shutdown(wait=False)

    async def receive(self, msg: InboundMessage, *, inline: bool = False) -> Handled:
        """Store the message (or find it stored) and decide what it means; returns once
        committed. `inline`: the channel will hand the replies over itself."""
        if not self._writer.running:
            raise RuntimeError("channel intake not started")
        if msg.text is not None and len(msg.text) > MAX_TEXT:
            msg = replace(msg, text=msg.text[:MAX_TEXT])
        matches = self.rules.find(msg.text) if msg.kind is not Kind.EVENT else []
        fut: asyncio.Future[Handled] = asyncio.get_running_loop().create_future()
        self._writer.put(_Pending(msg, inline, matches, fut))
        return await fut

    def _committed(self, batch: list[_Pending], handled: list[Handled]) -> None:
        if any(not h.receipt.duplicate and h.receipt.replies for h in handled):
            self.outbox_written()
        if self.after_commit is not None:
            task = asyncio.create_task(self.after_commit(handled))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _commit_retrying(self, batch: list[_Pending]) -> list[Handled]:
        for attempt in range(5):
            try:
                handled, trail = await self._transaction(batch)
                break
            except (_Retry, IntegrityError, sqlite3.IntegrityError) as exc:
                if attempt == 4:
                    raise
                self._contacts.clear()
                log.info("channel intake batch raced another writer (%s); redoing", exc)
        if trail:
            await self._append_trail(trail)
        return handled

    async def _transaction(
        self, batch: list[_Pending]
    ) -> tuple[list[Handled], list[tuple[str, str, dict[str, Any]]]]:
        db = self.deps.db
        now = self.deps.clock()
        if self._statements is None:
            self._statements = _Statements(db)
        st = self._statements
        path = db.sqlite_file
        if path is None:  # PostgreSQL (or an in-memory SQLite): the async engine
            async with db.write() as conn:
                return await conn.run_sync(lambda c: self._write(_CoreTx(c, st), batch, now))
        if self._sqlite is None or self._sqlite.path != path:
            if self._sqlite is not None:
                self._sqlite.close()
            self._sqlite = _SqliteWriter(path, _SqlitePlans(st, db.engine.dialect))
        writer = self._sqlite
        lock = db.write_lock or contextlib.nullcontext()
        async with lock:
            fut = asyncio.get_running_loop().run_in_executor(
                writer.executor, writer.run, self._write, batch, now
            )
            try:
                # shielded: a stop mid-batch waits for the thread (the lock stays held)
                return await asyncio.shield(fut)
            except asyncio.CancelledError:
                await asyncio.wait([fut], timeout=STOP_WRITE_TIMEOUT_S)
                raise
            except (sqlite3.OperationalError, sqlite3.InterfaceError, OSError) as exc:
                if is_unavailable(exc) or isinstance(exc, sqlite3.InterfaceError):
                    raise StoreUnavailable(str(exc)) from exc
                raise
            except OperationalError as exc:
                if is_unavailable(exc):
                    raise StoreUnavailable(str(exc)) from exc
                raise

    async def _append_trail(self, trail: list[tuple[str, str, dict[str, Any]]]) -> None:
        """Follow-ups on ticketed conversations, onto the tickets' trails (right after the
        messages' commit, before the channel is answered)."""
        async with self.deps.db.write() as conn:
            for channel, number, data in trail:
                who = Principal(f"{channel}-resident", Role.AGENT)
                with contextlib.suppress(TicketNotFound):
                    await append_trail_event(self.deps, conn, number, who, "resident_message", data)

    def _write(
        self, tx: _Tx, batch: list[_Pending], now: datetime
    ) -> tuple[list[Handled], list[tuple[str, str, dict[str, Any]]]]:
        """The batch's transaction body (in the SQLite thread, or under `run_sync`)."""
        keys = list(dict.fromkeys((p.msg.channel, p.msg.external_id) for p in batch))
        stored = tx.stored(keys)

        fresh: list[_Pending] = []
        seen: set[Key] = set()
        for p in batch:
            k = (p.msg.channel, p.msg.external_id)
            if k not in stored and k not in seen:
                seen.add(k)
                fresh.append(p)

        contact_ids = self._contacts_for(tx, fresh, now)
        convs, before = self._conversations_for(tx, fresh, contact_ids, now)

        inbound_rows: list[dict[str, Any]] = []
        decided: list[tuple[_Pending, dict[str, Any], bot.Step, list[str]]] = []
        trail: list[tuple[int, str, dict[str, Any]]] = []  # (index in decided, ticket, data)
        touched: dict[int, dict[str, Any]] = {}
        for p in fresh:
            m = p.msg
            cid = contact_ids[(m.channel, m.sender_id)]
            conv = convs[cid]
            st = bot.step(conv["bot_state"], m)
            replies: list[str] = []
            if p.matches:
                replies.append(answer(p.matches, m.lang))
                conv["emergency"] = True
                conv["emergency_lines"] = list(
                    dict.fromkeys([*conv["emergency_lines"], *lines_of(p.matches)])
                )
            if st.emergency:
                conv["emergency"] = True
            replies.extend(st.replies)
            conv["bot_state"] = st.state
            conv["lang"] = m.lang
            conv["last_message_at"] = now
            conv["updated_at"] = now
            needs_agent = st.to_agent or bool(p.matches) or st.emergency
            if needs_agent and not conv["waiting"]:
                conv["waiting"] = True
                conv["waiting_since"] = now
            touched[conv["id"]] = conv
            inbound_rows.append(_inbound_row(m, conv["id"], cid, now))
            decided.append((p, conv, st, replies))
            if conv["ticket_number"] and st.to_agent:
                data = {"channel": m.channel, "kind": m.kind.value, "text": (m.text or "")[:500]}
                trail.append((len(decided) - 1, conv["ticket_number"], data))

        ids = tx.add_messages(inbound_rows) if inbound_rows else []

        out_rows: list[dict[str, Any]] = []
        out_owner: list[_Pending] = []
        for (p, conv, _st, replies), mid in zip(decided, ids, strict=True):
            for text in replies:
                out_rows.append(
                    outbound_row(conv["id"], p.msg.channel, "bot", text, now, mid, p.inline)
                )
                out_owner.append(p)
        if out_rows:
            out_ids = tx.add_messages(out_rows)
            boxes = [
                outbox_row(
                    p.msg.channel, p.msg.sender_id, oid, {"type": "text", "text": r["text"]}, now
                )
                for p, oid, r in zip(out_owner, out_ids, out_rows, strict=True)
                if not p.inline
            ]
            if boxes:
                tx.add_outbox(boxes)

        changed: set[int] = set()
        if touched:
            tx.update_conversations(list(touched.values()))
            waiting = [c for c in touched.values() if c["waiting"]]
            if waiting:
                # refreshed even when unchanged: the row is the truth, and a refresh
                # puts back an item that went missing
                tx.upsert_items([_item(c, now) for c in waiting])
                changed = {
                    c["id"]
                    for c in waiting
                    if before.get(c["id"]) != (True, c["emergency"], c["waiting_since"])
                }

        trail_out = [
            (decided[i][0].msg.channel, number, {**data, "message_id": ids[i]})
            for i, number, data in trail
        ]

        # receipts: fresh ones from what we decided, retries from what is stored
        by_key: dict[Key, Handled] = {}
        for (p, conv, st, replies), mid in zip(decided, ids, strict=True):
            by_key[(p.msg.channel, p.msg.external_id)] = Handled(
                Receipt(
                    mid,
                    conv["id"],
                    False,
                    tuple(replies),
                    tuple(lines_of(p.matches)),
                    conv["ticket_number"],
                ),
                st.effect,
                p.matches,
                p.msg.sender_id,
                p.msg.lang,
                p.msg.channel,
                (p.msg.text or "")[:80],
                conv["waiting"],
                conv["emergency"],
                conv["id"] in changed,
            )
        if stored:
            self._stored_receipts(tx, stored, by_key)
        out = []
        firsts = {id(p) for p in fresh}
        for p in batch:
            h = by_key[(p.msg.channel, p.msg.external_id)]
            if not h.receipt.duplicate and id(p) not in firsts:  # a retry in the same batch
                h = Handled(replace(h.receipt, duplicate=True))
            out.append(h)
        return out, trail_out

    def _stored_receipts(
        self, tx: _Tx, stored: dict[Key, tuple[int, int]], out: dict[Key, Handled]
    ) -> None:
        replies = tx.replies_to([mid for mid, _ in stored.values()])
        facts = tx.conversation_facts(list({cid for _, cid in stored.values()}))
        for key, (mid, cid) in stored.items():
            number, lines = facts.get(cid, (None, []))
            out.setdefault(
                key,
                Handled(Receipt(mid, cid, True, tuple(replies.get(mid, ())), tuple(lines), number)),
            )

    def _contacts_for(self, tx: _Tx, batch: list[_Pending], now: datetime) -> dict[Key, int]:
        wanted: dict[Key, InboundMessage] = {}
        for p in batch:
            wanted.setdefault((p.msg.channel, p.msg.sender_id), p.msg)
        out: dict[Key, int] = {}
        missing = []
        for k in wanted:
            cid = self._contacts.get(k)
            if cid is None:
                missing.append(k)
            else:
                out[k] = cid
        if missing:
            tx.add_contacts(
                [
                    {
                        "channel": ch,
                        "external_id": ext,
                        "address_enc": None,
                        "display_name": wanted[(ch, ext)].sender_name,
                        "resident_id": None,
                        "subscribed": True,
                        "created_at": now,
                    }
                    for ch, ext in missing
                ]
            )
            for k, cid in tx.contact_ids(missing).items():
                out[k] = cid
                self._remember(k, cid)
        # subscribe / unsubscribe tell us whether we may still push to the contact
        flips = {
            out[(p.msg.channel, p.msg.sender_id)]: p.msg.event != "unsubscribe"
            for p in batch
            if p.msg.kind is Kind.EVENT and p.msg.event in ("subscribe", "unsubscribe")
        }
        if flips:
            tx.set_subscribed(flips)
        return out

    def _remember(self, key: Key, cid: int) -> None:
        self._contacts[key] = cid
        if len(self._contacts) > CONTACT_CACHE:
            self._contacts.popitem(last=False)

    def _conversations_for(
        self, tx: _Tx, batch: list[_Pending], contact_ids: dict[Key, int], now: datetime
    ) -> tuple[dict[int, dict[str, Any]], dict[int, tuple[bool, bool, datetime | None]]]:
        """The open conversation of every contact in the batch (opened if none), and
        what their queue items looked like before: (waiting, emergency, since)."""
        cids = sorted({contact_ids[(p.msg.channel, p.msg.sender_id)] for p in batch})
        out: dict[int, dict[str, Any]] = {}
        before: dict[int, tuple[bool, bool, datetime | None]] = {}
        if cids:
            for row in tx.open_conversations(cids):
                out[row["contact_id"]] = row
                before[row["id"]] = (
                    bool(row["waiting"]),
                    bool(row["emergency"]),
                    row["waiting_since"],
                )
        first_of = {contact_ids[(p.msg.channel, p.msg.sender_id)]: p.msg for p in batch}
        new = [
            {
                "channel": first_of[cid].channel,
                "contact_id": cid,
                "open_key": cid,
                "status": OPEN,
                "waiting": False,
                "waiting_since": None,
                "emergency": False,
                "emergency_lines": [],
                "ticket_number": None,
                "bot_state": None,
                "lang": first_of[cid].lang,
                "assigned_to": None,
                "created_at": now,
                "updated_at": now,
                "last_message_at": now,
                "closed_at": None,
            }
            for cid in cids
            if cid not in out
        ]
        if new:
            got = tx.add_conversations(new)
            if len(got) != len(new):
                raise _Retry("a conversation was opened concurrently")
            for row in new:
                row["id"] = got[row["contact_id"]]
                out[row["contact_id"]] = row
        return out, before


def _insert_ignore(db: Any, table: sa.Table) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING to execute with a list of rows: one cached
    statement (a multi-row VALUES would be compiled anew for every batch size)."""
    return (sqlite.insert if db.is_sqlite else postgresql.insert)(table).on_conflict_do_nothing()


def _chunks(items: list[Any], n: int) -> list[list[Any]]:
    return [items[i : i + n] for i in range(0, len(items), n)] or []


def _inbound_row(
    m: InboundMessage, conversation_id: int, contact_id: int, now: datetime
) -> dict[str, Any]:
    data = dict(m.data)
    if m.event:
        data["event"] = m.event
    if m.event_key:
        data["event_key"] = m.event_key
    return {
        "conversation_id": conversation_id,
        "channel": m.channel,
        "external_id": m.external_id,
        "direction": "in",
        "author": f"contact:{contact_id}",
        "kind": m.kind.value,
        "text": m.text,
        "media": [x.to_dict() for x in m.media],
        "location": m.location.to_dict() if m.location else None,
        "data": data,
        "reply_to": None,
        "delivery": None,
        "sent_at": m.sent_at,
        "stored_at": now,
    }


def outbound_row(
    conversation_id: int,
    channel: str,
    author: str,
    text: str,
    now: datetime,
    reply_to: int | None = None,
    inline: bool = False,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "conversation_id": conversation_id,
        "channel": channel,
        "external_id": None,
        "direction": "out",
        "author": author,
        "kind": "text",
        "text": text,
        "media": [],
        "location": None,
        "data": data or {},
        "reply_to": reply_to,
        "delivery": "inline" if inline else "pending",
        "sent_at": now,
        "stored_at": now,
    }


def outbox_row(
    channel: str,
    recipient: str,
    message_id: int | None,
    payload: dict[str, Any],
    now: datetime,
    dedupe_key: str | None = None,
) -> dict[str, Any]:
    return {
        "channel": channel,
        "recipient": recipient,
        "message_id": message_id,
        "payload": payload,
        "dedupe_key": dedupe_key,
        "state": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "last_error": None,
        "created_at": now,
        "sent_at": None,
    }


def _item(conv: dict[str, Any], now: datetime) -> dict[str, Any]:
    since = conv["waiting_since"] or now
    return workqueue.conversation_item_row(
        conv["id"],
        EMERGENCY_PRIORITY if conv["emergency"] else NORMAL_PRIORITY,
        since + ANSWER_TARGET,
        now,
    )


def queue_item(conv: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The work-queue row of a waiting conversation (also used by the staff side)."""
    return _item(conv, now)
