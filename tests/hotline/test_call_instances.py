"""Calls belong to the service instance that holds them (hotline.calls.instances).

Several instances share one database in production. An instance starting, beating
or stopping must close only the calls nobody holds any more (their instance stopped,
went silent, or predates instances) and never another live instance's calls or
queue items. Each test runs on SQLite and on PostgreSQL, with real instances (ACD
services on the in-memory switch) where the service's behaviour is the point.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry

import ivr
from hotline.acd.memory_switch import MemorySwitch
from hotline.acd.service import AcdConfig, AcdService
from hotline.bootstrap import build_deps
from hotline.calls import instances, store
from hotline.phone.services import VoicemailBox
from tests.conftest import make_settings
from tests.hotline.acd.acd_rig import FAST, Rig, eventually, make_rig
from ticketing import workqueue
from ticketing.store import StoreUnavailable

CALLER = "+8613800138000"


async def _call(deps: Any, uuid: str) -> dict[str, Any]:
    async with deps.db.read() as conn:
        row = (await conn.execute(sa.select(store.call_t).where(store.call_t.c.uuid == uuid))).one()
    return dict(row._mapping)


async def _queued_refs(deps: Any) -> set[str]:
    """The calls' items in the agents' work queue."""
    async with deps.db.read() as conn:
        refs = await conn.execute(
            sa.select(store.work_item.c.ref).where(store.work_item.c.kind == workqueue.CALL)
        )
        return set(refs.scalars())


async def _owned_call(
    deps: Any, uuid: str, owner: instances.Instance | None, now: datetime, state: str = "queued"
) -> None:
    """A waiting call as an instance writes it (`owner` None: a row from before 0010)."""
    await store.insert_call(
        deps, uuid, CALLER, 2, "queued", now, instance_id=owner.id if owner else None
    )
    if state != "queued":
        await store.update_call(
            deps, uuid, now, event=state, leave_queue=state == "ended", state=state
        )


async def _until(cond: Callable[[], Any], limit_s: float = 5.0) -> None:
    """Poll an async condition (a heartbeat's effect, read from the database)."""
    deadline = asyncio.get_running_loop().time() + limit_s
    while not await cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {cond}")
        await asyncio.sleep(0.02)


async def _queued_call(rig: Rig) -> tuple[str, asyncio.Task[str]]:
    uuid, task = rig.call()
    await eventually(lambda: rig.named("call.queued"), what="the call queued")
    return uuid, task


async def _hang_up(task: asyncio.Task[str]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


# ---------------------------------------------------------------- (a) start: others' calls


async def test_a_second_instance_starting_leaves_the_first_ones_call_alone(
    tmp_path: Path, db_url: str
) -> None:
    async with make_rig(tmp_path, db_url) as first:
        uuid, task = await _queued_call(first)
        row = await _call(first.deps, uuid)
        assert (row["state"], row["instance_id"]) == ("queued", first.acd.instance_id)
        async with make_rig(tmp_path, db_url) as second:
            assert second.acd.instance_id != first.acd.instance_id
            assert await second.acd.heartbeat() == 0
            row = await _call(second.deps, uuid)
            assert (row["state"], row["ended_at"], row["hangup_cause"]) == ("queued", None, None)
            assert await _queued_refs(second.deps) == {uuid}
        await _hang_up(task)


# ---------------------------------------------------------------- (b) stopped or silent owners


async def test_calls_of_a_stopped_or_silent_instance_are_lost_and_only_theirs(
    tmp_path: Path, db_url: str, deps: Any
) -> None:
    now = deps.clock()
    stopped, silent, alive = instances.Instance(), instances.Instance(), instances.Instance()
    await instances.register(deps, stopped, now - timedelta(minutes=5))
    await instances.mark_stopped(deps, stopped, now - timedelta(seconds=1))
    await instances.register(deps, silent, now - timedelta(minutes=2))  # never beat since
    await instances.register(deps, alive, now)
    await _owned_call(deps, "s-queued", stopped, now)
    await _owned_call(deps, "s-talking", stopped, now, "talking")
    await _owned_call(deps, "s-ended", stopped, now, "ended")  # over before the stop
    await _owned_call(deps, "q-ringing", silent, now, "ringing")
    await _owned_call(deps, "a-queued", alive, now)
    await _owned_call(deps, "a-held", alive, now, "held")

    async with make_rig(tmp_path, db_url) as rig:
        for uuid in ("s-queued", "s-talking", "q-ringing"):
            row = await _call(rig.deps, uuid)
            assert (row["state"], row["hangup_cause"]) == ("lost", "SERVICE_RESTART"), uuid
            assert row["ended_at"] is not None
        assert (await _call(rig.deps, "s-ended"))["state"] == "ended"
        for uuid, state in (("a-queued", "queued"), ("a-held", "held")):
            row = await _call(rig.deps, uuid)
            assert (row["state"], row["ended_at"], row["hangup_cause"]) == (state, None, None)
        # only the lost calls' queue items are gone
        assert await _queued_refs(rig.deps) == {"a-queued", "a-held"}


async def test_two_instances_sweeping_at_once_close_each_orphan_once(
    tmp_path: Path, db_url: str, deps: Any
) -> None:
    """On PostgreSQL the sweeps really race: every orphan is closed, by one of them."""
    now = deps.clock()
    dead = instances.Instance()
    await instances.register(deps, dead, now - timedelta(minutes=5))
    orphans = {f"o{i}" for i in range(30)}
    for uuid in sorted(orphans):
        await _owned_call(deps, uuid, dead, now)
    other = build_deps(make_settings(tmp_path, db_url))
    try:
        first, second = await asyncio.gather(
            instances.close_orphaned_calls(deps, "me-1", now, 30, include_unowned=False),
            instances.close_orphaned_calls(other, "me-2", now, 30, include_unowned=False),
        )
    finally:
        await other.db.dispose()
    assert set(first) | set(second) == orphans
    assert len(first) + len(second) == len(orphans)
    assert await _queued_refs(deps) == set()


# ---------------------------------------------------------------- (c) rows from before 0010


async def test_calls_without_an_instance_are_closed_at_start_only(
    tmp_path: Path, db_url: str, deps: Any
) -> None:
    now = deps.clock()
    alive = instances.Instance()
    await instances.register(deps, alive, now)
    await _owned_call(deps, "before", None, now)
    await _owned_call(deps, "before-talking", None, now, "talking")
    await _owned_call(deps, "a-queued", alive, now)

    async with make_rig(tmp_path, db_url) as rig:
        for uuid in ("before", "before-talking"):
            row = await _call(rig.deps, uuid)
            assert (row["state"], row["hangup_cause"]) == ("lost", "SERVICE_RESTART"), uuid
        assert (await _call(rig.deps, "a-queued"))["state"] == "queued"
        assert await _queued_refs(rig.deps) == {"a-queued"}
        # an instance of the previous release, still running beside this one during a
        # rolling upgrade, writes no instance: the heartbeat leaves its calls alone
        await _owned_call(deps, "old-release", None, deps.clock())
        assert await rig.acd.heartbeat() == 0
        assert (await _call(rig.deps, "old-release"))["state"] == "queued"
        assert await _queued_refs(rig.deps) == {"a-queued", "old-release"}


# ---------------------------------------------------------------- (d) the heartbeat


async def test_the_heartbeat_closes_a_silent_instances_calls_while_this_one_runs(
    tmp_path: Path, db_url: str, deps: Any
) -> None:
    async with make_rig(tmp_path, db_url, heartbeat_s=0.05, instance_stale_s=0.5) as rig:
        mine, task = await _queued_call(rig)
        started = await instances.get_instance(deps, rig.acd.instance_id)
        assert started is not None
        crashed = instances.Instance()
        await instances.register(deps, crashed, deps.clock())  # and never beats again
        await _owned_call(deps, "theirs", crashed, deps.clock(), "talking")
        await _owned_call(deps, "theirs-queued", crashed, deps.clock())

        async def closed() -> bool:
            return (await _call(deps, "theirs"))["state"] == "lost"

        await _until(closed)
        seen = (await instances.get_instance(deps, crashed.id) or {})["seen_at"]
        for uuid in ("theirs", "theirs-queued"):
            row = await _call(deps, uuid)
            assert (row["state"], row["hangup_cause"]) == ("lost", "SERVICE_RESTART")
            # not before the crashed instance had been silent for the stale threshold
            assert row["ended_at"] - seen >= timedelta(seconds=0.5)
        # this instance beats on, its call and queue item untouched
        now = await instances.get_instance(deps, rig.acd.instance_id)
        assert now is not None and now["seen_at"] > started["seen_at"]
        assert (await _call(deps, mine))["state"] == "queued"
        assert await _queued_refs(deps) == {mine}
        await _hang_up(task)


async def test_a_silent_instance_is_stale_only_after_the_threshold_by_the_deps_clock(
    tmp_path: Path, db_url: str, deps: Any
) -> None:
    async with make_rig(tmp_path, db_url) as rig:  # beats every 5 s: not during this test
        t0 = deps.clock()
        crashed = instances.Instance()
        await instances.register(deps, crashed, t0)
        await _owned_call(deps, "theirs", crashed, t0)
        rig.deps.clock = lambda: t0 + timedelta(seconds=29)
        assert await rig.acd.heartbeat() == 0
        assert (await _call(deps, "theirs"))["state"] == "queued"
        rig.deps.clock = lambda: t0 + timedelta(seconds=31)
        assert await rig.acd.heartbeat() == 1
        row = await _call(deps, "theirs")
        assert (row["state"], row["ended_at"]) == ("lost", t0 + timedelta(seconds=31))
        assert await _queued_refs(deps) == set()
        me = await instances.get_instance(deps, rig.acd.instance_id)
        assert me is not None and me["seen_at"] == t0 + timedelta(seconds=31)


# ---------------------------------------------------------------- (e) graceful stop


async def test_a_graceful_stop_is_recorded_and_its_leftovers_close_at_once(
    tmp_path: Path, db_url: str
) -> None:
    # the other instance beats often but waits 30 s before presuming anybody dead
    async with make_rig(tmp_path, db_url, heartbeat_s=0.05) as other:
        async with make_rig(tmp_path, db_url) as rig:
            row = await instances.get_instance(rig.deps, rig.acd.instance_id)
            assert row is not None
            assert (row["host"], row["pid"], row["stopped_at"]) == (
                rig.acd.instance.host,
                os.getpid(),
                None,
            )
            assert row["started_at"] == row["seen_at"]
            uuid, task = await _queued_call(rig)
            await _hang_up(task)  # the service stops with the caller still in line
        row = await instances.get_instance(other.deps, rig.acd.instance_id)
        assert row is not None and row["stopped_at"] is not None
        assert row["stopped_at"] >= row["started_at"]

        async def closed() -> bool:
            return (await _call(other.deps, uuid))["state"] == "lost"

        await _until(closed, limit_s=5.0)  # well within the 30 s a crash would take
        assert await _queued_refs(other.deps) == set()


# ---------------------------------------------------------------- who writes the instance


async def test_a_call_retried_on_another_instance_is_taken_over(deps: Any) -> None:
    """FreeSWITCH retries the socket elsewhere when an instance died holding the call:
    the row stays one row, now held by the instance that has the socket."""
    now = deps.clock()
    await store.insert_call(deps, "r1", CALLER, 2, "queued", now, instance_id="inst-a")
    await store.insert_call(deps, "r1", CALLER, 2, "queued", now, instance_id="inst-b")
    assert (await _call(deps, "r1"))["instance_id"] == "inst-b"
    await store.insert_call(deps, "r1", CALLER, 2, "queued", now)  # no instance: kept
    row = await _call(deps, "r1")
    assert (row["instance_id"], row["state"]) == ("inst-b", "queued")
    # steps with and without an instance group-committed in one batch
    await asyncio.gather(
        *(
            store.insert_call(deps, f"g{i}", CALLER, 2, "queued", now, instance_id=f"i{i % 2}")
            if i % 3
            else store.insert_call(deps, f"g{i}", CALLER, 2, "queued", now)
            for i in range(12)
        )
    )
    for i in range(12):
        assert (await _call(deps, f"g{i}"))["instance_id"] == (f"i{i % 2}" if i % 3 else None)


async def test_a_voicemail_names_the_instance_that_took_it(deps: Any, tmp_path: Path) -> None:
    box = VoicemailBox(deps, tmp_path / "voicemail", 3600, instance_id="inst-vm")
    path = await box.voicemail_path("vm1")
    await box.voicemail_recorded(ivr.VoicemailMessage("vm1", CALLER, path, 12.0, "zh"))
    row = await _call(deps, "vm1")
    assert (row["state"], row["instance_id"]) == ("voicemail", "inst-vm")


async def test_rows_of_instances_gone_for_a_week_are_pruned(deps: Any) -> None:
    now = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    old, recent = instances.Instance(), instances.Instance()
    await instances.register(deps, old, now - timedelta(days=8))
    await instances.register(deps, recent, now - timedelta(days=6))
    assert await instances.prune(deps, now) == 1
    assert await instances.get_instance(deps, old.id) is None
    assert await instances.get_instance(deps, recent.id) is not None


# ---------------------------------------------------------------- (f) clocks that disagree


async def test_a_host_whose_clock_runs_slow_keeps_its_calls(
    tmp_path: Path, pg_url: str, caplog: Any
) -> None:
    """Production: several hosts on one PostgreSQL. A host 2 minutes slow would write
    heartbeats that look 2 minutes old to the others, who would close its callers'
    calls; it states its times on the database's clock instead, and says so."""
    slow_dir = tmp_path / "slow"
    slow_dir.mkdir()
    slow = build_deps(make_settings(slow_dir, pg_url))
    await slow.db.create_all()
    await slow.bus.start()
    real = slow.clock
    slow.clock = lambda: real() - timedelta(minutes=2)
    acd = AcdService(slow, MemorySwitch(), AcdConfig(rules=FAST), registry=CollectorRegistry())
    caplog.set_level(logging.WARNING, logger="hotline.calls.instances")
    await acd.start()
    try:
        assert any("behind the database" in r.getMessage() for r in caplog.records)
        seen = (await instances.get_instance(slow, acd.instance_id) or {})["seen_at"]
        assert abs(seen - datetime.now(UTC)) < timedelta(seconds=5)  # the database's time
        await _owned_call(slow, "slow-host-call", acd.instance, slow.clock())
        async with make_rig(tmp_path, pg_url) as other:  # a host with the right time
            assert await other.acd.heartbeat() == 0
            await acd.heartbeat()
            assert await other.acd.heartbeat() == 0
            assert (await _call(other.deps, "slow-host-call"))["state"] == "queued"
    finally:
        await acd.stop()
        await slow.bus.stop()
        await slow.db.dispose()


async def test_a_small_clock_difference_is_left_alone(tmp_path: Path, db_url: str) -> None:
    """Within the tolerance (and on SQLite, one host) the host's own clock is used as is:
    the deps clock stays the one tests and the deadline logic move."""
    deps = build_deps(make_settings(tmp_path, db_url))
    try:
        assert await instances.clock_offset(deps) == timedelta(0)
        real = deps.clock
        deps.clock = lambda: real() + timedelta(seconds=1)
        assert await instances.clock_offset(deps) == timedelta(0)
        deps.clock = lambda: real() + timedelta(seconds=10)
        expected = timedelta(0) if deps.db.is_sqlite else timedelta(seconds=-10)
        offset = await instances.clock_offset(deps)
        assert abs(offset - expected) < timedelta(seconds=1)
    finally:
        await deps.db.dispose()


# ---------------------------------------------------------------- (g) this instance cut off


async def _sweep_as_if_silent(rig: Rig) -> list[str]:
    """Another instance's sweep while this one could not reach the database: to the
    others it has been silent for minutes (its socket, and its callers, are fine)."""
    later = rig.deps.clock() + timedelta(minutes=5)
    return await instances.close_orphaned_calls(
        rig.deps, "another-instance", later, 30, include_unowned=False
    )


async def _kinds(deps: Any, uuid: str) -> list[str]:
    row = await store.get_call(deps, uuid)
    assert row is not None
    return [e["kind"] for e in row["events"]]


async def test_calls_lost_while_this_instance_was_cut_off_are_taken_back_at_its_next_beat(
    tmp_path: Path, db_url: str, caplog: Any
) -> None:
    async with make_rig(tmp_path, db_url) as rig:  # beats every 5 s: not during this test
        rig.switch.phone("user/1001")
        await rig.acd.login("li", "1001")
        talking, t1 = rig.call("+8613800000001")
        await eventually(lambda: rig.named("call.answered"), what="the first call answered")
        waiting, t2 = rig.call("+8613800000002")
        await eventually(lambda: waiting in rig.acd.acd.queue, what="the second call queued")
        # a call that ended here while the database was away (its end step never written)
        await _owned_call(rig.deps, "ended-here", rig.acd.instance, rig.deps.clock())
        await _owned_call(rig.deps, "theirs", instances.Instance(), rig.deps.clock())
        assert await _queued_refs(rig.deps) == {waiting, "ended-here", "theirs"}

        swept = await _sweep_as_if_silent(rig)
        assert set(swept) == {talking, waiting, "ended-here", "theirs"}
        assert await _queued_refs(rig.deps) == set()

        caplog.set_level(logging.WARNING, logger="hotline.acd.service")
        assert await rig.acd.heartbeat() == 0
        for uuid, state in ((waiting, "queued"), (talking, "talking")):
            row = await _call(rig.deps, uuid)
            assert (row["state"], row["ended_at"], row["hangup_cause"]) == (state, None, None)
            assert (await _kinds(rig.deps, uuid))[-1] == "reclaimed"
        assert (await _call(rig.deps, talking))["agent"] == "li"
        # only the waiting caller is back in the agents' work queue, as it was
        assert await _queued_refs(rig.deps) == {waiting}
        async with rig.deps.db.read() as conn:
            items = await workqueue.list_items(conn, [workqueue.AGENTS])
        assert [(i["ref"], i["action"], i["claimed_by"]) for i in items] == [
            (waiting, "answer", "acd")
        ]
        for uuid in ("ended-here", "theirs"):
            row = await _call(rig.deps, uuid)
            assert (row["state"], row["hangup_cause"]) == ("lost", "SERVICE_RESTART"), uuid
        assert any(
            r.levelno == logging.WARNING and "taken back" in r.getMessage() for r in caplog.records
        )
        # taken back once: the next beat finds nothing to do
        assert await rig.acd.heartbeat() == 0
        assert (await _kinds(rig.deps, waiting)).count("reclaimed") == 1

        # the ACD's own steps go on: the first call ends, the second is answered
        leg = rig.switch.leg_of("user/1001")
        assert leg is not None
        await rig.switch.hangup(leg)
        assert await asyncio.wait_for(t1, 2) == "completed"
        row = await _call(rig.deps, talking)
        assert (row["state"], row["hangup_cause"]) == ("ended", "NORMAL_CLEARING")

        async def answered() -> bool:
            return (await _call(rig.deps, waiting))["state"] == "talking"

        await _until(answered)
        assert await _queued_refs(rig.deps) == set()
        await rig.switch.hangup(waiting)
        assert await asyncio.wait_for(t2, 2) == "completed"
        # and a call that really ended stays ended
        assert await rig.acd.heartbeat() == 0
        for uuid in (talking, waiting):
            assert (await _call(rig.deps, uuid))["state"] == "ended"
        assert await _queued_refs(rig.deps) == set()


async def test_consoles_hear_of_calls_swept_and_taken_back(tmp_path: Path, db_url: str) -> None:
    """A sweep removes queue items and a reclaim puts them back outside the ACD's own
    steps: each announces the items, so consoles drop a ghost call (or show a caller
    again) at once instead of at their next full re-read."""
    async with make_rig(tmp_path, db_url) as rig:
        crashed = instances.Instance()
        await instances.register(rig.deps, crashed, rig.deps.clock() - timedelta(minutes=5))
        await _owned_call(rig.deps, "ghost", crashed, rig.deps.clock() - timedelta(minutes=5))

        def changed() -> set[str]:
            return {
                e.ref  # type: ignore[attr-defined]
                for e in rig.named("work_item.changed")
                if e.kind == workqueue.CALL  # type: ignore[attr-defined]
            }

        assert await rig.acd.heartbeat() == 1
        await eventually(lambda: "ghost" in changed(), what="the swept call announced")

        waiting, task = await _queued_call(rig)
        rig.events.clear()
        assert waiting in await _sweep_as_if_silent(rig)
        assert changed() == set()  # the sweeping instance is another one
        assert await rig.acd.heartbeat() == 0
        await eventually(lambda: waiting in changed(), what="the reclaimed call announced")
        assert await _queued_refs(rig.deps) == {waiting}
        await _hang_up(task)


async def test_a_step_written_after_the_sweep_does_not_leave_the_call_half_ended(
    tmp_path: Path, db_url: str
) -> None:
    """The database came back before the beat: a step of the call wrote its state over
    'lost', but not its end time and cause, and the queue item stayed gone."""
    async with make_rig(tmp_path, db_url) as rig:
        uuid, task = await _queued_call(rig)
        assert await _sweep_as_if_silent(rig) == [uuid]
        await store.update_call(
            rig.deps, uuid, rig.deps.clock(), event="ring_failed", state="queued"
        )
        row = await _call(rig.deps, uuid)
        assert (row["state"], row["hangup_cause"]) == ("queued", "SERVICE_RESTART")
        assert await rig.acd.heartbeat() == 0
        row = await _call(rig.deps, uuid)
        assert (row["state"], row["ended_at"], row["hangup_cause"]) == ("queued", None, None)
        assert await _queued_refs(rig.deps) == {uuid}
        await _hang_up(task)


async def test_a_call_that_ended_here_during_the_outage_is_not_taken_back(
    tmp_path: Path, db_url: str, monkeypatch: Any
) -> None:
    """The caller hung up while the database was out of reach: the ACD knows the call
    is over though its last step was never written, so the row stays lost."""
    async with make_rig(tmp_path, db_url) as rig:
        uuid, task = await _queued_call(rig)
        gone, gone_task = rig.call("+8613800000002")
        await eventually(lambda: len(rig.named("call.queued")) == 2, what="both calls queued")
        assert set(await _sweep_as_if_silent(rig)) == {uuid, gone}
        real = store.update_call

        async def unreachable(deps: Any, ref: str, *a: Any, **kw: Any) -> None:
            if ref == gone:
                raise StoreUnavailable("connection refused")
            await real(deps, ref, *a, **kw)

        monkeypatch.setattr(store, "update_call", unreachable)
        await rig.switch.hangup(gone)
        await eventually(lambda: rig.acd.calls[gone].state == "abandoned", what="abandoned")
        assert await rig.acd.heartbeat() == 0
        row = await _call(rig.deps, gone)
        assert (row["state"], row["hangup_cause"]) == ("lost", "SERVICE_RESTART")
        assert (await _call(rig.deps, uuid))["state"] == "queued"
        assert await _queued_refs(rig.deps) == {uuid}
        await _hang_up(task)
        await _hang_up(gone_task)


async def test_the_running_heartbeat_takes_the_call_back_by_itself(
    tmp_path: Path, db_url: str
) -> None:
    async with make_rig(tmp_path, db_url, heartbeat_s=0.05) as rig:
        uuid, task = await _queued_call(rig)
        assert await _sweep_as_if_silent(rig) == [uuid]

        async def back() -> bool:
            return (await _call(rig.deps, uuid))["state"] == "queued"

        await _until(back)
        assert await _queued_refs(rig.deps) == {uuid}
        await _hang_up(task)


async def test_steps_kept_through_the_outage_land_before_the_call_is_taken_back(
    tmp_path: Path, db_url: str, deps: Any
) -> None:
    """Cut off from the database, this instance answers a waiting caller (its steps
    kept in memory) while another instance closes the call as lost. The beat that gets
    through writes the kept steps first, then takes the call back on top of them."""
    async with make_rig(tmp_path, db_url) as rig:
        rig.switch.phone("user/1001")
        await rig.acd.login("li", "1001")
        await rig.acd.set_state("li", "break", None)
        uuid, task = await _queued_call(rig)

        @contextlib.asynccontextmanager
        async def refused(*_a: Any, **_kw: Any) -> AsyncIterator[Any]:
            raise StoreUnavailable("connection refused")
            yield  # pragma: no cover

        rig.deps.db.write = rig.deps.db.read = refused  # this process only
        await rig.acd.set_state("li", "available", None)
        await eventually(lambda: rig.acd.calls[uuid].state == "talking", what="answered")
        assert store.deferred_call_steps(rig.deps) == 2  # offered, answered
        later = deps.clock() + timedelta(minutes=5)  # the other instance's sweep
        assert await instances.close_orphaned_calls(
            deps, "other", later, 30, include_unowned=False
        ) == [uuid]

        del rig.deps.db.write, rig.deps.db.read
        assert await rig.acd.heartbeat() == 0
        assert store.deferred_call_steps(rig.deps) == 0
        row = await _call(rig.deps, uuid)
        assert (row["state"], row["agent"], row["ended_at"], row["hangup_cause"]) == (
            "talking", "li", None, None,
        )  # fmt: skip
        assert await _kinds(rig.deps, uuid) == ["queued", "offered", "answered", "reclaimed"]
        assert await _queued_refs(rig.deps) == set()
        await rig.switch.hangup(uuid)
        assert await asyncio.wait_for(task, 2) == "completed"
        assert (await _call(rig.deps, uuid))["state"] == "ended"
