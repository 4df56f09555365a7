"""Calls go on while the database is out of reach, and their steps are written after.

The phone network does not stop because our store did: a caller is queued, rung,
answered, transferred and hung up with the database away, and once it is back the
call's row, trail and queue item are what they would have been had it never left
(hotline.calls.store._CallWriter). Each test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from hotline.acd.domain import AgentState
from hotline.calls import store
from tests.hotline.acd.acd_rig import Rig, eventually, make_rig, store_down, store_up
from ticketing import workqueue

FIRST = "+8613800000001"


def _fast_retry(deps: Any) -> None:
    store._writer(deps).retry_s = (0.01, 0.05)


async def _row(deps: Any, uuid: str) -> dict[str, Any] | None:
    async with deps.db.read() as conn:
        row = (
            await conn.execute(sa.select(store.call_t).where(store.call_t.c.uuid == uuid))
        ).first()
    return dict(row._mapping) if row else None


async def _trail(deps: Any, uuid: str) -> list[dict[str, Any]]:
    async with deps.db.read() as conn:
        rows = await conn.execute(
            sa.select(store.call_event_t)
            .where(store.call_event_t.c.call_uuid == uuid)
            .order_by(store.call_event_t.c.id)
        )
        return [dict(r._mapping) for r in rows]


async def _items(deps: Any) -> dict[str, dict[str, Any]]:
    async with deps.db.read() as conn:
        rows = await conn.execute(
            sa.select(store.work_item).where(store.work_item.c.kind == workqueue.CALL)
        )
        return {r.ref: dict(r._mapping) for r in rows}


# ---------------------------------------------------------------- the ACD through an outage

_TIMES = ("entered_at", "answered_at", "ended_at", "wait_s", "talk_s")


async def _as_written(deps: Any, uuid: str) -> tuple[dict[str, Any], list[Any], Any]:
    """The call's row, trail and queue item, without what differs between two calls
    made one after the other (ids, the caller, times: only whether they are set)."""
    row = await _row(deps, uuid)
    assert row is not None, uuid
    for k in ("id", "uuid", "caller_enc", "caller_bidx", "caller_masked"):
        row.pop(k)
    for k in _TIMES:
        row[k] = row[k] is not None
    trail = [
        (e["kind"], e["actor"], {k: v for k, v in e["data"].items() if k != "wait_s"})
        for e in await _trail(deps, uuid)
    ]
    item = (await _items(deps)).get(uuid)
    if item is not None:
        item = {
            "waits_for": item["due_at"] - item["created_at"],
            **{k: item[k] for k in ("audience", "action", "priority", "claimed_by")},
        }
    return row, trail, item


async def _served(rig: Rig, caller: str) -> str:
    """A caller answered by li, blind-transferred to extension 1002, who hangs up."""
    uuid, task = rig.call(caller)
    await eventually(
        lambda: uuid in rig.acd.calls and rig.acd.calls[uuid].agent == "li", what="answered"
    )
    await rig.acd.transfer_blind(uuid, "li", "1002")
    await eventually(
        lambda: rig.acd.calls[uuid].state == "talking" and rig.switch.leg_of("user/1002"),
        what="transferred",
    )
    leg = rig.switch.leg_of("user/1002")
    assert leg is not None
    await rig.switch.hangup(leg)
    assert await asyncio.wait_for(task, 5) == "completed"
    await eventually(lambda: rig.acd.acd.agents["li"].state is AgentState.AVAILABLE)
    return uuid


async def _waiting(rig: Rig, caller: str) -> tuple[str, asyncio.Task[str]]:
    uuid, task = rig.call(caller)
    await eventually(lambda: uuid in rig.acd.acd.queue, what="the caller in line")
    return uuid, task


async def test_a_call_served_while_the_store_is_down_is_written_as_if_it_was_up(
    tmp_path: Path, db_url: str, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="hotline.calls.store")
    async with make_rig(tmp_path, db_url) as rig:
        _fast_retry(rig.deps)
        rig.switch.phone("user/1001")
        rig.switch.phone("user/1002")
        await rig.acd.login("li", "1001")
        live = await _served(rig, FIRST)

        store_down(rig.deps)
        # queued, rung, answered, transferred, hung up: the call task ends as usual
        # and the agent goes through wrap-up back to available
        away = await _served(rig, "+8613800000002")
        await rig.acd.set_state("li", "break", None)
        waited_away, t1 = await _waiting(rig, "+8613800000003")
        assert store.deferred_call_steps(rig.deps) > 0
        assert rig.acd.metrics is not None
        gauge = rig.acd.metrics.registry.get_sample_value("hotline_call_steps_deferred")
        assert gauge == store.deferred_call_steps(rig.deps)
        assert any("cannot be written" in r.getMessage() for r in caplog.records)

        store_up(rig.deps)
        # the writer's own retry finds the database back: nobody has to ask
        await eventually(lambda: store.deferred_call_steps(rig.deps) == 0, what="the drain")
        assert any("the database is back" in r.getMessage() for r in caplog.records)
        assert rig.acd.metrics.registry.get_sample_value("hotline_call_steps_deferred") == 0
        waited_live, t2 = await _waiting(rig, "+8613800000004")

        assert await _as_written(rig.deps, away) == await _as_written(rig.deps, live)
        row, trail, item = await _as_written(rig.deps, away)
        assert (row["state"], row["agent"], row["hangup_cause"]) == (
            "ended",
            None,
            "NORMAL_CLEARING",
        )
        assert [k for k, _, _ in trail] == [
            "queued", "offered", "answered", "agent_left", "transferred", "ended",
        ]  # fmt: skip
        assert item is None
        assert await _as_written(rig.deps, waited_away) == await _as_written(rig.deps, waited_live)
        assert set(await _items(rig.deps)) == {waited_away, waited_live}
        for task in (t1, t2):
            task.cancel()
        await asyncio.gather(t1, t2, return_exceptions=True)


async def test_the_stop_says_how_many_steps_the_database_never_got(
    tmp_path: Path, db_url: str, caplog: Any
) -> None:
    async with make_rig(tmp_path, db_url) as rig:
        store_down(rig.deps)
        uuid, task = await _waiting(rig, FIRST)
        await rig.switch.hangup(uuid)
        assert await asyncio.wait_for(task, 5) == "abandoned"
        assert store.deferred_call_steps(rig.deps) == 2  # queued, abandoned
        await asyncio.wait_for(rig.acd.stop(), 5)
        assert any(
            r.levelno == logging.ERROR and "2 call steps could not be written" in r.getMessage()
            for r in caplog.records
        )
        assert store.deferred_call_steps(rig.deps) == 0
        store_up(rig.deps)
        assert await _row(rig.deps, uuid) is None


# ---------------------------------------------------------------- the writer's backlog

Step = Callable[[], Awaitable[Any]]


def _two_calls(deps: Any, a: str, b: str, now: datetime) -> list[Step]:
    """Two calls' steps interleaved, one of them out of line and back (its queue item
    goes and comes back), the other abandoned, a survey answered twice."""
    due = now + timedelta(seconds=15)
    again = now + timedelta(seconds=40)
    return [
        lambda: store.insert_call(deps, a, FIRST, 2, "queued", now, work_due=due, instance_id="i"),
        lambda: store.insert_call(deps, b, FIRST, 1, "queued", now, work_due=due),
        lambda: store.update_call(deps, a, now, event="offered", state="ringing"),
        lambda: store.update_call(deps, b, now, event="offered", state="ringing"),
        lambda: store.update_call(
            deps,
            a,
            now,
            event="answered",
            actor="li",
            leave_queue=True,
            state="talking",
            agent="li",
            answered_at=now,
            wait_s=3.0,
        ),
        lambda: store.update_call(deps, b, now, event="ring_failed", state="queued"),
        lambda: store.update_call(
            deps,
            a,
            again,
            event="requeued",
            state="queued",
            agent=None,
            item=store.queue_item(a, 1, again + timedelta(seconds=15), again),
        ),
        lambda: store.update_call(
            deps,
            b,
            again,
            event="abandoned",
            leave_queue=True,
            state="abandoned",
            ended_at=again,
            wait_s=40.0,
            hangup_cause="ORIGINATOR_CANCEL",
        ),
        lambda: store.record_survey(deps, b, again, {"score": 5}),
        lambda: store.record_survey(deps, b, again, {"score": 1}),
        lambda: store.update_call(deps, a, again, event="offered", state="ringing"),
    ]


async def _written(deps: Any, uuid: str) -> tuple[Any, ...]:
    row = await _row(deps, uuid)
    assert row is not None
    for k in ("id", "uuid", "caller_enc"):  # (encrypted with a fresh nonce each time)
        row.pop(k)
    trail = [
        # step_key: each step's own random key (what makes a retried step idempotent)
        {k: v for k, v in e.items() if k not in ("id", "call_uuid", "step_key")}
        for e in await _trail(deps, uuid)
    ]
    item = (await _items(deps)).get(uuid)
    if item is not None:
        item.pop("id")
        item.pop("ref")
    return row, trail, item


async def test_interleaved_steps_of_two_calls_are_written_in_order_when_the_store_is_back(
    deps: Any,
) -> None:
    now = deps.clock()
    for step in _two_calls(deps, "live-a", "live-b", now):
        await step()
    store_down(deps)
    for step in _two_calls(deps, "away-a", "away-b", now):
        await asyncio.wait_for(step(), 1)  # deferred at once: nobody waits on the outage
    assert store.deferred_call_steps(deps) == 11
    store_up(deps)
    assert await store.flush_call_writes(deps) == 0
    for live, away in (("live-a", "away-a"), ("live-b", "away-b")):
        assert await _written(deps, away) == await _written(deps, live)
    row, trail, item = await _written(deps, "away-a")
    assert (row["state"], row["agent"], row["priority"]) == ("ringing", None, 2)
    assert [e["kind"] for e in trail] == ["queued", "offered", "answered", "requeued", "offered"]
    assert item is not None and item["created_at"] == item["due_at"] - timedelta(seconds=15)
    _, trail, item = await _written(deps, "away-b")
    assert [e["kind"] for e in trail][-2:] == ["abandoned", "survey"]  # the first answer, once
    assert trail[-1]["data"] == {"score": 5} and item is None


async def test_a_drained_backlog_costs_a_few_statements_not_one_per_step(deps: Any) -> None:
    now = deps.clock()
    store_down(deps)
    for i in range(40):
        for step in _two_calls(deps, f"a{i}", f"b{i}", now):
            await step()
    assert store.deferred_call_steps(deps) == 40 * 11
    store_up(deps)
    statements: list[str] = []
    engine = deps.db.engine.sync_engine

    def count(_conn: Any, _cur: Any, statement: str, *_a: Any) -> None:
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        assert await store.flush_call_writes(deps) == 0
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert len(statements) <= 15, statements
    assert len(await _trail(deps, "a39")) == 5
    assert set(await _items(deps)) == {f"a{i}" for i in range(40)}


async def test_the_backlog_is_bounded_and_drops_its_oldest_steps_loudly(
    deps: Any, caplog: Any
) -> None:
    now = deps.clock()
    await store.insert_call(deps, "c1", FIRST, 2, "queued", now)
    store._writer(deps).max_deferred = 5
    store_down(deps)
    for i in range(8):
        await asyncio.wait_for(store.update_call(deps, "c1", now, event=f"e{i}", wait_s=i), 1)
    assert store.deferred_call_steps(deps) == 5
    dropped = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(dropped) == 3
    assert all("dropped" in m and "of call c1" in m for m in dropped)
    assert [m.split()[2] for m in dropped] == ["e0", "e1", "e2"]
    store_up(deps)
    assert await store.flush_call_writes(deps) == 0
    assert [e["kind"] for e in await _trail(deps, "c1")] == ["queued", "e3", "e4", "e5", "e6", "e7"]
    row = await _row(deps, "c1")
    assert row is not None and row["wait_s"] == 7.0
