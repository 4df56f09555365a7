"""The self-service bot of the text channels, as a pure state machine.

`step(state, msg)` decides synchronously from the conversation's stored bot state and
the new message: the next state, the replies, and at most one effect for the caller
to perform (look a ticket up, list the resident's tickets, create the ticket of a
guided report). No I/O here, so every path is a plain unit test; the intake runs it
inside the message's transaction and performs the effect afterwards.

Flows (WeChat menu keys and Telegram commands land on the same words):
- status:   "查询 2026112200123" / "status 2026112200123" / "/status N" / a bare number
- mine:     "我的工单" / "my tickets" / "/mytickets" / menu MY_TICKETS
- report:   "我要反映" / "report" / "/new" / menu REPORT ->
            kind -> description -> location (share or type; skip) -> photo (skip)
            -> confirm -> ticket number
- cancel:   "取消" / "cancel" / "/cancel" at any step
- anything else is for an agent (`to_agent`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from channels.message import InboundMessage, Kind

MENU_REPORT = "REPORT"
MENU_MY_TICKETS = "MY_TICKETS"
MENU_EMERGENCY = "EMERGENCY"

NUMBER_RE = re.compile(r"(?<!\d)(\d{13,16})(?!\d)")
KINDS: tuple[tuple[str, str, str], ...] = (  # (ticket kind, 中文, English)
    ("consultation", "咨询", "question"),
    ("request", "求助", "request"),
    ("complaint", "投诉", "complaint"),
    ("report", "举报", "report"),
    ("suggestion", "建议", "suggestion"),
    ("praise", "表扬", "praise"),
)
MAX_DESCRIPTION = 2000
MIN_DESCRIPTION = 5

_START = {"我要反映", "我要投诉", "反映问题", "report", "/new", "new report", "/report"}
_MINE = {"我的工单", "我的投诉", "my tickets", "/mytickets", "mytickets"}
_CANCEL = {"取消", "退出", "cancel", "/cancel", "quit"}
_SKIP = {"跳过", "没有", "无", "skip", "/skip", "no", "none"}
_YES = {"1", "确认", "确定", "是", "提交", "yes", "y", "ok", "confirm"}
_NO = {"2", "不", "否", "no", "n"}
_STATUS_PREFIX = re.compile(r"^(查询|查|进度|状态|/?status)\s*[:：]?\s*", re.IGNORECASE)
_EMERGENCY_WORDS = {"紧急求助", "emergency", "/emergency"}

T: dict[str, dict[str, str]] = {
    "welcome": {
        "zh": "您好，这里是 12345 市民服务热线。直接留言，话务员会在 3 分钟内回复；"
        "也可以发送“我要反映”提交诉求，“查询+工单号”查进度，“我的工单”看全部工单。"
        "遇到火灾、伤病、治安、交通事故请直接拨打 119 / 120 / 110 / 122。",
        "en": "Hello, this is the 12345 citizen hotline. Write to us and an agent answers "
        "within 3 minutes; send 'report' to file a case, 'status NUMBER' to follow one, "
        "'my tickets' for all of yours. For fire, injury, crime or traffic accidents call "
        "119 / 120 / 110 / 122 directly.",
    },
    "ask_kind": {
        "zh": "请选择诉求类型，回复数字：1 咨询  2 求助  3 投诉  4 举报  5 建议  6 表扬"
        "（随时回复“取消”退出）",
        "en": "What kind of case? Reply with a number: 1 question  2 request  3 complaint  "
        "4 report  5 suggestion  6 praise (reply 'cancel' to stop)",
    },
    "ask_description": {
        "zh": "请描述您要反映的问题（至少 5 个字）：",
        "en": "Please describe the problem (at least 5 characters):",
    },
    "too_short": {
        "zh": "描述太短了，请再多写几句：",
        "en": "That is too short; please tell us a little more:",
    },
    "too_long": {
        "zh": "描述太长了（最多 2000 字），请精简后再发：",
        "en": "That is too long (2000 characters at most); please shorten it:",
    },
    "ask_location": {
        "zh": "问题发生在哪里？请发送位置，或输入地址；没有请回复“跳过”。",
        "en": "Where is it? Share a location or type the address; reply 'skip' if none.",
    },
    "ask_photo": {
        "zh": "如有照片请发送一张；没有请回复“跳过”。",
        "en": "Send a photo if you have one; reply 'skip' if not.",
    },
    "confirm": {
        "zh": "请确认：\n类型：{kind}\n内容：{description}\n地点：{where}\n照片：{photo}\n"
        "回复 1 提交，2 取消。",
        "en": "Please confirm:\nKind: {kind}\nText: {description}\nWhere: {where}\n"
        "Photo: {photo}\nReply 1 to submit, 2 to cancel.",
    },
    "cancelled": {"zh": "已取消。", "en": "Cancelled."},
    "again": {"zh": "没看懂，请按提示回复。", "en": "Sorry, I did not get that."},
    "none": {"zh": "无", "en": "none"},
    "yes": {"zh": "有", "en": "yes"},
    "emergency": {
        "zh": "【紧急求助】火灾、燃气泄漏请拨 119；伤病急救请拨 120；治安报警请拨 110；"
        "交通事故请拨 122。我们已通知值班主管，话务员会马上联系您。",
        "en": "EMERGENCY: fire or gas leak 119; ambulance 120; police 110; traffic "
        "accident 122. A supervisor has been alerted and an agent will contact you now.",
    },
}


def say(key: str, lang: str, **kw: Any) -> str:
    text = T[key].get(lang) or T[key]["zh"]
    return text.format(**kw) if kw else text


@dataclass(frozen=True)
class LookupTicket:
    number: str


@dataclass(frozen=True)
class MyTickets:
    pass


@dataclass(frozen=True)
class CreateTicket:
    """A confirmed guided report: the caller creates the ticket and answers its number."""

    kind: str
    description: str
    address: str | None = None
    lat: float | None = None
    lon: float | None = None
    photo: dict[str, Any] | None = None


Effect = LookupTicket | MyTickets | CreateTicket


@dataclass(frozen=True)
class Step:
    state: dict[str, Any] | None
    replies: tuple[str, ...] = ()
    effect: Effect | None = None
    to_agent: bool = False  # nothing for the bot: an agent must read it
    emergency: bool = False  # the resident pressed 紧急求助


def _norm(text: str | None) -> str:
    return " ".join((text or "").strip().lower().split())


def step(state: dict[str, Any] | None, msg: InboundMessage) -> Step:
    """One message through the bot. `state` is None when no flow is running."""
    lang = msg.lang if msg.lang in ("zh", "en") else "zh"
    text = _norm(msg.text)
    if msg.kind is Kind.EVENT:
        return _event(state, msg, lang)
    if state and state.get("flow") == "report":
        if text in _CANCEL:
            return Step(None, (say("cancelled", lang),))
        return _report(state, msg, text, lang)
    if msg.kind is not Kind.TEXT:
        return Step(state, to_agent=True)
    if text in _START:
        return Step({"flow": "report", "at": "kind"}, (say("ask_kind", lang),))
    if text in _MINE:
        return Step(None, effect=MyTickets())
    if text in _EMERGENCY_WORDS:
        return Step(None, (say("emergency", lang),), emergency=True)
    stripped = _STATUS_PREFIX.sub("", text, count=1)
    if stripped != text or NUMBER_RE.fullmatch(text):
        m = NUMBER_RE.fullmatch(stripped.replace(" ", ""))
        if m:
            return Step(None, effect=LookupTicket(m.group(1)))
    return Step(state, to_agent=True)


def _event(state: dict[str, Any] | None, msg: InboundMessage, lang: str) -> Step:
    ev = (msg.event or "").lower()
    if ev == "subscribe":
        return Step(None, (say("welcome", lang),))
    if ev == "click":
        if msg.event_key == MENU_REPORT:
            return Step({"flow": "report", "at": "kind"}, (say("ask_kind", lang),))
        if msg.event_key == MENU_MY_TICKETS:
            return Step(None, effect=MyTickets())
        if msg.event_key == MENU_EMERGENCY:
            return Step(None, (say("emergency", lang),), emergency=True)
    return Step(state)  # unsubscribe, VIEW, LOCATION reports, delivery receipts: nothing


def _report(state: dict[str, Any], msg: InboundMessage, text: str, lang: str) -> Step:
    at = state.get("at")
    draft = dict(state.get("draft") or {})
    if at == "kind":
        choice = next(
            (k for i, (k, zh, en) in enumerate(KINDS, 1) if text in (str(i), zh, en, k)),
            None,
        )
        if choice is None:
            return Step(state, (say("ask_kind", lang),))
        return Step(
            {"flow": "report", "at": "description", "draft": {"kind": choice}},
            (say("ask_description", lang),),
        )
    if at == "description":
        body = (msg.text or "").strip() if msg.kind is Kind.TEXT else ""
        if len(body) < MIN_DESCRIPTION:
            return Step(state, (say("too_short", lang),))
        if len(body) > MAX_DESCRIPTION:
            return Step(state, (say("too_long", lang),))
        draft["description"] = body
        return Step(
            {"flow": "report", "at": "location", "draft": draft}, (say("ask_location", lang),)
        )
    if at == "location":
        if msg.kind is Kind.LOCATION and msg.location is not None:
            draft.update(lat=msg.location.lat, lon=msg.location.lon, address=msg.location.label)
        elif msg.kind is Kind.TEXT and text in _SKIP:
            pass
        elif msg.kind is Kind.TEXT and text:
            draft["address"] = (msg.text or "").strip()[:300]
        else:
            return Step(state, (say("ask_location", lang),))
        return Step({"flow": "report", "at": "photo", "draft": draft}, (say("ask_photo", lang),))
    if at == "photo":
        if msg.kind is Kind.IMAGE and msg.media:
            draft["photo"] = msg.media[0].to_dict()
        elif not (msg.kind is Kind.TEXT and text in _SKIP):
            return Step(state, (say("ask_photo", lang),))
        return Step({"flow": "report", "at": "confirm", "draft": draft}, (_summary(draft, lang),))
    if at == "confirm":
        if text in _YES:
            return Step(
                None,
                effect=CreateTicket(
                    kind=draft["kind"],
                    description=draft["description"],
                    address=draft.get("address"),
                    lat=draft.get("lat"),
                    lon=draft.get("lon"),
                    photo=draft.get("photo"),
                ),
            )
        if text in _NO:
            return Step(None, (say("cancelled", lang),))
        return Step(state, (_summary(draft, lang),))
    return Step(None, (say("again", lang),))  # a state from an older version: start over


def _summary(draft: dict[str, Any], lang: str) -> str:
    names = {k: (zh if lang == "zh" else en) for k, zh, en in KINDS}
    where = draft.get("address") or (
        f"{draft['lat']:.5f}, {draft['lon']:.5f}" if draft.get("lat") is not None else None
    )
    return say(
        "confirm",
        lang,
        kind=names.get(draft.get("kind", ""), draft.get("kind", "")),
        description=draft.get("description", ""),
        where=where or say("none", lang),
        photo=say("yes", lang) if draft.get("photo") else say("none", lang),
    )


def ticket_created(number: str, lang: str) -> str:
    if lang == "en":
        return f"Submitted. Your ticket number is {number}; send 'status {number}' to follow it."
    return f"已受理，工单号 {number}。发送“查询 {number}”可随时查看进度。"


STATUS_NAMES: dict[str, tuple[str, str]] = {
    "new": ("已受理，待派单", "received"),
    "answered": ("已直接答复", "answered"),
    "dispatched": ("已派发承办单位", "sent to the department"),
    "accepted": ("承办单位处理中", "being handled"),
    "returned": ("退回重新派单中", "being re-assigned"),
    "extension_requested": ("承办单位申请延期", "extension requested"),
    "replied": ("承办单位已答复，待回访", "department replied"),
    "closed": ("已办结", "closed"),
    "reopened": ("已重新办理", "reopened"),
    "merged": ("已合并到其他工单", "merged into another ticket"),
}


def status_text(status: str, lang: str) -> str:
    zh, en = STATUS_NAMES.get(status, (status, status))
    return en if lang == "en" else zh


def ticket_status_reply(view: dict[str, Any] | None, number: str, lang: str) -> str:
    if view is None:
        return (
            f"No ticket {number} among yours."
            if lang == "en"
            else f"没有找到您的工单 {number}，请核对工单号。"
        )
    st = status_text(view["status"], lang)
    if lang == "en":
        return f"Ticket {number}: {st}." + (f" Reply: {view['reply']}" if view.get("reply") else "")
    return f"工单 {number}：{st}。" + (f"答复：{view['reply']}" if view.get("reply") else "")


def my_tickets_reply(items: list[dict[str, Any]], lang: str) -> str:
    if not items:
        return "You have no tickets yet." if lang == "en" else "您还没有工单。"
    lines = [f"{i['number']} {status_text(i['status'], lang)} {i['title']}" for i in items]
    head = "Your tickets:" if lang == "en" else "您的工单："
    return "\n".join([head, *lines])
