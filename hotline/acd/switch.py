"""What the ACD asks of a telephone switch, as a protocol over channel UUIDs.

The verbs are FreeSWITCH's own (originate, uuid_bridge, uuid_broadcast,
uuid_hold, uuid_transfer, conference, uuid_record) so the ESL adapter is a thin
translation, while tests and the demo use the in-memory switch in
`hotline.acd.memory_switch`. The ACD never sees event names or headers.

A caller's channel is parked in our outbound-socket session while it waits; an
agent is rung with a separate `originate` so the caller keeps hearing music, and
the two are joined with `uuid_bridge` once the agent answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable


class RingResult(StrEnum):
    ANSWERED = "answered"
    NO_ANSWER = "no_answer"  # NO_ANSWER, ORIGINATOR_CANCEL after timeout, NO_USER_RESPONSE
    BUSY = "busy"  # USER_BUSY
    REJECTED = "rejected"  # CALL_REJECTED
    FAILED = "failed"  # unregistered phone, bad dial string, switch error


# FreeSWITCH hangup causes -> what the ACD does with them
CAUSE_TO_RESULT: dict[str, RingResult] = {
    "NO_ANSWER": RingResult.NO_ANSWER,
    "NO_USER_RESPONSE": RingResult.NO_ANSWER,
    "ALLOTTED_TIMEOUT": RingResult.NO_ANSWER,
    "PROGRESS_TIMEOUT": RingResult.NO_ANSWER,
    "RECOVERY_ON_TIMER_EXPIRE": RingResult.NO_ANSWER,
    "ORIGINATOR_CANCEL": RingResult.NO_ANSWER,
    "USER_BUSY": RingResult.BUSY,
    "NORMAL_CIRCUIT_CONGESTION": RingResult.BUSY,
    "CALL_REJECTED": RingResult.REJECTED,
}


def ring_result(cause: str) -> RingResult:
    return CAUSE_TO_RESULT.get(cause.upper(), RingResult.FAILED)


@dataclass(frozen=True)
class Ring:
    result: RingResult
    leg: str | None = None  # the answered leg's UUID
    index: int | None = None  # which of the dial strings answered (ring-all)
    cause: str = ""


class SwitchError(Exception):
    """The switch refused or could not run a command (the call may be gone)."""


@runtime_checkable
class Switch(Protocol):
    async def ring(
        self,
        dial_strings: Sequence[str],
        timeout_s: float,
        *,
        caller_id: str = "",
        variables: dict[str, str] | None = None,
    ) -> Ring:
        """Originate to one or several phones at once; the first to answer wins.

        Cancelling the awaiting task must stop the ringing (the caller hung up).
        """
        ...

    async def bridge(self, a: str, b: str) -> None: ...

    async def play(self, uuid: str, prompt: str) -> None:
        """Play a prompt to this leg and return when it has finished."""
        ...

    async def music_on_hold(self, uuid: str) -> None:
        """Start endless hold music on this leg (stopped by `stop_media`)."""
        ...

    async def stop_media(self, uuid: str) -> None: ...

    async def hold(self, uuid: str) -> None: ...

    async def unhold(self, uuid: str) -> None: ...

    async def transfer(self, uuid: str, dial_string: str) -> None:
        """Blind: this leg leaves whatever it was bridged to and rings the target."""
        ...

    async def conference(self, room: str, uuids: Sequence[str]) -> None:
        """Move the legs into one conference room (a three-way call and more)."""
        ...

    async def end_conference(self, room: str) -> None:
        """Hang up everybody still in the room (the caller has gone)."""
        ...

    async def record(self, uuid: str, path: str) -> None: ...

    async def read_digit(self, uuid: str, prompt: str, timeout_s: float) -> str | None: ...

    async def hangup(self, uuid: str, cause: str = "NORMAL_CLEARING") -> None: ...

    async def wait_hangup(self, uuid: str) -> str:
        """Return the hangup cause when this leg is gone (at once if it already is)."""
        ...
