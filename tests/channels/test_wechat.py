"""The /wechat webhook against WeChat's own vectors and hostile input, and sending
through a local fake WeChat API (token cache, refresh on 40001, restart)."""

from __future__ import annotations

import asyncio
import time

import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient, TestServer

from channels import HUB
from channels.models import message_t
from channels.wechat.client import WeChatClient
from channels.wechat.crypto import MessageCrypto, sign
from channels.wechat.inbound import parse_xml
from tests.channels import wechat_rig as rig
from tests.conftest import Api, _seed, make_settings

_service = rig.service


@pytest.fixture
async def fake(aiohttp_server):  # type: ignore[no-untyped-def]
    return await rig.serve_fake(aiohttp_server)


@pytest.fixture
async def wx(aiohttp_client, sqlite_url, tmp_path, fake):  # type: ignore[no-untyped-def]
    app = await _service(tmp_path, sqlite_url, fake.base)
    client = await aiohttp_client(app)
    from hotline.appkeys import DEPS

    await _seed(app[DEPS])
    return Api(client, app)


async def _post(wx, body: str, query: dict[str, str]):  # type: ignore[no-untyped-def]
    return await wx.client.post("/wechat", params=query, data=body.encode())


async def _stored(wx) -> list:  # type: ignore[no-untyped-def]
    async with wx.app[HUB].deps.db.read() as conn:
        return list(await conn.execute(sa.select(message_t).where(message_t.c.direction == "in")))


# ---------------------------------------------------------------- verification


async def test_server_verification_echoes_only_for_a_good_signature(wx) -> None:
    q = rig.signed_query()
    r = await wx.client.get("/wechat", params={**q, "echostr": "8321947"})
    assert (r.status, await r.text()) == (200, "8321947")
    q["signature"] = "0" * 40
    r = await wx.client.get("/wechat", params={**q, "echostr": "8321947"})
    assert r.status == 403


@pytest.fixture
async def sample(aiohttp_client, sqlite_url, tmp_path, fake):  # type: ignore[no-untyped-def]
    """Configured with the official sample's token, key and AppID (timestamps of 2014:
    the age check is off, as HOTLINE_WECHAT_MAX_AGE_S=0 allows)."""
    app = await _service(
        tmp_path,
        sqlite_url,
        fake.base,
        token=rig.SAMPLE_TOKEN,
        aes_key=rig.SAMPLE_AES_KEY,
        app_id=rig.SAMPLE_APP_ID,
        wechat_max_age_s=0,
    )
    return Api(await aiohttp_client(app), app)


async def test_official_sample_url_verification(sample) -> None:
    r = await sample.client.get(
        "/wechat",
        params={
            "msg_signature": rig.SAMPLE_VERIFY_SIGNATURE,
            "timestamp": rig.SAMPLE_VERIFY_TIMESTAMP,
            "nonce": rig.SAMPLE_VERIFY_NONCE,
            "echostr": rig.SAMPLE_VERIFY_ECHOSTR,
        },
    )
    assert r.status == 200
    assert (await r.text()).isdigit()


async def test_official_sample_message_is_decrypted_and_stored(sample) -> None:
    q = {
        "msg_signature": rig.SAMPLE_MSG_SIGNATURE,
        "timestamp": rig.SAMPLE_TIMESTAMP,
        "nonce": rig.SAMPLE_NONCE,
        "encrypt_type": "aes",
    }
    r = await _post(sample, rig.SAMPLE_BODY, q)
    assert (r.status, await r.text()) == (200, "success")
    (row,) = await _stored(sample)
    assert (row.external_id, row.text, row.kind) == ("4561255354251345929", "hello", "text")
    bad = {**q, "msg_signature": "f" * 40}
    assert (await _post(sample, rig.SAMPLE_BODY, bad)).status == 403


async def test_the_age_check_refuses_the_2014_sample_by_default(wx) -> None:
    q = rig.signed_query(ts=rig.SAMPLE_TIMESTAMP)
    r = await _post(wx, rig.text_xml("旧消息"), q)
    assert r.status == 403
    assert await _stored(wx) == []


# ---------------------------------------------------------------- receiving


async def test_plaintext_message_is_stored_and_answered_success(wx) -> None:
    r = await _post(wx, rig.text_xml("小区电梯坏了三天"), rig.signed_query())
    assert (r.status, await r.text()) == (200, "success")
    (row,) = await _stored(wx)
    assert (row.channel, row.external_id, row.text) == (
        "wechat",
        "1234567890123456",
        "小区电梯坏了三天",
    )
    convs = await (await wx.get("/api/v1/conversations?waiting=true")).json()
    assert [c["channel"] for c in convs["items"]] == ["wechat"]


async def test_safe_mode_emergency_gets_an_encrypted_passive_reply(wx) -> None:
    q, body = rig.encrypted(rig.text_xml("厨房着火了！", msg_id="77"))
    r = await _post(wx, body, q)
    assert r.status == 200
    envelope = parse_xml(await r.text())
    assert envelope["MsgSignature"] == sign(
        rig.TOKEN, envelope["TimeStamp"], envelope["Nonce"], envelope["Encrypt"]
    )
    crypto = MessageCrypto(rig.TOKEN, rig.AES_KEY, rig.APP_ID)
    inner = parse_xml(
        crypto.decrypt(
            envelope["Encrypt"], envelope["MsgSignature"], envelope["TimeStamp"], envelope["Nonce"]
        )
    )
    assert inner["ToUserName"] == "oRESIDENT" and inner["FromUserName"] == "gh_hotline"
    assert inner["MsgType"] == "text" and "119" in inner["Content"]
    # WeChat retries (same MsgId): stored once, same answer
    again = await _post(wx, body, q)
    inner2 = parse_xml(await again.text())
    assert "Encrypt" in inner2
    assert len(await _stored(wx)) == 1


async def test_replayed_plaintext_push_is_stored_once(wx) -> None:
    q = rig.signed_query()
    body = rig.text_xml("重复", msg_id="5555")
    results = await asyncio.gather(*(_post(wx, body, q) for _ in range(5)))
    assert {r.status for r in results} == {200}
    assert len(await _stored(wx)) == 1


async def test_bad_signatures_are_refused(wx) -> None:
    q = rig.signed_query()
    q["signature"] = "a" * 40
    assert (await _post(wx, rig.text_xml("hi"), q)).status == 403
    q = rig.signed_query()
    del q["signature"]
    assert (await _post(wx, rig.text_xml("hi"), q)).status == 403
    q, body = rig.encrypted(rig.text_xml("hi"))
    q["msg_signature"] = "b" * 40
    assert (await _post(wx, body, q)).status == 403
    q = rig.signed_query(ts="abc")
    assert (await _post(wx, rig.text_xml("hi"), q)).status == 403
    assert await _stored(wx) == []


async def test_a_one_megabyte_body_is_refused_cleanly(wx) -> None:
    body = "<xml>" + "x" * 1_048_576 + "</xml>"
    r = await _post(wx, body, rig.signed_query())
    assert r.status == 413
    assert await _stored(wx) == []


@pytest.mark.parametrize(
    "body",
    [
        "<xml><ToUserName>",  # truncated
        "not xml at all",
        "<!DOCTYPE x [<!ENTITY a 'aaaa'>]><xml><Content>&a;</Content></xml>",
        "<xml><MsgType>text</MsgType></xml>",  # no sender
        "<xml><FromUserName>o</FromUserName><CreateTime>x</CreateTime></xml>",
        "<xml><FromUserName><a>nested</a></FromUserName></xml>",
        "",
    ],
)
async def test_garbage_gets_success_never_a_5xx(wx, body: str) -> None:
    r = await _post(wx, body, rig.signed_query())
    assert (r.status, await r.text()) == (200, "success")
    assert await _stored(wx) == []


async def test_safe_mode_garbage_inside_a_valid_envelope_gets_success(wx) -> None:
    ts, nonce = str(int(time.time())), "n"
    enc = "bm90IHJlYWxseSBlbmNyeXB0ZWQ="
    q = rig.signed_query(ts=ts, nonce=nonce)
    q.update(encrypt_type="aes", msg_signature=sign(rig.TOKEN, ts, nonce, enc))
    body = f"<xml><Encrypt><![CDATA[{enc}]]></Encrypt></xml>"
    assert (await _post(wx, body, q)).status == 200


_FLAT_CASES = [
    rig.text_xml("路灯坏了 <b>&amp; ]] > 😀", msg_id="77"),  # markup-like text inside CDATA
    "<xml><A>plain &amp; text</A></xml>",  # an entity: the parser's job
    "<xml><A><![CDATA[x]]]]><![CDATA[>y]]></A></xml>",  # "]]>" split over two sections
    "<xml><A> <![CDATA[x]]></A></xml>",  # text around a CDATA section
    "<xml>\n  <A><![CDATA[]]></A>\n  <B></B>\n  <C>  spaced  </C>\n</xml>\n",
    "<xml><A>1</A><A>2</A></xml>",  # a repeated element: the last one wins
    "<xml><A x='1'>attr</A></xml>",
    "<xml><A><!-- c --></A></xml>",
    "<xml><A><B>n</B></A></xml>",
    "<xml><A/><B>b</B></xml>",
    "<?xml version='1.0' encoding='utf-8'?><xml><A>decl</A></xml>",
    "\ufeff<xml><A>bom</A></xml>",
    "<xml><A>cr\r\nlf</A></xml>",
    "<xml><A>ctl\x01</A></xml>",  # not XML at all
    "<xml><A>]]></A></xml>",  # not XML either
    "<xml><A>x</B></xml>",
    "<xml><A>x</A>",
    "<xml><A>x</A></xml>trailing",
    "<xml><A>x</A></xml><xml></xml>",
    "<root><A>x</A></root>",
    "\u3000<xml><A>ideographic space</A></xml>",
    "<xml><Ä>non-ascii name</Ä></xml>",
]


@pytest.mark.parametrize("doc", _FLAT_CASES)
def test_flat_fast_path_reads_what_the_xml_parser_reads(doc: str) -> None:
    """WeChat's flat pushes skip ElementTree; every document must still read exactly as
    ElementTree reads it, or be refused exactly when ElementTree refuses it."""
    from xml.etree import ElementTree

    from channels.wechat.inbound import ParseError

    def reference() -> dict[str, object] | None:
        try:
            root = ElementTree.fromstring(doc.encode())
        except ElementTree.ParseError:
            return None
        if root.tag != "xml":
            return None
        return {c.tag: {"children": len(c)} if len(c) else (c.text or "") for c in root}

    want = reference()
    for given in (doc, doc.encode()):
        try:
            got: dict[str, object] | None = parse_xml(given)
        except ParseError:
            got = None
        assert got == want


def test_wechat_shaped_pushes_skip_the_xml_parser() -> None:
    from channels.wechat.inbound import _parse_flat

    _q, envelope = rig.encrypted(rig.text_xml("着火了"))
    assert _parse_flat(envelope) is not None
    assert _parse_flat(rig.text_xml("着火了", msg_id="5")) == parse_xml(
        rig.text_xml("着火了", msg_id="5").encode()
    )
    assert _parse_flat(_FLAT_CASES[4]) is not None  # WeChat's sample layout, with newlines


def _xml(mtype: str, extra: str, msg_id: str | None = "9001") -> str:
    mid = f"<MsgId>{msg_id}</MsgId>" if msg_id else ""
    return (
        "<xml><ToUserName><![CDATA[gh_hotline]]></ToUserName>"
        "<FromUserName><![CDATA[oTYPES]]></FromUserName>"
        f"<CreateTime>{int(time.time())}</CreateTime>"
        f"<MsgType><![CDATA[{mtype}]]></MsgType>{extra}{mid}</xml>"
    )


async def test_every_message_type_is_normalized(wx) -> None:
    q = rig.signed_query
    pushes = [
        _xml("image", "<PicUrl>http://mmbiz/p.jpg</PicUrl><MediaId>IMG1</MediaId>", "1"),
        _xml(
            "voice",
            "<MediaId>V1</MediaId><Format>amr</Format><Recognition>路灯不亮</Recognition>",
            "2",
        ),
        _xml("video", "<MediaId>VID1</MediaId><ThumbMediaId>T1</ThumbMediaId>", "3"),
        _xml(
            "location",
            "<Location_X>39.9</Location_X><Location_Y>116.4</Location_Y>"
            "<Scale>15</Scale><Label>天安门</Label>",
            "4",
        ),
        _xml("link", "<Title>新闻</Title><Description>一篇</Description><Url>http://x</Url>", "5"),
        _xml("shortvideo", "<MediaId>SV</MediaId>", "6"),
        _xml("miniprogrampage", "<Title>t</Title>", "7"),  # unknown to us: kept as an event
    ]
    for body in pushes:
        r = await _post(wx, body, q())
        assert (r.status, await r.text()) == (200, "success"), body
    rows = {r.external_id: r for r in await _stored(wx)}
    assert rows["1"].kind == "image" and rows["1"].media[0]["ref"] == "IMG1"
    assert rows["2"].kind == "voice" and rows["2"].text == "路灯不亮"
    assert rows["3"].kind == "video" and rows["3"].media[0]["ref"] == "VID1"
    assert rows["4"].location == {"lat": 39.9, "lon": 116.4, "label": "天安门"}
    assert rows["5"].kind == "link" and rows["5"].data["url"] == "http://x"
    assert rows["6"].kind == "video"
    assert rows["7"].kind == "event" and rows["7"].data["event"] == "unsupported:miniprogrampage"


async def test_events_subscribe_menu_location_and_template_receipts(wx) -> None:
    def ev(name: str, extra: str = "") -> str:
        return _xml("event", f"<Event><![CDATA[{name}]]></Event>{extra}", msg_id=None)

    r = await _post(wx, ev("subscribe"), rig.signed_query())
    assert "12345" in parse_xml(await r.text())["Content"]
    r = await _post(wx, ev("CLICK", "<EventKey>REPORT</EventKey>"), rig.signed_query())
    assert "1 咨询" in parse_xml(await r.text())["Content"]
    for body in (
        ev("VIEW", "<EventKey>http://city.example/app</EventKey>"),
        ev(
            "LOCATION",
            "<Latitude>23.1</Latitude><Longitude>113.3</Longitude><Precision>1</Precision>",
        ),
        ev("TEMPLATESENDJOBFINISH", "<MsgID>200163836</MsgID><Status>success</Status>"),
        ev("unsubscribe"),
    ):
        r = await _post(wx, body, rig.signed_query())
        assert (r.status, await r.text()) == (200, "success")
    events = [r.data["event"] for r in await _stored(wx)]
    assert events == [
        "subscribe",
        "click",
        "view",
        "location",
        "templatesendjobfinish",
        "unsubscribe",
    ]
    # an event retried by WeChat (same FromUserName + CreateTime) is stored once
    body = ev("VIEW", "<EventKey>x</EventKey>").replace(
        f"<CreateTime>{int(time.time())}", f"<CreateTime>{int(time.time()) + 7}"
    )
    await _post(wx, body, rig.signed_query())
    await _post(wx, body, rig.signed_query())
    assert len(await _stored(wx)) == 7


# ---------------------------------------------------------------- sending


async def test_agent_reply_is_a_customer_service_message(wx, fake) -> None:
    await _post(wx, rig.text_xml("请问几点下班"), rig.signed_query())
    convs = await (await wx.get("/api/v1/conversations")).json()
    cid = convs["items"][0]["id"]
    hub = wx.app[HUB]
    await hub.outbox.stop()
    r = await wx.post(f"/api/v1/conversations/{cid}/messages", {"text": "下午五点"})
    assert r.status == 201
    await hub.outbox.run_once()
    assert fake.sends() == [
        {"touser": "oRESIDENT", "msgtype": "text", "text": {"content": "下午五点"}}
    ]
    assert fake.tokens_issued == 1
    # a second send reuses the cached token
    await wx.post(f"/api/v1/conversations/{cid}/messages", {"text": "周末休息"})
    await hub.outbox.run_once()
    assert fake.tokens_issued == 1 and len(fake.sends()) == 2


async def test_token_refreshed_once_on_40001(fake) -> None:
    client = WeChatClient("wxapp", "s3cret", fake.base)
    await client.start()
    try:
        await client.send_text("o1", "a")
        fake.token_errors = 1
        await client.send_text("o1", "b")
        assert fake.token_fetches == 2  # dropped and fetched again once
        assert [b["text"]["content"] for b in fake.sends()] == ["a", "b", "b"]
        # a permanent error is reported as such (no retry)
        fake.send_errors = [43004]
        with pytest.raises(Exception) as info:
            await client.send_text("o1", "c")
        assert getattr(info.value, "permanent", False) is True
    finally:
        await client.stop()


async def test_instances_sharing_an_app_id_share_one_token(fake) -> None:
    """Two instances of the service, one AppID: the second's fetch must not revoke the
    first's token (it would with cgi-bin/token), so both keep sending."""
    first = WeChatClient("wxapp", "s3cret", fake.base)
    second = WeChatClient("wxapp", "s3cret", fake.base)
    try:
        await first.send_text("o1", "from the first")
        await second.send_text("o2", "from the second")
        await first.send_text("o1", "the first again")
        assert await first.access_token() == await second.access_token() == "TOKEN-1"
        assert fake.tokens_issued == 1 and fake.token_fetches == 2
        assert len(fake.sends()) == 3  # no call needed a retry
    finally:
        await first.stop()
        await second.stop()


async def test_token_fetch_is_single_flight_and_refreshes_before_expiry(fake) -> None:
    now = [1000.0]
    client = WeChatClient("wxapp", "s3cret", fake.base, clock=lambda: now[0])
    await client.start()
    try:
        tokens = await asyncio.gather(*(client.access_token() for _ in range(20)))
        assert set(tokens) == {"TOKEN-1"} and fake.token_fetches == 1
        now[0] += 7200 - 299  # inside the last 5 minutes: fetched anew before it expires
        fake.rotate()  # as WeChat does in a token's last 5 minutes
        assert await client.access_token() == "TOKEN-2"
        assert fake.token_fetches == 2
    finally:
        await client.stop()


async def test_ticket_updates_reach_the_resident(wx, fake) -> None:
    hub = wx.app[HUB]
    await hub.outbox.stop()
    await _post(wx, rig.text_xml("路灯不亮，幸福小区"), rig.signed_query())
    cid = (await (await wx.get("/api/v1/conversations")).json())["items"][0]["id"]
    t = await (await wx.post(f"/api/v1/conversations/{cid}/ticket", {"kind": "complaint"})).json()
    await wx.move(t["number"], "dispatch", {"department": "urban-mgmt"})
    await hub.notifier.drain()
    await hub.outbox.run_once()
    texts = [b["text"]["content"] for b in fake.sends()]
    assert t["number"] in texts[0] and "已派发" in texts[1]


async def test_restart_keeps_accepted_messages_and_delivers_the_outbox(
    aiohttp_client, sqlite_url, tmp_path, fake
) -> None:
    app = await _service(tmp_path, sqlite_url, fake.base)
    client = TestClient(TestServer(app))
    await client.start_server()
    from hotline.appkeys import DEPS

    await _seed(app[DEPS])
    api = Api(client, app)
    await app[HUB].outbox.stop()  # "crash" before anything is delivered
    r = await _post(api, rig.text_xml("重启前的消息", msg_id="42"), rig.signed_query())
    assert r.status == 200
    cid = (await (await api.get("/api/v1/conversations")).json())["items"][0]["id"]
    assert (
        await api.post(f"/api/v1/conversations/{cid}/messages", {"text": "已收到"})
    ).status == 201
    await client.close()
    assert fake.sends() == []

    app2 = await _service(tmp_path, sqlite_url, fake.base)
    api2 = Api(await aiohttp_client(app2), app2)
    for _ in range(100):  # the outbox task picks up what the first run left
        if fake.sends():
            break
        await asyncio.sleep(0.05)
    assert fake.sends() == [
        {"touser": "oRESIDENT", "msgtype": "text", "text": {"content": "已收到"}}
    ]
    conv = await (await api2.get(f"/api/v1/conversations/{cid}")).json()
    assert [m["text"] for m in conv["messages"]] == ["重启前的消息", "已收到"]
    for _ in range(50):
        conv = await (await api2.get(f"/api/v1/conversations/{cid}")).json()
        if conv["messages"][1]["delivery"]["state"] == "sent":
            break
        await asyncio.sleep(0.05)
    assert conv["messages"][1]["delivery"]["state"] == "sent"
    # the retry of the message WeChat sent before the crash is recognised
    r = await _post(api2, rig.text_xml("重启前的消息", msg_id="42"), rig.signed_query())
    assert r.status == 200 and len(await _stored(api2)) == 1


def test_aes_key_setting_is_validated(tmp_path) -> None:
    from hotline.settings import SettingsError

    with pytest.raises(SettingsError, match="43 characters"):
        make_settings(tmp_path, "sqlite+aiosqlite:///x.db", wechat_aes_key="short")
    with pytest.raises(SettingsError, match="base64"):
        make_settings(tmp_path, "sqlite+aiosqlite:///x.db", wechat_aes_key="!" * 43)
    ok = make_settings(tmp_path, "sqlite+aiosqlite:///x.db", wechat_aes_key=rig.AES_KEY)
    assert ok.wechat_aes_key == rig.AES_KEY
