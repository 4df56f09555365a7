"""Random walks through the real handlers (SQLite): refusals change nothing, trails stay whole."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ticket_world import AGENT, SUPERVISOR, World, dept

from ticketing import handlers as h
from ticketing import workqueue
from ticketing.lifecycle import (
    MOVES,
    Action,
    IllegalMove,
    Role,
    Satisfaction,
    Status,
    allowed_actions,
)

MISSING = "2026042099999"
DISPATCH_TO = ["urban-mgmt", "water", "transport", "power"]
STRANGER = dept("health")  # never dispatched to, never assisting

texts = st.sampled_from(["请尽快处理", "已现场核实", "需协调", "居民反映属实"]) | st.text(
    alphabet="路灯积水噪音投诉处理完毕", min_size=1, max_size=30
)
notes = st.none() | texts
extras = st.sampled_from(["1h", "24h", "2wd", "5wd"])

PAYLOADS: dict[Action, st.SearchStrategy[dict[str, Any]]] = {
    Action.ANSWER: st.fixed_dictionaries({"answer": texts}),
    Action.DISPATCH: st.fixed_dictionaries(
        {
            "department": st.none() | st.sampled_from(DISPATCH_TO),
            "assist": st.lists(st.sampled_from(DISPATCH_TO), max_size=3),
            "note": notes,
        }
    ),
    Action.SIGN: st.fixed_dictionaries({"note": notes}),
    Action.RETURN: st.fixed_dictionaries({"reason": texts}),
    Action.REQUEST_EXTENSION: st.fixed_dictionaries({"extra": extras, "reason": texts}),
    Action.GRANT_EXTENSION: st.fixed_dictionaries({"extra": st.none() | extras, "note": notes}),
    Action.REFUSE_EXTENSION: st.fixed_dictionaries({"note": notes}),
    Action.REPLY: st.fixed_dictionaries({"reply": texts}),
    Action.FOLLOW_UP: st.fixed_dictionaries(
        {"satisfaction": st.sampled_from([s.value for s in Satisfaction]), "note": notes}
    ),
    Action.CLOSE: st.fixed_dictionaries({"reason": texts}),
    Action.REOPEN: st.fixed_dictionaries({"reason": texts}),
    Action.MERGE: st.fixed_dictionaries({"into": st.sampled_from(["other", "self", MISSING])}),
    Action.SUPERVISE: st.fixed_dictionaries({"note": texts}),
}

ACTORS = ["agent", "supervisor", "lead", "assist", "stranger"]


TICKETS = st.sampled_from(
    [
        {"category": "urban.street-lights"},
        {"category": "utilities.gas-leak"},  # emergency: hour deadlines
        {"category": "construction.policy"},  # 7 working days
        {"category": None, "district": "南湖区"},  # district fallback
        {"category": None},  # nobody to route to without a department
    ]
)


def _allowed(who: Any, row: Any) -> list[str]:
    is_lead = who.role is Role.DEPARTMENT and who.department_code == row.lead_department
    return allowed_actions(Status(row.status), who.role, is_lead=is_lead)


def _actor(kind: str, row: Any) -> Any:
    if kind == "agent":
        return AGENT
    if kind == "supervisor":
        return SUPERVISOR
    if kind == "lead":
        return dept(row.lead_department or "urban-mgmt")
    if kind == "assist":
        return dept((row.assist_departments or ["water"])[0])
    return STRANGER


async def _snapshot(world: World, number: str) -> tuple[Any, int, Any]:
    return await world.row(number), len(await world.trail(number)), await world.work_item(number)


async def _check_queue(world: World, row: Any) -> None:
    need = workqueue.ticket_need(
        Status(row.status), row.lead_department, row.dispatch_due_at, row.feedback_due_at
    )
    item = await world.work_item(row.number)
    if need is None:
        assert item is None
    else:
        assert item is not None
        assert (item.audience, item.action, item.due_at, item.priority) == (
            need.audience,
            need.action,
            need.due_at,
            row.priority,
        )


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ticket=TICKETS, n_steps=st.integers(min_value=1, max_value=24), data=st.data())
async def test_random_moves_keep_row_trail_and_queue_consistent(
    sqlite_world: World, ticket: dict[str, Any], n_steps: int, data: st.DataObject
) -> None:
    world = sqlite_world
    number = (await world.create(**ticket))["number"]
    other = (await world.create())["number"]  # a merge target
    for _ in range(n_steps):
        world.clock.advance(minutes=data.draw(st.integers(min_value=0, max_value=600)))
        before, trail_len, item_before = await _snapshot(world, number)
        # mostly a move someone may make now (so walks get deep), sometimes anything at all
        legal = [
            (a, kind)
            for kind in ACTORS
            for a in _allowed(_actor(kind, before), before)
            if a != Action.MERGE.value
        ]
        if legal and data.draw(st.integers(0, 3)) > 0:
            act, who_kind = data.draw(st.sampled_from(legal))
            action = Action(act)
        else:
            action = data.draw(st.sampled_from(list(Action)))
            who_kind = data.draw(st.sampled_from(ACTORS))
        body = data.draw(PAYLOADS[action])
        who = _actor(who_kind, before)
        status = Status(before.status)
        is_lead = who.role is Role.DEPARTMENT and who.department_code == before.lead_department
        allowed = allowed_actions(status, who.role, is_lead=is_lead)
        payload = dict(body)
        if action is Action.MERGE:
            payload["into"] = {"other": other, "self": number}.get(body["into"], body["into"])
        payload = {k: v for k, v in payload.items() if v is not None}
        try:
            await world.move(number, action, who, **payload)
        except (IllegalMove, h.InvalidRequest, h.TicketNotFound) as exc:
            if isinstance(exc, h.TicketNotFound):
                assert not h.can_see(who, before)
            elif isinstance(exc, IllegalMove):
                assert action.value not in allowed
                assert exc.allowed == allowed
                move = MOVES[action]
                assert exc.forbidden is (
                    who.role not in move.roles or (move.lead_only and not is_lead)
                )
            else:
                assert action.value in allowed  # the state machine agreed; the payload did not
            assert await _snapshot(world, number) == (before, trail_len, item_before)
            continue
        assert action.value in allowed
        after = await world.row(number)
        assert after.status in {s.value for s in Status}
        assert after.version == before.version + 1
        trail = await world.trail(number)
        assert len(trail) == trail_len + 1
        last = trail[-1]
        assert (last.seq, last.action, last.from_status, last.to_status) == (
            after.event_seq,
            action.value,
            before.status,
            after.status,
        )
        assert last.hash == after.last_hash
        await _check_queue(world, after)

    final = await world.row(number)
    assert final.status in {s.value for s in Status}
    trail = await world.trail(number)
    assert [e.seq for e in trail] == list(range(1, len(trail) + 1))
    assert trail[-1].hash == final.last_hash
    await _check_queue(world, final)
    await _check_queue(world, await world.row(other))
    report = await h.verify_trails(world.deps, [number, other])
    assert report == {"checked": 2, "intact": True, "breaks": []}
