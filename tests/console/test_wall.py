"""Supervisor wall: every number equals a count made directly in the database, and
the list behind a number has exactly that many rows. Also the dispatch preview,
agents' states, and the static console itself."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

from hotline.appkeys import DEPS
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
    r = await api.client.put(
        "/api/v1/console/state", json={"state": "break"}, headers=await api.headers("agent")
    )
    assert r.status == 200
    r = await api.client.put(
        "/api/v1/console/state", json={"state": "available"}, headers=await api.headers("agent2")
    )
    assert r.status == 200
    async with deps.db.write() as conn:
        await conn.execute(
            sa.insert(work_item),
            [
                {"kind": "conversation", "ref": "c1", "audience": "agents", "action": "answer",
                 "priority": 2, "created_at": utcnow() - timedelta(minutes=5)},
                {"kind": "conversation", "ref": "c2", "audience": "agents", "action": "answer",
                 "priority": 2, "created_at": utcnow() - timedelta(minutes=1)},
                {"kind": "call", "ref": "u1", "audience": "agents", "action": "answer",
                 "priority": 1, "created_at": utcnow() - timedelta(seconds=40)},
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
        "available": 1, "break": 1, "wrap_up": 0, "logged_out": 0,
    }  # fmt: skip
    assert [a["username"] for a in await drill(api, "agents", "break")] == ["agent"]
    assert w["conversations"] == {"waiting": 2, "waiting_over_3min": 1, "longest_wait_s": 300}
    assert [c["ref"] for c in await drill(api, "conversations_over_3min")] == ["c1"]
    assert w["phone"]["calls_waiting"] == 1
    assert 40 <= w["phone"]["longest_wait_s"] <= 42
    assert w["phone"]["connected"] is False
    assert w["phone"]["service_level_15s_today"] is None  # unknown until the ACD says
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


async def test_agent_state_round_trip_and_validation(sqlite_api):
    api = sqlite_api
    r = await api.get("/api/v1/console/state")
    assert (await r.json())["state"] == "logged_out"
    h = await api.headers("agent")
    r = await api.client.put("/api/v1/console/state", json={"state": "wrap_up"}, headers=h)
    assert r.status == 200
    assert (await (await api.get("/api/v1/console/state")).json())["state"] == "wrap_up"
    r = await api.client.put("/api/v1/console/state", json={"state": "asleep"}, headers=h)
    assert r.status == 422
    h = await api.headers("urban")
    r = await api.client.put("/api/v1/console/state", json={"state": "available"}, headers=h)
    assert r.status == 403


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
