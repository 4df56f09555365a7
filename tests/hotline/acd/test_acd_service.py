"""The ACD driving calls through the in-memory switch, with a real store underneath."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa

from hotline.acd.domain import AgentState, Priority, Rules
from hotline.acd.service import BadTarget, NotYourCall, dial_string_for
from hotline.calls import store
from tests.hotline.acd.acd_rig import FAST, eventually, make_rig
from ticketing import workqueue
from ticketing.store import StoreUnavailable

CALLER = "+8613800138000"


async def test_a_call_reaches_the_available_agent_and_is_recorded(rig) -> None:  # type: ignore[no-untyped-def]
    rig.switch.phone("user/1001")
    await rig.acd.login("li", "1001", ["card"])
    uuid, task = rig.call(CALLER)
    await eventually(lambda: rig.named("call.answered"), what="answer")
    leg = rig.switch.leg_of("user/1001")
    assert rig.switch.channels[uuid].peer == leg  # caller bridged to the agent's phone
    answered = rig.named("call.answered")[0]
    assert answered.agent == "li" and answered.wait_s < FAST.service_level_s
    pop = rig.named("call.screen_pop")[0]
    assert (pop.agent, pop.caller) == ("li", "138****8000")
    # the agent hangs up: call over, agent in wrap-up, then free again
    await rig.switch.hangup(leg)
    assert await asyncio.wait_for(task, 2) == "completed"
    assert not rig.switch.up(uuid)  # the ACD hung up the caller too
    await eventually(lambda: rig.acd.acd.agents["li"].state is AgentState.AVAILABLE)
    row = await store.get_call(rig.deps, uuid)
    assert row is not None
    assert (row["state"], row["agent"], row["caller"]) == ("ended", "li", "138****8000")
    assert [e["kind"] for e in row["events"]] == ["queued", "offered", "answered", "ended"]
    assert row["wait_s"] is not None and row["talk_s"] is not None
    states = [(e.state, e.previous) for e in rig.named("acd.agent_state")]
    assert ("ringing", "available") in states and ("on_call", "ringing") in states
    assert ("wrap_up", "on_call") in states and ("available", "wrap_up") in states


async def test_no_answer_moves_the_call_to_the_next_agent(rig) -> None:  # type: ignore[no-untyped-def]
    rig.switch.phone("user/1001", "no_answer")
    rig.switch.phone("user/1002")
    await rig.acd.login("a", "1001")
    await asyncio.sleep(0.01)
    await rig.acd.login("b", "1002")
    uuid, task = rig.call()
    await eventually(lambda: rig.acd.acd.agents["b"].state is AgentState.ON_CALL)
    assert rig.acd.acd.agents["a"].missed == 1
    assert rig.switch.phones["user/1001"].rung == 1
    row = await store.get_call(rig.deps, uuid)
    assert [e["kind"] for e in row["events"]][:4] == ["queued", "offered", "ring_failed", "offered"]
    await rig.switch.hangup(uuid)
    assert await asyncio.wait_for(task, 2) == "completed"


async def test_repeated_ring_outs_put_the_agent_on_break(sqlite_rig) -> None:  # type: ignore[no-untyped-def]
    rig = sqlite_rig
    rig.switch.phone("user/1001", "no_answer")
    await rig.acd.login("a", "1001")
    uuid, task = rig.call()
    await eventually(
        lambda: [e for e in rig.named("acd.agent_state") if e.state == "break"], what="break"
    )
    change = next(e for e in rig.named("acd.agent_state") if e.state == "break")
    assert change.reason == "missed_rings"
    assert rig.switch.up(uuid)  # the caller still waits: nobody is left to ring
    await rig.switch.hangup(uuid)
    assert await asyncio.wait_for(task, 2) == "abandoned"


async def test_abandon_while_waiting_is_recorded_with_its_wait(rig) -> None:  # type: ignore[no-untyped-def]
    uuid, task = rig.call()
    await eventually(lambda: rig.named("call.queued"))
    async with rig.deps.db.read() as conn:
        items = await workqueue.list_items(conn, [workqueue.AGENTS])
    assert [(i["kind"], i["ref"], i["claimed_by"]) for i in items] == [("call", uuid, "acd")]
    await asyncio.sleep(0.05)
    await rig.switch.hangup(uuid)
    assert await asyncio.wait_for(task, 2) == "abandoned"
    row = await store.get_call(rig.deps, uuid)
    assert row["state"] == "abandoned" and row["wait_s"] >= 0.05
    assert rig.named("call.abandoned")[0].wait_s >= 0.05
    async with rig.deps.db.read() as conn:
        assert await workqueue.list_items(conn, [workqueue.AGENTS]) == []
    assert rig.acd.kpis()["abandoned"] == 1


async def test_caller_hears_position_then_music(sqlite_rig) -> None:  # type: ignore[no-untyped-def]
    rig = sqlite_rig
    uuid, task = rig.call()
    await eventually(lambda: rig.switch.channels[uuid].media == "moh")
    assert rig.switch.channels[uuid].heard == ["position_is", "digit_1", "position_suffix"]
    await rig.switch.hangup(uuid)
    await asyncio.wait_for(task, 2)


async def test_emergency_and_returning_callers_are_served_first(sqlite_rig) -> None:  # type: ignore[no-untyped-def]
    rig = sqlite_rig
    first, t1 = rig.call("+8613800000001", priority=Priority.NORMAL)
    await eventually(lambda: first in rig.acd.acd.queue)
    second, t2 = rig.call("+8613800000002", priority=Priority.EMERGENCY)
    await eventually(lambda: second in rig.acd.acd.queue)
    assert [c["uuid"] for c in rig.acd.live_calls()] == [second, first]
    rig.switch.phone("user/1001")
    await rig.acd.login("li", "1001")
    await eventually(lambda: rig.acd.acd.agents["li"].state is AgentState.ON_CALL)
    assert rig.acd.acd.agents["li"].call == second
    for u in (first, second):
        await rig.switch.hangup(u)
    await asyncio.gather(t1, t2)


async def test_a_caller_with_an_open_ticket_is_a_returning_caller(sqlite_rig) -> None:  # type: ignore[no-untyped-def]
    rig = sqlite_rig
    uuid, task = rig.call(CALLER)
    await eventually(lambda: uuid in rig.acd.acd.queue)
    assert rig.acd.calls[uuid].priority is Priority.NORMAL
    await rig.switch.hangup(uuid)
    await task
    again, task = rig.call(CALLER)  # called before within 24 h
    await eventually(lambda: again in rig.acd.acd.queue)
    assert rig.acd.calls[again].priority is Priority.RETURNING
    await rig.switch.hangup(again)
    await task


async def test_full_queue_turns_the_caller_into_a_callback_work_item(tmp_path, db_url) -> None:  # type: ignore[no-untyped-def]
    async with make_rig(tmp_path, db_url, Rules(queue_capacity=1, ring_timeout_s=0.2)) as rig:
        first, t1 = rig.call("+8613800000001")
        await eventually(lambda: first in rig.acd.acd.queue)
        second, t2 = rig.call("+8613800000002")
        assert await asyncio.wait_for(t2, 2) == "overflow"
        assert "callback_confirmed" in rig.switch.channels[second].heard
        assert not rig.switch.up(second)
        [cb] = await store.list_callbacks(rig.deps)
        assert (cb["caller"], cb["reason"], cb["call"]) == ("138****0002", "queue_full", second)
        async with rig.deps.db.read() as conn:
            items = await workqueue.list_items(conn, [workqueue.AGENTS])
        assert {(i["kind"], i["action"]) for i in items} == {
            ("call", "answer"),
            ("callback", "call_back"),
        }
        assert rig.named("call.callback_requested")[0].reason == "queue_full"
        done = await store.close_callback(rig.deps, cb["id"], "li", "done", "reached")
        assert done is not None and done["status"] == "done"
        assert await store.close_callback(rig.deps, cb["id"], "li", "done", None) is None
        await rig.switch.hangup(first)
        await t1


async def test_max_wait_offers_a_callback_and_key_1_takes_it(tmp_path, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    async with make_rig(tmp_path, sqlite_url, Rules(max_wait_s=0.1)) as rig:
        uuid, task = rig.call(digits=["1"])
        assert await asyncio.wait_for(task, 3) == "callback"
        assert "callback_offer" in rig.switch.channels[uuid].heard
        [cb] = await store.list_callbacks(rig.deps)
        assert cb["reason"] == "max_wait"
        row = await store.get_call(rig.deps, uuid)
        assert row["state"] == "callback"


async def test_a_callback_that_cannot_be_recorded_is_not_promised(
    tmp_path, db_url, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """The store away when the caller presses 1: no promise nobody would keep; the
    caller stays in line (music again) and the call task lives on."""

    async def away(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise StoreUnavailable("connection refused")

    async with make_rig(tmp_path, db_url, Rules(max_wait_s=0.1)) as rig:
        monkeypatch.setattr(store, "create_callback", away)
        uuid, task = rig.call(digits=["1", None, None, None])
        await eventually(lambda: "callback_offer" in rig.switch.channels[uuid].heard)
        await eventually(lambda: rig.switch.channels[uuid].media == "moh")
        assert uuid in rig.acd.acd.queue and not task.done()
        assert "callback_confirmed" not in rig.switch.channels[uuid].heard
        await rig.switch.hangup(uuid)
        assert await asyncio.wait_for(task, 3) == "abandoned"


async def test_a_full_queue_with_the_store_away_says_goodbye(
    tmp_path, sqlite_url, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    async def away(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise StoreUnavailable("connection refused")

    async with make_rig(tmp_path, sqlite_url, Rules(queue_capacity=1, ring_timeout_s=0.2)) as rig:
        first, t1 = rig.call("+8613800000001")
        await eventually(lambda: first in rig.acd.acd.queue)
        monkeypatch.setattr(store, "create_callback", away)
        second, t2 = rig.call("+8613800000002")
        assert await asyncio.wait_for(t2, 3) == "overflow"
        assert "goodbye" in rig.switch.channels[second].heard
        assert "callback_confirmed" not in rig.switch.channels[second].heard
        await rig.switch.hangup(first)
        await t1


async def test_max_wait_declined_keeps_the_caller_in_line(tmp_path, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    async with make_rig(tmp_path, sqlite_url, Rules(max_wait_s=0.1)) as rig:
        uuid, task = rig.call(digits=[None])
        await eventually(lambda: "callback_offer" in rig.switch.channels[uuid].heard)
        await eventually(lambda: rig.switch.channels[uuid].media == "moh")
        assert uuid in rig.acd.acd.queue
        await rig.switch.hangup(uuid)
        assert await task == "abandoned"


async def test_two_hundred_calls_at_once_are_all_answered(sqlite_rig) -> None:  # type: ignore[no-untyped-def]
    rig = sqlite_rig
    for i in range(20):
        rig.switch.phone(f"user/{1000 + i}", answer_after_s=0.005)
        await rig.acd.login(f"agent{i}", str(1000 + i))
    calls = [rig.call(f"+86138{i:08d}") for i in range(200)]

    async def agent_side() -> None:
        # agents finish each call quickly; wrap-up is 0.05 s
        while any(not t.done() for _, t in calls):
            for a in rig.acd.acd.agents.values():
                if a.state is AgentState.ON_CALL and a.call in rig.acd.calls:
                    leg = rig.acd.calls[a.call].agent_leg
                    if leg:
                        await rig.switch.hangup(leg)
            await asyncio.sleep(0.01)

    worker = asyncio.ensure_future(agent_side())
    outcomes = await asyncio.wait_for(asyncio.gather(*(t for _, t in calls)), 60)
    await worker
    assert outcomes == ["completed"] * 200
    k = rig.acd.kpis()
    assert (k["offered"], k["answered"], k["abandoned"], k["waiting"]) == (200, 200, 0, 0)
    async with rig.deps.db.read() as conn:
        ended = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(store.call_t)
                .where(store.call_t.c.state == "ended")
            )
        ).scalar_one()
    assert ended == 200


async def test_hold_unhold_and_hangup_by_the_agent(sqlite_rig) -> None:  # type: ignore[no-untyped-def]
    rig = sqlite_rig
    rig.switch.phone("user/1001")
    await rig.acd.login("li", "1001")
    uuid, task = rig.call()
    await eventually(lambda: rig.acd.acd.agents["li"].state is AgentState.ON_CALL)
    with pytest.raises(NotYourCall):
        await rig.acd.hold(uuid, "someone-else", True)
    view = await rig.acd.hold(uuid, "li", True)
    assert view["state"] == "held" and rig.switch.channels[uuid].held
    view = await rig.acd.hold(uuid, "li", False)
    assert view["state"] == "talking" and not rig.switch.channels[uuid].held
    await rig.acd.hangup(uuid, "li")
    assert await task == "completed"
    assert [e.held for e in rig.named("call.held")] == [True, False]


async def test_blind_transfer_to_another_agent(sqlite_rig) -> None:  # type: ignore[no-untyped-def]
    rig = sqlite_rig
    rig.switch.phone("user/1001")
    rig.switch.phone("user/1002", "busy")  # busy for queue offers at first
    await rig.acd.login("a", "1001")
    await rig.acd.login("b", "1002")
    await rig.acd.set_state("b", "break", None)
    rig.switch.phone("user/1002")
    uuid, task = rig.call()
    await eventually(lambda: rig.acd.acd.agents["a"].state is AgentState.ON_CALL)
    old_leg = rig.acd.calls[uuid].agent_leg
    await rig.acd.set_state("b", "available", None)
    await eventually(lambda: True)
    await rig.acd.transfer_blind(uuid, "a", "agent:b")
    await eventually(lambda: rig.acd.calls[uuid].agent == "b", what="transfer")
    assert not rig.switch.up(old_leg)
    assert rig.switch.channels[uuid].peer == rig.switch.leg_of("user/1002")
    assert rig.acd.acd.agents["a"].state in (AgentState.WRAP_UP, AgentState.AVAILABLE)
    assert rig.acd.acd.agents["b"].state is AgentState.ON_CALL
    await rig.switch.hangup(uuid)
    assert await task == "completed"


async def test_blind_transfer_nobody_answers_requeues_the_caller(sqlite_rig) -> None:  # type: ignore[no-untyped-def]
    rig = sqlite_rig
    rig.switch.phone("user/1001")
    rig.switch.phone("user/2000", "no_answer")
    await rig.acd.login("a", "1001")
    uuid, task = rig.call()
    await eventually(lambda: rig.acd.acd.agents["a"].state is AgentState.ON_CALL)
    await rig.acd.transfer_blind(uuid, "a", "2000")
    await eventually(lambda: rig.named("call.transferred")[-1].step == "failed", what="failure")
    # back in line ahead of new callers; agent a (free after wrap-up) gets it again
    await eventually(lambda: rig.acd.calls[uuid].agent == "a", what="re-answer")
    assert rig.acd.calls[uuid].priority is Priority.RETURNING
    await rig.switch.hangup(uuid)
    assert await task == "completed"


async def test_a_caller_back_in_line_is_back_in_the_agents_queue(tmp_path, db_url) -> None:  # type: ignore[no-untyped-def]
    """A failed transfer puts the caller back in line: the console's queue must show
    the call again (its item went when it was answered), and drop it when answered."""
    slow_wrap_up = Rules(ring_timeout_s=0.2, wrap_up_s=30, service_level_s=15)
    async with make_rig(tmp_path, db_url, slow_wrap_up) as rig:
        rig.switch.phone("user/1001")
        rig.switch.phone("user/2000", "no_answer")
        await rig.acd.login("a", "1001")
        uuid, task = rig.call()
        # (announced once its step is written: the agent's state changes before that)
        await eventually(lambda: rig.named("call.answered"), what="answered")
        assert await _call_items(rig) == []  # answered: out of the agents' queue
        await rig.acd.transfer_blind(uuid, "a", "2000")
        await eventually(lambda: rig.named("call.transferred")[-1].step == "failed")
        # agent a is in wrap-up: nobody free (the failure is announced before the requeue)
        await eventually(lambda: rig.acd.calls[uuid].state == "queued", what="requeued")
        for _ in range(500):
            if items := await _call_items(rig):
                break
            await asyncio.sleep(0.01)
        [item] = items
        assert (item["ref"], item["priority"]) == (uuid, int(Priority.RETURNING))
        await rig.switch.hangup(uuid)
        assert await task == "abandoned"
        for _ in range(500):  # the abandon step takes the item away
            if not await _call_items(rig):
                break
            await asyncio.sleep(0.01)
        assert await _call_items(rig) == []


async def _call_items(rig) -> list:  # type: ignore[no-untyped-def]
    async with rig.deps.db.read() as conn:
        items = await workqueue.list_items(conn, [workqueue.AGENTS])
    return [i for i in items if i["kind"] == workqueue.CALL]


async def test_attended_transfer_consult_then_complete(sqlite_rig) -> None:  # type: ignore[no-untyped-def]
    rig = sqlite_rig
    rig.switch.phone("user/1001")
    rig.switch.phone("user/3000")
    await rig.acd.login("a", "1001")
    uuid, task = rig.call()
    await eventually(lambda: rig.acd.acd.agents["a"].state is AgentState.ON_CALL)
    agent_leg = rig.acd.calls[uuid].agent_leg
    view = await rig.acd.transfer_attended(uuid, "a", "consult", "3000")
    assert view["state"] == "consulting"
    target_leg = rig.switch.leg_of("user/3000")
    assert rig.switch.channels[agent_leg].peer == target_leg
    assert rig.switch.channels[uuid].media == "moh"  # the caller waits with music
    await rig.acd.transfer_attended(uuid, "a", "complete", None)
    assert rig.switch.channels[uuid].peer == target_leg
    assert not rig.switch.up(agent_leg)
    await eventually(lambda: rig.acd.acd.agents["a"].state is not AgentState.ON_CALL)
    await rig.switch.hangup(target_leg)
    assert await task == "completed"


async def test_attended_transfer_cancel_and_three_way(sqlite_rig) -> None:  # type: ignore[no-untyped-def]
    rig = sqlite_rig
    rig.switch.phone("user/1001")
    rig.switch.phone("user/3000")
    await rig.acd.login("a", "1001")
    uuid, task = rig.call()
    await eventually(lambda: rig.acd.acd.agents["a"].state is AgentState.ON_CALL)
    agent_leg = rig.acd.calls[uuid].agent_leg
    await rig.acd.transfer_attended(uuid, "a", "consult", "3000")
    await rig.acd.transfer_attended(uuid, "a", "cancel", None)
    assert rig.switch.channels[uuid].peer == agent_leg
    assert rig.switch.leg_of("user/3000") is None
    await rig.acd.transfer_attended(uuid, "a", "consult", "3000")
    view = await rig.acd.transfer_attended(uuid, "a", "conference", None)
    assert view["state"] == "conference"
    assert rig.switch.room_members(f"hotline-{uuid}") == {
        uuid,
        agent_leg,
        rig.switch.leg_of("user/3000"),
    }
    await rig.switch.hangup(agent_leg)  # the agent may leave the three-way call
    await eventually(lambda: rig.acd.acd.agents["a"].state is not AgentState.ON_CALL)
    assert rig.switch.up(uuid)
    await rig.switch.hangup(uuid)
    assert await task == "completed"
    assert rig.switch.leg_of("user/3000") is None  # the room is emptied


async def test_console_answer_rings_the_phone_with_auto_answer(sqlite_rig) -> None:  # type: ignore[no-untyped-def]
    rig = sqlite_rig
    phone = rig.switch.phone("user/1001", "manual")
    await rig.acd.login("li", "1001")
    uuid, task = rig.call()
    await eventually(lambda: rig.acd.acd.agents["li"].state is AgentState.RINGING)
    phone.mode = "answer"  # auto-answer makes the phone pick up at once
    view = await rig.acd.answer(uuid, "li")
    assert view["state"] == "talking" and view["agent"] == "li"
    await rig.switch.hangup(uuid)
    assert await task == "completed"


async def test_login_remembers_the_phone_and_skills(sqlite_rig) -> None:  # type: ignore[no-untyped-def]
    rig = sqlite_rig
    with pytest.raises(BadTarget):
        await rig.acd.login("li")  # no phone known yet
    view = await rig.acd.login("li", "1001", ["card", " en "])
    assert (view["dial_string"], view["skills"]) == ("user/1001", ["card", "en"])
    await rig.acd.logout("li")
    view = await rig.acd.login("li")
    assert (view["state"], view["dial_string"], view["skills"]) == (
        "available",
        "user/1001",
        ["card", "en"],
    )


def test_dial_targets_are_checked_before_they_reach_the_switch() -> None:
    assert dial_string_for("1002") == "user/1002"
    assert dial_string_for("user/1002") == "user/1002"
    assert dial_string_for("sofia/gateway/110") == "sofia/gateway/110"
    for bad in ("{x=1}user/1", "user/1,user/2", "1002 &park()", "", "user/", "bridge:user/1"):
        with pytest.raises(BadTarget):
            dial_string_for(bad)


async def test_restart_closes_calls_left_live_by_a_previous_run(tmp_path, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    async with make_rig(tmp_path, sqlite_url) as rig:
        uuid, task = rig.call()
        await eventually(lambda: rig.named("call.queued"))
        task.cancel()
    async with make_rig(tmp_path, sqlite_url) as rig:
        row = await store.get_call(rig.deps, uuid)
        assert (row["state"], row["hangup_cause"]) == ("lost", "SERVICE_RESTART")
        async with rig.deps.db.read() as conn:
            assert await workqueue.list_items(conn, [workqueue.AGENTS]) == []


async def test_metrics_count_calls_and_agents(sqlite_rig) -> None:  # type: ignore[no-untyped-def]
    from prometheus_client import generate_latest

    rig = sqlite_rig
    rig.switch.phone("user/1001")
    await rig.acd.login("li", "1001")
    uuid, task = rig.call()
    await eventually(lambda: rig.acd.acd.agents["li"].state is AgentState.ON_CALL)
    await rig.switch.hangup(uuid)
    await task
    text = generate_latest(rig.acd.metrics.registry).decode()
    assert "hotline_calls_offered_total 1.0" in text
    assert "hotline_calls_answered_total 1.0" in text
    assert "hotline_calls_answered_within_target_total 1.0" in text
    assert "hotline_calls_abandoned_total 0.0" in text
    assert (
        'hotline_agents{state="wrap_up"} 1.0' in text
        or 'hotline_agents{state="available"} 1.0' in text
    )
    assert "hotline_calls_connection_rate_24h 1.0" in text


async def test_announcements_falling_due_together_are_spread_over_the_tick(
    tmp_path, sqlite_url
) -> None:  # type: ignore[no-untyped-def]
    """Callers who came in together are due their periodic announcement together; they
    are started spread over one tick, in line order, and each only once."""
    async with make_rig(tmp_path, sqlite_url, announce_every_s=3600) as rig:
        started: list[tuple[str, float]] = []

        async def announce(call, after_s: float = 0.0) -> None:  # type: ignore[no-untyped-def]
            started.append((call.uuid, after_s))

        # installed before the calls come in: each call's own first announcement (made
        # once its entry is stored, later than it joins the line under load) is seen here
        rig.acd._announce = announce  # type: ignore[method-assign]
        uuids = []
        for i in range(4):
            uuid, _ = rig.call(f"+861380000000{i}")
            await eventually(lambda uuid=uuid: uuid in rig.acd.acd.queue)
            uuids.append(uuid)
        await eventually(lambda: len(started) == 4, limit_s=20, what="entry announcements")
        assert sorted(u for u, _ in started) == sorted(uuids)
        started.clear()
        for u in uuids:  # all four due at once
            rig.acd.calls[u].last_announce = -1e9
        await eventually(lambda: len(started) == 4, limit_s=10, what="announcements started")
        tick = rig.acd.config.tick_s
        assert started == [(u, pytest.approx(i * tick / 4)) for i, u in enumerate(uuids)]
        await asyncio.sleep(5 * tick)
        assert len(started) == 4  # not due again while waiting for their turn
        for u in uuids:
            await rig.switch.hangup(u)
