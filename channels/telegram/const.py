"""Telegram Bot API constants: the webhook, limits, and our callback-data vocabulary."""

from __future__ import annotations

CHANNEL = "telegram"
PATH = "/telegram/webhook"
DEFAULT_API_BASE = "https://api.telegram.org"

# setWebhook's secret_token comes back on every update in this header
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
# an update is a few KB (a 4096-character message with entities and a quoted reply
# stays far below this); anything larger is not from Telegram
MAX_BODY_BYTES = 256 * 1024
# what we ask Telegram to send (setWebhook allowed_updates): the rest is not for us
ALLOWED_UPDATES = ("message", "edited_message", "callback_query")

# sendMessage takes 1-4096 characters; longer replies go out in parts
MAX_TEXT = 4096
# callback_data is 1-64 bytes
MAX_CALLBACK_DATA = 64

# 429 answers carry retry_after; waits up to this long happen inside the send (well
# under the outbox's 60 s lease), longer ones go back to the outbox as a transient
# failure and the next sends wait for the window to pass
RETRY_AFTER_WAIT_MAX_S = 30.0
# how long the start-up waits for getMe before finishing it in the background
STARTUP_WAIT_S = 10.0
# background retries of getMe while the Bot API is unreachable at start
INIT_RETRY_START_S = 1.0
INIT_RETRY_CAP_S = 60.0

# callback_data of our inline buttons: "<prefix>:<value>"
CB_MENU = "m"  # welcome menu: m:REPORT / m:MY_TICKETS / m:EMERGENCY (the bot's menu keys)
CB_KIND = "k"  # guided report kind: k:complaint
CB_CONFIRM = "c"  # guided report confirmation: c:yes / c:no
