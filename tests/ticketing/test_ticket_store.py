"""Tickets through the real handlers and store, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from ticket_world import (
    AGENT,
    AGENT2,
    HOUSING,
    SUPERVISOR,
    TRANSPORT,
    URBAN,
    WATER,
    World,
    dept,
    make_deps,
)

from ticketing import handlers as h
from ticketing.events import TicketTransitioned
from ticketing.intake import Intake
from ticketing.lifecycle import IllegalMove


def _dt(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=UTC)


async def _unchanged(world: World, number: str, before: object, trail_len: int) -> None:
    assert await world.row(number) == before
    assert len(await world.trail(number)) == trail_len


async def test_full_happy_path_with_extension_and_rework(world: World) -> None:
    # 建设政策咨询: department housing (inherited), feedback 7 working days
    t = await world.create(
        kind="consultation", category="construction.policy", contact_phone="138 1234 5678"
    )
    n = t["number"]
    assert n == "2026042000001"
    assert t["status"] == "new"
    assert t["contact"]["phone"] == "138****5678"
    assert t["deadlines"]["dispatch_due_at"] == "2026-04-21T02:00:00Z"  # 24 h on the clock
    wi = await world.work_item(n)
    assert (wi.audience, wi.action) == ("agents", "dispatch")

    world.clock.advance(hours=1)  # Mon 20 Apr 11:00 Shanghai
    v = await world.move(n, "dispatch", AGENT)
    assert v["status"] == "dispatched" and v["lead_department"] == "housing"
    # 7 working days after Mon 20 Apr: 21-24, 27-29 Apr; due at the end of Wed 29 Apr
    assert v["deadlines"]["feedback_due_at"] == "2026-04-29T16:00:00Z"
    wi = await world.work_item(n)
    assert (wi.audience, wi.action, wi.due_at) == (
        "dept:housing",
        "sign",
        _dt("2026-04-29T16:00:00"),
    )

    world.clock.advance(hours=1)
    assert (await world.move(n, "sign", HOUSING, note="收到"))["status"] == "accepted"
    assert (await world.work_item(n)).action == "reply"

    world.clock.advance(days=2)
    v = await world.move(n, "request_extension", HOUSING, extra="3wd", reason="需现场勘查")
    assert v["status"] == "extension_requested"
    wi = await world.work_item(n)
    assert (wi.audience, wi.action) == ("supervisors", "decide_extension")

    world.clock.advance(hours=3)
    v = await world.move(n, "grant_extension", SUPERVISOR)  # the requested 3wd
    assert v["status"] == "accepted"
    # 3 more working days after Wed 29 Apr, across Labour Day (1-5 May off):
    # Thu 30 Apr, Wed 6 May, Thu 7 May -> due at the end of Thu 7 May (Shanghai)
    assert v["deadlines"]["feedback_due_at"] == "2026-05-07T16:00:00Z"
    grant = (await world.trail(n))[-1]
    assert grant.action == "grant_extension"
    assert grant.data == {
        "extra": "3wd",
        "from_due_at": "2026-04-29T16:00:00Z",
        "to_due_at": "2026-05-07T16:00:00Z",
    }
    assert (await world.work_item(n)).due_at == _dt("2026-05-07T16:00:00")

    world.clock.advance(days=1)
    v = await world.move(n, "reply", HOUSING, reply="已答复政策口径")
    assert v["status"] == "replied" and v["reply"] == "已答复政策口径"
    wi = await world.work_item(n)
    assert (wi.audience, wi.action, wi.due_at) == ("agents", "follow_up", None)

    world.clock.advance(hours=2)
    v = await world.move(n, "follow_up", AGENT, satisfaction="unsatisfied", note="没解决")
    assert v["status"] == "reopened"
    assert v["reopen_count"] == 1 and v["satisfaction"] is None and v["closed_at"] is None
    reopened_at = world.clock.now
    assert _dt(v["deadlines"]["dispatch_due_at"][:-1]) == reopened_at + timedelta(hours=24)
    assert (await world.work_item(n)).action == "dispatch"

    world.clock.advance(minutes=10)
    v = await world.move(n, "dispatch", SUPERVISOR, department="urban-mgmt", note="改派")
    assert v["lead_department"] == "urban-mgmt"
    with pytest.raises(h.TicketNotFound):  # the old lead no longer sees it
        await h.get_ticket(world.deps, n, HOUSING)
    await world.move(n, "sign", URBAN)
    await world.move(n, "reply", URBAN, reply="已现场处理")
    v = await world.move(n, "follow_up", AGENT, satisfaction="basically_satisfied")
    assert v["status"] == "closed" and v["satisfaction"] == "basically_satisfied"
    assert v["closed_at"] is not None
    assert await world.work_item(n) is None  # nothing left to do

    trail = await world.trail(n)
    assert [e.action for e in trail] == [
        "create",
        "dispatch",
        "sign",
        "request_extension",
        "grant_extension",
        "reply",
        "follow_up",
        "dispatch",
        "sign",
        "reply",
        "follow_up",
    ]
    assert [e.seq for e in trail] == list(range(1, len(trail) + 1))
    for prev, cur in itertools.pairwise(trail):
        assert cur.from_status == prev.to_status and cur.prev_hash == prev.hash
    row = await world.row(n)
    assert row.event_seq == len(trail) and row.last_hash == trail[-1].hash
    assert (await h.verify_trails(world.deps, [n])) == {"checked": 1, "intact": True, "breaks": []}
    moves = [e for e in world.events if isinstance(e, TicketTransitioned)]
    assert [e.action for e in moves] == [e.action for e in trail[1:]]


async def test_return_with_reason_then_redispatch(world: World) -> None:
    n = (await world.create())["number"]
    await world.move(n, "dispatch", AGENT)
    v = await world.move(n, "return", URBAN, reason="不属于本单位职责")
    assert v["status"] == "returned"
    ev = (await world.trail(n))[-1]
    assert (ev.action, ev.data, ev.actor_role) == (
        "return",
        {"reason": "不属于本单位职责", "dispatch_due_at": "2026-04-21T02:00:00Z"},
        "department",
    )
    wi = await world.work_item(n)
    assert (wi.audience, wi.action) == ("agents", "dispatch")
    # a reason is required (schema) and a returned ticket cannot be signed
    with pytest.raises(ValueError):
        await world.move(n, "return", URBAN)
    with pytest.raises(IllegalMove) as err:
        await world.move(n, "sign", URBAN)
    assert not err.value.forbidden and err.value.allowed == []

    world.clock.advance(hours=2)
    v = await world.move(n, "dispatch", AGENT, department="water")
    assert v["status"] == "dispatched" and v["lead_department"] == "water"
    assert (await world.trail(n))[-1].data["routed_by"] == "chosen"
    assert (await world.work_item(n)).audience == "dept:water"
    with pytest.raises(h.TicketNotFound):
        await world.move(n, "sign", URBAN)
    await world.move(n, "sign", WATER)
    # returning is also allowed after signing
    assert (await world.move(n, "return", WATER, reason="需要规划部门"))["status"] == "returned"


async def test_merge_follows_the_parent(world: World) -> None:
    child = (await world.create(title="路灯不亮 A"))["number"]
    parent = (await world.create(title="路灯不亮 B"))["number"]
    v = await world.move(child, "merge", AGENT, into=parent)
    assert v["status"] == "merged" and v["merged_into"] == parent
    assert await world.work_item(child) is None
    p_trail = await world.trail(parent)
    assert (p_trail[-1].action, p_trail[-1].data) == ("merge_in", {"child": child})
    assert p_trail[-1].from_status == p_trail[-1].to_status == "new"

    await world.move(parent, "dispatch", AGENT)
    await world.move(parent, "sign", URBAN)
    c_trail = await world.trail(child)
    updates = [e for e in c_trail if e.action == "parent_update"]
    assert [e.data for e in updates] == [
        {"parent": parent, "action": "dispatch", "parent_status": "dispatched"},
        {"parent": parent, "action": "sign", "parent_status": "accepted"},
    ]
    assert all(e.from_status == e.to_status == "merged" for e in updates)
    assert (await world.row(child)).status == "merged"
    # a merged ticket moves no more
    with pytest.raises(IllegalMove):
        await world.move(child, "dispatch", AGENT)
    assert (await h.verify_trails(world.deps))["intact"]

    other = (await world.create())["number"]
    before, n_events = await world.row(other), len(await world.trail(other))
    with pytest.raises(h.InvalidRequest) as err:
        await world.move(other, "merge", AGENT, into=other)
    assert err.value.field == "into"
    with pytest.raises(h.InvalidRequest) as err:  # into a merged ticket: name its parent
        await world.move(other, "merge", AGENT, into=child)
    assert parent in str(err.value)
    with pytest.raises(h.InvalidRequest):
        await world.move(other, "merge", AGENT, into="2026042099999")
    await _unchanged(world, other, before, n_events)
    assert (await world.work_item(other)) is not None


async def test_dispatch_routing_category_default_and_district_fallback(world: World) -> None:
    n = (await world.create(category="utilities.water-outage"))["number"]
    v = await world.move(n, "dispatch", AGENT)
    assert v["lead_department"] == "water"
    assert (await world.trail(n))[-1].data["routed_by"] == "category"

    for district in ("东城区", "d-east"):
        n = (await world.create(category=None, district=district, kind="request"))["number"]
        v = await world.move(n, "dispatch", AGENT)
        assert v["lead_department"] == "d-east-office"
        assert (await world.trail(n))[-1].data["routed_by"] == "district_fallback"

    # category wins over the district
    n = (await world.create(category="transport.bus", district="西城区"))["number"]
    assert (await world.move(n, "dispatch", AGENT))["lead_department"] == "transport"

    # no category, no district, no department: refused, nothing changed
    n = (await world.create(category=None))["number"]
    before = await world.row(n)
    with pytest.raises(h.InvalidRequest) as err:
        await world.move(n, "dispatch", AGENT)
    assert err.value.field == "department"
    with pytest.raises(h.InvalidRequest):
        await world.move(n, "dispatch", AGENT, department="no-such-unit")
    with pytest.raises(h.InvalidRequest) as err:
        await world.move(n, "dispatch", AGENT, department="water", assist=["water"])
    assert err.value.field == "assist"
    await _unchanged(world, n, before, 1)


async def test_assisting_departments_see_but_cannot_act(world: World) -> None:
    n = (await world.create())["number"]
    await world.move(n, "dispatch", AGENT, assist=["water", "transport", "water"])
    row = await world.row(n)
    assert row.lead_department == "urban-mgmt"
    assert row.assist_departments == ["water", "transport"]  # de-duplicated, in order

    for helper in (WATER, TRANSPORT):
        view = await h.get_ticket(world.deps, n, helper)
        assert view["allowed_actions"] == []
        assert [e["action"] for e in await h.ticket_events(world.deps, n, helper)] == [
            "create",
            "dispatch",
        ]
        listed = await h.list_tickets(world.deps, helper, h.TicketFilter(), limit=10, cursor=None)
        assert [t["number"] for t in listed["items"]] == [n]
        with pytest.raises(IllegalMove) as err:
            await world.move(n, "sign", helper)
        assert err.value.forbidden
    assert (await h.get_ticket(world.deps, n, URBAN))["allowed_actions"] == ["sign", "return"]

    # a department with no part in it does not even learn it exists
    with pytest.raises(h.TicketNotFound):
        await h.get_ticket(world.deps, n, HOUSING)
    with pytest.raises(h.TicketNotFound):
        await world.move(n, "sign", HOUSING)
    listed = await h.list_tickets(world.deps, HOUSING, h.TicketFilter(), limit=10, cursor=None)
    assert listed["items"] == []
    # the department queue is the lead's only
    assert [i["ref"] for i in await h.queue_view(world.deps, URBAN)] == [n]
    assert await h.queue_view(world.deps, WATER) == []
    await world.move(n, "sign", URBAN)
    assert (await world.row(n)).status == "accepted"


async def _busy_ticket(world: World) -> str:
    n = (await world.create())["number"]
    await world.move(n, "dispatch", AGENT)
    await world.move(n, "return", URBAN, reason="非本单位")
    await world.move(n, "dispatch", AGENT, department="water")
    await world.move(n, "sign", WATER)
    await world.move(n, "supervise", SUPERVISOR, note="请加快")
    await world.move(n, "reply", WATER, reply="已处理")
    await world.move(n, "follow_up", AGENT, satisfaction="satisfied")
    await world.move(n, "reopen", AGENT, reason="复发")
    return n


async def test_audit_trail_detects_tampering_per_ticket(world: World) -> None:
    a, b, c, d = [await _busy_ticket(world) for _ in range(4)]
    report = await h.verify_trails(world.deps)
    assert report == {"checked": 4, "intact": True, "breaks": []}
    ev = h.event_t

    def broken(rep: dict) -> set[str]:
        return {x["ticket"] for x in rep["breaks"]}

    # 1. change one event's data
    async with world.db.write() as conn:
        await conn.execute(
            sa.update(ev)
            .where(ev.c.ticket_number == a, ev.c.seq == 3)
            .values(data={"reason": "本单位职责"})
        )
    rep = await h.verify_trails(world.deps)
    assert broken(rep) == {a} and not rep["intact"]
    assert [(x["seq"], x["problem"]) for x in rep["breaks"]] == [
        (3, "content does not match its hash")
    ]

    # 2. delete the last event: the chain itself is fine, the ticket's head is not
    async with world.db.write() as conn:
        await conn.execute(
            sa.text(
                "DELETE FROM ticket_event WHERE ticket_number = :n AND seq = "
                "(SELECT max(seq) FROM ticket_event WHERE ticket_number = :n)"
            ),
            {"n": b},
        )
    rep = await h.verify_trails(world.deps)
    assert broken(rep) == {a, b}
    assert [x["problem"] for x in rep["breaks"] if x["ticket"] == b] == [
        "trail is shorter than the ticket records"
    ]

    # 3. reorder: swap events 4 and 5
    async with world.db.write() as conn:
        for old, new in ((4, -5), (5, 4), (-5, 5)):
            await conn.execute(
                sa.text(
                    "UPDATE ticket_event SET seq = :new WHERE ticket_number = :n AND seq = :old"
                ),
                {"n": c, "old": old, "new": new},
            )
    rep = await h.verify_trails(world.deps)
    assert broken(rep) == {a, b, c}
    assert {x["seq"] for x in rep["breaks"] if x["ticket"] == c} >= {4}
    assert rep["checked"] == 4

    # the untouched ticket is still intact, alone or among the others
    assert await h.verify_trails(world.deps, [d]) == {"checked": 1, "intact": True, "breaks": []}
    assert broken(await h.verify_trails(world.deps, [c, d])) == {c}

    # 4. a trail deleted wholesale
    async with world.db.write() as conn:
        await conn.execute(sa.text("DELETE FROM ticket_event WHERE ticket_number = :n"), {"n": d})
    rep = await h.verify_trails(world.deps, [d])
    assert rep["breaks"] == [{"ticket": d, "seq": 1, "problem": "trail is missing"}]


async def test_concurrent_intake_numbers_unique_and_sequential(world: World) -> None:
    views = await asyncio.gather(*(world.create(title=f"工单 {i}") for i in range(200)))
    numbers = [v["number"] for v in views]
    assert len(set(numbers)) == 200
    assert sorted(numbers) == [f"20260420{i:05d}" for i in range(1, 201)]
    assert world.intake.batches < 200  # group commit did group
    async with world.db.read() as conn:
        assert (await conn.execute(sa.text("SELECT count(*) FROM ticket"))).scalar() == 200
        assert (await conn.execute(sa.text("SELECT count(*) FROM work_item"))).scalar() == 200
        seqs = (await conn.execute(sa.text("SELECT DISTINCT seq FROM ticket_event"))).all()
        assert seqs == [(1,)]
    # each ticket's title went with its own number
    by_title = {v["title"]: v["number"] for v in views}
    for v in views:
        row = await world.row(by_title[v["title"]])
        assert row.title == v["title"]
    assert (await h.verify_trails(world.deps))["intact"]


async def test_a_batch_larger_than_one_multi_row_insert_keeps_every_row(world: World) -> None:
    """SQLite's intake writes a batch as multi-row INSERTs of at most 999 parameters
    (the ticket table's ~40 columns: about 25 rows each): a 120-ticket batch spans
    several statements and every ticket keeps its own row, event and queue item."""
    hold = asyncio.Event()
    writer = world.intake._writer
    original = writer._commit
    sizes: list[int] = []

    async def held(batch):  # type: ignore[no-untyped-def]
        await hold.wait()  # the first batch waits while the rest queue up behind it
        sizes.append(len(batch))
        return await original(batch)

    writer._commit = held
    try:
        tasks = [asyncio.create_task(world.create(title=f"批量 {i}")) for i in range(121)]
        await asyncio.sleep(0.05)
        hold.set()
        views = await asyncio.gather(*tasks)
    finally:
        writer._commit = original
    assert max(sizes) >= 100
    assert len({v["number"] for v in views}) == 121
    async with world.db.read() as conn:
        rows = (await conn.execute(sa.text("SELECT number, title FROM ticket"))).all()
        assert dict(rows) == {v["number"]: v["title"] for v in views}
        assert (await conn.execute(sa.text("SELECT count(*) FROM work_item"))).scalar() == 121
        assert (await conn.execute(sa.text("SELECT count(*) FROM ticket_event"))).scalar() == 121
    assert (await h.verify_trails(world.deps))["intact"]


async def test_two_instances_share_the_day_counter(world: World) -> None:
    """A second service instance (own engine, own intake writer) on the same database."""
    deps2 = await make_deps(world.db.url, world.clock)
    other = Intake(deps2, max_batch=7)
    await other.start()
    try:
        w2 = World(deps2, world.clock, other, [])
        views = await asyncio.gather(
            *(world.create() for _ in range(60)), *(w2.create() for _ in range(60))
        )
    finally:
        await other.stop()
        await deps2.db.dispose()
    numbers = sorted(v["number"] for v in views)
    assert numbers == [f"20260420{i:05d}" for i in range(1, 121)]


async def test_ticket_number_day_is_the_city_day(world: World) -> None:
    world.clock.set(datetime(2026, 4, 20, 15, 59, 59, tzinfo=UTC))  # 23:59:59 in Shanghai
    assert (await world.create())["number"] == "2026042000001"
    world.clock.set(datetime(2026, 4, 20, 16, 0, tzinfo=UTC))  # midnight in Shanghai
    assert (await world.create())["number"] == "2026042100001"
    assert (await world.create())["number"] == "2026042100002"


async def test_concurrent_moves_on_one_ticket_apply_once(world: World) -> None:
    n = (await world.create())["number"]
    results = await asyncio.gather(
        *(world.move(n, "dispatch", AGENT) for _ in range(6)), return_exceptions=True
    )
    assert sum(isinstance(r, dict) for r in results) == 1
    assert all(isinstance(r, IllegalMove) for r in results if not isinstance(r, dict))
    # two clerks of the lead department sign at once
    results = await asyncio.gather(
        world.move(n, "sign", URBAN),
        world.move(n, "sign", dept("urban-mgmt", "urban-clerk-2")),
        return_exceptions=True,
    )
    assert sum(isinstance(r, dict) for r in results) == 1
    assert sum(isinstance(r, IllegalMove) for r in results) == 1
    trail = await world.trail(n)
    assert [e.seq for e in trail] == [1, 2, 3]
    assert (await h.verify_trails(world.deps, [n]))["intact"]


async def test_duplicates_merged_into_each_other_at_once(world: World) -> None:
    """Two agents each merge their copy into the other's: one wins, the other is told."""
    for _ in range(6):
        a = (await world.create())["number"]
        b = (await world.create())["number"]
        results = await asyncio.gather(
            world.move(a, "merge", AGENT, into=b),
            world.move(b, "merge", AGENT2, into=a),
            return_exceptions=True,
        )
        ok = [r for r in results if isinstance(r, dict)]
        refused = [r for r in results if not isinstance(r, dict)]
        assert len(ok) == 1, results  # never a deadlock error, never both
        assert len(refused) == 1 and isinstance(refused[0], h.InvalidRequest), results
        winner = ok[0]
        loser = b if winner["number"] == a else a
        assert winner["merged_into"] == loser
        assert (await world.row(loser)).status == "new"
    assert (await h.verify_trails(world.deps))["intact"]


async def test_a_chain_of_merges_keeps_every_duplicate_on_the_survivor(world: World) -> None:
    a, b, c = (await world.create(), await world.create(), await world.create())
    await world.move(a["number"], "merge", AGENT, into=b["number"])
    await world.move(b["number"], "merge", AGENT, into=c["number"])
    assert (await world.row(a["number"])).merged_into == c["number"]
    await world.move(c["number"], "dispatch", AGENT)
    last = (await world.trail(a["number"]))[-1]
    assert (last.action, last.data["parent"]) == ("parent_update", c["number"])
    assert "merge_reparented" in [e.action for e in await world.trail(a["number"])]


async def test_a_returned_ticket_gets_a_fresh_dispatch_allowance(world: World) -> None:
    t = await world.create()
    await world.move(t["number"], "dispatch", AGENT)
    world.clock.advance(hours=30)  # past the original 24 h dispatch deadline
    await world.move(t["number"], "return", URBAN, reason="不属于本单位职责")
    row = await world.row(t["number"])
    assert row.dispatch_due_at == world.clock.now + timedelta(hours=24)
    assert row.dispatch_breached_at is None


async def test_a_supervision_notice_does_not_take_the_item_from_its_claimer(world: World) -> None:
    t = await world.create()
    await world.move(t["number"], "dispatch", AGENT)
    item = await h.claim_next(world.deps, URBAN)
    assert item is not None and item["ref"] == t["number"]
    await world.move(t["number"], "supervise", SUPERVISOR, note="请尽快签收")
    wi = await world.work_item(t["number"])
    assert (wi.claimed_by, wi.priority) == (URBAN.username, 1)
    await world.move(t["number"], "sign", URBAN)  # a new job: the claim is released
    assert (await world.work_item(t["number"])).claimed_by is None
