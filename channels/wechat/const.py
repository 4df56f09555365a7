"""WeChat official account constants: API paths, error codes, limits, the menu."""

from __future__ import annotations

from typing import Any

from channels.bot import MENU_EMERGENCY, MENU_MY_TICKETS, MENU_REPORT

CHANNEL = "wechat"
PATH = "/wechat"

# WeChat pushes are a few KB; anything much larger is not from WeChat
MAX_BODY_BYTES = 64 * 1024
# WeChat waits 5 s for an answer, then retries (3 times) with the same MsgId
ANSWER_WITHIN_S = 5.0

TOKEN_PATH = "/cgi-bin/token"
CUSTOM_SEND_PATH = "/cgi-bin/message/custom/send"
TEMPLATE_SEND_PATH = "/cgi-bin/message/template/send"
MENU_CREATE_PATH = "/cgi-bin/menu/create"

# access token invalid / expired / not the latest: refresh once and retry
TOKEN_ERRORS = frozenset({40001, 42001, 40014})
# retrying cannot help: invalid openid, user unsubscribed / refuses, outside 48 h window
PERMANENT_ERRORS = frozenset({40003, 43004, 43019, 45015, 40037, 48001})
# refresh the token this long before WeChat says it expires
TOKEN_MARGIN_S = 300

MENU: dict[str, Any] = {
    "button": [
        {"type": "click", "name": "我要反映", "key": MENU_REPORT},
        {"type": "click", "name": "我的工单", "key": MENU_MY_TICKETS},
        {"type": "click", "name": "紧急求助", "key": MENU_EMERGENCY},
    ]
}
