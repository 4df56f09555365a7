"""Call records, callbacks and agents' phones in the database.

Each function is one short transaction. The ACD writes a call's row when the call
arrives (before anybody is told it is queued) and at each step after, so a
crash loses at most the step in flight, never the fact that somebody called.
A call's steps (`insert_call`, `update_call`, `record_survey`) are group-committed:
each returns once its own step is committed, in one transaction with whatever other
calls' steps were waiting for the writer at the time (`_CallWriter`).

The statements a call runs at every step (its row, its trail, its queue item, the
caller's history) are built once, with bind parameters, and reused: building and
cache-keying a statement costs about as much as running it on SQLite, and on
aiosqlite every statement is three or four trips to the connection's thread, so
each call step uses as few statements as it can.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from hotline.calls.models import AgentProfile, Call, CallbackRequest, CallEvent
from ticketing import workqueue
from ticketing.handlers import Deps, TicketNotFound, append_trail_event, mask_phone
from ticketing.lifecycle import Role
from ticketing.models import Ticket
from ticketing.ports import Principal
from ticketing.store import StoreUnavailable

call_t = Call.__table__  # type: ignore[attr-defined]
call_event_t = CallEvent.__table__  # type: ignore[attr-defined]
callback_t = CallbackRequest.__table__  # type: ignore[attr-defined]
profile_t = AgentProfile.__table__  # type: ignore[attr-defined]
ticket_t = Ticket.__table__  # type: ignore[attr-defined]
work_item = workqueue.work_item

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
    written: bool = True  # False: a `once` entry that was there already
    done: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


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
    """

    def __init__(self) -> None:
        # (no reference to the database: it is the key this writer is kept under)
        self.pending: list[_Step] = []
        self.task: asyncio.Task[None] | None = None

    async def write(self, db: Any, step: _Step) -> bool:
        # nobody may be left waiting for an error (a caller cancelled meanwhile)
        step.done.add_done_callback(_retrieve)
        self.pending.append(step)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run(db), name="call-writer")
        # a cancelled caller does not take its step back: it is committed in its turn
        return await asyncio.shield(step.done)

    async def _run(self, db: Any) -> None:
        try:
            while self.pending:
                await self._commit_next(db)
        finally:
            self.task = None
            # left with steps waiting only when cancelled (the loop is closing)
            for step in self.pending:
                step.done.cancel()
            self.pending = []

    async def _commit_next(self, db: Any) -> None:
        batch: list[_Step] = []
        try:
            try:
                async with db.write() as conn:
                    # taken once the writer is ours: whatever queued meanwhile comes along
                    batch, self.pending = self.pending, []
                    await _apply(conn, db, batch)
            except Exception as exc:
                if not batch:  # no transaction to be had (store unavailable): tell who waits
                    batch, self.pending = self.pending, []
                if len(batch) <= 1 or isinstance(exc, StoreUnavailable):
                    for step in batch:
                        _settle(step, exc)
                    return
                for step in batch:  # find the one that fails; the others are written
                    try:
                        async with db.write() as conn:
                            await _apply(conn, db, [step])
                    except Exception as one:
                        _settle(step, one)
                    else:
                        _settle(step)
                return
            for step in batch:
                _settle(step)
        finally:
            for step in batch:  # left by cancellation: say so rather than hang
                if not step.done.done():
                    step.done.cancel()

    async def drain(self) -> None:
        """Until every step queued so far is committed (or failed)."""
        while self.task is not None:
            await asyncio.shield(self.task)


def _settle(step: _Step, exc: Exception | None = None) -> None:
    if step.done.done():  # cancelled meanwhile (the loop is closing)
        return
    if exc is None:
        step.done.set_result(step.written)
    else:
        step.done.set_exception(exc)


def _retrieve(fut: asyncio.Future[bool]) -> None:
    if not fut.cancelled():
        fut.exception()


async def _apply(conn: Any, db: Any, batch: list[_Step]) -> None:
    """The batch's writes, in one transaction, in the order a step-at-a-time writer
    would leave them: rows, then columns (a call's steps in the order given), then
    trail entries in the order given, then queue items added, then removed."""
    for s in batch:
        s.written = True
    rows = [s.row for s in batch if s.row is not None]
    if rows:
        await conn.execute(_insert_call_row(db.is_sqlite), rows)
    updates = [s for s in batch if s.values]
    if len({s.uuid for s in updates}) == len(updates):
        # one statement per set of columns: every call's row appears once
        by_columns: dict[frozenset[str], list[dict[str, Any]]] = {}
        for s in updates:
            assert s.values is not None
            by_columns.setdefault(frozenset(s.values), []).append({"b_uuid": s.uuid, **s.values})
        for params in by_columns.values():
            await conn.execute(_UPDATE_CALL, params)
    else:  # a call with two steps in the batch: its columns in order
        for s in updates:
            assert s.values is not None
            await conn.execute(_UPDATE_CALL, {"b_uuid": s.uuid, **s.values})
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
    items = [s.item for s in batch if s.item is not None]
    if items:
        await conn.execute(_upsert_item(db), items)
    gone = [{"b_ref": s.uuid} for s in batch if s.leave_queue]
    if gone:
        await conn.execute(_DELETE_CALL_ITEM, gone)


_EVENTS_OF_KINDS = sa.select(call_event_t.c.call_uuid, call_event_t.c.kind).where(
    call_event_t.c.call_uuid.in_(sa.bindparam("uuids", expanding=True)),
    call_event_t.c.kind.in_(sa.bindparam("kinds", expanding=True)),
)
_WRITERS: weakref.WeakKeyDictionary[Any, _CallWriter] = weakref.WeakKeyDictionary()


async def _write(deps: Deps, step: _Step) -> bool:
    w = _WRITERS.get(deps.db)
    if w is None:
        w = _WRITERS[deps.db] = _CallWriter()
    return await w.write(deps.db, step)


async def flush_call_writes(deps: Deps) -> None:
    """Wait for the call steps already handed in (the ACD calls it when it stops, so
    nothing is still being written while the store shuts down)."""
    w = _WRITERS.get(deps.db)
    if w is not None:
        await w.drain()


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


async def record_survey(deps: Deps, uuid: str, now: datetime, data: dict[str, Any]) -> bool:
    """The post-call survey's answer on the call's trail, once per call (a retried
    socket session may ask twice); False when the call had its answer already.
    The check and the write are one transaction."""
    step = _Step(uuid, event=_event(uuid, now, "survey", None, data), once=True)
    return await _write(deps, step)


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


async def ticket_trail(deps: Deps, number: str, action: str, data: dict[str, Any]) -> bool:
    """A trail entry by the system (emergency hand-off); False when there is no ticket."""
    who = Principal("acd", Role.AGENT)
    try:
        async with deps.db.write() as conn:
            await append_trail_event(deps, conn, number, who, action, data)
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
