"""The /wechat webhook (a plain aiohttp route: WeChat speaks XML, not our JSON API).

GET answers WeChat's server verification. POST takes a push in plaintext,
compatible or safe (AES) mode, stores it through the intake (idempotent on MsgId)
and answers within WeChat's 5 seconds with a passive reply (the emergency number,
a bot prompt, the ticket number), encrypted in safe mode, or "success". WeChat does
not wait longer (after three tries the resident sees "该公众号暂时无法提供服务"): a
message not handled within `REPLY_BUDGET_S` is answered "success" and its replies
follow as customer-service messages, as do replies longer than WeChat takes.

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
from typing import Any

from aiohttp import web

from channels.hub import ChannelHub
from channels.message import InboundMessage, Receipt
from channels.outbox import DeliveryError
from channels.wechat.const import CHANNEL, MAX_BODY_BYTES, REPLY_BUDGET_S
from channels.wechat.crypto import DecryptError, MessageCrypto, SignatureError, check
from channels.wechat.inbound import (
    ParseError,
    parse_xml,
    split_text,
    text_reply,
    to_message,
    xml_safe,
)
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
    template_fields: str | None = None  # see channels.wechat.template


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
        self.reply_budget_s = REPLY_BUDGET_S
        self._tasks: set[asyncio.Future[Any]] = set()

    def _fresh(self, timestamp: str) -> bool:
        if not timestamp.isdigit() or len(timestamp) > 12:
            return False
        if self.config.max_age_s == 0:
            return True
        return abs(self.clock() - int(timestamp)) <= self.config.max_age_s

    async def verify(self, request: web.Request) -> web.StreamResponse:
        """Server verification: echo `echostr` if the signature is WeChat's.

        The official account checks the URL the same way in every mode: `signature`
        over (token, timestamp, nonce) and a plain echostr, answered as the body and
        nothing else. Only without `signature` is an encrypted echostr with
        `msg_signature` (the 企业微信-style check) tried."""
        q = request.query
        ts, nonce, echostr = q.get("timestamp", ""), q.get("nonce", ""), q.get("echostr", "")
        try:
            if "signature" not in q and "msg_signature" in q and self.crypto is not None:
                plain = self.crypto.decrypt(echostr, q.get("msg_signature"), ts, nonce)
                return _plain(plain)
            check(q.get("signature"), self.config.token, ts, nonce)
        except (SignatureError, DecryptError):
            log.warning("wechat verification with a bad signature from %s", request.remote)
            return _plain("invalid signature", 403)
        return _plain(echostr)

    async def receive(self, request: web.Request) -> web.StreamResponse:
        started = asyncio.get_running_loop().time()
        q = request.query
        ts, nonce = q.get("timestamp", ""), q.get("nonce", "")
        safe = q.get("encrypt_type", "raw").lower() == "aes"
        signed = q.get("signature") is not None or not safe
        try:
            if signed:
                check(q.get("signature"), self.config.token, ts, nonce)
        except SignatureError:
            log.warning("wechat push with a bad signature from %s", request.remote)
            return _plain("invalid signature", 403)
        if not self._fresh(ts):
            log.warning("wechat push with a stale or bad timestamp %r", ts[:20])
            return _plain("stale timestamp", 403)
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return _plain("body too large", 413)
        body = await self._read_body(request)
        if body is None:
            return _plain("body too large", 413)
        try:
            outer = parse_xml(body)
            if safe and self.crypto is None and signed and "MsgType" in outer:
                # compatible mode (明文 and 密文 side by side) without our AES key: the
                # signed plaintext half is the message, and a plain reply is allowed
                log.warning("wechat compatible-mode push read as plaintext: AES key unset")
                safe = False
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
        # not cancelled with the request: WeChat hanging up must not stop a write
        task = self._keep(asyncio.ensure_future(self.hub.receive(msg, inline=True)))
        budget = self.reply_budget_s - (asyncio.get_running_loop().time() - started)
        if not await _within(task, budget):
            log.warning(
                "wechat message %s not handled within %.1fs: answered success, replies follow "
                "as customer-service messages",
                msg.external_id,
                self.reply_budget_s,
            )
            self._keep(asyncio.ensure_future(self._answer_later(task, msg.sender_id)))
            return _plain(SUCCESS)
        try:
            receipt = task.result()
        except StoreUnavailable:
            log.error(
                "store unavailable: wechat message %s not kept; WeChat will retry", msg.external_id
            )
            return _plain("unavailable", 503)
        return self._reply(msg, receipt, encrypt=safe, nonce=nonce)

    async def _read_body(self, request: web.Request) -> bytes | None:
        """The whole body, or None past `MAX_BODY_BYTES`. read() returns what has arrived
        so far: a body split across TCP segments must be read to its end."""
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_BODY_BYTES:
            chunk = await request.content.read(MAX_BODY_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        body = b"".join(chunks)
        return None if len(body) > MAX_BODY_BYTES else body

    def _reply(
        self, msg: InboundMessage, receipt: Receipt, *, encrypt: bool, nonce: str
    ) -> web.StreamResponse:
        """The passive reply (encrypted in safe mode), or "success" when there is none.

        WeChat refuses a text over `MAX_TEXT_BYTES`: a longer answer goes out as
        customer-service messages, in order, and WeChat is told "success" (without a
        sender the passive reply carries the first part). A retry gets the same passive
        reply again (the first answer may not have reached WeChat), but customer-service
        messages only once."""
        pieces = split_text(xml_safe("\n\n".join(receipt.replies)))
        if not pieces:
            return _plain(SUCCESS)
        if len(pieces) > 1 and self.hub.senders.get(CHANNEL) is not None:
            if not receipt.duplicate:
                self._keep(asyncio.ensure_future(self._push(msg.sender_id, pieces)))
            return _plain(SUCCESS)
        account = str(msg.data.get("account") or "")
        reply = text_reply(msg.sender_id, account, pieces[0])
        if encrypt and self.crypto is not None:
            reply = self.crypto.encrypt(reply, nonce=nonce)
        return web.Response(text=reply, content_type="application/xml")

    async def _answer_later(self, task: asyncio.Future[Receipt], openid: str) -> None:
        """The replies of a message answered "success" at the deadline, once it is handled."""
        try:
            receipt = await task
        except StoreUnavailable:
            log.error("store unavailable: a wechat message answered success was not kept")
            return
        except Exception:
            log.exception("wechat message answered success could not be handled")
            return
        if receipt.replies and not receipt.duplicate:  # a duplicate's were sent the first time
            await self._push(openid, split_text(xml_safe("\n\n".join(receipt.replies))))

    async def _push(self, openid: str, pieces: list[str]) -> None:
        """Send texts as customer-service messages, one after the other (best effort:
        the resident has just written, so the 48 h window is open)."""
        sender = self.hub.senders.get(CHANNEL)
        if sender is None:
            log.warning("wechat replies for %s dropped: no sender (APP_ID/APP_SECRET)", openid)
            return
        for piece in pieces:
            try:
                await sender.send(openid, {"type": "text", "text": piece})
            except DeliveryError as exc:
                log.warning("wechat reply to %s not delivered: %s", openid, exc)
                return

    def _keep(self, task: asyncio.Future[Any]) -> asyncio.Future[Any]:
        """Hold a reference until the task ends (the loop keeps only weak ones)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


async def _within(task: asyncio.Future[Any], seconds: float) -> bool:
    """Whether `task` ends within `seconds` (it is never cancelled). `asyncio.wait`
    would do, at twice the cost per message on the busiest webhook: one future, one
    timer, one callback is all this needs."""
    if task.done():
        return True
    loop = asyncio.get_running_loop()
    woken = loop.create_future()

    def wake(_: Any = None) -> None:
        if not woken.done():
            woken.set_result(None)

    timer = loop.call_later(max(0.0, seconds), wake)
    task.add_done_callback(wake)
    try:
        await woken
    finally:
        timer.cancel()
        task.remove_done_callback(wake)
    return task.done()
