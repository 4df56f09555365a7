"""Ticket intake with group commit.

Every new ticket must be on disk before its 201 goes out, but one commit per
ticket through the ORM tops out near a thousand a second. So request tasks do all
per-ticket work (validation, deadlines, encryption, and afterwards the API view)
themselves and hand a ready row to one writer task, which takes whatever has
queued up, numbers it, writes tickets, first audit events, queue items and
idempotency records in one transaction, commits, and only then wakes the waiting
requests.

On SQLite the writer does not go through SQLAlchemy and aiosqlite (about seven
thread round trips per batch), and not through a thread of ours either: the batch's
SQLite work runs in a child process (`ticketing/intake_writer_proc.py`, started on
the first batch) that owns a plain `sqlite3` connection (same pragmas: WAL,
synchronous=FULL). Why a process: a writer thread had to take the GIL back from the
busy event loop after every `sqlite3` call (0.3-0.4 ms each, ~8 a batch), so a batch
took 5.7 ms of wall time for 2.4 ms of CPU, and with every client waiting on its batch
that wall time set the throughput. The process has its own GIL; we pay a pipe round
trip (length-prefixed pickles, read with asyncio streams: no thread here).

Numbering, the audit hash chain and row conversion stay here, on the event loop (they
need the service's keys, catalog and views), and the numbers come from the day
counter, read inside the transaction. Usually this intake is the only one taking
numbers, so the batch is built beforehand with the numbers that follow its last
batch's, and one request does the rest there: BEGIN IMMEDIATE, the counter upsert, a
check that it gave those numbers, one multi-row INSERT per table (and chunk), COMMIT.
Without a guess (a new day, the first batch, after a failed one) the transaction
stays open, the batch is built with the real numbers and a second request inserts and
commits. Nobody ever gets a number the counter did not give inside the committing
transaction.

Two batches in flight: a batch sent with guessed numbers never leaves a transaction
open (a wrong guess is rolled back at once and answered "missed"), so the next batch,
guessed from the numbers that follow, goes down the pipe before the first is answered
and the process starts it the moment the first commits, instead of idling through our
round trip (measured: 10% more tickets a second, the event loop then the limit). A
batch that misses, and the one behind it, are sent again the two-step way, alone. A
failed batch makes the one behind it miss too, as it should: its numbers assumed the
failed one's.

The process-wide write lock is held from the first batch out until none is, so for
everyone else the intake is just another writer; while someone waits for the lock no
second batch is started, so they get in between batches.

Values are converted as SQLAlchemy would store them, and column lists come from the
tables. Nobody gets a 201 unless COMMIT answered; an error there
rolls back and comes back as the same exception (`StoreUnavailable` when the database
is unreachable), so GroupCommit's halving still isolates one bad ticket; a process
that dies fails the batch in flight with `StoreUnavailable` (SQLite drops what was not
committed) and the next batch starts a new one; a stop mid-batch never leaves SQLite's
lock held (see `_WriterProcess.transaction`). If the process cannot be started, or
three die in a row, batches go through SQLAlchemy (slower, the same rows) and a start
is tried again a minute later. PostgreSQL and in-memory SQLite keep the SQLAlchemy path.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import pickle
import sys
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import phonenumbers
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ticketing import intake_writer_proc as writer_proc
from ticketing import workqueue
from ticketing.audit import GENESIS
from ticketing.deadlines import Urgency, due_at
from ticketing.events import TicketCreated
from ticketing.group_commit import GroupCommit
from ticketing.handlers import (
    URGENCY_PRIORITY,
    Deps,
    InvalidRequest,
    announce,
    chain_event,
    event_t,
    limits_for,
    mask_phone,
    ticket_t,
    ticket_view,
    urgency_of,
)
from ticketing.lifecycle import Kind, Status
from ticketing.models import IdempotencyRecord, UTCDateTime
from ticketing.ports import Principal
from ticketing.store import StoreUnavailable, is_unavailable, sqlite_pragmas
from ticketing.webkit import dumps_json

log = logging.getLogger(__name__)
idem_t = IdempotencyRecord.__table__  # type: ignore[attr-defined]
work_t = workqueue.work_item

_KINDS = {k.value: k for k in Kind}
_URGENCIES = {u.value: u for u in Urgency}
CHANNELS = frozenset({"phone", "wechat", "telegram", "app", "web", "open311", "email", "walk_in"})
MAX_BATCH = 256
STOP_PUBLISH_TIMEOUT_S = 5.0  # stop() waits this long for ticket.created to go out
STOP_WRITE_TIMEOUT_S = 35.0  # a batch already in SQLite's hands (busy_timeout is 30 s)
WRITER_START_TIMEOUT_S = 10.0  # the SQLite writer process says hello within this
WRITER_EXIT_TIMEOUT_S = 5.0  # stop() gives it this long to exit, then kills it
WRITER_RETRY_S = 60.0  # after a failed start, SQLAlchemy writes until then
WRITER_MAX_DEATHS = 3  # writer processes lost in a row before that fallback too


@dataclass(slots=True)  # not frozen: that costs a setattr call per field, per ticket
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
    phone: str | None  # masked, for the view (never decrypt what was just encrypted)
    principal: Principal
    idem: IdempotencySpec | None
    # the view when the writer had to build it (idempotency record), else None
    future: asyncio.Future[dict[str, Any] | None]


@functools.lru_cache(maxsize=4096)
def _parse_phone(raw: str) -> tuple[str | None, str | None]:
    """(E.164, None) or (None, why not): pure, so cached (callers repeat themselves)."""
    try:
        num = phonenumbers.parse(raw, "CN")
    except phonenumbers.NumberParseException as exc:
        return None, f"not a phone number: {exc}"
    if not phonenumbers.is_valid_number(num):
        return None, "not a valid phone number"
    return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164), None


def normalise_phone(raw: str) -> str:
    """E.164 inside; residents type 138 1234 5678, 0755-12345678 or +86..."""
    e164, error = _parse_phone(raw)
    if e164 is None:
        raise InvalidRequest(error or "not a phone number", "contact.phone")
    return e164


def prepare(deps: Deps, cmd: NewTicket, now: datetime) -> tuple[dict[str, Any], str | None]:
    """All per-ticket work that needs no database: done in the request's own task.

    Returns the ticket row (every column but `id`, `number`, `event_seq` and
    `last_hash`, which the writer fills in) and the masked phone for the view.
    """
    try:
        _KINDS.get(cmd.kind) or Kind(cmd.kind)  # a dict hit is cheaper than an Enum call
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
            urgency = _URGENCIES.get(cmd.urgency) or Urgency(cmd.urgency)
        except ValueError:
            raise InvalidRequest(
                f"urgency must be one of {', '.join(u.value for u in Urgency)}", "urgency"
            ) from None
    else:
        urgency = urgency_of(cat["urgency"]) if cat else Urgency.NORMAL
    dispatch, _ = limits_for(deps, cmd.category, urgency)
    phone = normalise_phone(cmd.contact_phone) if cmd.contact_phone else None
    row = {
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
        "merged_into": None,
        "satisfaction": None,
        "reply_text": None,
        "supervision_count": 0,
        "reopen_count": 0,
        "created_by": cmd.principal.username,
        "created_at": now,
        "updated_at": now,
        "dispatched_at": None,
        "dispatch_due_at": due_at(now, dispatch, deps.calendar, deps.tz),
        "feedback_due_at": None,
        "dispatch_warned_at": None,
        "dispatch_breached_at": None,
        "feedback_warned_at": None,
        "feedback_breached_at": None,
        "closed_at": None,
        "version": 1,
    }
    return row, mask_phone(phone) if phone else None


@dataclass
class _Rows:
    """One batch, numbered and ready to insert (the same on both backends)."""

    tickets: list[dict[str, Any]]
    events: list[dict[str, Any]]
    works: list[dict[str, Any]]
    idems: list[dict[str, Any]]
    views: list[dict[str, Any] | None]


_Statements = list[tuple[str, tuple[Any, ...]]]  # (multi-row INSERT, its flat parameters)
_Built = tuple[_Rows, _Statements]


class Intake:
    """The single writer for new tickets (one per service instance)."""

    def __init__(self, deps: Deps, *, max_batch: int = MAX_BATCH) -> None:
        self.deps = deps
        self._writer: GroupCommit[_Pending, dict[str, Any] | None] = GroupCommit(
            "ticket-intake-writer",
            self._commit,
            self._committed,
            max_batch=max_batch,
            may_overlap=self._may_overlap,
        )
        self._publishing: set[asyncio.Task[None]] = set()
        self._sqlite: _WriterProcess | None = None
        self._plans: _SqlitePlans | None = None
        self._start_again_at = 0.0  # loop time: after a writer process failed to start
        self._deaths = 0  # writer processes lost since one last committed a batch
        # the day counters as our last batch sent leaves them if it commits: the next
        # batch's numbers are guessed from them, so that one round trip to the writer
        # process does it all, and it can go out before that batch is answered
        self._lasts: dict[str, int] = {}
        # Batches out to the writer process (at most two). The first takes the write
        # lock, the last one back releases it. A second may join only behind a batch
        # sent with guessed numbers (`_overlap`), so a miss can never leave it stuck.
        self._out = 0
        self._overlap = False
        self._holding_lock = False
        self._drained = asyncio.Event()
        self._drained.set()
        self._starting = asyncio.Lock()  # one writer process start at a time

    @property
    def batches(self) -> int:  # for the benchmark's report
        return self._writer.batches

    async def start(self) -> None:
        self._writer.start()

    async def stop(self) -> None:
        """Stop writing (a batch in flight fails), fail what is queued, let the
        ticket.created announcements of committed batches go out, end the SQLite writer
        process."""
        await self._writer.stop()
        if self._publishing:
            _, late = await asyncio.wait(set(self._publishing), timeout=STOP_PUBLISH_TIMEOUT_S)
            for task in late:
                task.cancel()
            if late:
                log.warning("gave up waiting for %d ticket.created announcements", len(late))
                await asyncio.wait(late)
        if self._sqlite is not None:
            writer, self._sqlite = self._sqlite, None
            await writer.close()

    async def create(self, cmd: NewTicket, idem: IdempotencySpec | None = None) -> dict[str, Any]:
        """Returns the stored ticket's view once its transaction has committed."""
        if not self._writer.running:
            raise RuntimeError("intake not started")
        row, phone = prepare(self.deps, cmd, self.deps.clock())
        fut: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        self._writer.put(_Pending(row, phone, cmd.principal, idem, fut))
        view = await fut
        if view is None:  # built here, not in the single writer
            view = ticket_view(self.deps, _RowView(row), cmd.principal, phone=phone)
        return view

    def _committed(self, batch: list[_Pending], views: list[dict[str, Any] | None]) -> None:
        # the bus may be a network hop (NOTIFY): never hold the next batch for it
        task = asyncio.create_task(self._publish([p.row for p in batch]))
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

    async def _commit(self, batch: list[_Pending]) -> list[dict[str, Any] | None]:
        """Writes one batch in one transaction; returns the views the writer built
        (for idempotency records, stored with the ticket), None for the others."""
        db = self.deps.db
        by_day: dict[str, list[_Pending]] = defaultdict(list)
        tz = self.deps.tz
        for p in batch:
            by_day[p.row["created_at"].astimezone(tz).strftime("%Y%m%d")].append(p)
        path = db.sqlite_file if db.is_sqlite else None
        writer = await self._writer_process(path) if path is not None else None
        if writer is None:  # PostgreSQL, in-memory SQLite, or no writer process
            return await self._commit_sqlalchemy(batch, by_day)
        dialect = db.engine.dialect
        if self._plans is None or self._plans.dialect is not dialect:
            self._plans = _SqlitePlans(dialect)
        plans = self._plans
        counts = [(day, len(items)) for day, items in by_day.items()]

        sent: list[_Rows] = []  # the rows last handed to the process to commit

        def build(lasts: dict[str, int]) -> _Built:
            rows = self._number_and_build(batch, by_day, lasts)
            sent.append(rows)
            return rows, plans.statements(rows)

        # Numbers come from the counter, read inside the transaction. Usually nobody
        # else takes numbers, so the batch is built beforehand with the numbers that
        # follow ours, and the writer process checks them against the counter.
        classic = False  # after a miss: the two-step way, alone, which cannot miss
        while True:
            await self._enter(db.write_lock, alone=classic)
            try:
                if not classic and all(day in self._lasts for day, _ in counts):
                    expected = {day: self._lasts[day] + n for day, n in counts}
                    built = build(expected)
                    self._lasts = expected  # what the next batch follows, if this commits
                    self._overlap = True
                    state, _ = await writer.batch(counts, expected, built[1])
                    if state == "committed":
                        self._deaths = 0
                        return built[0].views
                    classic = True  # someone else took numbers: nothing of ours written
                    self._forget()
                    continue
                self._forget()  # nothing may follow a batch whose numbers are not known
                rows, self._lasts = await writer.transaction(counts, build, None)
                self._deaths = 0
                return rows.views
            except WriterProcessDied:
                self._forget()
                # It may have died after COMMIT, before its answer: then the batch is
                # in, and writing it again would store every ticket twice.
                if sent and await self._stored_anyway(sent[-1]):
                    return sent[-1].views
                raise
            except BaseException:
                self._forget()  # the batch behind it, if any, misses and goes again
                raise
            finally:
                self._leave(db.write_lock)

    async def _stored_anyway(self, rows: _Rows) -> bool:
        """Whether a batch whose answer was lost is in the database: its first ticket is
        there under its number with its own audit hash (which covers number, time,
        author and content, so another writer's ticket under that number is not it)."""
        first = rows.tickets[0]
        try:
            async with self.deps.db.read() as conn:
                stored = (
                    await conn.execute(
                        sa.select(ticket_t.c.last_hash).where(ticket_t.c.number == first["number"])
                    )
                ).scalar_one_or_none()
        except Exception:
            log.exception("could not tell if a batch of %d tickets was stored", len(rows.tickets))
            return False
        if stored is not None and stored == first["last_hash"]:
            log.warning(
                "the answer to a committed batch of %d tickets was lost; "
                "answered from the database",
                len(rows.tickets),
            )
            return True
        return False

    def _may_overlap(self) -> bool:
        """Whether the group commit may start the next batch now, beside the one out."""
        lock = self.deps.db.write_lock
        return self._overlap and not (lock is not None and _has_waiters(lock))

    def _forget(self) -> None:
        self._overlap = False
        self._lasts = {}

    async def _enter(self, lock: asyncio.Lock | None, *, alone: bool) -> None:
        """Join the batches out to the writer process: beside one sent with guessed
        numbers, or else once there are none (taking the write lock for them)."""
        while self._out and (alone or not self._overlap):
            await self._drained.wait()
        self._out += 1
        self._drained.clear()
        if self._out == 1 and lock is not None:
            try:
                await lock.acquire()
            except BaseException:
                self._leave(None)
                raise
            self._holding_lock = True

    def _leave(self, lock: asyncio.Lock | None) -> None:
        self._out -= 1
        if self._out == 0:
            self._overlap = False
            if self._holding_lock and lock is not None:
                self._holding_lock = False
                lock.release()
            self._drained.set()

    async def _writer_process(self, path: Path) -> _WriterProcess | None:
        """The running writer process for `path`, started if need be (after one died,
        too); None if it cannot start or keeps dying, and then until WRITER_RETRY_S
        later: a crash loop must not turn every ticket into a 503."""
        writer = self._sqlite
        if writer is not None and writer.path == path and writer.alive:
            return writer
        async with self._starting:  # two batches out may both find it gone
            return await self._start_writer_process(path)

    async def _start_writer_process(self, path: Path) -> _WriterProcess | None:
        writer = self._sqlite
        if writer is not None and writer.path == path and writer.alive:
            return writer
        loop = asyncio.get_running_loop()
        if writer is not None:
            self._sqlite = None
            await writer.close()
            if writer.path == path:
                self._deaths += 1
                if self._deaths >= WRITER_MAX_DEATHS:
                    self._deaths = 0
                    self._start_again_at = loop.time() + WRITER_RETRY_S
                    log.error(
                        "lost %d intake writer processes in a row; writing through "
                        "SQLAlchemy for %.0f s",
                        WRITER_MAX_DEATHS,
                        WRITER_RETRY_S,
                    )
        if loop.time() < self._start_again_at:
            return None
        writer = _WriterProcess(path)
        try:
            await writer.start()
        except Exception as exc:
            # Slower but the same rows: a service that cannot spawn still takes tickets.
            log.error(
                "could not start the intake's SQLite writer process (%s: %s); "
                "writing through SQLAlchemy for %.0f s",
                type(exc).__name__,
                exc,
                WRITER_RETRY_S,
            )
            self._start_again_at = loop.time() + WRITER_RETRY_S
            return None
        self._sqlite = writer
        return writer

    async def _commit_sqlalchemy(
        self, batch: list[_Pending], by_day: dict[str, list[_Pending]]
    ) -> list[dict[str, Any] | None]:
        rows: _Rows | None = None
        try:
            async with self.deps.db.write() as conn:
                lasts = {
                    day: await _allocate(conn, day, len(items)) for day, items in by_day.items()
                }
                rows = self._number_and_build(batch, by_day, lasts)
                await conn.execute(sa.insert(ticket_t), rows.tickets)
                await conn.execute(sa.insert(event_t), rows.events)
                await conn.execute(sa.insert(work_t), rows.works)
                if rows.idems:
                    await conn.execute(sa.insert(idem_t), rows.idems)
        except StoreUnavailable:
            # the connection may have gone during COMMIT, after the server committed
            if rows is not None and await self._stored_anyway(rows):
                return rows.views
            raise
        assert rows is not None
        return rows.views

    def _number_and_build(
        self, batch: list[_Pending], by_day: dict[str, list[_Pending]], lasts: dict[str, int]
    ) -> _Rows:
        """Inside the transaction, once the day counters are reserved (plain CPU work,
        on the event loop: it needs the service's keys, catalog and views)."""
        for day, items in by_day.items():
            first = lasts[day] - len(items) + 1
            for i, p in enumerate(items):
                p.row["number"] = format_number(day, first + i)
        rows = _Rows([], [], [], [], [])
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
            rows.tickets.append(r)
            rows.events.append(ev)
            need = workqueue.ticket_need(Status.NEW, None, r["dispatch_due_at"], None)
            assert need is not None
            rows.works.append(
                workqueue.ticket_item_row(r["number"], need, r["priority"], r["created_at"])
            )
            view = None
            if p.idem:
                # the replayed answer must be the answer: build it with the record
                view = ticket_view(self.deps, _RowView(r), p.principal, phone=p.phone)
                rows.idems.append(
                    {
                        "principal": p.idem.principal,
                        "key": p.idem.key,
                        "request_hash": p.idem.request_hash,
                        "status": 201,
                        # the bytes the 201 carries, so a replay is the answer itself
                        "body": dumps_json(view).decode(),
                        "created_at": r["created_at"],
                    }
                )
            rows.views.append(view)
        return rows


def _has_waiters(lock: asyncio.Lock) -> bool:
    """Whether another writer waits for the lock. asyncio.Lock keeps its waiters in
    `_waiters` (a deque of futures, or None), unchanged since Python 3.7: we only read
    it, to let others in between our batches rather than starve them."""
    waiters = getattr(lock, "_waiters", None)
    return bool(waiters) and any(not w.done() for w in waiters)


class _RowView:
    """Attribute access over a row dict, so the view code reads rows and dicts alike.

    The dict *is* the instance's __dict__: plain attribute lookups, no __getattr__
    (which Python reaches only after raising and discarding an AttributeError).
    """

    def __init__(self, d: dict[str, Any]) -> None:
        self.__dict__ = d


def format_number(day: str, seq: int) -> str:
    """YYYYMMDD + 5 digits (wider past 99,999 a day): digits only, read aloud easily."""
    return f"{day}{seq:05d}"


_ALLOCATE_SQL = (
    "INSERT INTO ticket_counter (day, value) VALUES (:day, :n) "
    "ON CONFLICT (day) DO UPDATE SET value = ticket_counter.value + :n "
    "RETURNING value"
)


async def _allocate(conn: AsyncConnection, day: str, n: int) -> int:
    """Reserve n numbers for `day`; returns the last one (same SQL on both backends)."""
    res = await conn.execute(sa.text(_ALLOCATE_SQL), {"day": day, "n": n})
    return int(res.scalar_one())


# ---------------------------------------------------------------- SQLite, two hops a batch


_DATETIME_TEXT: dict[datetime, str] = {}  # a ticket's row, event and queue item share times


def _sqlite_datetime(value: datetime) -> str:
    """UTCDateTime on SQLite: naive UTC in SQLAlchemy's storage format.

    Memoised: aware datetimes are equal exactly when they are the same instant, which
    is all the stored text depends on (a naive one never equals an aware one).
    """
    text = _DATETIME_TEXT.get(value)
    if text is None:
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        utc = value if value.tzinfo is UTC else value.astimezone(UTC)
        text = utc.isoformat(" ", "microseconds")[:-6]  # less its "+00:00"
        if len(_DATETIME_TEXT) >= 4096:
            _DATETIME_TEXT.clear()
        _DATETIME_TEXT[value] = text
    return text


_JSON_TEXT: dict[tuple[tuple[str, str | None], ...], str] = {}


def _json_text(value: Any) -> str:
    """`json.dumps(value)`, SQLAlchemy's JSON storage, with the common cases of a new
    ticket (an empty list or dict, an audit event's few string fields: a handful of
    distinct values) memoised.

    Only dicts of string keys and string or None values are memoised: their items
    decide the text exactly (1 == True == 1.0 hash alike but are spelt apart, as keys
    or values, so they never make a memo key).
    """
    t = type(value)
    if t is dict:
        if not value:
            return "{}"
        if all(type(k) is str and (type(v) is str or v is None) for k, v in value.items()):
            key = tuple(value.items())
            text = _JSON_TEXT.get(key)
            if text is None:
                text = json.dumps(value)
                if len(_JSON_TEXT) >= 4096:
                    _JSON_TEXT.clear()
                _JSON_TEXT[key] = text
            return text
    elif t is list and not value:
        return "[]"
    return json.dumps(value)


_DATETIME_SAMPLES = (
    datetime(2026, 4, 20, 15, 59, 59, 123456, tzinfo=UTC),
    datetime(2026, 4, 20, 8, 0, tzinfo=ZoneInfo("Asia/Shanghai")),
    datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
)
_JSON_SAMPLES: tuple[Any, ...] = (
    [],
    {},
    {"channel": "wechat", "kind": "complaint", "category": None, "urgency": "normal"},
    {"名": "王", "k": 'a"b\\c'},
    ["urban-mgmt", "water"],
    {"channel": "phone", "category": None, "n": 1.5, "name": "王女士", "nested": {"a": [1]}},
)


def _converter(column: sa.Column[Any], dialect: sa.Dialect) -> Callable[[Any], Any] | None:
    """How SQLAlchemy turns a Python value into what the driver stores for `column`.

    SQLAlchemy's own bind processor (Float -> float, ...), except for UTCDateTime and
    JSON, whose shortcuts are used only if they give what that processor gives.
    """
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    if process is None:
        return None
    if isinstance(column.type, UTCDateTime):
        fast: Callable[[Any], Any] = _sqlite_datetime
        samples: tuple[Any, ...] = _DATETIME_SAMPLES
    elif isinstance(column.type, sa.JSON):
        fast, samples = _json_text, _JSON_SAMPLES
    else:
        return process
    return fast if all(fast(v) == process(v) for v in samples) else process


class _TablePlan:
    """INSERT statement and row -> parameters conversion for one table, from its columns.

    Every column must get a value from the rows, or be filled by the database
    (autoincrement key, server default), or have a constant Python default that
    SQLAlchemy would have applied: a column nobody provides fails loudly instead of
    going in as NULL.
    """

    def __init__(self, table: sa.Table, keys: frozenset[str], dialect: sa.Dialect) -> None:
        unknown = keys - set(table.columns.keys())
        if unknown:
            raise ValueError(f"intake rows for {table.name} have unknown keys {sorted(unknown)}")
        given: list[str] = []
        converters: list[tuple[int, Callable[[Any], Any]]] = []
        constants: list[tuple[str, Any]] = []
        for column in table.columns:
            if column.name in keys:
                process = _converter(column, dialect)
                if process is not None:
                    converters.append((len(given), process))
                given.append(column.name)
            elif column is table.autoincrement_column or column.server_default is not None:
                continue
            elif column.default is not None and getattr(column.default, "is_scalar", False):
                value = column.default.arg  # type: ignore[attr-defined]
                process = _converter(column, dialect)
                constants.append((column.name, process(value) if process else value))
            else:
                raise ValueError(
                    f"intake rows for {table.name} give no value for column {column.name!r}, "
                    "which has no server default: decide its value in ticketing/intake.py"
                )
        names = given + [name for name, _ in constants]
        columns = ", ".join(_quote(n) for n in names)
        self._head = f"INSERT INTO {_quote(table.name)} ({columns}) VALUES "
        self._one = f"({', '.join('?' * len(names))})"
        self.width = len(names)
        self._multi: dict[int, str] = {}
        self._constants = tuple(value for _, value in constants)
        # rows -> the parameters of `multi_sql(len(rows))`: every row's values in column
        # order, one flat tuple
        self.flat: Callable[[Sequence[dict[str, Any]]], tuple[Any, ...]] = self._compile(
            given, dict(converters)
        )

    def _compile(self, given: list[str], converters: dict[int, Callable[[Any], Any]]) -> Any:
        """One function per plan that reads each row's values straight into the flat
        tuple: no per-row list, tuple and flattening, which were most of the cost of a
        batch's parameters. Built from the column names (quoted with repr) and
        converters only, never from row data."""
        env: dict[str, Any] = {}
        parts = []
        for i, name in enumerate(given):
            if i in converters:
                env[f"c{i}"] = converters[i]
                parts.append(f"None if (v{i} := r[{name!r}]) is None else c{i}(v{i})")
            else:
                parts.append(f"r[{name!r}]")
        for j, value in enumerate(self._constants):
            env[f"k{j}"] = value
            parts.append(f"k{j}")
        source = (
            "def flat(rows):\n"
            "    out = []\n"
            "    add = out.extend\n"
            "    for r in rows:\n"
            f"        add(({', '.join(parts)},))\n"
            "    return tuple(out)\n"
        )
        exec(compile(source, f"<intake plan {self._head[:40]}>", "exec"), env)
        return env["flat"]

    def multi_sql(self, n: int) -> str:
        """`INSERT ... VALUES (?, ...), ... ` for n rows, built once per n."""
        sql = self._multi.get(n)
        if sql is None:
            sql = self._multi[n] = self._head + ", ".join([self._one] * n)
        return sql


# SQLite's default SQLITE_MAX_VARIABLE_NUMBER before 3.32 (later ones allow 32766).
_SQLITE_MAX_VARIABLES = 999


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _SqlitePlans:
    """Turns a numbered batch into `(multi-row INSERT, flat parameters)` pairs."""

    def __init__(self, dialect: sa.Dialect) -> None:
        self.dialect = dialect
        self._plans: dict[tuple[str, frozenset[str]], _TablePlan] = {}

    def statements(self, rows: _Rows) -> _Statements:
        out = []
        for table, data in (
            (ticket_t, rows.tickets),
            (event_t, rows.events),
            (work_t, rows.works),
            (idem_t, rows.idems),
        ):
            if data:
                plan = self._plan(table, data[0])
                # One multi-row INSERT per chunk instead of executemany: fewer calls
                # into SQLite, and the whole batch crosses the pipe as a few statements.
                per = max(1, _SQLITE_MAX_VARIABLES // plan.width)
                for i in range(0, len(data), per):
                    chunk = data[i : i + per]
                    out.append((plan.multi_sql(len(chunk)), plan.flat(chunk)))
        return out

    def _plan(self, table: sa.Table, row: dict[str, Any]) -> _TablePlan:
        keys = frozenset(row)
        plan = self._plans.get((table.name, keys))
        if plan is None:
            plan = self._plans[(table.name, keys)] = _TablePlan(table, keys, self.dialect)
        return plan


class _PragmaRecorder:
    """Stands in for a DB-API connection to learn what `sqlite_pragmas` runs, so the
    writer process (which imports no SQLAlchemy) runs exactly the same statements."""

    def __init__(self) -> None:
        self.sql: list[str] = []

    def cursor(self) -> _PragmaRecorder:
        return self

    def execute(self, sql: str, *params: Any) -> None:
        if params:
            raise ValueError("sqlite_pragmas now takes parameters: pass them to the writer too")
        self.sql.append(sql)

    def close(self) -> None:
        pass


@functools.cache
def _pragma_sql() -> tuple[str, ...]:
    recorder = _PragmaRecorder()
    sqlite_pragmas(recorder)
    return tuple(recorder.sql)


class WriterProcessDied(StoreUnavailable):
    """The writer process ended mid-batch: nothing of the batch is stored (no COMMIT
    was answered), and the next batch starts a new process."""


class _WriterProcess:
    """The child process that owns the intake's SQLite connection, and our end of its
    pipes, under the write lock.

    Requests may be pipelined: each is written at once, in call order, and one reader
    task hands the replies (which come in the same order) to their waiters. A waiter that
    gave up still has its reply read, so the next one gets its own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._waiting: deque[asyncio.Future[Any]] = deque()  # in request order
        self._reader: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self) -> None:
        """Spawn the process and wait for its hello; raises (and leaves nothing
        running) if it cannot start."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",  # no environment, no user site, no script directory on sys.path
            "-S",  # no site-packages: it needs only the standard library
            writer_proc.__file__,
            str(self.path),
            *_pragma_sql(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self._proc = proc
        assert proc.stderr is not None
        self._stderr_task = asyncio.create_task(
            _copy_stderr(proc.stderr, proc.pid), name=f"intake-writer-{proc.pid}-stderr"
        )
        try:
            hello = await asyncio.wait_for(self._expect(), WRITER_START_TIMEOUT_S)
            if not (isinstance(hello, tuple) and hello[:1] == ("ready",)):
                raise RuntimeError(f"unexpected hello from the writer process: {hello!r:.80}")
        except BaseException:
            await self.kill()
            raise

    async def transaction(
        self,
        counts: list[tuple[str, int]],
        build: Callable[[dict[str, int]], _Built],
        guess: tuple[dict[str, int], _Built] | None,
    ) -> tuple[_Rows, dict[str, int]]:
        """Reserve numbers (`counts`: tickets per day), insert the rows numbered from
        them, COMMIT; returns the rows and the last numbers per day.

        `guess` is the last numbers we expect and the batch already built with them:
        if the counter agrees, it all happens in one round trip. If not (another
        writer took numbers, or there is no guess), the rows are built here with the
        numbers the counter gave, in a second round trip.

        Cancelled while only reserving, the process is killed: nothing can commit
        before it has the statements, and killing does not wait out a busy timeout.
        Cancelled once the statements are out, COMMIT may be under way: we wait for
        its answer (STOP_WRITE_TIMEOUT_S at most, then kill). Either way the caller's
        write lock stays held until SQLite's lock is gone.
        """
        expected, built = guess if guess is not None else (None, None)
        reply = await self._request(("begin", counts, expected, built[1] if built else None))
        try:
            state, lasts = self._result(await asyncio.shield(reply))
        except asyncio.CancelledError:
            await (self._settle(reply) if built else self.kill())
            raise
        if state == "committed":
            assert built is not None
            return built[0], lasts
        try:
            rows, statements = build(lasts)
        except BaseException:
            await self._rollback_quietly()
            raise
        reply = await self._request(("commit", statements))
        try:
            self._result(await asyncio.shield(reply))
        except asyncio.CancelledError:
            await self._settle(reply)
            raise
        return rows, lasts

    async def batch(
        self, counts: list[tuple[str, int]], expected: dict[str, int], statements: _Statements
    ) -> tuple[str, dict[str, int]]:
        """One round trip that never leaves a transaction open, so it may be sent while
        another batch is still out: ("committed", lasts) if the counter agreed with
        `expected`, else ("missed", lasts) with nothing written. Cancelled, we wait for
        the answer as `transaction` does."""
        reply = await self._request(("batch", counts, expected, statements))
        try:
            state, lasts = self._result(await asyncio.shield(reply))
        except asyncio.CancelledError:
            await self._settle(reply)
            raise
        return state, lasts

    async def _settle(self, reply: asyncio.Future[Any]) -> None:
        """After a cancellation with statements out: wait for the answer, roll back a
        transaction it left open; kill the process if that fails or takes too long."""

        async def answer() -> None:
            value = await asyncio.shield(reply)
            if value[0] == "ok" and isinstance(value[1], tuple) and value[1][0] == "open":
                await asyncio.shield(await self._request(("rollback",)))

        try:
            await asyncio.wait_for(answer(), STOP_WRITE_TIMEOUT_S)
        except BaseException:
            await self.kill()

    async def _rollback_quietly(self) -> None:
        """After the rows could not be built: the build error is the news, not this."""
        try:
            self._result(await asyncio.shield(await self._request(("rollback",))))
        except asyncio.CancelledError:
            await self.kill()
            raise
        except Exception:
            log.exception("intake writer process: rollback failed; restarting it")
            await self.kill()

    async def _request(self, message: Any) -> asyncio.Future[Any]:
        """Send `message` now (requests go out in call order) and return the future of
        its reply."""
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise WriterProcessDied("the intake writer process is not running")
        try:
            proc.stdin.write(writer_proc.frame(message))
        except ConnectionError as exc:
            raise await self._died() from exc
        reply = self._expect()
        try:
            await proc.stdin.drain()
        except ConnectionError:
            pass  # the reader finds the process gone and fails `reply` with the reason
        except asyncio.CancelledError:
            await self.kill()  # out, but nobody would hear its answer: start afresh
            raise
        return reply

    def _expect(self) -> asyncio.Future[Any]:
        """The future of the next reply not yet promised to anyone."""
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append(reply)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(
                self._read_replies(), name=f"intake-writer-{self.path.name}-replies"
            )
        return reply

    async def _read_replies(self) -> None:
        while self._waiting:
            try:
                value = await self._reply()
            except WriterProcessDied as exc:  # the process is gone: nobody gets an answer
                self._fail_waiting(exc)
                return
            reply = self._waiting.popleft()
            if not reply.done():
                reply.set_result(value)

    async def _reply(self) -> Any:
        """The next frame from the process (read by `_read_replies` only); raises
        WriterProcessDied when there is none to come."""
        proc = self._proc
        if proc is None or proc.stdout is None:
            raise WriterProcessDied("the intake writer process is not running")
        try:
            header = await proc.stdout.readexactly(writer_proc.HEADER.size)
            body = await proc.stdout.readexactly(writer_proc.HEADER.unpack(header)[0])
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise await self._died() from exc
        try:
            return pickle.loads(body)
        except Exception as exc:  # out of step with the process: start afresh
            died = WriterProcessDied("unreadable answer from the intake writer process")
            await self.kill(died)
            raise died from exc

    @staticmethod
    def _result(reply: tuple[str, Any]) -> Any:
        status, value = reply
        if status == "ok":
            return value
        exc: BaseException = value
        exc.add_note("(raised in the intake's SQLite writer process)")
        if is_unavailable(exc):
            raise StoreUnavailable(str(exc)) from exc
        raise exc

    async def _died(self) -> WriterProcessDied:
        proc = self._proc
        if proc is None:  # killed meanwhile: that is the news
            return WriterProcessDied("the intake writer process was stopped")
        # its pipe is closed, so it is on its way out: let its status tell why
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(proc.wait()), 1.0)
        code = proc.returncode
        log.error("intake writer process exited (status %s) while we waited on it", code)
        died = WriterProcessDied(f"the intake writer process exited (status {code})")
        await self.kill(died)
        return died

    async def kill(self, reason: WriterProcessDied | None = None) -> None:
        """End the process now (SQLite rolls back what it had not committed) and wait
        until it is gone, so its SQLite lock is too."""
        proc, self._proc = self._proc, None
        self._fail_waiting(reason)
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await self._reap(proc)

    async def close(self) -> None:
        """End of stdin: the process closes its connection and exits; killed if it
        has not within WRITER_EXIT_TIMEOUT_S."""
        proc, self._proc = self._proc, None
        self._fail_waiting()
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), WRITER_EXIT_TIMEOUT_S)
        except TimeoutError:
            log.warning("intake writer process %d did not exit; killing it", proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await self._reap(proc)

    def _fail_waiting(self, reason: WriterProcessDied | None = None) -> None:
        """The process is going: whoever waits for a reply gets WriterProcessDied."""
        waiting, self._waiting = list(self._waiting), deque()
        for reply in waiting:
            if not reply.done():
                reply.set_exception(
                    reason or WriterProcessDied("the intake writer process was stopped")
                )
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()

    async def _reap(self, proc: asyncio.subprocess.Process) -> None:
        await proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()
        task, self._stderr_task = self._stderr_task, None
        if task is not None:
            await task  # ends at EOF, now that the process is gone


async def _copy_stderr(stream: asyncio.StreamReader, pid: int) -> None:
    """The writer process's stderr, line by line, into our log (it writes only
    exception types and messages there, never statement parameters)."""
    try:
        while line := await stream.readline():
            log.warning("intake writer process %d: %s", pid, line.decode(errors="replace").rstrip())
    except Exception:
        log.exception("lost the intake writer process's stderr")
