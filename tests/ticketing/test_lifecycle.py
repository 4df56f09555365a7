"""The state machine alone: every (action, status, role, lead) combination, plus a property."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ticketing.lifecycle import (
    MOVES,
    OPEN_STATES,
    TERMINAL_STATES,
    Action,
    IllegalMove,
    Role,
    Satisfaction,
    Status,
    allowed_actions,
    plan_move,
)

S = Status
FLOOR = {Role.AGENT, Role.SUPERVISOR}
DEPT = {Role.DEPARTMENT}
SUP = {Role.SUPERVISOR}

# The lifecycle as DESIGN.md "The ticket" documents it, written out by hand so that a
# change to MOVES has to be a change to this table too.
#   action: (sources, target (None = status unchanged), roles, lead department only)
DOCUMENTED: dict[Action, tuple[set[Status], Status | None, set[Role], bool]] = {
    Action.ANSWER: ({S.NEW, S.REOPENED}, S.ANSWERED, FLOOR, False),
    Action.DISPATCH: ({S.NEW, S.RETURNED, S.REOPENED}, S.DISPATCHED, FLOOR, False),
    Action.SIGN: ({S.DISPATCHED}, S.ACCEPTED, DEPT, True),
    Action.RETURN: ({S.DISPATCHED, S.ACCEPTED}, S.RETURNED, DEPT, True),
    Action.REQUEST_EXTENSION: ({S.ACCEPTED}, S.EXTENSION_REQUESTED, DEPT, True),
    Action.GRANT_EXTENSION: ({S.EXTENSION_REQUESTED}, S.ACCEPTED, SUP, False),
    Action.REFUSE_EXTENSION: ({S.EXTENSION_REQUESTED}, S.ACCEPTED, SUP, False),
    Action.REPLY: ({S.ACCEPTED, S.EXTENSION_REQUESTED}, S.REPLIED, DEPT, True),
    Action.FOLLOW_UP: ({S.REPLIED}, S.CLOSED, FLOOR, False),  # or REOPENED, by satisfaction
    Action.CLOSE: ({S.REPLIED}, S.CLOSED, SUP, False),
    Action.REOPEN: ({S.CLOSED, S.ANSWERED}, S.REOPENED, FLOOR, False),
    Action.MERGE: (
        {S.NEW, S.DISPATCHED, S.RETURNED, S.ACCEPTED, S.EXTENSION_REQUESTED, S.REPLIED, S.REOPENED},
        S.MERGED,
        FLOOR,
        False,
    ),
    Action.SUPERVISE: (
        {S.DISPATCHED, S.RETURNED, S.ACCEPTED, S.EXTENSION_REQUESTED, S.REPLIED},
        None,
        SUP,
        False,
    ),
}

COMBOS = list(itertools.product(Action, Status, Role, [False, True]))


FORBIDDEN, WRONG_STATUS = "forbidden", "wrong_status"  # refusals (plain str, not Status)


def _expected(action: Action, status: Status, role: Role, is_lead: bool) -> Status | str:
    """The documented outcome: a target status, or FORBIDDEN / WRONG_STATUS."""
    sources, target, roles, lead_only = DOCUMENTED[action]
    if role not in roles or (lead_only and not is_lead):
        return FORBIDDEN
    if status not in sources:
        return WRONG_STATUS
    return status if target is None else target


def _legal(status: Status, role: Role, is_lead: bool) -> list[str]:
    return [a.value for a in Action if isinstance(_expected(a, status, role, is_lead), Status)]


def test_moves_table_is_the_documented_lifecycle() -> None:
    assert set(MOVES) == set(Action)
    for action, move in MOVES.items():
        sources, target, roles, lead_only = DOCUMENTED[action]
        assert set(move.sources) == sources, action
        assert move.target == target, action
        assert set(move.roles) == roles, action
        assert move.lead_only == lead_only, action
    assert OPEN_STATES | TERMINAL_STATES == set(Status)
    assert not OPEN_STATES & TERMINAL_STATES


@pytest.mark.parametrize(("action", "status", "role", "is_lead"), COMBOS)
def test_every_combination(action: Action, status: Status, role: Role, is_lead: bool) -> None:
    want = _expected(action, status, role, is_lead)
    sat = Satisfaction.SATISFIED if action is Action.FOLLOW_UP else None
    legal_now = _legal(status, role, is_lead)
    assert allowed_actions(status, role, is_lead=is_lead) == legal_now
    if isinstance(want, Status):
        # strings work as well as the enums (the API hands over plain values)
        assert plan_move(action, status, role, is_lead=is_lead, satisfaction=sat) == want
        assert (
            plan_move(action.value, status.value, role.value, is_lead=is_lead, satisfaction=sat)
            == want
        )
        return
    with pytest.raises(IllegalMove) as err:
        plan_move(action, status, role, is_lead=is_lead, satisfaction=sat)
    e = err.value
    assert e.forbidden is (want == FORBIDDEN)
    assert e.allowed == legal_now  # names what this actor may do instead
    assert e.status is status and e.role is role and e.action == action
    assert action.value in str(e)


def test_department_non_lead_is_refused_as_forbidden() -> None:
    for action in (Action.SIGN, Action.RETURN, Action.REQUEST_EXTENSION, Action.REPLY):
        status = next(iter(DOCUMENTED[action][0]))
        assert plan_move(action, status, Role.DEPARTMENT, is_lead=True) is not None
        with pytest.raises(IllegalMove) as err:
            plan_move(action, status, Role.DEPARTMENT, is_lead=False)
        assert err.value.forbidden
        assert "lead department" in str(err.value)
        assert err.value.allowed == []  # an assisting department may do nothing


def test_role_error_names_who_may() -> None:
    with pytest.raises(IllegalMove) as err:
        plan_move(Action.GRANT_EXTENSION, S.EXTENSION_REQUESTED, Role.AGENT)
    assert err.value.forbidden
    assert "supervisor" in str(err.value)
    with pytest.raises(IllegalMove) as err:
        plan_move(Action.SIGN, S.DISPATCHED, Role.ADMIN, is_lead=True)
    assert err.value.forbidden and err.value.allowed == []


def test_wrong_status_is_a_conflict_not_forbidden() -> None:
    with pytest.raises(IllegalMove) as err:
        plan_move(Action.SIGN, S.NEW, Role.DEPARTMENT, is_lead=True)
    assert not err.value.forbidden
    with pytest.raises(IllegalMove) as err:
        plan_move(Action.REPLY, S.DISPATCHED, Role.DEPARTMENT, is_lead=True)
    assert not err.value.forbidden
    assert err.value.allowed == ["sign", "return"]


def test_unknown_action() -> None:
    with pytest.raises(IllegalMove) as err:
        plan_move("teleport", S.NEW, Role.AGENT)
    assert not err.value.forbidden
    assert err.value.allowed == ["answer", "dispatch", "merge"]


@pytest.mark.parametrize("role", [Role.AGENT, Role.SUPERVISOR])
def test_follow_up_outcome_depends_on_satisfaction(role: Role) -> None:
    assert (
        plan_move(Action.FOLLOW_UP, S.REPLIED, role, satisfaction=Satisfaction.SATISFIED)
        is S.CLOSED
    )
    assert plan_move(Action.FOLLOW_UP, S.REPLIED, role, satisfaction=Satisfaction.BASIC) is S.CLOSED
    assert (
        plan_move(Action.FOLLOW_UP, S.REPLIED, role, satisfaction=Satisfaction.UNSATISFIED)
        is S.REOPENED
    )
    # plain strings, as for action/status/role
    assert plan_move("follow_up", "replied", role.value, satisfaction="unsatisfied") is S.REOPENED
    assert (
        plan_move("follow_up", "replied", role.value, satisfaction="basically_satisfied")
        is S.CLOSED
    )
    with pytest.raises(IllegalMove) as err:
        plan_move(Action.FOLLOW_UP, S.REPLIED, role)
    assert "satisfaction" in str(err.value)
    with pytest.raises(IllegalMove) as err:
        plan_move(Action.FOLLOW_UP, S.REPLIED, role, satisfaction="meh")
    assert not err.value.forbidden


def test_supervise_keeps_status() -> None:
    for status in DOCUMENTED[Action.SUPERVISE][0]:
        assert plan_move(Action.SUPERVISE, status, Role.SUPERVISOR) is status
    for status in set(Status) - DOCUMENTED[Action.SUPERVISE][0]:
        with pytest.raises(IllegalMove):
            plan_move(Action.SUPERVISE, status, Role.SUPERVISOR)


def test_nothing_leaves_merged() -> None:
    for role, lead in itertools.product(Role, [False, True]):
        assert allowed_actions(S.MERGED, role, is_lead=lead) == []


STEP = st.tuples(
    st.sampled_from(list(Action)),
    st.sampled_from(list(Role)),
    st.booleans(),
    st.none() | st.sampled_from(list(Satisfaction)),
)


@given(st.lists(STEP, max_size=60))
def test_random_walks_stay_in_the_lifecycle(steps: list) -> None:
    status = S.NEW
    for action, role, is_lead, sat in steps:
        try:
            nxt = plan_move(action, status, role, is_lead=is_lead, satisfaction=sat)
        except IllegalMove as e:
            assert action.value not in allowed_actions(status, role, is_lead=is_lead)
            assert e.allowed == allowed_actions(status, role, is_lead=is_lead)
            continue
        assert isinstance(nxt, Status)
        assert action.value in allowed_actions(status, role, is_lead=is_lead)
        if status in TERMINAL_STATES and nxt != status:
            # the only way out of answered/closed is a reopen; merged is for good
            assert action is Action.REOPEN
            assert status in (S.CLOSED, S.ANSWERED)
            assert nxt is S.REOPENED
        if status is S.MERGED:
            pytest.fail("a merged ticket moved")
        if action is Action.FOLLOW_UP:
            assert nxt is (S.REOPENED if sat is Satisfaction.UNSATISFIED else S.CLOSED)
        status = nxt
