"""Events the channels raise on the bus (registered so other instances can read them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ticketing.events import DomainEvent, register_event


@register_event
@dataclass(frozen=True)
class EmergencyAlert(DomainEvent):
    """Emergency words in a resident's message: a supervisor must look now.

    `lines`: the numbers the resident was told to call, comma-separated ("119,120").
    `excerpt`: the first words of the message, for the alert banner.
    """

    name: ClassVar[str] = "channel.emergency"
    conversation_id: int
    channel: str
    lines: str
    excerpt: str


@register_event
@dataclass(frozen=True)
class ConversationUpdated(DomainEvent):
    """A conversation changed (new message, reply, ticket): consoles refresh it."""

    name: ClassVar[str] = "conversation.updated"
    conversation_id: int
    channel: str
    waiting: bool
    emergency: bool
