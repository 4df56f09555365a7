"""The supervisor wall: the numbers a 12345 centre is judged by, each with its list.

Every number is computed at request time with the same predicate its drill-down
list uses, so a number and the list behind it cannot disagree. Two sources:

- the database, for what is history: tickets, today's volume, and the phone
  line's record (`call`, `emergency_handoff` rows): the service level today
  (answered within the ACD's target, 15 s, over answered today), the connection
  rate over the last 24 h (answered over answered + abandoned, as the ACD and
  GB/T 33358 count it: callbacks and emergency hand-offs are neither) and the
  emergency hand-offs today. History is shared by every instance and survives a
  restart, which the ACD's in-memory counters do not.
- the ACD in this process, for what is live: calls waiting, the longest wait,
  agents by state (one truth: the state an agent sets in the console is the
  ACD's, `PUT /api/v1/agents/me/state`).

Rates are fractions (0..1), as the ACD reports them; null when nothing was
counted yet (no call today), never a made-up 100 %.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa

from hotline.acd.domain import AgentState
from hotline.acd.service import AcdService
from hotline.calls.models import Call, EmergencyHandoff
from ticketing.handlers import DISPATCH_PHASE, FEEDBACK_PHASE, Deps, ticket_t
from ticketing.models import WorkItem

work_item = WorkItem.__table__  # type: ignore[attr-defined]
call_t = Call.__table__  # type: ignore[attr-defined]
handoff_t = EmergencyHandoff.__table__  # type: ignore[attr-defined]
AGENT_STATES = tuple(s.value for s in AgentState)
DAY = timedelta(hours=24)

TEXT_ANSWER_LIMIT = timedelta(minutes=3)  # GB/T 33358-2016: text channels within 3 minutes
CENTRE = "(hotline)"  # tickets still waiting for dispatch belong to the centre itself
DRILL_LIMIT = 500


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


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


class Wall:
    def __init__(
        self, deps: Deps, warn_fraction: float, alerts: Iterable[dict[str, Any]] = ()
    ) -> None:
        self.deps = deps
        self.warn_fraction = warn_fraction
        self.acd: AcdService | None = None  # the phone line's ACD, set when the app starts
        self.alerts = alerts  # the console feed's recent emergency alerts, oldest first

    @property
    def service_level_s(self) -> float:
        return self.acd.config.rules.service_level_s if self.acd else 15.0

    async def phone_history(self, conn: Any, now: datetime) -> dict[str, Any]:
        """What the call records say: service level today, connection rate 24 h,
        emergency hand-offs today."""
        today = start_of_today(now, self.deps)
        c = call_t.c
        answered_today, within = (
            await conn.execute(
                sa.select(
                    sa.func.count(),
                    sa.func.sum(sa.case((c.wait_s <= self.service_level_s, 1), else_=0)),
                ).where(c.answered_at >= today)
            )
        ).one()
        since = now - DAY
        answered_24h = (
            await conn.execute(sa.select(sa.func.count()).where(c.answered_at >= since))
        ).scalar_one()
        abandoned_24h = (
            await conn.execute(
                sa.select(sa.func.count()).where(c.state == "abandoned", c.ended_at >= since)
            )
        ).scalar_one()
        handoffs = (
            await conn.execute(sa.select(sa.func.count()).where(handoff_t.c.requested_at >= today))
        ).scalar_one()
        within = int(within or 0)
        return {
            "answered_today": answered_today,
            "answered_within_target_today": within,
            "service_level_target_s": self.service_level_s,
            "service_level_15s_today": _rate(within, answered_today),
            "answered_24h": answered_24h,
            "abandoned_24h": abandoned_24h,
            "connection_rate_24h": _rate(answered_24h, answered_24h + abandoned_24h),
            "emergency_handoffs_today": handoffs,
        }

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
            waiting = await self._waiting(conn, now)
            history = await self.phone_history(conn, now)
        catalog = self.deps.catalog
        depts = []
        for code, counts in sorted(
            by_dept.items(), key=lambda kv: (-kv[1]["breached"], -kv[1]["at_risk"], kv[0])
        ):
            dept = catalog.departments.get(code)
            depts.append({"department": code, "name": dept["name"] if dept else None, **counts})
        agents = dict.fromkeys(AGENT_STATES, 0)
        phone: dict[str, Any] = {
            "connected": self.acd is not None,
            "calls_waiting": None,
            "longest_wait_s": None,
            "callbacks_waiting": waiting["callback"]["count"],
            **history,
        }
        if self.acd is not None:
            kpis = self.acd.kpis()
            agents.update(kpis["agents"])
            phone.update(calls_waiting=kpis["waiting"], longest_wait_s=kpis["longest_wait_s"])
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
            "alerts": list(reversed(list(self.alerts)))[:20],
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
                .where(w.kind.in_(["conversation", "callback"]))
                .group_by(w.kind)
            )
        ).all()
        out = {
            k: {"count": 0, "longest_s": None, "over_limit": 0}
            for k in ("conversation", "callback")
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
            agents = self.acd.agents_view() if self.acd else []
            return [
                {
                    "username": a["username"],
                    "state": a["state"],
                    "state_for_s": a.get("state_for_s"),
                    "reason": a.get("reason"),
                    "call_uuid": a.get("call_uuid"),
                }
                for a in sorted(agents, key=lambda a: -(a.get("state_for_s") or 0))
                if not value or a["state"] == value
            ]
        if metric == "calls_waiting":
            live = self.acd.live_calls() if self.acd else []
            return [c for c in live if c["position"] is not None]
        if metric == "emergency_handoffs":
            h = handoff_t.c
            async with self.deps.db.read() as conn:
                rows = await conn.execute(
                    sa.select(handoff_t)
                    .where(h.requested_at >= start_of_today(now, self.deps))
                    .order_by(h.requested_at.desc())
                    .limit(DRILL_LIMIT)
                )
                return [
                    {
                        "call": r.call_uuid,
                        "line": r.line,
                        "route": r.route,
                        "agent": r.agent,
                        "ticket": r.ticket_number,
                        "outcome": r.outcome,
                        "requested_at": _iso(r.requested_at),
                    }
                    for r in rows
                ]
        if metric in ("conversations_waiting", "conversations_over_3min"):
            q = sa.select(work_item).where(work_item.c.kind == "conversation")
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
    "emergency_handoffs",
)
