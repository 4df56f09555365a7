"""The ticket API: create, read, search, page, move, audit trail, attachments, catalog."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import zlib
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import Api, _seed, make_settings

PROBLEM = "application/problem+json"
SHANGHAI = ZoneInfo("Asia/Shanghai")


def today() -> str:
    return datetime.now(SHANGHAI).strftime("%Y%m%d")


def numbers(page: dict) -> list[str]:
    return [t["number"] for t in page["items"]]


async def listed(api: Api, as_: str = "agent", **params: str) -> list[str]:
    r = await api.get("/api/v1/tickets", as_=as_, params=params)
    assert r.status == 200, await r.text()
    return numbers(await r.json())


def png_bytes() -> bytes:
    """A real 1x1 red PNG."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + tag
            + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00\xff\x00\x00")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ---------------------------------------------------------------- create and read


async def test_create_returns_201_with_a_number_and_location(api):
    before = today()
    r = await api.post(
        "/api/v1/tickets",
        {
            "kind": "complaint",
            "title": "路灯不亮",
            "description": "幸福小区南门路灯不亮",
            "channel": "phone",
            "category": "urban.street-lights",
            "contact": {"name": "张女士", "phone": "138 1234 5678"},
            "location": {"address": "幸福小区南门", "district": "东城区"},
        },
    )
    assert r.status == 201, await r.text()
    t = await r.json()
    number = t["number"]
    assert len(number) == 13 and number.isdigit()
    assert number[:8] in {before, today()}  # the city's date, Asia/Shanghai
    assert r.headers["Location"] == f"/api/v1/tickets/{number}"
    assert t == {
        "number": number,
        "kind": "complaint",
        "title": "路灯不亮",
        "description": "幸福小区南门路灯不亮",
        "category": {"code": "urban.street-lights", "name": "路灯不亮"},
        "channel": "phone",
        "urgency": "normal",
        "priority": 2,
        "status": "new",
        "lead_department": None,
        "assist_departments": [],
        "contact": {"name": "张女士", "phone": "138****5678", "channel_ids": {}},
        "location": {"address": "幸福小区南门", "district": "东城区", "lat": None, "lon": None},
        "merged_into": None,
        "reply": None,
        "satisfaction": None,
        "supervision_count": 0,
        "reopen_count": 0,
        "deadlines": {
            "dispatch_due_at": t["deadlines"]["dispatch_due_at"],
            "feedback_due_at": None,
            "overdue": False,
        },
        "created_by": "agent",
        "created_at": t["created_at"],
        "updated_at": t["created_at"],
        "dispatched_at": None,
        "closed_at": None,
        "version": 1,
        "allowed_actions": ["answer", "dispatch", "merge"],
    }
    created = datetime.fromisoformat(t["created_at"])
    due = datetime.fromisoformat(t["deadlines"]["dispatch_due_at"])
    assert due - created == timedelta(hours=24)  # normal urgency: dispatch within 24 h


async def test_numbers_count_up_within_the_day(sqlite_api):
    a = await sqlite_api.new_ticket()
    b = await sqlite_api.new_ticket()
    assert int(b["number"]) == int(a["number"]) + 1


async def test_get_by_number_returns_the_stored_ticket(api):
    created = await api.new_ticket(contact={"phone": "13812345678"})
    r = await api.get(f"/api/v1/tickets/{created['number']}")
    assert r.status == 200
    assert await r.json() == created


async def test_unknown_number_is_404_problem(sqlite_api):
    r = await sqlite_api.get("/api/v1/tickets/2020010100001")
    assert r.status == 404
    assert r.content_type == PROBLEM
    assert await r.json() == {
        "type": "/problems/not-found",
        "title": "Not found",
        "status": 404,
        "detail": "no ticket 2020010100001",
    }
    r = await sqlite_api.get("/api/v1/tickets/abc")
    assert r.status == 404
    assert await r.json() == {
        "type": "/problems/not-found",
        "title": "Not found",
        "status": 404,
        "detail": "'abc' is not a ticket number",
    }
    r = await sqlite_api.post("/api/v1/tickets/2020010100001/dispatch", {})
    assert r.status == 404


async def test_missing_and_invalid_fields_are_422_naming_each(sqlite_api):
    r = await sqlite_api.post("/api/v1/tickets", {"kind": "gossip", "title": "", "channel": "fax"})
    assert r.status == 422
    body = await r.json()
    assert body["type"] == "/problems/validation-error"
    assert sorted(e["field"] for e in body["errors"]) == [
        "channel",
        "description",
        "kind",
        "title",
    ]


async def test_unknown_category_is_422(sqlite_api):
    r = await sqlite_api.post(
        "/api/v1/tickets",
        {
            "kind": "complaint",
            "title": "t",
            "description": "d",
            "channel": "phone",
            "category": "no.such",
        },
    )
    assert r.status == 422
    assert await r.json() == {
        "type": "/problems/validation-error",
        "title": "Some fields are not valid",
        "status": 422,
        "detail": "unknown category 'no.such'",
        "errors": [{"field": "category", "message": "unknown category 'no.such'"}],
    }


# ---------------------------------------------------------------- list filters


async def test_filter_by_status_kind_and_channel(api):
    a = await api.new_ticket(kind="complaint", channel="phone")
    b = await api.new_ticket(kind="consultation", channel="wechat")
    c = await api.new_ticket(kind="complaint", channel="app")
    await api.move(b["number"], "answer", {"answer": "请拨打96345"})
    await api.move(c["number"], "dispatch")

    assert await listed(api, status="new") == [a["number"]]
    assert await listed(api, status="answered,dispatched") == [c["number"], b["number"]]
    assert await listed(api, kind="complaint") == [c["number"], a["number"]]
    assert await listed(api, kind="consultation") == [b["number"]]
    assert await listed(api, channel="wechat") == [b["number"]]
    assert await listed(api, kind="complaint", channel="phone") == [a["number"]]
    assert await listed(api, status="closed") == []


async def test_filter_by_category_includes_sub_categories(api):
    lights = await api.new_ticket(category="urban.street-lights")
    noise = await api.new_ticket(category="urban.noise")
    water = await api.new_ticket(category="utilities.water-outage")
    none = await api.new_ticket(category=None)

    assert await listed(api, category="urban") == [noise["number"], lights["number"]]
    assert await listed(api, category="urban.noise") == [noise["number"]]
    assert await listed(api, category="utilities") == [water["number"]]
    assert await listed(api) == [none["number"], water["number"], noise["number"], lights["number"]]


async def test_filter_by_department_finds_lead_and_assisting(api):
    lead = await api.new_ticket()
    assist = await api.new_ticket(category="utilities.water-outage")
    other = await api.new_ticket(category="transport.bus")
    await api.move(lead["number"], "dispatch", {"department": "urban-mgmt"})
    await api.move(assist["number"], "dispatch", {"assist": ["urban-mgmt"]})
    await api.move(other["number"], "dispatch")

    assert await listed(api, department="urban-mgmt") == [assist["number"], lead["number"]]
    assert await listed(api, department="water") == [assist["number"]]
    assert await listed(api, department="transport") == [other["number"]]
    assert await listed(api, department="urban") == []  # a whole code, not a prefix


async def test_search_finds_chinese_substrings(api):
    lights = await api.new_ticket(title="路灯不亮", description="南门一带晚上很黑")
    noise = await api.new_ticket(
        title="夜间施工噪音", description="工地晚上施工", location={"address": "和平路12号"}
    )
    await api.new_ticket(title="停水咨询", description="什么时候恢复供水")

    assert await listed(api, q="路灯") == [lights["number"]]
    assert await listed(api, q="灯不") == [lights["number"]]
    assert await listed(api, q="晚上") == [noise["number"], lights["number"]]
    assert await listed(api, q="和平路") == [noise["number"]]  # the address
    assert await listed(api, q=lights["number"]) == [lights["number"]]
    assert await listed(api, q="煤气") == []


async def test_search_treats_percent_and_underscore_literally(api):
    pct = await api.new_ticket(title="水费多收100%", description="账单翻倍")
    await api.new_ticket(title="水费多收1000元", description="账单不对")
    under = await api.new_ticket(title="网站a_b页面打不开", description="报错")
    await api.new_ticket(title="网站axb页面", description="正常")

    assert await listed(api, q="100%") == [pct["number"]]
    assert await listed(api, q="a_b") == [under["number"]]
    assert await listed(api, q="%") == [pct["number"]]


async def test_filter_overdue(api, monkeypatch):
    from hotline.appkeys import DEPS

    deps = api.app[DEPS]
    real_clock = deps.clock
    monkeypatch.setattr(deps, "clock", lambda: real_clock() - timedelta(days=10))
    late = await api.new_ticket(title="十天前的工单")
    answered = await api.new_ticket(title="十天前已答复")
    await api.move(answered["number"], "answer", {"answer": "已答复"})
    monkeypatch.setattr(deps, "clock", real_clock)
    fresh = await api.new_ticket(title="刚刚的工单")

    r = await api.get(f"/api/v1/tickets/{late['number']}")
    assert (await r.json())["deadlines"]["overdue"] is True
    assert await listed(api, overdue="true") == [late["number"]]
    # an answered ticket has no deadline left to miss
    assert await listed(api, overdue="false") == [fresh["number"], answered["number"]]
    r = await api.get("/api/v1/tickets", params={"overdue": "maybe"})
    assert r.status == 422
    assert (await r.json())["errors"] == [{"field": "overdue", "message": "true or false"}]


async def test_filter_by_creation_time(api, monkeypatch):
    from hotline.appkeys import DEPS

    deps = api.app[DEPS]
    real_clock = deps.clock
    monkeypatch.setattr(deps, "clock", lambda: real_clock() - timedelta(days=3))
    old = await api.new_ticket(title="三天前")
    monkeypatch.setattr(deps, "clock", real_clock)
    new = await api.new_ticket(title="今天")
    assert old["number"][:8] != new["number"][:8]  # numbered by the day it was created on

    yesterday = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert await listed(api, **{"from": yesterday}) == [new["number"]]
    assert await listed(api, to=yesterday) == [old["number"]]
    assert await listed(api, **{"from": new["created_at"]}) == [new["number"]]  # inclusive
    assert await listed(api, to=new["created_at"]) == [old["number"]]  # exclusive
    in_shanghai = (datetime.now(SHANGHAI) - timedelta(days=1)).isoformat()
    assert await listed(api, **{"from": in_shanghai}) == [new["number"]]

    for bad in (
        "yesterday",
        "2026-01-01T00:00:00",  # no offset: ambiguous
        "0001-01-01T00:00:00+14:00",  # no UTC instant
        "9999-12-31T23:59:59-12:00",
    ):
        r = await api.get("/api/v1/tickets", params={"from": bad})
        assert r.status == 422
        assert (await r.json())["errors"][0]["field"] == "from"


# ---------------------------------------------------------------- pagination


async def test_cursor_pagination_walks_every_ticket_once(api):
    created = [(await api.new_ticket(title=f"工单{i}"))["number"] for i in range(25)]
    newest_first = created[::-1]

    r = await api.get("/api/v1/tickets", params={"limit": "10"})
    page1 = await r.json()
    assert numbers(page1) == newest_first[:10]
    assert page1["next_cursor"]

    # tickets created while someone pages do not shift the pages
    for i in range(3):
        await api.new_ticket(title=f"翻页时新建{i}")

    r = await api.get("/api/v1/tickets", params={"limit": "10", "cursor": page1["next_cursor"]})
    page2 = await r.json()
    assert numbers(page2) == newest_first[10:20]
    r = await api.get("/api/v1/tickets", params={"limit": "10", "cursor": page2["next_cursor"]})
    page3 = await r.json()
    assert numbers(page3) == newest_first[20:]
    assert page3["next_cursor"] is None


async def test_cursor_pagination_with_filters(sqlite_api):
    api = sqlite_api
    wanted = []
    for i in range(7):
        wanted.append((await api.new_ticket(kind="complaint", title=f"投诉{i}"))["number"])
        await api.new_ticket(kind="suggestion", title=f"建议{i}")
    seen: list[str] = []
    cursor = None
    while True:
        params = {"kind": "complaint", "limit": "3", **({"cursor": cursor} if cursor else {})}
        page = await (await api.get("/api/v1/tickets", params=params)).json()
        seen += numbers(page)
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == wanted[::-1]


def _cursor(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor",
        "!!!",
        _cursor({"at": "2026-01-01T00:00:00+00:00"}),
        _cursor(["yesterday", 1]),
        _cursor([1, 2]),
        _cursor(["2026-01-01T00:00:00", 1]),  # no offset
        _cursor(["0001-01-01T00:00:00+14:00", 1]),  # no UTC instant
        _cursor(["2026-01-01T00:00:00+00:00", 10**30]),
        _cursor(["2026-01-01T00:00:00+00:00", "x"]),
    ],
)
async def test_invalid_cursor_is_422(api, cursor):
    await api.new_ticket()
    r = await api.get("/api/v1/tickets", params={"cursor": cursor})
    assert r.status == 422, await r.text()
    assert r.content_type == PROBLEM
    assert (await r.json())["errors"] == [
        {"field": "cursor", "message": "cursor is not one this API issued"}
    ]


@pytest.mark.parametrize("limit", ["0", "201", "ten", "-1"])
async def test_limit_out_of_range_is_422(sqlite_api, limit):
    r = await sqlite_api.get("/api/v1/tickets", params={"limit": limit})
    assert r.status == 422
    assert (await r.json())["errors"] == [{"field": "limit", "message": "1 to 200"}]


# ---------------------------------------------------------------- personal data


async def test_phone_is_masked_in_every_view(api):
    t = await api.new_ticket(contact={"name": "王先生", "phone": "+86 138-1234-5678"})
    assert t["contact"] == {"name": "王先生", "phone": "138****5678", "channel_ids": {}}

    one = await (await api.get(f"/api/v1/tickets/{t['number']}")).json()
    assert one["contact"]["phone"] == "138****5678"
    page = await (await api.get("/api/v1/tickets")).json()
    assert page["items"][0]["contact"]["phone"] == "138****5678"
    moved = await api.move(t["number"], "dispatch")
    assert moved["contact"]["phone"] == "138****5678"
    events = await (await api.get(f"/api/v1/tickets/{t['number']}/events")).json()
    assert "13812345678" not in json.dumps(events)


async def test_reveal_contact_returns_e164_and_is_audited(api):
    t = await api.new_ticket(contact={"name": "王先生", "phone": "138 1234 5678"})
    r = await api.post(
        f"/api/v1/tickets/{t['number']}/contact", {"reason": "回访核实"}, as_="supervisor"
    )
    assert r.status == 200
    assert await r.json() == {"name": "王先生", "phone": "+8613812345678"}

    events = (await (await api.get(f"/api/v1/tickets/{t['number']}/events")).json())["items"]
    assert [(e["seq"], e["action"], e["actor"]) for e in events] == [
        (1, "create", "agent"),
        (2, "contact_viewed", "supervisor"),
    ]
    assert events[1]["data"] == {"reason": "回访核实"}
    assert events[1]["from_status"] == events[1]["to_status"] == "new"


async def test_reveal_contact_needs_a_reason_and_a_floor_role(api):
    t = await api.new_ticket(contact={"phone": "13812345678"})
    await api.move(t["number"], "dispatch")
    r = await api.post(f"/api/v1/tickets/{t['number']}/contact", {})
    assert r.status == 422
    assert (await r.json())["errors"] == [{"field": "reason", "message": "Field required"}]
    r = await api.post(f"/api/v1/tickets/{t['number']}/contact", {"reason": "x"}, as_="urban")
    assert r.status == 403


@pytest.mark.parametrize("phone", ["12345", "not a phone", "+86 000 0000 0000"])
async def test_invalid_phone_is_422_naming_contact_phone(sqlite_api, phone):
    r = await sqlite_api.post(
        "/api/v1/tickets",
        {
            "kind": "complaint",
            "title": "t",
            "description": "d",
            "channel": "phone",
            "contact": {"phone": phone},
        },
    )
    assert r.status == 422
    body = await r.json()
    assert body["type"] == "/problems/validation-error"
    assert [e["field"] for e in body["errors"]] == ["contact.phone"]
    assert await listed(sqlite_api) == []


# ---------------------------------------------------------------- moves and the trail


async def test_illegal_move_is_409_naming_allowed_actions(api):
    t = await api.new_ticket()
    r = await api.post(f"/api/v1/tickets/{t['number']}/follow-up", {"satisfaction": "satisfied"})
    assert r.status == 409
    assert r.content_type == PROBLEM
    assert await r.json() == {
        "type": "/problems/illegal-transition",
        "title": "That move is not allowed for this ticket now",
        "status": 409,
        "detail": "cannot follow_up a ticket that is new",
        "status_now": "new",
        "allowed_actions": ["answer", "dispatch", "merge"],
    }


async def test_move_by_the_wrong_role_is_403(api):
    t = await api.new_ticket()
    await api.move(t["number"], "dispatch")
    r = await api.post(f"/api/v1/tickets/{t['number']}/sign", {}, as_="agent")
    assert r.status == 403
    assert await r.json() == {
        "type": "/problems/forbidden",
        "title": "Your role may not do this",
        "status": 403,
        "detail": "a agent may not sign; that is for department",
        "status_now": "dispatched",
        "allowed_actions": ["merge"],
    }
    # the ticket did not move
    assert (await (await api.get(f"/api/v1/tickets/{t['number']}")).json())["version"] == 2


async def test_events_trail_lists_each_move_in_order_with_chained_hashes(api):
    from ticketing.audit import GENESIS, event_hash

    t = await api.new_ticket()
    n = t["number"]
    await api.move(n, "dispatch", {"note": "请尽快处理"})
    await api.move(n, "sign", as_="urban")
    await api.move(n, "reply", {"reply": "已修复"}, as_="urban")
    await api.move(n, "follow-up", {"satisfaction": "satisfied"})

    r = await api.get(f"/api/v1/tickets/{n}/events")
    assert r.status == 200
    events = (await r.json())["items"]
    assert [
        (e["seq"], e["action"], e["actor"], e["actor_role"], e["from_status"], e["to_status"])
        for e in events
    ] == [
        (1, "create", "agent", "agent", None, "new"),
        (2, "dispatch", "agent", "agent", "new", "dispatched"),
        (3, "sign", "urban", "department", "dispatched", "accepted"),
        (4, "reply", "urban", "department", "accepted", "replied"),
        (5, "follow_up", "agent", "agent", "replied", "closed"),
    ]
    assert events[0]["data"] == {
        "channel": "phone",
        "kind": "complaint",
        "category": "urban.street-lights",
        "urgency": "normal",
    }
    assert events[1]["data"]["lead"] == "urban-mgmt"
    assert events[1]["data"]["note"] == "请尽快处理"
    assert events[3]["data"] == {"reply": "已修复"}
    assert events[4]["data"] == {"satisfaction": "satisfied"}
    # each hash covers the event and the one before it
    prev = GENESIS
    for e in events:
        assert e["hash"] == event_hash(
            prev,
            ticket_number=n,
            seq=e["seq"],
            at=datetime.fromisoformat(e["at"]),
            actor=e["actor"],
            actor_role=e["actor_role"],
            action=e["action"],
            from_status=e["from_status"],
            to_status=e["to_status"],
            data=e["data"],
        )
        prev = e["hash"]
    r = await api.get("/api/v1/admin/audit/verify", as_="supervisor")
    assert await r.json() == {"checked": 1, "intact": True, "breaks": []}


# ---------------------------------------------------------------- attachments


async def upload(api: Api, number: str, data: bytes, ctype: str, filename: str = "photo.png"):  # type: ignore[no-untyped-def]
    return await api.client.post(
        f"/api/v1/tickets/{number}/attachments",
        data=data,
        params={"filename": filename},
        headers={**await api.headers("agent"), "Content-Type": ctype},
    )


async def test_attachment_upload_list_download(api):
    t = await api.new_ticket()
    png = png_bytes()
    r = await upload(api, t["number"], png, "image/png")
    assert r.status == 201, await r.text()
    att = await r.json()
    sha = hashlib.sha256(png).hexdigest()
    assert att == {
        "id": att["id"],
        "filename": "photo.png",
        "content_type": "image/png",
        "size": len(png),
        "sha256": sha,
        "uploaded_by": "agent",
        "uploaded_at": att["uploaded_at"],
        "url": f"/api/v1/attachments/{att['id']}",
    }

    r = await api.get(f"/api/v1/tickets/{t['number']}/attachments")
    assert r.status == 200
    assert await r.json() == {"items": [att]}

    r = await api.get(att["url"])
    assert r.status == 200
    assert r.headers["Content-Type"] == "image/png"
    assert r.headers["Content-Disposition"] == "attachment"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert await r.read() == png

    events = (await (await api.get(f"/api/v1/tickets/{t['number']}/events")).json())["items"]
    assert events[-1]["action"] == "attachment_added"
    assert events[-1]["data"] == {
        "id": att["id"],
        "filename": "photo.png",
        "sha256": sha,
        "size": len(png),
    }


async def test_attachment_of_another_department_is_404(api):
    mine = await api.new_ticket()
    theirs = await api.new_ticket(category="utilities.water-outage")
    await api.move(mine["number"], "dispatch")
    await api.move(theirs["number"], "dispatch")
    att = await (await upload(api, theirs["number"], png_bytes(), "image/png")).json()
    assert (await api.get(att["url"], as_="water")).status == 200
    r = await api.get(att["url"], as_="urban")
    assert r.status == 404
    assert (await api.get("/api/v1/attachments/999999")).status == 404
    assert (await api.get("/api/v1/attachments/abc")).status == 404


async def test_attachment_of_a_type_not_accepted_is_415(sqlite_api):
    t = await sqlite_api.new_ticket()
    r = await upload(sqlite_api, t["number"], b"MZ\x90\x00", "application/x-msdownload", "a.exe")
    assert r.status == 415
    assert r.content_type == PROBLEM
    body = await r.json()
    assert body["type"] == "/problems/unsupported-media-type"
    assert body["detail"].startswith("application/x-msdownload is not accepted")


async def test_attachment_whose_bytes_are_not_its_type_is_415(sqlite_api):
    t = await sqlite_api.new_ticket()
    r = await upload(sqlite_api, t["number"], b"<html><script>alert(1)</script>", "image/png")
    assert r.status == 415
    assert await r.json() == {
        "type": "/problems/unsupported-media-type",
        "title": "Unsupported content type",
        "status": 415,
        "detail": "the content is not image/png",
    }
    r = await sqlite_api.get(f"/api/v1/tickets/{t['number']}/attachments")
    assert await r.json() == {"items": []}


async def test_attachment_with_a_bad_filename_or_no_bytes_is_422(sqlite_api):
    t = await sqlite_api.new_ticket()
    r = await upload(sqlite_api, t["number"], png_bytes(), "image/png", "../../etc/passwd")
    assert r.status == 422
    assert (await r.json())["errors"] == [{"field": "filename", "message": "a plain file name"}]
    r = await upload(sqlite_api, t["number"], b"", "text/plain", "empty.txt")
    assert r.status == 422
    assert (await r.json())["errors"] == [{"field": "(body)", "message": "empty file"}]


@pytest.fixture
async def small_api(aiohttp_client, sqlite_url, tmp_path):  # type: ignore[no-untyped-def]
    """The service with attachments limited to 2 KiB."""
    from hotline.app import create_app
    from hotline.appkeys import DEPS

    settings = make_settings(tmp_path, sqlite_url, attachment_max_bytes=2048)
    app = create_app(settings, watch_deadlines=False)
    client = await aiohttp_client(app)
    await _seed(app[DEPS])
    return Api(client, app)


async def test_oversize_attachment_is_413(small_api):
    t = await small_api.new_ticket()
    png = png_bytes()
    fits = png + b"\x00" * (2048 - len(png))
    r = await upload(small_api, t["number"], fits, "image/png")
    assert r.status == 201
    r = await upload(small_api, t["number"], fits + b"\x00", "image/png")
    assert r.status == 413
    assert r.content_type == PROBLEM
    assert await r.json() == {
        "type": "/problems/payload-too-large",
        "title": "The request body is too large",
        "status": 413,
        "detail": "attachments are limited to 2048 bytes",
    }
    r = await upload(small_api, t["number"], png + b"\x00" * 100_000, "image/png")
    assert r.status == 413
    r = await small_api.get(f"/api/v1/tickets/{t['number']}/attachments")
    assert len((await r.json())["items"]) == 1


# ---------------------------------------------------------------- catalog


async def test_categories_list_has_the_taxonomy_codes(sqlite_api):
    r = await sqlite_api.get("/api/v1/categories")
    assert r.status == 200
    items = {c["code"]: c for c in (await r.json())["items"]}
    assert {"urban", "urban.street-lights", "utilities.water-outage"} <= set(items)
    assert items["urban.street-lights"] == {
        "code": "urban.street-lights",
        "name": "路灯不亮",
        "parent_code": "urban",
        "default_department": "urban-mgmt",
        "urgency": "normal",
        "dispatch_limit": None,
        "feedback_limit": None,
        "active": True,
    }
    assert items["utilities.water-outage"]["urgency"] == "urgent"
    r = await sqlite_api.get("/api/v1/departments", as_="urban")
    assert "urban-mgmt" in {d["code"] for d in (await r.json())["items"]}


async def test_admin_creates_and_updates_a_department(api):
    r = await api.post(
        "/api/v1/departments",
        {
            "code": "d-east-parks",
            "name": "东城区园林所",
            "parent_code": "d-east",
            "level": "agency",
            "district": "东城区",
        },
        as_="admin",
    )
    assert r.status == 201, await r.text()
    assert await r.json() == {
        "code": "d-east-parks",
        "name": "东城区园林所",
        "parent_code": "d-east",
        "level": "agency",
        "district": "东城区",
        "is_fallback": False,
        "active": True,
    }
    r = await api.patch("/api/v1/departments/d-east-parks", {"name": "东城区园林绿化所"})
    assert r.status == 200
    assert (await r.json())["name"] == "东城区园林绿化所"
    # usable at once: a ticket can be dispatched there
    t = await api.new_ticket()
    t = await api.move(t["number"], "dispatch", {"department": "d-east-parks"})
    assert t["lead_department"] == "d-east-parks"
    r = await api.get("/api/v1/departments")
    assert "东城区园林绿化所" in {d["name"] for d in (await r.json())["items"]}


async def test_admin_creates_and_updates_a_category(api):
    r = await api.post(
        "/api/v1/categories",
        {
            "code": "urban.manhole",
            "name": "井盖缺失",
            "parent_code": "urban",
            "default_department": "urban-mgmt",
        },
        as_="admin",
    )
    assert r.status == 201, await r.text()
    assert await r.json() == {
        "code": "urban.manhole",
        "name": "井盖缺失",
        "parent_code": "urban",
        "default_department": "urban-mgmt",
        "urgency": "normal",
        "dispatch_limit": None,
        "feedback_limit": None,
        "active": True,
    }
    r = await api.patch(
        "/api/v1/categories/urban.manhole", {"urgency": "urgent", "dispatch_limit": "2h"}
    )
    assert r.status == 200
    assert await r.json() == {
        "code": "urban.manhole",
        "name": "井盖缺失",
        "parent_code": "urban",
        "default_department": "urban-mgmt",
        "urgency": "urgent",
        "dispatch_limit": "2h",
        "feedback_limit": None,
        "active": True,
    }
    t = await api.new_ticket(category="urban.manhole")
    assert t["urgency"] == "urgent"
    assert t["category"] == {"code": "urban.manhole", "name": "井盖缺失"}
    assert await listed(api, category="urban") == [t["number"]]


async def test_catalog_errors_are_422_naming_the_field(api):
    cases = [
        (
            "/api/v1/departments",
            {"code": "water", "name": "重复", "level": "agency"},
            "code",
            "code 'water' already exists",
        ),
        (
            "/api/v1/departments",
            {"code": "x-new", "name": "新单位", "level": "agency", "parent_code": "nowhere"},
            "parent_code",
            "unknown parent 'nowhere'",
        ),
        (
            "/api/v1/categories",
            {"code": "urban.noise", "name": "重复"},
            "code",
            "code 'urban.noise' already exists",
        ),
        (
            "/api/v1/categories",
            {"code": "urban.x", "name": "新类", "parent_code": "nowhere"},
            "parent_code",
            "unknown parent 'nowhere'",
        ),
        (
            "/api/v1/categories",
            {"code": "urban.y", "name": "新类", "default_department": "nowhere"},
            "default_department",
            "unknown department 'nowhere'",
        ),
    ]
    for path, body, field, message in cases:
        r = await api.post(path, body, as_="admin")
        assert r.status == 422, (path, body)
        assert await r.json() == {
            "type": "/problems/validation-error",
            "title": "Some fields are not valid",
            "status": 422,
            "detail": message,
            "errors": [{"field": field, "message": message}],
        }
    r = await api.patch("/api/v1/departments/water", {"parent_code": "nowhere"})
    assert r.status == 422
    r = await api.patch("/api/v1/departments/water", {"parent_code": "water"})
    assert r.status == 422
    assert (await r.json())["errors"] == [
        {"field": "parent_code", "message": "a node cannot be its own parent"}
    ]
    r = await api.patch("/api/v1/categories/no.such", {"name": "x"})
    assert r.status == 404
    r = await api.post(
        "/api/v1/departments", {"code": "bad code!", "name": "x", "level": "moon"}, as_="admin"
    )
    assert r.status == 422
    assert sorted(e["field"] for e in (await r.json())["errors"]) == ["code", "level"]


async def test_a_retried_upload_is_stored_once_and_a_new_file_is_never_lost(sqlite_api):
    api = sqlite_api
    t = await api.new_ticket()
    png = png_bytes()
    first = await (await upload(api, t["number"], png, "image/png")).json()
    r = await upload(api, t["number"], png, "image/png")
    assert r.status == 200
    assert (await r.json())["id"] == first["id"]

    # an Idempotency-Key does not make a different file disappear into a replay
    other = b"%PDF-1.4\n% a different file\n"
    headers = await api.headers(
        "agent", {"Content-Type": "application/pdf", "Idempotency-Key": "u1"}
    )
    path = f"/api/v1/tickets/{t['number']}/attachments?filename=a.pdf"
    r1 = await api.client.post(path, data=other, headers=headers)
    r2 = await api.client.post(path, data=other + b"v2", headers=headers)
    assert (r1.status, r2.status) == (201, 201)
    assert (await r1.json())["id"] != (await r2.json())["id"]
    listed = await (await api.get(f"/api/v1/tickets/{t['number']}/attachments")).json()
    assert len(listed["items"]) == 3
