"""Telegram bot (python-telegram-bot) at /telegram/webhook: webhook, sender, lifecycle.

Shape shared by every channel: `const.py`, `client.py` (vendor calls only),
`inbound.py` (raw update -> the intake's message), `routes.py`, and `setup` here.
PTB's Application runs inside our aiohttp app (no Updater: no polling, no second
server) as one cleanup context: getMe at start (if the Bot API is unreachable the
service starts anyway, the webhook answers 503 and getMe is retried with backoff).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from telegram import Bot
from telegram.error import InvalidToken, TelegramError

from channels.hub import ChannelHub
from channels.telegram.client import TelegramSender, build_application, set_webhook
from channels.telegram.const import (
    DEFAULT_API_BASE,
    INIT_RETRY_CAP_S,
    INIT_RETRY_START_S,
    PATH,
    STARTUP_WAIT_S,
)
from channels.telegram.routes import TelegramWebhook

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TelegramConfig:
    token: str
    secret: str
    api_base: str = DEFAULT_API_BASE


def config_from(settings: Any) -> TelegramConfig | None:
    """The Telegram part of the service settings (None when no token is set)."""
    token = getattr(settings, "telegram_token", None)
    if not token:
        return None
    secret = getattr(settings, "telegram_secret", None)
    if not secret:
        raise ValueError("HOTLINE_TELEGRAM_SECRET is required with HOTLINE_TELEGRAM_TOKEN")
    api_base = getattr(settings, "telegram_api_base", None) or DEFAULT_API_BASE
    return TelegramConfig(token, secret, api_base)


class TelegramChannel:
    """PTB's Application, the webhook and the outbox sender, started and stopped as one."""

    def __init__(self, hub: ChannelHub, config: TelegramConfig) -> None:
        self.config = config
        self.application = build_application(config.token, config.api_base)
        self.webhook = TelegramWebhook(hub, self.application, config.secret, self.is_ready)
        self.sender = TelegramSender(self.application.bot)  # sending needs no getMe
        self._ready = False
        self._bring_up: asyncio.Task[None] | None = None

    def is_ready(self) -> bool:
        return self._ready

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        """Cleanup context: getMe once at start (bounded); if the Bot API does not
        answer, the service starts anyway and getMe is retried in the background."""
        try:
            ok = await asyncio.wait_for(self._attempt(), STARTUP_WAIT_S)
        except TimeoutError:
            log.warning("Telegram Bot API did not answer getMe within %g s", STARTUP_WAIT_S)
            ok = False
        if not ok:
            self._bring_up = asyncio.create_task(self._retry(), name="telegram-bot-start")
        yield
        self._ready = False
        if self._bring_up is not None:
            self._bring_up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._bring_up
        try:
            if self.application.running:
                await self.application.stop()
            await self.application.shutdown()
            await self.application.bot.shutdown()  # if getMe never succeeded
        except Exception:
            log.exception("telegram bot did not stop cleanly")

    async def _attempt(self) -> bool:
        try:
            await self.application.initialize()
            if not self.application.running:
                await self.application.start()
        except InvalidToken:  # PTB's message quotes the token: not logged
            log.error("Telegram rejected HOTLINE_TELEGRAM_TOKEN")
            return False
        except (TelegramError, OSError) as exc:
            log.warning("Telegram Bot API unreachable: %s", exc)
            return False
        self._ready = True
        log.info("Telegram bot @%s ready", self.application.bot.username)
        return True

    async def _retry(self) -> None:
        delay = INIT_RETRY_START_S
        while True:
            await asyncio.sleep(delay)
            if await self._attempt():
                return
            delay = min(delay * 2, INIT_RETRY_CAP_S)
            log.info("retrying Telegram getMe in %g s", delay)


TELEGRAM = web.AppKey("telegram_channel", TelegramChannel)


def setup(app: web.Application, hub: ChannelHub, settings: Any) -> TelegramChannel | None:
    """Add /telegram/webhook, the Telegram sender and the bot's cleanup context when
    HOTLINE_TELEGRAM_TOKEN is set."""
    config = config_from(settings)
    if config is None:
        return None
    channel = TelegramChannel(hub, config)
    app[TELEGRAM] = channel
    app.router.add_post(PATH, channel.webhook.receive)
    hub.register_sender(channel.sender)
    app.cleanup_ctx.append(channel.context)
    return channel


async def register_webhook(
    settings: Any, url: str, *, drop_pending: bool = False
) -> dict[str, Any]:
    """setWebhook(url, secret_token, allowed_updates); returns Telegram's webhook info."""
    config = config_from(settings)
    if config is None:
        raise ValueError("set HOTLINE_TELEGRAM_TOKEN and HOTLINE_TELEGRAM_SECRET")
    if not url.startswith("https://"):
        raise ValueError("Telegram sends webhooks to https:// URLs only")
    base = config.api_base.rstrip("/")
    bot = Bot(config.token, base_url=f"{base}/bot", base_file_url=f"{base}/file/bot")
    try:
        return await set_webhook(bot, url, config.secret, drop_pending=drop_pending)
    except InvalidToken:
        raise ValueError("Telegram rejected HOTLINE_TELEGRAM_TOKEN") from None
    except TelegramError as exc:  # the message may quote a URL with the token in it
        raise ValueError(f"Telegram said: {exc.message.replace(config.token, '<token>')}") from None


__all__ = [
    "PATH",
    "TELEGRAM",
    "TelegramChannel",
    "TelegramConfig",
    "TelegramSender",
    "config_from",
    "register_webhook",
    "setup",
]
