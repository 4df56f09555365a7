"""The supervisor wall: the numbers a 12345 centre is judged by, each with its list.

Every number is computed from the database at request time with the same predicate
its drill-down list uses, so a number and the list behind it cannot disagree.
Phone figures the ACD owns (service level, connection rate, emergency hand-offs)
come from `PhoneStats` providers registered by the phone line; until one is
registered they are reported as unknown (null), never as zero.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa

from hotline.console.presence import AGENT_STATES, presence_t
from ticketing.handlers import DISPATCH_PHASE, FEEDBACK_PHASE, Deps, ticket_t
from ticketing.models import WorkItem

work_item = WorkItem.__table__  # type: ignore[attr-defined]

TEXT_ANSWER_LIMIT = timedelta(minutes=3)  # GB/T 33358-2016: text channels within 3 minutes
CENTRE = "(hotline)"  # tickets still waiting for dispatch belong to the centre itself
DRILL_LIMIT = 500

PhoneStats = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Risk:
    number: str
    department: str
    state: str  # "at_risk" | "breached"
    due_at: datetime


def _iso(dt: datetime | None) -> str | None:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z") if dt else None


def start_of_today(now: datetime, deps: Deps) -> datetime:
    local = now.astimezone(deps.tz).date()
    return datetime.combine(local, time(0), tzinfo=deps.tz).astimezone(UTC)


def classify(row: Any, now: datetime, warn_fraction: float) -> Risk | None:
    """Breached once past due; at risk once `warn_fraction` of the time has gone
    (the deadline watcher's definition of a warning)."""
    status = row.status
    if status in {s.value for s in DISPATCH_PHASE}:
        start, due, dept = row.created_at, row.dispatch_due_at, CENTRE
    elif status in {s.value for s in FEEDBACK_PHASE}:
        start, due, dept = row.dispatched_at, row.feedback_due_at, row.lead_department or CENTRE
    else:
        return None
    if due is None:
        return None
    if due <= now:
        return Risk(row.number, dept, "breached", due)
    if start is not None and now - start >= (due - start) * warn_fraction:
        return Risk(row.number, dept, "at_risk", due)
    return None


class Wall:
    def __init__(self, deps: Deps, warn_fraction: float) -> None:
        self.deps = deps
        self.warn_fraction = warn_fraction
        self.phone_sources: list[PhoneStats] = []

    async def _risks(self, now: datetime) -> list[Risk]:
        phases = [s.value for s in (*DISPATCH_PHASE, *FEEDBACK_PHASE)]
        c = ticket_t.c
        async with self.deps.db.read() as conn:
            rows = await conn.execute(
                sa.select(
                    c.number,
                    c.status,
                    c.lead_department,
                    c.created_at,
                    c.dispatched_at,
                    c.dispatch_due_at,
                    c.feedback_due_at,
                ).where(c.status.in_(phases))
            )
            return [r for r in (classify(x, now, self.warn_fraction) for x in rows) if r]

    async def numbers(self) -> dict[str, Any]:
        now = self.deps.clock()
        today = start_of_today(now, self.deps)
        risks = await self._risks(now)
        by_dept: dict[str, dict[str, int]] = {}
        for r in risks:
            d = by_dept.setdefault(r.department, {"at_risk": 0, "breached": 0})
            d[r.state] += 1
        c = ticket_t.c
        async with self.deps.db.read() as conn:
            channels = (
                await conn.execute(
                    sa.select(c.channel, sa.func.count())
                    .where(c.created_at >= today)
                    .group_by(c.channel)
                )
            ).all()
            categories = (
                await conn.execute(
                    sa.select(c.category_code, sa.func.count())
                    .where(c.created_at >= today)
                    .group_by(c.category_code)
                )
            ).all()
            states = (
                await conn.execute(
                    sa.select(presence_t.c.state, sa.func.count()).group_by(presence_t.c.state)
                )
            ).all()
            waiting = await self._waiting(conn, now)
        catalog = self.deps.catalog
        depts = []
        for code, counts in sorted(
            by_dept.items(), key=lambda kv: (-kv[1]["breached"], -kv[1]["at_risk"], kv[0])
        ):
            dept = catalog.departments.get(code)
            depts.append({"department": code, "name": dept["name"] if dept else None, **counts})
        agents = dict.fromkeys(AGENT_STATES, 0)
        agents.update({s: n for s, n in states})
        phone = {
            "connected": False,
            "calls_waiting": waiting["call"]["count"],
            "longest_wait_s": waiting["call"]["longest_s"],
            "callbacks_waiting": waiting["callback"]["count"],
            "service_level_15s_today": None,
            "connection_rate_24h": None,
            "emergency_handoffs_today": None,
        }
        for source in self.phone_sources:
            phone.update(await source())
            phone["connected"] = True
        return {
            "generated_at": _iso(now),
            "today_from": _iso(today),
            "tickets": {
                "at_risk": sum(d["at_risk"] for d in depts),
                "breached": sum(d["breached"] for d in depts),
                "by_department": depts,
            },
            "volume_today": {
                "total": sum(n for _, n in channels),
                "by_channel": [
                    {"channel": ch, "count": n} for ch, n in sorted(channels, key=lambda x: -x[1])
                ],
                "by_category": [
                    {
                        "category": code,
                        "name": (catalog.categories.get(code or "") or {}).get("name"),
                        "count": n,
                    }
                    for code, n in sorted(categories, key=lambda x: (-x[1], x[0] or ""))
                ],
            },
            "agents": {"by_state": agents},
            "conversations": {
                "waiting": waiting["conversation"]["count"],
                "waiting_over_3min": waiting["conversation"]["over_limit"],
                "longest_wait_s": waiting["conversation"]["longest_s"],
            },
            "phone": phone,
        }

    async def _waiting(self, conn: Any, now: datetime) -> dict[str, dict[str, Any]]:
        w = work_item.c
        limit = now - TEXT_ANSWER_LIMIT
        rows = (
            await conn.execute(
                sa.select(
                    w.kind,
                    sa.func.count(),
                    sa.func.min(w.created_at),
                    sa.func.sum(sa.case((w.created_at <= limit, 1), else_=0)),
                )
                .where(w.kind.in_(["conversation", "call", "callback"]))
                .group_by(w.kind)
            )
        ).all()
        out = {
            k: {"count": 0, "longest_s": None, "over_limit": 0}
            for k in ("conversation", "call", "callback")
        }
        for kind, n, oldest, over in rows:
            oldest = oldest.replace(tzinfo=UTC) if oldest and oldest.tzinfo is None else oldest
            out[kind] = {
                "count": n,
                "longest_s": int((now - oldest).total_seconds()) if oldest else None,
                "over_limit": int(over or 0),
            }
        return out

    async def drill(self, metric: str, value: str | None) -> list[dict[str, Any]]:
        """The list behind one number of the wall. Raises KeyError for unknown metrics."""
        now = self.deps.clock()
        if metric in ("at_risk", "breached"):
            risks = [
                r
                for r in await self._risks(now)
                if r.state == metric and (value is None or r.department == value)
            ]
            risks.sort(key=lambda r: r.due_at)
            return await self._tickets([r.number for r in risks[:DRILL_LIMIT]])
        if metric in ("channel", "category"):
            col = ticket_t.c.channel if metric == "channel" else ticket_t.c.category_code
            cond = col.is_(None) if value in (None, "") else col == value
            async with self.deps.db.read() as conn:
                numbers = (
                    await conn.execute(
                        sa.select(ticket_t.c.number)
                        .where(ticket_t.c.created_at >= start_of_today(now, self.deps), cond)
                        .order_by(ticket_t.c.created_at.desc())
                        .limit(DRILL_LIMIT)
                    )
                ).scalars()
                return await self._tickets(list(numbers))
        if metric == "agents":
            q = sa.select(presence_t).order_by(presence_t.c.since)
            if value:
                q = q.where(presence_t.c.state == value)
            async with self.deps.db.read() as conn:
                return [
                    {"username": r.username, "state": r.state, "since": _iso(r.since)}
                    for r in await conn.execute(q)
                ]
        if metric in ("conversations_waiting", "conversations_over_3min", "calls_waiting"):
            kind = "call" if metric == "calls_waiting" else "conversation"
            q = sa.select(work_item).where(work_item.c.kind == kind)
            if metric == "conversations_over_3min":
                q = q.where(work_item.c.created_at <= now - TEXT_ANSWER_LIMIT)
            async with self.deps.db.read() as conn:
                rows = await conn.execute(q.order_by(work_item.c.created_at).limit(DRILL_LIMIT))
                return [
                    {
                        "kind": r.kind,
                        "ref": r.ref,
                        "priority": r.priority,
                        "since": _iso(r.created_at),
                        "due_at": _iso(r.due_at),
                        "claimed_by": r.claimed_by,
                    }
                    for r in rows
                ]
        raise KeyError(metric)

    async def _tickets(self, numbers: list[str]) -> list[dict[str, Any]]:
        if not numbers:
            return []
        c = ticket_t.c
        async with self.deps.db.read() as conn:
            rows = {
                r.number: r
                for r in await conn.execute(sa.select(ticket_t).where(c.number.in_(numbers)))
            }
        return [
            {
                "number": r.number,
                "title": r.title,
                "status": r.status,
                "channel": r.channel,
                "category": r.category_code,
                "lead_department": r.lead_department,
                "dispatch_due_at": _iso(r.dispatch_due_at),
                "feedback_due_at": _iso(r.feedback_due_at),
                "created_at": _iso(r.created_at),
            }
            for n in numbers
            if (r := rows.get(n)) is not None
        ]


DRILL_METRICS = (
    "at_risk",
    "breached",
    "channel",
    "category",
    "agents",
    "conversations_waiting",
    "conversations_over_3min",
    "calls_waiting",
)
