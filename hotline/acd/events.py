"""Events of the phone line, registered so other instances (and the console) read them.

Callers appear masked (138****5678): events cross instances through NOTIFY and end
up in browsers; the full number stays encrypted in the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ticketing.events import DomainEvent, register_event


@register_event
@dataclass(frozen=True)
class AgentStateEvent(DomainEvent):
    name: ClassVar[str] = "acd.agent_state"
    username: str
    state: str
    previous: str
    reason: str | None = None
    call_uuid: str | None = None


@register_event
@dataclass(frozen=True)
class CallQueued(DomainEvent):
    name: ClassVar[str] = "call.queued"
    uuid: str
    caller: str
    priority: int
    position: int
    expected_wait_s: float


@register_event
@dataclass(frozen=True)
class CallOffered(DomainEvent):
    name: ClassVar[str] = "call.offered"
    uuid: str
    agent: str


@register_event
@dataclass(frozen=True)
class CallScreenPop(DomainEvent):
    """What the console shows as the phone rings: who calls and what they have open."""

    name: ClassVar[str] = "call.screen_pop"
    uuid: str
    agent: str
    caller: str
    contact: str | None = None
    resident: str | None = None
    open_tickets: list[dict[str, Any]] = field(default_factory=list)
    previous_calls: int = 0


@register_event
@dataclass(frozen=True)
class CallAnswered(DomainEvent):
    name: ClassVar[str] = "call.answered"
    uuid: str
    agent: str
    wait_s: float


@register_event
@dataclass(frozen=True)
class CallAbandoned(DomainEvent):
    name: ClassVar[str] = "call.abandoned"
    uuid: str
    wait_s: float


@register_event
@dataclass(frozen=True)
class CallEnded(DomainEvent):
    name: ClassVar[str] = "call.ended"
    uuid: str
    agent: str | None
    cause: str
    talk_s: float


@register_event
@dataclass(frozen=True)
class CallHeld(DomainEvent):
    name: ClassVar[str] = "call.held"
    uuid: str
    agent: str
    held: bool


@register_event
@dataclass(frozen=True)
class CallTransferred(DomainEvent):
    name: ClassVar[str] = "call.transferred"
    uuid: str
    agent: str
    mode: str  # blind | attended
    step: str  # done | consult | complete | cancel | conference | failed
    target: str


@register_event
@dataclass(frozen=True)
class CallbackRequested(DomainEvent):
    name: ClassVar[str] = "call.callback_requested"
    callback_id: int
    uuid: str | None
    caller: str
    reason: str


@register_event
@dataclass(frozen=True)
class EmergencyHandedOff(DomainEvent):
    name: ClassVar[str] = "emergency.handoff"
    uuid: str
    line: str
    route: str | None
    outcome: str  # connected | failed
    ticket: str | None
    agent: str | None


@register_event
@dataclass(frozen=True)
class EmergencyAlert(DomainEvent):
    """For supervisors: an emergency line was busy or silent, or the hand-off failed."""

    name: ClassVar[str] = "emergency.alert"
    uuid: str
    line: str
    reason: str
