"""A WeChat conversation through the console, against the real channels code.

The resident writes through the real /wechat webhook (safe mode: the message
encrypted with wechatpy, as WeChat's servers send it); the agent's queue shows it
live; the agent reads it, inserts a knowledge-base answer with two keys, replies,
and the reply leaves as a customer-service message to a local fake WeChat API;
then the agent turns the conversation into a ticket.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import sqlalchemy as sa

from channels.models import Conversation
from hotline.appkeys import CONSOLE, DEPS
from tests.channels import wechat_rig as rig
from tests.conftest import Api, _seed, make_settings
from tests.console.browser_kit import login
from ticketing.handlers import ticket_t

conversation_t = Conversation.__table__  # type: ignore[attr-defined]
ANSWER = "路灯报修已受理，城管部门将在两个工作日内修复，请留意短信通知。"


@pytest.fixture
async def fake_wechat(aiohttp_server):  # type: ignore[no-untyped-def]
    f = rig.FakeWeChat()
    server = await aiohttp_server(f.app())
    f.base = str(server.make_url("")).rstrip("/")
    return f


@pytest.fixture
async def wechat_service(aiohttp_client, sqlite_url, tmp_path, fake_wechat):  # type: ignore[no-untyped-def]
    from hotline.app import create_app
    from hotline.bootstrap import build_deps

    settings = make_settings(
        tmp_path,
        sqlite_url,
        wechat_token=rig.TOKEN,
        wechat_aes_key=rig.AES_KEY,
        wechat_app_id=rig.APP_ID,
        wechat_app_secret="s3cret",
        wechat_api_base=fake_wechat.base,
    )
    deps = build_deps(settings)
    await deps.db.create_all()
    app = create_app(settings, deps=deps, migrate=False, watch_deadlines=False)
    api = Api(await aiohttp_client(app), app)
    await _seed(deps)
    api.base = str(api.client.make_url("")).rstrip("/")
    return api


async def post_wechat(api: Any, text: str, msg_id: str, sender: str = "oRESIDENT") -> None:
    q, body = rig.encrypted(rig.text_xml(text, sender=sender, msg_id=msg_id))
    r = await api.client.post("/wechat", params=q, data=body.encode())
    assert r.status == 200, await r.text()


async def eventually(cond: Any, limit_s: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + limit_s
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_agent_answers_a_wechat_message_from_the_knowledge_base_and_tickets_it(
    browser, wechat_service, fake_wechat, tmp_path
):
    api = wechat_service
    r = await api.post(
        "/api/v1/kb/articles",
        {"question": "路灯不亮怎么办？", "answer": ANSWER, "owner_department": "urban-mgmt"},
        as_="supervisor",
    )
    assert r.status == 201, await r.text()
    page = await login(browser, api, "agent")

    # the resident writes; the agent's queue shows it within a second
    start = time.monotonic()
    await post_wechat(api, "幸福路12号门前的路灯坏了三天了，晚上很黑", "880001")
    async with api.app[DEPS].db.read() as conn:
        conv_id = (await conn.execute(sa.select(conversation_t.c.id))).scalar_one()
    item = f'#queue li[data-key="conversation:{conv_id}"]'
    await page.wait_for_selector(item, timeout=1000)
    assert time.monotonic() - start < 1.0
    text = await page.inner_text(item)
    assert "幸福路12号门前的路灯坏了三天了" in text  # the resident's words as the title
    assert "微信" in text and "待回复" in text

    # the agent opens it and sees the conversation
    await page.click(item)
    await page.wait_for_selector("#conversation-messages li.in")
    assert "路灯坏了三天了" in await page.inner_text("#conversation-messages")
    assert "微信" in await page.inner_text("#conversation-status")
    # a second message from the same resident arrives while the conversation is open
    await post_wechat(api, "就在小区南门", "880002")
    await page.click(item)
    await page.wait_for_selector("#conversation-messages li.in >> nth=1")
    texts = await page.locator("#conversation-messages li.in .text").all_inner_texts()
    assert [m.strip() for m in texts] == [
        "幸福路12号门前的路灯坏了三天了，晚上很黑",
        "就在小区南门",
    ]

    # a canned answer from the knowledge base in two keys, then send
    await page.click("#kb-q")
    await page.keyboard.type("路灯")
    await page.wait_for_selector("#kb-results li")
    await page.click("#conversation-reply")
    await page.keyboard.press("Alt+1")
    assert await page.input_value("#conversation-reply") == ANSWER
    await page.screenshot(path=str(tmp_path / "conversation.png"), full_page=True)
    await page.click("#conversation-form button[type='submit']")
    await page.wait_for_selector("#conversation-messages li.out")
    # answered: the conversation leaves the queue, live
    await page.wait_for_selector(item, state="detached", timeout=2000)

    # WeChat receives it as a customer-service message to the resident
    async def delivered() -> bool:
        return {"touser": "oRESIDENT", "msgtype": "text", "text": {"content": ANSWER}} in (
            fake_wechat.sends()
        )

    await eventually(delivered, what="the customer-service message")

    # the agent turns the conversation into a ticket with the form below it
    await page.select_option("#f-kind", "complaint")
    await page.fill("#f-category-search", "路灯")
    assert await page.input_value("#f-category") == "urban.street-lights"
    await page.fill("#f-title", "幸福路路灯不亮")
    await page.click("#conv-ticket")
    await page.wait_for_selector("#conversation-status:has-text('已建工单')")
    async with api.app[DEPS].db.read() as conn:
        conv = (
            await conn.execute(sa.select(conversation_t).where(conversation_t.c.id == conv_id))
        ).one()
        ticket = (
            await conn.execute(sa.select(ticket_t).where(ticket_t.c.number == conv.ticket_number))
        ).one()
    assert conv.status == "ticketed"
    assert (ticket.title, ticket.kind, ticket.channel, ticket.category_code) == (
        "幸福路路灯不亮",
        "complaint",
        "wechat",
        "urban.street-lights",
    )
    assert "路灯坏了三天了" in ticket.description  # the resident's words, by default
    assert ticket.number in await page.inner_text("#conversation-status")
    # the new ticket is in the agents' queue (to dispatch), live
    await page.wait_for_selector(f'#queue li[data-key="ticket:{ticket.number}"]', timeout=2000)
    await page.screenshot(path=str(tmp_path / "conversation-ticketed.png"), full_page=True)
    assert page.errors == []


async def test_emergency_words_pin_the_conversation_and_alert_the_supervisor_wall(
    browser, wechat_service, tmp_path
):
    api = wechat_service
    agent = await login(browser, api, "agent")
    sup = await login(browser, api, "supervisor")
    await sup.click("#tabs button[data-view='wall']")
    await sup.wait_for_selector("[data-testid='tile-volume_today'] .v")
    await post_wechat(api, "楼下有人打架", "880100", sender="oOTHER")
    await post_wechat(api, "厨房着火了！快来人", "880101")
    async with api.app[DEPS].db.read() as conn:
        rows = (await conn.execute(sa.select(conversation_t))).all()
    fire = next(r.id for r in rows if r.emergency)
    # pinned on top of the agent's queue, with the lines the resident was told to call
    await agent.wait_for_selector(f'#queue li.emergency[data-key="conversation:{fire}"]')
    keys = await agent.eval_on_selector_all("#queue li", "els => els.map(e => e.dataset.key)")
    assert keys[0] == f"conversation:{fire}"
    assert "119" in await agent.inner_text(f'#queue li[data-key="conversation:{fire}"]')
    # the supervisor gets a banner at once, and the wall lists the alert
    await sup.wait_for_selector("#alert-banner:not([hidden])", timeout=2000)
    assert "厨房着火了" in await sup.inner_text("#alert-banner")
    await sup.wait_for_selector(f'#wall-alerts li[data-key="conversation:{fire}"]', timeout=3000)
    assert "119" in await sup.inner_text("#wall-alerts")
    feed = api.app[CONSOLE].feed
    assert feed.mirror[f"conversation:{fire}"]["alert"]["lines"] == ["119"]
    await sup.screenshot(path=str(tmp_path / "wall-alert.png"), full_page=True)
    assert agent.errors == [] and sup.errors == []
