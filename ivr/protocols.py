"""What the IVR needs from the world, as protocols: the call leg and the services.

The interpreter imports nothing else of ours (DESIGN.md's dependency rule), so the ESL
call leg (hotline/telephony), the ACD, the emergency hand-off and the ticket and card
services each implement one of these. Requests are small frozen dataclasses rather
than long argument lists, so a field can be added without breaking implementers.

Personal data crosses these boundaries (card numbers, PINs, ID digits, phone
numbers) only inside requests to the service that needs it; none of it is logged by
the interpreter, and none of it is written to channel variables (FreeSWITCH logs and
CDRs would keep it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable


class CallerHungUp(Exception):
    """Raised by any CallControl operation once the caller has gone.

    The interpreter catches it at every step and ends the run cleanly with the
    ``caller_hung_up`` outcome; writes already started (a loss report, a callback
    request, a survey answer, a voicemail) are finished first.
    """


@runtime_checkable
class CallControl(Protocol):
    """One call leg, as the interpreter drives it (the ESL outbound session implements it).

    Paths are strings the switch can open (see ``PromptSet.play_root``). Every method
    raises ``CallerHungUp`` when the caller is gone, except ``record`` (below).
    """

    @property
    def uuid(self) -> str:
        """The switch's call UUID: the idempotency key of everything this call causes."""
        ...

    @property
    def caller_id(self) -> str:
        """The calling number as the switch reports it; may be empty or "anonymous"."""
        ...

    async def answer(self) -> None:
        """Answer the call; a no-op when it is already answered (post-call survey)."""
        ...

    async def play(self, paths: Sequence[str], *, interruptible: bool = False) -> str:
        """Play the files in order. Interruptible: a key press stops playback and is
        returned (``""`` when nobody pressed); otherwise keys are ignored."""
        ...

    async def play_and_get_digits(
        self,
        paths: Sequence[str],
        *,
        min_digits: int,
        max_digits: int,
        tries: int,
        timeout_ms: int,
        terminators: str,
        regexp: str | None = None,
        digit_timeout_ms: int | None = None,
    ) -> str:
        """FreeSWITCH's ``play_and_get_digits``: the keys pressed, terminator stripped,
        or ``""`` when the caller pressed nothing valid within ``tries``.

        ``timeout_ms`` waits for the first key after the prompt ends,
        ``digit_timeout_ms`` between keys; ``terminators=""`` means none (FreeSWITCH
        spells that ``none``). ``*`` and ``#`` are keys like any other unless they are
        terminators (an ID number's X is keyed as ``*``). The interpreter asks for one try and does
        its own validation and retries, so it can tell silence from a wrong entry.
        """
        ...

    async def record(self, path: str, *, max_seconds: int) -> float:
        """Record the caller to ``path`` (on the switch's disk) until ``#``, silence or
        ``max_seconds``; return the seconds recorded.

        A hang-up during recording is the normal end of a voicemail: return what was
        recorded instead of raising; the next operation raises ``CallerHungUp``.
        """
        ...

    async def hangup(self, cause: str = "NORMAL_CLEARING") -> None:
        """Hang up with a Q.850 cause name (FreeSWITCH spelling)."""
        ...

    async def set_variable(self, name: str, value: str) -> None:
        """Set a channel variable (only non-personal values are ever set)."""
        ...

    async def get_variable(self, name: str) -> str | None:
        """A channel variable, or None when unset."""
        ...


# --- tickets ---------------------------------------------------------------------


class TicketPhase(StrEnum):
    """What a caller may hear about a ticket: a coarse phase, never its content."""

    RECEIVED = "received"  # new, not yet with a department
    IN_PROGRESS = "in_progress"  # dispatched, accepted, returned, extended, reopened
    REPLIED = "replied"  # the department answered; the follow-up call is due
    CLOSED = "closed"  # closed, answered directly, or merged into a closed one


class TicketLookup(Protocol):
    async def ticket_phase(self, number: str) -> TicketPhase | None:
        """The phase of ticket ``number`` (digits only), or None if there is none."""
        ...


# --- citizen card ----------------------------------------------------------------


class CardOutcome(StrEnum):
    OK = "ok"
    WRONG_PIN = "wrong_pin"  # PIN (or, for a loss report, the ID digits) do not match
    UNKNOWN_CARD = "unknown_card"  # no such card
    LOCKED = "locked"  # too many wrong PINs: only an agent or a counter can help
    REFUSED = "refused"  # the card cannot do this now (already lost, cancelled, no PIN)


@dataclass(frozen=True, repr=False)
class BalanceQuery:
    call_uuid: str
    card_number: str
    pin: str

    def __repr__(self) -> str:  # never print the secrets, even in a traceback
        return f"BalanceQuery(call_uuid={self.call_uuid!r})"


@dataclass(frozen=True, repr=False)
class LossReport:
    call_uuid: str
    card_number: str
    id_last6: str  # the last six characters of the ID number; the check character may be X
    pin: str
    caller_id: str

    def __repr__(self) -> str:
        return f"LossReport(call_uuid={self.call_uuid!r})"


@dataclass(frozen=True)
class CardReply:
    outcome: CardOutcome
    balance_fen: int | None = None  # for a balance query
    receipt: str | None = None  # for a loss report: the freeze receipt number, digits only


class CardServices(Protocol):
    """The citizen-card service as the phone reaches it (channel "ivr").

    WRONG_PIN deliberately covers a wrong ID as well, so a caller cannot learn which
    of the two was right. The implementation counts PIN failures itself.
    """

    async def balance(self, query: BalanceQuery) -> CardReply: ...

    async def report_lost(self, report: LossReport) -> CardReply:
        """Freeze the card now; the reply carries the receipt number to read back."""
        ...


# --- ACD, emergency --------------------------------------------------------------


class QueueStatus(StrEnum):
    HANDED_OFF = "handed_off"  # the ACD owns the call now; the flow ends
    AGENT_DONE = "agent_done"  # the agent leg ended and the caller is still here
    OVERFLOW = "overflow"  # the ACD declined (queue full or closed, max wait reached)


@dataclass(frozen=True)
class QueueRequest:
    call_uuid: str
    caller_id: str
    queue: str
    priority: int  # 0 normal .. 9 most urgent; emergencies and returning callers first
    skills: tuple[str, ...]
    language: str
    flow_id: str
    node: str
    variables: Mapping[str, str] = field(default_factory=dict)  # non-personal only


@dataclass(frozen=True)
class QueueResult:
    status: QueueStatus
    detail: str = ""


class Queue(Protocol):
    async def enqueue(self, request: QueueRequest) -> QueueResult:
        """Hand the call to the ACD. May return at once (HANDED_OFF) or when the agent
        leg ends (AGENT_DONE, so the flow can go on to a survey)."""
        ...


@dataclass(frozen=True)
class EmergencyRequest:
    call_uuid: str
    caller_id: str
    line: str  # "110", "119", "120" or "122"
    language: str
    flow_id: str
    hold_prompts: tuple[str, ...]  # what the caller hears while the line rings


@dataclass(frozen=True)
class EmergencyResult:
    connected: bool
    line: str = ""  # the route that answered (the alternate, if the main one failed)
    detail: str = ""


class Emergency(Protocol):
    async def hand_off(self, request: EmergencyRequest) -> EmergencyResult:
        """Attended transfer to the line (alternate route and supervisor alert included)."""
        ...


# --- callbacks, surveys, voicemail -----------------------------------------------


@dataclass(frozen=True)
class CallbackRequest:
    call_uuid: str
    number: str  # E.164
    queue: str
    language: str
    flow_id: str


class Callbacks(Protocol):
    async def request_callback(self, request: CallbackRequest) -> str:
        """Create the callback work item (idempotent on call_uuid); return its reference."""
        ...


SATISFACTION_BY_SCORE: Mapping[int, str] = {
    1: "satisfied",  # 满意
    2: "basically_satisfied",  # 基本满意
    3: "unsatisfied",  # 不满意
}


@dataclass(frozen=True)
class SurveyAnswer:
    call_uuid: str
    ticket_number: str | None
    score: int  # 1..3, the keys the caller pressed
    satisfaction: str  # SATISFACTION_BY_SCORE[score]: the ticketing vocabulary


class Surveys(Protocol):
    async def record_survey(self, answer: SurveyAnswer) -> None:
        """Store the answer (idempotent on call_uuid)."""
        ...


@dataclass(frozen=True)
class VoicemailMessage:
    call_uuid: str
    caller_id: str
    path: str
    seconds: float
    language: str


class Voicemails(Protocol):
    async def voicemail_path(self, call_uuid: str) -> str:
        """Where the switch should write this call's message."""
        ...

    async def voicemail_recorded(self, message: VoicemailMessage) -> None:
        """The recording is finished (possibly empty: the store decides what to keep)."""
        ...


@dataclass(frozen=True)
class IvrServices:
    """The services a flow may call; a flow that needs a missing one is refused at start."""

    tickets: TicketLookup | None = None
    cards: CardServices | None = None
    queue: Queue | None = None
    emergency: Emergency | None = None
    callbacks: Callbacks | None = None
    surveys: Surveys | None = None
    voicemail: Voicemails | None = None
