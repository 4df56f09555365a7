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

The transaction body is synchronous SQLAlchemy Core: on SQLite it runs in the
writer's own thread with its own connection (one hop per batch, under the process's
write lock), on PostgreSQL through `AsyncConnection.run_sync`. Trail entries for
ticketed conversations are appended right after the commit, before any channel is
answered.

The unique constraints are the last word across instances: if another instance
stored one of the batch's messages (or opened a conversation) between our read and
our insert, the whole batch rolls back and is redone, and the redo sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError

from channels import bot
from channels.emergency_words import EmergencyRules, Match, answer, lines_of
from channels.message import InboundMessage, Kind, Receipt
from channels.models import contact_t, conversation_t, message_t, outbox_t
from ticketing import workqueue
from ticketing.handlers import Deps, TicketNotFound, append_trail_event
from ticketing.lifecycle import Role
from ticketing.ports import Principal
from ticketing.store import StoreUnavailable, is_unavailable, sqlite_pragmas

log = logging.getLogger(__name__)

MAX_BATCH = 256
ANSWER_TARGET = timedelta(minutes=3)  # GB/T 33358-2016: text channels answered in 3 min
EMERGENCY_PRIORITY = -1  # above every ticket (emergency tickets are 0)
NORMAL_PRIORITY = 2
CONTACT_CACHE = 100_000
MAX_TEXT = 10_000
OPEN, TICKETED, CLOSED = "open", "ticketed", "closed"


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


@dataclass
class _Pending:
    msg: InboundMessage
    inline: bool
    matches: list[Match]
    future: asyncio.Future[Handled]


class _Retry(Exception):
    """Another instance won a unique constraint race: redo the batch."""


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
        self.max_batch = max_batch
        self.after_commit = after_commit
        self.outbox_written = outbox_written or (lambda: None)
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._contacts: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._background: set[asyncio.Task[None]] = set()
        self._sqlite: _SqliteWriter | None = None
        self.batches = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="channel-intake-writer")

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
        if self._background:
            await asyncio.wait(set(self._background), timeout=5)
        if self._sqlite is not None:
            writer, self._sqlite = self._sqlite, None
            await asyncio.get_running_loop().run_in_executor(writer.executor, writer.close)
            writer.executor.shutdown(wait=False)

    async def receive(self, msg: InboundMessage, *, inline: bool = False) -> Handled:
        """Store the message (or find it stored) and decide what it means; returns once
        committed. `inline`: the channel will hand the replies over itself."""
        if self._task is None:
            raise RuntimeError("channel intake not started")
        if msg.text is not None and len(msg.text) > MAX_TEXT:
            msg = replace(msg, text=msg.text[:MAX_TEXT])
        matches = self.rules.find(msg.text) if msg.kind is not Kind.EVENT else []
        fut: asyncio.Future[Handled] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(msg, inline, matches, fut))
        return await fut

    # ------------------------------------------------------------------ the writer

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit_isolating(batch)
            except asyncio.CancelledError:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(RuntimeError("service shutting down"))
                raise
            except Exception:  # never let the writer die
                log.exception("channel intake failed on a batch of %d", len(batch))

    async def _commit_isolating(self, batch: list[_Pending]) -> None:
        try:
            handled = await self._commit_retrying(batch)
        except Exception as exc:
            if len(batch) == 1:
                if not batch[0].future.done():
                    batch[0].future.set_exception(exc)
                return
            mid = len(batch) // 2  # one bad message must not fail its neighbours
            await self._commit_isolating(batch[:mid])
            await self._commit_isolating(batch[mid:])
            return
        self.batches += 1
        for p, h in zip(batch, handled, strict=True):
            if not p.future.done():
                p.future.set_result(h)
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
            except (_Retry, IntegrityError) as exc:
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
        path = db.sqlite_file
        if path is None:  # PostgreSQL (or an in-memory SQLite): the async engine
            async with db.write() as conn:
                return await conn.run_sync(self._write, batch, now)
        if self._sqlite is None or self._sqlite.path != path:
            if self._sqlite is not None:
                self._sqlite.close()
            self._sqlite = _SqliteWriter(path)
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
                await asyncio.wait([fut], timeout=35)
                raise
            except (OperationalError, OSError) as exc:
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
        self, conn: sa.Connection, batch: list[_Pending], now: datetime
    ) -> tuple[list[Handled], list[tuple[str, str, dict[str, Any]]]]:
        """The batch's transaction body: synchronous SQLAlchemy Core, so on SQLite it runs
        in the writer thread in one hop and on PostgreSQL through `run_sync`."""
        db = self.deps.db
        mc = message_t.c
        keys = list({(p.msg.channel, p.msg.external_id) for p in batch})
        stored: dict[tuple[str, str], Any] = {}
        for chunk in _chunks(keys, 400):
            rows = conn.execute(
                sa.select(mc.id, mc.channel, mc.external_id, mc.conversation_id).where(
                    sa.tuple_(mc.channel, mc.external_id).in_(chunk)
                )
            )
            stored.update({(r.channel, r.external_id): r for r in rows})

        fresh: list[_Pending] = []
        seen: set[tuple[str, str]] = set()
        for p in batch:
            k = (p.msg.channel, p.msg.external_id)
            if k not in stored and k not in seen:
                seen.add(k)
                fresh.append(p)

        contact_ids = self._contacts_for(conn, fresh, now)
        convs = self._conversations_for(conn, fresh, contact_ids, now)

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

        ids: list[int] = []
        if inbound_rows:
            res = conn.execute(
                sa.insert(message_t).returning(message_t.c.id, sort_by_parameter_order=True),
                inbound_rows,
            )
            ids = [r.id for r in res]

        out_rows: list[dict[str, Any]] = []
        out_owner: list[tuple[_Pending, dict[str, Any]]] = []
        for (p, conv, _st, replies), mid in zip(decided, ids, strict=True):
            for text in replies:
                out_rows.append(
                    outbound_row(conv["id"], p.msg.channel, "bot", text, now, mid, p.inline)
                )
                out_owner.append((p, conv))
        if out_rows:
            res = conn.execute(
                sa.insert(message_t).returning(message_t.c.id, sort_by_parameter_order=True),
                out_rows,
            )
            out_ids = [r.id for r in res]
            boxes = [
                outbox_row(
                    p.msg.channel, p.msg.sender_id, oid, {"type": "text", "text": r["text"]}, now
                )
                for (p, _c), oid, r in zip(out_owner, out_ids, out_rows, strict=True)
                if not p.inline
            ]
            if boxes:
                conn.execute(sa.insert(outbox_t), boxes)

        if touched:
            _update_conversations(conn, list(touched.values()))
            waiting = [c for c in touched.values() if c["waiting"]]
            if waiting:
                conn.execute(workqueue.upsert_items(db), [_item(c, now) for c in waiting])

        trail_out = [
            (decided[i][0].msg.channel, number, {**data, "message_id": ids[i]})
            for i, number, data in trail
        ]

        # receipts: fresh ones from what we decided, retries from what is stored
        by_key: dict[tuple[str, str], Handled] = {}
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
            )
        if stored:
            self._stored_receipts(conn, stored, by_key)
        out = []
        firsts = {id(p) for p in fresh}
        for p in batch:
            h = by_key[(p.msg.channel, p.msg.external_id)]
            if not h.receipt.duplicate and id(p) not in firsts:  # a retry in the same batch
                h = Handled(replace(h.receipt, duplicate=True))
            out.append(h)
        return out, trail_out

    def _stored_receipts(
        self, conn: sa.Connection, stored: dict[tuple[str, str], Any], out: dict[Any, Handled]
    ) -> None:
        mc = message_t.c
        ids = [r.id for r in stored.values()]
        replies: dict[int, list[str]] = {}
        rows = conn.execute(
            sa.select(mc.reply_to, mc.text).where(mc.reply_to.in_(ids)).order_by(mc.id)
        )
        for r in rows:
            replies.setdefault(r.reply_to, []).append(r.text or "")
        convs = {
            r.id: r
            for r in conn.execute(
                sa.select(
                    conversation_t.c.id,
                    conversation_t.c.ticket_number,
                    conversation_t.c.emergency_lines,
                ).where(conversation_t.c.id.in_({r.conversation_id for r in stored.values()}))
            )
        }
        for key, r in stored.items():
            c = convs.get(r.conversation_id)
            out.setdefault(
                key,
                Handled(
                    Receipt(
                        r.id,
                        r.conversation_id,
                        True,
                        tuple(replies.get(r.id, ())),
                        tuple(c.emergency_lines or ()) if c else (),
                        c.ticket_number if c else None,
                    )
                ),
            )

    def _contacts_for(
        self, conn: sa.Connection, batch: list[_Pending], now: datetime
    ) -> dict[tuple[str, str], int]:
        cc = contact_t.c
        wanted: dict[tuple[str, str], InboundMessage] = {}
        for p in batch:
            wanted.setdefault((p.msg.channel, p.msg.sender_id), p.msg)
        out: dict[tuple[str, str], int] = {}
        missing = []
        for k in wanted:
            cid = self._contacts.get(k)
            if cid is None:
                missing.append(k)
            else:
                out[k] = cid
        if missing:
            rows = [
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
            conn.execute(_insert_ignore(self.deps.db, contact_t), rows)
            for chunk in _chunks(missing, 400):
                found = conn.execute(
                    sa.select(cc.id, cc.channel, cc.external_id).where(
                        sa.tuple_(cc.channel, cc.external_id).in_(chunk)
                    )
                )
                for r in found:
                    out[(r.channel, r.external_id)] = r.id
                    self._remember((r.channel, r.external_id), r.id)
        # subscribe / unsubscribe tell us whether we may still push to the contact
        flips = {
            out[(p.msg.channel, p.msg.sender_id)]: p.msg.event == "unsubscribe"
            for p in batch
            if p.msg.kind is Kind.EVENT and p.msg.event in ("subscribe", "unsubscribe")
        }
        for cid, gone in flips.items():
            conn.execute(sa.update(contact_t).where(cc.id == cid).values(subscribed=not gone))
        return out

    def _remember(self, key: tuple[str, str], cid: int) -> None:
        self._contacts[key] = cid
        if len(self._contacts) > CONTACT_CACHE:
            self._contacts.popitem(last=False)

    def _conversations_for(
        self,
        conn: sa.Connection,
        batch: list[_Pending],
        contact_ids: dict[tuple[str, str], int],
        now: datetime,
    ) -> dict[int, dict[str, Any]]:
        """The open conversation of every contact in the batch (opened if none)."""
        cc = conversation_t.c
        cids = sorted({contact_ids[(p.msg.channel, p.msg.sender_id)] for p in batch})
        out: dict[int, dict[str, Any]] = {}
        for chunk in _chunks(cids, 500):
            q = sa.select(conversation_t).where(cc.open_key.in_(chunk)).order_by(cc.id)
            if not self.deps.db.is_sqlite:
                q = q.with_for_update()
            for r in conn.execute(q):
                out[r.contact_id] = dict(r._mapping)
        channel_of = {contact_ids[(p.msg.channel, p.msg.sender_id)]: p.msg for p in batch}
        new = [
            {
                "channel": channel_of[cid].channel,
                "contact_id": cid,
                "open_key": cid,
                "status": OPEN,
                "waiting": False,
                "waiting_since": None,
                "emergency": False,
                "emergency_lines": [],
                "ticket_number": None,
                "bot_state": None,
                "lang": channel_of[cid].lang,
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
            ins = _insert_ignore(self.deps.db, conversation_t).returning(cc.id, cc.open_key)
            got = {r.open_key: r.id for r in conn.execute(ins, new)}
            if len(got) != len(new):
                raise _Retry("a conversation was opened concurrently")
            for row in new:
                row["id"] = got[row["contact_id"]]
                out[row["contact_id"]] = row
        return out


class _SqliteWriter:
    """A synchronous engine on the SQLite file, used by one thread only: each batch is
    one call into that thread (BEGIN IMMEDIATE ... COMMIT), not one hop per statement."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="channel-intake-sqlite")
        self.engine = sa.create_engine(
            f"sqlite:///{path}",
            poolclass=sa.pool.SingletonThreadPool,
            connect_args={"timeout": 30, "isolation_level": None, "check_same_thread": False},
        )
        event.listen(self.engine, "connect", sqlite_pragmas)
        event.listen(self.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self.engine.begin() as conn:
            return fn(conn, *args)

    def close(self) -> None:
        self.engine.dispose()


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


def _update_conversations(conn: sa.Connection, convs: list[dict[str, Any]]) -> None:
    stmt = (
        sa.update(conversation_t)
        .where(conversation_t.c.id == sa.bindparam("b_id"))
        .values({f: sa.bindparam(f"b_{f}") for f in _CONV_FIELDS})
    )
    params = [{"b_id": c["id"], **{f"b_{f}": c[f] for f in _CONV_FIELDS}} for c in convs]
    conn.execute(stmt, params)


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
