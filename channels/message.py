"""The one shape every channel turns its messages into, and what the intake answers.

A channel adapter's whole job on the way in is raw update -> `InboundMessage`;
everything after (contacts, conversations, the bot, emergencies, tickets) is shared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    TEXT = "text"
    IMAGE = "image"
    VOICE = "voice"
    VIDEO = "video"
    LOCATION = "location"
    LINK = "link"
    EVENT = "event"


CHANNELS = frozenset({"wechat", "telegram", "app", "web", "sms", "email"})


@dataclass(frozen=True)
class Location:
    lat: float
    lon: float
    label: str | None = None  # an address or place name when the channel gives one

    def to_dict(self) -> dict[str, Any]:
        return {"lat": self.lat, "lon": self.lon, "label": self.label}


@dataclass(frozen=True)
class Media:
    """A reference to media the channel holds (WeChat MediaId, Telegram file_id, a URL);
    bytes are fetched only when an agent attaches them to a ticket."""

    ref: str
    kind: str  # image | voice | video | file
    url: str | None = None
    content_type: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "kind": self.kind, "url": self.url, "type": self.content_type}


@dataclass(frozen=True)
class InboundMessage:
    """One message from a resident, normalized.

    `external_id` is the channel's own id for the message (WeChat MsgId, or
    FromUserName+CreateTime for events; Telegram update_id; the app's
    Idempotency-Key): the intake stores each (channel, external_id) once.
    `event`: for kind=event, the event name (subscribe, unsubscribe, click, view,
    location, ...), with `event_key` for menu keys.
    """

    channel: str
    sender_id: str
    external_id: str
    kind: Kind
    sent_at: datetime
    text: str | None = None
    media: tuple[Media, ...] = ()
    location: Location | None = None
    event: str | None = None
    event_key: str | None = None
    sender_name: str | None = None
    lang: str = "zh"
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.channel not in CHANNELS:
            raise ValueError(f"unknown channel {self.channel!r}")
        if not self.sender_id or len(self.sender_id) > 128:
            raise ValueError("sender_id must be 1..128 characters")
        if not self.external_id or len(self.external_id) > 128:
            raise ValueError("external_id must be 1..128 characters")
        if self.sent_at.tzinfo is None:
            raise ValueError("sent_at must be timezone-aware")
        if self.kind is Kind.EVENT and not self.event:
            raise ValueError("an event message needs its event name")


@dataclass(frozen=True)
class Receipt:
    """What the intake tells the channel once the message is durably stored.

    `replies`: texts to give the resident now (emergency answer, bot prompts), in
    order; a channel with a synchronous reply (WeChat passive reply) sends them
    there when `inline`, otherwise they are already in the outbox. `duplicate`: this
    (channel, external_id) was stored before; the replies are the ones stored then.
    """

    message_id: int
    conversation_id: int
    duplicate: bool
    replies: tuple[str, ...] = ()
    emergency_lines: tuple[str, ...] = ()
    ticket_number: str | None = None
