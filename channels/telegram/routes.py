"""POST /telegram/webhook: Telegram's updates into python-telegram-bot, then the intake.

A plain aiohttp route (Telegram posts Update JSON, not our JSON API). The request is
checked (secret token header in constant time, size, JSON), turned into PTB's typed
`Update` and run through the Application's handlers (`process_update`, awaited: the
handlers store the message through the hub before we answer). Replies go out through
the outbox, never in this response, so Telegram gets its 200 as soon as the message
is on disk.

Answers: 403 for a missing or wrong secret (not Telegram; nothing is read or stored);
413 for a body Telegram would never send; 400 for a body that is not an update at all
(not JSON, no update_id: Telegram never sends one); 503 while the bot is starting or
the store is down (Telegram retries, nothing is lost); 200 for everything else,
including updates that are not for the hotline (group chats, my_chat_member, ...) and
updates python-telegram-bot cannot read (logged, and kept raw when a private sender is
known): Telegram repeats any non-2xx answer, so refusing an update it did send only
has it come back again and again, never in a shape we can read.

Every callback query is answered (answerCallbackQuery), also a press we do not store:
until it is, the resident's client shows a spinner on the button.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from telegram import CallbackQuery, Message, Update
from telegram.error import TelegramError
from telegram.ext import (
    Application,
    BaseHandler,
    CallbackQueryHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from channels.hub import ChannelHub
from channels.message import InboundMessage, Receipt
from channels.telegram import inbound
from channels.telegram.const import CB_CONFIRM, CB_KIND, MAX_BODY_BYTES, SECRET_HEADER

log = logging.getLogger(__name__)
MAX_UPDATE_ID = 2**53
Context = ContextTypes.DEFAULT_TYPE
# JSON escapes can carry NUL (PostgreSQL's text cannot hold it) and lone surrogates
# (not UTF-8: neither database takes them); real Telegram never sends them, but a
# resident's message must be kept, not turned into a 503 Telegram retries forever
_UNSTORABLE_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89abcdefABCDEF])")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


@dataclass
class _Outcome:
    """What the handlers did with one update (read by the webhook after processing)."""

    receipt: Receipt | None = None
    error: BaseException | None = None


def _storable(node: Any) -> Any:
    """Parsed JSON with NUL and lone surrogates in its strings replaced by U+FFFD
    (json.loads joins valid surrogate pairs, so any left are lone)."""
    if isinstance(node, str):
        return _UNSTORABLE.sub("\ufffd", node)
    if isinstance(node, dict):
        return {_storable(k): _storable(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_storable(v) for v in node]
    return node


def _plain(text: str, status: int = 200, **headers: str) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/plain", headers=headers)


async def _read_limited(request: web.Request, limit: int) -> bytes | None:
    """The whole body, or None once it passes `limit` (StreamReader.read(n) may return
    only what has arrived so far, so the chunks are gathered until EOF)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class TelegramWebhook:
    def __init__(
        self,
        hub: ChannelHub,
        application: Application[Any, Any, Any, Any, Any, Any],
        secret: str,
        ready: Callable[[], bool],
    ) -> None:
        self.hub = hub
        self.application = application
        self._secret = secret.encode()
        self.ready = ready
        self._outcomes: dict[int, _Outcome] = {}
        application.add_handlers(self.handlers())

    def handlers(self) -> list[BaseHandler[Any, Any, Any]]:
        """What the bot reacts to: messages and their edits in private chats, and the
        presses of our inline buttons. Everything else matches nothing (ignored)."""
        private = filters.ChatType.PRIVATE
        return [
            MessageHandler(filters.UpdateType.MESSAGES & private, self.on_message),
            CallbackQueryHandler(self.on_button),
        ]

    # ------------------------------------------------------------------ HTTP

    def _authentic(self, request: web.Request) -> bool:
        given = request.headers.get(SECRET_HEADER, "").encode("utf-8", "surrogateescape")
        return hmac.compare_digest(given, self._secret)

    async def receive(self, request: web.Request) -> web.StreamResponse:
        if not self._authentic(request):
            log.warning("telegram webhook call without the secret token from %s", request.remote)
            return _plain("forbidden", 403)
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return _plain("body too large", 413)
        body = await _read_limited(request, MAX_BODY_BYTES)
        if body is None:
            return _plain("body too large", 413)
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            return _plain("body is not JSON", 400)
        if _UNSTORABLE_ESCAPE.search(body):
            data = _storable(data)
        update_id = data.get("update_id") if isinstance(data, dict) else None
        if (
            not isinstance(update_id, int)
            or isinstance(update_id, bool)
            or not 0 <= update_id < MAX_UPDATE_ID
        ):
            return _plain("not a Telegram update (update_id)", 400)
        if not self.ready():
            # getMe has not answered yet: Telegram keeps the update and retries
            return _plain("starting", 503, **{"Retry-After": "5"})
        try:
            update = Update.de_json(data, self.application.bot)
        except Exception as exc:  # a shape this PTB cannot read: acknowledged, not refused
            log.warning(
                "telegram update %s not understood (%s: %s); acknowledged",
                update_id,
                type(exc).__name__,
                str(exc)[:200],
            )
            return await self._keep_unparsed(data, update_id)
        outcome = _Outcome()
        self._outcomes[id(update)] = outcome
        try:
            await self.application.process_update(update)
        finally:
            self._outcomes.pop(id(update), None)
        if outcome.error is not None:
            log.error(
                "telegram update %s not stored (%s: %s); Telegram will retry",
                update_id,
                type(outcome.error).__name__,
                outcome.error,
            )
            return _plain("unavailable", 503, **{"Retry-After": "5"})
        return _plain("ok")

    async def _keep_unparsed(self, data: dict[str, Any], update_id: int) -> web.Response:
        """A resident's message that PTB could not read still reaches an agent (raw);
        only a failing store makes Telegram retry it."""
        try:
            msg = inbound.unparsed(data)
        except Exception:
            log.exception("telegram update %s: no sender found in it", update_id)
            msg = None
        if msg is None:
            return _plain("ok")
        try:
            await asyncio.shield(self.hub.receive(msg, inline=False))
        except Exception as exc:
            log.error(
                "telegram update %s not stored (%s: %s); Telegram will retry",
                update_id,
                type(exc).__name__,
                exc,
            )
            return _plain("unavailable", 503, **{"Retry-After": "5"})
        return _plain("ok")

    # ------------------------------------------------------------------ PTB handlers

    async def on_message(self, update: Update, context: Context) -> None:
        msg = self._map(update, context)
        if msg is not None:
            await self._store(update, msg)

    async def on_button(self, update: Update, context: Context) -> None:
        query = update.callback_query
        msg = self._map(update, context)
        if msg is not None and not await self._store(update, msg):
            return  # 503: Telegram sends the press again, and that one is answered
        if query is not None:
            # a press we do not store (another chat, a bot) is answered all the same:
            # the spinner on the button stops only then; off the request path
            context.application.create_task(
                self._acknowledge(query, stored=msg is not None), update=update
            )

    def _map(self, update: Update, context: Context) -> InboundMessage | None:
        try:
            return inbound.to_message(update, context.bot.username)
        except Exception:  # a mapping bug must not turn Telegram's update into a 5xx
            log.exception("telegram update %s could not be read; stored raw", update.update_id)
            try:
                return inbound.unreadable(update)
            except Exception:
                log.exception("telegram update %s not even storable raw", update.update_id)
                return None

    async def _store(self, update: Update, msg: InboundMessage) -> bool:
        outcome = self._outcomes.get(id(update), _Outcome())
        try:
            # shielded: Telegram hanging up must not cancel a write already on its way
            outcome.receipt = await asyncio.shield(self.hub.receive(msg, inline=False))
        except Exception as exc:
            outcome.error = exc
            return False
        return True

    async def _acknowledge(self, query: CallbackQuery, *, stored: bool = True) -> None:
        """answerCallbackQuery; a one-shot choice (kind, confirm) the bot acted on also
        loses its buttons so an old keyboard cannot be pressed again later in the flow."""
        try:
            await query.answer()
            prefix = (query.data or "").partition(":")[0]
            one_shot = prefix in (CB_KIND, CB_CONFIRM)
            if stored and one_shot and isinstance(query.message, Message):
                await query.edit_message_reply_markup(reply_markup=None)
        except TelegramError as exc:  # too old, already answered, message gone: harmless
            log.info("telegram callback %s not acknowledged: %s", query.id, exc.message)
