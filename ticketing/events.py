"""Domain events: small frozen dataclasses, each with a stable name.

They cross process boundaries (PostgreSQL NOTIFY), so each serialises to a compact
JSON object `{"name": ..., **fields}` and back through `event_from_dict`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar


@dataclass(frozen=True)
class DomainEvent:
    name: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class TicketCreated(DomainEvent):
    name: ClassVar[str] = "ticket.created"
    number: str
    kind: str
    channel: str
    category: str | None
    urgency: str


@dataclass(frozen=True)
class TicketTransitioned(DomainEvent):
    name: ClassVar[str] = "ticket.transitioned"
    number: str
    action: str
    from_status: str
    to_status: str
    actor: str


@dataclass(frozen=True)
class DeadlineWarning(DomainEvent):
    name: ClassVar[str] = "deadline.warning"
    number: str
    deadline: str  # "dispatch" or "feedback"
    due_at: str  # ISO 8601 UTC


@dataclass(frozen=True)
class DeadlineBreached(DomainEvent):
    name: ClassVar[str] = "deadline.breached"
    number: str
    deadline: str
    due_at: str


@dataclass(frozen=True)
class SessionRevoked(DomainEvent):
    """A staff session ended; every instance drops it from its cache."""

    name: ClassVar[str] = "auth.session_revoked"
    token_hash: str


@dataclass(frozen=True)
class CatalogChanged(DomainEvent):
    """Departments or categories changed; every instance reloads its copy."""

    name: ClassVar[str] = "catalog.changed"


@dataclass(frozen=True)
class WorkItemChanged(DomainEvent):
    """A work-queue item of any kind (conversation, call, callback) was added, changed
    or removed; consoles re-read it. Publish after the commit, like every event."""

    name: ClassVar[str] = "work_item.changed"
    kind: str
    ref: str


@dataclass(frozen=True)
class CardCacheInvalidated(DomainEvent):
    """A citizen card or partner changed; every instance drops its cached copy
    (topic "card" or "partner", key the card number or partner id)."""

    name: ClassVar[str] = "card.cache_invalidated"
    topic: str
    key: str


EVENT_TYPES: dict[str, type[DomainEvent]] = {
    cls.name: cls
    for cls in (
        TicketCreated,
        TicketTransitioned,
        DeadlineWarning,
        DeadlineBreached,
        SessionRevoked,
        CatalogChanged,
        WorkItemChanged,
        CardCacheInvalidated,
    )
}


E = TypeVar("E", bound=type[DomainEvent])


def register_event(cls: E) -> E:
    """Class decorator for events defined outside this module (channels, calls, ACD):
    without it the PostgreSQL bus could not rebuild them on the other instances."""
    known = EVENT_TYPES.get(cls.name)
    if known is not None and known is not cls:
        raise ValueError(f"event name {cls.name!r} is taken by {known.__qualname__}")
    EVENT_TYPES[cls.name] = cls
    return cls


class UnknownEvent(ValueError):
    pass


def event_from_dict(data: dict[str, Any]) -> DomainEvent:
    """Rebuild an event; unknown names or fields raise UnknownEvent (never a crash)."""
    try:
        cls = EVENT_TYPES[data["name"]]
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})
    except (KeyError, TypeError) as exc:
        raise UnknownEvent(f"cannot read event {data!r}: {exc}") from exc
