"""The working-day calendar, checked against real 2025 and 2026 State Council notices.

Every date below was checked against `chinese_calendar` before being written down.
"""

from __future__ import annotations

import logging
from datetime import date, datetime
from pathlib import Path

import pytest

from ticketing.workdays import WorkCalendar, YearOverride


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "holidays.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# --- the library's years -----------------------------------------------------------


def test_spring_festival_2025_is_off_and_its_make_up_weekend_days_are_working():
    cal = WorkCalendar()
    assert [cal.is_working_day(date(2025, 1, d)) for d in range(24, 32)] == [
        True,  # Fri 01-24
        False,  # Sat 01-25
        True,  # Sun 01-26, make-up working day
        True,  # Mon 01-27
        False,  # Tue 01-28, Spring Festival starts
        False,
        False,
        False,  # Fri 01-31
    ]
    assert [cal.is_working_day(date(2025, 2, d)) for d in range(1, 11)] == [
        False,  # Sat 02-01
        False,
        False,  # Mon 02-03
        False,  # Tue 02-04, last day off
        True,  # Wed 02-05
        True,
        True,
        True,  # Sat 02-08, make-up working day
        False,  # Sun 02-09
        True,  # Mon 02-10
    ]


def test_national_day_2025_runs_oct_1_to_8_with_make_up_sept_28_and_oct_11():
    cal = WorkCalendar()
    assert cal.is_working_day(date(2025, 9, 27)) is False  # an ordinary Saturday
    assert cal.is_working_day(date(2025, 9, 28)) is True  # Sunday, make-up
    assert [cal.is_working_day(date(2025, 10, d)) for d in range(1, 9)] == [False] * 8
    assert cal.is_working_day(date(2025, 10, 9)) is True
    assert cal.is_working_day(date(2025, 10, 11)) is True  # Saturday, make-up
    assert cal.is_working_day(date(2025, 10, 12)) is False


def test_spring_festival_2026_runs_feb_15_to_23_with_make_up_feb_14_and_28():
    cal = WorkCalendar()
    assert cal.is_working_day(date(2026, 2, 14)) is True  # Saturday, make-up
    assert [cal.is_working_day(date(2026, 2, d)) for d in range(15, 24)] == [False] * 9
    assert cal.is_working_day(date(2026, 2, 24)) is True
    assert cal.is_working_day(date(2026, 2, 28)) is True  # Saturday, make-up
    assert cal.is_working_day(date(2026, 3, 1)) is False


def test_a_datetime_is_judged_by_its_date():
    cal = WorkCalendar()
    assert cal.is_working_day(datetime(2026, 2, 14, 23, 59)) is True
    assert cal.is_working_day(datetime(2026, 2, 15, 0, 0)) is False


def test_the_day_of_receipt_is_never_counted():
    cal = WorkCalendar()
    assert cal.add_working_days(date(2026, 3, 2), 1) == date(2026, 3, 3)
    assert cal.add_working_days(date(2026, 3, 2), 0) == date(2026, 3, 2)


def test_seven_working_days_from_the_friday_before_spring_festival_2026():
    # 02-14 (make-up Sat), 02-24, 25, 26, 27, 02-28 (make-up Sat), 03-02
    assert WorkCalendar().add_working_days(date(2026, 2, 13), 7) == date(2026, 3, 2)


def test_five_working_days_across_spring_festival_2025():
    # 01-26 (make-up Sun), 01-27, then 02-05, 02-06, 02-07
    assert WorkCalendar().add_working_days(date(2025, 1, 24), 5) == date(2025, 2, 7)


def test_fifteen_working_days_across_national_day_2025():
    # 09-28 (Sun), 29, 30, 10-09, 10, 11 (Sat), 13..17, 20..23
    assert WorkCalendar().add_working_days(date(2025, 9, 26), 15) == date(2025, 10, 23)


def test_counting_crosses_new_year_2026():
    # 2026-01-01..03 off, Sunday 01-04 is a make-up working day
    assert WorkCalendar().add_working_days(date(2025, 12, 31), 2) == date(2026, 1, 5)


def test_a_datetime_start_gives_a_date():
    assert WorkCalendar().add_working_days(datetime(2026, 3, 2, 18, 0), 1) == date(2026, 3, 3)


def test_a_negative_count_is_refused():
    with pytest.raises(ValueError, match="n must be >= 0"):
        WorkCalendar().add_working_days(date(2026, 3, 2), -1)


def test_working_days_between_is_half_open_and_agrees_with_add_working_days():
    cal = WorkCalendar()
    assert cal.working_days_between(date(2025, 1, 24), date(2025, 2, 7)) == 5
    assert cal.working_days_between(date(2026, 2, 13), date(2026, 3, 2)) == 7
    assert cal.working_days_between(date(2025, 12, 31), date(2026, 12, 31)) == 248
    assert cal.working_days_between(date(2026, 3, 2), date(2026, 3, 2)) == 0
    assert cal.working_days_between(date(2026, 3, 3), date(2026, 3, 2)) == 0


def test_knows_the_library_years_but_not_2027():
    cal = WorkCalendar()
    assert cal.knows_year(2004) is True
    assert cal.knows_year(2026) is True
    assert cal.knows_year(2027) is False
    assert cal.knows_year(2003) is False


# --- a year nobody knows -----------------------------------------------------------


def test_2027_without_override_falls_back_to_monday_to_friday_and_warns_once(caplog):
    caplog.set_level(logging.WARNING, logger="ticketing.workdays")
    cal = WorkCalendar()

    assert cal.is_working_day(date(2027, 1, 1)) is True  # a Friday; the real calendar is unknown
    assert cal.is_working_day(date(2027, 1, 2)) is False  # Saturday
    assert cal.add_working_days(date(2027, 1, 8), 7) == date(2027, 1, 19)
    assert cal.add_working_days(date(2026, 12, 31), 2) == date(2027, 1, 4)

    warnings = [r for r in caplog.records if r.name == "ticketing.workdays"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "2027" in warnings[0].getMessage()


def test_each_unknown_year_warns_on_its_own(caplog):
    caplog.set_level(logging.WARNING, logger="ticketing.workdays")
    cal = WorkCalendar()
    cal.is_working_day(date(2027, 3, 1))
    cal.is_working_day(date(2028, 3, 1))
    cal.is_working_day(date(2028, 3, 2))
    assert len(caplog.records) == 2
    assert "2027" in caplog.records[0].getMessage()
    assert "2028" in caplog.records[1].getMessage()


# --- the admin's override file -----------------------------------------------------


OVERRIDE_2027 = """\
# years the holiday library does not know yet
2027:
  holidays: [2027-01-01, 2027-02-06, 2027-02-08, 2027-02-09]
  workdays: [2027-02-14]
"""


def test_an_override_file_for_2027_is_honoured_without_warning(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="ticketing.workdays")
    cal = WorkCalendar.from_file(write(tmp_path, OVERRIDE_2027))

    assert cal.knows_year(2027) is True
    assert cal.is_working_day(date(2027, 1, 1)) is False  # Friday, listed holiday
    assert cal.is_working_day(date(2027, 1, 4)) is True  # ordinary Monday
    assert cal.is_working_day(date(2027, 2, 13)) is False  # ordinary Saturday
    assert cal.is_working_day(date(2027, 2, 14)) is True  # Sunday, listed make-up day
    # Thu 12-31 (2026, from the library), then 01-01 is off: 01-04, 01-05
    assert cal.add_working_days(date(2026, 12, 31), 2) == date(2027, 1, 5)
    assert caplog.records == []


def test_an_override_wins_over_the_library(tmp_path):
    path = write(tmp_path, "2026:\n  holidays: [2026-03-02]\n")
    cal = WorkCalendar.from_file(path)
    assert cal.is_working_day(date(2026, 3, 2)) is False
    # The override is the whole year: 2026-02-16 is a plain Monday now.
    assert cal.is_working_day(date(2026, 2, 16)) is True


def test_quoted_dates_are_accepted(tmp_path):
    cal = WorkCalendar.from_file(write(tmp_path, '"2027":\n  holidays: ["2027-01-01"]\n'))
    assert cal.is_working_day(date(2027, 1, 1)) is False


def test_a_missing_file_means_no_overrides(tmp_path):
    cal = WorkCalendar.from_file(tmp_path / "nothing-here.yaml")
    assert cal.knows_year(2027) is False
    assert cal.is_working_day(date(2026, 2, 14)) is True


def test_an_empty_file_means_no_overrides(tmp_path):
    cal = WorkCalendar.from_file(write(tmp_path, "# nothing yet\n"))
    assert cal.knows_year(2027) is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2027: [unclosed", "not valid YAML"),
        ("2027:\n  holidays: [2027-02-30]\n", "'2027-02-30' is not a date"),
        ("2027:\n  holidays: [2027-01-01, tomorrow]\n", "'tomorrow' is not a date"),
        ("2027:\n  holidays: [20270101]\n", "20270101 is not a date"),
        ("2027:\n  holidays: [2027-01-01 09:00:00]\n", "'2027-01-01 09:00:00' is not a date"),
        ("2027:\n  holidays: [2028-01-01]\n", "year 2027, holidays: 2028-01-01 is not in 2027"),
        ("2027:\n  workdays: [2026-12-27]\n", "year 2027, workdays: 2026-12-27 is not in 2027"),
        (
            "2027:\n  holidays: [2027-01-01]\n  workdays: [2027-01-01]\n",
            "2027-01-01 is listed both in holidays and workdays",
        ),
        ("2027:\n  holiday: [2027-01-01]\n", "unknown key 'holiday'"),
        ("2027:\n  holidays: 2027-01-01\n", "expected a list of dates"),
        ("2027:\n", "year 2027: expected a mapping"),
        ("2027: {}\n", "lists neither 'holidays' nor 'workdays'"),
        ("next year:\n  holidays: []\n", "'next year' is not a year"),
        ("- 2027-01-01\n", "expected a mapping of year"),
        (
            "2027:\n  holidays: [2027-01-01]\n2027:\n  workdays: [2027-02-14]\n",
            "duplicate key 2027",
        ),
    ],
)
def test_a_malformed_override_file_is_refused_naming_file_and_entry(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ValueError) as excinfo:
        WorkCalendar.from_file(path)
    assert str(excinfo.value).startswith(f"{path}: ")
    assert message in str(excinfo.value)


def test_overrides_can_be_given_in_code():
    cal = WorkCalendar({2027: YearOverride(holidays=frozenset({date(2027, 1, 1)}))})
    assert cal.is_working_day(date(2027, 1, 1)) is False
    assert cal.knows_year(2027) is True


def test_overrides_in_code_are_checked_too():
    with pytest.raises(ValueError, match="2028-01-01 is not in 2027"):
        WorkCalendar({2027: YearOverride(holidays=frozenset({date(2028, 1, 1)}))})
    with pytest.raises(ValueError, match="both as a holiday and a workday"):
        YearOverride(holidays=frozenset({date(2027, 1, 1)}), workdays=frozenset({date(2027, 1, 1)}))
