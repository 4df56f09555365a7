"""A local fake of the Telegram Bot API that records calls, and real update shapes.

The fake answers like https://api.telegram.org/bot<token>/<method>: `{"ok": true,
"result": ...}`, or `{"ok": false, "error_code", "description", "parameters"}` for
scripted failures (429 with retry_after, 403 blocked, 5xx). python-telegram-bot posts
form fields with JSON-encoded objects; the fake decodes them back.

The update builders follow the Bot API's Update / Message / CallbackQuery objects
(https://core.telegram.org/bots/api#update) field for field.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

from aiohttp import web

TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
SECRET = "hotline-Webhook_secret-1"
BOT_USER = {
    "id": 123456789,
    "is_bot": True,
    "first_name": "12345 市民热线",
    "username": "Hotline12345Bot",
    "can_join_groups": False,
    "can_read_all_group_messages": False,
    "supports_inline_queries": False,
    "can_connect_to_business": False,
    "has_main_web_app": False,
}
_JSON_FIELDS = {"reply_markup", "allowed_updates", "entities", "link_preview_options"}
_INT_FIELDS = {"chat_id", "message_id"}


class FakeBotApi:
    """Records every call as (method, params). `fail` scripts the next answers of a
    method: `fake.fail["sendMessage"] = [(429, {"retry_after": 1})]` (None: that call
    is answered normally)."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.times: list[float] = []
        self.fail: dict[str, list[tuple[int, dict[str, Any] | str]]] = {}
        self.down = False
        self.delays: dict[str, list[float]] = {}  # seconds before answering, per call
        self.webhook: dict[str, Any] = {}
        self._message_ids = itertools.count(5000)
        self.base = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.match_info["method"]
        params = await _params(request)
        self.calls.append((method, params))
        self.times.append(time.monotonic())
        if self.delays.get(method):
            await asyncio.sleep(self.delays[method].pop(0))
        if self.down:
            return _error(502, "Bad Gateway")
        scripted = self.fail.get(method)
        entry = scripted.pop(0) if scripted else None  # None in the script: answer normally
        if entry is not None:
            status, extra = entry
            if isinstance(extra, str):
                return _error(status, extra)
            desc = "Too Many Requests: retry after" if status == 429 else "error"
            return _error(status, desc, extra)
        answer = getattr(self, "m_" + method, None)
        if answer is None:
            return _error(404, "Not Found: method not found")
        refusal = getattr(self, "check_" + method, lambda p: None)(params)
        if refusal is not None:
            return _error(400, refusal)
        return web.json_response({"ok": True, "result": answer(params)})

    # ------------------------------------------------------------------ methods

    def m_getMe(self, p: dict[str, Any]) -> Any:
        return BOT_USER

    def check_sendMessage(self, p: dict[str, Any]) -> str | None:
        """The Bot API server's own checks: it trims the text, then counts code points
        (tdlib's utf8_length) against 4096."""
        text = str(p.get("text", "")).strip()
        if not text:
            return "Bad Request: message text is empty"
        if len(text) > 4096:
            return "Bad Request: message is too long"
        return None

    def m_sendMessage(self, p: dict[str, Any]) -> Any:
        chat_id = p["chat_id"]
        return {
            "message_id": next(self._message_ids),
            "from": BOT_USER,
            "chat": {"id": chat_id, "first_name": "Li", "type": "private"},
            "date": int(time.time()),
            "text": p["text"],
        }

    def m_answerCallbackQuery(self, p: dict[str, Any]) -> Any:
        return True

    def m_editMessageReplyMarkup(self, p: dict[str, Any]) -> Any:
        return {
            "message_id": p.get("message_id", 1),
            "from": BOT_USER,
            "chat": {"id": p.get("chat_id", 1), "first_name": "Li", "type": "private"},
            "date": int(time.time()),
            "text": "(edited)",
        }

    def m_setWebhook(self, p: dict[str, Any]) -> Any:
        self.webhook = dict(p)
        return True

    def m_getWebhookInfo(self, p: dict[str, Any]) -> Any:
        return {
            "url": self.webhook.get("url", ""),
            "has_custom_certificate": False,
            "pending_update_count": 0,
            "allowed_updates": self.webhook.get("allowed_updates", []),
        }

    # ------------------------------------------------------------------ reading

    def called(self, method: str) -> list[dict[str, Any]]:
        return [p for m, p in self.calls if m == method]

    def sent_texts(self, chat_id: int | None = None) -> list[str]:
        return [
            p["text"]
            for p in self.called("sendMessage")
            if chat_id is None or p["chat_id"] == chat_id
        ]


async def _params(request: web.Request) -> dict[str, Any]:
    if request.content_type == "application/json":
        body = await request.json()
        return dict(body) if isinstance(body, dict) else {}
    form = await request.post() if request.can_read_body else {}
    out: dict[str, Any] = {}
    for key, value in {**dict(request.query), **dict(form)}.items():
        if not isinstance(value, str):
            continue
        if key in _JSON_FIELDS:
            out[key] = json.loads(value)
        elif key in _INT_FIELDS and value.lstrip("-").isdigit():
            out[key] = int(value)
        else:
            out[key] = value
    return out


def _error(status: int, description: str, parameters: dict[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=status)


# ---------------------------------------------------------------------- real update shapes

USER_ID = 1111111
_update_ids = itertools.count(900_000_001)


def user(uid: int = USER_ID, lang: str | None = "zh-hans", name: str = "Li") -> dict[str, Any]:
    u: dict[str, Any] = {"id": uid, "is_bot": False, "first_name": name, "last_name": "Wei"}
    u["username"] = f"resident{uid}"
    if lang:
        u["language_code"] = lang
    return u


def chat(uid: int = USER_ID, name: str = "Li") -> dict[str, Any]:
    return {
        "id": uid,
        "first_name": name,
        "last_name": "Wei",
        "username": f"resident{uid}",
        "type": "private",
    }


def next_update_id() -> int:
    return next(_update_ids)


def message(
    content: dict[str, Any],
    uid: int = USER_ID,
    update_id: int | None = None,
    lang: str | None = "zh-hans",
    message_id: int = 1365,
) -> dict[str, Any]:
    """An update carrying a new message with `content` (text, photo, location, ...)."""
    return {
        "update_id": update_id or next_update_id(),
        "message": {
            "message_id": message_id,
            "from": user(uid, lang),
            "chat": chat(uid),
            "date": int(time.time()),
            **content,
        },
    }


def text(body: str, **kw: Any) -> dict[str, Any]:
    content: dict[str, Any] = {"text": body}
    if body.startswith("/"):
        word = body.split()[0]
        content["entities"] = [{"offset": 0, "length": len(word), "type": "bot_command"}]
    return message(content, **kw)


def photo(caption: str | None = None, **kw: Any) -> dict[str, Any]:
    sizes = [
        {
            "file_id": "AgACAgUAAxkBAAIBZ2X-small",
            "file_unique_id": "AQADs1",
            "file_size": 1254,
            "width": 90,
            "height": 67,
        },
        {
            "file_id": "AgACAgUAAxkBAAIBZ2X-medium",
            "file_unique_id": "AQADs2",
            "file_size": 16832,
            "width": 320,
            "height": 240,
        },
        {
            "file_id": "AgACAgUAAxkBAAIBZ2X-large",
            "file_unique_id": "AQADs3",
            "file_size": 96250,
            "width": 1280,
            "height": 960,
        },
    ]
    content: dict[str, Any] = {"photo": sizes}
    if caption:
        content["caption"] = caption
    return message(content, **kw)


def location(lat: float, lon: float, **kw: Any) -> dict[str, Any]:
    return message({"location": {"latitude": lat, "longitude": lon}}, **kw)


def edited(
    body: str, message_id: int = 1365, uid: int = USER_ID, update_id: int | None = None
) -> dict[str, Any]:
    now = int(time.time())
    return {
        "update_id": update_id or next_update_id(),
        "edited_message": {
            "message_id": message_id,
            "from": user(uid),
            "chat": chat(uid),
            "date": now - 30,
            "edit_date": now,
            "text": body,
        },
    }


def callback(
    data: str, uid: int = USER_ID, message_id: int = 5001, update_id: int | None = None
) -> dict[str, Any]:
    """A press of an inline button under the bot's message `message_id`."""
    return {
        "update_id": update_id or next_update_id(),
        "callback_query": {
            "id": f"4382bfdwdsb323b2d9{next(_update_ids)}",
            "from": user(uid),
            "message": {
                "message_id": message_id,
                "from": BOT_USER,
                "chat": chat(uid),
                "date": int(time.time()) - 5,
                "text": "请选择诉求类型",
            },
            "chat_instance": "-8719230391825419512",
            "data": data,
        },
    }


def headers(secret: str = SECRET) -> dict[str, str]:
    return {"X-Telegram-Bot-Api-Secret-Token": secret, "Content-Type": "application/json"}
