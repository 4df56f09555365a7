"""A fake WeChat API server that records calls, and the service wired to it."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from aiohttp import web

from channels.wechat.crypto import MessageCrypto, sign

# the official WXBizMsgCrypt sample (企业微信 / 公众平台 加解密示例)
SAMPLE_TOKEN = "QDG6eK"
SAMPLE_AES_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
SAMPLE_APP_ID = "wx5823bf96d3bd56c7"
SAMPLE_MSG_SIGNATURE = "477715d11cdb4164915debcba66cb864d751f3e6"
SAMPLE_TIMESTAMP = "1409659813"
SAMPLE_NONCE = "1372623149"
SAMPLE_ENCRYPT = (
    "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3"
    "QczcdCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48k"
    "zJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun"
    "1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5w"
    "LVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z"
    "1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q=="
)
SAMPLE_BODY = (
    "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName>"
    f"<Encrypt><![CDATA[{SAMPLE_ENCRYPT}]]></Encrypt>"
    "<AgentID><![CDATA[218]]></AgentID></xml>"
)
# the URL-verification sample of the same kit (encrypted echostr, msg_signature)
SAMPLE_VERIFY_SIGNATURE = "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3"
SAMPLE_VERIFY_TIMESTAMP = "1409659589"
SAMPLE_VERIFY_NONCE = "263014780"
SAMPLE_VERIFY_ECHOSTR = (
    "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ=="
)


class FakeWeChat:
    """Records every call; `token_errors` makes the next sends answer 40001.

    Tokens as getStableAccessToken hands them out: the same one to every caller while
    it is valid; a new one only when there is none, on `force_refresh`, or once
    `rotate()` says the platform's own early rollover has happened."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], Any]] = []
        self.raw_bodies: list[bytes] = []  # as they came over the wire
        self.tokens_issued = 0
        self.token_fetches = 0
        self._rotate = False
        self.token_errors = 0
        self.send_errors: list[int] = []
        self.valid_token = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/cgi-bin/stable_token", self.token)
        app.router.add_post("/cgi-bin/message/custom/send", self.send)
        app.router.add_post("/cgi-bin/message/template/send", self.send)
        app.router.add_post("/cgi-bin/menu/create", self.send)
        return app

    async def token(self, request: web.Request) -> web.Response:
        if not request.content_type.startswith("application/json"):
            return web.json_response({"errcode": 47001, "errmsg": "data format error"})
        body = await request.json()
        self.calls.append((request.path, dict(request.query), body))
        if body.get("grant_type") != "client_credential":
            return web.json_response({"errcode": 40002, "errmsg": "invalid grant_type"})
        if body.get("appid") != "wxapp" or body.get("secret") != "s3cret":
            return web.json_response({"errcode": 40013, "errmsg": "invalid appid"})
        self.token_fetches += 1
        if not self.valid_token or self._rotate or body.get("force_refresh") is True:
            self._rotate = False
            self.tokens_issued += 1
            self.valid_token = f"TOKEN-{self.tokens_issued}"
        return web.json_response({"access_token": self.valid_token, "expires_in": 7200})

    def rotate(self) -> None:
        """The platform rolls the token over (its last five minutes): next fetch is new."""
        self._rotate = True

    async def send(self, request: web.Request) -> web.Response:
        self.raw_bodies.append(await request.read())
        body = await request.json()
        self.calls.append((request.path, dict(request.query), body))
        if self.token_errors:
            self.token_errors -= 1
            return web.json_response({"errcode": 40001, "errmsg": "invalid credential"})
        if request.query.get("access_token") != self.valid_token:
            return web.json_response({"errcode": 42001, "errmsg": "access_token expired"})
        if self.send_errors:
            code = self.send_errors.pop(0)
            return web.json_response({"errcode": code, "errmsg": "nope"})
        return web.json_response({"errcode": 0, "errmsg": "ok", "msgid": 1})

    def sends(self) -> list[dict[str, Any]]:
        ok = []
        for path, _q, body in self.calls:
            if path.endswith("/send") and body is not None:
                ok.append(body)
        return ok


TOKEN = "hotline-token"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
APP_ID = "wxapp"


def signed_query(token: str = TOKEN, ts: str | None = None, nonce: str = "n0nce") -> dict[str, str]:
    ts = ts or str(int(time.time()))
    return {"signature": sign(token, ts, nonce), "timestamp": ts, "nonce": nonce, "openid": "o"}


def text_xml(
    content: str, sender: str = "oRESIDENT", msg_id: str = "1234567890123456", ts: int | None = None
) -> str:
    return (
        "<xml><ToUserName><![CDATA[gh_hotline]]></ToUserName>"
        f"<FromUserName><![CDATA[{sender}]]></FromUserName>"
        f"<CreateTime>{ts or int(time.time())}</CreateTime>"
        "<MsgType><![CDATA[text]]></MsgType>"
        f"<Content><![CDATA[{content}]]></Content>"
        f"<MsgId>{msg_id}</MsgId></xml>"
    )


def encrypted(
    inner: str, ts: str | None = None, nonce: str = "n0nce"
) -> tuple[dict[str, str], str]:
    """Query and body as WeChat sends them in safe mode (encrypted by wechatpy)."""
    crypto = MessageCrypto(TOKEN, AES_KEY, APP_ID)
    ts = ts or str(int(time.time()))
    envelope = crypto.encrypt(inner, nonce=nonce, timestamp=ts)
    from channels.wechat.inbound import parse_xml

    enc = parse_xml(envelope)["Encrypt"]
    q = signed_query(ts=ts, nonce=nonce)
    q.update(encrypt_type="aes", msg_signature=sign(TOKEN, ts, nonce, enc))
    body = (
        "<xml><ToUserName><![CDATA[gh_hotline]]></ToUserName>"
        f"<Encrypt><![CDATA[{enc}]]></Encrypt></xml>"
    )
    return q, body


def sha1(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


async def service(tmp_path: Any, db_url: str, api_base: str, **overrides: Any) -> Any:
    """The whole service with WeChat configured against `api_base` (the fake), tables
    made from the models; `token`, `aes_key`, `app_id`, `app_secret` may be overridden."""
    from hotline.app import create_app
    from hotline.bootstrap import build_deps
    from tests.conftest import make_settings

    settings = make_settings(
        tmp_path,
        db_url,
        wechat_token=overrides.pop("token", TOKEN),
        wechat_aes_key=overrides.pop("aes_key", AES_KEY),
        wechat_app_id=overrides.pop("app_id", APP_ID),
        wechat_app_secret=overrides.pop("app_secret", "s3cret"),
        wechat_api_base=api_base,
        **overrides,
    )
    deps = build_deps(settings)
    await deps.db.create_all()
    return create_app(settings, deps=deps, migrate=False, watch_deadlines=False)


async def serve_fake(aiohttp_server: Any) -> FakeWeChat:
    """A FakeWeChat on a local port; `.base` is its URL."""
    f = FakeWeChat()
    server = await aiohttp_server(f.app())
    f.base = str(server.make_url("")).rstrip("/")  # type: ignore[attr-defined]
    return f
