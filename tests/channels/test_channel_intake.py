"""The common intake end to end, on SQLite and PostgreSQL: store once, conversations,
the queue, emergencies, the bot, agent replies through the outbox, notifications."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import sqlalchemy as sa

from channels.events import EmergencyAlert
from channels.models import contact_t, conversation_t, message_t, outbox_t
from tests.channels.helpers import RecordingSender, event, hub_of, image, location, manual, text
from ticketing.models import TicketEvent, WorkItem

work_t = WorkItem.__table__
tev_t = TicketEvent.__table__


async def _count(api, table, *where) -> int:
    async with hub_of(api).deps.db.read() as conn:
        q = sa.select(sa.func.count()).select_from(table)
        if where:
            q = q.where(*where)
        return (await conn.execute(q)).scalar_one()


async def test_a_message_is_stored_once_and_waits_for_an_agent(api) -> None:
    hub = hub_of(api)
    first = await hub.receive(text("小区门口的路灯坏了", ext="MSG-1"))
    again = await hub.receive(text("小区门口的路灯坏了", ext="MSG-1"))
    assert first.duplicate is False and again.duplicate is True
    assert again.message_id == first.message_id
    assert again.conversation_id == first.conversation_id
    assert await _count(api, message_t) == 1
    r = await api.get("/api/v1/queue")
    items = [i for i in (await r.json())["items"] if i["kind"] == "conversation"]
    assert [(i["ref"], i["action"], i["priority"]) for i in items] == [
        (str(first.conversation_id), "answer", 2)
    ]
    assert items[0]["due_at"] is not None


async def test_concurrent_retries_store_one_message(api) -> None:
    hub = hub_of(api)
    receipts = await asyncio.gather(
        *(hub.receive(text("重复推送", sender="o-dup", ext="SAME")) for _ in range(20))
    )
    assert len({r.message_id for r in receipts}) == 1
    assert sum(not r.duplicate for r in receipts) == 1
    assert await _count(api, message_t, message_t.c.external_id == "SAME") == 1
    assert await _count(api, contact_t, contact_t.c.external_id == "o-dup") == 1


async def test_messages_from_one_resident_join_one_open_conversation(api) -> None:
    hub = hub_of(api)
    a = await hub.receive(text("第一句", sender="o-join"))
    b = await hub.receive(text("第二句", sender="o-join"))
    c = await hub.receive(text("别人", sender="o-other"))
    assert a.conversation_id == b.conversation_id != c.conversation_id
    r = await api.get(f"/api/v1/conversations/{a.conversation_id}")
    body = await r.json()
    assert [m["text"] for m in body["messages"]] == ["第一句", "第二句"]
    assert body["waiting"] is True and body["status"] == "open"
    assert body["contact"]["channel"] == "wechat"


async def test_emergency_words_answer_at_once_and_top_the_queue(api) -> None:
    hub = hub_of(api)
    alerts: list[EmergencyAlert] = []

    async def seen(ev) -> None:
        if isinstance(ev, EmergencyAlert):
            alerts.append(ev)

    hub.deps.bus.subscribe(seen)
    await hub.receive(text("咨询一下公积金", sender="o-calm"))
    r = await hub.receive(text("楼下着火了，有人受伤", sender="o-fire"), inline=True)
    assert r.emergency_lines == ("119", "120")
    assert "119" in r.replies[0] and "120" in r.replies[0]
    await asyncio.sleep(0.05)  # the alert goes out after the commit
    assert [(a.conversation_id, a.lines) for a in alerts] == [(r.conversation_id, "119,120")]
    q = await (await api.get("/api/v1/queue")).json()
    assert q["items"][0]["ref"] == str(r.conversation_id)
    assert q["items"][0]["priority"] == -1
    conv = await (await api.get(f"/api/v1/conversations/{r.conversation_id}")).json()
    assert conv["emergency"] is True
    assert conv["messages"][1]["direction"] == "out"
    assert conv["messages"][1]["delivery"]["state"] == "inline"
    listed = await (await api.get("/api/v1/conversations?waiting=true")).json()
    assert listed["items"][0]["id"] == r.conversation_id


async def test_harmless_words_do_not_raise_an_emergency(api) -> None:
    hub = hub_of(api)
    r = await hub.receive(text("火车站附近的火锅店油烟扰民", sender="o-hotpot"))
    assert r.emergency_lines == () and r.replies == ()


async def test_guided_report_creates_a_ticket_and_follow_ups_join_its_trail(api) -> None:
    hub = hub_of(api)
    s = "o-report"
    assert "1 咨询" in (await hub.receive(text("我要反映", sender=s))).replies[0]
    assert "描述" in (await hub.receive(text("3", sender=s))).replies[0]
    assert "位置" in (await hub.receive(text("幸福小区南门路灯不亮一个月了", sender=s))).replies[0]
    assert "照片" in (await hub.receive(location(39.9, 116.4, "幸福小区南门", sender=s))).replies[0]
    summary = (await hub.receive(image("MEDIA-1", sender=s))).replies[0]
    assert "投诉" in summary and "幸福小区南门" in summary
    done = await hub.receive(text("1", sender=s), inline=True)
    number = done.ticket_number
    assert number and number in done.replies[-1]
    ticket = await (await api.get(f"/api/v1/tickets/{number}")).json()
    assert ticket["kind"] == "complaint"
    assert ticket["channel"] == "wechat"
    assert ticket["contact"]["channel_ids"] == {"wechat": s}
    assert ticket["location"]["lat"] == 39.9
    # nothing waited for an agent during the flow
    conv = await (await api.get(f"/api/v1/conversations/{done.conversation_id}")).json()
    assert conv["status"] == "ticketed" and conv["waiting"] is False
    # a follow-up goes onto the ticket's trail
    await hub.receive(text("今晚还是不亮", sender=s))
    trail = await (await api.get(f"/api/v1/tickets/{number}/events")).json()
    actions = [e["action"] for e in trail["items"]]
    assert actions == ["create", "conversation_linked", "resident_message"]
    assert trail["items"][2]["data"]["text"] == "今晚还是不亮"
    assert trail["items"][1]["data"]["media"][0]["ref"] == "MEDIA-1"
    # and the resident can look it up by number, a stranger cannot
    mine = await hub.receive(text(f"查询 {number}", sender=s))
    assert "已受理" in mine.replies[0]
    other = await hub.receive(text(f"查询 {number}", sender="o-stranger"))
    assert "没有找到" in other.replies[0]
    listing = await hub.receive(text("我的工单", sender=s))
    assert number in listing.replies[0]


async def test_agent_reply_goes_through_the_outbox(api) -> None:
    hub = await manual(api)
    sender = RecordingSender()
    hub.register_sender(sender)
    r = await hub.receive(text("请问办居住证要什么材料", sender="o-ask"))
    resp = await api.post(
        f"/api/v1/conversations/{r.conversation_id}/messages", {"text": "身份证和租房合同"}
    )
    assert resp.status == 201, await resp.text()
    msg = await resp.json()
    assert msg["delivery"]["state"] == "pending"
    await hub.outbox.run_once()
    assert sender.sent == [("o-ask", {"type": "text", "text": "身份证和租房合同"})]
    conv = await (await api.get(f"/api/v1/conversations/{r.conversation_id}")).json()
    assert conv["waiting"] is False and conv["assigned_to"] == "agent"
    assert conv["messages"][-1]["delivery"]["state"] == "sent"
    q = await (await api.get("/api/v1/queue")).json()
    assert all(i["kind"] != "conversation" for i in q["items"])


async def test_outbox_retries_with_backoff_then_gives_up(api) -> None:
    hub = await manual(api)
    sender = RecordingSender()
    sender.fail_next = 1
    hub.register_sender(sender)
    r = await hub.receive(text("你好", sender="o-retry"))
    await api.post(f"/api/v1/conversations/{r.conversation_id}/messages", {"text": "您好"})
    await hub.outbox.run_once()
    async with hub.deps.db.read() as conn:
        row = (await conn.execute(sa.select(outbox_t))).one()
    assert (row.state, row.attempts, row.last_error) == ("pending", 1, "boom")
    assert row.next_attempt_at > row.created_at
    assert await hub.outbox.run_once() == 0  # not due yet
    async with hub.deps.db.write() as conn:
        await conn.execute(sa.update(outbox_t).values(next_attempt_at=row.created_at))
    await hub.outbox.run_once()
    assert sender.sent == [("o-retry", {"type": "text", "text": "您好"})]
    # a permanent failure is final and visible on the message
    sender.fail_next, sender.permanent = 1, True
    await api.post(f"/api/v1/conversations/{r.conversation_id}/messages", {"text": "再见"})
    await hub.outbox.run_once()
    conv = await (await api.get(f"/api/v1/conversations/{r.conversation_id}")).json()
    last = conv["messages"][-1]["delivery"]
    assert (last["state"], last["last_error"]) == ("failed", "boom")


async def test_a_flood_wait_delays_a_reply_but_never_uses_up_its_tries(api) -> None:
    """Telegram's 429 says when to come back: more flood waits than MAX_ATTEMPTS (a
    busy evening) must still end in the reply being sent, each waited as asked."""
    hub = await manual(api)
    sender = RecordingSender()
    hub.register_sender(sender)
    sender.fail_next, sender.retry_after = hub.outbox.max_attempts + 2, 300.0
    r = await hub.receive(text("你好", sender="o-flood"))
    await api.post(f"/api/v1/conversations/{r.conversation_id}/messages", {"text": "您好"})
    for _ in range(hub.outbox.max_attempts + 2):
        await hub.outbox.run_once()
        async with hub.deps.db.read() as conn:
            row = (await conn.execute(sa.select(outbox_t))).one()
        assert (row.state, row.attempts) == ("pending", 0)
        waited = row.next_attempt_at - hub.outbox.clock()
        assert timedelta(seconds=290) < waited <= timedelta(seconds=300)  # as asked
        async with hub.deps.db.write() as conn:
            await conn.execute(sa.update(outbox_t).values(next_attempt_at=row.created_at))
    await hub.outbox.run_once()
    assert sender.sent == [("o-flood", {"type": "text", "text": "您好"})]


async def test_conversation_to_ticket_and_status_notifications(api) -> None:
    hub = await manual(api)
    sender = RecordingSender()
    hub.register_sender(sender)
    r = await hub.receive(text("幸福路井盖丢了，很危险", sender="o-notify"))
    resp = await api.post(
        f"/api/v1/conversations/{r.conversation_id}/ticket",
        {"kind": "report", "category": "urban.street-lights"},
    )
    assert resp.status == 201, await resp.text()
    ticket = await resp.json()
    assert ticket["description"] == "幸福路井盖丢了，很危险"
    again = await api.post(f"/api/v1/conversations/{r.conversation_id}/ticket", {"kind": "report"})
    assert again.status == 409
    await api.move(ticket["number"], "dispatch", {"department": "urban-mgmt"})
    await hub.notifier.drain()
    await hub.outbox.run_once()
    kinds = [(p["type"], p.get("status")) for _, p in sender.sent]
    assert kinds == [("text", None), ("ticket_update", "dispatched")]
    assert ticket["number"] in sender.sent[0][1]["text"]
    # the same event seen twice (another instance's echo) is notified once
    from channels.notify import notify_transition
    from ticketing.events import TicketTransitioned

    ev = TicketTransitioned(ticket["number"], "dispatch", "new", "dispatched", "agent")
    assert await notify_transition(hub.deps, ev) == 0


async def test_attach_to_existing_ticket(api) -> None:
    hub = hub_of(api)
    t = await api.new_ticket()
    r = await hub.receive(text(f"我上周反映的{t['number']}怎么样了", sender="o-attach"))
    resp = await api.post(
        f"/api/v1/conversations/{r.conversation_id}/ticket", {"number": t["number"]}
    )
    assert resp.status == 200, await resp.text()
    bad = await api.post(
        f"/api/v1/conversations/{r.conversation_id}/ticket", {"number": "2099010100001"}
    )
    assert bad.status == 409
    conv = await (await api.get(f"/api/v1/conversations/{r.conversation_id}")).json()
    assert conv["ticket_number"] == t["number"] and conv["status"] == "ticketed"


async def test_linked_contacts_share_one_history(api) -> None:
    hub = hub_of(api)
    w = await hub.receive(text("微信留言", sender="o-link"))
    t = await hub.receive(text("telegram message", sender="4242", channel="telegram"))
    wc = await (await api.get(f"/api/v1/conversations/{w.conversation_id}")).json()
    tc = await (await api.get(f"/api/v1/conversations/{t.conversation_id}")).json()
    resp = await api.post(
        "/api/v1/contacts/link",
        {"contact_ids": [wc["contact_id"], tc["contact_id"]], "phone": "138 1234 5678"},
    )
    assert resp.status == 200, await resp.text()
    person = await resp.json()
    assert sorted(c["channel"] for c in person["contacts"]) == ["phone", "telegram", "wechat"]
    phone = next(c for c in person["contacts"] if c["channel"] == "phone")
    assert phone["address"] == "138****5678"
    hist = await (await api.get(f"/api/v1/contacts/{wc['contact_id']}/history")).json()
    assert {c["id"] for c in hist["conversations"]} == {w.conversation_id, t.conversation_id}
    assert len(hist["linked_contacts"]) == 2
    # the phone number is stored encrypted, never in the clear
    async with hub.deps.db.read() as conn:
        rows = (
            await conn.execute(sa.select(contact_t.c.external_id, contact_t.c.address_enc))
        ).all()
    assert all("13812345678" not in (r.external_id + (r.address_enc or "")) for r in rows)
    missing = await api.post("/api/v1/contacts/link", {"contact_ids": [1, 999999]})
    assert missing.status == 404


async def test_staff_api_validates_and_requires_floor_roles(api) -> None:
    r = await api.get("/api/v1/conversations?waiting=maybe")
    assert r.status == 422
    r = await api.get("/api/v1/conversations/abc")
    assert r.status == 404
    r = await api.get("/api/v1/conversations/12345")
    assert r.status == 404
    r = await api.get("/api/v1/conversations", as_="urban")
    assert r.status == 403
    api.client.session.cookie_jar.clear()  # signed in by cookie so far
    r = await api.get("/api/v1/conversations", as_=None)
    assert r.status == 401
    r = await api.post(
        "/api/v1/conversations/1/ticket", {"kind": "report", "number": "2026010100001"}
    )
    assert r.status == 422


async def test_subscribe_welcome_and_unsubscribe(api) -> None:
    hub = hub_of(api)
    r = await hub.receive(event("subscribe", sender="o-sub"))
    assert "12345" in r.replies[0]
    await hub.receive(event("unsubscribe", sender="o-sub"))
    async with hub.deps.db.read() as conn:
        row = (
            await conn.execute(sa.select(contact_t).where(contact_t.c.external_id == "o-sub"))
        ).one()
        conv = (await conn.execute(sa.select(conversation_t))).first()
    assert row.subscribed is False
    assert conv.waiting is False


async def test_queue_item_is_announced_only_when_it_changes(api) -> None:
    """Consoles re-read a queue item on WorkItemChanged: a resident writing again to a
    conversation already waiting leaves the item as it was, an emergency moves it up."""
    from channels.events import ConversationUpdated
    from ticketing.events import WorkItemChanged

    hub = hub_of(api)
    seen: list[object] = []

    async def record(ev) -> None:
        if isinstance(ev, WorkItemChanged | ConversationUpdated):
            seen.append(ev)

    hub.deps.bus.subscribe(record)

    async def send(body: str) -> tuple[int, int]:
        seen.clear()
        r = await hub.receive(text(body, sender="o-items"))
        await asyncio.sleep(0.05)  # the events go out after the commit
        items = [e for e in seen if isinstance(e, WorkItemChanged)]
        updates = [e for e in seen if isinstance(e, ConversationUpdated)]
        assert all(e.ref == str(r.conversation_id) for e in items)
        return len(items), len(updates)

    assert await send("第一句") == (1, 1)  # now waiting: a new item
    assert await send("第二句") == (0, 1)  # still waiting, same item
    assert await send("有人晕倒了") == (1, 1)  # emergency: the item moves up
    assert await send("还在等") == (0, 1)
    async with hub.deps.db.read() as conn:
        rows = (
            await conn.execute(sa.select(work_t.c.priority).where(work_t.c.kind == "conversation"))
        ).all()
    assert [r.priority for r in rows] == [-1]
