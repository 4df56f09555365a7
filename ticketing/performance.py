"""The figures a 12345 centre is judged by, for the tickets received in a period.

受理量, 直办 / 派单, 按时派单率, 办结 and 按时办结率, 退单, 延期, 督办, 重办, 满意率, and
what is still open or overdue: per lead department, category, channel, kind or
district, or for the whole centre. A director reads it monthly, a department its own
line; /metrics shows the same rates for the last 30 days.

Definitions (also in the README) the figures keep to:
- the cohort is the tickets *created* in the period (local dates, both ends included);
  a ticket merged into another counts as received and as merged, and nowhere else
  (its parent carries the work);
- completed (办结) = answered directly, replied by the department, or closed; its time
  is the last answer or reply (a closure without either: the closing time);
- on time = completed no later than the feedback deadline in force (a granted
  extension moves it, so an extended ticket finished in time is on time);
- dispatched on time = the (latest) dispatch no later than the dispatch deadline;
- satisfaction counts every follow-up (回访) on the cohort, an unsatisfied one included
  even though the ticket went back for rework: 满意率 = (satisfied + basically
  satisfied) / follow-ups;
- a rate whose denominator is zero is null, not 0 or 100%.

One grouped query over the tickets joined to one grouped query over their events, so
the cost does not grow with the number of groups and there is no query per ticket.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from ticketing.catalog import Catalog
from ticketing.handlers import Deps, InvalidRequest, event_t, overdue_clause, ticket_t
from ticketing.lifecycle import (
    KIND_LABELS_ZH,
    OPEN_STATES,
    Action,
    Kind,
    Role,
    Satisfaction,
    Status,
)
from ticketing.ports import Principal

MAX_DAYS = 366
EARLIEST, LATEST = date(1970, 1, 1), date(9000, 12, 31)
DIMENSIONS = ("department", "category", "channel", "kind", "district", "day")
NONE_KEY = "-"  # a ticket without a department (answered at the centre) or district

_COMPLETED = (Status.ANSWERED.value, Status.REPLIED.value, Status.CLOSED.value)
_FINISHING = (Action.ANSWER.value, Action.REPLY.value)
# the trail entries the figures read; the rest (notes, dispatch, sign, supervision,
# contact reveals ...) are most of a trail and are not even looked at
_COUNTED = (*_FINISHING, Action.RETURN.value, Action.GRANT_EXTENSION.value, Action.FOLLOW_UP.value)


@dataclass(frozen=True)
class Period:
    """Local calendar days [first, last], and the UTC instants that bound them."""

    first: date
    last: date
    tz: ZoneInfo

    @property
    def start(self) -> datetime:
        return datetime.combine(self.first, time(), self.tz).astimezone(UTC)

    @property
    def end(self) -> datetime:
        return datetime.combine(self.last + timedelta(days=1), time(), self.tz).astimezone(UTC)


def parse_period(first: str | None, last: str | None, today: date, tz: ZoneInfo) -> Period:
    """`from`/`to` as YYYY-MM-DD (local days, both included). Default: this month so far."""

    def day(value: str | None, name: str, default: date) -> date:
        if not value:
            return default
        try:
            d = date.fromisoformat(value)
        except ValueError:
            raise InvalidRequest("a date YYYY-MM-DD", name) from None
        if not EARLIEST <= d <= LATEST:  # date(1, 1, 1) in UTC+8 is before year 1 in UTC
            raise InvalidRequest(f"a date from {EARLIEST} to {LATEST}", name)
        return d

    start = day(first, "from", today.replace(day=1))
    end = day(last, "to", today if not first else max(start, today))
    if end < start:
        raise InvalidRequest("on or after from", "to")
    if (end - start).days + 1 > MAX_DAYS:
        raise InvalidRequest(f"at most {MAX_DAYS} days from from", "to")
    return Period(start, end, tz)


@dataclass
class Figures:
    """Counts for one group. Rates are derived, never stored, so they always agree."""

    received: int = 0
    merged: int = 0
    answered_directly: int = 0
    dispatched: int = 0
    dispatched_on_time: int = 0
    completed: int = 0
    completed_on_time: int = 0
    open: int = 0
    overdue_open: int = 0
    returns: int = 0
    extensions_granted: int = 0
    supervised: int = 0
    reopened: int = 0
    follow_ups: int = 0
    satisfied: int = 0
    basically_satisfied: int = 0
    unsatisfied: int = 0
    completion_seconds: float = 0.0  # summed over `completed_timed`, for the average
    completed_timed: int = 0

    def add(self, other: Figures) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @staticmethod
    def _rate(num: int, den: int) -> float | None:
        return round(num / den, 4) if den else None

    def view(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("completion_seconds", "completed_timed")
        }
        out["dispatch_on_time_rate"] = self._rate(self.dispatched_on_time, self.dispatched)
        out["on_time_completion_rate"] = self._rate(self.completed_on_time, self.completed)
        out["satisfaction_rate"] = self._rate(
            self.satisfied + self.basically_satisfied, self.follow_ups
        )
        out["avg_hours_to_complete"] = (
            round(self.completion_seconds / self.completed_timed / 3600, 2)
            if self.completed_timed
            else None
        )
        return out


@dataclass
class Report:
    period: Period
    by: str | None
    generated_at: datetime
    rows: list[tuple[str, str, Figures]]  # (key, label, figures), largest first
    total: Figures

    def view(self) -> dict[str, Any]:
        return {
            "from": self.period.first.isoformat(),
            "to": self.period.last.isoformat(),
            "time_zone": self.period.tz.key,
            "by": self.by,
            "generated_at": self.generated_at.astimezone(UTC).isoformat(),
            "rows": [{"key": k, "label": lab, **f.view()} for k, lab, f in self.rows],
            "total": self.total.view(),
        }

    def csv(self) -> str:
        """One line per group and a total line; UTF-8 with a BOM so Excel reads 中文."""
        total = self.total.view()
        columns = list(total)
        buf = io.StringIO()
        buf.write("\ufeff")
        w = csv.writer(buf, lineterminator="\r\n")
        w.writerow([self.by or "scope", "label", *columns])
        for key, label, f in self.rows:
            v = f.view()
            w.writerow([key, label, *(_cell(v[c]) for c in columns)])
        w.writerow(["total", "合计", *(_cell(total[c]) for c in columns)])
        return buf.getvalue()


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def label_of(catalog: Catalog, by: str | None, key: str) -> str:
    if by == "department":
        row = catalog.departments.get(key)
        return row["name"] if row else ("12345 中心直办" if key == NONE_KEY else key)
    if by == "category":
        row = catalog.categories.get(key)
        return row["name"] if row else ("未分类" if key == NONE_KEY else key)
    if by == "kind":
        return KIND_LABELS_ZH.get(Kind(key), key) if key in Kind._value2member_map_ else key
    if by is None:
        return "全部"
    return key


def _seconds_between(db_is_sqlite: bool, later: Any, earlier: Any) -> Any:
    if db_is_sqlite:  # naive UTC text on SQLite; julianday reads it with its fraction
        return (sa.func.julianday(later) - sa.func.julianday(earlier)) * 86400.0
    return sa.extract("epoch", later - earlier)


def _count(cond: Any) -> Any:
    return sa.func.coalesce(sa.func.sum(sa.case((cond, 1), else_=0)), 0)


def report_query(
    period: Period, by: str | None, scope: str | None, now: datetime, sqlite: bool
) -> Any:
    """The whole report as one statement; `scope` limits it to one lead department."""
    t, e = ticket_t.c, event_t.c
    cohort = [t.created_at >= period.start, t.created_at < period.end]
    if scope is not None:
        cohort.append(t.lead_department == scope)
    numbers = sa.select(t.number).where(*cohort)
    sat = e.data["satisfaction"].as_string()
    follow_up = e.action == Action.FOLLOW_UP.value
    ev = (
        sa.select(
            e.ticket_number.label("number"),
            sa.func.max(sa.case((e.action.in_(_FINISHING), e.at))).label("done_at"),
            _count(e.action == Action.ANSWER.value).label("answers"),
            _count(e.action == Action.RETURN.value).label("returns"),
            _count(e.action == Action.GRANT_EXTENSION.value).label("extensions"),
            _count(follow_up).label("follow_ups"),
            _count(sa.and_(follow_up, sat == Satisfaction.SATISFIED.value)).label("sat"),
            _count(sa.and_(follow_up, sat == Satisfaction.BASIC.value)).label("basic"),
            _count(sa.and_(follow_up, sat == Satisfaction.UNSATISFIED.value)).label("unsat"),
        )
        .where(e.ticket_number.in_(numbers), e.action.in_(_COUNTED))
        .group_by(e.ticket_number)
        .subquery()
    )
    live = t.status != Status.MERGED.value
    done = t.status.in_(_COMPLETED) & live
    finished_at = sa.func.coalesce(ev.c.done_at, t.closed_at)
    on_time = sa.or_(t.feedback_due_at.is_(None), finished_at <= t.feedback_due_at)
    if by is None:
        key: Any = sa.literal(NONE_KEY)
    elif by == "day":
        key = local_day(t.created_at, period, sqlite)
    else:
        col = {
            "department": t.lead_department,
            "category": t.category_code,
            "channel": t.channel,
            "kind": t.kind,
            "district": t.district,
        }[by]
        key = sa.func.coalesce(col, NONE_KEY)
    timed = done & finished_at.is_not(None)
    n = sa.func.coalesce

    def live_sum(value: Any) -> Any:  # a trail count, over the tickets not merged away
        return n(sa.func.sum(sa.case((live, value), else_=0)), 0)

    return (
        sa.select(
            key.label("key"),
            sa.func.count().label("received"),
            _count(~live).label("merged"),
            _count(live & (n(ev.c.answers, 0) > 0)).label("answered_directly"),
            _count(live & t.dispatched_at.is_not(None)).label("dispatched"),
            _count(
                live
                & t.dispatched_at.is_not(None)
                & sa.or_(t.dispatch_due_at.is_(None), t.dispatched_at <= t.dispatch_due_at)
            ).label("dispatched_on_time"),
            _count(done).label("completed"),
            _count(done & on_time).label("completed_on_time"),
            _count(t.status.in_([s.value for s in OPEN_STATES])).label("open"),
            _count(overdue_clause(now)).label("overdue_open"),
            live_sum(ev.c.returns).label("returns"),
            live_sum(ev.c.extensions).label("extensions_granted"),
            _count(live & (t.supervision_count > 0)).label("supervised"),
            _count(live & (t.reopen_count > 0)).label("reopened"),
            live_sum(ev.c.follow_ups).label("follow_ups"),
            live_sum(ev.c.sat).label("satisfied"),
            live_sum(ev.c.basic).label("basically_satisfied"),
            live_sum(ev.c.unsat).label("unsatisfied"),
            n(
                sa.func.sum(
                    sa.case((timed, _seconds_between(sqlite, finished_at, t.created_at)), else_=0)
                ),
                0,
            ).label("completion_seconds"),
            _count(timed).label("completed_timed"),
        )
        .select_from(ticket_t.outerjoin(ev, ev.c.number == t.number))
        .where(*cohort)
        .group_by(key)
    )


def local_day(column: Any, period: Period, sqlite: bool) -> Any:
    """The local calendar day (YYYY-MM-DD) of a UTC timestamp column, in SQL.

    PostgreSQL converts with the zone's rules. SQLite knows no zones: with one UTC
    offset over the whole period (Asia/Shanghai has had one since 1991) the day is the
    shifted timestamp's date; across a DST change, the period's own day boundaries,
    computed here, decide (a CASE with a branch per day)."""
    if not sqlite:
        return sa.func.to_char(sa.func.timezone(period.tz.key, column), "YYYY-MM-DD")
    days = [period.first + timedelta(days=i) for i in range((period.last - period.first).days + 1)]
    offsets = {datetime.combine(d, time(12), period.tz).utcoffset() for d in days}
    starts = {datetime.combine(d, time(), period.tz).utcoffset() for d in days}
    if len(offsets | starts) == 1:
        minutes = int(next(iter(offsets)).total_seconds() // 60)  # type: ignore[union-attr]
        return sa.func.date(column, f"{minutes:+d} minutes")
    ends = [
        datetime.combine(d + timedelta(days=1), time(), period.tz).astimezone(UTC) for d in days
    ]
    return sa.case(*((column < end, d.isoformat()) for d, end in zip(days, ends, strict=True)))


def scope_of(principal: Principal) -> str | None:
    """A department user sees the figures of the tickets it leads, nothing else."""
    if principal.role is Role.DEPARTMENT:
        return principal.department_code or ""
    return None


async def performance(deps: Deps, period: Period, by: str | None, principal: Principal) -> Report:
    if by is not None and by not in DIMENSIONS:
        raise InvalidRequest(f"one of {', '.join(DIMENSIONS)}", "by")
    now = deps.clock()
    q = report_query(period, by, scope_of(principal), now, deps.db.is_sqlite)
    async with deps.db.read() as conn:
        rows = (await conn.execute(q)).all()
    total = Figures()
    out: list[tuple[str, str, Figures]] = []
    for r in rows:
        m = r._mapping
        f = Figures(
            **{
                k: (float(m[k] or 0) if k == "completion_seconds" else int(m[k] or 0))
                for k in (f.name for f in fields(Figures))
            }
        )
        total.add(f)
        out.append((str(m["key"]), label_of(deps.catalog, by, str(m["key"])), f))
    if by == "day":  # a trend: every day of the period, in order, quiet days as zeros
        have = {key for key, _, _ in out}
        day = period.first
        while day <= period.last:
            if day.isoformat() not in have:
                out.append((day.isoformat(), day.isoformat(), Figures()))
            day += timedelta(days=1)
        out.sort(key=lambda row: row[0])
    else:
        out.sort(key=lambda row: (-row[2].received, row[0]))
    return Report(period, by, now, out if by is not None else [], total)
