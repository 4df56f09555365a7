"""The node types a flow is made of: pydantic schemas, plus what the validator needs to
know about each (where it can go next, which prompts it plays, whether it waits for
the caller).

Field names ending in ``next`` or starting with ``on_`` are targets (node ids).
Timeouts are in seconds. ``tries`` counts attempts in total, as FreeSWITCH's
``play_and_get_digits`` does.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from ivr.audio import DIGIT_PROMPTS, number_prompts
from ivr.protocols import TicketPhase
from ivr.validators import KNOWN

NodeId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
PromptName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
VarName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
Language = Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")]
Seconds = Annotated[float, Field(gt=0, le=120)]
Tries = Annotated[int, Field(ge=1, le=9)]

DTMF_KEYS = "0123456789*#"
EMERGENCY_LINES = ("110", "119", "120", "122")
# the Q.850 causes a flow may hang up with, in FreeSWITCH's spelling
HANGUP_CAUSES = (
    "NORMAL_CLEARING",
    "USER_BUSY",
    "CALL_REJECTED",
    "NORMAL_TEMPORARY_FAILURE",
    "SERVICE_UNAVAILABLE",
)


def _prompts(value: Any) -> Any:
    """``prompt: greeting`` and ``prompt: [a, b]`` both mean a list of names."""
    return [value] if isinstance(value, str) else value


Prompts = Annotated[list[PromptName], BeforeValidator(_prompts)]


class _Node(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    note: str | None = None  # free text for whoever maintains the flow

    WAITS_FOR_INPUT: ClassVar[bool] = False

    def targets(self) -> dict[str, str]:
        """Outgoing edges by field name (``digits.1`` for menu keys)."""
        return {
            name: value
            for name, value in self
            if isinstance(value, str) and (name == "next" or name.startswith("on_"))
        }

    def prompt_fields(self) -> dict[str, list[str]]:
        """Prompts played, by field name (for the missing-prompt check)."""
        found: dict[str, list[str]] = {}
        for name, value in self:
            if name == "prompt" or name.endswith("_prompt"):
                if isinstance(value, list):
                    found[name] = list(value)
                elif isinstance(value, str):
                    found[name] = [value]
        return found

    def number_prompts(self, language: str) -> tuple[str, ...]:
        """The digit and number words the node may speak in ``language``."""
        return ()


class PlayNode(_Node):
    type: Literal["play"]
    prompt: Prompts = Field(min_length=1)
    interruptible: bool = False  # a key press skips the rest (long notices)
    next: NodeId


class MenuNode(_Node):
    type: Literal["menu"]
    prompt: Prompts = Field(min_length=1)
    digits: dict[str, NodeId] = Field(min_length=1)
    timeout: Seconds = 5.0
    tries: Tries = 3
    invalid_prompt: PromptName | None = "invalid_input"
    on_invalid: NodeId
    on_timeout: NodeId | None = None  # default: on_invalid

    WAITS_FOR_INPUT: ClassVar[bool] = True

    @field_validator("digits", mode="before")
    @classmethod
    def _keys(cls, value: Any) -> Any:
        """YAML reads ``1:`` as an integer; a key is one DTMF character, given once."""
        if not isinstance(value, dict):
            return value
        out: dict[str, Any] = {}
        for key, target in value.items():
            text = str(key) if isinstance(key, int) and not isinstance(key, bool) else key
            if not isinstance(text, str) or len(text) != 1 or text not in DTMF_KEYS:
                raise ValueError(f"menu key {key!r} is not one of the phone keys {DTMF_KEYS}")
            if text in out:
                raise ValueError(f"menu key {text!r} is given twice")
            out[text] = target
        return out

    def targets(self) -> dict[str, str]:
        found = super().targets()
        found.update({f"digits.{k}": v for k, v in self.digits.items()})
        return found


class RegexCheck(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    regex: str

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"regex does not compile: {exc}") from exc
        return value


class CollectNode(_Node):
    type: Literal["collect"]
    prompt: Prompts = Field(min_length=1)
    length: int | None = Field(default=None, ge=1, le=32)  # exactly n keys
    min: int = Field(default=1, ge=1, le=32)
    max: int = Field(default=20, ge=1, le=32)
    terminator: Literal["#", "*", ""] = "#"
    timeout: Seconds = 8.0
    digit_timeout: Seconds = 4.0
    validate_: str | RegexCheck | None = Field(default=None, alias="validate")
    store: VarName
    sensitive: bool = False  # never in the outcome, never on a channel variable
    tries: Tries = 3
    invalid_prompt: PromptName | None = "invalid_input"
    next: NodeId
    on_invalid: NodeId
    on_timeout: NodeId | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    WAITS_FOR_INPUT: ClassVar[bool] = True

    @field_validator("validate_", mode="before")
    @classmethod
    def _check(cls, value: Any) -> Any:
        """A known validator by name, or ``{regex: ...}`` (matched against all the keys)."""
        if value is None or isinstance(value, RegexCheck):
            return value
        if isinstance(value, str):
            if value not in KNOWN:
                raise ValueError(f"unknown validator {value!r}; known: {', '.join(KNOWN)}")
            return value
        if isinstance(value, dict) and set(value) == {"regex"}:
            return RegexCheck(regex=value["regex"])
        raise ValueError(f"validate is one of {', '.join(KNOWN)} or {{regex: ...}}")

    @model_validator(mode="before")
    @classmethod
    def _length(cls, data: Any) -> Any:
        """``length: 6`` is shorthand for min 6, max 6."""
        if isinstance(data, dict) and isinstance(data.get("length"), int):
            if "min" in data or "max" in data:
                raise ValueError("give either length or min/max, not both")
            data = {**data, "min": data["length"], "max": data["length"]}
        return data

    @model_validator(mode="after")
    def _min_max(self) -> CollectNode:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is more than max ({self.max})")
        return self


class LanguageNode(_Node):
    type: Literal["language"]
    set: Language
    next: NodeId


class LookupNode(_Node):
    """Ticket status by number: only the coarse phase is spoken, never the content."""

    type: Literal["lookup"]
    variable: VarName = "ticket_number"
    intro_prompt: PromptName | None = None  # e.g. "ticket" before the number
    say_number: bool = True
    statuses: dict[TicketPhase, Prompts]
    next: NodeId
    on_not_found: NodeId
    on_failure: NodeId | None = None

    @field_validator("statuses", mode="before")
    @classmethod
    def _each_phase(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        missing = sorted({p.value for p in TicketPhase} - {str(k) for k in value})
        if missing:
            raise ValueError(f"statuses lack a prompt for {', '.join(missing)}")
        return {k: _prompts(v) for k, v in value.items()}

    def prompt_fields(self) -> dict[str, list[str]]:
        found = super().prompt_fields()
        for phase, names in self.statuses.items():
            found[f"statuses.{phase.value}"] = list(names)
        return found

    def number_prompts(self, language: str) -> tuple[str, ...]:
        return DIGIT_PROMPTS if self.say_number else ()


class CardNode(_Node):
    """Self-service on the citizen card. Collects what the operation needs, asks the
    card service, and handles its refusals: a wrong PIN (or ID digits) asks again for
    those, an unknown card asks again for the number, a locked PIN gives up."""

    type: Literal["card"]
    operation: Literal["balance", "report_lost"]
    tries: Tries = 3  # answers the card service may refuse before giving up
    input_tries: Tries = 3  # attempts at each entry (silence, wrong length)
    timeout: Seconds = 10.0
    digit_timeout: Seconds = 4.0
    card_number_prompt: PromptName = "enter_card_number"
    id_last6_prompt: PromptName = "enter_id_last6"
    pin_prompt: PromptName = "enter_pin"
    wrong_pin_prompt: PromptName = "wrong_pin"
    unknown_card_prompt: PromptName = "card_unknown"
    locked_prompt: PromptName = "card_locked"
    invalid_prompt: PromptName = "invalid_input"
    balance_prompt: PromptName = "balance_is"
    frozen_prompt: PromptName = "card_frozen"
    read_receipt_times: int = Field(default=2, ge=1, le=3)  # so it can be written down
    next: NodeId
    on_failure: NodeId

    WAITS_FOR_INPUT: ClassVar[bool] = True

    def prompt_fields(self) -> dict[str, list[str]]:
        found = super().prompt_fields()
        unused = (
            ("id_last6_prompt", "frozen_prompt")
            if self.operation == "balance"
            else ("balance_prompt",)
        )
        for name in unused:
            found.pop(name, None)
        return found

    def number_prompts(self, language: str) -> tuple[str, ...]:
        if self.operation == "balance":
            return number_prompts(language)
        return DIGIT_PROMPTS  # the receipt number


class QueueNode(_Node):
    type: Literal["queue"]
    queue: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    priority: int = Field(default=0, ge=0, le=9)
    skills: list[Annotated[str, StringConstraints(min_length=1, max_length=64)]] = []
    next: NodeId | None = None  # after the agent leg, if the caller is still there
    on_overflow: NodeId | None = None  # the ACD declined; default: end the run (overflow)
    on_failure: NodeId | None = None


class EmergencyNode(_Node):
    type: Literal["emergency"]
    line: Literal[EMERGENCY_LINES]  # type: ignore[valid-type]
    prompt: Prompts = ["emergency_notice"]  # played by the hand-off while the line rings
    on_failure: NodeId | None = None

    @field_validator("line", mode="before")
    @classmethod
    def _line_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class VoicemailNode(_Node):
    type: Literal["voicemail"]
    prompt: Prompts = ["voicemail_intro", "beep"]
    max_seconds: int = Field(default=120, ge=5, le=600)
    next: NodeId
    on_failure: NodeId | None = None

    WAITS_FOR_INPUT: ClassVar[bool] = True


class CallbackNode(_Node):
    """Offer the number the caller rings from, or take another; then book the callback."""

    type: Literal["callback"]
    queue: Annotated[str, StringConstraints(min_length=1, max_length=64)] = "12345"
    prompt: Prompts = ["callback_offer"]  # "this number: 1, another: 2"
    this_number_key: Literal[tuple(DTMF_KEYS)] = "1"  # type: ignore[valid-type]
    other_number_key: Literal[tuple(DTMF_KEYS)] = "2"  # type: ignore[valid-type]
    number_prompt: PromptName = "enter_phone_number"
    confirmed_prompt: PromptName = "callback_confirmed"
    invalid_prompt: PromptName | None = "invalid_input"
    region: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")] = "CN"
    tries: Tries = 3
    timeout: Seconds = 6.0
    next: NodeId
    on_failure: NodeId  # nothing booked (no valid number, or the service failed)

    WAITS_FOR_INPUT: ClassVar[bool] = True

    @field_validator("this_number_key", "other_number_key", mode="before")
    @classmethod
    def _key_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _distinct_keys(self) -> CallbackNode:
        if self.this_number_key == self.other_number_key:
            raise ValueError("this_number_key and other_number_key must differ")
        return self


class SurveyNode(_Node):
    """Post-call satisfaction, 1 satisfied, 2 basically satisfied, 3 unsatisfied."""

    type: Literal["survey"]
    prompt: Prompts = ["survey_question"]
    thanks_prompt: PromptName | None = "thank_you"
    invalid_prompt: PromptName | None = "invalid_input"
    ticket_variable: VarName = "ticket_number"
    tries: Tries = 2
    timeout: Seconds = 6.0
    next: NodeId
    on_invalid: NodeId | None = None  # no answer given; default: next

    WAITS_FOR_INPUT: ClassVar[bool] = True


class HangupNode(_Node):
    type: Literal["hangup"]
    prompt: Prompts = []  # played first (a goodbye)
    cause: Literal[HANGUP_CAUSES] = "NORMAL_CLEARING"  # type: ignore[valid-type]


Node = (
    PlayNode
    | MenuNode
    | CollectNode
    | LanguageNode
    | LookupNode
    | CardNode
    | QueueNode
    | EmergencyNode
    | VoicemailNode
    | CallbackNode
    | SurveyNode
    | HangupNode
)

NODE_TYPES: dict[str, type[_Node]] = {
    "play": PlayNode,
    "menu": MenuNode,
    "collect": CollectNode,
    "language": LanguageNode,
    "lookup": LookupNode,
    "card": CardNode,
    "queue": QueueNode,
    "emergency": EmergencyNode,
    "voicemail": VoicemailNode,
    "callback": CallbackNode,
    "survey": SurveyNode,
    "hangup": HangupNode,
}

# which IvrServices field each node type calls
SERVICE_OF: dict[str, str] = {
    "lookup": "tickets",
    "card": "cards",
    "queue": "queue",
    "emergency": "emergency",
    "voicemail": "voicemail",
    "callback": "callbacks",
    "survey": "surveys",
}
