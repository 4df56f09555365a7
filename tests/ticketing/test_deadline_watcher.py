"""The deadline watcher on a hand-set clock: each warning and breach exactly once."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest
from ticket_world import AGENT, SUPERVISOR, T0, URBAN, World, dept, make_deps

from ticketing import deadline_watcher
from ticketing import handlers as h
from ticketing.deadline_watcher import scan_once
from ticketing.events import DeadlineBreached, DeadlineWarning, DomainEvent

GAS = dept("gas")
WARN = 0.75  # of the allowance; the setting's default is 0.8


def _z(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def _deadline_events(events: list[DomainEvent]) -> list[DomainEvent]:
    return [e for e in events if isinstance(e, DeadlineWarning | DeadlineBreached)]


async def _scan_at(world: World, minutes: float, fraction: float = WARN) -> list[DomainEvent]:
    world.clock.set(T0 + timedelta(minutes=minutes))
    return await scan_once(world.deps, fraction)


async def _emergency(world: World) -> str:
    # 燃气泄漏: an emergency, dispatch within 1 hour, feedback within 2 hours
    return (await world.create(category="utilities.gas-leak"))["number"]


async def test_dispatch_warning_then_breach_once_each(world: World) -> None:
    n = await _emergency(world)
    due = _z(T0 + timedelta(hours=1))
    assert await _scan_at(world, 10) == []
    assert await _scan_at(world, 47) == [DeadlineWarning(n, "dispatch", due)]
    assert await _scan_at(world, 47) == []
    assert await _scan_at(world, 55) == []
    assert await _scan_at(world, 60) == []  # on the deadline is still on time
    assert await _scan_at(world, 61) == [DeadlineBreached(n, "dispatch", due)]
    assert await _scan_at(world, 61) == []
    assert await _scan_at(world, 600) == []
    # announced on the bus side too, once each
    assert _deadline_events(world.events) == [
        DeadlineWarning(n, "dispatch", due),
        DeadlineBreached(n, "dispatch", due),
    ]
    row = await world.row(n)
    assert row.dispatch_warned_at == T0 + timedelta(minutes=47)
    assert row.dispatch_breached_at == T0 + timedelta(minutes=61)
    assert row.feedback_warned_at is None and row.feedback_breached_at is None


async def test_default_fraction_warns_at_48_minutes(world: World) -> None:
    n = await _emergency(world)
    assert await _scan_at(world, 47, 0.8) == []
    assert await _scan_at(world, 48, 0.8) == [
        DeadlineWarning(n, "dispatch", _z(T0 + timedelta(hours=1)))
    ]


async def test_breach_without_a_prior_warning_is_still_one_event(world: World) -> None:
    n = await _emergency(world)
    assert await _scan_at(world, 90) == [
        DeadlineBreached(n, "dispatch", _z(T0 + timedelta(hours=1)))
    ]
    assert await _scan_at(world, 91) == []
    assert (await world.row(n)).dispatch_warned_at is None


async def test_concurrent_scans_emit_each_event_once(world: World) -> None:
    """Two scanners (two instances: own engine each) race over the same tickets."""
    numbers = [await _emergency(world) for _ in range(15)]
    other = await make_deps(world.db.url, world.clock)
    try:
        for minutes, kind in ((50, DeadlineWarning), (70, DeadlineBreached)):
            world.clock.set(T0 + timedelta(minutes=minutes))
            a, b, c = await asyncio.gather(
                scan_once(world.deps, WARN), scan_once(other, WARN), scan_once(world.deps, WARN)
            )
            emitted = a + b + c
            assert all(isinstance(e, kind) for e in emitted)
            assert sorted(e.number for e in emitted) == sorted(numbers)  # each exactly once
            assert await scan_once(other, WARN) == []
    finally:
        await other.db.dispose()


async def test_after_dispatch_the_feedback_deadline_is_watched(world: World) -> None:
    n = await _emergency(world)
    world.clock.set(T0 + timedelta(minutes=30))
    v = await world.move(n, "dispatch", AGENT)
    assert v["lead_department"] == "gas"
    feedback_due = _z(T0 + timedelta(minutes=150))
    assert v["deadlines"]["feedback_due_at"] == feedback_due
    # the dispatch deadline passes unnoticed: the ticket was dispatched in time
    assert await _scan_at(world, 61) == []
    assert await _scan_at(world, 100) == []  # 70 of 120 minutes
    assert await _scan_at(world, 120) == [DeadlineWarning(n, "feedback", feedback_due)]
    await world.move(n, "sign", GAS)
    assert await _scan_at(world, 121) == []  # signing does not reset the warning
    assert await _scan_at(world, 151) == [DeadlineBreached(n, "feedback", feedback_due)]
    assert await _scan_at(world, 152) == []
    # once replied, no deadline is watched
    await world.move(n, "reply", GAS, reply="已关阀处置")
    assert await _scan_at(world, 6000) == []
    row = await world.row(n)
    assert row.dispatch_warned_at is None and row.dispatch_breached_at is None


async def test_granted_extension_rearms_the_feedback_warning(world: World) -> None:
    n = await _emergency(world)
    await world.move(n, "dispatch", AGENT)
    await world.move(n, "sign", GAS)
    first_due = _z(T0 + timedelta(hours=2))
    assert await _scan_at(world, 95) == [DeadlineWarning(n, "feedback", first_due)]

    world.clock.set(T0 + timedelta(minutes=96))
    await world.move(n, "request_extension", GAS, extra="2h", reason="需更换管段")
    assert await _scan_at(world, 97) == []  # still the same warning while it is decided
    world.clock.set(T0 + timedelta(minutes=98))
    v = await world.move(n, "grant_extension", SUPERVISOR)
    new_due = _z(T0 + timedelta(hours=4))
    assert v["deadlines"]["feedback_due_at"] == new_due
    assert (await world.row(n)).feedback_warned_at is None

    assert await _scan_at(world, 99) == []  # 99 of 240 minutes: no warning yet
    assert await _scan_at(world, 180) == [DeadlineWarning(n, "feedback", new_due)]
    assert await _scan_at(world, 200) == []
    assert await _scan_at(world, 241) == [DeadlineBreached(n, "feedback", new_due)]
    # a breached deadline extended after the fact can breach again, once
    await world.move(n, "request_extension", GAS, extra="1h", reason="仍在抢修")
    world.clock.set(T0 + timedelta(minutes=242))
    await world.move(n, "grant_extension", SUPERVISOR)
    assert await _scan_at(world, 243) == [
        DeadlineWarning(n, "feedback", _z(T0 + timedelta(hours=5)))
    ]
    assert await _scan_at(world, 301) == [
        DeadlineBreached(n, "feedback", _z(T0 + timedelta(hours=5)))
    ]
    assert await _scan_at(world, 302) == []


async def test_refused_extension_keeps_the_deadline(world: World) -> None:
    n = await _emergency(world)
    await world.move(n, "dispatch", AGENT)
    await world.move(n, "sign", GAS)
    assert await _scan_at(world, 95) == [
        DeadlineWarning(n, "feedback", _z(T0 + timedelta(hours=2)))
    ]
    await world.move(n, "request_extension", GAS, extra="2h", reason="需更换管段")
    await world.move(n, "refuse_extension", SUPERVISOR, note="请按时办结")
    assert await _scan_at(world, 100) == []
    assert await _scan_at(world, 121) == [
        DeadlineBreached(n, "feedback", _z(T0 + timedelta(hours=2)))
    ]


async def test_reopened_ticket_gets_a_fresh_dispatch_window(world: World) -> None:
    n = (await world.create())["number"]  # normal: dispatch within 24 h
    await world.move(n, "dispatch", AGENT)
    await world.move(n, "sign", URBAN)
    world.clock.set(T0 + timedelta(days=9))
    await world.move(n, "reply", URBAN, reply="已修复")
    world.clock.set(T0 + timedelta(days=10))
    v = await world.move(n, "follow_up", AGENT, satisfaction="unsatisfied")
    due = T0 + timedelta(days=11)
    assert v["deadlines"]["dispatch_due_at"] == _z(due)
    # 0 of 24 hours used: nothing to warn about yet (it used to warn here at once)
    assert await scan_once(world.deps, WARN) == []
    # a later trail entry that is not a reopen does not move the window
    world.clock.set(T0 + timedelta(days=10, hours=1))
    await h.reveal_contact(world.deps, n, SUPERVISOR, "回访核实")
    assert await _scan_at(world, 60 * 24 * 10 + 17 * 60) == []  # 17 of 24 hours
    assert await _scan_at(world, 60 * 24 * 10 + 18 * 60) == [
        DeadlineWarning(n, "dispatch", _z(due))
    ]
    assert await _scan_at(world, 60 * 24 * 11 + 1) == [DeadlineBreached(n, "dispatch", _z(due))]

    # a ticket never reopened still counts from its creation
    m = (await world.create())["number"]  # created at T0 + 11 d + 1 min
    created = world.clock.now
    world.clock.set(created + timedelta(hours=17, minutes=59))
    assert await scan_once(world.deps, WARN) == []
    world.clock.set(created + timedelta(hours=18))
    assert await scan_once(world.deps, WARN) == [
        DeadlineWarning(m, "dispatch", _z(created + timedelta(hours=24)))
    ]


async def test_an_extension_between_scan_and_mark_is_not_warned_about(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan reads, then marks: an extension granted in between must win."""
    n = await _emergency(world)
    await world.move(n, "dispatch", AGENT)
    await world.move(n, "sign", GAS)
    world.clock.set(T0 + timedelta(minutes=90))
    await world.move(n, "request_extension", GAS, extra="2h", reason="需更换管段")

    real_mark = deadline_watcher._mark
    interleaved: list[dict[str, Any]] = []

    async def mark_after_a_grant(*args: Any, **kw: Any) -> bool:
        if not interleaved:  # the supervisor clicks "grant" just after the scan's read
            interleaved.append(await world.move(n, "grant_extension", SUPERVISOR))
        return await real_mark(*args, **kw)

    monkeypatch.setattr(deadline_watcher, "_mark", mark_after_a_grant)
    world.clock.set(T0 + timedelta(minutes=100))  # 100 of 120: warn on the old deadline
    assert await scan_once(world.deps, WARN) == []  # but the deadline is now 240 minutes
    assert interleaved and interleaved[0]["deadlines"]["feedback_due_at"] == _z(
        T0 + timedelta(hours=4)
    )
    monkeypatch.setattr(deadline_watcher, "_mark", real_mark)
    assert await _scan_at(world, 180) == [
        DeadlineWarning(n, "feedback", _z(T0 + timedelta(hours=4)))
    ]


async def test_a_dispatch_between_scan_and_mark_is_not_warned_about(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = await _emergency(world)
    real_mark = deadline_watcher._mark
    interleaved: list[dict[str, Any]] = []

    async def mark_after_a_dispatch(*args: Any, **kw: Any) -> bool:
        if not interleaved:
            interleaved.append(await world.move(n, "dispatch", AGENT))
        return await real_mark(*args, **kw)

    monkeypatch.setattr(deadline_watcher, "_mark", mark_after_a_dispatch)
    world.clock.set(T0 + timedelta(minutes=59))
    events = await scan_once(world.deps, WARN)
    assert interleaved
    # dispatched at 59 min, within the hour: no dispatch warning for a dispatched ticket
    assert events == []
    assert (await world.row(n)).dispatch_warned_at is None
