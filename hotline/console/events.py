"""Events the console adds to the bus (registered so other instances can read them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ticketing.events import DomainEvent, register_event


@register_event
@dataclass(frozen=True)
class AgentStateChanged(DomainEvent):
    """An agent set their state in the console; supervisors' walls refresh."""

    name: ClassVar[str] = "console.agent_state"
    username: str
    state: str
