"""Which service instance holds which calls, and closing the calls nobody holds any more.

A call lives on the instance whose socket holds it (hotline.acd.service). Several
instances share one PostgreSQL database, so no instance may assume that the live
calls in the database are its own: each start registers a `service_instance` row,
beats (`seen_at`) while it runs and says when it stops (`stopped_at`), and every
call's row names its instance (`call.instance_id`).

A live call is orphaned when its instance stopped, went silent for longer than the
stale threshold (a crash, a kill -9, a lost host) or is unknown. Orphans are closed
as `lost` (SERVICE_RESTART) and their queue items removed, by whichever instance
notices first: at its start and at each of its heartbeats. Calls written before
instances were recorded (`instance_id` NULL) are closed at start only, as before:
a heartbeat must not close the calls of an older instance still running beside
the new ones during a rolling upgrade.

Hosts' clocks disagree: an instance whose host runs 40 s slow would write a `seen_at`
the others read as silence, and lose its calls to their sweep. So on PostgreSQL each
instance measures, at start, how far the database's clock is from its own and states
its heartbeat times (and judges others') in the database's time. A skew under
`SKEW_TOLERANCE_S` is left alone: the stale threshold is 30 s. SQLite is one host.

On PostgreSQL two instances may sweep at once; the UPDATE re-checks each row's
state under its lock (READ COMMITTED), so every orphan is closed, and counted, by
exactly one of them.

Silence is not always death: an instance cut off from the database (an outage, a
partition) for longer than the threshold still holds its callers' sockets while the
others close their calls. So each beat that gets through also takes back what the
sweep took from this instance (`reclaim_lost_calls`): the calls it still holds live
get their row's state back from what the ACD knows now, and their queue item while
they wait, or the agents would never see them again.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from hotline.calls.models import ServiceInstance
from hotline.calls.store import call_event_t, call_t, work_item
from ticketing import workqueue
from ticketing.handlers import Deps

instance_t = ServiceInstance.__table__  # type: ignore[attr-defined]
log = logging.getLogger(__name__)

# the states in which a call still has a caller on some instance's socket
LIVE_STATES = ("queued", "ringing", "talking", "held", "transferring", "consulting", "conference")
LOST_CAUSE = "SERVICE_RESTART"
RECLAIMED = "reclaimed"  # the trail entry of a call taken back from the sweep
_IN_CHUNK = 500  # uuids per IN (...): far below either database's bind-parameter limit
SKEW_TOLERANCE_S = 2.0  # clock differences below this are not corrected
KEEP_GONE_S = 7 * 86400  # rows of instances silent this long are dropped (one per start)


@dataclass(frozen=True)
class Instance:
    """This process's identity in `service_instance`: a fresh id per start."""

    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    host: str = field(default_factory=lambda: socket.gethostname()[:255])
    pid: int = field(default_factory=os.getpid)


@dataclass(frozen=True)
class Held:
    """What the instance holding a call knows of it now: the state its row should say
    and, while the caller waits in line, its work-queue item (`store.queue_item`)."""

    state: str
    item: dict[str, Any] | None = None


# ---------------------------------------------------------------- pure


def stale_before(now: datetime, stale_after_s: float) -> datetime:
    """An instance last seen before this is presumed dead."""
    return now - timedelta(seconds=stale_after_s)


def orphaned(me: str, cutoff: datetime, *, include_unowned: bool) -> sa.ColumnElement[bool]:
    """Live calls held by no instance alive (not stopped, seen since `cutoff`), never
    `me`'s own; with `include_unowned` also those written before instances were
    recorded (instance_id NULL)."""
    alive = sa.exists().where(
        instance_t.c.id == call_t.c.instance_id,
        instance_t.c.stopped_at.is_(None),
        instance_t.c.seen_at >= cutoff,
    )
    owner = call_t.c.instance_id
    owned_by_other = sa.and_(owner.is_not(None), owner != me, ~alive)
    whose = sa.or_(owner.is_(None), owned_by_other) if include_unowned else owned_by_other
    return sa.and_(call_t.c.state.in_(LIVE_STATES), whose)


def swept_from(me: str) -> sa.ColumnElement[bool]:
    """`me`'s calls that a sweep closed as lost. Also those a later step of `me`'s has
    moved on since (a step writes its state, not `ended_at` or the cause): until they
    are cleared the row reads as ended, and its queue item is gone all the same."""
    return sa.and_(
        call_t.c.instance_id == me,
        call_t.c.hangup_cause == LOST_CAUSE,
        call_t.c.state.in_(("lost", *LIVE_STATES)),
    )


# ---------------------------------------------------------------- I/O


async def clock_offset(deps: Deps) -> timedelta:
    """What to add to this host's clock (`deps.clock`) to read the database's, for the
    times instances judge each other by; zero on SQLite or within the tolerance."""
    if deps.db.is_sqlite:
        return timedelta(0)
    before = deps.clock()
    async with deps.db.read() as conn:
        db_now = (await conn.execute(sa.select(sa.func.clock_timestamp()))).scalar_one()
    after = deps.clock()
    offset: timedelta = db_now - (before + (after - before) / 2)
    if abs(offset.total_seconds()) < SKEW_TOLERANCE_S:
        return timedelta(0)
    log.warning(
        "this host's clock is %.1f s %s the database's: instance heartbeats use the "
        "database's time (fix NTP on this host)",
        abs(offset.total_seconds()),
        "behind" if offset > timedelta(0) else "ahead of",
    )
    return offset


async def register(deps: Deps, instance: Instance, now: datetime) -> None:
    """This instance's row (again, if it went missing: a heartbeat puts it back)."""
    row = {
        "id": instance.id,
        "host": instance.host,
        "pid": instance.pid,
        "started_at": now,
        "seen_at": now,
        "stopped_at": None,
    }
    async with deps.db.write() as conn:
        await conn.execute(deps.db.upsert(instance_t, [row], ["id"], ["seen_at", "stopped_at"]))


async def beat(deps: Deps, instance: Instance, now: datetime) -> None:
    """Still alive: `seen_at` moves on (the row is put back if somebody removed it)."""
    async with deps.db.write() as conn:
        res = await conn.execute(
            sa.update(instance_t).where(instance_t.c.id == instance.id).values(seen_at=now)
        )
    if not res.rowcount:
        await register(deps, instance, now)


async def prune(deps: Deps, now: datetime, keep_s: float = KEEP_GONE_S) -> int:
    """Drop the rows of instances silent for `keep_s`: every start adds one, and their
    calls were closed as orphans long before (an unknown owner is an orphan too)."""
    async with deps.db.write() as conn:
        res = await conn.execute(
            sa.delete(instance_t).where(instance_t.c.seen_at < now - timedelta(seconds=keep_s))
        )
    return int(res.rowcount or 0)


async def mark_stopped(deps: Deps, instance: Instance, now: datetime) -> None:
    """A graceful stop: whatever this instance left live is an orphan from now on."""
    async with deps.db.write() as conn:
        await conn.execute(
            sa.update(instance_t)
            .where(instance_t.c.id == instance.id)
            .values(stopped_at=now, seen_at=now)
        )


async def close_orphaned_calls(
    deps: Deps, me: str, now: datetime, stale_after_s: float, *, include_unowned: bool
) -> list[str]:
    """Close the orphaned live calls as lost and drop their queue items, in one
    transaction; returns their uuids. Nobody waits on a ghost, and no live instance's
    call or queue item is touched."""
    cond = orphaned(me, stale_before(now, stale_after_s), include_unowned=include_unowned)
    async with deps.db.write() as conn:
        uuids = list(
            (
                await conn.execute(
                    sa.update(call_t)
                    .where(cond)
                    .values(state="lost", ended_at=now, hangup_cause=LOST_CAUSE)
                    .returning(call_t.c.uuid)
                )
            ).scalars()
        )
        for i in range(0, len(uuids), _IN_CHUNK):
            await conn.execute(
                sa.delete(work_item).where(
                    work_item.c.kind == workqueue.CALL,
                    work_item.c.ref.in_(uuids[i : i + _IN_CHUNK]),
                )
            )
    return uuids


async def reclaim_lost_calls(
    deps: Deps,
    me: str,
    now: datetime,
    held: Callable[[Sequence[str]], Mapping[str, Held]],
) -> dict[str, str]:
    """Take back `me`'s calls that others closed as lost while `me` could not beat but
    still held them: their row's state as `held` says (ended_at and cause cleared), a
    trail entry, and their queue item if they wait. Returns {uuid: state restored}.

    `held` is asked inside the transaction, once the swept rows are locked (the
    SQLite writer's lock; FOR UPDATE on PostgreSQL), about those rows only: a step of
    the ACD's committed before is no newer than its answer, and one after waits and
    lands on top, so a call that ends or is answered meanwhile is never set back.
    Rows another transaction holds are skipped (no waiting, no deadlock with the call
    writer): the next beat takes them. A call `held` does not name (it ended here, or
    is ending) stays lost."""
    cond = swept_from(me)
    pick = sa.select(call_t.c.uuid, call_t.c.state).where(cond).with_for_update(skip_locked=True)
    async with deps.db.write() as conn:
        swept = {r.uuid: r.state for r in await conn.execute(pick)}
        if not swept:
            return {}
        live = {u: h for u, h in held(list(swept)).items() if u in swept}
        by_state: dict[str, list[str]] = {}
        for uuid, h in live.items():
            if h.state in LIVE_STATES:  # others (emergency, callback) are written by their step
                by_state.setdefault(h.state, []).append(uuid)
        back: dict[str, str] = {}
        for state, uuids in by_state.items():
            for i in range(0, len(uuids), _IN_CHUNK):
                res = await conn.execute(
                    sa.update(call_t)
                    .where(cond, call_t.c.uuid.in_(uuids[i : i + _IN_CHUNK]))
                    .values(state=state, ended_at=None, hangup_cause=None)
                    .returning(call_t.c.uuid)
                )
                back.update((uuid, state) for uuid in res.scalars())
        if not back:
            return back
        await conn.execute(
            sa.insert(call_event_t),
            [
                {
                    "call_uuid": uuid,
                    "at": now,
                    "kind": RECLAIMED,
                    "actor": None,
                    "data": {"state": state, "was": swept[uuid], "instance": me},
                }
                for uuid, state in back.items()
            ],
        )
        items = [item for uuid in back if (item := live[uuid].item) is not None]
        if items:
            await conn.execute(workqueue.upsert_items(deps.db), items)
    return back


async def get_instance(deps: Deps, instance_id: str) -> dict[str, Any] | None:
    """The instance's row (operators' and tests' view)."""
    async with deps.db.read() as conn:
        row = (
            await conn.execute(sa.select(instance_t).where(instance_t.c.id == instance_id))
        ).first()
    return dict(row._mapping) if row else None
