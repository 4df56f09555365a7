"""Calls to the Telegram Bot API, through python-telegram-bot's Bot (vendor calls only).

`build_application` makes PTB's Application for webhook use inside our aiohttp app:
no Updater (no polling, no second web server), no job queue, the API base URL from
the settings (PTB appends the token: `<base>/bot<token>/<method>`).

`TelegramSender` is the outbox's sender: sendMessage as plain text (no parse_mode, so
an agent's `<`, `*` or `_` cannot make Telegram refuse the message), with the bot
prompt's keyboard attached, long texts in parts of at most 4096 characters. The Bot
API server counts that limit in Unicode code points (tdlib's utf8_length, after
entity parsing, which only shortens a text), i.e. Python's len(); UTF-16 units only
matter for entity offsets. Parts are cut at a paragraph, line, sentence or space,
never inside a character a reader sees as one (emoji sequences, combining marks),
and never left blank (Telegram trims a text and refuses an empty one).

Telegram's answers map to the outbox's retry rule: 400 (chat not found, bad request)
and 403 (the resident blocked the bot, deactivated account) are permanent; a group
upgraded to a supergroup (400 with migrate_to_chat_id) is followed to its new id; 429
is honoured (its retry_after waited inside the send when short, otherwise the failure
is transient and later sends to that chat wait until the window has passed); 5xx,
time-outs and network errors are transient. Sends are paced below Telegram's published
limits beforehand (`pacer()`), so a burst rarely meets a 429 at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import warnings
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import regex
from telegram import Bot
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    RetryAfter,
    TelegramError,
)
from telegram.ext import AIORateLimiter, Application, ApplicationBuilder
from telegram.warnings import PTBDeprecationWarning

from channels.outbox import DeliveryError
from channels.telegram import keyboards
from channels.telegram.const import ALLOWED_UPDATES, CHANNEL, MAX_TEXT, RETRY_AFTER_WAIT_MAX_S

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
OVERALL_PER_S = (
    30  # https://core.telegram.org/bots/faq#my-bot-is-hitting-limits-how-do-i-avoid-this
)
GROUP_PER_MIN = 20
READ_TIMEOUT_S = 10.0


def quiet_http_logs() -> None:
    """httpx logs every request URL at INFO, and Bot API URLs contain the bot token."""
    logging.getLogger("httpx").setLevel(logging.WARNING)


def pacer() -> AIORateLimiter:
    """Paces sends below Telegram's published limits (about 30 messages a second in
    all, 20 a minute into one group) instead of running into 429s: a burst of ticket
    notifications after an outage then goes out steadily rather than tripping flood
    control for every chat at once. PTB's own limiter (aiolimiter underneath); it does
    not retry (max_retries=0): a 429 that still happens comes back to `TelegramSender`,
    which holds that chat only, where PTB would halt every chat. Its log line for that
    429 is an ERROR with a traceback, for what our sender logs as a WARNING itself."""
    logging.getLogger("telegram.ext.AIORateLimiter").setLevel(logging.CRITICAL)
    return AIORateLimiter(
        overall_max_rate=OVERALL_PER_S,
        overall_time_period=1,
        group_max_rate=GROUP_PER_MIN,
        group_time_period=60,
        max_retries=0,
    )


def build_application(token: str, api_base: str) -> Application[Any, Any, Any, Any, Any, Any]:
    """PTB's Application, not yet initialized (no I/O here)."""
    quiet_http_logs()
    base = api_base.rstrip("/")
    builder: ApplicationBuilder[Any, Any, Any, Any, Any, Any] = (
        Application.builder()
        .token(token)
        .base_url(f"{base}/bot")
        .base_file_url(f"{base}/file/bot")
        .updater(None)
        .job_queue(None)
        .rate_limiter(pacer())
        .connect_timeout(CONNECT_TIMEOUT_S)
        .read_timeout(READ_TIMEOUT_S)
        .write_timeout(READ_TIMEOUT_S)
    )
    return builder.build()


def retry_after_s(exc: RetryAfter) -> float:
    """RetryAfter's wait in seconds (PTB 22 returns int or timedelta, with a warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def delivery_error(exc: TelegramError) -> DeliveryError:
    """Telegram's refusal as the outbox's failure (permanent: retrying cannot help)."""
    if isinstance(exc, Forbidden | BadRequest | ChatMigrated):
        return DeliveryError(f"Telegram refused: {exc.message}", permanent=True)
    if isinstance(exc, InvalidToken):  # PTB's message quotes the token: never log it
        return DeliveryError("Telegram rejected the bot token (HOTLINE_TELEGRAM_TOKEN)")
    if isinstance(exc, RetryAfter):
        wait = retry_after_s(exc)
        return DeliveryError(f"Telegram flood control: retry in {wait:g} s", retry_after=wait)
    return DeliveryError(f"Telegram unreachable: {type(exc).__name__}: {exc.message}")


# where a part may end, best first, looked for in the last half of the allowed length
_SENTENCE_ENDS = frozenset("。！？；…!?;.")
# how far past the limit to read so that the character spanning it is seen whole
_MAX_CLUSTER = 64
PARTIAL_KEEP_S = 3600.0  # how long a half-sent text's progress is remembered
_GRAPHEME = regex.compile(r"\X")  # Unicode's extended grapheme cluster (UAX #29)
_SURROGATE_PAIR = regex.compile("[\ud800-\udbff][\udc00-\udfff]")


def _cut(text: str, limit: int) -> int:
    """Where the first part of `text` (longer than `limit`) ends: at a paragraph, line,
    sentence end or space in the second half, and never inside what a reader sees as
    one character (emoji sequences, flags, combining marks, CR LF: the `regex`
    module's grapheme clusters, kept up to date with Unicode)."""
    bounds = {
        m.end()
        for m in _GRAPHEME.finditer(text, 0, limit + _MAX_CLUSTER)
        if not _SURROGATE_PAIR.match(text, m.end() - 1)  # a pair left split in a str
    }
    low = limit // 2
    for sep in ("\n\n", "\n"):
        at = text.rfind(sep, low, limit)
        if at >= 0 and at + len(sep) in bounds:
            return at + len(sep)
    for fits in (_SENTENCE_ENDS.__contains__, str.isspace):
        for i in range(limit, low, -1):
            if fits(text[i - 1]) and i in bounds:
                return i
    inside = [b for b in bounds if b <= limit]
    return max(inside) if inside else limit  # one "character" longer than a part: cut it


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """Parts of at most `limit` characters that Telegram accepts one by one; blank
    stretches between them are dropped (Telegram would trim them to an empty text)."""
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = _cut(rest, limit)
        if rest[:cut].strip():
            parts.append(rest[:cut])
        rest = rest[cut:]
    if rest.strip() or not parts:
        parts.append(rest)
    return parts


class TelegramSender:
    """Delivers the outbox's texts and ticket updates as Telegram messages."""

    channel = CHANNEL

    def __init__(
        self,
        bot: Bot,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_wait_s: float = RETRY_AFTER_WAIT_MAX_S,
    ) -> None:
        self.bot = bot
        self.clock = clock
        self.max_wait_s = max_wait_s
        # flood control (429): no sends to a chat before this time (clock seconds)
        self._not_before: dict[int, float] = {}
        # the outbox delivers a batch concurrently; one chat's messages go one at a time,
        # in the order they were handed over (the bot's prompts must not overtake)
        self._chats: dict[int, tuple[asyncio.Lock, list[int]]] = {}
        # a long text whose send failed after some of its parts went out: (chat, digest)
        # -> (parts delivered, clock time); the outbox's retry resumes after them
        # rather than sending the resident the first parts again
        self._partial: dict[tuple[int, str], tuple[int, float]] = {}

    async def send(self, recipient: str, payload: dict[str, Any]) -> None:
        text = payload.get("text")
        if not isinstance(text, str) or not text.strip():
            raise DeliveryError(
                f"nothing to send in a {payload.get('type')!r} payload", permanent=True
            )
        try:
            chat_id = int(recipient)
        except ValueError:
            raise DeliveryError(
                f"not a Telegram chat id: {recipient[:20]!r}", permanent=True
            ) from None
        parts = split_text(text)
        markup = keyboards.markup_for(text) if payload.get("type") == "text" else None
        lock, users = self._chats.setdefault(chat_id, (asyncio.Lock(), [0]))
        users[0] += 1
        key = (chat_id, hashlib.sha256(f"{payload.get('type')}\0{text}".encode()).hexdigest())
        try:
            async with lock:
                target = chat_id
                done = self._resume_at(key) if len(parts) > 1 else 0
                for i, part in enumerate(parts):
                    if i < done:
                        continue
                    last = i == len(parts) - 1
                    try:
                        target = await self._send_one(target, part, markup if last else None)
                    except DeliveryError:
                        if i:
                            self._partial[key] = (i, self.clock())
                        raise
                self._partial.pop(key, None)
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._chats[chat_id]

    def _resume_at(self, key: tuple[int, str]) -> int:
        """Parts of this text already delivered by an earlier, failed send (0 if none,
        or if that was more than `PARTIAL_KEEP_S` ago)."""
        now = self.clock()
        if len(self._partial) > 1000:
            self._partial = {k: v for k, v in self._partial.items() if now - v[1] < PARTIAL_KEEP_S}
        done, at = self._partial.get(key, (0, now))
        return done if now - at < PARTIAL_KEEP_S else 0

    async def _send_one(self, chat_id: int, text: str, markup: Any) -> int:
        """Sends one part; returns the chat id that took it (a migrated group's new one,
        which the following parts go to)."""
        migrated = flooded = False
        while True:  # at most a migration and one wait for flood control
            await self._respect_flood_window(chat_id)
            try:
                await self.bot.send_message(chat_id=chat_id, text=text, reply_markup=markup)
                return chat_id
            except ChatMigrated as exc:
                if migrated:
                    raise delivery_error(exc) from None
                migrated = True
                log.info("Telegram chat %s is now %s: sending there", chat_id, exc.new_chat_id)
                chat_id = int(exc.new_chat_id)
            except RetryAfter as exc:
                wait = retry_after_s(exc)
                self._hold(chat_id, wait)
                log.warning("Telegram flood control: waiting %g s before sending again", wait)
                if flooded or wait > self.max_wait_s:
                    raise delivery_error(exc) from None
                flooded = True
            except TelegramError as exc:
                raise delivery_error(exc) from None

    def _hold(self, chat_id: int, wait: float) -> None:
        now = self.clock()
        if len(self._not_before) > 10_000:  # forget windows long past
            self._not_before = {k: t for k, t in self._not_before.items() if t > now}
        self._not_before[chat_id] = max(self._not_before.get(chat_id, 0.0), now + wait)

    async def _respect_flood_window(self, chat_id: int) -> None:
        until = self._not_before.get(chat_id)
        if until is None:
            return
        wait = until - self.clock()
        if wait <= 0:
            del self._not_before[chat_id]
            return
        if wait > self.max_wait_s:
            raise DeliveryError(f"Telegram flood control: {wait:.0f} s left", retry_after=wait)
        await asyncio.sleep(wait)


async def set_webhook(
    bot: Bot, url: str, secret: str, *, drop_pending: bool = False
) -> dict[str, Any]:
    """Point Telegram at our webhook (with the secret it echoes on every update);
    returns getWebhookInfo's answer so the operator sees what Telegram now has."""
    quiet_http_logs()
    async with bot:
        await bot.set_webhook(
            url=url,
            secret_token=secret,
            allowed_updates=list(ALLOWED_UPDATES),
            drop_pending_updates=drop_pending,
        )
        info = await bot.get_webhook_info()
    return {
        "url": info.url,
        "pending_update_count": info.pending_update_count,
        "allowed_updates": list(info.allowed_updates or ()),
        "last_error_message": info.last_error_message,
    }
