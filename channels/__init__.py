"""Written channels (WeChat, Telegram, city app, Open311) feeding the one queue.

The public surface other packages and channel adapters use:

- `InboundMessage`, `Kind`, `Location`, `Media`, `Receipt`: the normalized message
  and what storing it answers;
- `ChannelHub`: `receive(msg, inline=...)`, `register_sender(sender)`, staff
  operations (`reply`, `create_ticket`, `attach_ticket`, `close`, `link_contacts`,
  `contact_history`, `phone_contact`);
- `ChannelSender` / `DeliveryError`: the outbound protocol a channel implements;
- `ChannelConfig`, `EmergencyRules`: configuration;
- `setup(app, deps, intake, settings)` -> the hub (stored under `HUB`), `routes(hub)`
  -> the staff API's RouteSpecs; `hub.context` is the cleanup context to start it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from channels.emergency_words import EmergencyRules
from channels.events import ConversationUpdated, EmergencyAlert
from channels.hub import ChannelConfig, ChannelHub
from channels.message import InboundMessage, Kind, Location, Media, Receipt
from channels.outbox import ChannelSender, DeliveryError
from channels.routes import conversation_routes
from ticketing.handlers import Deps
from ticketing.intake import Intake
from ticketing.webkit import RouteSpec

HUB = web.AppKey("channel_hub", ChannelHub)


def setup(app: web.Application, deps: Deps, intake: Intake, settings: Any) -> ChannelHub:
    """Build the hub from the service's settings (any object with the HOTLINE_ channel
    settings as attributes: this package does not import the hotline), keep it on the
    app, and add the configured channels' webhooks (WeChat at /wechat).

    The caller appends `hub.context` to the app's cleanup contexts after the store's
    (the hub needs the database, the bus and the ticket intake running)."""
    config = ChannelConfig(rules=load_rules(getattr(settings, "emergency_words_file", None)))
    hub = ChannelHub(deps, intake, config)
    app[HUB] = hub
    from channels import wechat  # the adapters build on the hub

    wechat.setup(app, hub, settings)
    return hub


def load_rules(path: Path | None) -> EmergencyRules:
    """The built-in emergency words plus a city's file (read once, at start)."""
    if path is None:
        return EmergencyRules()
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"emergency words file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"emergency words file {path}: expected a mapping")
    return EmergencyRules.from_mapping(data)


def routes(hub: ChannelHub) -> list[RouteSpec]:
    """The staff API (conversations, contacts) as RouteSpecs, for the OpenAPI document."""
    return conversation_routes(hub)


__all__ = [
    "HUB",
    "ChannelConfig",
    "ChannelHub",
    "ChannelSender",
    "ConversationUpdated",
    "DeliveryError",
    "EmergencyAlert",
    "EmergencyRules",
    "InboundMessage",
    "Kind",
    "Location",
    "Media",
    "Receipt",
    "load_rules",
    "routes",
    "setup",
]
