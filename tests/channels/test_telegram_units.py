"""The Telegram adapter's pure parts (update -> message, prompt -> keyboard, long texts)
and its Bot API calls against the local fake (sender errors, setWebhook, the CLI)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from telegram import Bot, ReplyKeyboardRemove, Update

import main
from channels import DeliveryError, Kind, bot
from channels.telegram import keyboards, register_webhook
from channels.telegram.client import TelegramSender, split_text
from channels.telegram.inbound import lang_of, to_message, unparsed
from tests.channels import telegram_fake as tg
from tests.conftest import make_settings


def _msg(update: dict[str, Any]):  # type: ignore[no-untyped-def]
    return to_message(Update.de_json(update, None), "Hotline12345Bot")


# ---------------------------------------------------------------------- update -> message


@pytest.mark.parametrize(
    ("typed", "kind", "text", "event"),
    [
        ("/start", Kind.EVENT, None, "subscribe"),
        ("/start ref-campaign", Kind.EVENT, None, "subscribe"),
        ("/help", Kind.EVENT, None, "subscribe"),
        ("/new", Kind.TEXT, "/new", None),
        ("/new@Hotline12345Bot", Kind.TEXT, "/new", None),
        ("/STATUS@hotline12345bot   2026112200123", Kind.TEXT, "/status 2026112200123", None),
        ("/mytickets", Kind.TEXT, "/mytickets", None),
        ("/new@SomeOtherBot", Kind.TEXT, "/new@SomeOtherBot", None),
        ("路灯不亮 /new", Kind.TEXT, "路灯不亮 /new", None),
    ],
)
def test_commands_become_the_bots_words(
    typed: str, kind: Kind, text: str | None, event: str | None
) -> None:
    m = _msg(tg.text(typed, update_id=500))
    assert (m.kind, m.text, m.event) == (kind, text, event)
    assert (m.channel, m.sender_id, m.external_id) == (
        "telegram",
        str(tg.USER_ID),
        f"500:{tg.USER_ID}",
    )
    assert m.sender_name == "Li Wei"


def test_a_mention_inside_the_text_is_not_a_command() -> None:
    u = tg.text("看看 /status 这个命令")
    u["message"]["entities"] = [{"offset": 3, "length": 7, "type": "bot_command"}]
    assert _msg(u).text == "看看 /status 这个命令"


def test_a_deep_link_start_keeps_its_payload_as_the_scene() -> None:
    """t.me/Hotline12345Bot?start=PAYLOAD: Telegram sends "/start PAYLOAD", the
    payload 1-64 of A-Z a-z 0-9 _ -; kept like a WeChat QR code's scene."""
    m = _msg(tg.text("/start ticket_2026112200123-x"))
    assert (m.kind, m.event, m.data["scene"]) == (Kind.EVENT, "subscribe", "ticket_2026112200123-x")
    assert _msg(tg.text("/start " + "a" * 64)).data["scene"] == "a" * 64
    for typed in ("/start", "/start " + "a" * 65, "/start 你好", "/start a b", "/help x"):
        m = _msg(tg.text(typed))
        assert (m.event, "scene" in m.data) == ("subscribe", False), typed


def test_command_arguments_are_found_by_utf16_entity_lengths() -> None:
    """Entity offsets and lengths count UTF-16 code units: a character outside the BMP
    is two of them but one Python character."""
    u = tg.text("/st😀😀tus@Hotline12345Bot ab")
    u["message"]["entities"] = [{"offset": 0, "length": 26, "type": "bot_command"}]
    assert _msg(u).text == "/st😀😀tus ab"


@pytest.mark.parametrize(
    ("code", "lang"),
    [("zh-hans", "zh"), ("zh-TW", "zh"), (None, "zh"), ("en", "en"), ("ru", "en")],
)
def test_reply_language_follows_the_client(code: str | None, lang: str) -> None:
    assert _msg(tg.text("你好", lang=code)).lang == lang


def test_photo_takes_the_largest_size_and_keeps_the_caption() -> None:
    u = tg.photo(caption="井盖丢了")
    u["message"]["photo"].reverse()  # order is not something to rely on
    m = _msg(u)
    assert (m.kind, m.text, m.media[0].ref) == (Kind.IMAGE, "井盖丢了", "AgACAgUAAxkBAAIBZ2X-large")
    assert m.data["file_unique_id"] == "AQADs3"


def test_venue_location_carries_its_name() -> None:
    u = tg.message(
        {
            "location": {"latitude": 39.91, "longitude": 116.39},
            "venue": {
                "location": {"latitude": 39.91, "longitude": 116.39},
                "title": "天安门广场",
                "address": "东城区东长安街",
            },
        }
    )
    m = _msg(u)
    assert m.kind is Kind.LOCATION
    assert m.location is not None
    assert (m.location.lat, m.location.lon, m.location.label) == (
        39.91,
        116.39,
        "天安门广场, 东城区东长安街",
    )


@pytest.mark.parametrize(
    ("content", "kind", "media_kind"),
    [
        (
            {
                "voice": {
                    "file_id": "V1",
                    "file_unique_id": "v",
                    "duration": 3,
                    "mime_type": "audio/ogg",
                }
            },
            Kind.VOICE,
            "voice",
        ),
        (
            {
                "video": {
                    "file_id": "VD1",
                    "file_unique_id": "vd",
                    "width": 640,
                    "height": 480,
                    "duration": 5,
                    "mime_type": "video/mp4",
                }
            },
            Kind.VIDEO,
            "video",
        ),
        (
            {"document": {"file_id": "D1", "file_unique_id": "d", "mime_type": "image/png"}},
            Kind.IMAGE,
            "image",
        ),
        (
            {
                "document": {
                    "file_id": "D2",
                    "file_unique_id": "d2",
                    "file_name": "材料.pdf",
                    "mime_type": "application/pdf",
                }
            },
            Kind.TEXT,
            "file",
        ),
    ],
)
def test_media_messages(content: dict[str, Any], kind: Kind, media_kind: str) -> None:
    m = _msg(tg.message(content))
    assert (m.kind, m.media[0].kind) == (kind, media_kind)


def test_unsupported_content_is_kept_for_the_agent() -> None:
    m = _msg(tg.message({"contact": {"phone_number": "+8613800000000", "first_name": "Li"}}))
    assert (m.kind, m.text, m.data["unsupported"]) == (Kind.TEXT, None, "contact")


def test_button_presses_say_the_bots_words_in_the_residents_language() -> None:
    assert _msg(tg.callback("k:report")).text == "举报"
    assert _msg(tg.callback("c:yes")).text == "确认"
    assert _msg(tg.callback("c:no")).text == "取消"
    en = tg.callback("k:report")
    en["callback_query"]["from"]["language_code"] = "en"
    assert _msg(en).text == "report"
    menu = _msg(tg.callback("m:REPORT"))
    assert (menu.kind, menu.event, menu.event_key) == (Kind.EVENT, "click", bot.MENU_REPORT)
    other = _msg(tg.callback("k:nonsense"))
    assert (other.kind, other.event, other.event_key) == (Kind.EVENT, "callback", "k:nonsense")


def test_an_edit_is_a_message_of_its_own_and_commands_in_edits_are_not_rerun() -> None:
    m = _msg(tg.edited("/new", update_id=777))
    assert (m.kind, m.text, m.external_id, m.data["edited"]) == (
        Kind.TEXT,
        "/new",
        f"777:{tg.USER_ID}",
        True,
    )


def test_not_for_the_hotline() -> None:
    channel_post = {
        "update_id": 9,
        "channel_post": {
            "message_id": 1,
            "chat": {"id": -100, "title": "news", "type": "channel"},
            "date": 1700000000,
            "text": "hi",
        },
    }
    assert _msg(channel_post) is None
    from_bot = tg.text("hello")
    from_bot["message"]["from"]["is_bot"] = True
    assert _msg(from_bot) is None


def test_lang_of_no_user() -> None:
    assert lang_of(None) == "zh"


def test_an_update_ptb_cannot_read_is_kept_for_a_private_human_sender_only() -> None:
    raw = tg.text("路灯坏了", update_id=4242)
    raw["message"]["date"] = "yesterday"  # a shape PTB cannot read
    m = unparsed(raw)
    assert m is not None
    assert (m.sender_id, m.external_id, m.sender_name, m.lang) == (
        str(tg.USER_ID),
        f"4242:{tg.USER_ID}",
        "Li Wei",
        "zh",
    )
    assert m.data["unreadable"] is True and m.data["raw"]["message"]["text"] == "路灯坏了"
    press = tg.callback("k:report", update_id=4243)
    press["callback_query"]["from"]["language_code"] = "en"
    m = unparsed(press)
    assert m is not None and (m.external_id, m.lang) == (f"4243:{tg.USER_ID}", "en")
    group = tg.text("大家好")
    group["message"]["chat"] = {"id": -100, "title": "业主群", "type": "supergroup"}
    from_bot = tg.text("hi")
    from_bot["message"]["from"]["is_bot"] = True
    no_chat = tg.text("hi")
    del no_chat["message"]["chat"]
    odd_ids = [tg.text("hi") for _ in range(3)]
    for u, uid in zip(odd_ids, ("7", True, 2**60), strict=True):
        u["message"]["from"]["id"] = uid
    for u in (group, from_bot, no_chat, *odd_ids, {"update_id": 1, "message": "x"}):
        assert unparsed(u) is None


# ---------------------------------------------------------------------- keyboards


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_each_bot_prompt_gets_its_keyboard(lang: str) -> None:
    assert keyboards.markup_for(bot.say("welcome", lang)) == keyboards.welcome(lang)
    assert keyboards.markup_for(bot.say("ask_kind", lang)) == keyboards.kinds(lang)
    assert keyboards.markup_for(bot.say("ask_location", lang)) == keyboards.location_request(lang)
    assert keyboards.markup_for(bot.say("ask_photo", lang)) == keyboards.skip_only(lang)
    summary = bot.say(
        "confirm", lang, kind="投诉", description="路灯不亮了", where="无", photo="无"
    )
    assert keyboards.markup_for(summary) == keyboards.confirm(lang)
    assert isinstance(
        keyboards.markup_for(bot.ticket_created("2026112200123", lang)), ReplyKeyboardRemove
    )
    assert isinstance(keyboards.markup_for(bot.say("cancelled", lang)), ReplyKeyboardRemove)


def test_other_texts_get_no_keyboard() -> None:
    assert keyboards.markup_for("请到区政务服务中心办理") is None
    assert keyboards.markup_for(bot.say("ask_description", "zh")) is None


def test_every_button_fits_telegrams_64_byte_callback_data() -> None:
    for lang in ("zh", "en"):
        for markup in (keyboards.welcome(lang), keyboards.kinds(lang), keyboards.confirm(lang)):
            for row in markup.inline_keyboard:
                for b in row:
                    assert b.callback_data and 1 <= len(str(b.callback_data).encode()) <= 64


# ---------------------------------------------------------------------- long texts


def test_split_text_keeps_parts_within_4096_and_prefers_line_breaks() -> None:
    assert split_text("短") == ["短"]
    lines = "\n".join(f"第{i:04d}行，内容内容内容内容" for i in range(600))
    parts = split_text(lines)
    assert all(len(p) <= 4096 for p in parts) and "".join(parts) == lines
    assert all(p.endswith("\n") for p in parts[:-1])
    flat = "字" * 9000
    assert [len(p) for p in split_text(flat)] == [4096, 4096, 808]


def test_split_text_never_leaves_a_blank_part() -> None:
    """Telegram trims a text and refuses an empty one ("message text is empty")."""
    assert split_text("x" * 4096 + "\n") == ["x" * 4096]
    assert split_text("x" * 4096 + " \n\n \t") == ["x" * 4096]
    parts = split_text("a" * 4000 + "\n" * 5000 + "b")
    assert [p.strip() for p in parts] == ["a" * 4000, "b"]


def test_split_text_prefers_sentences_then_spaces() -> None:
    prose = "这条路的路灯已经坏了很久。" * 400  # no line breaks
    parts = split_text(prose)
    assert all(p.endswith("。") for p in parts) and "".join(parts) == prose
    words = "streetlight " * 500
    assert all(p.endswith(" ") for p in split_text(words)[:-1])


@pytest.mark.parametrize(
    "unit",
    [
        "👩\u200d👩\u200d👧\u200d👦",  # a family: ZWJ sequence
        "👍🏽",  # a skin tone modifier
        "🇨🇳",  # a flag: two regional indicators
        "e\u0301",  # a combining accent
        "❤\ufe0f",  # a variation selector
        "\ud83d\ude00",  # a surrogate pair, as a str built with surrogatepass holds it
    ],
)
def test_split_text_never_cuts_inside_what_reads_as_one_character(unit: str) -> None:
    text = "x" * 4095 + unit * 3000
    parts = split_text(text)
    assert all(0 < len(p) <= 4096 for p in parts) and "".join(parts) == text
    for p in parts[1:]:
        assert p.startswith(unit), repr(p[:8])
    crlf = "x" * 4095 + "\r\n" + "y" * 10
    assert split_text(crlf) == ["x" * 4095, "\r\n" + "y" * 10]


# ---------------------------------------------------------------------- sender vs the fake


@pytest.fixture
async def fake(aiohttp_server):  # type: ignore[no-untyped-def]
    f = tg.FakeBotApi()
    server = await aiohttp_server(f.app())
    f.base = str(server.make_url("")).rstrip("/")
    return f


@pytest.fixture
async def live_bot(fake):  # type: ignore[no-untyped-def]
    b = Bot(tg.TOKEN, base_url=f"{fake.base}/bot", base_file_url=f"{fake.base}/file/bot")
    await b.initialize()
    yield b
    await b.shutdown()


async def _refusal(
    sender: TelegramSender, recipient: str = "1111111", text: str = "hi"
) -> DeliveryError:
    with pytest.raises(DeliveryError) as info:
        await sender.send(recipient, {"type": "text", "text": text})
    return info.value


@pytest.mark.parametrize(
    ("status", "answer", "permanent"),
    [
        (403, "Forbidden: bot was blocked by the user", True),
        (403, "Forbidden: user is deactivated", True),
        (400, "Bad Request: chat not found", True),
        (500, "Internal Server Error", False),
        (502, "Bad Gateway", False),
        (401, "Unauthorized", False),
    ],
)
async def test_refusals_map_to_permanent_or_transient(
    live_bot, fake, status: int, answer: str, permanent: bool
) -> None:
    fake.fail["sendMessage"] = [(status, answer)]
    err = await _refusal(TelegramSender(live_bot))
    assert err.permanent is permanent
    assert tg.TOKEN not in str(err)


async def test_an_unreachable_api_is_transient(live_bot, fake) -> None:
    dead = Bot(tg.TOKEN, base_url="http://127.0.0.1:9/bot")
    try:
        err = await _refusal(TelegramSender(dead))
    finally:
        await dead.shutdown()
    assert err.permanent is False and tg.TOKEN not in str(err)


async def test_nothing_to_send_or_no_chat_id_is_permanent(live_bot) -> None:
    sender = TelegramSender(live_bot)
    assert (await _refusal(sender, recipient="o-wechat-openid")).permanent is True
    with pytest.raises(DeliveryError) as info:
        await sender.send("1", {"type": "ticket_update", "number": "1"})
    assert info.value.permanent is True


async def test_a_long_flood_wait_is_left_to_the_outbox_and_blocks_later_sends(
    live_bot, fake
) -> None:
    now = [1000.0]
    sender = TelegramSender(live_bot, clock=lambda: now[0], max_wait_s=30)
    fake.fail["sendMessage"] = [(429, {"retry_after": 120})]
    err = await _refusal(sender)
    assert err.permanent is False and "120" in str(err)
    err = await _refusal(sender)  # Telegram is not even asked inside the window
    assert len(fake.called("sendMessage")) == 1 and "flood" in str(err)
    now[0] += 121
    await sender.send("1111111", {"type": "text", "text": "again"})
    assert fake.sent_texts() == ["hi", "again"]


async def test_a_text_ending_in_a_line_break_at_the_limit_is_one_message(live_bot, fake) -> None:
    """The blank tail after 4096 characters used to go out as a part of its own, which
    Telegram refuses with 400 (permanent: the message was marked failed)."""
    await TelegramSender(live_bot).send("1111111", {"type": "text", "text": "x" * 4096 + "\n"})
    assert fake.sent_texts() == ["x" * 4096]


async def test_a_group_upgraded_to_a_supergroup_is_followed(live_bot, fake) -> None:
    """400 with parameters.migrate_to_chat_id: the chat lives on under the new id."""
    fake.fail["sendMessage"] = [
        (400, {"migrate_to_chat_id": -1001234567890}),
    ]
    text = "甲" * 4096 + "乙" * 10
    await TelegramSender(live_bot).send("-4567", {"type": "text", "text": text})
    assert [p["chat_id"] for p in fake.called("sendMessage")] == [
        -4567,
        -1001234567890,
        -1001234567890,
    ]
    assert fake.sent_texts(-1001234567890) == ["甲" * 4096, "乙" * 10]


async def test_a_long_text_goes_in_parts_with_the_keyboard_on_the_last(live_bot, fake) -> None:
    text = bot.say("ask_kind", "zh")
    long = "说明" * 2100 + "\n" + text
    await TelegramSender(live_bot).send("1111111", {"type": "text", "text": long})
    sent = fake.called("sendMessage")
    assert len(sent) == 2 and "".join(s["text"] for s in sent) == long
    assert "reply_markup" not in sent[0]
    # the keyboard goes on the last part only, and only for the exact prompt
    assert "reply_markup" not in sent[1]
    await TelegramSender(live_bot).send("1111111", {"type": "text", "text": text})
    assert fake.called("sendMessage")[-1]["reply_markup"]["inline_keyboard"]


async def test_a_retry_after_a_part_failed_sends_only_the_parts_not_yet_delivered(
    live_bot, fake
) -> None:
    """The outbox retries the whole message; the resident must not get part 1 twice."""
    sender = TelegramSender(live_bot)
    text = "甲" * 4096 + "乙" * 4096 + "丙" * 10
    fake.fail["sendMessage"] = [None, (502, "Bad Gateway")]  # part 2 fails once
    with pytest.raises(DeliveryError):
        await sender.send("1111111", {"type": "text", "text": text})
    assert fake.sent_texts() == ["甲" * 4096, "乙" * 4096]  # (asked for both, 1 taken)
    await sender.send("1111111", {"type": "text", "text": text})  # the outbox's retry
    assert fake.sent_texts()[2:] == ["乙" * 4096, "丙" * 10]  # not 甲 again
    await sender.send("1111111", {"type": "text", "text": text})  # sent again on purpose
    assert fake.sent_texts()[4:] == ["甲" * 4096, "乙" * 4096, "丙" * 10]


async def test_one_chats_messages_keep_their_order_when_sent_concurrently(live_bot, fake) -> None:
    fake.delays["sendMessage"] = [0.3]  # the first send is slow to answer
    sender = TelegramSender(live_bot)
    await asyncio.gather(
        sender.send("1111111", {"type": "text", "text": "first"}),
        sender.send("1111111", {"type": "text", "text": "second"}),
        sender.send("2222222", {"type": "text", "text": "other chat"}),
    )
    assert fake.sent_texts(1111111) == ["first", "second"]
    # the fake records on arrival: the other chat went out while "first" was in flight
    texts = fake.sent_texts()
    assert texts[-1] == "second" and "other chat" in texts[:2]
    assert sender._chats == {}


async def test_ticket_updates_are_sent_as_their_text(live_bot, fake) -> None:
    await TelegramSender(live_bot).send(
        "1111111",
        {
            "type": "ticket_update",
            "number": "2026112200123",
            "status": "dispatched",
            "status_text": "已派发承办单位",
            "text": "您的工单 2026112200123 已派发承办单位",
            "lang": "zh",
        },
    )
    assert fake.sent_texts(1111111) == ["您的工单 2026112200123 已派发承办单位"]


# ---------------------------------------------------------------------- setWebhook


async def test_register_webhook_sends_the_secret_and_allowed_updates(fake, tmp_path) -> None:
    settings = make_settings(
        tmp_path,
        "sqlite+aiosqlite:///x.db",
        telegram_token=tg.TOKEN,
        telegram_secret=tg.SECRET,
        telegram_api_base=fake.base,
    )
    info = await register_webhook(settings, "https://hotline.example/telegram/webhook")
    assert fake.webhook == {
        "url": "https://hotline.example/telegram/webhook",
        "secret_token": tg.SECRET,
        "allowed_updates": ["message", "edited_message", "callback_query"],
        "drop_pending_updates": "false",
    }
    assert info["url"] == "https://hotline.example/telegram/webhook"
    with pytest.raises(ValueError, match="https"):
        await register_webhook(settings, "http://hotline.example/telegram/webhook")


def _cli_env(monkeypatch, tmp_path, base: str) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HOTLINE_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/cli.db")
    monkeypatch.setenv("HOTLINE_PII_KEY_FILE", str(tmp_path / "pii.key"))
    monkeypatch.setenv("HOTLINE_TELEGRAM_TOKEN", tg.TOKEN)
    monkeypatch.setenv("HOTLINE_TELEGRAM_SECRET", tg.SECRET)
    monkeypatch.setenv("HOTLINE_TELEGRAM_API_BASE", base)


async def test_cli_registers_the_webhook(fake, monkeypatch, tmp_path, capsys) -> None:
    _cli_env(monkeypatch, tmp_path, fake.base)
    url = "https://hotline.example/telegram/webhook"
    assert await asyncio.to_thread(main.main, ["telegram-webhook", "--url", url]) == 0
    assert fake.webhook["url"] == url and fake.webhook["secret_token"] == tg.SECRET
    assert '"url": "https://hotline.example/telegram/webhook"' in capsys.readouterr().out


async def test_cli_reports_a_rejected_token_without_printing_it(
    fake, monkeypatch, tmp_path, capsys
) -> None:
    _cli_env(monkeypatch, tmp_path, fake.base)
    monkeypatch.setenv("HOTLINE_TELEGRAM_TOKEN", "999:wrong-token")
    args = ["telegram-webhook", "--url", "https://hotline.example/telegram/webhook"]
    assert await asyncio.to_thread(main.main, args) == 1
    err = capsys.readouterr().err
    assert "rejected HOTLINE_TELEGRAM_TOKEN" in err and "wrong-token" not in err


def test_cli_needs_the_token(monkeypatch, tmp_path, capsys) -> None:
    _cli_env(monkeypatch, tmp_path, "http://127.0.0.1:9")
    monkeypatch.delenv("HOTLINE_TELEGRAM_TOKEN")
    args = ["telegram-webhook", "--url", "https://hotline.example/telegram/webhook"]
    assert main.main(args) == 1
    assert "HOTLINE_TELEGRAM_TOKEN" in capsys.readouterr().err


def test_settings_require_the_secret_with_the_token(tmp_path) -> None:
    from hotline.settings import SettingsError

    with pytest.raises(SettingsError, match=r"HOTLINE_TELEGRAM_SECRET: .*required"):
        make_settings(tmp_path, "sqlite+aiosqlite:///x.db", telegram_token=tg.TOKEN)
    with pytest.raises(SettingsError, match=r"HOTLINE_TELEGRAM_SECRET: .*A-Z a-z 0-9"):
        make_settings(
            tmp_path, "sqlite+aiosqlite:///x.db", telegram_token=tg.TOKEN, telegram_secret="a b"
        )


@pytest.fixture
async def paced_bot(fake):  # type: ignore[no-untyped-def]
    """The bot as the service builds it (build_application), pacing included."""
    from channels.telegram.client import build_application

    application = build_application(tg.TOKEN, fake.base)
    await application.bot.initialize()
    yield application.bot
    await application.bot.shutdown()


async def test_a_burst_to_many_chats_is_paced_below_telegrams_overall_limit(
    paced_bot, fake
) -> None:
    """~30 messages a second in all (Telegram's bot FAQ): a burst of 45 notifications
    goes out as 30 at once and the rest over the next half second, not as 45 at once
    into flood control."""
    from channels.telegram.client import OVERALL_PER_S

    sender = TelegramSender(paced_bot)
    chats = [str(1_000_000 + i) for i in range(OVERALL_PER_S + 15)]
    await asyncio.gather(*(sender.send(c, {"type": "text", "text": "好"}) for c in chats))
    assert sorted(str(p["chat_id"]) for p in fake.called("sendMessage")) == sorted(chats)
    spread = max(fake.times) - min(fake.times)
    assert spread >= 0.35, f"45 sends in {spread:.3f} s: not paced"


async def test_a_429_through_the_pacer_holds_that_chat_only(paced_bot, fake) -> None:
    """PTB's limiter would halt every chat for a 429 if it retried; it does not retry
    here, so the 429 reaches our sender, which holds only the chat it was for."""
    now = [1000.0]
    sender = TelegramSender(paced_bot, clock=lambda: now[0], max_wait_s=30)
    fake.fail["sendMessage"] = [(429, {"retry_after": 120})]
    err = await _refusal(sender, "1111111")
    assert err.permanent is False and err.retry_after == 120
    await sender.send("2222222", {"type": "text", "text": "other chat"})
    assert fake.sent_texts(2222222) == ["other chat"]
    err = await _refusal(sender, "1111111")  # still inside that chat's window
    assert len(fake.called("sendMessage")) == 2
