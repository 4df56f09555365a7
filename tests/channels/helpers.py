"""Shared helpers for the channel tests: messages and a recording sender."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

from channels import HUB, ChannelHub, DeliveryError, InboundMessage, Kind, Location, Media

_ids = itertools.count(1)


def text(
    body: str, sender: str = "openid-1", channel: str = "wechat", ext: str | None = None, **kw: Any
) -> InboundMessage:
    return InboundMessage(
        channel=channel,
        sender_id=sender,
        external_id=ext or f"m{next(_ids)}",
        kind=Kind.TEXT,
        sent_at=datetime.now(UTC),
        text=body,
        **kw,
    )


def event(name: str, key: str | None = None, sender: str = "openid-1") -> InboundMessage:
    return InboundMessage(
        channel="wechat",
        sender_id=sender,
        external_id=f"e{next(_ids)}",
        kind=Kind.EVENT,
        sent_at=datetime.now(UTC),
        event=name,
        event_key=key,
    )


def location(lat: float, lon: float, label: str | None, sender: str = "openid-1") -> InboundMessage:
    return InboundMessage(
        channel="wechat",
        sender_id=sender,
        external_id=f"l{next(_ids)}",
        kind=Kind.LOCATION,
        sent_at=datetime.now(UTC),
        location=Location(lat, lon, label),
    )


def image(ref: str, sender: str = "openid-1") -> InboundMessage:
    return InboundMessage(
        channel="wechat",
        sender_id=sender,
        external_id=f"i{next(_ids)}",
        kind=Kind.IMAGE,
        sent_at=datetime.now(UTC),
        media=(Media(ref, "image", "http://example.invalid/p.jpg"),),
    )


class RecordingSender:
    """A ChannelSender that records and can be told to fail."""

    def __init__(self, channel: str = "wechat") -> None:
        self.channel = channel
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.fail_next = 0
        self.permanent = False
        self.retry_after: float | None = None

    async def send(self, recipient: str, payload: dict[str, Any]) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise DeliveryError("boom", permanent=self.permanent, retry_after=self.retry_after)
        self.sent.append((recipient, payload))


def hub_of(api: Any) -> ChannelHub:
    return api.app[HUB]


async def manual(api: Any) -> ChannelHub:
    """The hub with its outbox task stopped: the test runs `hub.outbox.run_once()`."""
    hub = hub_of(api)
    await hub.outbox.stop()
    return hub
