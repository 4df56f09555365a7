"""The SLA clock over real 2025 and 2026 holidays (dates checked against chinese_calendar)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ticketing.deadlines import (
    DISPATCH_DEFAULTS,
    FEEDBACK_DEFAULTS,
    Duration,
    Urgency,
    due_at,
    elapsed_fraction,
    extend,
    is_breached,
    is_warning,
)
from ticketing.workdays import WorkCalendar

SHANGHAI = ZoneInfo("Asia/Shanghai")
CAL = WorkCalendar()


def cst(*args: int) -> datetime:
    return datetime(*args, tzinfo=SHANGHAI)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --- Duration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "amount", "unit"),
    [
        ("2h", 2, "hours"),
        ("24h", 24, "hours"),
        ("7wd", 7, "working_days"),
        ("15wd", 15, "working_days"),
    ],
)
def test_duration_parses_the_taxonomy_form_and_prints_it_back(text, amount, unit):
    duration = Duration.parse(text)
    assert duration == Duration(amount, unit)
    assert str(duration) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0h",
        "0wd",
        "-2h",
        "2",
        "h",
        "wd",
        "2d",
        "2 h",
        "2H",
        "1.5h",
        "07wd",
        " 2h",
        "2h\n",
        "２h",
    ],
)
def test_duration_refuses_anything_else(text):
    with pytest.raises(ValueError, match="invalid duration"):
        Duration.parse(text)


def test_duration_built_in_code_must_be_positive_and_a_known_unit():
    with pytest.raises(ValueError, match="positive integer"):
        Duration(0, "hours")
    with pytest.raises(ValueError, match="unknown duration unit"):
        Duration(3, "days")  # type: ignore[arg-type]


def test_defaults_follow_db11t_2021_2022():
    assert {u.value: str(d) for u, d in DISPATCH_DEFAULTS.items()} == {
        "emergency": "1h",
        "urgent": "2h",
        "normal": "24h",
    }
    assert {u.value: str(d) for u, d in FEEDBACK_DEFAULTS.items()} == {
        "emergency": "2h",
        "urgent": "24h",
        "normal": "15wd",
    }
    assert Urgency("urgent") is Urgency.URGENT


# --- due_at: hours -----------------------------------------------------------------


def test_an_hour_deadline_runs_across_midnight():
    due = due_at(cst(2026, 3, 2, 23, 30), Duration.parse("2h"), CAL, SHANGHAI)
    assert due == utc(2026, 3, 2, 17, 30)
    assert due.tzinfo is UTC
    assert due.astimezone(SHANGHAI) == cst(2026, 3, 3, 1, 30)


def test_an_hour_deadline_ignores_holidays():
    # Saturday 2026-02-14 (make-up day) into Spring Festival: the clock keeps running.
    due = due_at(cst(2026, 2, 14, 10, 0), Duration.parse("24h"), CAL, SHANGHAI)
    assert due == utc(2026, 2, 15, 2, 0)


def test_an_hour_deadline_is_real_hours_across_a_dst_change():
    new_york = ZoneInfo("America/New_York")
    # Clocks go forward on 2026-03-08: 24 real hours later reads 13:00, not 12:00.
    due = due_at(datetime(2026, 3, 7, 12, 0, tzinfo=new_york), Duration.parse("24h"), CAL, new_york)
    assert due == utc(2026, 3, 8, 17, 0)
    assert due.astimezone(new_york).hour == 13


# --- due_at: working days ----------------------------------------------------------


def test_seven_working_days_from_friday_night_before_spring_festival_2026():
    # Working days after Fri 02-13: 02-14 (make-up Sat), 02-24, 25, 26, 27,
    # 02-28 (make-up Sat), 03-02. Due at the end of 03-02, local time.
    due = due_at(cst(2026, 2, 13, 23, 0), Duration.parse("7wd"), CAL, SHANGHAI)
    assert due == utc(2026, 3, 2, 16, 0)
    assert due.astimezone(SHANGHAI) == cst(2026, 3, 3, 0, 0)


def test_the_local_date_decides_not_the_utc_date():
    # 16:30 UTC on Friday is 00:30 on Saturday 02-14 in Shanghai, so counting starts
    # after 02-14: 02-24 .. 02-28, 03-02, 03-03.
    due = due_at(utc(2026, 2, 13, 16, 30), Duration.parse("7wd"), CAL, SHANGHAI)
    assert due.astimezone(SHANGHAI) == cst(2026, 3, 4, 0, 0)


def test_fifteen_working_days_across_national_day_2025():
    # 09-28 (Sun), 29, 30, 10-09, 10, 11 (Sat), 13..17, 20..23
    due = due_at(cst(2025, 9, 26, 9, 0), Duration.parse("15wd"), CAL, SHANGHAI)
    assert due.astimezone(SHANGHAI) == cst(2025, 10, 24, 0, 0)


def test_a_naive_start_is_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        due_at(datetime(2026, 3, 2, 9, 0), Duration.parse("2h"), CAL, SHANGHAI)


def test_2027_without_override_counts_monday_to_friday_and_warns_once(caplog):
    caplog.set_level(logging.WARNING, logger="ticketing.workdays")
    cal = WorkCalendar()
    # Fri 2027-01-08: 01-11..15, 01-18, 01-19
    due = due_at(cst(2027, 1, 8, 10, 0), Duration.parse("7wd"), cal, SHANGHAI)
    due_at(cst(2027, 1, 8, 11, 0), Duration.parse("15wd"), cal, SHANGHAI)
    assert due.astimezone(SHANGHAI) == cst(2027, 1, 20, 0, 0)
    assert len(caplog.records) == 1


def test_2027_override_file_moves_the_deadline(tmp_path: Path):
    path = tmp_path / "holidays.yaml"
    path.write_text("2027:\n  holidays: [2027-01-11, 2027-01-12]\n", encoding="utf-8")
    cal = WorkCalendar.from_file(path)
    # Fri 2027-01-08: 01-13, 14, 15, 18, 19, 20, 21
    due = due_at(cst(2027, 1, 8, 10, 0), Duration.parse("7wd"), cal, SHANGHAI)
    assert due.astimezone(SHANGHAI) == cst(2027, 1, 22, 0, 0)


# --- extend ------------------------------------------------------------------------


def test_extending_a_day_deadline_over_national_day_2025():
    # 2 working days after Fri 09-26: 09-28 (Sun, make-up), 09-29 -> due end of 09-29.
    due = due_at(cst(2025, 9, 26, 9, 0), Duration.parse("2wd"), CAL, SHANGHAI)
    assert due.astimezone(SHANGHAI) == cst(2025, 9, 30, 0, 0)
    # 3 more: 09-30, then the holiday until 10-08, then 10-09, 10-10.
    extended = extend(due, Duration.parse("3wd"), CAL, SHANGHAI)
    assert extended == utc(2025, 10, 10, 16, 0)
    assert extended.astimezone(SHANGHAI) == cst(2025, 10, 11, 0, 0)


def test_extending_an_hour_deadline_by_working_days_counts_from_its_date():
    extended = extend(cst(2025, 9, 30, 10, 0), Duration.parse("1wd"), CAL, SHANGHAI)
    assert extended.astimezone(SHANGHAI) == cst(2025, 10, 10, 0, 0)


def test_extending_by_hours_runs_on_the_clock():
    due = cst(2025, 9, 30, 0, 0)
    assert extend(due, Duration.parse("48h"), CAL, SHANGHAI) == utc(2025, 10, 1, 16, 0)


def test_extending_twice_equals_extending_once_by_the_sum():
    due = due_at(cst(2026, 2, 10, 9, 0), Duration.parse("2wd"), CAL, SHANGHAI)
    twice = extend(
        extend(due, Duration.parse("3wd"), CAL, SHANGHAI), Duration.parse("4wd"), CAL, SHANGHAI
    )
    assert twice == extend(due, Duration.parse("7wd"), CAL, SHANGHAI)
    assert twice == due_at(cst(2026, 2, 10, 9, 0), Duration.parse("9wd"), CAL, SHANGHAI)


def test_a_naive_due_is_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        extend(datetime(2026, 3, 2), Duration.parse("1wd"), CAL, SHANGHAI)


# --- warning and breach ------------------------------------------------------------


START = utc(2026, 3, 2, 0, 0)
DUE = utc(2026, 3, 2, 10, 0)


def test_elapsed_fraction_is_the_share_of_allowed_time_used():
    assert elapsed_fraction(START, DUE, utc(2026, 3, 2, 5, 0)) == 0.5
    assert elapsed_fraction(START, DUE, utc(2026, 3, 2, 15, 0)) == 1.5
    assert elapsed_fraction(START, DUE, utc(2026, 3, 1, 23, 0)) == 0.0


def test_elapsed_fraction_compares_instants_not_wall_clocks():
    assert elapsed_fraction(START, DUE, cst(2026, 3, 2, 13, 0)) == 0.5


def test_elapsed_fraction_of_a_deadline_with_no_time_at_all():
    assert elapsed_fraction(START, START, utc(2026, 3, 1, 23, 0)) == 0.0
    assert elapsed_fraction(START, START, START) == 1.0


def test_warning_from_80_percent_until_the_breach():
    assert is_warning(START, DUE, utc(2026, 3, 2, 7, 59)) is False
    assert is_warning(START, DUE, utc(2026, 3, 2, 8, 0)) is True
    assert is_warning(START, DUE, DUE) is True
    assert is_warning(START, DUE, utc(2026, 3, 2, 10, 1)) is False
    assert is_warning(START, DUE, utc(2026, 3, 2, 5, 0), fraction=0.5) is True


def test_warning_fraction_must_make_sense():
    with pytest.raises(ValueError, match="fraction"):
        is_warning(START, DUE, DUE, fraction=0)
    with pytest.raises(ValueError, match="fraction"):
        is_warning(START, DUE, DUE, fraction=1.5)


def test_breached_only_after_the_due_instant():
    assert is_breached(DUE, utc(2026, 3, 2, 9, 59)) is False
    assert is_breached(DUE, DUE) is False
    assert is_breached(DUE, utc(2026, 3, 2, 10, 0, 1)) is True


def test_a_working_day_deadline_is_breached_at_local_midnight():
    due = due_at(cst(2026, 2, 13, 23, 0), Duration.parse("7wd"), CAL, SHANGHAI)
    assert is_breached(due, cst(2026, 3, 2, 23, 59, 59)) is False
    assert is_breached(due, cst(2026, 3, 3, 0, 0, 1)) is True
