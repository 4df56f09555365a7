"""Call records, callbacks and agents' phones in the database.

Each function is one short transaction. The ACD writes a call's row when the call
arrives (before anybody is told it is queued) and at each step after, so a
crash loses at most the step in flight, never the fact that somebody called.
A call's steps (`insert_call`, `update_call`, `record_survey`) are group-committed:
each returns once its own step is committed, in one transaction with whatever other
calls' steps were waiting for the writer at the time (`_CallWriter`). While the
database is out of reach they return at once instead, their steps kept here, in
order, and written when it is back: a caller on the line outlasts our store.

The statements a call runs at every step (its row, its trail, its queue item, the
caller's history) are built once, with bind parameters, and reused: building and
cache-keying a statement costs about as much as running it on SQLite, and on
aiosqlite every statement is three or four trips to the connection's thread, so
each call step uses as few statements as it can.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import math
import uuid as uuidlib
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from hotline.calls.models import AgentProfile, Call, CallbackRequest, CallEvent, CallStepMark
from ticketing import workqueue
from ticketing.handlers import Deps, TicketNotFound, append_trail_event, mask_phone
from ticketing.lifecycle import Role
from ticketing.models import Ticket
from ticketing.ports import Principal
from ticketing.store import StoreUnavailable

call_t = Call.__table__  # type: ignore[attr-defined]
call_event_t = CallEvent.__table__  # type: ignore[attr-defined]
mark_t = CallStepMark.__table__  # type: ignore[attr-defined]
callback_t = CallbackRequest.__table__  # type: ignore[attr-defined]
profile_t = AgentProfile.__table__  # type: ignore[attr-defined]
ticket_t = Ticket.__table__  # type: ignore[attr-defined]
work_item = workqueue.work_item
log = logging.getLogger(__name__)
_T = TypeVar("_T")

OPEN_TICKET_STATES = (
    "new",
    "dispatched",
    "accepted",
    "returned",
    "extension_requested",
    "replied",
    "reopened",
)
ACD_CLAIM = "acd"  # waiting calls are shown in the work queue but held by the ACD


def masked(phone: str) -> str:
    return mask_phone(phone) if phone else "unknown"


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat().replace("+00:00", "Z") if dt else None


# Built once (see the module's docstring); executed with a dict of parameters.
_INSERT_EVENT = sa.insert(call_event_t)
_INSERT_MARK = sa.insert(mark_t)
# the SET clause comes from the parameters' keys (cached per set of keys)
_UPDATE_CALL = sa.update(call_t).where(call_t.c.uuid == sa.bindparam("b_uuid"))
_DELETE_CALL_ITEM = sa.delete(work_item).where(
    work_item.c.kind == workqueue.CALL, work_item.c.ref == sa.bindparam("b_ref")
)


@functools.cache
def _insert_call_row(is_sqlite: bool) -> sa.Insert:
    """The call's row unless it exists: FreeSWITCH retries a socket connect, and a
    retried call keeps its one row (ON CONFLICT on the uuid). The retry may reach
    another instance (the first one died holding it): the instance that inserts
    holds the socket now, so it takes the call over (`instance_id`, when it gives
    one); nothing else of the row changes."""
    ins: Any = (sqlite.insert if is_sqlite else postgresql.insert)(call_t)
    owner = sa.func.coalesce(ins.excluded.instance_id, call_t.c.instance_id)
    return ins.on_conflict_do_update(index_elements=["uuid"], set_={"instance_id": owner})


_UPSERT_ITEM: dict[bool, sa.Insert] = {}


def _upsert_item(db: Any) -> sa.Insert:
    """The work queue's upsert, built once per dialect (it depends on nothing else)."""
    stmt = _UPSERT_ITEM.get(db.is_sqlite)
    if stmt is None:
        stmt = _UPSERT_ITEM[db.is_sqlite] = workqueue.upsert_items(db)
    return stmt


# ---------------------------------------------------------------- a call's steps, group-committed

# What became of a step: committed; a `once` entry that was there already; kept here to
# be written when the database is back; dropped (the backlog was full).
Outcome = Literal["written", "already", "deferred", "dropped"]
MAX_DEFERRED = 5000  # steps kept while the database is away (~ an hour of a busy line)
MAX_BATCH = 500  # steps per transaction when draining: a bounded transaction and IN (...)
STALL_S = 5.0  # a step not committed by then is deferred: its call goes on meanwhile
RETRY_S = (0.25, 5.0)  # first retry while the database is away, and the longest wait


@dataclass(eq=False)
class _Step:
    """What one step of one call writes: any of a new row, columns of its row, a trail
    entry (`once`: only if the call has no entry of that kind yet), its queue item."""

    uuid: str
    row: dict[str, Any] | None = None
    values: dict[str, Any] | None = None
    event: dict[str, Any] | None = None
    once: bool = False
    item: dict[str, Any] | None = None
    leave_queue: bool = False
    # other tables' writes that go with the step (an emergency hand-off's records): in
    # the step's transaction, so they are kept and written with it through an outage
    also: Callable[[Any], Awaitable[None]] | None = None
    # told once the step is committed, and whether it had been deferred first
    on_written: Callable[[bool], None] | None = None
    written: bool = True  # False: a `once` entry that was there already
    seq: int = 0  # order of hand-in (the writer's), for `flush`
    at: datetime | None = None  # when it happened (a `mark`'s time)
    # given at hand-in: written with the step (its trail entry's `step_key`, or its
    # mark), so a retry after an uncertain commit finds it written (`_Uncertain`)
    key: str = ""
    # the transaction that may have written it already: its COMMIT was sent and no
    # answer came back (None: the step is known not to be in the database)
    maybe: _Uncertain | None = None
    done: asyncio.Future[Outcome] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def describe(self) -> str:
        kind = self.event["kind"] if self.event else "columns" if self.values else "records"
        return f"{kind} of call {self.uuid}"

    @property
    def marked(self) -> bool:
        """Writes other tables but has no trail entry to carry its key: it leaves a
        mark instead (its `also` is not safe to run twice: a second hand-off row)."""
        return self.also is not None and self.event is None


class _Uncertain:
    """A transaction whose COMMIT was sent but whose outcome we never heard (the
    connection dropped after the server may have committed: asyncpg's connection
    error, which the store turns into StoreUnavailable). Retrying its steps blindly
    would write them twice: a second trail entry, a second emergency hand-off row and
    notice. So the retry first looks up the keys it wrote (`keys`: its trail entries'
    and marks'); a transaction is all or nothing, so one key found means all its steps
    are in, and none found means none is. Only a retry after such a failure asks:
    a commit that was answered costs nothing more.

    `committed` is settled by the first retry that asks (None until then); the steps
    of a transaction found committed are dropped from every later batch (settled as
    written), the others written as if for the first time."""

    __slots__ = ("committed", "keys")

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        self.committed: bool | None = None


class _CallWriter:
    """Group commit of the calls' steps: the steps that are waiting when the database's
    writer is free go in one transaction, one statement per kind of write (rows,
    columns, trail entries, queue items) for all of them.

    Every caller still returns only once its own step is committed, so "written before
    it is announced" holds as with a transaction per step. What changes is the cost
    when calls come together (a ramp of callers entering the queue at once found up to
    twenty writers waiting for SQLite's one writer): a transaction and its statements
    per batch instead of per step. A batch that fails is retried step by step, so one
    bad step fails alone.

    The database going away must not take the calls with it: callers are on the line
    whatever our store does, and a call task that dies of a write leaves its caller
    and agent stuck. So a step that cannot be written (the store unavailable, or no
    answer within `STALL_S`) is deferred: its caller hears so at once and goes on, and
    the step stays here, in hand-in order, with every step handed in after it (one
    queue, so a call's steps never overtake its insert), until a retry (or `flush`)
    gets through; then the backlog goes in batches through the same `_apply`, exactly
    as live. Nobody waits on a write while a backlog is kept: a new step joins its end.
    The backlog is bounded (`MAX_DEFERRED`): past it the oldest step is dropped, with an
    ERROR naming it, rather than the process running out of memory in a long outage.

    A failure at COMMIT leaves the batch maybe written (the server may have committed
    before the connection dropped): each step carries a key, written with it, and the
    retry looks the keys up first and leaves out what is in (`_Uncertain`), so no step
    (nor its `also`) is written twice; the unique key is the backstop.
    """

    def __init__(self) -> None:
        # (no reference to the database: it is the key this writer is kept under)
        self.pending: collections.deque[_Step] = collections.deque()
        self.in_flight: list[_Step] = []  # taken from `pending`'s head by the writer
        self.task: asyncio.Task[None] | None = None
        self.handed = 0  # steps handed in so far (their `seq`)
        self.failures = 0  # attempts that found the database away, ever
        self.tries = 0  # ... in this outage (the retry's back-off)
        self.down_since: float | None = None  # loop time the backlog started
        self.drained = 0  # backlog steps committed in this outage
        self.max_deferred = MAX_DEFERRED
        self.retry_s = RETRY_S
        self.stall_s = STALL_S
        self._wake = asyncio.Event()  # retry now (a flush), not at the back-off's end
        self._progress = asyncio.Event()  # set (and replaced) after every attempt

    def waiting(self) -> int:
        """Steps handed in and not committed (nor failed, nor dropped)."""
        return len(self.pending) + len(self.in_flight)

    async def write(self, db: Any, step: _Step) -> Outcome:
        # nobody may be left waiting for an error (a caller cancelled meanwhile)
        step.done.add_done_callback(_retrieve)
        self.handed += 1
        step.seq = self.handed
        step.key = uuidlib.uuid4().hex
        if step.event is not None:
            step.event["step_key"] = step.key
        self.pending.append(step)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run(db), name="call-writer")
        if self.down_since is not None:  # behind the backlog: written in its turn
            self._trim()
            return "deferred"
        # a cancelled caller does not take its step back: it is committed in its turn
        try:
            return await asyncio.wait_for(asyncio.shield(step.done), self.stall_s)
        except TimeoutError:
            self._going_down(f"no commit within {self.stall_s:g} s")
            return "deferred"

    async def _run(self, db: Any) -> None:
        try:
            while self.pending:
                if not await self._commit_next(db):
                    await self._pause()
        finally:
            self.task = None
            # left with steps waiting only when cancelled (the loop is closing, or a stop
            # that could not write them: it says how many)
            self.pending.extendleft(reversed(self.in_flight))
            self.in_flight = []
            for step in self.pending:
                step.done.cancel()
            self.pending.clear()
            self.down_since = None
            self._tell()

    async def _commit_next(self, db: Any) -> bool:
        """The next batch, in one transaction; False when the database is away (the
        batch is back at the head of the queue)."""
        try:
            applied = False
            try:
                async with db.write() as conn:
                    # taken once the writer is ours: whatever queued meanwhile comes along
                    n = min(len(self.pending), MAX_BATCH)
                    self.in_flight = [self.pending.popleft() for _ in range(n)]
                    await _apply(conn, db, self.in_flight)
                    applied = True
            except Exception as exc:
                batch, self.in_flight = self.in_flight, []
                if applied:  # it failed at COMMIT: maybe written, maybe not
                    _uncertain(batch)
                # no transaction to be had at all is the database's fault, not a step's
                if not batch or isinstance(exc, StoreUnavailable):
                    self.pending.extendleft(reversed(batch))
                    self._going_down(str(exc) or type(exc).__name__)
                    return False
                if len(batch) == 1:
                    self._failed(batch[0], exc)
                    return True
                return await self._one_by_one(db, batch)
            batch, self.in_flight = self.in_flight, []
            for step in batch:
                _settle(step)
            self._committed(len(batch))
            return True
        finally:
            self._tell()

    async def _one_by_one(self, db: Any, batch: list[_Step]) -> bool:
        """Find the step that fails; the others are written."""
        for i, step in enumerate(batch):
            applied = False
            try:
                async with db.write() as conn:
                    await _apply(conn, db, [step])
                    applied = True
            except StoreUnavailable as exc:  # gone meanwhile: the rest waits, in order
                if applied:
                    _uncertain([step])
                self.pending.extendleft(reversed(batch[i:]))
                self._going_down(str(exc))
                return False
            except Exception as one:  # (not retried: no second copy to fear)
                self._failed(step, one)
            else:
                _settle(step)
                self._committed(1)
        return True

    def _failed(self, step: _Step, exc: Exception) -> None:
        if step.done.done():  # a deferred step: nobody waits to hear it
            log.error("call step %s could not be written: %r", step.describe(), exc)
        _settle(step, exc)

    def _going_down(self, why: str) -> None:
        self.failures += 1
        self.tries += 1
        if self.down_since is None:
            self.down_since = asyncio.get_running_loop().time()
            self.drained = 0
            log.warning(
                "call steps cannot be written (%s): calls go on, their steps are kept "
                "here and written when the database is back",
                why,
            )
        for step in self.pending:  # (the batch in flight is back at its head)
            if not step.done.done():
                step.done.set_result("deferred")
        self._trim()

    def _committed(self, n: int) -> None:
        if self.down_since is None:
            return
        self.drained += n
        if self.pending:
            return
        log.warning(
            "the database is back: %d call steps kept over %.1f s are written",
            self.drained,
            asyncio.get_running_loop().time() - self.down_since,
        )
        self.down_since = None
        self.tries = 0

    def _trim(self) -> None:
        while self.waiting() > self.max_deferred and self.pending:
            step = self.pending.popleft()
            log.error(
                "call step %s dropped: more than %d steps wait for the database",
                step.describe(),
                self.max_deferred,
            )
            if not step.done.done():
                step.done.set_result("dropped")

    async def _pause(self) -> None:
        first, longest = self.retry_s
        self._wake.clear()
        delay = min(longest, first * 2 ** min(self.tries - 1, 30))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()

    def _tell(self) -> None:
        progress, self._progress = self._progress, asyncio.Event()
        progress.set()

    def _oldest(self) -> float:
        head = self.in_flight or self.pending
        return head[0].seq if head else math.inf

    async def flush(self, timeout_s: float | None = None) -> int:
        """Until every step handed in so far is committed (or failed), trying a backlog
        now rather than at the retry's next turn; stops early at an attempt that finds
        the database away. Returns how many steps still wait."""
        mark, failures = self.handed, self.failures
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self.task is not None and self._oldest() <= mark:
                    if self.failures != failures:
                        break
                    progress = self._progress
                    self._wake.set()
                    await progress.wait()
        return self.waiting()

    async def close(self, timeout_s: float | None) -> int:
        """A last flush, then whatever still cannot be written is given up; returns how
        many steps that is."""
        left = await self.flush(timeout_s)
        task = self.task
        if left and task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return left


def _settle(step: _Step, exc: Exception | None = None) -> None:
    if exc is None and step.on_written is not None:
        try:
            step.on_written(step.done.done())  # done already: it had been deferred
        except Exception:
            log.exception("after call step %s was written", step.describe())
    if step.done.done():  # deferred (nobody waits now), or cancelled (the loop closing)
        return
    if exc is None:
        step.done.set_result("written" if step.written else "already")
    else:
        step.done.set_exception(exc)


def _retrieve(fut: asyncio.Future[Outcome]) -> None:
    if not fut.cancelled():
        fut.exception()


def _uncertain(batch: list[_Step]) -> None:
    """The batch's COMMIT was sent and failed without an answer: its steps are kept for
    the retry (as any failed batch), which must first find out whether they are in
    (`_Uncertain`). Steps known to be in already (an earlier uncertain transaction,
    found committed) stay as they are. A batch without keys (columns, queue items:
    absolute values, the same whether written once or twice) needs no look-up."""
    steps = [s for s in batch if s.maybe is None or not s.maybe.committed]
    keys = [s.key for s in steps if s.event is not None or s.marked]
    if not keys:
        return
    maybe = _Uncertain(keys)
    for s in steps:
        s.maybe = maybe


_KEYS_IN = sa.union_all(
    sa.select(call_event_t.c.step_key).where(
        call_event_t.c.step_key.in_(sa.bindparam("keys", expanding=True))
    ),
    sa.select(mark_t.c.key).where(mark_t.c.key.in_(sa.bindparam("marks", expanding=True))),
)


async def _not_in_yet(conn: Any, batch: list[_Step]) -> list[_Step]:
    """The batch less the steps an earlier, uncertain transaction did write (one
    look-up, inside this transaction, for every transaction not settled yet)."""
    unsure = {s.maybe for s in batch if s.maybe is not None and s.maybe.committed is None}
    if unsure:
        keys = [k for u in unsure for k in u.keys]
        found = set((await conn.execute(_KEYS_IN, {"keys": keys, "marks": keys})).scalars())
        for u in unsure:
            u.committed = not found.isdisjoint(u.keys)
            if u.committed:
                log.warning(
                    "call steps whose COMMIT went unanswered had been committed (%d keys "
                    "looked up): they are not written again",
                    len(u.keys),
                )
    return [s for s in batch if s.maybe is None or not s.maybe.committed]


def _rounds(entries: list[tuple[str, _T]]) -> list[list[_T]]:
    """`entries` (call uuid, entry) split in order into lists that hold each call at
    most once: a call's k-th entry is in the k-th list. One statement per list keeps a
    call's entries in order and never meets a row twice in one multi-row statement."""
    rounds: list[list[_T]] = []
    seen: dict[str, int] = {}
    for uuid, entry in entries:
        k = seen[uuid] = seen.get(uuid, -1) + 1
        if k == len(rounds):
            rounds.append([])
        rounds[k].append(entry)
    return rounds


async def _apply(conn: Any, db: Any, batch: list[_Step]) -> None:
    """The batch's writes, in one transaction, leaving what a step-at-a-time writer
    would leave: rows, then columns (a call's steps merged in order: they set plain
    values), then trail entries in the order given, then queue items (a call's last
    removal, then its items put back after it, in order).

    A batch may hold many steps of one call (a backlog drained after an outage): still
    one statement per kind of write and set of columns, plus one per extra step of the
    call that had the most items or rows in the batch, never one per step.

    The steps' other writes (`also`) come first, in hand-in order: they may fill in
    their step's trail entry (an emergency hand-off's id, known once its row is in).

    A batch holding steps that an unanswered COMMIT may have written first leaves out
    those that are in (`_Uncertain`): nothing of theirs, `also` included, is written
    twice. Every step writes its key with its trail entry (the same statement) or, if
    it has none but writes other tables, a mark."""
    if any(s.maybe is not None for s in batch):
        batch = await _not_in_yet(conn, batch)
        if not batch:
            return
    for s in batch:
        s.written = True
    marks: list[dict[str, Any]] = []
    for s in batch:
        if s.also is not None:
            await s.also(conn)
            if s.event is None:
                marks.append({"key": s.key, "call_uuid": s.uuid, "at": s.at})
    if marks:
        await conn.execute(_INSERT_MARK, marks)
    for rows in _rounds([(s.uuid, s.row) for s in batch if s.row is not None]):
        await conn.execute(_insert_call_row(db.is_sqlite), rows)
    merged: dict[str, dict[str, Any]] = {}
    for s in batch:
        if s.values:
            merged.setdefault(s.uuid, {}).update(s.values)
    # one statement per set of columns: every call's row appears once
    by_columns: dict[frozenset[str], list[dict[str, Any]]] = {}
    for uuid, values in merged.items():
        by_columns.setdefault(frozenset(values), []).append({"b_uuid": uuid, **values})
    for params in by_columns.values():
        await conn.execute(_UPDATE_CALL, params)
    once = [s for s in batch if s.once and s.event is not None]
    if once:
        seen = {
            (r.call_uuid, r.kind)
            for r in await conn.execute(
                _EVENTS_OF_KINDS,
                {"uuids": [s.uuid for s in once], "kinds": list({s.event["kind"] for s in once})},
            )
        }
        for s in once:
            assert s.event is not None
            key = (s.uuid, s.event["kind"])
            if key in seen:
                s.written = False  # there already: not written again
            seen.add(key)
    events = [s.event for s in batch if s.event is not None and s.written]
    if events:
        await conn.execute(_INSERT_EVENT, events)
    # a removal undoes the items before it: the last one, then the items after it
    items: dict[str, list[dict[str, Any]]] = {}
    gone: dict[str, None] = {}
    for s in batch:
        if s.item is not None:
            items.setdefault(s.uuid, []).append(s.item)
        if s.leave_queue:
            gone[s.uuid] = None
            items.pop(s.uuid, None)
    if gone:
        await conn.execute(_DELETE_CALL_ITEM, [{"b_ref": uuid} for uuid in gone])
    for round_ in _rounds([(u, item) for u, its in items.items() for item in its]):
        await conn.execute(_upsert_item(db), round_)


_EVENTS_OF_KINDS = sa.select(call_event_t.c.call_uuid, call_event_t.c.kind).where(
    call_event_t.c.call_uuid.in_(sa.bindparam("uuids", expanding=True)),
    call_event_t.c.kind.in_(sa.bindparam("kinds", expanding=True)),
)
_WRITERS: weakref.WeakKeyDictionary[Any, _CallWriter] = weakref.WeakKeyDictionary()


def _writer(deps: Deps) -> _CallWriter:
    w = _WRITERS.get(deps.db)
    if w is None:
        w = _WRITERS[deps.db] = _CallWriter()
    return w


async def _write(deps: Deps, step: _Step) -> Outcome:
    return await _writer(deps).write(deps.db, step)


async def flush_call_writes(deps: Deps, timeout_s: float | None = None) -> int:
    """Wait for the call steps already handed in, trying a backlog now (a heartbeat got
    through: the database is back). Returns how many steps still wait for it."""
    w = _WRITERS.get(deps.db)
    return 0 if w is None else await w.flush(timeout_s)


async def close_call_writes(deps: Deps, timeout_s: float | None = 10.0) -> int:
    """The last flush (the ACD stops: nothing may still be written while the store
    shuts down); steps that still cannot be written are given up, with an ERROR that
    counts them. Returns that count."""
    w = _WRITERS.get(deps.db)
    left = 0 if w is None else await w.close(timeout_s)
    if left:
        log.error(
            "%d call steps could not be written before the stop (the database is out of "
            "reach) and are lost; the calls' rows miss those steps",
            left,
        )
    return left


def deferred_call_steps(deps: Deps) -> int:
    """Call steps kept here for the database to come back (0 when it is up)."""
    w = _WRITERS.get(deps.db)
    return 0 if w is None or w.down_since is None else w.waiting()


def _event(uuid: str, now: datetime, kind: str, actor: str | None, data: Any) -> dict[str, Any]:
    return {"call_uuid": uuid, "at": now, "kind": kind, "actor": actor, "data": data or {}}


def queue_item(
    uuid: str, priority: int, due: datetime | None, now: datetime, created: datetime | None = None
) -> dict[str, Any]:
    """A waiting call's row in the agents' work queue: shown to them, held by the ACD
    (which offers it; nobody claims it from the console). `created`: when the caller
    started waiting, if not `now` (an item put back for a call already in line)."""
    return {
        "kind": workqueue.CALL,
        "ref": uuid,
        "audience": workqueue.AGENTS,
        "action": "answer",
        "priority": priority,
        "due_at": due,
        "claimed_by": ACD_CLAIM,
        "claim_expires_at": now + timedelta(days=1),
        "created_at": created or now,
    }


async def insert_call(
    deps: Deps,
    uuid: str,
    caller: str,
    priority: int,
    state: str,
    now: datetime,
    *,
    queue: str = "12345",
    work_due: datetime | None = None,
    instance_id: str | None = None,
) -> None:
    """The call's row, its first trail entry and (while it waits) its work-queue item.

    `instance_id`: the service instance holding the call's socket (hotline.calls.
    instances), so that other instances leave the call alone while this one lives."""
    row = {
        "uuid": uuid,
        "caller_enc": deps.cipher.encrypt(caller) if caller else None,
        "caller_bidx": deps.cipher.blind_index(caller) if caller else None,
        "caller_masked": masked(caller),
        "queue": queue,
        "priority": priority,
        "state": state,
        "entered_at": now,
        "instance_id": instance_id,  # always present: a batch's rows share their keys
    }
    item = queue_item(uuid, priority, work_due, now) if state == "queued" else None
    step = _Step(uuid, row=row, event=_event(uuid, now, state, None, {}), item=item)
    await _write(deps, step)


async def update_call(
    deps: Deps,
    uuid: str,
    now: datetime,
    *,
    event: str | None = None,
    actor: str | None = None,
    data: dict[str, Any] | None = None,
    leave_queue: bool = False,
    item: dict[str, Any] | None = None,
    **values: Any,
) -> None:
    """One step of a call: its row's columns, a trail entry, its queue item gone, or
    back (`item`, from `queue_item`: a caller put back in line)."""
    step = _Step(
        uuid,
        values=values or None,
        event=_event(uuid, now, event, actor, data) if event else None,
        leave_queue=leave_queue,
        item=item,
    )
    await _write(deps, step)


async def records_with_call(
    deps: Deps,
    uuid: str,
    now: datetime,
    also: Callable[[Any], Awaitable[None]],
    *,
    on_written: Callable[[bool], None] | None = None,
    event: str | None = None,
    actor: str | None = None,
    data: dict[str, Any] | None = None,
    **values: Any,
) -> Outcome:
    """Other writes that belong to a call's step (an emergency hand-off's rows, a
    ticket's trail entry), with the step if one is given, as one call step: in one
    transaction, in the call's order, and deferred with its steps while the database
    is away (written when it is back) rather than failing. `also(conn)` runs in the
    transaction before the step's own trail entry, which it may fill in (`data`);
    if the transaction is retried it runs again, but never once it is committed (a
    COMMIT that went unanswered is looked up first: `_Uncertain`).
    `on_written(was_deferred)` is told once it is committed. Returns what became of
    it (`Outcome`)."""
    step = _Step(
        uuid,
        values=values or None,
        event=_event(uuid, now, event, actor, data) if event else None,
        also=also,
        on_written=on_written,
        at=now,
    )
    return await _write(deps, step)


async def record_survey(deps: Deps, uuid: str, now: datetime, data: dict[str, Any]) -> bool:
    """The post-call survey's answer on the call's trail, once per call (a retried
    socket session may ask twice); False when the call had its answer already.
    The check and the write are one transaction (a deferred answer is checked when it
    is written, and counts as new till then)."""
    step = _Step(uuid, event=_event(uuid, now, "survey", None, data), once=True)
    # deferred: kept to be written once, checked then against what the trail holds
    return await _write(deps, step) != "already"


_CALL_TICKET = sa.select(call_t.c.ticket_number).where(call_t.c.uuid == sa.bindparam("b_uuid"))


async def call_ticket(deps: Deps, uuid: str) -> str | None:
    """The ticket attached to the call, if any (what the post-call survey needs)."""
    async with deps.db.read() as conn:
        return (await conn.execute(_CALL_TICKET, {"b_uuid": uuid})).scalar_one_or_none()


async def get_call(deps: Deps, uuid: str) -> dict[str, Any] | None:
    async with deps.db.read() as conn:
        row = (await conn.execute(sa.select(call_t).where(call_t.c.uuid == uuid))).first()
        if row is None:
            return None
        events = (
            await conn.execute(
                sa.select(call_event_t)
                .where(call_event_t.c.call_uuid == uuid)
                .order_by(call_event_t.c.id)
            )
        ).all()
    return {
        **call_row_view(row),
        "events": [
            {"at": _iso(e.at), "kind": e.kind, "actor": e.actor, "data": e.data} for e in events
        ],
    }


def call_row_view(row: Any) -> dict[str, Any]:
    return {
        "uuid": row.uuid,
        "caller": row.caller_masked,
        "state": row.state,
        "priority": row.priority,
        "queue": row.queue,
        "agent": row.agent,
        "entered_at": _iso(row.entered_at),
        "answered_at": _iso(row.answered_at),
        "ended_at": _iso(row.ended_at),
        "wait_s": row.wait_s,
        "talk_s": row.talk_s,
        "hangup_cause": row.hangup_cause,
        "ticket": row.ticket_number,
        "recording": row.recording_path,
    }


# ---------------------------------------------------------------- caller -> history


def _tickets_of_caller(limit: int) -> sa.Select[Any]:
    return (
        sa.select(ticket_t.c.number, ticket_t.c.title, ticket_t.c.status)
        .where(
            ticket_t.c.contact_phone_bidx == sa.bindparam("bidx"),
            ticket_t.c.status.in_(OPEN_TICKET_STATES),
        )
        .order_by(ticket_t.c.created_at.desc())
        .limit(limit)
    )


_OPEN_TICKETS = functools.cache(_tickets_of_caller)


@functools.cache
def _caller_facts(with_contact: bool) -> sa.Select[Any]:
    """One row: the caller's other calls (all time, and whether one is recent), the
    citizen-card resident's handle and the channels' phone contact. Scalar subqueries,
    so the whole look-up is one statement on both databases."""
    from citizen_card.models import Resident

    bidx, uuid = sa.bindparam("bidx"), sa.bindparam("b_uuid")
    others = sa.and_(call_t.c.caller_bidx == bidx, call_t.c.uuid != uuid)
    previous = sa.select(sa.func.count()).select_from(call_t).where(others)
    recent = sa.exists().where(others, call_t.c.entered_at >= sa.bindparam("since"))
    resident_t = Resident.__table__  # type: ignore[attr-defined]
    resident = sa.select(resident_t.c.handle).where(resident_t.c.phone_bidx == bidx).limit(1)
    columns = [
        previous.scalar_subquery().label("previous"),
        recent.label("recent"),
        resident.scalar_subquery().label("resident"),
    ]
    contact_t = _contact_table() if with_contact else None
    if contact_t is not None:
        contact = (
            sa.select(contact_t.c.id)
            .where(contact_t.c.channel == "phone", contact_t.c.external_id == bidx)
            .limit(1)
        )
        columns.append(contact.scalar_subquery().label("contact"))
    return sa.select(*columns)


def _contact_table() -> sa.Table | None:
    """The channels' contacts, when the channels package is installed."""
    try:
        from channels.models import ChannelContact
    except ImportError:  # pragma: no cover - channels not installed
        return None
    return ChannelContact.__table__  # type: ignore[attr-defined,no-any-return]


async def caller_profile(
    deps: Deps, caller: str, uuid: str, now: datetime, within_h: float, limit: int = 10
) -> tuple[bool, dict[str, Any]]:
    """Whether the caller is a returning caller, and their history for the screen pop,
    in one read (two statements), by blind index (never decrypting other people's data).

    Returning: called before within `within_h` hours, or has an open ticket; such
    callers are served ahead of first calls. History: open tickets, earlier calls,
    the channels' contact and the citizen-card resident. The call `uuid` itself is
    never counted (its row may exist already: a retried socket connect).
    """
    if not caller:
        return False, {"open_tickets": [], "previous_calls": 0, "contact": None, "resident": None}
    params = {
        "bidx": deps.cipher.blind_index(caller),
        "b_uuid": uuid,
        "since": now - timedelta(hours=within_h),
    }
    async with deps.db.read() as conn:
        tickets = (await conn.execute(_OPEN_TICKETS(limit), params)).all()
        try:
            facts = (await conn.execute(_caller_facts(True), params)).one()
        except sa.exc.DBAPIError:  # the contacts' table not migrated yet
            await conn.rollback()
            facts = (await conn.execute(_caller_facts(False), params)).one()
    contact = getattr(facts, "contact", None)
    history = {
        "open_tickets": [
            {"number": t.number, "title": t.title, "status": t.status} for t in tickets
        ],
        "previous_calls": int(facts.previous or 0),
        "contact": f"contact:{contact}" if contact is not None else None,
        "resident": facts.resident,
    }
    return bool(facts.recent) or bool(tickets), history


# ---------------------------------------------------------------- tickets


async def attach_ticket(deps: Deps, uuid: str, number: str, who: Principal) -> dict[str, Any]:
    """Link the call to a ticket; the ticket's trail records the call (uuid, times,
    recording) so whoever reads the ticket can find the conversation."""
    now = deps.clock()
    async with deps.db.write() as conn:
        row = (await conn.execute(sa.select(call_t).where(call_t.c.uuid == uuid))).first()
        if row is None:
            raise LookupError(uuid)
        await append_trail_event(
            deps,
            conn,
            number,
            who,
            "call_attached",
            {
                "call": uuid,
                "entered_at": _iso(row.entered_at),
                "answered_at": _iso(row.answered_at),
                "ended_at": _iso(row.ended_at),
                "recording": row.recording_path,
                "agent": row.agent,
            },
        )
        await conn.execute(
            sa.update(call_t).where(call_t.c.uuid == uuid).values(ticket_number=number)
        )
        await conn.execute(
            sa.insert(call_event_t),
            [
                {
                    "call_uuid": uuid,
                    "at": now,
                    "kind": "ticket_attached",
                    "actor": who.username,
                    "data": {"ticket": number},
                }
            ],
        )
    return {"uuid": uuid, "ticket": number}


_SYSTEM = Principal("acd", Role.AGENT)  # who writes the system's trail entries


async def ticket_trail(deps: Deps, number: str, action: str, data: dict[str, Any]) -> bool:
    """A trail entry by the system (the post-call survey); False when there is no ticket."""
    try:
        async with deps.db.write() as conn:
            await append_trail_event(deps, conn, number, _SYSTEM, action, data)
    except TicketNotFound:
        return False
    return True


async def trail_in(deps: Deps, conn: Any, number: str, action: str, data: dict[str, Any]) -> bool:
    """`ticket_trail` inside the caller's transaction (a call step's `also`, which may be
    written after an outage); False when there is no ticket (nothing written)."""
    try:
        await append_trail_event(deps, conn, number, _SYSTEM, action, data)
    except TicketNotFound:
        return False
    return True


# ---------------------------------------------------------------- callbacks


async def create_callback(
    deps: Deps,
    caller: str,
    reason: str,
    now: datetime,
    *,
    call_uuid: str | None,
    due_in_s: float,
    priority: int = 1,
) -> int:
    """The promise and its work item in one transaction: both or neither."""
    due = now + timedelta(seconds=due_in_s)
    async with deps.db.write() as conn:
        res = await conn.execute(
            sa.insert(callback_t).returning(callback_t.c.id),
            [
                {
                    "call_uuid": call_uuid,
                    "phone_enc": deps.cipher.encrypt(caller),
                    "phone_bidx": deps.cipher.blind_index(caller),
                    "phone_masked": masked(caller),
                    "reason": reason,
                    "status": "open",
                    "requested_at": now,
                    "due_at": due,
                }
            ],
        )
        cb_id = int(res.scalar_one())
        await conn.execute(
            workqueue.upsert_items(deps.db),
            [
                {
                    "kind": workqueue.CALLBACK,
                    "ref": str(cb_id),
                    "audience": workqueue.AGENTS,
                    "action": "call_back",
                    "priority": priority,
                    "due_at": due,
                    "claimed_by": None,
                    "claim_expires_at": None,
                    "created_at": now,
                }
            ],
        )
    return cb_id


async def list_callbacks(
    deps: Deps, status: str = "open", limit: int = 100
) -> list[dict[str, Any]]:
    async with deps.db.read() as conn:
        rows = (
            await conn.execute(
                sa.select(callback_t)
                .where(callback_t.c.status == status)
                .order_by(callback_t.c.due_at, callback_t.c.id)
                .limit(limit)
            )
        ).all()
    return [callback_view(r) for r in rows]


def callback_view(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "call": r.call_uuid,
        "caller": r.phone_masked,
        "reason": r.reason,
        "status": r.status,
        "requested_at": _iso(r.requested_at),
        "due_at": _iso(r.due_at),
        "handled_by": r.handled_by,
        "handled_at": _iso(r.handled_at),
        "note": r.note,
    }


async def close_callback(
    deps: Deps, cb_id: int, who: str, status: str, note: str | None
) -> dict[str, Any] | None:
    now = deps.clock()
    async with deps.db.write() as conn:
        row = (
            await conn.execute(
                sa.update(callback_t)
                .where(callback_t.c.id == cb_id, callback_t.c.status == "open")
                .values(status=status, handled_by=who, handled_at=now, note=note)
                .returning(*callback_t.c)
            )
        ).first()
        if row is None:
            return None
        await conn.execute(
            sa.delete(work_item).where(
                work_item.c.kind == workqueue.CALLBACK, work_item.c.ref == str(cb_id)
            )
        )
    return callback_view(row)


# ---------------------------------------------------------------- agents' phones


async def load_profile(deps: Deps, username: str) -> dict[str, Any] | None:
    async with deps.db.read() as conn:
        row = (
            await conn.execute(sa.select(profile_t).where(profile_t.c.username == username))
        ).first()
    return dict(row._mapping) if row else None


async def save_profile(
    deps: Deps, username: str, extension: str | None, dial_string: str, skills: list[str]
) -> None:
    row = {
        "username": username,
        "extension": extension,
        "dial_string": dial_string,
        "skills": skills,
        "updated_at": deps.clock(),
    }
    async with deps.db.write() as conn:
        await conn.execute(
            deps.db.upsert(
                profile_t, [row], ["username"], ["extension", "dial_string", "skills", "updated_at"]
            )
        )


async def clear_old_recordings(deps: Deps, before: datetime) -> list[str]:
    """Forget recording paths of calls older than the retention; return the paths."""
    async with deps.db.write() as conn:
        rows = (
            await conn.execute(
                sa.select(call_t.c.id, call_t.c.recording_path).where(
                    call_t.c.recording_path.is_not(None), call_t.c.entered_at < before
                )
            )
        ).all()
        if rows:
            await conn.execute(
                sa.update(call_t)
                .where(call_t.c.id.in_([r.id for r in rows]))
                .values(recording_path=None)
            )
    return [r.recording_path for r in rows]
