"""The SLA clock: when a ticket must be dispatched and when a department must answer.

The rules follow Beijing's DB11/T 2021-2022: dispatch within 1 hour for emergencies,
2 hours for urgent cases (water, power, gas, heating outages, extreme weather), 24
hours otherwise; the department's feedback within 2 hours, 24 hours, or 7/15 working
days. Hour deadlines run on the clock, day and night, holidays included, because a
burst main does not wait for Monday. Day deadlines count working days on the official
calendar and end at the end of the last day, because departments are judged by the
day they answered on, not the minute.

Everything here is pure: instants in, instants out, stored and compared in UTC. The
city's time zone only decides which calendar day an instant falls on.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Literal, get_args
from zoneinfo import ZoneInfo

from ticketing.workdays import WorkCalendar

__all__ = [
    "DISPATCH_DEFAULTS",
    "FEEDBACK_DEFAULTS",
    "Duration",
    "DurationUnit",
    "Urgency",
    "due_at",
    "elapsed_fraction",
    "extend",
    "is_breached",
    "is_warning",
]

DurationUnit = Literal["hours", "working_days"]

_SUFFIX: dict[str, DurationUnit] = {"h": "hours", "wd": "working_days"}
_UNIT_SUFFIX: dict[DurationUnit, str] = {unit: suffix for suffix, unit in _SUFFIX.items()}
# ASCII digits only, no sign, no leading zero: the form written in category files.
_DURATION_RE = re.compile(r"([1-9][0-9]*)(h|wd)")


class Urgency(StrEnum):
    """How fast a case must move; picks the default dispatch and feedback deadlines."""

    EMERGENCY = "emergency"
    URGENT = "urgent"  # water/power/gas/heating outages, extreme weather
    NORMAL = "normal"


@dataclass(frozen=True)
class Duration:
    """A deadline length as the category taxonomy writes it ("2h", "15wd").

    Kept as amount + unit rather than a timedelta because "7 working days" has no
    fixed length: it only becomes an instant against a calendar and a start.
    """

    amount: int
    unit: DurationUnit

    def __post_init__(self) -> None:
        # Refused here as well as in parse() so a zero-length or negative deadline
        # cannot sneak in through code either: it would breach at creation.
        if self.unit not in get_args(DurationUnit):
            raise ValueError(f"unknown duration unit {self.unit!r}")
        if isinstance(self.amount, bool) or not isinstance(self.amount, int) or self.amount < 1:
            raise ValueError(f"duration amount must be a positive integer, got {self.amount!r}")

    @classmethod
    @functools.lru_cache(maxsize=256)
    def parse(cls, text: str) -> Duration:
        """Read the taxonomy's form; strict, because a category file with "15d" or
        "2 hours" should fail loudly at load rather than mean something unintended."""
        match = _DURATION_RE.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise ValueError(
                f"invalid duration {text!r}: expected a positive whole number followed by "
                "'h' (hours) or 'wd' (working days), e.g. '2h', '24h', '7wd', '15wd'"
            )
        return cls(int(match[1]), _SUFFIX[match[2]])

    def __str__(self) -> str:
        return f"{self.amount}{_UNIT_SUFFIX[self.unit]}"


DISPATCH_DEFAULTS: Mapping[Urgency, Duration] = MappingProxyType(
    {
        Urgency.EMERGENCY: Duration(1, "hours"),
        Urgency.URGENT: Duration(2, "hours"),
        Urgency.NORMAL: Duration(24, "hours"),
    }
)

# Categories may shorten NORMAL feedback to 7 working days in the taxonomy.
FEEDBACK_DEFAULTS: Mapping[Urgency, Duration] = MappingProxyType(
    {
        Urgency.EMERGENCY: Duration(2, "hours"),
        Urgency.URGENT: Duration(24, "hours"),
        Urgency.NORMAL: Duration(15, "working_days"),
    }
)


def due_at(start: datetime, dur: Duration, cal: WorkCalendar, tz: ZoneInfo) -> datetime:
    """When a deadline of `dur` started at `start` falls due, in UTC.

    Hours are added in UTC so a daylight-saving jump in the city's zone neither
    steals nor gives an hour. Working days start counting the day after the local
    date of `start` (the day of receipt is never counted, whatever the hour) and end
    at local midnight after the last one: "within 7 working days" means by the end
    of the seventh.
    """
    _require_aware(start, "start")
    if dur.unit == "hours":
        return start.astimezone(UTC) + timedelta(hours=dur.amount)
    local_day = start.astimezone(tz).date()
    return _end_of_day(cal.add_working_days(local_day, dur.amount), tz)


def extend(due: datetime, extra: Duration, cal: WorkCalendar, tz: ZoneInfo) -> datetime:
    """The deadline after an extension (延期) of `extra` is granted.

    The extension counts from the current deadline, not from the request, so asking
    early is not punished. A working-day deadline already sits at local midnight,
    i.e. the end of the previous day; counting from that previous day keeps "3 more
    working days" meaning three full days rather than silently skipping one.
    """
    _require_aware(due, "due")
    if extra.unit == "hours":
        return due.astimezone(UTC) + timedelta(hours=extra.amount)
    last_day = due.astimezone(tz).date()
    if _end_of_day(last_day - timedelta(days=1), tz) == due:
        last_day -= timedelta(days=1)
    return _end_of_day(cal.add_working_days(last_day, extra.amount), tz)


def elapsed_fraction(start: datetime, due: datetime, now: datetime) -> float:
    """How much of the allowed time is used: the supervisor's queue sorts on this.

    Never negative (a clock slightly behind the start reads 0), and not capped at 1
    so an overdue ticket shows how overdue it is (1.5 = half the allowance late).
    A deadline that leaves no time at all is simply used up once it arrives.
    """
    for value, name in ((start, "start"), (due, "due"), (now, "now")):
        _require_aware(value, name)
    total = (due - start).total_seconds()
    if total <= 0:
        return 1.0 if now >= due else 0.0
    return max(0.0, (now - start).total_seconds() / total)


def is_warning(start: datetime, due: datetime, now: datetime, fraction: float = 0.8) -> bool:
    """Whether the ticket is in the warning window: `fraction` of the time used but
    not yet breached. Once breached it is a breach, not a warning, so the watcher
    raises each event once instead of both."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    return elapsed_fraction(start, due, now) >= fraction and not is_breached(due, now)


def is_breached(due: datetime, now: datetime) -> bool:
    """Late only after the due instant: an answer at exactly the deadline is on time."""
    _require_aware(due, "due")
    _require_aware(now, "now")
    return now > due


def _end_of_day(day: date, tz: ZoneInfo) -> datetime:
    # Local midnight starting the next day. If a zone skips midnight for DST,
    # fold=0 resolves it to the instant the next day actually begins.
    next_midnight = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz)
    return next_midnight.astimezone(UTC)


def _require_aware(value: datetime, name: str) -> None:
    # A naive datetime is ambiguous between UTC and local time; guessing would move
    # deadlines by eight hours in Shanghai without any error.
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")
