"""The ACD's rules without a network: states, strategies, priority, misses, wrap-up, load."""

from __future__ import annotations

import contextlib
import random

import pytest

from hotline.acd.domain import (
    Acd,
    AgentState,
    IllegalAgentMove,
    Priority,
    QueuedCall,
    Rules,
    Strategy,
    UnknownCall,
)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


def make(**rules) -> tuple[Acd, Clock]:  # type: ignore[no-untyped-def]
    clock = Clock()
    return Acd(Rules(**rules), clock), clock


def staff(acd: Acd, clock: Clock, *names: str, skills: dict | None = None) -> None:
    for n in names:
        acd.login(n, f"user/{n}", (skills or {}).get(n, ()))
        clock.advance(1)


# ------------------------------------------------------------------ agent states


def test_login_makes_an_agent_available_and_reports_the_change() -> None:
    acd, _ = make()
    [ch] = acd.login("li", "user/1001", ["card"])
    assert (ch.username, ch.previous, ch.state, ch.reason) == (
        "li",
        AgentState.LOGGED_OUT,
        AgentState.AVAILABLE,
        "login",
    )
    assert acd.agents["li"].skills == frozenset({"card"})


def test_second_login_updates_phone_without_a_state_change() -> None:
    acd, _ = make()
    acd.login("li", "user/1001")
    assert acd.login("li", "user/1009", ["en"]) == []
    assert acd.agents["li"].dial_string == "user/1009"
    assert acd.agents["li"].state is AgentState.AVAILABLE


def test_agent_cannot_set_states_that_belong_to_the_acd() -> None:
    acd, _ = make()
    acd.login("li", "user/1001")
    for state in (AgentState.ON_CALL, AgentState.RINGING, AgentState.WRAP_UP):
        with pytest.raises(IllegalAgentMove):
            acd.set_state("li", state)


def test_agent_cannot_log_out_or_go_on_break_during_a_call() -> None:
    acd, clock = make()
    staff(acd, clock, "li")
    acd.enqueue("c1", "+8613800000001")
    acd.dispatch()
    acd.ring_answered("c1", "li")
    with pytest.raises(IllegalAgentMove):
        acd.logout("li")
    with pytest.raises(IllegalAgentMove):
        acd.set_state("li", AgentState.BREAK)


def test_break_and_back() -> None:
    acd, _ = make()
    acd.login("li", "user/1001")
    [ch] = acd.set_state("li", AgentState.BREAK, "lunch")
    assert (ch.state, ch.reason) == (AgentState.BREAK, "lunch")
    assert acd.set_state("li", AgentState.BREAK) == []  # no-op, no event
    [ch] = acd.set_state("li", AgentState.AVAILABLE)
    assert ch.previous is AgentState.BREAK


# ------------------------------------------------------------------ strategies


def test_longest_idle_agent_gets_the_call() -> None:
    acd, clock = make()
    staff(acd, clock, "a", "b", "c")  # a has been idle longest
    acd.enqueue("c1", "+861")
    [offer] = acd.dispatch()
    assert offer.agents == ("a",)
    assert offer.dial_strings == ("user/a",)
    assert acd.agents["a"].state is AgentState.RINGING


def test_agent_back_from_wrap_up_goes_to_the_end_of_the_idle_line() -> None:
    acd, clock = make(wrap_up_s=5)
    staff(acd, clock, "a", "b")
    acd.enqueue("c1", "+861")
    acd.dispatch()
    acd.ring_answered("c1", "a")
    clock.advance(60)
    acd.call_ended("a", 60)
    clock.advance(5)
    changes, _ = acd.tick()
    assert [(c.username, c.state) for c in changes] == [("a", AgentState.AVAILABLE)]
    acd.enqueue("c2", "+862")
    [offer] = acd.dispatch()
    assert offer.agents == ("b",)


def test_skills_based_routes_only_to_qualified_agents_specialists_first() -> None:
    acd, clock = make(strategy=Strategy.SKILLS)
    staff(
        acd,
        clock,
        "generalist",
        "plain",
        "card_only",
        skills={"generalist": {"card", "en", "legal"}, "card_only": {"card"}},
    )
    acd.enqueue("c1", "+861", skills=["card"])
    [offer] = acd.dispatch()
    assert offer.agents == ("card_only",)
    acd.enqueue("c2", "+862", skills=["card"])
    [offer] = acd.dispatch()
    assert offer.agents == ("generalist",)
    acd.enqueue("c3", "+863", skills=["card"])
    assert acd.dispatch() == []  # "plain" lacks the skill: the call waits


def test_longest_idle_still_respects_required_skills() -> None:
    acd, clock = make()
    staff(acd, clock, "plain", "english", skills={"english": {"en"}})
    acd.enqueue("c1", "+861", skills=["en"])
    [offer] = acd.dispatch()
    assert offer.agents == ("english",)


def test_one_dispatch_gives_each_free_agent_one_call_in_queue_order() -> None:
    acd, clock = make(strategy=Strategy.SKILLS)
    staff(acd, clock, "a", "card", "b", skills={"card": {"card"}})
    for i in range(5):
        acd.enqueue(f"c{i}", f"+86{i}", skills=["card"] if i == 1 else ())
        clock.advance(1)
    offers = acd.dispatch()
    # c1 needs the card agent; the plain callers before and after it share the others
    assert [(o.call, o.agents) for o in offers] == [
        ("c0", ("a",)),
        ("c1", ("card",)),
        ("c2", ("b",)),
    ]
    assert acd.dispatch() == []  # nobody left free: c3 and c4 wait
    assert [q.uuid for q in acd.waiting() if not q.ringing] == ["c3", "c4"]


def test_with_every_agent_busy_a_dispatch_does_not_walk_the_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every arrival and hang-up dispatches; with a long queue and nobody free that must
    stay one look at the agents, not a sort of the queue and a scan per caller."""
    acd, clock = make()
    staff(acd, clock, "a")
    for i in range(500):
        acd.enqueue(f"c{i}", f"+86{i}")
    [offer] = acd.dispatch()
    assert offer.call == "c0"
    looked_at: list[str] = []
    key = QueuedCall.sort_key
    monkeypatch.setattr(QueuedCall, "sort_key", lambda q: (looked_at.append(q.uuid), key(q))[1])
    assert acd.dispatch() == []
    assert looked_at == []


def test_ring_all_rings_every_free_agent_and_the_first_to_answer_wins() -> None:
    acd, clock = make(strategy=Strategy.RING_ALL)
    staff(acd, clock, "a", "b", "c")
    acd.set_state("c", AgentState.BREAK)
    acd.enqueue("c1", "+861")
    [offer] = acd.dispatch()
    assert set(offer.agents) == {"a", "b"}
    answered, changes = acd.ring_answered("c1", "b")
    assert answered.agent == "b"
    assert {(c.username, c.state) for c in changes} == {
        ("a", AgentState.AVAILABLE),
        ("b", AgentState.ON_CALL),
    }


def test_ring_all_an_agent_who_left_the_ring_is_not_moved_when_another_answers() -> None:
    """Ring-all: while three phones ring, one agent sets themselves available and is
    offered the next caller, another goes on break; when the first call is answered
    only phones still ringing for it stop, and nobody else's state is touched."""
    acd, clock = make(strategy=Strategy.RING_ALL)
    staff(acd, clock, "a", "b", "c", "d")
    acd.enqueue("c1", "+861")
    [offer] = acd.dispatch()
    assert set(offer.agents) == {"a", "b", "c", "d"}
    acd.set_state("a", AgentState.AVAILABLE)  # stops ringing for c1 on their side
    acd.set_state("c", AgentState.BREAK)
    acd.enqueue("c2", "+862")
    offers = acd.dispatch()
    assert [(o.call, set(o.agents)) for o in offers] == [("c2", {"a"})]
    answered, changes = acd.ring_answered("c1", "b")
    assert answered.agent == "b"
    assert {(c.username, c.state) for c in changes} == {
        ("d", AgentState.AVAILABLE),
        ("b", AgentState.ON_CALL),
    }
    assert acd.agents["a"].state is AgentState.RINGING and acd.agents["a"].call == "c2"
    assert acd.agents["c"].state is AgentState.BREAK
    # the caller of c2 hangs up: only a, ringing for c2, goes back to available
    _, changes = acd.abandon("c2")
    assert [(c.username, c.state) for c in changes] == [("a", AgentState.AVAILABLE)]


# ------------------------------------------------------------------ priority and position


def test_emergency_and_returning_callers_go_first_then_arrival_order() -> None:
    acd, clock = make()
    acd.enqueue("n1", "+861")
    clock.advance(1)
    acd.enqueue("r1", "+862", Priority.RETURNING)
    clock.advance(1)
    acd.enqueue("n2", "+863")
    clock.advance(1)
    acd.enqueue("e1", "+864", Priority.EMERGENCY)
    assert [q.uuid for q in acd.waiting()] == ["e1", "r1", "n1", "n2"]
    assert acd.position("n1") == 3
    staff(acd, clock, "a")
    [offer] = acd.dispatch()
    assert offer.call == "e1"


def test_position_of_an_unknown_call_is_an_error() -> None:
    acd, _ = make()
    with pytest.raises(UnknownCall):
        acd.position("nope")


def test_expected_wait_uses_position_handle_time_and_staffed_agents() -> None:
    acd, clock = make(default_handle_s=120)
    staff(acd, clock, "a", "b")
    for i in range(5):
        acd.enqueue(f"c{i}", "+86")
    acd.dispatch()  # two ringing, three waiting behind them
    # c4 is 5th in line, nobody free now: (5 - 0) * 120 / 2 agents
    assert acd.expected_wait_s("c4") == pytest.approx(300)


def test_expected_wait_with_free_agents_is_zero_and_with_nobody_is_max_wait() -> None:
    acd, clock = make(max_wait_s=90)
    acd.enqueue("c1", "+86")
    assert acd.expected_wait_s("c1") == 90
    staff(acd, clock, "a")
    assert acd.expected_wait_s("c1") == 0


def test_queue_capacity_refuses_normal_calls_but_never_an_emergency() -> None:
    acd, _ = make(queue_capacity=2)
    assert acd.enqueue("c1", "+86")
    assert acd.enqueue("c2", "+86")
    assert acd.enqueue("c3", "+86") is None
    assert acd.enqueue("e1", "+86", Priority.EMERGENCY) is not None


def test_enqueue_is_idempotent_on_the_call_uuid() -> None:
    acd, _ = make()
    first = acd.enqueue("c1", "+86")
    assert acd.enqueue("c1", "+86") is first
    assert acd.sl.offered == 1


# ------------------------------------------------------------------ missed rings


def test_no_answer_rings_the_next_agent_and_counts_the_miss() -> None:
    acd, clock = make()
    staff(acd, clock, "a", "b")
    acd.enqueue("c1", "+86")
    [offer] = acd.dispatch()
    assert offer.agents == ("a",)
    [ch] = acd.ring_failed("c1", ["a"], "no_answer")
    assert (ch.state, ch.reason) == (AgentState.AVAILABLE, "no_answer")
    assert acd.agents["a"].missed == 1
    [offer] = acd.dispatch()
    assert offer.agents == ("b",)


def test_n_missed_rings_put_the_agent_on_break() -> None:
    acd, clock = make(missed_ring_limit=2)
    staff(acd, clock, "a")
    for i in range(2):
        acd.enqueue(f"c{i}", "+86")
        [offer] = acd.dispatch()
        assert offer.agents == ("a",)
        changes = acd.ring_failed(f"c{i}", ["a"], "no_answer")
        acd.abandon(f"c{i}")
    assert [(c.state, c.reason) for c in changes] == [(AgentState.BREAK, "missed_rings")]


def test_answering_resets_the_missed_ring_counter() -> None:
    acd, clock = make(missed_ring_limit=2)
    staff(acd, clock, "a")
    acd.enqueue("c1", "+86")
    acd.dispatch()
    acd.ring_failed("c1", ["a"], "no_answer")
    acd.dispatch()  # everyone tried: a new round rings a again
    acd.ring_answered("c1", "a")
    assert acd.agents["a"].missed == 0


def test_a_busy_phone_is_not_a_missed_ring() -> None:
    acd, clock = make(missed_ring_limit=1)
    staff(acd, clock, "a")
    acd.enqueue("c1", "+86")
    acd.dispatch()
    [ch] = acd.ring_failed("c1", ["a"], "busy")
    assert ch.state is AgentState.AVAILABLE
    assert acd.agents["a"].missed == 0


def test_ring_out_does_not_reset_the_idle_clock() -> None:
    acd, clock = make()
    staff(acd, clock, "a", "b")
    acd.enqueue("c1", "+86")
    acd.dispatch()
    acd.ring_failed("c1", ["a"], "no_answer")
    acd.dispatch()  # b rings for c1
    acd.enqueue("c2", "+86")
    [offer] = acd.dispatch()
    assert offer.agents == ("a",)  # still the longest idle


# ------------------------------------------------------------------ wrap-up, abandon, callbacks


def test_wrap_up_blocks_calls_until_its_timer_or_the_agent_ends_it() -> None:
    acd, clock = make(wrap_up_s=30)
    staff(acd, clock, "a")
    acd.enqueue("c1", "+86")
    acd.dispatch()
    acd.ring_answered("c1", "a")
    [ch] = acd.call_ended("a", 100)
    assert ch.state is AgentState.WRAP_UP
    acd.enqueue("c2", "+86")
    assert acd.dispatch() == []
    clock.advance(29)
    assert acd.tick()[0] == []
    acd.set_state("a", AgentState.AVAILABLE)  # done early
    [offer] = acd.dispatch()
    assert offer.call == "c2"


def test_abandon_records_the_wait_and_frees_a_ringing_agent() -> None:
    acd, clock = make()
    staff(acd, clock, "a")
    acd.enqueue("c1", "+86")
    acd.dispatch()
    clock.advance(12)
    abandoned, changes = acd.abandon("c1")
    assert abandoned is not None and abandoned.wait_s == pytest.approx(12)
    assert [(c.username, c.state) for c in changes] == [("a", AgentState.AVAILABLE)]
    assert acd.sl.abandoned == 1
    assert acd.abandon("c1") == (None, [])  # twice is harmless


def test_max_wait_offers_a_callback_once_and_never_to_an_emergency() -> None:
    acd, clock = make(max_wait_s=60)
    acd.enqueue("c1", "+86")
    acd.enqueue("e1", "+86", Priority.EMERGENCY)
    clock.advance(59)
    assert acd.tick()[1] == []
    clock.advance(1)
    _, due = acd.tick()
    assert [d.call for d in due] == ["c1"]
    clock.advance(60)
    assert acd.tick()[1] == []


def test_leaving_the_queue_for_a_callback_counts_neither_answer_nor_abandon() -> None:
    acd, _ = make()
    acd.enqueue("c1", "+86")
    acd.leave_queue("c1")
    assert (acd.sl.answered, acd.sl.abandoned, acd.sl.offered) == (0, 0, 1)
    assert acd.waiting() == []


# ------------------------------------------------------------------ capacity shared with text


def test_an_agent_on_a_call_takes_chats_only_up_to_the_load() -> None:
    acd, clock = make(chat_weight=0.25, max_load=1.5)
    staff(acd, clock, "a")
    acd.enqueue("c1", "+86")
    acd.dispatch()
    acd.ring_answered("c1", "a")
    assert acd.can_take_chat("a")
    acd.set_chats("a", 2)  # 1.0 + 0.5 = 1.5
    assert not acd.can_take_chat("a")


def test_an_agent_busy_with_chats_is_not_offered_a_call() -> None:
    acd, clock = make(chat_weight=0.25, max_load=1.5)
    staff(acd, clock, "a", "b")
    acd.set_chats("a", 3)  # 0.75 + a call would be 1.75
    acd.enqueue("c1", "+86")
    [offer] = acd.dispatch()
    assert offer.agents == ("b",)


def test_nobody_on_break_or_logged_out_takes_chats() -> None:
    acd, clock = make()
    staff(acd, clock, "a")
    acd.set_state("a", AgentState.BREAK)
    assert not acd.can_take_chat("a")
    assert not acd.can_take_chat("ghost")


# ------------------------------------------------------------------ service level


def test_service_level_asa_and_connection_rate() -> None:
    acd, clock = make(service_level_s=15)
    staff(acd, clock, "a", "b")
    acd.enqueue("fast", "+86")
    acd.enqueue("slow", "+86")
    acd.enqueue("gone", "+86")
    acd.dispatch()
    clock.advance(5)
    acd.ring_answered("fast", "a")
    clock.advance(20)
    acd.ring_answered("slow", "b")
    acd.abandon("gone")
    sl = acd.sl
    assert (sl.offered, sl.answered, sl.abandoned, sl.within_target) == (3, 2, 1, 1)
    assert sl.asa_s == pytest.approx((5 + 25) / 2)
    assert sl.service_level == pytest.approx(0.5)
    assert sl.connection_rate(clock()) == pytest.approx(2 / 3)
    assert acd.longest_wait_s() == 0


def test_connection_rate_forgets_calls_older_than_24_hours() -> None:
    acd, clock = make()
    acd.enqueue("old", "+86")
    acd.abandon("old")
    clock.advance(24 * 3600 + 1)
    assert acd.sl.connection_rate(clock()) == 1.0
    assert acd.sl.abandoned == 1  # the counter since start keeps it


def test_agent_counts_by_state() -> None:
    acd, clock = make()
    staff(acd, clock, "a", "b")
    acd.set_state("b", AgentState.BREAK)
    counts = acd.counts()
    assert counts["available"] == 1 and counts["break"] == 1 and counts["on_call"] == 0


# ------------------------------------------------------------------ kept-up-to-date answers
# The queue's order, the agents' counts and the set of free agents are kept as agents
# move and callers come and go (not recounted per question); they must always equal
# what a recount from scratch says.


def _recount(acd: Acd) -> None:
    in_order = sorted(acd.queue.values(), key=QueuedCall.sort_key)
    assert acd.waiting() == in_order
    for i, q in enumerate(in_order, 1):
        assert acd.position(q.uuid) == i
    states = {s.value: 0 for s in AgentState}
    for a in acd.agents.values():
        states[a.state.value] += 1
    assert acd.counts() == states
    staffed = sum(
        a.state not in (AgentState.LOGGED_OUT, AgentState.BREAK) for a in acd.agents.values()
    )
    assert acd.staffed() == staffed
    free = {u for u, a in acd.agents.items() if acd._can_take_call(a)}
    assert set(acd._free) == free


@pytest.mark.parametrize("strategy", list(Strategy))
def test_queue_order_counts_and_free_agents_stay_right_through_any_sequence(
    strategy: Strategy,
) -> None:
    rnd = random.Random(7)
    acd, clock = make(strategy=strategy, missed_ring_limit=2, wrap_up_s=2, max_load=1.5)
    names = [f"a{i}" for i in range(6)]
    calls = 0
    for _ in range(1500):
        clock.advance(rnd.choice((0, 0, 0.5, 1)))  # equal times too: ties by arrival
        op = rnd.randrange(10)
        if op < 3:
            calls += 1
            prio = rnd.choice(list(Priority))
            acd.enqueue(f"c{calls}", "+86", prio, rnd.choice(((), ("card",))))
        elif op == 3:
            name = rnd.choice(names)
            acd.login(name, f"user/{name}", rnd.choice(((), ("card",))))
        elif op == 4:
            name = rnd.choice(names)
            # (not while ringing: the offer's own outcome moves a ringing agent)
            if name in acd.agents and acd.agents[name].state is not AgentState.RINGING:
                with contextlib.suppress(IllegalAgentMove):  # talking
                    acd.set_state(name, rnd.choice((AgentState.AVAILABLE, AgentState.BREAK)))
        elif op == 5:
            name = rnd.choice(names)
            if name in acd.agents:
                acd.set_chats(name, rnd.randrange(4))
        elif op == 6 and acd.queue:
            acd.abandon(rnd.choice(list(acd.queue)))
        elif op == 7:
            ringing = [a for a in acd.agents.values() if a.state is AgentState.RINGING]
            if ringing:
                a = rnd.choice(ringing)
                assert a.call is not None
                if rnd.random() < 0.5:
                    acd.ring_answered(a.call, a.username)
                else:
                    acd.ring_failed(a.call, [a.username], rnd.choice(("no_answer", "busy")))
        elif op == 8:
            talking = [a for a in acd.agents.values() if a.state is AgentState.ON_CALL]
            if talking:
                acd.call_ended(rnd.choice(talking).username, 10)
            acd.tick()
        else:
            acd.dispatch()
        _recount(acd)
    assert calls > 250 and acd.sl.answered > 25  # the sequence did exercise the queue


def test_skills_ties_go_to_the_agent_who_logged_in_first() -> None:
    """Ranking picks the best agent without sorting them all; equally ranked agents
    still go in login order, as the sorted list gave them."""
    acd, _ = make(strategy=Strategy.SKILLS)
    for name in ("z", "m", "a"):  # same skills, same idle time: only login order differs
        acd.login(name, f"user/{name}")
    acd.enqueue("c1", "+86")
    acd.enqueue("c2", "+86")
    assert [o.agents for o in acd.dispatch()] == [("z",), ("m",)]
