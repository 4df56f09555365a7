"""WeChat official account constants: API paths, error codes, limits, the menu."""

from __future__ import annotations

from typing import Any

from channels.bot import MENU_EMERGENCY, MENU_MY_TICKETS, MENU_REPORT

CHANNEL = "wechat"
PATH = "/wechat"

# WeChat pushes are a few KB; anything much larger is not from WeChat
MAX_BODY_BYTES = 64 * 1024
# WeChat waits 5 s for an answer, then retries (3 times) with the same MsgId; after
# the last try the resident sees "该公众号暂时无法提供服务". Our budget leaves room for
# the network: past it we answer "success" and send the replies as 客服消息.
ANSWER_WITHIN_S = 5.0
REPLY_BUDGET_S = 4.0
# a text (passive reply or 客服消息) longer than this many UTF-8 bytes is refused by
# WeChat (45002 "content size out of limit"; a passive reply shows the resident
# "该公众号暂时无法提供服务")
MAX_TEXT_BYTES = 2048

# getStableAccessToken: in normal mode every caller gets the same token while it is
# valid, so instances sharing an AppID do not revoke each other's (cgi-bin/token does:
# each fetch leaves the previous token five minutes to live)
TOKEN_PATH = "/cgi-bin/stable_token"
CUSTOM_SEND_PATH = "/cgi-bin/message/custom/send"
TEMPLATE_SEND_PATH = "/cgi-bin/message/template/send"
MENU_CREATE_PATH = "/cgi-bin/menu/create"

# access token invalid / expired / not the latest: refresh once and retry
TOKEN_ERRORS = frozenset({40001, 42001, 40014})
# "system busy, try again later": retried once after a pause, then left to the outbox
BUSY_ERROR = -1
BUSY_RETRY_S = 1.0
# a 客服消息 cannot reach the resident: outside the 48 h window (45015), or 20 messages
# sent since the resident last wrote (45047); a template message still can
OUTSIDE_WINDOW_ERRORS = frozenset({45015, 45047})
# retrying cannot help: invalid openid, user unsubscribed / refuses, outside 48 h window,
# too many messages since the resident last wrote, content too long, bad template data
PERMANENT_ERRORS = frozenset({40003, 43004, 43019, 45015, 45047, 45002, 40037, 47003, 48001})
# refresh the token this long before WeChat says it expires
TOKEN_MARGIN_S = 300

MENU: dict[str, Any] = {
    "button": [
        {"type": "click", "name": "我要反映", "key": MENU_REPORT},
        {"type": "click", "name": "我的工单", "key": MENU_MY_TICKETS},
        {"type": "click", "name": "紧急求助", "key": MENU_EMERGENCY},
    ]
}
