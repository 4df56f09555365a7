"""/telegram/webhook end to end: real Bot API update shapes posted to the service, the
bot's answers captured by a local fake Bot API (python-telegram-bot talks to it)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient, TestServer

from channels import HUB, bot
from channels.models import message_t
from channels.telegram import TELEGRAM
from tests.channels import telegram_fake as tg
from tests.conftest import Api, _seed, make_settings

PATH = "/telegram/webhook"
UID = tg.USER_ID


async def _service(tmp_path, db_url: str, api_base: str, **overrides: Any):  # type: ignore[no-untyped-def]
    from hotline.app import create_app
    from hotline.bootstrap import build_deps

    settings = make_settings(
        tmp_path,
        db_url,
        telegram_token=tg.TOKEN,
        telegram_secret=tg.SECRET,
        telegram_api_base=api_base,
        **overrides,
    )
    deps = build_deps(settings)
    await deps.db.create_all()
    return create_app(settings, deps=deps, migrate=False, watch_deadlines=False)


@pytest.fixture
async def fake(aiohttp_server):  # type: ignore[no-untyped-def]
    f = tg.FakeBotApi()
    server = await aiohttp_server(f.app())
    f.base = str(server.make_url("")).rstrip("/")
    return f


@pytest.fixture
async def svc(aiohttp_client, db_url, tmp_path, fake):  # type: ignore[no-untyped-def]
    """The service with the bot on SQLite and PostgreSQL."""
    app = await _service(tmp_path, db_url, fake.base)
    client = await aiohttp_client(app)
    from hotline.appkeys import DEPS

    await _seed(app[DEPS])
    return Api(client, app)


@pytest.fixture
async def svc1(aiohttp_client, sqlite_url, tmp_path, fake):  # type: ignore[no-untyped-def]
    """The same on SQLite only, for what is about HTTP rather than storage."""
    app = await _service(tmp_path, sqlite_url, fake.base)
    client = await aiohttp_client(app)
    from hotline.appkeys import DEPS

    await _seed(app[DEPS])
    return Api(client, app)


async def _post(api: Api, update: Any, secret: str | None = tg.SECRET, raw: bytes | None = None):  # type: ignore[no-untyped-def]
    headers = tg.headers(secret) if secret is not None else {"Content-Type": "application/json"}
    body = raw if raw is not None else json.dumps(update).encode()
    return await api.client.post(PATH, data=body, headers=headers)


async def _ok(api: Api, update: dict[str, Any]) -> None:
    r = await _post(api, update)
    assert r.status == 200, await r.text()


async def _stored(api: Api) -> list[Any]:
    async with api.app[HUB].deps.db.read() as conn:
        q = sa.select(message_t).where(message_t.c.direction == "in").order_by(message_t.c.id)
        return list(await conn.execute(q))


async def until(
    check: Callable[[], Any] | Callable[[], Awaitable[Any]], within: float = 5.0
) -> Any:
    """Poll until `check()` is truthy (the outbox delivers in the background)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def _sends(fake: tg.FakeBotApi, n: int) -> list[dict[str, Any]]:
    await until(lambda: len(fake.called("sendMessage")) >= n)
    await asyncio.sleep(0.05)  # nothing more should come
    return fake.called("sendMessage")


async def _conversation(api: Api) -> dict[str, Any]:
    items = (await (await api.get("/api/v1/conversations?channel=telegram")).json())["items"]
    assert len(items) == 1
    return await (await api.get(f"/api/v1/conversations/{items[0]['id']}")).json()


async def _step(api: Api, fake: tg.FakeBotApi, update: dict[str, Any]) -> str:
    """Post an update as the resident and wait for the bot's answer (a person reads the
    prompt before answering it); returns the answer's text."""
    before = len(fake.called("sendMessage"))
    await _ok(api, update)
    await until(lambda: len(fake.called("sendMessage")) > before)
    return str(fake.called("sendMessage")[before]["text"])


async def _report(api: Api, fake: tg.FakeBotApi, uid: int = UID) -> str:
    """The guided report as a resident taps it through; returns the ticket number."""
    await _step(api, fake, tg.text("/new", uid=uid))
    await _step(api, fake, tg.callback("k:complaint", uid=uid))
    await _step(api, fake, tg.text("幸福小区南门的路灯坏了三天了", uid=uid))
    await _step(api, fake, tg.location(39.9042, 116.4074, uid=uid))
    await _step(api, fake, tg.photo(uid=uid))
    done = await _step(api, fake, tg.callback("c:yes", uid=uid))
    number = bot.NUMBER_RE.search(done)
    assert number, done
    return number.group(1)


# ---------------------------------------------------------------------- the door


async def test_wrong_or_missing_secret_is_refused_and_nothing_stored(svc1, fake) -> None:
    update = tg.text("路灯不亮")
    assert (await _post(svc1, update, secret="wrong-secret")).status == 403
    assert (await _post(svc1, update, secret=None)).status == 403
    assert (await _post(svc1, update, secret=tg.SECRET + "x")).status == 403
    assert await _stored(svc1) == []
    await asyncio.sleep(0.1)
    assert fake.called("sendMessage") == []


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"{not json", 400),
        (b"\xff\xfe", 400),
        (b"[1, 2]", 400),
        (b'{"message": {}}', 400),
        (b'{"update_id": "12", "message": {}}', 400),
        (b'{"update_id": true}', 400),
        (b'{"update_id": -5}', 400),
        (b"[" * 200_000, 400),
        (b"x" * (300 * 1024), 413),
        # an update_id, but a shape python-telegram-bot cannot read: acknowledged (a 4xx
        # has Telegram send it again and again, unchanged)
        (b'{"update_id": 7, "message": "not an object"}', 200),
        (b'{"update_id": 8, "message": {"message_id": 1}}', 200),
        (
            b'{"update_id": 9, "message": ' + b'{"reply_to_message": ' * 400 + b"{}" + b"}" * 401,
            200,
        ),
    ],
)
async def test_bad_bodies_never_get_a_5xx(svc1, raw: bytes, status: int) -> None:
    r = await _post(svc1, None, raw=raw)
    assert r.status == status, await r.text()
    assert await _stored(svc1) == []


async def test_an_update_ptb_cannot_read_is_acknowledged_and_kept_for_an_agent(svc1) -> None:
    update = tg.text("井盖丢了，很危险", message_id=93)
    update["message"]["date"] = "2026-01-01T08:00"  # not the unix time PTB expects
    for _ in range(2):  # Telegram's redelivery is stored once
        r = await _post(svc1, update)
        assert r.status == 200, await r.text()
    (stored,) = await _stored(svc1)
    assert stored.data["unreadable"] is True
    assert stored.data["raw"]["message"]["text"] == "井盖丢了，很危险"
    assert (await _conversation(svc1))["waiting"] is True


async def test_the_same_update_delivered_twice_at_once_is_stored_once(svc) -> None:
    update = tg.text("同时到达两次的消息")
    a, b = await asyncio.gather(_post(svc, update), _post(svc, update))
    assert (a.status, b.status) == (200, 200)
    assert [m.text for m in await _stored(svc)] == ["同时到达两次的消息"]


async def test_a_body_arriving_in_pieces_is_read_whole(svc1) -> None:
    raw = json.dumps(tg.text("分几段到达的一条消息")).encode()

    async def pieces(data: bytes, size: int):  # type: ignore[no-untyped-def]
        for i in range(0, len(data), size):
            yield data[i : i + size]
            await asyncio.sleep(0.005)

    r = await svc1.client.post(PATH, data=pieces(raw, 40), headers=tg.headers())
    assert r.status == 200
    assert [m.text for m in await _stored(svc1)] == ["分几段到达的一条消息"]
    big = b'{"update_id": 1, "message": {"text": "' + b"x" * 300_000 + b'"}}'
    r = await svc1.client.post(PATH, data=pieces(big, 65536), headers=tg.headers())
    assert r.status == 413  # no Content-Length to go by: counted while reading


async def test_an_update_that_cannot_be_stored_gets_503_so_telegram_retries(svc1) -> None:
    hub = svc1.app[HUB]
    await hub.writer.stop()  # the store is out of reach
    update = tg.text("存不下的消息")
    r = await _post(svc1, update)
    assert (r.status, r.headers.get("Retry-After")) == (503, "5")
    await hub.writer.start()
    await _ok(svc1, update)  # Telegram's retry
    assert [m.text for m in await _stored(svc1)] == ["存不下的消息"]


async def test_updates_not_for_the_hotline_are_acknowledged_and_ignored(svc1, fake) -> None:
    group = tg.text("大家好")
    group["message"]["chat"] = {"id": -1001234567890, "title": "业主群", "type": "supergroup"}
    member = {
        "update_id": tg.next_update_id(),
        "my_chat_member": {
            "chat": tg.chat(),
            "from": tg.user(),
            "date": 1700000000,
            "old_chat_member": {"status": "member", "user": tg.BOT_USER},
            "new_chat_member": {
                "status": "kicked",
                "user": tg.BOT_USER,
                "until_date": 0,
            },
        },
    }
    live = tg.edited("ignored")
    del live["edited_message"]["text"]
    live["edited_message"]["location"] = {"latitude": 39.9, "longitude": 116.4, "live_period": 900}
    for update in (group, member, live):
        assert (await _post(svc1, update)).status == 200
    assert await _stored(svc1) == []


async def test_every_button_press_is_answered_even_one_not_for_the_hotline(svc1, fake) -> None:
    """Until answerCallbackQuery, the resident's client spins on the button."""
    press = tg.callback("k:complaint")
    group = {"id": -1001234567890, "title": "业主群", "type": "supergroup"}
    press["callback_query"]["message"]["chat"] = group
    await _ok(svc1, press)
    await until(lambda: fake.called("answerCallbackQuery"))
    answered = fake.called("answerCallbackQuery")
    assert [a["callback_query_id"] for a in answered] == [press["callback_query"]["id"]]
    assert await _stored(svc1) == []
    await asyncio.sleep(0.05)
    assert fake.called("editMessageReplyMarkup") == []  # the bot did not act on it


async def test_a_press_that_cannot_be_stored_is_answered_on_telegrams_retry(svc1, fake) -> None:
    hub = svc1.app[HUB]
    await hub.writer.stop()
    press = tg.callback("m:MY_TICKETS")
    assert (await _post(svc1, press)).status == 503
    await asyncio.sleep(0.05)
    assert fake.called("answerCallbackQuery") == []
    await hub.writer.start()
    await _ok(svc1, press)
    await until(lambda: fake.called("answerCallbackQuery"))
    assert len(await _stored(svc1)) == 1


async def test_webhook_answers_503_until_getme_succeeds(aiohttp_client, sqlite_url, tmp_path, fake):  # type: ignore[no-untyped-def]
    fake.down = True
    app = await _service(tmp_path, sqlite_url, fake.base)
    api = Api(await aiohttp_client(app), app)
    from hotline.appkeys import DEPS

    await _seed(app[DEPS])
    update = tg.text("路灯不亮三天了")
    r = await _post(api, update)
    assert (r.status, r.headers.get("Retry-After")) == (503, "5")
    assert await _stored(api) == []
    fake.down = False
    await until(app[TELEGRAM].is_ready, within=5)
    assert (await _post(api, update)).status == 200  # Telegram's retry of the same update
    assert [m.text for m in await _stored(api)] == ["路灯不亮三天了"]


# ---------------------------------------------------------------------- storing


async def test_text_is_stored_and_waits_for_an_agent(svc) -> None:
    await _ok(svc, tg.text("小区门口的路灯坏了三天了", message_id=77))
    conv = await _conversation(svc)
    assert conv["channel"] == "telegram" and conv["waiting"] is True
    m = conv["messages"][0]
    assert (m["direction"], m["kind"], m["text"]) == ("in", "text", "小区门口的路灯坏了三天了")
    stored = await _stored(svc)
    assert stored[0].external_id.endswith(f":{UID}")
    assert stored[0].data["message_id"] == 77


async def test_a_retried_update_is_stored_once(svc) -> None:
    update = tg.text("垃圾没人清理")
    edit = tg.edited("垃圾三天没人清理")
    press = tg.callback("k:complaint")
    for u in (update, update, edit, edit, press, press):
        await _ok(svc, u)
    stored = await _stored(svc)
    assert [m.text for m in stored] == ["垃圾没人清理", "垃圾三天没人清理", "投诉"]


async def test_photo_location_edit_and_button_press_are_normalized(svc) -> None:
    await _ok(svc, tg.photo(caption="积水"))
    await _ok(svc, tg.location(31.2304, 121.4737))
    await _ok(svc, tg.edited("改一下：积水很深", message_id=1365))
    await _ok(svc, tg.callback("something-else"))
    img, loc, edit, press = await _stored(svc)
    assert (img.kind, img.text) == ("image", "积水")
    assert img.media == [
        {"ref": "AgACAgUAAxkBAAIBZ2X-large", "kind": "image", "url": None, "type": "image/jpeg"}
    ]
    assert (loc.kind, loc.location) == (
        "location",
        {"lat": 31.2304, "lon": 121.4737, "label": None},
    )
    assert (edit.kind, edit.text, edit.data["edited"], edit.data["message_id"]) == (
        "text",
        "改一下：积水很深",
        True,
        1365,
    )
    assert (press.kind, press.data["event"], press.data["event_key"]) == (
        "event",
        "callback",
        "something-else",
    )


async def test_emergency_words_get_the_number_at_once(svc, fake) -> None:
    await _ok(svc, tg.text("楼下着火了，好多烟"))
    sent = await _sends(fake, 1)
    assert sent[0]["chat_id"] == UID and "119" in sent[0]["text"]
    conv = await _conversation(svc)
    assert conv["emergency"] is True


# ---------------------------------------------------------------------- the bot


async def test_start_welcomes_with_menu_buttons(svc1, fake) -> None:
    await _ok(svc1, tg.text("/start"))
    (sent,) = await _sends(fake, 1)
    assert sent["text"] == bot.say("welcome", "zh")
    buttons = [b["callback_data"] for row in sent["reply_markup"]["inline_keyboard"] for b in row]
    assert buttons == ["m:REPORT", "m:MY_TICKETS", "m:EMERGENCY"]
    await _ok(svc1, tg.callback("m:MY_TICKETS"))
    sent = await _sends(fake, 2)
    assert sent[1]["text"] == "您还没有工单。"
    assert fake.called("answerCallbackQuery")
    assert fake.called("editMessageReplyMarkup") == []  # the menu stays usable


async def test_english_speakers_get_english(svc1, fake) -> None:
    await _step(svc1, fake, tg.text("/start", lang="en"))
    await _step(svc1, fake, tg.text("/new@Hotline12345Bot", lang="en"))
    sent = await _sends(fake, 2)
    assert sent[0]["text"] == bot.say("welcome", "en")
    assert sent[1]["text"] == bot.say("ask_kind", "en")
    labels = [b["text"] for row in sent[1]["reply_markup"]["inline_keyboard"] for b in row]
    assert labels == ["question", "request", "complaint", "report", "suggestion", "praise"]


async def test_guided_report_ends_in_a_ticket(svc, fake) -> None:
    number = await _report(svc, fake)
    sent = fake.called("sendMessage")
    assert [s["chat_id"] for s in sent] == [UID] * 6
    ask_kind, ask_text, ask_where, ask_photo, summary, done = sent
    assert ask_kind["text"] == bot.say("ask_kind", "zh")
    kinds = [b["callback_data"] for row in ask_kind["reply_markup"]["inline_keyboard"] for b in row]
    assert kinds == [f"k:{k}" for k, _zh, _en in bot.KINDS]
    assert ask_text["text"] == bot.say("ask_description", "zh")
    assert ask_where["reply_markup"]["keyboard"][0][0] == {
        "text": "发送当前位置",
        "request_location": True,
    }
    assert ask_photo["reply_markup"]["keyboard"] == [[{"text": "跳过"}]]
    assert "幸福小区南门的路灯坏了三天了" in summary["text"]
    assert [b["callback_data"] for b in summary["reply_markup"]["inline_keyboard"][0]] == [
        "c:yes",
        "c:no",
    ]
    assert done["text"] == bot.ticket_created(number, "zh")
    assert done["reply_markup"] == {"remove_keyboard": True}
    # both button presses were answered and their keyboards taken away
    await until(lambda: len(fake.called("editMessageReplyMarkup")) == 2)
    assert len(fake.called("answerCallbackQuery")) == 2

    t = await (await svc.get(f"/api/v1/tickets/{number}")).json()
    assert t["kind"] == "complaint"
    assert t["description"] == "幸福小区南门的路灯坏了三天了"
    assert (t["channel"], t["location"]["lat"], t["location"]["lon"]) == (
        "telegram",
        39.9042,
        116.4074,
    )
    assert t["contact"]["channel_ids"] == {"telegram": str(UID)}
    conv = await _conversation(svc)
    assert conv["ticket_number"] == number


async def test_status_and_my_tickets_answer_for_own_tickets_only(svc, fake) -> None:
    number = await _report(svc, fake)
    await _step(svc, fake, tg.text(f"/status {number}"))
    await _step(svc, fake, tg.text("/mytickets"))
    await _step(svc, fake, tg.text(f"/status@Hotline12345Bot {number}", uid=2222222))
    sent = await _sends(fake, 9)
    assert sent[6]["text"] == f"工单 {number}：已受理，待派单。"
    assert sent[7]["text"].startswith(f"您的工单：\n{number} 已受理，待派单")
    assert (sent[8]["chat_id"], sent[8]["text"]) == (
        2222222,
        f"没有找到您的工单 {number}，请核对工单号。",
    )


# ---------------------------------------------------------------------- the way out


async def test_agent_reply_reaches_the_resident(svc, fake) -> None:
    await _ok(svc, tg.text("请问社保卡在哪里补办？"))
    cid = (await _conversation(svc))["id"]
    r = await svc.post(f"/api/v1/conversations/{cid}/messages", {"text": "请到区政务服务中心办理"})
    assert r.status == 201, await r.text()
    (sent,) = await _sends(fake, 1)
    assert (sent["chat_id"], sent["text"]) == (UID, "请到区政务服务中心办理")
    assert "reply_markup" not in sent

    async def delivered() -> bool:
        conv = await (await svc.get(f"/api/v1/conversations/{cid}")).json()
        return conv["messages"][1]["delivery"]["state"] == "sent"

    await until(delivered)


async def test_ticket_status_change_notifies_the_resident(svc, fake) -> None:
    number = await _report(svc, fake)
    await svc.move(number, "dispatch", {"department": "urban-mgmt"})
    sent = await _sends(fake, 7)
    assert sent[6]["chat_id"] == UID
    assert number in sent[6]["text"] and "已派发" in sent[6]["text"]


async def test_flood_control_retry_after_is_honoured(svc1, fake) -> None:
    fake.fail["sendMessage"] = [(429, {"retry_after": 1})]
    await _ok(svc1, tg.text("有人在吗"))
    cid = (await _conversation(svc1))["id"]
    await svc1.post(f"/api/v1/conversations/{cid}/messages", {"text": "您好，请讲"})
    await until(lambda: len(fake.called("sendMessage")) == 2)
    assert fake.sent_texts() == ["您好，请讲", "您好，请讲"]  # refused once, then sent
    assert fake.times[-1] - fake.times[-2] >= 1.0  # not before Telegram said

    async def delivered() -> bool:
        conv = await (await svc1.get(f"/api/v1/conversations/{cid}")).json()
        return conv["messages"][1]["delivery"]["state"] == "sent"

    await until(delivered)


async def test_a_blocked_bot_fails_permanently_without_retries(svc1, fake) -> None:
    fake.fail["sendMessage"] = [(403, "Forbidden: bot was blocked by the user")]
    await _ok(svc1, tg.text("投诉噪音"))
    cid = (await _conversation(svc1))["id"]
    await svc1.post(f"/api/v1/conversations/{cid}/messages", {"text": "已收到"})

    async def failed() -> bool:
        conv = await (await svc1.get(f"/api/v1/conversations/{cid}")).json()
        return conv["messages"][1]["delivery"]["state"] == "failed"

    await until(failed)
    assert len(fake.called("sendMessage")) == 1


async def test_restart_keeps_accepted_updates_and_delivers_the_outbox(
    aiohttp_client, db_url, tmp_path, fake
) -> None:
    app = await _service(tmp_path, db_url, fake.base)
    client = TestClient(TestServer(app))
    await client.start_server()
    from hotline.appkeys import DEPS

    await _seed(app[DEPS])
    api = Api(client, app)
    await app[HUB].outbox.stop()  # "crash" before anything is delivered
    update = tg.text("重启前的消息")
    await _ok(api, update)
    cid = (await _conversation(api))["id"]
    r = await api.post(f"/api/v1/conversations/{cid}/messages", {"text": "已收到，正在处理"})
    assert r.status == 201
    await client.close()
    assert fake.called("sendMessage") == []

    app2 = await _service(tmp_path, db_url, fake.base)
    api2 = Api(await aiohttp_client(app2), app2)
    sent = await _sends(fake, 1)  # the outbox picks up what the first run left
    assert (sent[0]["chat_id"], sent[0]["text"]) == (UID, "已收到，正在处理")
    conv = await (await api2.get(f"/api/v1/conversations/{cid}")).json()
    assert [m["text"] for m in conv["messages"]] == ["重启前的消息", "已收到，正在处理"]
    await _ok(api2, update)  # Telegram's retry of the update from before the crash
    assert len(await _stored(api2)) == 1


async def test_an_update_our_mapping_chokes_on_is_kept_raw_for_an_agent(svc1, monkeypatch) -> None:
    from channels.telegram import inbound

    def broken(update: Any, bot_username: str | None = None) -> Any:
        raise KeyError("a shape we did not foresee")

    monkeypatch.setattr(inbound, "to_message", broken)
    update = tg.text("路灯坏了", message_id=91)
    await _ok(svc1, update)
    await _ok(svc1, update)  # Telegram's retry: still stored once
    stored = await _stored(svc1)
    assert len(stored) == 1
    assert stored[0].data["unreadable"] is True
    assert stored[0].data["raw"]["message"]["text"] == "路灯坏了"
    conv = await _conversation(svc1)
    assert conv["waiting"] is True  # an agent sees it rather than nobody
