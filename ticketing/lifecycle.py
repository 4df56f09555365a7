"""The ticket state machine: the one place that says who may move a ticket where.

Pure: no I/O. Handlers ask `plan_move` before touching the store, so an illegal
move is refused with the moves that *are* allowed named, in the actor's words.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    NEW = "new"
    ANSWERED = "answered"  # answered directly by the agent; nothing to dispatch
    DISPATCHED = "dispatched"  # 派单: waiting for the lead department to sign
    RETURNED = "returned"  # 退单: the department sent it back with a reason
    ACCEPTED = "accepted"  # 签收: the lead department is working on it
    EXTENSION_REQUESTED = "extension_requested"  # 延期申请 awaiting a supervisor
    REPLIED = "replied"  # the department answered; follow-up (回访) due
    CLOSED = "closed"
    REOPENED = "reopened"  # 重办: resident unsatisfied, back to the agents
    MERGED = "merged"  # folded into another ticket; follows the parent


class Role(StrEnum):
    AGENT = "agent"
    SUPERVISOR = "supervisor"
    DEPARTMENT = "department"
    ADMIN = "admin"


class Action(StrEnum):
    ANSWER = "answer"
    DISPATCH = "dispatch"
    SIGN = "sign"
    RETURN = "return"
    REQUEST_EXTENSION = "request_extension"
    GRANT_EXTENSION = "grant_extension"
    REFUSE_EXTENSION = "refuse_extension"
    REPLY = "reply"
    FOLLOW_UP = "follow_up"
    CLOSE = "close"
    REOPEN = "reopen"
    MERGE = "merge"
    SUPERVISE = "supervise"


class Satisfaction(StrEnum):
    SATISFIED = "satisfied"  # 满意
    BASIC = "basically_satisfied"  # 基本满意
    UNSATISFIED = "unsatisfied"  # 不满意 -> rework


class Kind(StrEnum):
    CONSULTATION = "consultation"
    REQUEST = "request"
    COMPLAINT = "complaint"
    REPORT = "report"
    SUGGESTION = "suggestion"
    PRAISE = "praise"


KIND_LABELS_ZH: dict[Kind, str] = {
    Kind.CONSULTATION: "咨询",
    Kind.REQUEST: "求助",
    Kind.COMPLAINT: "投诉",
    Kind.REPORT: "举报",
    Kind.SUGGESTION: "建议",
    Kind.PRAISE: "表扬",
}

S = Status
_FLOOR = frozenset({Role.AGENT, Role.SUPERVISOR})
_DEPT = frozenset({Role.DEPARTMENT})
_SUP = frozenset({Role.SUPERVISOR})
OPEN_STATES = frozenset(
    {S.NEW, S.DISPATCHED, S.RETURNED, S.ACCEPTED, S.EXTENSION_REQUESTED, S.REPLIED, S.REOPENED}
)
TERMINAL_STATES = frozenset({S.ANSWERED, S.CLOSED, S.MERGED})


@dataclass(frozen=True)
class Move:
    sources: frozenset[Status]
    target: Status | None  # None: the status stays (supervision notice)
    roles: frozenset[Role]
    lead_only: bool = False  # department users must be the ticket's lead department


MOVES: dict[Action, Move] = {
    Action.ANSWER: Move(frozenset({S.NEW, S.REOPENED}), S.ANSWERED, _FLOOR),
    Action.DISPATCH: Move(frozenset({S.NEW, S.RETURNED, S.REOPENED}), S.DISPATCHED, _FLOOR),
    Action.SIGN: Move(frozenset({S.DISPATCHED}), S.ACCEPTED, _DEPT, lead_only=True),
    Action.RETURN: Move(frozenset({S.DISPATCHED, S.ACCEPTED}), S.RETURNED, _DEPT, lead_only=True),
    Action.REQUEST_EXTENSION: Move(
        frozenset({S.ACCEPTED}), S.EXTENSION_REQUESTED, _DEPT, lead_only=True
    ),
    Action.GRANT_EXTENSION: Move(frozenset({S.EXTENSION_REQUESTED}), S.ACCEPTED, _SUP),
    Action.REFUSE_EXTENSION: Move(frozenset({S.EXTENSION_REQUESTED}), S.ACCEPTED, _SUP),
    Action.REPLY: Move(
        frozenset({S.ACCEPTED, S.EXTENSION_REQUESTED}), S.REPLIED, _DEPT, lead_only=True
    ),
    # target decided by the satisfaction given: closed, or reopened for rework
    Action.FOLLOW_UP: Move(frozenset({S.REPLIED}), S.CLOSED, _FLOOR),
    # closing without a follow-up (resident unreachable) is a supervisor's call
    Action.CLOSE: Move(frozenset({S.REPLIED}), S.CLOSED, _SUP),
    Action.REOPEN: Move(frozenset({S.CLOSED, S.ANSWERED}), S.REOPENED, _FLOOR),
    Action.MERGE: Move(OPEN_STATES, S.MERGED, _FLOOR),
    Action.SUPERVISE: Move(
        frozenset({S.DISPATCHED, S.RETURNED, S.ACCEPTED, S.EXTENSION_REQUESTED, S.REPLIED}),
        None,
        _SUP,
    ),
}


class IllegalMove(Exception):
    """A move the state machine refuses; `allowed` lists what this actor may do now."""

    def __init__(
        self,
        action: str,
        status: Status,
        role: Role,
        allowed: list[str],
        why: str,
        *,
        forbidden: bool = False,
    ):
        self.action = action
        self.forbidden = forbidden  # the actor's role may never do this (403, not 409)
        self.status = status
        self.role = role
        self.allowed = allowed
        super().__init__(why)


def allowed_actions(status: Status, role: Role, *, is_lead: bool = False) -> list[str]:
    """Moves this role may make from `status` (department users: only as lead)."""
    # Enum calls are slow even on members: convert only strings
    return list(
        _allowed(
            status if type(status) is Status else Status(status),
            role if type(role) is Role else Role(role),
            is_lead,
        )
    )


@functools.cache
def _allowed(status: Status, role: Role, is_lead: bool) -> tuple[str, ...]:
    # every ticket view lists these: a table lookup, not a scan of MOVES
    return tuple(
        action.value
        for action, move in MOVES.items()
        if status in move.sources and role in move.roles and (not move.lead_only or is_lead)
    )


def plan_move(
    action: Action | str,
    status: Status | str,
    role: Role | str,
    *,
    is_lead: bool = False,
    satisfaction: Satisfaction | str | None = None,
) -> Status:
    """The status after `action`, or IllegalMove saying why not and what is allowed."""
    status = Status(status)
    role = Role(role)
    allowed = allowed_actions(status, role, is_lead=is_lead)
    try:
        act = Action(action)
    except ValueError:
        raise IllegalMove(
            str(action), status, role, allowed, f"unknown action {action!r}"
        ) from None
    move = MOVES[act]
    if role not in move.roles:
        raise IllegalMove(
            act,
            status,
            role,
            allowed,
            f"a {role.value} may not {act.value}; that is for "
            + " or ".join(sorted(r.value for r in move.roles)),
            forbidden=True,
        )
    if move.lead_only and not is_lead:
        raise IllegalMove(
            act,
            status,
            role,
            allowed,
            f"only the lead department may {act.value} this ticket",
            forbidden=True,
        )
    if status not in move.sources:
        raise IllegalMove(
            act,
            status,
            role,
            allowed,
            f"cannot {act.value} a ticket that is {status.value}",
        )
    if act is Action.FOLLOW_UP:
        if satisfaction is None:
            raise IllegalMove(act, status, role, allowed, "a follow-up needs a satisfaction")
        # coerced like action/status/role: a plain "unsatisfied" must not close the ticket
        try:
            sat = Satisfaction(satisfaction)
        except ValueError:
            raise IllegalMove(
                act, status, role, allowed, f"unknown satisfaction {satisfaction!r}"
            ) from None
        return Status.REOPENED if sat is Satisfaction.UNSATISFIED else Status.CLOSED
    return move.target if move.target is not None else status
