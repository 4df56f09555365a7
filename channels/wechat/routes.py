"""The /wechat webhook (a plain aiohttp route: WeChat speaks XML, not our JSON API).

GET answers WeChat's server verification. POST takes a push in plaintext,
compatible or safe (AES) mode, stores it through the intake (idempotent on MsgId)
and answers within WeChat's 5 seconds with a passive reply (the emergency number,
a bot prompt, the ticket number), encrypted in safe mode, or "success".

Answers: 403 for a missing or wrong signature or a stale timestamp (the sender is
not WeChat); 413 for a body WeChat would never send; 200 "success" for anything
signed but unreadable (logged; WeChat would only retry it); 503 only if the store is
down, so WeChat retries what we could not keep.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from aiohttp import web

from channels.hub import ChannelHub
from channels.wechat.const import MAX_BODY_BYTES
from channels.wechat.crypto import DecryptError, MessageCrypto, SignatureError, check
from channels.wechat.inbound import ParseError, parse_xml, text_reply, to_message
from ticketing.store import StoreUnavailable

log = logging.getLogger(__name__)
SUCCESS = "success"


@dataclass(frozen=True)
class WeChatConfig:
    token: str
    aes_key: str | None = None
    app_id: str | None = None
    app_secret: str | None = None
    api_base: str = "https://api.weixin.qq.com"
    max_age_s: int = 300
    template_id: str | None = None


def _plain(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/plain")


class WeChatWebhook:
    def __init__(self, hub: ChannelHub, config: WeChatConfig) -> None:
        self.hub = hub
        self.config = config
        self.crypto = (
            MessageCrypto(config.token, config.aes_key, config.app_id)
            if config.aes_key and config.app_id
            else None
        )
        self.clock = time.time

    def _fresh(self, timestamp: str) -> bool:
        if not timestamp.isdigit() or len(timestamp) > 12:
            return False
        if self.config.max_age_s == 0:
            return True
        return abs(self.clock() - int(timestamp)) <= self.config.max_age_s

    async def verify(self, request: web.Request) -> web.StreamResponse:
        """Server verification: echo `echostr` if the signature is WeChat's. With
        `msg_signature` (the enterprise-style check) the echostr is encrypted."""
        q = request.query
        ts, nonce, echostr = q.get("timestamp", ""), q.get("nonce", ""), q.get("echostr", "")
        try:
            if "msg_signature" in q and self.crypto is not None:
                plain = self.crypto.decrypt(echostr, q.get("msg_signature"), ts, nonce)
                return _plain(plain)
            check(q.get("signature"), self.config.token, ts, nonce)
        except (SignatureError, DecryptError):
            log.warning("wechat verification with a bad signature from %s", request.remote)
            return _plain("invalid signature", 403)
        return _plain(echostr)

    async def receive(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        ts, nonce = q.get("timestamp", ""), q.get("nonce", "")
        safe = q.get("encrypt_type", "raw").lower() == "aes"
        try:
            if q.get("signature") is not None or not safe:
                check(q.get("signature"), self.config.token, ts, nonce)
        except SignatureError:
            log.warning("wechat push with a bad signature from %s", request.remote)
            return _plain("invalid signature", 403)
        if not self._fresh(ts):
            log.warning("wechat push with a stale or bad timestamp %r", ts[:20])
            return _plain("stale timestamp", 403)
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return _plain("body too large", 413)
        # read() returns what has arrived so far: a body split across TCP segments
        # must be read to its end (or until it is too large), not cut short
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_BODY_BYTES:
            chunk = await request.content.read(MAX_BODY_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        body = b"".join(chunks)
        if len(body) > MAX_BODY_BYTES:
            return _plain("body too large", 413)
        try:
            outer = parse_xml(body)
            if safe:
                if self.crypto is None:
                    log.error("wechat safe-mode push but HOTLINE_WECHAT_AES_KEY/APP_ID unset")
                    return _plain(SUCCESS)
                encrypted = outer.get("Encrypt")
                if not isinstance(encrypted, str) or not encrypted:
                    raise ParseError("safe mode without <Encrypt>")
                inner = parse_xml(self.crypto.decrypt(encrypted, q.get("msg_signature"), ts, nonce))
            else:
                inner = outer
            msg = to_message(inner)
        except SignatureError:
            log.warning("wechat push with a bad msg_signature from %s", request.remote)
            return _plain("invalid signature", 403)
        except (ParseError, DecryptError, ValueError) as exc:
            log.warning("wechat push not understood (%s); answered success", exc)
            return _plain(SUCCESS)
        except Exception:  # a parsing bug must not turn WeChat's push into a 5xx
            log.exception("wechat push could not be read; answered success")
            return _plain(SUCCESS)
        try:
            # shielded: WeChat hanging up must not cancel a write already on its way
            receipt = await asyncio.shield(self.hub.receive(msg, inline=True))
        except StoreUnavailable:
            log.error(
                "store unavailable: wechat message %s not kept; WeChat will retry", msg.external_id
            )
            return _plain("unavailable", 503)
        if not receipt.replies:
            return _plain(SUCCESS)
        account = str(msg.data.get("account") or "")
        reply = text_reply(msg.sender_id, account, "\n\n".join(receipt.replies))
        if safe and self.crypto is not None:
            reply = self.crypto.encrypt(reply, nonce=nonce)
        return web.Response(text=reply, content_type="application/xml")
