"""Working days on the official Chinese calendar.

Day deadlines (7 or 15 working days for a department's feedback) are counted on the
calendar the State Council publishes each year: statutory holidays are days off even
on a weekday, and make-up working days (调休) are working days even on a weekend.
The `chinese_calendar` package carries those lists, but only for the years it has
been released for; each December the State Council announces the next year before
the package catches up. So an admin-edited override file supplies the years it lacks,
and a year nobody knows falls back to Monday-Friday with a warning: a deadline that is
a day or two off is better than a hotline that stops creating tickets on 1 January.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import chinese_calendar
import yaml

__all__ = ["WorkCalendar", "YearOverride"]

logger = logging.getLogger(__name__)

_ONE_DAY = timedelta(days=1)
_LIST_KEYS = ("holidays", "workdays")


@dataclass(frozen=True)
class YearOverride:
    """One year's official calendar, typed in by an admin from the State Council notice.

    Only the exceptions are listed, the same way the notice reads: `holidays` are days
    off (listing the weekend days inside a holiday block is harmless), `workdays` are
    the make-up weekend days. Every other day follows Monday-Friday.
    """

    holidays: frozenset[date] = field(default_factory=frozenset)
    workdays: frozenset[date] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        # Accept any iterable so callers can pass lists; store frozensets so the
        # calendar stays hashable and immutable once built.
        object.__setattr__(self, "holidays", frozenset(self.holidays))
        object.__setattr__(self, "workdays", frozenset(self.workdays))
        both = self.holidays & self.workdays
        if both:
            first = min(both)
            raise ValueError(f"{first.isoformat()} is listed both as a holiday and a workday")

    def is_working_day(self, d: date) -> bool:
        if d in self.workdays:
            return True
        if d in self.holidays:
            return False
        return d.weekday() < 5


class WorkCalendar:
    """Answers "is this a working day?" for the deadline clock.

    One instance lives for the life of the service (built at start-up from the
    override file) and is asked about the same few dates over and over by the
    deadline watcher, so answers are memoised per date. It holds no clock of its own:
    callers decide what "today" is in the city's time zone.
    """

    def __init__(self, overrides: Mapping[int, YearOverride] | None = None) -> None:
        overrides = dict(overrides or {})
        for year, override in overrides.items():
            for d in sorted(override.holidays | override.workdays):
                if d.year != year:
                    raise ValueError(f"year {year}: {d.isoformat()} is not in {year}")
        self._overrides: dict[int, YearOverride] = overrides
        self._cache: dict[date, bool] = {}
        self._warned_years: set[int] = set()

    @classmethod
    def from_file(cls, path: Path) -> WorkCalendar:
        """Build the calendar from the admin's override file.

        A missing file is the normal case while the library knows every year in use,
        so it means "no overrides". Anything wrong inside the file is refused with the
        file and the offending entry named: the service reads it at start-up, and a
        typo silently turning a holiday into a working day would put every deadline
        of that week in the wrong place without anyone noticing.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: cannot read holiday override file: {exc}") from exc
        try:
            stream = io.StringIO(text)
            stream.name = str(path)  # so YAML error marks name the file, not "<unicode string>"
            raw = yaml.load(stream, Loader=_OverrideLoader)  # a SafeLoader subclass
        except (yaml.YAMLError, ValueError, TypeError) as exc:
            raise ValueError(f"{path}: not valid YAML: {exc}") from exc
        return cls(_parse_overrides(raw, path))

    def is_working_day(self, d: date) -> bool:
        d = _as_date(d)
        cached = self._cache.get(d)
        if cached is None:
            cached = self._cache[d] = self._compute(d)
        return cached

    def add_working_days(self, start: date, n: int) -> date:
        """The n-th working day strictly after `start`.

        "Strictly after" because the day a ticket arrives is never counted: a
        complaint received at 17:55 has not had a working day yet.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        d = _as_date(start)
        remaining = n
        while remaining:
            d += _ONE_DAY
            if self.is_working_day(d):
                remaining -= 1
        return d

    def working_days_between(self, a: date, b: date) -> int:
        """Working days in (a, b]; 0 when b is not after a.

        Half-open to match `add_working_days`: `working_days_between(a,
        add_working_days(a, n)) == n`, so a report of "days taken" agrees with the
        deadline the department was given.
        """
        count = 0
        d, b = _as_date(a), _as_date(b)
        while d < b:
            d += _ONE_DAY
            if self.is_working_day(d):
                count += 1
        return count

    def knows_year(self, year: int) -> bool:
        """Whether `year` has a real calendar, so an admin page can list missing years
        before the guesswork starts rather than after."""
        if year in self._overrides:
            return True
        try:
            chinese_calendar.is_workday(date(year, 1, 1))
        except (NotImplementedError, ValueError):
            return False
        return True

    def _compute(self, d: date) -> bool:
        override = self._overrides.get(d.year)
        if override is not None:
            return override.is_working_day(d)
        try:
            return bool(chinese_calendar.is_workday(d))
        except NotImplementedError:
            pass
        if d.year not in self._warned_years:
            self._warned_years.add(d.year)
            logger.warning(
                "No official holiday calendar for %d (upgrade chinesecalendar or add the "
                "year to the holiday override file); counting Monday-Friday as working days",
                d.year,
            )
        return d.weekday() < 5


class _OverrideLoader(yaml.SafeLoader):
    """SafeLoader that leaves dates as text and refuses duplicate keys.

    Plain YAML turns `2027-02-30` into a bare "day is out of range" error with no hint
    of where, and a second `2027:` block silently replaces the first; both are easy
    slips in a hand-edited file, so they are reported with the entry named.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable: the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_OverrideLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _as_date(d: date) -> date:
    # A datetime is a date subclass: left as is it would key the cache per instant
    # and make add_working_days return a datetime.
    return d.date() if isinstance(d, datetime) else d


def _parse_overrides(raw: Any, path: Path) -> dict[int, YearOverride]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: expected a mapping of year -> holidays/workdays at top level")
    result: dict[int, YearOverride] = {}
    for key, body in raw.items():
        year = _parse_year(key, path)
        where = f"{path}: year {year}"
        if not isinstance(body, Mapping):
            raise ValueError(f"{where}: expected a mapping with 'holidays' and/or 'workdays'")
        unknown = [k for k in body if k not in _LIST_KEYS]
        if unknown:
            raise ValueError(
                f"{where}: unknown key {unknown[0]!r} (expected 'holidays', 'workdays')"
            )
        if not body:
            raise ValueError(f"{where}: lists neither 'holidays' nor 'workdays'")
        lists = {
            name: _parse_dates(body.get(name), year, f"{where}, {name}") for name in _LIST_KEYS
        }
        both = lists["holidays"] & lists["workdays"]
        if both:
            raise ValueError(
                f"{where}: {min(both).isoformat()} is listed both in holidays and workdays"
            )
        result[year] = YearOverride(holidays=lists["holidays"], workdays=lists["workdays"])
    return result


def _parse_year(key: Any, path: Path) -> int:
    # bool is an int subclass, and YAML reads `yes:` as True.
    if isinstance(key, int) and not isinstance(key, bool):
        year = key
    elif isinstance(key, str) and key.isascii() and key.isdigit():
        year = int(key)
    else:
        raise ValueError(f"{path}: {key!r} is not a year")
    if not 1 <= year <= 9999:
        raise ValueError(f"{path}: {key!r} is not a year")
    return year


def _parse_dates(value: Any, year: int, where: str) -> frozenset[date]:
    if value is None:
        return frozenset()
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"{where}: expected a list of dates, got {value!r}")
    dates: set[date] = set()
    for entry in value:
        d = _parse_date(entry, where)
        if d.year != year:
            raise ValueError(f"{where}: {d.isoformat()} is not in {year}")
        dates.add(d)
    return frozenset(dates)


def _parse_date(entry: Any, where: str) -> date:
    if isinstance(entry, datetime):
        raise ValueError(f"{where}: {entry!r} has a time of day; expected a date (YYYY-MM-DD)")
    if isinstance(entry, date):
        return entry
    if isinstance(entry, str):
        try:
            return date.fromisoformat(entry.strip())
        except ValueError:
            pass
    raise ValueError(f"{where}: {entry!r} is not a date (YYYY-MM-DD)")
