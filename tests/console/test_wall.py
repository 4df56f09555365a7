"""Supervisor wall: every number equals a count made directly in the database, and
the list behind a number has exactly that many rows. Also the dispatch preview,
agents' states, and the static console itself."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from hotline.appkeys import DEPS, PHONE_LINE
from hotline.console.wall import call_t, handoff_t
from ticketing.handlers import ticket_t
from ticketing.models import WorkItem, utcnow

STATIC = Path(__file__).resolve().parents[2] / "hotline" / "console" / "static"
work_item = WorkItem.__table__  # type: ignore[attr-defined]


async def wall(api) -> dict:  # type: ignore[no-untyped-def]
    r = await api.get("/api/v1/console/wall", as_="supervisor")
    assert r.status == 200, await r.text()
    return await r.json()


async def drill(api, metric: str, value: str | None = None) -> list[dict]:  # type: ignore[no-untyped-def]
    params = {"value": value} if value is not None else {}
    r = await api.get(f"/api/v1/console/wall/{metric}", params=params, as_="supervisor")
    assert r.status == 200, await r.text()
    return (await r.json())["items"]


async def test_wall_numbers_equal_the_database(api, monkeypatch):
    deps = api.app[DEPS]
    real = deps.clock
    # two tickets created 30 hours ago: their 24 h dispatch deadline has passed
    monkeypatch.setattr(deps, "clock", lambda: real() - timedelta(hours=30))
    old = [await api.new_ticket(title=f"旧{i}") for i in range(2)]
    # one created 20 hours ago: 20/24 of the dispatch time gone, at risk (80 %)
    monkeypatch.setattr(deps, "clock", lambda: real() - timedelta(hours=20))
    risky = await api.new_ticket(title="快超时")
    monkeypatch.setattr(deps, "clock", real)
    fresh = await api.new_ticket(
        kind="request", channel="wechat", category="utilities.water-outage"
    )
    await api.new_ticket(channel="app", category=None)
    await api.move(fresh["number"], "dispatch")
    await api.move(old[0]["number"], "dispatch", {"department": "transport"})
    # agents' states are the ACD's: set through its API, as the console does
    for who, state in (("agent", "break"), ("agent2", "available")):
        r = await api.post("/api/v1/agents/me/login", {"extension": "1001"}, as_=who)
        assert r.status == 200, await r.text()
        r = await api.client.put(
            "/api/v1/agents/me/state", json={"state": state}, headers=await api.headers(who)
        )
        assert r.status == 200, await r.text()
    async with deps.db.write() as conn:
        await conn.execute(
            sa.insert(work_item),
            [
                {"kind": "conversation", "ref": "c1", "audience": "agents", "action": "answer",
                 "priority": 2, "created_at": utcnow() - timedelta(minutes=5)},
                {"kind": "conversation", "ref": "c2", "audience": "agents", "action": "answer",
                 "priority": 2, "created_at": utcnow() - timedelta(minutes=1)},
            ],
        )  # fmt: skip

    w = await wall(api)
    # the database's own answers
    now = deps.clock()
    t0 = now.astimezone(deps.tz).replace(hour=0, minute=0, second=0, microsecond=0)
    async with deps.db.read() as conn:
        counted = await conn.execute(
            sa.select(ticket_t.c.channel, sa.func.count())
            .where(ticket_t.c.created_at >= t0)
            .group_by(ticket_t.c.channel)
        )
        today_by_channel = dict(counted.all())
        overdue_new = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(ticket_t)
                .where(ticket_t.c.status == "new", ticket_t.c.dispatch_due_at < now)
            )
        ).scalar_one()
    assert {c["channel"]: c["count"] for c in w["volume_today"]["by_channel"]} == today_by_channel
    assert w["volume_today"]["total"] == sum(today_by_channel.values())
    # old[1] is new and overdue; old[0] was dispatched (fresh time for transport)
    assert overdue_new == 1
    centre = {d["department"]: d for d in w["tickets"]["by_department"]}["(hotline)"]
    assert centre == {"department": "(hotline)", "name": None, "at_risk": 1, "breached": 1}
    assert w["tickets"]["breached"] == 1
    assert w["tickets"]["at_risk"] == 1
    assert [t["number"] for t in await drill(api, "breached")] == [old[1]["number"]]
    assert [t["number"] for t in await drill(api, "at_risk", "(hotline)")] == [risky["number"]]
    assert w["agents"]["by_state"] == {
        "available": 1, "break": 1, "wrap_up": 0, "logged_out": 0, "ringing": 0, "on_call": 0,
    }  # fmt: skip
    assert w["agents"]["by_state"] == api.app[PHONE_LINE].service.kpis()["agents"]
    assert [a["username"] for a in await drill(api, "agents", "break")] == ["agent"]
    assert w["conversations"] == {"waiting": 2, "waiting_over_3min": 1, "longest_wait_s": 300}
    assert [c["ref"] for c in await drill(api, "conversations_over_3min")] == ["c1"]
    assert w["phone"]["connected"] is True
    assert (w["phone"]["calls_waiting"], w["phone"]["longest_wait_s"]) == (0, 0.0)
    assert w["phone"]["service_level_15s_today"] is None  # no call answered today: unknown
    for row in w["volume_today"]["by_channel"]:
        assert len(await drill(api, "channel", row["channel"])) == row["count"]
    for row in w["volume_today"]["by_category"]:
        assert len(await drill(api, "category", row["category"] or "")) == row["count"]


async def test_wall_is_for_supervisors(sqlite_api):
    assert (await sqlite_api.get("/api/v1/console/wall", as_="agent")).status == 403
    assert (await sqlite_api.get("/api/v1/console/wall", as_="urban")).status == 403
    assert (await sqlite_api.get("/api/v1/console/wall/nonsense", as_="supervisor")).status == 404


async def test_dispatch_preview_matches_what_dispatch_then_does(sqlite_api):
    api = sqlite_api
    t = await api.new_ticket()
    r = await api.get("/api/v1/console/dispatch-preview", params={"ticket": t["number"]})
    assert r.status == 200, await r.text()
    preview = await r.json()
    assert preview["routed_by"] == "category"
    moved = await api.move(t["number"], "dispatch")
    assert moved["lead_department"] == preview["lead"]
    assert moved["deadlines"]["feedback_due_at"] == preview["feedback_due_at"]
    r = await api.get(
        "/api/v1/console/dispatch-preview",
        params={"category": "urban.street-lights", "department": "transport"},
    )
    assert (await r.json())["lead"] == "transport"
    r = await api.get("/api/v1/console/dispatch-preview", params={"urgency": "emergency"})
    body = await r.json()
    assert (body["dispatch_limit"], body["feedback_limit"]) == ("1h", "2h")
    bad = await api.get("/api/v1/console/dispatch-preview", params={"category": "x.y"})
    assert bad.status == 422
    assert (await api.get("/api/v1/console/dispatch-preview", as_="urban")).status == 403


async def test_console_offers_the_acds_states_and_keeps_no_state_api_of_its_own(sqlite_api):
    api = sqlite_api
    config = await (await api.get("/api/v1/console/config")).json()
    assert config["agent_states"] == ["available", "break", "logged_out"]
    assert config["features"] == {"conversations": True, "phone": True}
    assert (await api.get("/api/v1/console/state")).status == 404


async def test_console_is_served_with_its_catalogues_and_safe_headers(sqlite_api):
    c = sqlite_api.client
    r = await c.get("/console", allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == "/console/"
    r = await c.get("/console/")
    assert r.status == 200
    assert r.content_type == "text/html"
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    etag = r.headers["ETag"]
    assert (await c.get("/console/", headers={"If-None-Match": etag})).status == 304
    r = await c.get("/console/app.js")
    assert r.content_type == "text/javascript"
    assert (await c.get("/console/i18n/en.json")).status == 200
    assert (await c.get("/console/..%2Fconsole%2Froutes.py")).status == 404
    assert (await c.get("/console/nope.js")).status == 404


def test_every_string_is_in_both_catalogues():
    zh = json.loads((STATIC / "i18n" / "zh-CN.json").read_text("utf-8"))
    en = json.loads((STATIC / "i18n" / "en.json").read_text("utf-8"))
    assert set(zh) == set(en)
    html = (STATIC / "index.html").read_text("utf-8")
    js = (STATIC / "app.js").read_text("utf-8")
    used = set(re.findall(r'data-i18n="([^"]+)"', html))
    used |= {k for attr in re.findall(r'data-i18n-attr="([^"]+)"', html)
             for k in (p.split(":")[1] for p in attr.split(";"))}  # fmt: skip
    used |= set(re.findall(r'\bt\("([a-z_.0-9]+)"', js))
    used |= {f"wall.{k}" for k in re.findall(r'\btile\("([a-z_0-9]+)"', js)}
    assert used - set(zh) == set()
    # every Chinese character in the page is in a data-i18n element (no stray text)
    stripped = re.sub(r"<[^>]*data-i18n=\"[^\"]+\"[^>]*>[^<]*<", "<", html)
    assert re.findall(r"[\u4e00-\u9fff]+", stripped) == []


# ---------------------------------------------------------------- the phone line's figures

NOON = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)  # 12:00 in Asia/Shanghai


def _call(uuid: str, state: str, entered: datetime, **values) -> dict:  # type: ignore[no-untyped-def]
    return {"uuid": uuid, "caller_masked": "138****0000", "state": state, "priority": 2,
            "entered_at": entered, "answered_at": None, "ended_at": None, "wait_s": None,
            **values}  # fmt: skip


async def test_phone_history_on_the_wall_is_what_the_call_records_say(api, monkeypatch):
    """Service level today, connection rate 24 h, emergency hand-offs today: counted from
    the `call` and `emergency_handoff` rows with the ACD's own definitions, as fractions."""
    deps = api.app[DEPS]
    monkeypatch.setattr(deps, "clock", lambda: NOON)
    h = timedelta(hours=1)
    s = timedelta(seconds=1)
    rows = [
        # answered today: within 15 s, exactly 15 s, too late
        _call("a1", "ended", NOON - 2 * h, answered_at=NOON - 2 * h + 5 * s, wait_s=5.0),
        _call("a2", "talking", NOON - h, answered_at=NOON - h + 15 * s, wait_s=15.0),
        _call("a3", "ended", NOON - h, answered_at=NOON - h + 40 * s, wait_s=40.0),
        # answered yesterday evening (local), within the last 24 h
        _call("y1", "ended", NOON - 14 * h, answered_at=NOON - 14 * h + 3 * s, wait_s=3.0),
        # answered 30 h ago: in neither window
        _call("old", "ended", NOON - 30 * h, answered_at=NOON - 30 * h + 3 * s, wait_s=3.0),
        # abandoned within 24 h (one today, one yesterday), and one 2 days ago
        _call("x1", "abandoned", NOON - 3 * h, ended_at=NOON - 3 * h + 50 * s, wait_s=50.0),
        _call("x2", "abandoned", NOON - 20 * h, ended_at=NOON - 20 * h + 9 * s, wait_s=9.0),
        _call("x3", "abandoned", NOON - 48 * h, ended_at=NOON - 48 * h + 9 * s, wait_s=9.0),
        # neither answered nor abandoned: a callback and an emergency hand-off from the IVR
        _call("c1", "callback", NOON - h, ended_at=NOON - h + 60 * s, wait_s=60.0),
        _call("e1", "emergency", NOON - h),
    ]
    handoffs = [
        {"call_uuid": uuid, "line": line, "requested_at": at, "outcome": outcome, "attempts": []}
        for uuid, line, at, outcome in (
            ("a2", "119", NOON - h + 30 * s, "connected"),
            ("e1", "120", NOON - h + 2 * s, "failed"),
            ("y1", "110", NOON - 14 * h, "connected"),
        )
    ]
    async with deps.db.write() as conn:
        await conn.execute(sa.insert(call_t), rows)
        await conn.execute(sa.insert(handoff_t), handoffs)

    phone = (await wall(api))["phone"]
    assert {k: phone[k] for k in (
        "answered_today", "answered_within_target_today", "service_level_15s_today",
        "answered_24h", "abandoned_24h", "connection_rate_24h", "emergency_handoffs_today",
        "service_level_target_s",
    )} == {
        "answered_today": 3,
        "answered_within_target_today": 2,  # 5 s and 15 s: "within 15 s" includes 15
        "service_level_15s_today": 0.6667,
        "answered_24h": 4,
        "abandoned_24h": 2,
        "connection_rate_24h": 0.6667,  # 4 / (4 + 2)
        "emergency_handoffs_today": 2,
        "service_level_target_s": 15.0,
    }  # fmt: skip
    listed = await drill(api, "emergency_handoffs")
    assert [(x["call"], x["line"], x["outcome"]) for x in listed] == [
        ("a2", "119", "connected"),
        ("e1", "120", "failed"),
    ]


async def test_live_phone_figures_are_the_acds(tmp_path, sqlite_url, aiohttp_client):
    """Calls waiting, the longest wait and agents by state come from the ACD of this
    instance: a caller waits while the only agent is on a break."""
    from hotline.acd.memory_switch import MemorySwitch
    from hotline.app import create_app
    from hotline.bootstrap import build_deps
    from tests.conftest import Api, _seed, make_settings

    switch = MemorySwitch()
    settings = make_settings(tmp_path, sqlite_url)
    deps = build_deps(settings)
    await deps.db.create_all()
    app = create_app(settings, deps=deps, migrate=False, watch_deadlines=False,
                     phone_switch=switch)  # fmt: skip
    api = Api(await aiohttp_client(app), app)
    await _seed(deps)
    acd = app[PHONE_LINE].service
    await acd.login("agent", "1001")
    await acd.set_state("agent", "break", "lunch")
    uuid = switch.new_call("+8613800138000")
    task = asyncio.create_task(acd.handle_call(uuid, "+8613800138000"))
    try:
        for _ in range(200):
            if uuid in acd.acd.queue:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.1)
        w = await wall(api)
        kpis = acd.kpis()
        assert w["phone"]["calls_waiting"] == kpis["waiting"] == 1
        assert 1.0 <= w["phone"]["longest_wait_s"] <= kpis["longest_wait_s"] + 0.1
        assert w["agents"]["by_state"] == kpis["agents"]
        assert w["agents"]["by_state"]["break"] == 1
        assert [c["uuid"] for c in await drill(api, "calls_waiting")] == [uuid]
        (agent,) = await drill(api, "agents", "break")
        assert (agent["username"], agent["reason"]) == ("agent", "lunch")
    finally:
        await switch.hangup(uuid)
        await asyncio.wait_for(task, 5)
