"""Buttons for the bot's prompts: inline keyboards for choices, a location button.

The outbox carries plain texts (every channel shares them), so the keyboard is chosen
here from the text itself: a prompt of the self-service bot is recognised by its
exact wording in either language (taken from `channels.bot`, never copied), and gets
the buttons that answer it. Pure: no I/O.

- welcome: 我要反映 / 我的工单 / 紧急求助 (the bot's menu keys, as on WeChat);
- "which kind?": the six kinds;
- "where?": a button that shares the phone's location, and 跳过;
- "a photo?": 跳过 (the photo itself is attached the usual way);
- the summary: 提交 / 取消;
- cancelled, ticket created: the custom keyboard is removed.
"""

from __future__ import annotations

from telegram import (
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    KeyboardButton,
    ReplyKeyboardMarkup,
    ReplyKeyboardRemove,
)

from channels import bot
from channels.telegram.const import CB_CONFIRM, CB_KIND, CB_MENU

ReplyMarkup = InlineKeyboardMarkup | ReplyKeyboardMarkup | ReplyKeyboardRemove
LANGS = ("zh", "en")

_LABELS = {
    "report": {"zh": "我要反映", "en": "Report a problem"},
    "mine": {"zh": "我的工单", "en": "My tickets"},
    "emergency": {"zh": "紧急求助", "en": "Emergency"},
    "share_location": {"zh": "发送当前位置", "en": "Share my location"},
    "skip": {"zh": "跳过", "en": "skip"},
    "submit": {"zh": "提交", "en": "Submit"},
    "cancel": {"zh": "取消", "en": "Cancel"},
}


def _label(key: str, lang: str) -> str:
    return _LABELS[key][lang]


def _prefix(template: str) -> str:
    """The fixed start of a formatted prompt (up to its first placeholder)."""
    return template.split("{", 1)[0]


def _created_prefix(lang: str) -> str:
    return bot.ticket_created("\0", lang).split("\0", 1)[0]


def markup_for(text: str) -> ReplyMarkup | None:
    """The keyboard that answers this bot prompt, or None for any other text."""
    for lang in LANGS:
        if text == bot.say("welcome", lang):
            return welcome(lang)
        if text == bot.say("ask_kind", lang):
            return kinds(lang)
        if text == bot.say("ask_location", lang):
            return location_request(lang)
        if text == bot.say("ask_photo", lang):
            return skip_only(lang)
        if text.startswith(_prefix(bot.T["confirm"][lang])):
            return confirm(lang)
        if text == bot.say("cancelled", lang) or text.startswith(_created_prefix(lang)):
            return ReplyKeyboardRemove()
    return None


def welcome(lang: str) -> InlineKeyboardMarkup:
    def button(label: str, key: str) -> InlineKeyboardButton:
        return InlineKeyboardButton(_label(label, lang), callback_data=f"{CB_MENU}:{key}")

    return InlineKeyboardMarkup(
        [
            [button("report", bot.MENU_REPORT), button("mine", bot.MENU_MY_TICKETS)],
            [button("emergency", bot.MENU_EMERGENCY)],
        ]
    )


def kinds(lang: str) -> InlineKeyboardMarkup:
    buttons = [
        InlineKeyboardButton(en if lang == "en" else zh, callback_data=f"{CB_KIND}:{code}")
        for code, zh, en in bot.KINDS
    ]
    return InlineKeyboardMarkup([buttons[i : i + 3] for i in range(0, len(buttons), 3)])


def location_request(lang: str) -> ReplyKeyboardMarkup:
    return ReplyKeyboardMarkup(
        [
            [KeyboardButton(_label("share_location", lang), request_location=True)],
            [KeyboardButton(_label("skip", lang))],
        ],
        resize_keyboard=True,
        one_time_keyboard=True,
    )


def skip_only(lang: str) -> ReplyKeyboardMarkup:
    return ReplyKeyboardMarkup(
        [[KeyboardButton(_label("skip", lang))]], resize_keyboard=True, one_time_keyboard=True
    )


def confirm(lang: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton(_label("submit", lang), callback_data=f"{CB_CONFIRM}:yes"),
                InlineKeyboardButton(_label("cancel", lang), callback_data=f"{CB_CONFIRM}:no"),
            ]
        ]
    )
