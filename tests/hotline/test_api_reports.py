"""The director's performance report: figures that match what happened to each ticket."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from hotline.appkeys import DEPS, METRICS

SHANGHAI = ZoneInfo("Asia/Shanghai")
REPORT = "/api/v1/reports/performance"


class Clock:
    """The service's clock, moved by the test (deadlines are judged against it)."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def jump_past(self, iso: str) -> None:
        self.at = datetime.fromisoformat(iso) + timedelta(minutes=1)


@pytest.fixture
def clock(api, monkeypatch) -> Clock:  # type: ignore[no-untyped-def]
    deps = api.app[DEPS]
    c = Clock(deps.clock() - timedelta(days=40))
    monkeypatch.setattr(deps, "clock", c)
    return c


async def _month(api, clock):  # type: ignore[no-untyped-def]
    """A small month at the centre; returns the numbers by what happened to them."""
    before = await api.new_ticket(title="上月的工单")  # outside the period
    clock.at += timedelta(days=2)
    first_day = clock.at.astimezone(SHANGHAI).date()

    on_time = (await api.new_ticket(title="按时办结"))["number"]
    await api.move(on_time, "dispatch", {"department": "urban-mgmt"})
    await api.move(on_time, "sign", as_="urban")
    clock.at += timedelta(hours=3)
    await api.move(on_time, "reply", {"reply": "已修复"}, as_="urban")
    await api.move(on_time, "follow-up", {"satisfaction": "satisfied"})

    late = await api.new_ticket(title="超期办结")
    await api.move(late["number"], "dispatch", {"department": "urban-mgmt"})
    moved = await api.move(late["number"], "sign", as_="urban")
    await api.move(late["number"], "supervise", {"note": "请尽快办理"}, as_="supervisor")
    clock.jump_past(moved["deadlines"]["feedback_due_at"])
    await api.move(late["number"], "reply", {"reply": "迟到的答复"}, as_="urban")
    await api.move(late["number"], "follow-up", {"satisfaction": "basically_satisfied"})

    rework = (await api.new_ticket(title="不满意重办"))["number"]
    await api.move(rework, "dispatch", {"department": "urban-mgmt"})
    await api.move(rework, "sign", as_="urban")
    await api.move(rework, "reply", {"reply": "处理了"}, as_="urban")
    await api.move(rework, "follow-up", {"satisfaction": "unsatisfied"})  # reopened, open

    returned = (await api.new_ticket(title="退单"))["number"]
    await api.move(returned, "dispatch", {"department": "urban-mgmt"})
    await api.move(returned, "return", {"reason": "不属于本单位"}, as_="urban")
    await api.move(returned, "dispatch", {"department": "urban-mgmt"})

    direct = (
        await api.new_ticket(kind="consultation", title="公交咨询", category="transport.bus")
    )["number"]
    await api.move(direct, "answer", {"answer": "12路首班车6点"})

    dup = (await api.new_ticket(title="重复来电"))["number"]
    await api.move(dup, "merge", {"into": on_time})
    last_day = clock.at.astimezone(SHANGHAI).date()
    return {
        "before": before["number"],
        "on_time": on_time,
        "late": late["number"],
        "rework": rework,
        "returned": returned,
        "direct": direct,
        "dup": dup,
        "from": first_day.isoformat(),
        "to": last_day.isoformat(),
    }


async def test_the_figures_follow_what_happened_to_each_ticket(api, clock):
    m = await _month(api, clock)
    r = await api.get(REPORT, as_="supervisor", params={"from": m["from"], "to": m["to"]})
    assert r.status == 200, await r.text()
    doc = await r.json()
    assert doc["from"] == m["from"] and doc["to"] == m["to"] and doc["rows"] == []
    total = doc["total"]
    assert total["received"] == 6  # the ticket of the month before is not in it
    assert total["merged"] == 1
    assert total["answered_directly"] == 1
    assert total["dispatched"] == 4 and total["dispatched_on_time"] == 4
    # on_time and the direct answer on time; late finished after its deadline; the
    # reworked one is open again, the returned one is still with the department
    assert total["completed"] == 3 and total["completed_on_time"] == 2
    assert total["on_time_completion_rate"] == round(2 / 3, 4)
    assert total["open"] == 2
    assert total["returns"] == 1
    assert total["supervised"] == 1 and total["reopened"] == 1
    assert (total["follow_ups"], total["satisfied"], total["basically_satisfied"]) == (3, 1, 1)
    assert total["unsatisfied"] == 1
    assert total["satisfaction_rate"] == round(2 / 3, 4)
    assert total["avg_hours_to_complete"] > 0

    r = await api.get(
        REPORT, as_="supervisor", params={"from": m["from"], "to": m["to"], "by": "department"}
    )
    rows = {row["key"]: row for row in (await r.json())["rows"]}
    assert set(rows) == {"urban-mgmt", "-"}
    urban = rows["urban-mgmt"]
    assert urban["label"] and urban["label"] != "urban-mgmt"  # the department's name
    assert (urban["received"], urban["completed"], urban["completed_on_time"]) == (4, 2, 1)
    assert urban["satisfaction_rate"] == round(2 / 3, 4)
    centre = rows["-"]  # answered at the centre, and the merged duplicate
    assert (centre["received"], centre["answered_directly"], centre["merged"]) == (2, 1, 1)
    assert centre["satisfaction_rate"] is None  # no follow-up: no rate, not 0%
    assert sum(row["received"] for row in rows.values()) == 6

    r = await api.get(
        REPORT, as_="supervisor", params={"from": m["from"], "to": m["to"], "by": "kind"}
    )
    kinds = {row["key"]: row for row in (await r.json())["rows"]}
    assert kinds["consultation"]["label"] == "咨询" and kinds["consultation"]["received"] == 1


async def test_the_daily_trend_has_every_day_in_order(api, clock):
    """by=day: local days (Asia/Shanghai), every day of the period even without a
    ticket, in order, adding up to the total."""
    m = await _month(api, clock)
    r = await api.get(
        REPORT, as_="supervisor", params={"from": m["from"], "to": m["to"], "by": "day"}
    )
    assert r.status == 200, await r.text()
    doc = await r.json()
    days = [row["key"] for row in doc["rows"]]
    first, last = datetime.fromisoformat(m["from"]), datetime.fromisoformat(m["to"])
    assert days == [
        (first + timedelta(days=i)).date().isoformat() for i in range((last - first).days + 1)
    ]
    assert sum(row["received"] for row in doc["rows"]) == doc["total"]["received"] == 6
    busy = {row["key"]: row["received"] for row in doc["rows"] if row["received"]}
    # two tickets before the clock jumped past the late one's deadline, four after
    assert busy == {m["from"]: 2, m["to"]: 4}


async def test_a_ticket_just_after_local_midnight_counts_on_that_local_day(api, clock):
    """16:30 UTC is 00:30 the next day in Shanghai: the ticket is that day's."""
    utc_evening = clock.at.replace(hour=16, minute=30, second=0, microsecond=0)
    clock.at = utc_evening
    await api.new_ticket(title="午夜后的来电")
    local = utc_evening.astimezone(SHANGHAI).date().isoformat()
    r = await api.get(REPORT, as_="supervisor", params={"from": local, "to": local, "by": "day"})
    assert [(row["key"], row["received"]) for row in (await r.json())["rows"]] == [(local, 1)]


async def test_a_department_sees_only_the_tickets_it_leads(api, clock):
    m = await _month(api, clock)
    r = await api.get(REPORT, as_="urban", params={"from": m["from"], "to": m["to"], "by": "kind"})
    assert r.status == 200
    doc = await r.json()
    assert doc["total"]["received"] == 4
    r = await api.get(REPORT, as_="water", params={"from": m["from"], "to": m["to"]})
    assert (await r.json())["total"]["received"] == 0
    r = await api.get(REPORT, as_="agent")
    assert r.status == 403


async def test_csv_opens_in_excel_with_the_same_figures(api, clock):
    m = await _month(api, clock)
    params = {"from": m["from"], "to": m["to"], "by": "category"}
    r = await api.get(REPORT, as_="admin", params=params, headers={"Accept": "text/csv"})
    assert r.status == 200
    assert r.content_type == "text/csv"
    assert "attachment" in r.headers["Content-Disposition"]
    text = (await r.read()).decode("utf-8")
    assert text.startswith("\ufeff")
    lines = list(csv.DictReader(io.StringIO(text[1:])))
    assert lines[-1]["category"] == "total" and lines[-1]["received"] == "6"
    by_code = {row["category"]: row for row in lines[:-1]}
    assert by_code["transport.bus"]["label"] == "公交线路与站点"
    assert by_code["transport.bus"]["satisfaction_rate"] == ""  # no follow-up: empty, not 0
    js = await (await api.get(REPORT, as_="admin", params=params)).json()
    assert {row["key"]: str(row["received"]) for row in js["rows"]} == {
        code: row["received"] for code, row in by_code.items()
    }


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"from": "2026-13-01"}, "from"),
        ({"from": "2026-02-30"}, "from"),
        ({"from": "0001-01-01", "to": "0001-01-02"}, "from"),
        ({"from": "9999-12-30", "to": "9999-12-31"}, "from"),
        ({"from": "2026-11-01", "to": "９９"}, "to"),
        ({"from": "2026-11-20", "to": "2026-11-01"}, "to"),
        ({"from": "2024-01-01", "to": "2026-01-01"}, "to"),
        ({"by": "mood"}, "by"),
        ({"format": "xlsx"}, "format"),
    ],
)
async def test_bad_parameters_are_named(sqlite_api, params, field):
    r = await sqlite_api.get(REPORT, as_="supervisor", params=params)
    assert r.status == 422
    assert r.content_type == "application/problem+json"
    assert (await r.json())["errors"][0]["field"] == field


async def test_the_default_period_is_this_month_so_far(sqlite_api):
    await sqlite_api.new_ticket()
    r = await sqlite_api.get(REPORT, as_="supervisor")
    doc = await r.json()
    today = datetime.now(SHANGHAI).date()
    assert doc["from"] == today.replace(day=1).isoformat() and doc["to"] == today.isoformat()
    assert doc["total"]["received"] == 1


async def test_metrics_show_the_30_day_rates(api, monkeypatch):
    """A dashboard reads 按时办结率 and 满意率 from /metrics: the report's total for the
    last 30 days; NaN (not 0) while nothing has been rated."""
    text = await (await api.client.get("/metrics")).text()
    assert "hotline_satisfaction_ratio_30d NaN" in text.splitlines()
    metrics = api.app[METRICS]
    monkeypatch.setattr(metrics, "_rates_refreshed", -1e9)  # past the scrape cache
    for satisfaction in ("satisfied", "unsatisfied"):
        n = (await api.new_ticket())["number"]
        await api.move(n, "dispatch", {"department": "urban-mgmt"})
        await api.move(n, "sign", as_="urban")
        await api.move(n, "reply", {"reply": "已修复"}, as_="urban")
        await api.move(n, "follow-up", {"satisfaction": satisfaction})
    monkeypatch.setattr(metrics, "_rates_refreshed", -1e9)
    lines = (await (await api.client.get("/metrics")).text()).splitlines()
    assert "hotline_satisfaction_ratio_30d 0.5" in lines
    assert "hotline_on_time_completion_ratio_30d 1.0" in lines  # the unsatisfied one reopened
    assert "# TYPE hotline_dispatch_on_time_ratio_30d gauge" in lines
