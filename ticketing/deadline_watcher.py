"""Deadline warnings and breaches, each raised exactly once.

The watcher marks a ticket with a conditional UPDATE (`... WHERE warned_at IS
NULL`) and emits the event only if its own update hit the row, so two instances
scanning the same PostgreSQL database never both announce the same breach.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ticketing.deadlines import is_breached, is_warning
from ticketing.events import DeadlineBreached, DeadlineWarning, DomainEvent
from ticketing.handlers import DISPATCH_PHASE, FEEDBACK_PHASE, Deps, announce, event_t, ticket_t
from ticketing.lifecycle import Action, Status
from ticketing.store import log_pass_failure

log = logging.getLogger(__name__)


def _dispatch_start() -> Any:
    """A reopen or a return restarts the dispatch allowance (a fresh dispatch_due_at),
    so it counts from the last of those, not from creation: else a ticket back on the
    desk days later is 'warned' the moment it comes back."""
    e = event_t.c
    reopened = (
        sa.select(sa.func.max(e.at))
        .where(
            e.ticket_number == ticket_t.c.number,
            e.to_status.in_([Status.REOPENED.value, Status.RETURNED.value]),
            e.action.in_([Action.REOPEN.value, Action.FOLLOW_UP.value, Action.RETURN.value]),
        )
        .scalar_subquery()
    )
    return sa.func.coalesce(reopened, ticket_t.c.created_at)


# phase: (statuses, when the allowance started, its deadline column)
_PHASES = {
    "dispatch": (DISPATCH_PHASE, _dispatch_start(), "dispatch_due_at"),
    "feedback": (FEEDBACK_PHASE, ticket_t.c.dispatched_at, "feedback_due_at"),
}


async def scan_once(deps: Deps, warn_fraction: float) -> list[DomainEvent]:
    """One pass: mark and announce what became due since the last pass."""
    now = deps.clock()
    c = ticket_t.c
    emitted: list[DomainEvent] = []
    for name, (phase, start, due_col) in _PHASES.items():
        warned = getattr(c, f"{name}_warned_at")
        breached = getattr(c, f"{name}_breached_at")
        due = getattr(c, due_col)
        async with deps.db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(
                        c.number,
                        start.label("start"),
                        due.label("due"),
                        warned,
                        breached,
                    ).where(
                        c.status.in_([s.value for s in phase]),
                        due.is_not(None),
                        breached.is_(None),
                    )
                )
            ).all()
        for r in rows:
            if r.start is None:
                continue
            m = r._mapping
            # only if the ticket is still where we read it: a move since (dispatch,
            # granted extension) makes what we computed stale
            still = [c.status.in_([s.value for s in phase]), due == r.due]
            if is_breached(r.due, now):
                if await _mark(deps, r.number, breached, now, still):
                    emitted.append(DeadlineBreached(r.number, name, _iso(r.due)))
            elif m[warned.name] is None and is_warning(r.start, r.due, now, warn_fraction):
                if await _mark(deps, r.number, warned, now, still):
                    emitted.append(DeadlineWarning(r.number, name, _iso(r.due)))
    await announce(deps, emitted)
    return emitted


async def _mark(
    deps: Deps, number: str, col: Any, now: datetime, still: Sequence[Any] = ()
) -> bool:
    async with deps.db.write() as conn:
        res = await conn.execute(
            sa.update(ticket_t)
            .where(ticket_t.c.number == number, col.is_(None), *still)
            .values({col.name: now})
        )
    return res.rowcount == 1


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


async def run_forever(deps: Deps, interval_s: float, warn_fraction: float) -> None:
    while True:
        try:
            await scan_once(deps, warn_fraction)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log_pass_failure(log, exc, "deadline scan failed; trying again in %.0f s", interval_s)
        await asyncio.sleep(interval_s)
