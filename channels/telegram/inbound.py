"""Telegram updates (python-telegram-bot's typed `Update`) -> the intake's message.

Pure: no I/O, no state. What maps to what:

- `message` in a private chat: text (commands normalized: `/start` and `/help` are
  the welcome event, a deep link's `/start PAYLOAD` keeps its payload as
  `data["scene"]` like WeChat's parametric QR codes, `/status@OurBot N` is
  `/status N`), photo (the largest size's
  file_id), location and venue, voice / audio, video / video note, documents (by
  MIME type), stickers (their emoji); anything else is stored as an unsupported
  message for the agent to see;
- `edited_message`: a new message of its own (an agent must see what the resident
  corrected), except live-location moves, which Telegram sends as a stream of edits
  and which would bury the conversation;
- `callback_query` (our inline buttons): the word the button stands for, in the
  resident's language, so the bot reads a press exactly like a typed answer;
- groups, channels, inline queries, polls and the rest: not for the hotline (None).

The dedupe key is `"<update_id>:<user id>"`: a retry of an update repeats both, and the
user id keeps keys apart if Telegram restarts its update_id sequence (it picks a random
start after a week without updates).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from telegram import CallbackQuery, Message, MessageEntity, Update, User
from telegram.constants import ChatType

from channels import bot
from channels.message import InboundMessage, Kind, Location, Media
from channels.telegram.const import CB_CONFIRM, CB_KIND, CB_MENU, CHANNEL

WELCOME_COMMANDS = frozenset({"start", "help"})
MAX_NAME = 128
# t.me/<bot>?start=PAYLOAD arrives as "/start PAYLOAD"; Telegram only makes such links
# with 1-64 of these characters, anything else was typed by hand
DEEP_LINK_PAYLOAD = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Telegram's ids fit in 52 bits (their documented bound for user and chat ids)
MAX_ID = 2**53


def lang_of(user: User | None) -> str:
    """Our two reply languages: Chinese for zh-* and for users whose client does not
    say (the hotline is a Chinese city's), English for every other language."""
    return _lang((user.language_code or "") if user else "")


def _lang(code: str) -> str:
    return "en" if code and not code.lower().startswith("zh") else "zh"


def dedupe_key(update_id: int, user_id: int) -> str:
    return f"{update_id}:{user_id}"


def to_message(update: Update, bot_username: str | None = None) -> InboundMessage | None:
    """The intake's message for an update, or None when the update is not for us."""
    if update.callback_query is not None:
        return _from_callback(update.update_id, update.callback_query)
    msg, edited = update.message, False
    if msg is None and update.edited_message is not None:
        msg, edited = update.edited_message, True
    if msg is None:
        return None
    user = msg.from_user
    if user is None or user.is_bot or msg.chat.type != ChatType.PRIVATE:
        return None
    if edited and msg.location is not None and msg.venue is None:
        return None  # a live location moving: Telegram edits the message every few seconds
    sent = (msg.edit_date if edited else None) or msg.date or datetime.now(UTC)
    data: dict[str, Any] = {"update_id": update.update_id, "message_id": msg.message_id}
    if edited:
        data["edited"] = True
    base: dict[str, Any] = {
        "channel": CHANNEL,
        "sender_id": str(user.id),
        "external_id": dedupe_key(update.update_id, user.id),
        "sent_at": _aware(sent),
        "sender_name": _name(user),
        "lang": lang_of(user),
    }
    return InboundMessage(**base, **_content(msg, bot_username, edited, data))


def _content(
    msg: Message, bot_username: str | None, edited: bool, data: dict[str, Any]
) -> dict[str, Any]:
    caption = msg.caption or None
    if msg.text is not None:
        command = None if edited else _command(msg, bot_username)
        if command is not None and command[0] in WELCOME_COMMANDS:
            if command[0] == "start" and DEEP_LINK_PAYLOAD.fullmatch(command[1]):
                data["scene"] = command[1]
            return {"kind": Kind.EVENT, "event": "subscribe", "data": data}
        text = msg.text if command is None else " ".join(f"/{command[0]} {command[1]}".split())
        return {"kind": Kind.TEXT, "text": text, "data": data}
    if msg.photo:
        largest = max(msg.photo, key=lambda p: (p.width * p.height, p.file_size or 0))
        data["file_unique_id"] = largest.file_unique_id
        media = Media(largest.file_id, "image", None, "image/jpeg")
        return {"kind": Kind.IMAGE, "text": caption, "media": (media,), "data": data}
    if msg.location is not None:
        label = None
        if msg.venue is not None:
            label = ", ".join(x for x in (msg.venue.title, msg.venue.address) if x) or None
        loc = Location(msg.location.latitude, msg.location.longitude, label)
        return {"kind": Kind.LOCATION, "location": loc, "data": data}
    if msg.voice is not None or msg.audio is not None:
        f = msg.voice or msg.audio
        assert f is not None
        media = Media(f.file_id, "voice", None, f.mime_type)
        return {"kind": Kind.VOICE, "text": caption, "media": (media,), "data": data}
    if msg.video is not None or msg.video_note is not None:
        v = msg.video or msg.video_note
        assert v is not None
        media = Media(v.file_id, "video", None, getattr(v, "mime_type", None) or "video/mp4")
        return {"kind": Kind.VIDEO, "text": caption, "media": (media,), "data": data}
    if msg.document is not None:
        d = msg.document
        mime = d.mime_type or ""
        kind, media_kind = (
            (Kind.IMAGE, "image")
            if mime.startswith("image/")
            else (Kind.VIDEO, "video")
            if mime.startswith("video/")
            else (Kind.VOICE, "voice")
            if mime.startswith("audio/")
            else (Kind.TEXT, "file")
        )
        if d.file_name:
            data["file_name"] = d.file_name[:200]
        media = Media(d.file_id, media_kind, None, d.mime_type)
        return {"kind": kind, "text": caption, "media": (media,), "data": data}
    if msg.sticker is not None:
        data["sticker"] = msg.sticker.file_unique_id
        return {"kind": Kind.TEXT, "text": msg.sticker.emoji or None, "data": data}
    # contacts, polls, dice, games, ...: kept so the agent sees something arrived
    data["unsupported"] = _what(msg)
    return {"kind": Kind.TEXT, "text": caption, "data": data}


def _command(msg: Message, bot_username: str | None) -> tuple[str, str] | None:
    """(command, arguments) when the text starts with a bot command addressed to us."""
    for entity, word in msg.parse_entities([MessageEntity.BOT_COMMAND]).items():
        if entity.offset != 0:
            continue
        name, _, target = word[1:].partition("@")
        if target and bot_username and target.lower() != bot_username.lower():
            return None  # another bot's command
        # entity.length counts UTF-16 code units, not Python characters: parse_entities
        # already cut `word` by them, so the rest starts after it
        rest = (msg.text or "")[len(word) :].strip()
        return name.lower(), rest
    return None


def _from_callback(update_id: int, q: CallbackQuery) -> InboundMessage | None:
    user = q.from_user
    if user.is_bot or (q.message is not None and q.message.chat.type != ChatType.PRIVATE):
        return None
    lang = lang_of(user)
    data: dict[str, Any] = {"update_id": update_id, "callback_query_id": q.id}
    if q.message is not None:
        data["message_id"] = q.message.message_id
    raw = (q.data or "")[:64]
    data["callback_data"] = raw
    base: dict[str, Any] = {
        "channel": CHANNEL,
        "sender_id": str(user.id),
        "external_id": dedupe_key(update_id, user.id),
        "sent_at": datetime.now(UTC),
        "sender_name": _name(user),
        "lang": lang,
        "data": data,
    }
    prefix, _, value = raw.partition(":")
    if prefix == CB_MENU and value:
        return InboundMessage(**base, kind=Kind.EVENT, event="click", event_key=value)
    text = button_word(prefix, value, lang)
    if text is not None:
        return InboundMessage(**base, kind=Kind.TEXT, text=text)
    # not one of our buttons (an old keyboard, a forged press): kept, the bot ignores it
    return InboundMessage(**base, kind=Kind.EVENT, event="callback", event_key=raw or None)


def button_word(prefix: str, value: str, lang: str) -> str | None:
    """What pressing a kind or confirm button 'says' to the bot, in the resident's
    language (the stored message then reads naturally for the agent too)."""
    if prefix == CB_KIND:
        for code, zh, en in bot.KINDS:
            if value == code:
                return en if lang == "en" else zh
        return None
    if prefix == CB_CONFIRM and value in ("yes", "no"):
        if value == "yes":
            return "yes" if lang == "en" else "确认"
        return "cancel" if lang == "en" else "取消"
    return None


def _name(user: User) -> str | None:
    return (user.full_name or "").strip()[:MAX_NAME] or None


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _what(msg: Message) -> str:
    for attr in ("contact", "poll", "dice", "game", "animation", "story", "invoice"):
        if getattr(msg, attr, None) is not None:
            return attr
    return "other"


def unreadable(update: Update) -> InboundMessage | None:
    """What to store when `to_message` itself failed on an update: the resident still
    wrote something, so it lands in their conversation for an agent (with the raw
    update kept) instead of vanishing behind a 200. None when no private sender is
    known (nothing to attribute it to)."""
    user = update.effective_user
    chat = update.effective_chat
    if user is None or (chat is not None and chat.type != ChatType.PRIVATE):
        return None
    raw = update.to_dict()
    return InboundMessage(
        channel=CHANNEL,
        sender_id=str(user.id),
        external_id=dedupe_key(update.update_id, user.id),
        kind=Kind.TEXT,
        sent_at=datetime.now(UTC),
        text="[unreadable Telegram message: see data.raw]",
        sender_name=_name(user),
        lang=lang_of(user),
        data={"raw": raw, "unreadable": True},
    )


def unparsed(data: dict[str, Any]) -> InboundMessage | None:
    """What to store when python-telegram-bot could not read an update at all (a shape
    newer than it, a field of another type): the webhook acknowledges it either way,
    so a resident's message would otherwise be lost without a trace. Read from the raw
    JSON, trusting only what identifies a private, human sender; None otherwise."""
    node: Any = None
    for key in ("message", "edited_message", "callback_query"):
        node = data.get(key)
        if isinstance(node, dict):
            break
    else:
        return None
    sender = node.get("from")
    if not isinstance(sender, dict) or sender.get("is_bot") is not False:
        return None
    uid = sender.get("id")
    if not isinstance(uid, int) or isinstance(uid, bool) or not 0 < uid < MAX_ID:
        return None
    holder = node.get("message") if key == "callback_query" else node
    chat = holder.get("chat") if isinstance(holder, dict) else None
    if key != "callback_query" and not isinstance(chat, dict):
        return None
    if isinstance(chat, dict) and chat.get("type") != ChatType.PRIVATE:
        return None
    names = [sender.get(k) for k in ("first_name", "last_name")]
    name = " ".join(n.strip() for n in names if isinstance(n, str) and n.strip())
    code = sender.get("language_code")
    return InboundMessage(
        channel=CHANNEL,
        sender_id=str(uid),
        external_id=dedupe_key(data["update_id"], uid),
        kind=Kind.TEXT,
        sent_at=datetime.now(UTC),
        text="[unreadable Telegram message: see data.raw]",
        sender_name=name[:MAX_NAME] or None,
        lang=_lang(code if isinstance(code, str) else ""),
        data={"raw": data, "unreadable": True},
    )
