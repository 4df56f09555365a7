"""Claiming queue items: concurrent claimers never share one, lapsed claims come back."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import sqlalchemy as sa
from ticket_world import AGENT, SUPERVISOR, URBAN, WATER, World, dept, make_deps

from ticketing import handlers as h
from ticketing import workqueue
from ticketing.lifecycle import Role
from ticketing.ports import Principal


def agent(i: int) -> Principal:
    return Principal(f"agent{i:02d}", Role.AGENT)


async def test_fifty_claimers_thirty_items(world: World) -> None:
    numbers = {v["number"] for v in await asyncio.gather(*(world.create() for _ in range(30)))}
    results = await asyncio.gather(*(h.claim_next(world.deps, agent(i)) for i in range(50)))
    got = [r for r in results if r is not None]
    assert len(got) == 30
    assert results.count(None) == 20
    assert len({r["id"] for r in got}) == 30
    assert {r["ref"] for r in got} == numbers
    by_claimer = {r["claimed_by"]: r["id"] for r in got}
    assert len(by_claimer) == 30  # nobody got two
    wi = workqueue.work_item
    async with world.db.read() as conn:
        rows = (await conn.execute(sa.select(wi.c.id, wi.c.claimed_by))).all()
    assert {(i, c) for i, c in rows} == {(i, c) for c, i in by_claimer.items()}
    # nothing is left for a latecomer
    assert await h.claim_next(world.deps, agent(99)) is None


async def test_claimers_on_two_instances_never_share(world: World) -> None:
    """The same race, split over two service instances (an engine each)."""
    other = await make_deps(world.db.url, world.clock)
    try:
        await asyncio.gather(*(world.create() for _ in range(30)))
        results = await asyncio.gather(
            *(h.claim_next(world.deps if i % 2 else other, agent(i)) for i in range(50))
        )
    finally:
        await other.db.dispose()
    got = [r["id"] for r in results if r is not None]
    assert len(got) == len(set(got)) == 30


async def test_lapsed_claim_can_be_reclaimed(world: World) -> None:
    n = (await world.create())["number"]
    ttl = world.deps.claim_ttl_s
    first = await h.claim_next(world.deps, agent(1))
    assert first is not None and first["ref"] == n and first["claimed_by"] == "agent01"
    assert await h.claim_next(world.deps, agent(2)) is None
    world.clock.advance(seconds=ttl)  # the claim runs out at this instant, not before
    assert await h.claim_next(world.deps, agent(2)) is None
    world.clock.advance(seconds=1)
    again = await h.claim_next(world.deps, agent(2))
    assert again is not None
    assert (again["id"], again["claimed_by"]) == (first["id"], "agent02")
    assert again["claim_expires_at"] == (
        (world.clock.now + timedelta(seconds=ttl)).isoformat().replace("+00:00", "Z")
    )
    assert await h.claim_next(world.deps, agent(1)) is None
    # a move re-registers the item unclaimed, for its new audience
    await world.move(n, "dispatch", AGENT)
    item = (await h.queue_view(world.deps, URBAN))[0]
    assert (item["ref"], item["claimed_by"], item["action"]) == (n, None, "sign")


async def test_department_claims_only_its_own(world: World) -> None:
    water = [(await world.create(category="utilities.water-quality"))["number"] for _ in range(3)]
    urban = [(await world.create())["number"] for _ in range(2)]
    floor = [(await world.create())["number"] for _ in range(2)]
    for n in water + urban:
        await world.move(n, "dispatch", AGENT)
    # assisting gives no queue item
    await world.move(floor[0], "dispatch", AGENT, department="urban-mgmt", assist=["water"])
    urban.append(floor.pop(0))

    taken = []
    while (item := await h.claim_next(world.deps, WATER)) is not None:
        taken.append(item)
    assert sorted(i["ref"] for i in taken) == sorted(water)
    assert {i["audience"] for i in taken} == {"dept:water"}

    claims = await asyncio.gather(*(h.claim_next(world.deps, URBAN) for _ in range(5)))
    assert sorted(c["ref"] for c in claims if c) == sorted(urban)
    # agents see only the floor's items; a department user without a department nothing
    assert [i["ref"] for i in await h.queue_view(world.deps, AGENT)] == floor
    assert await h.claim_next(world.deps, Principal("x", Role.DEPARTMENT)) is None
    assert await h.claim_next(world.deps, dept("housing")) is None
    assert await h.claim_next(world.deps, Principal("root", Role.ADMIN)) is None


async def test_queue_order_priority_then_deadline(world: World) -> None:
    normal_a = (await world.create())["number"]  # due T0+24h, priority 2
    world.clock.advance(hours=1)
    normal_b = (await world.create())["number"]  # due T0+25h
    urgent = (await world.create(category="utilities.water-outage"))["number"]  # due T0+3h
    world.clock.advance(minutes=50)
    emergency = (await world.create(category="utilities.gas-leak"))["number"]  # due T0+2h50m
    replied = (await world.create(category="urban.street-lights"))["number"]
    await world.move(replied, "dispatch", AGENT)
    await world.move(replied, "sign", URBAN)
    await world.move(replied, "reply", URBAN, reply="已修复")  # follow-up: no deadline
    prio = {v["ref"]: v["priority"] for v in await h.queue_view(world.deps, AGENT)}
    assert prio == {emergency: 0, urgent: 1, normal_a: 2, normal_b: 2, replied: 2}

    order = [emergency, urgent, normal_a, normal_b, replied]
    assert [i["ref"] for i in await h.queue_view(world.deps, AGENT)] == order
    # supervisors see the floor's queue too; claims come in the same order
    assert [i["ref"] for i in await h.queue_view(world.deps, SUPERVISOR)] == order
    claimed = [(await h.claim_next(world.deps, agent(i)))["ref"] for i in range(5)]
    assert claimed == order

    # a supervision notice (督办) moves a ticket up a priority band
    lead = (await world.create())["number"]
    await world.move(lead, "dispatch", AGENT)
    late = (await world.create(category="utilities.water-quality"))["number"]
    await world.move(late, "dispatch", AGENT, department="urban-mgmt")
    assert [i["ref"] for i in await h.queue_view(world.deps, URBAN)] == [lead, late]
    await world.move(late, "supervise", SUPERVISOR, note="请优先处理")
    assert [i["ref"] for i in await h.queue_view(world.deps, URBAN)] == [late, lead]
