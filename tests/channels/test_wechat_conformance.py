"""The /wechat webhook and the WeChat client against WeChat's published protocol, as
WeChat's servers behave: each test names the rule it checks. wechatpy (an independent
implementation) encrypts, decrypts and parses where it fits."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from typing import Any

import pytest
import sqlalchemy as sa
from wechatpy import parse_message
from wechatpy.crypto import WeChatCrypto

from channels import HUB
from channels.models import message_t
from channels.outbox import DeliveryError
from channels.wechat.client import WeChatClient, WeChatSender
from channels.wechat.crypto import sign
from channels.wechat.inbound import ParseError, parse_xml, text_reply
from channels.wechat.routes import WeChatWebhook
from tests.channels import wechat_rig as rig
from tests.conftest import Api, _seed, make_settings

# WeChat refuses a text (passive reply or 客服消息) longer than this many UTF-8 bytes
MAX_TEXT_BYTES = 2048


_service = rig.service


@pytest.fixture
async def fake(aiohttp_server):  # type: ignore[no-untyped-def]
    return await rig.serve_fake(aiohttp_server)


async def _api(aiohttp_client, tmp_path, db_url, fake, **overrides) -> Api:  # type: ignore[no-untyped-def]
    app = await _service(tmp_path, db_url, fake.base, **overrides)
    client = await aiohttp_client(app)
    from hotline.appkeys import DEPS

    await _seed(app[DEPS])
    return Api(client, app)


@pytest.fixture
async def wx(aiohttp_client, sqlite_url, tmp_path, fake):  # type: ignore[no-untyped-def]
    return await _api(aiohttp_client, tmp_path, sqlite_url, fake)


def _webhook(api: Api) -> WeChatWebhook:
    for route in api.app.router.routes():
        if route.method == "POST" and route.resource and route.resource.canonical == "/wechat":
            return route.handler.__self__  # type: ignore[union-attr,no-any-return]
    raise LookupError("no /wechat route")


async def _post(api: Api, body: str | bytes, query: dict[str, str]):  # type: ignore[no-untyped-def]
    data = body.encode() if isinstance(body, str) else body
    return await api.client.post("/wechat", params=query, data=data)


async def _stored(api: Api) -> list[Any]:
    async with api.app[HUB].deps.db.read() as conn:
        return list(await conn.execute(sa.select(message_t).where(message_t.c.direction == "in")))


def _with_replies(api: Api, monkeypatch: pytest.MonkeyPatch, *texts: str, delay: float = 0) -> None:
    """The hub answers `texts` (after `delay` seconds), whatever the bot would say."""
    hub = api.app[HUB]
    original = hub.receive

    async def receive(msg, *, inline=False):  # type: ignore[no-untyped-def]
        await asyncio.sleep(delay)
        receipt = await original(msg, inline=inline)
        return replace(receipt, replies=texts)

    monkeypatch.setattr(hub, "receive", receive)


async def _sent_texts(fake: rig.FakeWeChat, n: int) -> list[str]:
    for _ in range(100):
        if len(fake.sends()) >= n:
            break
        await asyncio.sleep(0.02)
    return [b["text"]["content"] for b in fake.sends() if b.get("msgtype") == "text"]


# ---------------------------------------------------------------- 接入指南 (GET)


async def test_url_check_echoes_echostr_as_the_whole_body(wx) -> None:
    """公众号 checks the URL with signature + a plain echostr in every mode (safe mode
    included); the answer is echostr itself, as text, nothing else."""
    q = {**rig.signed_query(), "echostr": "4212519958738458391"}
    r = await wx.client.get("/wechat", params=q)
    assert r.status == 200
    assert r.content_type == "text/plain"
    assert await r.read() == b"4212519958738458391"


async def test_url_check_with_a_signature_is_answered_plain_even_beside_msg_signature(
    wx,
) -> None:
    """The plain `signature` is the 公众号 check: an extra msg_signature parameter (the
    企业微信-style encrypted check) must not turn a good check into a 403."""
    q = {**rig.signed_query(), "echostr": "8321947", "msg_signature": "0" * 40}
    r = await wx.client.get("/wechat", params=q)
    assert (r.status, await r.text()) == (200, "8321947")


# ---------------------------------------------------------------- 消息加解密说明


async def test_safe_mode_push_encrypted_by_wechatpy_is_read_and_its_reply_decrypts(wx) -> None:
    """msg_signature = sha1(sort(token, timestamp, nonce, Encrypt)); the reply is
    <Encrypt>, <MsgSignature>, <TimeStamp>, <Nonce>, which wechatpy decrypts."""
    theirs = WeChatCrypto(rig.TOKEN, rig.AES_KEY, rig.APP_ID)
    ts, nonce = str(int(time.time())), "1320562132"
    envelope = theirs.encrypt_message(rig.text_xml("厨房着火了", msg_id="881"), nonce, ts)
    enc = parse_xml(envelope)["Encrypt"]
    q = {**rig.signed_query(ts=ts, nonce=nonce), "encrypt_type": "aes"}
    q["msg_signature"] = sign(rig.TOKEN, ts, nonce, enc)
    body = (
        "<xml><ToUserName><![CDATA[gh_hotline]]></ToUserName>"
        f"<Encrypt><![CDATA[{enc}]]></Encrypt></xml>"
    )
    r = await _post(wx, body, q)
    assert r.status == 200
    text = await r.text()
    assert text.startswith("<xml><Encrypt><![CDATA[")
    outer = parse_xml(text)
    assert list(outer) == ["Encrypt", "MsgSignature", "TimeStamp", "Nonce"]
    assert outer["TimeStamp"].isdigit()
    inner = theirs.decrypt_message(text, outer["MsgSignature"], outer["TimeStamp"], outer["Nonce"])
    reply = parse_message(inner)
    assert (reply.source, reply.target, reply.type) == ("gh_hotline", "oRESIDENT", "text")
    assert "119" in reply.content


async def test_safe_mode_push_for_another_appid_is_not_stored(wx) -> None:
    """The decrypted payload ends with the AppID; another account's message is not ours."""
    other = WeChatCrypto(rig.TOKEN, rig.AES_KEY, "wxOTHERAPP00000000")
    ts, nonce = str(int(time.time())), "77"
    enc = parse_xml(other.encrypt_message(rig.text_xml("hi", msg_id="990"), nonce, ts))["Encrypt"]
    q = {**rig.signed_query(ts=ts, nonce=nonce), "encrypt_type": "aes"}
    q["msg_signature"] = sign(rig.TOKEN, ts, nonce, enc)
    r = await _post(wx, f"<xml><Encrypt><![CDATA[{enc}]]></Encrypt></xml>", q)
    assert (r.status, await r.text()) == (200, "success")
    assert await _stored(wx) == []


def _compatible(inner: str, ts: str, nonce: str) -> tuple[dict[str, str], str]:
    """Compatible mode as WeChat sends it: the plaintext fields and <Encrypt> side by
    side, signature and msg_signature both in the query."""
    q, enc_body = rig.encrypted(inner, ts=ts, nonce=nonce)
    enc = parse_xml(enc_body)["Encrypt"]
    return q, inner.replace("</xml>", f"<Encrypt><![CDATA[{enc}]]></Encrypt></xml>")


async def test_compatible_mode_without_our_aes_key_reads_the_plaintext_half(
    aiohttp_client, sqlite_url, tmp_path, fake
) -> None:
    """兼容模式: 明文 and 密文 both arrive and a plaintext reply is accepted; with no
    EncodingAESKey configured the signed plaintext is the message (not dropped)."""
    api = await _api(aiohttp_client, tmp_path, sqlite_url, fake, aes_key=None)
    ts, nonce = str(int(time.time())), "42"
    q, body = _compatible(rig.text_xml("兼容模式消息", msg_id="31337"), ts, nonce)
    r = await _post(api, body, q)
    assert r.status == 200
    (row,) = await _stored(api)
    assert (row.external_id, row.text) == ("31337", "兼容模式消息")
    # without the plain signature the plaintext half is not trusted (and cannot be read)
    q, body = _compatible(rig.text_xml("unsigned", msg_id="31339"), ts, nonce)
    del q["signature"]
    assert (await _post(api, body, q)).status == 200
    assert len(await _stored(api)) == 1


async def test_compatible_mode_with_our_key_reads_the_ciphertext_and_replies_encrypted(
    wx,
) -> None:
    ts, nonce = str(int(time.time())), "43"
    q, body = _compatible(rig.text_xml("救命", msg_id="31338"), ts, nonce)
    r = await _post(wx, body, q)
    outer = parse_xml(await r.text())
    theirs = WeChatCrypto(rig.TOKEN, rig.AES_KEY, rig.APP_ID)
    inner = theirs.decrypt_message(
        await r.text(), outer["MsgSignature"], outer["TimeStamp"], outer["Nonce"]
    )
    assert parse_message(inner).target == "oRESIDENT"


# ---------------------------------------------------------------- hostile XML


_ENTITY_DOC = (
    '<!DOCTYPE xml [<!ENTITY a "EXPANDED">]>'
    "<xml><ToUserName>gh_hotline</ToUserName><FromUserName>oEVIL</FromUserName>"
    "<CreateTime>{ts}</CreateTime><MsgType>text</MsgType><Content>&a;</Content>"
    "<MsgId>6661</MsgId></xml>"
)


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be"])
def test_a_doctype_is_refused_in_any_encoding(codec: str) -> None:
    """WeChat sends UTF-8 without a DOCTYPE; a DOCTYPE hidden in UTF-16 (where the
    bytes `<!DOCTYPE` never appear) must be refused too, never its entities expanded."""
    with pytest.raises(ParseError):
        parse_xml(_ENTITY_DOC.format(ts=1).encode(codec))


async def test_an_entity_in_utf16_is_never_expanded_into_a_stored_message(wx) -> None:
    body = _ENTITY_DOC.format(ts=int(time.time())).encode("utf-16-le")
    r = await _post(wx, body, rig.signed_query())
    assert (r.status, await r.text()) == (200, "success")
    assert await _stored(wx) == []


@pytest.mark.parametrize(
    "body",
    [
        "<?xml version='1.0' encoding='GBK'?><xml><Content>路灯</Content></xml>".encode("gbk"),
        b"\xff\xfe<\x00x\x00m\x00l\x00>\x00",
        b"<xml><Content>\xc3\x28</Content></xml>",
    ],
)
async def test_bodies_that_are_not_utf8_get_success(wx, body: bytes) -> None:
    r = await _post(wx, body, rig.signed_query())
    assert (r.status, await r.text()) == (200, "success")
    assert await _stored(wx) == []


async def test_missing_query_parameters_are_refused(wx) -> None:
    assert (await _post(wx, rig.text_xml("hi"), {})).status == 403
    assert (await wx.client.get("/wechat")).status == 403
    q = rig.signed_query()
    del q["timestamp"]
    assert (await _post(wx, rig.text_xml("hi"), q)).status == 403


# ---------------------------------------------------------------- 被动回复用户消息


def test_passive_text_reply_swaps_the_users_and_escapes_cdata() -> None:
    xml = text_reply("oRESIDENT", "gh_hotline", "a]]>b", now=1700000000)
    msg = parse_message(xml)
    assert (msg.target, msg.source, msg.content) == ("oRESIDENT", "gh_hotline", "a]]>b")
    assert "<CreateTime>1700000000</CreateTime>" in xml


def test_a_passive_reply_never_carries_characters_xml_forbids() -> None:
    """One control character (a ticket title typed elsewhere) would make the whole
    reply unreadable, and WeChat would show "该公众号暂时无法提供服务"."""
    msg = parse_message(text_reply("o", "gh", "工单\x01标题\x0b", now=1))
    assert msg.content == "工单标题"


def test_a_passive_reply_is_at_most_2048_bytes() -> None:
    content = parse_message(text_reply("o", "gh", "长" * 1000, now=1)).content
    assert len(content.encode()) <= MAX_TEXT_BYTES and content == "长" * (MAX_TEXT_BYTES // 3)


def test_split_text_keeps_every_character_and_cuts_at_line_breaks() -> None:
    from channels.wechat.inbound import split_text

    text = "\n".join(f"{n:013d} 已派发 路灯不亮幸福小区东门口的路灯坏了" for n in range(60))
    pieces = split_text(text)
    assert len(pieces) > 1
    assert all(len(p.encode()) <= MAX_TEXT_BYTES for p in pieces)
    assert "\n".join(pieces) == text
    emoji = "😀" * 1000  # 4 bytes each: never cut inside a character
    assert "".join(split_text(emoji)) == emoji


async def test_a_long_answer_goes_out_whole_as_customer_service_messages(
    wx, fake, monkeypatch
) -> None:
    """WeChat refuses a passive text over 2048 bytes (the resident would see an error):
    the answer goes as 客服消息 in order, and WeChat gets "success"."""
    answer = "答复：" + "路灯已修复。" * 300
    _with_replies(wx, monkeypatch, answer)
    r = await _post(wx, rig.text_xml("查询 2026112200123", msg_id="5001"), rig.signed_query())
    assert (r.status, await r.text()) == (200, "success")
    texts = await _sent_texts(fake, 3)
    assert all(len(t.encode()) <= MAX_TEXT_BYTES for t in texts)
    assert "".join(texts) == answer


async def test_a_long_answer_without_a_sender_is_cut_to_fit(
    aiohttp_client, sqlite_url, tmp_path, fake, monkeypatch
) -> None:
    api = await _api(aiohttp_client, tmp_path, sqlite_url, fake, app_secret=None)
    _with_replies(api, monkeypatch, "长" * 1000)
    q, body = rig.encrypted(rig.text_xml("查询", msg_id="5002"))
    r = await _post(api, body, q)
    outer = parse_xml(await r.text())
    theirs = WeChatCrypto(rig.TOKEN, rig.AES_KEY, rig.APP_ID)
    inner = theirs.decrypt_message(
        await r.text(), outer["MsgSignature"], outer["TimeStamp"], outer["Nonce"]
    )
    assert len(parse_message(inner).content.encode()) <= MAX_TEXT_BYTES


async def test_an_answer_that_takes_too_long_is_success_then_a_customer_service_message(
    wx, fake, monkeypatch
) -> None:
    """WeChat waits 5 s, then retries; after the third try the resident sees
    "该公众号暂时无法提供服务". Past our budget: "success" at once, the reply after."""
    _webhook(wx).reply_budget_s = 0.2
    _with_replies(wx, monkeypatch, "请拨打119", delay=0.8)
    started = time.monotonic()
    r = await _post(wx, rig.text_xml("着火了", msg_id="5003"), rig.signed_query())
    assert (r.status, await r.text()) == (200, "success")
    assert time.monotonic() - started < 0.7
    assert await _sent_texts(fake, 1) == ["请拨打119"]
    assert [row.external_id for row in await _stored(wx)] == ["5003"]


# ---------------------------------------------------------------- 接收事件推送


async def test_subscribe_by_parametric_qr_code_keeps_scene_and_ticket(wx) -> None:
    def push(event: str, key: str, ts: int) -> str:
        return (
            "<xml><ToUserName><![CDATA[gh_hotline]]></ToUserName>"
            "<FromUserName><![CDATA[oQR]]></FromUserName>"
            f"<CreateTime>{ts}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
            f"<Event><![CDATA[{event}]]></Event><EventKey><![CDATA[{key}]]></EventKey>"
            "<Ticket><![CDATA[gQH47joAAAAAAAAAASxodHRwOi8vd2VpeGluLnFx]]></Ticket></xml>"
        )

    now = int(time.time())
    await _post(wx, push("subscribe", "qrscene_district-7", now), rig.signed_query())
    await _post(wx, push("SCAN", "district-7", now + 1), rig.signed_query())
    rows = await _stored(wx)
    assert [(r.data["event"], r.data["scene"], r.data["ticket"][:6]) for r in rows] == [
        ("subscribe", "district-7", "gQH47j"),
        ("scan", "district-7", "gQH47j"),
    ]


# ---------------------------------------------------------------- 客服消息 / 模板消息


async def test_outbound_json_is_utf8_not_unicode_escapes(fake) -> None:
    """WeChat shows \\uXXXX escapes literally: Chinese must travel as UTF-8."""
    client = WeChatClient("wxapp", "s3cret", fake.base)
    try:
        await client.send_text("o1", "您的工单已受理")
    finally:
        await client.stop()
    (raw,) = fake.raw_bodies
    assert "您的工单已受理".encode() in raw and b"\\u" not in raw
    assert json.loads(raw) == {
        "touser": "o1",
        "msgtype": "text",
        "text": {"content": "您的工单已受理"},
    }


async def test_a_long_customer_service_text_is_sent_in_pieces(fake) -> None:
    """45002 "content size out of limit" past 2048 bytes: split, never refused."""
    client = WeChatClient("wxapp", "s3cret", fake.base)
    text = "长" * 1500
    try:
        await client.send_text("o1", text)
    finally:
        await client.stop()
    contents = [b["text"]["content"] for b in fake.sends()]
    assert len(contents) == 3 and "".join(contents) == text
    assert all(len(c.encode()) <= MAX_TEXT_BYTES for c in contents)


async def test_system_busy_is_retried_once(fake) -> None:
    """-1 系统繁忙，请稍候再试."""
    client = WeChatClient("wxapp", "s3cret", fake.base)
    client.busy_retry_s = 0
    try:
        fake.send_errors = [-1]
        await client.send_text("o1", "a")
        assert [b["text"]["content"] for b in fake.sends()] == ["a", "a"]
        fake.send_errors = [-1, -1]
        with pytest.raises(DeliveryError) as info:
            await client.send_text("o1", "b")
        assert info.value.permanent is False  # the outbox retries later, with backoff
    finally:
        await client.stop()


@pytest.mark.parametrize("code", [45015, 45047, 45002, 47003])
async def test_errors_retrying_cannot_fix_are_permanent(fake, code: int) -> None:
    client = WeChatClient("wxapp", "s3cret", fake.base)
    try:
        fake.send_errors = [code]
        with pytest.raises(DeliveryError) as info:
            await client.send_text("o1", "x")
        assert info.value.permanent is True
    finally:
        await client.stop()


def _update(reply: str | None) -> dict[str, Any]:
    return {
        "type": "ticket_update",
        "number": "2026112200123",
        "status": "replied" if reply else "dispatched",
        "status_text": "已答复" if reply else "已派发",
        "reply": reply,
        "text": "您的工单 2026112200123 有新进展：已答复。" + (f"答复：{reply}" if reply else ""),
        "lang": "zh",
    }


async def test_a_departments_answer_reaches_the_resident_despite_templates_hiding_remark(
    fake,
) -> None:
    """Since 2023-05 WeChat drops a template's first/remark: an answer goes as text
    while the 48 h window is open, and as the template only outside it (45015)."""
    sender = WeChatSender(WeChatClient("wxapp", "s3cret", fake.base), "TPL-1")
    try:
        await sender.send("o1", _update("路灯已于今日修复"))
        assert fake.sends() == [
            {
                "touser": "o1",
                "msgtype": "text",
                "text": {"content": _update("路灯已于今日修复")["text"]},
            }
        ]
        fake.send_errors = [45015]
        await sender.send("o1", _update("路灯已于今日修复"))
        template = fake.sends()[-1]
        assert template["template_id"] == "TPL-1"
        assert template["data"]["keyword1"] == {"value": "2026112200123"}
        # a status change without an answer stays a template message
        await sender.send("o1", _update(None))
        assert fake.sends()[-1]["template_id"] == "TPL-1"
        assert set(fake.sends()[-1]) == {"touser", "template_id", "data"}
    finally:
        await sender.stop()


async def test_token_is_fetched_with_the_documented_body(fake) -> None:
    client = WeChatClient("wxapp", "s3cret", fake.base)
    try:
        await client.access_token()
    finally:
        await client.stop()
    path, query, body = fake.calls[0]
    assert (path, query) == ("/cgi-bin/stable_token", {})  # POST JSON, nothing in the URL
    assert body == {
        "grant_type": "client_credential",
        "appid": "wxapp",
        "secret": "s3cret",
        "force_refresh": False,  # normal mode: never revoke the token other instances use
    }


async def test_menu_is_published_with_the_documented_shape(tmp_path, fake) -> None:
    from channels.wechat import publish_menu

    settings = make_settings(
        tmp_path,
        "sqlite+aiosqlite:///x.db",
        wechat_token=rig.TOKEN,
        wechat_app_id="wxapp",
        wechat_app_secret="s3cret",
        wechat_api_base=fake.base,
    )
    await publish_menu(settings)
    (body,) = [c[2] for c in fake.calls if c[0] == "/cgi-bin/menu/create"]
    names = [b["name"] for b in body["button"]]
    assert names == ["我要反映", "我的工单", "紧急求助"]
    assert all(b["type"] == "click" and len(b["key"].encode()) <= 128 for b in body["button"])
    assert all(len(n.encode()) <= 16 for n in names)  # 一级菜单 at most 4 Chinese characters
    assert "我要反映".encode() in fake.raw_bodies[0]


# ---------------------------------------------------------------- template layouts


def test_template_values_fit_their_fields_type_rules() -> None:
    """WeChat refuses a value that breaks its field's type (47003, permanent): each is
    fitted before sending, so the resident always hears of the update."""
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from channels.wechat.template import TemplateLayout

    layout = TemplateLayout.parse(
        "character_string1=number,phrase2=status,time3=at,thing4=reply,date5=at,"
        "thing6=text:市民热线\n12345"
    )
    update = {
        **_update("路灯已于今日修复，感谢您对城市建设的关心和支持，如有问题请再来电"),
        "status_text": "已答复 (replied)",
        "number": "2026112200123号",
        "at": "2026-11-23T07:01:30+00:00",
    }
    data = layout.data(update, ZoneInfo("Asia/Shanghai"), datetime.now(UTC))
    assert data == {
        "character_string1": "2026112200123",  # ASCII only
        "phrase2": "已答复",  # Chinese only, at most 5
        "time3": "2026年11月23日 15:01",  # the city's time
        "thing4": "路灯已于今日修复，感谢您对城市建设的关…",  # 20 with the ellipsis
        "date5": "2026年11月23日",
        "thing6": "市民热线 12345",  # no line breaks
    }
    assert len(data["thing4"]) == 20


@pytest.mark.parametrize(
    "spec",
    [
        "thing4",  # no source
        "thing4=answer",  # unknown source
        "Thing 4=number",  # not a field name
        "thing4=number,thing4=status",  # twice
    ],
)
def test_a_bad_template_layout_is_refused_at_start(tmp_path, spec: str) -> None:
    from hotline.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match=r"(?i)wechat_template_fields"):
        load_settings(
            database_url=f"sqlite+aiosqlite:///{tmp_path}/x.db", wechat_template_fields=spec
        )


async def test_a_typed_template_gets_its_fields_from_the_layout(fake) -> None:
    from zoneinfo import ZoneInfo

    from channels.wechat.template import TemplateLayout

    layout = TemplateLayout.parse("character_string1=number,phrase2=status,time3=at")
    sender = WeChatSender(
        WeChatClient("wxapp", "s3cret", fake.base), "TPL-2", layout, ZoneInfo("Asia/Shanghai")
    )
    try:
        await sender.send("o1", {**_update(None), "at": "2026-11-23T01:00:00Z"})
        sent = fake.sends()[-1]
        assert sent["template_id"] == "TPL-2"
        assert sent["data"] == {
            "character_string1": {"value": "2026112200123"},
            "phrase2": {"value": "已派发"},
            "time3": {"value": "2026年11月23日 09:00"},
        }
    finally:
        await sender.stop()
