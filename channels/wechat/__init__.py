"""WeChat official account (公众号) at /wechat: webhook, sender, menu.

Shape shared by every channel: `const.py`, `client.py` (vendor calls only),
`inbound.py` (raw push -> the intake's message), `routes.py`, and `setup` here.
"""

from __future__ import annotations

import logging
from datetime import UTC
from typing import Any

from aiohttp import web

from channels.hub import ChannelHub
from channels.wechat.client import WeChatClient, WeChatSender
from channels.wechat.const import MENU, PATH
from channels.wechat.routes import WeChatConfig, WeChatWebhook
from channels.wechat.template import TemplateLayout

log = logging.getLogger(__name__)


def config_from(settings: Any) -> WeChatConfig | None:
    """The WeChat part of the service settings (None when no token is set)."""
    token = getattr(settings, "wechat_token", None)
    if not token:
        return None
    return WeChatConfig(
        token=token,
        aes_key=getattr(settings, "wechat_aes_key", None),
        app_id=getattr(settings, "wechat_app_id", None),
        app_secret=getattr(settings, "wechat_app_secret", None),
        api_base=getattr(settings, "wechat_api_base", "https://api.weixin.qq.com"),
        max_age_s=int(getattr(settings, "wechat_max_age_s", 300)),
        template_id=getattr(settings, "wechat_template_id", None),
        template_fields=getattr(settings, "wechat_template_fields", None),
    )


def setup(app: web.Application, hub: ChannelHub, settings: Any) -> WeChatWebhook | None:
    """Add /wechat and the WeChat sender when HOTLINE_WECHAT_TOKEN is set."""
    config = config_from(settings)
    if config is None:
        return None
    webhook = WeChatWebhook(hub, config)
    app.router.add_get(PATH, webhook.verify)
    app.router.add_post(PATH, webhook.receive)
    if config.app_id and config.app_secret:
        client = WeChatClient(config.app_id, config.app_secret, config.api_base)
        tz = getattr(settings, "tz", None) or UTC
        layout = TemplateLayout.parse(config.template_fields)
        hub.register_sender(WeChatSender(client, config.template_id, layout, tz))
    else:
        log.warning("WeChat replies disabled: HOTLINE_WECHAT_APP_ID/APP_SECRET unset")
    return webhook


async def publish_menu(settings: Any) -> dict[str, Any]:
    """Publish the account's menu (我要反映 / 我的工单 / 紧急求助); returns it."""
    config = config_from(settings)
    if config is None or not config.app_id or not config.app_secret:
        raise ValueError("set HOTLINE_WECHAT_TOKEN, HOTLINE_WECHAT_APP_ID and _APP_SECRET")
    client = WeChatClient(config.app_id, config.app_secret, config.api_base)
    await client.start()
    try:
        await client.create_menu(MENU)
    finally:
        await client.stop()
    return MENU


__all__ = ["MENU", "WeChatClient", "WeChatConfig", "WeChatSender", "publish_menu", "setup"]
