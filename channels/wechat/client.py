"""Calls to the WeChat API (aiohttp; wechatpy's client is blocking): access tokens,
customer-service messages (客服消息), template messages, the menu.

The access token comes from getStableAccessToken (`POST /cgi-bin/stable_token`, normal
mode), not `cgi-bin/token`: several instances of the service share one AppID, and with
`cgi-bin/token` each instance's fetch would revoke the others' token within five
minutes, a failure that shows only in production. In normal mode every caller gets
the same token while it is valid, and WeChat rolls it over itself in its last five
minutes (both valid meanwhile). Force-refresh mode (20 a day, revokes the token
everywhere) is left to an operator after a leak.

The token is cached and refreshed `TOKEN_MARGIN_S` before it expires, by one request
however many senders need it at that moment (single flight); an answer saying the
token is invalid or expired (40001 / 42001 / 40014) drops it and retries the call
once with the one WeChat hands out now.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any

import aiohttp

from channels.outbox import DeliveryError
from channels.wechat.const import (
    BUSY_ERROR,
    BUSY_RETRY_S,
    CHANNEL,
    CUSTOM_SEND_PATH,
    MENU_CREATE_PATH,
    OUTSIDE_WINDOW_ERRORS,
    PERMANENT_ERRORS,
    TEMPLATE_SEND_PATH,
    TOKEN_ERRORS,
    TOKEN_MARGIN_S,
    TOKEN_PATH,
)
from channels.wechat.inbound import split_text
from channels.wechat.template import TemplateLayout

log = logging.getLogger(__name__)
TIMEOUT = aiohttp.ClientTimeout(total=10, connect=5)


class WeChatApiError(DeliveryError):
    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(f"WeChat error {errcode}: {errmsg}", permanent=errcode in PERMANENT_ERRORS)
        self.errcode = errcode


@dataclass
class _Token:
    value: str
    expires_at: float


class WeChatClient:
    def __init__(
        self,
        app_id: str,
        app_secret: str,
        api_base: str = "https://api.weixin.qq.com",
        *,
        clock: Callable[[], float] = time.monotonic,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.app_id = app_id
        self._secret = app_secret
        self.api_base = api_base.rstrip("/")
        self.clock = clock
        self._session = session
        self._own_session = session is None
        self._token: _Token | None = None
        self._refreshing: asyncio.Task[_Token] | None = None
        self.token_fetches = 0
        self.busy_retry_s = BUSY_RETRY_S

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=TIMEOUT)

    async def stop(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------ token

    async def access_token(self) -> str:
        tok = self._token
        if tok is not None and self.clock() < tok.expires_at:
            return tok.value
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._fetch_token())
        # shielded: one waiter giving up must not cancel the fetch for the others
        return (await asyncio.shield(self._refreshing)).value

    def invalidate(self, stale: str | None = None) -> None:
        if self._token is not None and (stale is None or self._token.value == stale):
            self._token = None

    async def _fetch_token(self) -> _Token:
        self.token_fetches += 1
        data = await self._request(
            "POST",
            TOKEN_PATH,
            params={},
            body={
                "grant_type": "client_credential",
                "appid": self.app_id,
                "secret": self._secret,
                "force_refresh": False,
            },
        )
        value, ttl = data.get("access_token"), data.get("expires_in")
        if not isinstance(value, str) or not isinstance(ttl, int) or ttl <= 0:
            raise DeliveryError(f"WeChat token answer without a token: {sorted(data)}")
        # refresh well before expiry, but never cache for less than a tenth of the lifetime
        keep = max(ttl - TOKEN_MARGIN_S, ttl // 10)
        self._token = _Token(value, self.clock() + keep)
        return self._token

    # ------------------------------------------------------------------ calls

    async def _request(
        self, method: str, path: str, *, params: dict[str, str], body: Any = None
    ) -> dict[str, Any]:
        if self._session is None:
            await self.start()
        assert self._session is not None
        payload = None if body is None else json.dumps(body, ensure_ascii=False).encode()
        try:
            async with self._session.request(
                method,
                self.api_base + path,
                params=params,
                data=payload,
                headers={"Content-Type": "application/json; charset=utf-8"} if payload else None,
            ) as r:
                raw = await r.read()
                if r.status >= 500 or r.status == 429:
                    raise DeliveryError(f"WeChat HTTP {r.status}")
                if r.status >= 400:
                    raise DeliveryError(f"WeChat HTTP {r.status}", permanent=True)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryError(f"WeChat unreachable: {type(exc).__name__}: {exc}") from None
        try:
            data = json.loads(raw)
        except ValueError:
            raise DeliveryError("WeChat answered something that is not JSON") from None
        if not isinstance(data, dict):
            raise DeliveryError("WeChat answered something that is not a JSON object")
        code = data.get("errcode", 0)
        if code not in (0, None):
            raise WeChatApiError(int(code), str(data.get("errmsg", "")))
        return data

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST with the access token. A stale token (40001 / 42001 / 40014) is dropped
        and the call retried once with a fresh one; "system busy" (-1) is retried once
        after `busy_retry_s` (WeChat: 稍候再试), then left to the caller (the outbox
        retries with backoff)."""
        refreshed = busy = False
        while True:
            token = await self.access_token()
            try:
                return await self._request("POST", path, params={"access_token": token}, body=body)
            except WeChatApiError as exc:
                if exc.errcode in TOKEN_ERRORS and not refreshed:
                    log.info("WeChat says the access token is stale (%s); refreshing", exc.errcode)
                    self.invalidate(token)
                    refreshed = True
                elif exc.errcode == BUSY_ERROR and not busy:
                    log.info("WeChat is busy (-1); retrying in %.1fs", self.busy_retry_s)
                    await asyncio.sleep(self.busy_retry_s)
                    busy = True
                else:
                    raise

    async def send_text(self, openid: str, text: str) -> None:
        """A customer-service text; one longer than WeChat takes (`MAX_TEXT_BYTES`, else
        45002) goes as several, in order."""
        for piece in split_text(text) or [text]:
            await self.call(
                CUSTOM_SEND_PATH, {"touser": openid, "msgtype": "text", "text": {"content": piece}}
            )

    async def send_template(
        self, openid: str, template_id: str, data: dict[str, str], url: str | None = None
    ) -> None:
        body: dict[str, Any] = {
            "touser": openid,
            "template_id": template_id,
            "data": {k: {"value": v} for k, v in data.items()},
        }
        if url:
            body["url"] = url
        await self.call(TEMPLATE_SEND_PATH, body)

    async def create_menu(self, menu: dict[str, Any]) -> None:
        await self.call(MENU_CREATE_PATH, menu)


class WeChatSender:
    """The outbox's sender for WeChat: texts as customer-service messages, ticket
    updates as template messages when a template is configured (its fields as the
    layout setting maps them, see `channels.wechat.template`), else as text.

    Since May 2023 WeChat no longer shows a template's `first` and `remark`, so a
    department's answer put there never reaches the resident: an update carrying one
    goes as a customer-service text (the whole answer), and as the template only when
    the resident is outside the 48 h window for those."""

    channel = CHANNEL

    def __init__(
        self,
        client: WeChatClient,
        template_id: str | None = None,
        layout: TemplateLayout | None = None,
        tz: tzinfo = UTC,
    ) -> None:
        self.client = client
        self.template_id = template_id
        self.layout = layout or TemplateLayout.parse(None)
        self.tz = tz

    async def start(self) -> None:
        await self.client.start()

    async def stop(self) -> None:
        await self.client.stop()

    async def send(self, recipient: str, payload: dict[str, Any]) -> None:
        kind = payload.get("type")
        text = payload.get("text")
        if kind == "ticket_update" and self.template_id:
            if payload.get("reply") and isinstance(text, str) and text:
                try:
                    await self.client.send_text(recipient, text)
                    return
                except WeChatApiError as exc:
                    if exc.errcode not in OUTSIDE_WINDOW_ERRORS:
                        raise
            await self.client.send_template(
                recipient,
                self.template_id,
                self.layout.data(payload, self.tz, datetime.now(UTC)),
            )
            return
        if not isinstance(text, str) or not text:
            raise DeliveryError(f"nothing to send in a {kind!r} payload", permanent=True)
        await self.client.send_text(recipient, text)
