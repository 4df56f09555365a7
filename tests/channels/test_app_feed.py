"""The app's notification feed: agent replies and ticket updates, by poll and SSE,
kept once per outbox row and across restarts; and the card routes behind the
app's sign-in."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from channels import HUB
from channels.app import APP_CHANNEL
from hotline.app import create_app
from hotline.appkeys import SETTINGS
from tests.channels.test_app_reports import report
from tests.channels.test_app_signin import APP, sign_in


async def feed(api: Any, me: dict[str, str], after: int = 0, want: int = 1) -> list[dict]:
    """The notifications after `after`, waiting (briefly) for `want` of them: delivery
    runs in the outbox's own task."""
    items: list[dict] = []
    for _ in range(200):
        r = await api.client.get(f"{APP}/notifications?after={after}", headers=me)
        assert r.status == 200
        items = (await r.json())["items"]
        if len(items) >= want:
            return items
        await asyncio.sleep(0.02)
    return items


async def agent_reply(api: Any, number: str, text: str) -> None:
    convs = (await (await api.get("/api/v1/conversations?channel=app")).json())["items"]
    (conv,) = [c for c in convs if c["ticket_number"] == number and c["status"] != "closed"]
    r = await api.post(f"/api/v1/conversations/{conv['id']}/messages", {"text": text})
    assert r.status in (200, 201), await r.text()


async def test_agent_replies_and_status_updates_reach_the_feed(api):  # type: ignore[no-untyped-def]
    me = await sign_in(api)
    number = (await report(api, me, "n1"))["number"]
    await agent_reply(api, number, "您好，已收到，马上安排")
    items = await feed(api, me)
    assert [(i["id"], i["kind"], i["text"], i["ticket"]) for i in items] == [
        (1, "message", "您好，已收到，马上安排", number)
    ]
    assert "agent" not in json.dumps(items)  # no staff names
    await api.move(number, "dispatch", {"department": "urban-mgmt"})
    items = await feed(api, me, after=1)
    assert [(i["id"], i["kind"], i["ticket"], i["status"]) for i in items] == [
        (2, "ticket_update", number, "dispatched")
    ]
    assert items[0]["status_text"] == "已派发承办单位" and number in items[0]["text"]
    # another resident sees none of it
    other = await sign_in(api, "13987654321")
    assert await feed(api, other, want=0) == []
    r = await api.client.get(f"{APP}/notifications?after=x", headers=me)
    assert r.status == 422


async def test_a_redelivered_outbox_row_is_kept_once(api):  # type: ignore[no-untyped-def]
    me = await sign_in(api)
    channel = api.app[APP_CHANNEL]
    who = await channel.resolve(_Req(me))
    recipient = f"a{who.account_id}"
    payload = {"type": "text", "text": "hello"}
    assert await channel.feed.store(recipient, payload, outbox_id=9001) == 1
    assert await channel.feed.store(recipient, payload, outbox_id=9001) is None
    assert await channel.feed.store(recipient, payload, outbox_id=9002) == 2
    assert [i["id"] for i in await feed(api, me, want=2)] == [1, 2]


async def test_the_stream_sends_new_entries_and_resumes_after_last_event_id(api):  # type: ignore[no-untyped-def]
    me = await sign_in(api)
    number = (await report(api, me, "s1"))["number"]
    channel = api.app[APP_CHANNEL]
    channel.feed.heartbeat_s = 0.2
    r = await api.client.get(f"{APP}/notifications/stream", headers=me)
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert await r.content.readline() == b"retry: 3000\n"
    await agent_reply(api, number, "第一条回复")
    first = await _next_event(r)
    assert (first["id"], first["event"], first["data"]["text"]) == (
        "1",
        "notification",
        "第一条回复",
    )
    # a heartbeat comes while nothing happens
    assert await _next_comment(r) == ": heartbeat"
    await agent_reply(api, number, "第二条回复")
    assert (await _next_event(r))["data"]["text"] == "第二条回复"
    r.close()
    # the app reconnects with the last id it saw: only what came after
    await agent_reply(api, number, "第三条回复")
    await feed(api, me, want=3)
    r = await api.client.get(f"{APP}/notifications/stream", headers={**me, "Last-Event-ID": "1"})
    await r.content.readline()
    got = [(await _next_event(r))["data"]["text"] for _ in range(2)]
    assert got == ["第二条回复", "第三条回复"]
    r.close()


async def test_a_signed_out_stream_ends(sqlite_api):  # type: ignore[no-untyped-def]
    api = sqlite_api
    me = await sign_in(api)
    api.app[APP_CHANNEL].feed.heartbeat_s = 0.05
    r = await api.client.get(f"{APP}/notifications/stream", headers=me)
    await r.content.readline()
    assert (await api.client.post(f"{APP}/auth/logout", headers=me)).status == 204
    rest = await asyncio.wait_for(r.content.read(), 5)
    assert rest in (b"", b"\n") or rest.strip(b"\n").startswith(b": heartbeat")
    r = await api.client.get(f"{APP}/notifications/stream", headers=me)
    assert r.status == 401


async def test_notifications_and_tokens_survive_a_restart(api, aiohttp_client):  # type: ignore[no-untyped-def]
    me = await sign_in(api)
    number = (await report(api, me, "x1"))["number"]
    await agent_reply(api, number, "重启前的回复")
    await api.move(number, "dispatch", {"department": "urban-mgmt"})
    before = await feed(api, me, want=2)
    await api.client.close()  # the service stops

    again = await aiohttp_client(
        create_app(api.app[SETTINGS], migrate=False, watch_deadlines=False)
    )
    r = await again.get(f"{APP}/notifications", headers=me)
    assert r.status == 200
    assert (await r.json())["items"] == before


async def test_an_undeliverable_recipient_fails_for_good(sqlite_api):  # type: ignore[no-untyped-def]
    from channels import DeliveryError
    from channels.app import AppSender

    sender = AppSender(sqlite_api.app[APP_CHANNEL].feed)
    for recipient in ("openid-x", "a999999"):
        try:
            await sender.send(recipient, {"type": "text", "text": "hi"})
        except DeliveryError as exc:
            assert exc.permanent
        else:  # pragma: no cover
            raise AssertionError(recipient)
    assert isinstance(sqlite_api.app[HUB].senders["app"], AppSender)  # registered on the hub


class _Req:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


async def _next_event(r: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    while True:
        line = (await asyncio.wait_for(r.content.readline(), 5)).decode().rstrip("\n")
        if line.startswith(":"):
            continue
        if not line:
            if fields:
                fields["data"] = json.loads(fields["data"])
                return fields
            continue
        k, _, v = line.partition(": ")
        fields[k] = v


async def _next_comment(r: Any) -> str:
    while True:
        line = (await asyncio.wait_for(r.content.readline(), 5)).decode().rstrip("\n")
        if line.startswith(":"):
            return line


async def test_the_card_routes_serve_the_resident_with_the_signed_in_phone(api):  # type: ignore[no-untyped-def]
    from tests.citizen_card.test_partner_api import PIN, an_id_number

    body = {"name": "张三丰", "id_number": an_id_number(7), "phone": "13812345678"}
    r = await api.post("/api/v1/residents", body)
    assert r.status == 201, await r.text()
    resident = await r.json()
    r = await api.post(f"/api/v1/residents/{resident['id']}/cards", {"pin": PIN})
    card = await r.json()
    me = await sign_in(api)  # 138 1234 5678
    r = await api.client.get(f"{APP}/cards", headers=me)
    assert r.status == 403  # the phone alone does not reach the card (hotline.card_binding)
    bind = {"card_no": card["card_no"], "id_last6": an_id_number(7)[-6:], "pin": PIN}
    r = await api.client.post(f"{APP}/cards/bind", json=bind, headers=me)
    assert r.status == 201, await r.text()
    r = await api.client.get(f"{APP}/cards", headers=me)
    assert r.status == 200, await r.text()
    assert [c["card_no"] for c in (await r.json())["items"]] == [card["card_no"]]
    r = await api.client.get(f"{APP}/cards/{card['card_no']}/token?purpose=id", headers=me)
    assert (r.status, r.headers["Cache-Control"]) == (200, "no-store")
    # another phone has no card here; no token at all is the app's 401
    other = await sign_in(api, "13987654321")
    r = await api.client.get(f"{APP}/cards", headers=other)
    assert (r.status, (await r.json())["type"]) == (403, "/problems/forbidden")
    r = await api.client.post(f"{APP}/cards/bind", json=bind, headers=other)
    assert (r.status, (await r.json())["reason"]) == (403, "refused")  # not their phone
    r = await api.client.get(f"{APP}/cards/{card['card_no']}/token", headers=other)
    assert r.status == 403
    assert (await api.client.get(f"{APP}/wallet")).status == 401
