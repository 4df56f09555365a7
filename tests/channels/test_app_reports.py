"""App reports: multipart with photos typed by their bytes, Idempotency-Key honoured,
the resident's tickets and their public timeline, ratings, follow-up messages."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import sqlalchemy as sa

from channels import HUB
from channels.app import APP_CHANNEL
from channels.app.photos import _safe_name, sniff
from hotline.appkeys import DEPS
from tests.channels.test_app_signin import APP, sign_in
from ticketing.handlers import event_t

JPEG = (
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    + bytes(200)
    + (b"\xff\xd9")
)
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02" + bytes(60)
HTML = b"<!doctype html><script>alert(document.cookie)</script>"
TEXT = "幸福小区南门的路灯坏了三天，晚上很黑"


def form(photos: list[tuple[bytes, str, str]] = (), **fields: str) -> aiohttp.FormData:  # type: ignore[assignment]
    data = aiohttp.FormData(default_to_multipart=True)
    values = {"description": TEXT, "kind": "complaint", "category": "urban.street-lights"}
    values.update(fields)
    for k, v in values.items():
        if v is not None:
            data.add_field(k, v)
    for content, name, ctype in photos:
        data.add_field("photo", content, filename=name, content_type=ctype)
    return data


async def report(
    api: Any, me: dict[str, str], key: str = "k-1", status: int = 201, **kw: Any
) -> dict[str, Any]:
    r = await api.client.post(
        f"{APP}/reports", data=form(**kw), headers={**me, "Idempotency-Key": key}
    )
    body = await r.json()
    assert r.status == status, body
    return body


async def test_a_report_with_photos_becomes_an_app_ticket(api):  # type: ignore[no-untyped-def]
    me = await sign_in(api)
    body = await report(
        api,
        me,
        photos=[(JPEG, "IMG_0001.JPG", "image/jpeg"), (PNG, "street light.gif", "image/png")],
        lat="31.2304",
        lon="121.4737",
        address="幸福小区南门",
    )
    number = body["number"]
    assert body["status"] == "new" and body["photos"] == 2
    assert body["location"] == {"address": "幸福小区南门", "lat": 31.2304, "lon": 121.4737}
    assert body["emergency_lines"] == []
    assert [e["type"] for e in body["timeline"]] == ["received", "photo_added", "photo_added"]

    staff = await (await api.get(f"/api/v1/tickets/{number}")).json()
    assert (staff["channel"], staff["kind"], staff["description"]) == ("app", "complaint", TEXT)
    assert staff["contact"]["phone"] == "138****5678"  # agents can call back
    atts = (await (await api.get(f"/api/v1/tickets/{number}/attachments")).json())["items"]
    assert [(a["filename"], a["content_type"]) for a in atts] == [
        ("IMG_0001.jpg", "image/jpeg"),
        ("street light.png", "image/png"),  # the extension follows the bytes
    ]
    r = await api.get(atts[0]["url"])
    assert (r.status, await r.read()) == (200, JPEG)
    # the report is the first message of the ticket's conversation (not waiting: ticketed)
    convs = await (await api.get("/api/v1/conversations?channel=app")).json()
    (conv,) = convs if isinstance(convs, list) else convs["items"]
    assert (conv["ticket_number"], conv["waiting"]) == (number, False)


async def test_photo_limits_are_read_from_the_bytes(api):  # type: ignore[no-untyped-def]
    me = await sign_in(api)
    jpg = (JPEG, "a.jpg", "image/jpeg")
    r = await report(api, me, "k-many", 422, photos=[jpg] * 5)
    assert r["errors"] == [{"field": "photos", "message": "at most 4 photos"}]
    r = await report(api, me, "k-html", 415, photos=[(HTML, "cat.jpg", "image/jpeg")])
    assert r["type"] == "/problems/unsupported-media-type"
    assert "read from the content" in r["detail"]
    api.app[APP_CHANNEL].photo_limits["max_bytes"] = 1024
    r = await report(api, me, "k-big", 413, photos=[(JPEG + bytes(2000), "b.jpg", "image/jpeg")])
    assert r["type"] == "/problems/payload-too-large"
    r = await report(api, me, "k-empty", 422, photos=[(b"", "e.jpg", "image/jpeg")])
    assert r["errors"][0]["field"] == "photos"
    # a refused report files nothing, and its key may be used again
    assert (await (await api.client.get(f"{APP}/tickets", headers=me)).json())["items"] == []
    await report(api, me, "k-html", photos=[jpg])


async def test_bad_reports_are_refused_with_the_field(sqlite_api):  # type: ignore[no-untyped-def]
    api = sqlite_api
    me = await sign_in(api)
    r = await report(api, me, "a", 422, kind="gossip")
    assert r["errors"][0]["field"] == "kind"
    r = await report(api, me, "b", 422, description="短")
    assert r["errors"][0]["field"] == "description"
    r = await report(api, me, "c", 422, lat="31.2")
    assert r["errors"][0]["message"].endswith("give lat and lon together")
    r = await report(api, me, "d", 422, category="no.such")
    assert r["errors"] == [{"field": "category", "message": "unknown category 'no.such'"}]
    r = await report(api, me, "e", 422, is_admin="1")
    assert r["errors"] == [{"field": "is_admin", "message": "unknown field"}]
    r = await api.client.post(f"{APP}/reports", data=form(), headers=me)  # no key
    assert (r.status, (await r.json())["errors"][0]["field"]) == (422, "Idempotency-Key")
    r = await api.client.post(
        f"{APP}/reports", json={"description": TEXT}, headers={**me, "Idempotency-Key": "j"}
    )
    assert r.status == 415
    r = await api.client.post(f"{APP}/reports", data=form(), headers={"Idempotency-Key": "x"})
    assert r.status == 401


async def test_a_retried_report_answers_the_first_ticket(api):  # type: ignore[no-untyped-def]
    me = await sign_in(api)
    photos = [(JPEG, "a.jpg", "image/jpeg")]
    first = await report(api, me, "same-key", photos=photos)
    r = await api.client.post(
        f"{APP}/reports",
        data=form(photos=photos),
        headers={**me, "Idempotency-Key": "same-key"},
    )
    assert (r.status, r.headers.get("Idempotent-Replayed")) == (201, "true")
    assert await r.json() == first
    other = await report(api, me, "same-key", 422, description="另一件事：垃圾没人收")
    assert other["type"] == "/problems/idempotency-key-reuse"
    # in flight: the same key while the first request runs
    channel = api.app[APP_CHANNEL]
    account = (await (await api.client.get(f"{APP}/tickets", headers=me)).json())["items"]
    assert [t["number"] for t in account] == [first["number"]]
    who = await channel.resolve(_FakeRequest(me))
    channel.service._inflight.add((who.account_id, "busy"))
    busy = await report(api, me, "busy", 409)
    assert busy["type"] == "/problems/idempotency-in-progress"
    async with api.app[DEPS].db.read() as conn:
        n = (await conn.execute(sa.text("SELECT count(*) FROM ticket"))).scalar_one()
    assert n == 1


async def test_a_report_interrupted_part_way_is_finished_by_its_retry(api, monkeypatch):  # type: ignore[no-untyped-def]
    me = await sign_in(api)
    hub = api.app[HUB]
    real = hub.receive
    calls = {"n": 0}

    async def crash_once(msg, **kw):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("power cut")
        return await real(msg, **kw)

    monkeypatch.setattr(hub, "receive", crash_once)
    r = await api.client.post(
        f"{APP}/reports",
        data=form(photos=[(JPEG, "a.jpg", "image/jpeg")]),
        headers={**me, "Idempotency-Key": "crashy"},
    )
    assert r.status == 500  # the ticket was written, its thread was not
    again = await report(api, me, "crashy", photos=[(JPEG, "a.jpg", "image/jpeg")])
    async with api.app[DEPS].db.read() as conn:
        numbers = (await conn.execute(sa.text("SELECT number FROM ticket"))).scalars().all()
        photos = (await conn.execute(sa.text("SELECT count(*) FROM attachment"))).scalar_one()
    assert numbers == [again["number"]] and photos == 1
    convs = await (await api.get("/api/v1/conversations?channel=app")).json()
    assert [c["ticket_number"] for c in convs["items"]] == [again["number"]]


def test_photo_names_are_plain_and_types_come_from_the_bytes() -> None:
    assert _safe_name("../../etc/passwd.jpg", "image/jpeg", 1) == "passwd.jpg"
    assert _safe_name("..%2F..%2Fa%00b.JPG", "image/jpeg", 1) == "ab.jpg"
    assert _safe_name("C:\\x\\..\\a b.png", "image/png", 2) == "a b.png"
    assert _safe_name(None, "image/webp", 3) == "photo-3.webp"
    assert sniff(JPEG) == "image/jpeg" and sniff(PNG) == "image/png"
    assert sniff(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert sniff(b"\x00\x00\x00\x18ftypheic\x00\x00") == "image/heic"
    assert sniff(HTML) is None and sniff(b"%PDF-1.7") is None and sniff(b"") is None


class _FakeRequest:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


# ---------------------------------------------------------------- the resident's tickets


async def test_my_tickets_are_mine_only(api):  # type: ignore[no-untyped-def]
    alice = await sign_in(api, "13812345678")
    bob = await sign_in(api, "13987654321")
    a1 = (await report(api, alice, "a1"))["number"]
    b1 = (await report(api, bob, "b1"))["number"]
    # a call to 12345 from Alice's number is hers too
    call = await api.new_ticket(channel="phone", contact={"phone": "13812345678"})
    r = await api.client.get(f"{APP}/tickets", headers=alice)
    assert [t["number"] for t in (await r.json())["items"]] == [call["number"], a1]
    r = await api.client.get(f"{APP}/tickets?limit=1", headers=alice)
    page = await r.json()
    assert [t["number"] for t in page["items"]] == [call["number"]] and page["next_cursor"]
    r = await api.client.get(f"{APP}/tickets?limit=1&cursor={page['next_cursor']}", headers=alice)
    assert [t["number"] for t in (await r.json())["items"]] == [a1]
    # Bob's ticket does not exist for Alice
    r = await api.client.get(f"{APP}/tickets/{b1}", headers=alice)
    assert (r.status, (await r.json())["type"]) == (404, "/problems/not-found")
    r = await api.client.post(f"{APP}/tickets/{b1}/messages", json={"text": "hi"}, headers=alice)
    assert r.status == 404
    r = await api.client.post(f"{APP}/tickets/{b1}/rating", json={"rating": 3}, headers=alice)
    assert r.status == 404
    r = await api.client.get(f"{APP}/tickets/abc", headers=alice)
    assert r.status == 404


async def test_the_timeline_shows_no_staff_names_notes_or_internal_steps(api):  # type: ignore[no-untyped-def]
    me = await sign_in(api)
    number = (await report(api, me, "t"))["number"]
    await api.move(number, "dispatch", {"department": "urban-mgmt", "note": "内部备注：老问题"})
    await api.move(number, "return", {"reason": "不归我们管-内部"}, as_="urban")
    await api.move(number, "dispatch", {"department": "urban-mgmt"})
    await api.move(number, "supervise", {"note": "督办-内部"}, as_="supervisor")
    r = await api.post(f"/api/v1/tickets/{number}/contact", {"reason": "回电-内部"})
    assert r.status == 200, await r.text()
    await api.move(number, "sign", as_="urban")
    await api.move(number, "reply", {"reply": "路灯已修好"}, as_="urban")
    r = await api.client.get(f"{APP}/tickets/{number}", headers=me)
    assert r.status == 200
    body = await r.json()
    assert [(e["type"], e["status"]) for e in body["timeline"]] == [
        ("received", "new"),
        ("dispatched", "dispatched"),
        ("dispatched", "dispatched"),
        ("accepted", "accepted"),
        ("replied", "replied"),
    ]
    assert body["timeline"][1]["department"]  # the department's name is public
    assert body["timeline"][-1]["text"] == "路灯已修好"
    assert (body["reply"], body["can_rate"]) == ("路灯已修好", True)
    text = json.dumps(body, ensure_ascii=False)
    for secret in ("内部", "agent", 'urban"', "supervisor", "hash", "actor", "contact_viewed"):
        assert secret not in text, secret


async def test_rating_closes_a_replied_ticket_once(api):  # type: ignore[no-untyped-def]
    me = await sign_in(api)
    number = (await report(api, me, "r"))["number"]
    r = await api.client.post(f"{APP}/tickets/{number}/rating", json={"rating": 3}, headers=me)
    assert (r.status, (await r.json())["type"]) == (409, "/problems/illegal-transition")
    await api.move(number, "dispatch", {"department": "urban-mgmt"})
    await api.move(number, "sign", as_="urban")
    await api.move(number, "reply", {"reply": "已修复"}, as_="urban")
    r = await api.client.post(f"{APP}/tickets/{number}/rating", json={"rating": 4}, headers=me)
    assert r.status == 422
    r = await api.client.post(
        f"{APP}/tickets/{number}/rating", json={"rating": 3, "comment": "很快"}, headers=me
    )
    assert r.status == 200, await r.text()
    body = await r.json()
    assert (body["status"], body["rating"], body["can_rate"]) == (
        "closed",
        {"rating": 3, "satisfaction": "satisfied"},
        False,
    )
    assert body["timeline"][-1] == {
        "at": body["timeline"][-1]["at"],
        "status": "closed",
        "type": "closed",
        "satisfaction": "satisfied",
    }
    staff = await (await api.get(f"/api/v1/tickets/{number}")).json()
    assert staff["satisfaction"] == "satisfied"
    r = await api.client.post(f"{APP}/tickets/{number}/rating", json={"rating": 1}, headers=me)
    assert (r.status, (await r.json())["type"]) == (409, "/problems/conflict")


async def test_unsatisfied_sends_a_replied_ticket_back_and_a_closed_one_keeps_it(api):  # type: ignore[no-untyped-def]
    me = await sign_in(api)
    first = (await report(api, me, "u1"))["number"]
    second = (await report(api, me, "u2"))["number"]
    for n in (first, second):
        await api.move(n, "dispatch", {"department": "urban-mgmt"})
        await api.move(n, "sign", as_="urban")
        await api.move(n, "reply", {"reply": "已处理"}, as_="urban")
    r = await api.client.post(f"{APP}/tickets/{first}/rating", json={"rating": 1}, headers=me)
    assert (await r.json())["status"] == "reopened"
    # closed by the agent's follow-up call: the app rating goes on the trail
    await api.move(second, "follow-up", {"satisfaction": "satisfied"})
    r = await api.client.post(
        f"{APP}/tickets/{second}/rating", json={"rating": 2, "comment": "一般"}, headers=me
    )
    body = await r.json()
    assert (body["status"], body["timeline"][-1]["type"]) == ("closed", "rated")
    async with api.app[DEPS].db.read() as conn:
        data = (
            await conn.execute(
                sa.select(event_t.c.data).where(
                    event_t.c.ticket_number == second, event_t.c.action == "resident_rating"
                )
            )
        ).scalar_one()
    assert data == {
        "rating": 2,
        "satisfaction": "basically_satisfied",
        "channel": "app",
        "comment": "一般",
    }


async def test_a_follow_up_reaches_the_agents_conversation_and_the_trail(api):  # type: ignore[no-untyped-def]
    me = await sign_in(api)
    number = (await report(api, me, "f"))["number"]
    r = await api.client.post(
        f"{APP}/tickets/{number}/messages",
        json={"text": "灯还是不亮"},
        headers={**me, "Idempotency-Key": "m-1"},
    )
    assert r.status == 201, await r.text()
    first = await r.json()
    r = await api.client.post(
        f"{APP}/tickets/{number}/messages",
        json={"text": "灯还是不亮"},
        headers={**me, "Idempotency-Key": "m-1"},
    )
    assert (await r.json(), r.headers["Idempotent-Replayed"]) == (first, "true")
    convs = (await (await api.get("/api/v1/conversations?channel=app&waiting=true")).json())[
        "items"
    ]
    assert [(c["ticket_number"], c["waiting"]) for c in convs] == [(number, True)]
    conv = await (await api.get(f"/api/v1/conversations/{convs[0]['id']}")).json()
    assert [m["text"] for m in conv["messages"] if m["direction"] == "in"] == [TEXT, "灯还是不亮"]
    # the same person: the thread's contact is linked with the phone number
    history = await (await api.get(f"/api/v1/contacts/{conv['contact']['id']}/history")).json()
    assert "phone" in [c["channel"] for c in history["linked_contacts"]]
    body = await (await api.client.get(f"{APP}/tickets/{number}", headers=me)).json()
    assert body["timeline"][-1]["type"] == "you_wrote"
    assert body["timeline"][-1]["text"] == "灯还是不亮"


async def test_a_follow_up_after_close_opens_a_new_conversation_on_the_ticket(api):  # type: ignore[no-untyped-def]
    me = await sign_in(api)
    number = (await report(api, me, "c"))["number"]
    await api.move(number, "answer", {"answer": "这是物业的责任，请联系物业"})
    await asyncio.sleep(0)  # the notifier closes the ticket's conversations
    hub = api.app[HUB]
    await hub.notifier.drain()
    r = await api.client.post(
        f"{APP}/tickets/{number}/messages", json={"text": "物业不管怎么办"}, headers=me
    )
    assert r.status == 201, await r.text()
    convs = (await (await api.get("/api/v1/conversations?channel=app")).json())["items"]
    waiting = [c for c in convs if c["waiting"]]
    assert [(c["ticket_number"], c["status"]) for c in waiting] == [(number, "ticketed")]
    body = await (await api.client.get(f"{APP}/tickets/{number}", headers=me)).json()
    assert body["timeline"][-1] == {
        "at": body["timeline"][-1]["at"],
        "status": "answered",
        "type": "you_wrote",
        "text": "物业不管怎么办",
    }


async def test_an_emergency_report_is_urgent_and_answered_with_the_number(api):  # type: ignore[no-untyped-def]
    me = await sign_in(api)
    body = await report(api, me, "fire", description="楼道里着火了，烟很大", kind="request")
    assert body["emergency_lines"] == ["119"]
    staff = await (await api.get(f"/api/v1/tickets/{body['number']}")).json()
    assert (staff["urgency"], staff["priority"]) == ("emergency", 0)
    for _ in range(200):  # the emergency answer goes out through the feed
        r = await api.client.get(f"{APP}/notifications", headers=me)
        items = (await r.json())["items"]
        if items:
            break
        await asyncio.sleep(0.02)
    assert "119" in items[0]["text"]
