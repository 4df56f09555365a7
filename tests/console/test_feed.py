"""The live queue: sequence numbers, snapshot, resume, audiences, slow consumers.

Through the real websocket of the service (aiohttp test client), on SQLite and
PostgreSQL: what an agent's console receives must equal the work queue in the
database, and a reconnecting console must not lose an item.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import sqlalchemy as sa

from hotline.appkeys import CONSOLE, DEPS
from ticketing.events import WorkItemChanged
from ticketing.models import WorkItem, utcnow

work_item = WorkItem.__table__  # type: ignore[attr-defined]


async def connect(api, who: str = "agent", **params: Any):  # type: ignore[no-untyped-def]
    headers = await api.headers(who)
    query = {k: str(v) for k, v in params.items()}
    return await api.client.ws_connect("/api/v1/console/ws", headers=headers, params=query)


async def frame(ws, wait: float = 5.0) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return await asyncio.wait_for(ws.receive_json(), wait)


async def until_key(ws, key: str, op: str = "upsert") -> dict[str, Any]:  # type: ignore[no-untyped-def]
    while True:
        f = await frame(ws)
        for ev in f.get("events", []):
            if ev["key"] == key and ev["op"] == op:
                return ev


async def settled(api, *keys: str) -> None:  # type: ignore[no-untyped-def]
    """ticket.created goes out just after the commit: wait until the feed has seen it."""
    feed = api.app[CONSOLE].feed
    for _ in range(200):
        async with feed.fresh():  # with no console attached the mirror is brought up lazily
            if all(k in feed.mirror for k in keys):
                return
        await asyncio.sleep(0.01)
    raise AssertionError(f"feed never saw {keys}")


async def test_first_frame_is_the_snapshot_of_my_audience(api):
    t = await api.new_ticket()
    await settled(api, f"ticket:{t['number']}")
    ws = await connect(api)
    first = await frame(ws)
    assert first["type"] == "snapshot"
    assert first["seq"] >= 1
    assert [i["key"] for i in first["items"]] == [f"ticket:{t['number']}"]
    item = first["items"][0]
    assert item["action"] == "dispatch"
    assert item["audience"] == "agents"
    assert item["title"] == "路灯不亮"
    assert item["channel"] == "phone"
    assert item["status"] == "new"
    # a department user sees nothing of the agents' floor
    dept = await connect(api, "urban")
    assert (await frame(dept))["items"] == []
    await ws.close()
    await dept.close()


async def test_new_ticket_then_dispatch_flows_from_agents_to_the_department(api):
    agent = await connect(api)
    dept = await connect(api, "urban")
    snap = await frame(agent)
    await frame(dept)
    t = await api.new_ticket()
    key = f"ticket:{t['number']}"
    created = await until_key(agent, key)
    assert created["seq"] > snap["seq"]
    assert created["item"]["action"] == "dispatch"
    await api.move(t["number"], "dispatch", {"department": "urban-mgmt"})
    removed = await until_key(agent, key, "remove")
    assert removed["seq"] > created["seq"]
    arrived = await until_key(dept, key)
    assert arrived["item"]["audience"] == "dept:urban-mgmt"
    assert arrived["item"]["action"] == "sign"
    assert arrived["seq"] == removed["seq"]  # one change, one number, on this instance
    await agent.close()
    await dept.close()


async def test_reconnect_resumes_with_exactly_the_missed_events(api):
    ws = await connect(api)
    snap = await frame(ws)
    await ws.close()
    missed = []
    for i in range(3):  # one by one, so the order of the events is the order of creation
        missed.append(await api.new_ticket(title=f"漏掉的{i}"))
        await settled(api, f"ticket:{missed[-1]['number']}")
    ws = await connect(api, instance=snap["instance"], after=snap["seq"])
    first = await frame(ws)
    assert first["type"] == "resume"
    got = [e["key"] for e in first["events"]]
    assert got == [f"ticket:{t['number']}" for t in missed]
    seqs = [e["seq"] for e in first["events"]]
    assert seqs == sorted(seqs) and seqs[0] > snap["seq"] and seqs[-1] == first["seq"]
    await ws.close()


async def test_unknown_instance_or_too_old_gets_a_fresh_snapshot(api):
    t = await api.new_ticket()
    await settled(api, f"ticket:{t['number']}")
    ws = await connect(api, instance="another-instance", after=5)
    first = await frame(ws)
    assert first["type"] == "snapshot"
    assert [i["ref"] for i in first["items"]] == [t["number"]]
    await ws.close()
    feed = api.app[CONSOLE].feed
    ws = await connect(api, instance=feed.instance, after=feed.seq + 10)  # from the future
    assert (await frame(ws))["type"] == "snapshot"
    await ws.close()


async def test_http_snapshot_and_socket_agree_with_the_database(api):
    for i in range(4):
        await api.new_ticket(title=f"工单{i}", urgency="emergency" if i == 2 else None)
    deps = api.app[DEPS]
    await api.app[CONSOLE].feed.reconcile()
    r = await api.get("/api/v1/console/queue")
    body = await r.json()
    async with deps.db.read() as conn:
        refs = {
            row.ref
            for row in await conn.execute(
                sa.select(work_item.c.ref).where(work_item.c.audience == "agents")
            )
        }
    assert {i["ref"] for i in body["items"]} == refs
    # emergencies first
    assert body["items"][0]["emergency"] is True
    assert body["items"][0]["title"] == "工单2"
    assert [i["priority"] for i in body["items"]] == sorted(i["priority"] for i in body["items"])


async def test_items_changed_behind_the_bus_are_found_by_reconcile(api):
    """A writer that forgot to announce (or a NOTIFY lost in a reconnect) is caught."""
    deps = api.app[DEPS]
    feed = api.app[CONSOLE].feed
    ws = await connect(api)
    await frame(ws)
    async with deps.db.write() as conn:
        await conn.execute(
            sa.insert(work_item).values(
                kind="conversation",
                ref="c-42",
                audience="agents",
                action="answer",
                priority=2,
                due_at=None,
                created_at=utcnow(),
            )
        )
    await feed.reconcile()
    ev = await until_key(ws, "conversation:c-42")
    assert ev["item"]["kind"] == "conversation"
    # and an announced change of another kind arrives through the bus
    async with deps.db.write() as conn:
        await conn.execute(sa.delete(work_item).where(work_item.c.ref == "c-42"))
    await deps.bus.publish(WorkItemChanged("conversation", "c-42"))
    gone = await until_key(ws, "conversation:c-42", "remove")
    assert gone["seq"] > ev["seq"]
    await ws.close()


async def test_a_slow_consumer_is_cut_off_and_told_to_resume(sqlite_api, monkeypatch):
    from hotline.console import feed as feed_mod

    feed = sqlite_api.app[CONSOLE].feed
    ws = await connect(sqlite_api)
    await frame(ws)
    (sub,) = feed.subscribers
    assert sub.transport is not None  # frames go straight to the connection
    # as if the client had stopped reading long ago: its unsent bytes pass the limit
    monkeypatch.setattr(feed_mod, "MAX_UNSENT_BYTES", -1)
    feed.push(lambda s: True, {"type": "hint"})
    assert sub not in feed.subscribers
    msg = await asyncio.wait_for(ws.receive(), 2)
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert msg.data == feed_mod.SLOW_CONSUMER
    assert msg.extra == "too slow; resume"


async def test_one_encoded_frame_is_shared_by_every_socket_of_an_audience(sqlite_api):
    """The fan-out writes the same bytes object to each socket: encoded once per group."""
    feed = sqlite_api.app[CONSOLE].feed
    agents = [await connect(sqlite_api) for _ in range(3)]
    dept = await connect(sqlite_api, "urban")
    for ws in (*agents, dept):
        await frame(ws)
    written: list[tuple[str, int]] = []
    for sub in feed.subscribers:
        real = sub.transport

        class Spy:
            def __init__(self, real, who):  # type: ignore[no-untyped-def]
                self.real, self.who = real, who

            def write(self, data: bytes) -> None:
                written.append((self.who, id(data)))
                self.real.write(data)

            def __getattr__(self, name):  # type: ignore[no-untyped-def]
                return getattr(self.real, name)

        sub.transport = Spy(real, sub.username)
    t = await sqlite_api.new_ticket()
    for ws in agents:
        await until_key(ws, f"ticket:{t['number']}")
    agent_writes = {ident for who, ident in written if who == "agent"}
    assert len([w for w in written if w[0] == "agent"]) == 3
    assert len(agent_writes) == 1  # one frame, three sockets
    assert not [w for w in written if w[0] == "urban"]  # not their audience
    for ws in (*agents, dept):
        await ws.close()


async def test_logout_closes_the_sessions_sockets(sqlite_api):
    ws = await connect(sqlite_api)
    await frame(ws)
    r = await sqlite_api.post("/api/v1/auth/logout", {})
    assert r.status == 204
    msg = await asyncio.wait_for(ws.receive(), 2)
    assert ws.closed, msg


async def test_socket_needs_a_session_and_the_same_origin(sqlite_api):
    r = await sqlite_api.client.get("/api/v1/console/ws")
    assert r.status == 401
    headers = await sqlite_api.headers("agent", {"Origin": "https://evil.example"})
    r = await sqlite_api.client.get(
        "/api/v1/console/ws",
        headers={**headers, "Upgrade": "websocket", "Connection": "Upgrade",
                 "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="},
    )  # fmt: skip
    assert r.status == 403
    assert (await r.json())["type"] == "/problems/forbidden"


async def test_two_instances_on_postgresql_give_agents_the_same_live_queue(
    aiohttp_client, pg_url, tmp_path
):
    """Two service instances, one PostgreSQL: a ticket created and dispatched on one
    reaches the agents and the department connected to the other, live."""
    from hotline.app import create_app
    from hotline.bootstrap import build_deps
    from tests.conftest import Api, _seed, make_settings

    apis = []
    for name in ("a", "b"):
        settings = make_settings(tmp_path / name, pg_url)
        deps = build_deps(settings)
        if not apis:
            await deps.db.create_all()
        app = create_app(settings, deps=deps, migrate=False, watch_deadlines=False)
        apis.append(Api(await aiohttp_client(app), app))
    await _seed(apis[0].app[DEPS])
    for api in apis[1:]:
        await api.app[DEPS].catalog.reload(api.app[DEPS].db)
    a, b = apis
    agent_on_b = await connect(b)
    dept_on_b = await connect(b, "urban")
    assert (await frame(agent_on_b))["instance"] == b.app[CONSOLE].feed.instance
    await frame(dept_on_b)
    t = await a.new_ticket(title="跨实例")
    key = f"ticket:{t['number']}"
    ev = await until_key(agent_on_b, key)
    assert ev["item"]["title"] == "跨实例"
    await a.move(t["number"], "dispatch")
    assert (await until_key(agent_on_b, key, "remove"))["seq"] > ev["seq"]
    assert (await until_key(dept_on_b, key))["item"]["action"] == "sign"
    await agent_on_b.close()
    await dept_on_b.close()


async def test_with_nobody_watching_the_feed_reads_nothing_and_catches_up_on_connect(api):
    """No console attached: tickets must not cost queue re-reads; the first console to
    connect still gets the whole queue, and a stale resume falls back to a snapshot."""
    feed = api.app[CONSOLE].feed
    async with feed.fresh():
        pass
    seq_before = feed.seq
    calls = 0
    real_refresh = feed.refresh

    async def counting(pending):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return await real_refresh(pending)

    feed.refresh = counting  # type: ignore[method-assign]
    made = [await api.new_ticket() for _ in range(3)]
    await asyncio.sleep(0.2)
    assert calls == 0 and feed.seq == seq_before  # nothing re-read for nobody
    ws = await connect(api, instance=feed.instance, after=seq_before)
    first = await frame(ws)
    # the catch-up read happens before the first frame: a resume carries the three
    if first["type"] == "resume":
        keys = {e["key"] for e in first["events"] if e["op"] == "upsert"}
    else:
        keys = {i["key"] for i in first["items"]}
    assert {f"ticket:{t['number']}" for t in made} <= keys
    await ws.close()


# ---------------------------------------------------------------- batching and pacing


async def events_until(ws, keys: set[str]) -> tuple[list[dict[str, Any]], int]:  # type: ignore[no-untyped-def]
    """Every event received until all `keys` have arrived as upserts, and in how many
    frames; the events in arrival order."""
    got: list[dict[str, Any]] = []
    frames = 0
    while not keys <= {e["key"] for e in got if e["op"] == "upsert"}:
        f = await frame(ws)
        if f["type"] == "events":
            frames += 1
            got += f["events"]
    return got, frames


async def test_a_burst_arrives_complete_once_each_and_in_order(api):
    ws = await connect(api)
    snap = await frame(ws)
    made = await asyncio.gather(*(api.new_ticket(title=f"批量{i}") for i in range(20)))
    keys = {f"ticket:{t['number']}" for t in made}
    got, _ = await events_until(ws, keys)
    seqs = [e["seq"] for e in got]
    assert seqs == sorted(set(seqs)) and seqs[0] > snap["seq"]  # increasing, no repeat
    assert sorted(e["key"] for e in got) == sorted(keys)  # each item once, none missing
    assert {e["item"]["title"] for e in got} == {f"批量{i}" for i in range(20)}
    await ws.close()


async def test_events_announced_while_the_fan_out_is_paced_go_out_as_one_frame(
    sqlite_api, monkeypatch
):
    """After an expensive fan-out the next batch waits (FANOUT_PACE): what the bus
    announces meanwhile is read once and written to each socket as one frame."""
    from hotline.console import feed as feed_mod

    monkeypatch.setattr(feed_mod, "FANOUT_PACE", 1e9)  # any fan-out counts as expensive
    monkeypatch.setattr(feed_mod, "FANOUT_MAX_GAP_S", 1.5)
    ws = await connect(sqlite_api)
    await frame(ws)
    first = await sqlite_api.new_ticket(title="先到")
    await events_until(ws, {f"ticket:{first['number']}"})  # sets the pace: 1.5 s
    made = [await sqlite_api.new_ticket(title=f"随后{i}") for i in range(4)]
    f = await frame(ws)
    assert f["type"] == "events"
    assert {e["key"] for e in f["events"]} == {f"ticket:{t['number']}" for t in made}
    seqs = [e["seq"] for e in f["events"]]
    assert seqs == sorted(set(seqs))
    await ws.close()


async def test_reconnecting_after_part_of_a_burst_resumes_exactly_the_rest(api):
    ws = await connect(api)
    snap = await frame(ws)
    instance, last = snap["instance"], snap["seq"]
    burst = asyncio.gather(*(api.new_ticket(title=f"断线{i}") for i in range(12)))
    applied: list[dict[str, Any]] = []
    while not applied:  # take the first frame of the burst, then drop the connection
        f = await frame(ws)
        applied += [e for e in f.get("events", []) if e["seq"] > last]
    last = applied[-1]["seq"]
    await ws.close()
    made = await burst
    keys = {f"ticket:{t['number']}" for t in made}
    await settled(api, *keys)
    ws = await connect(api, instance=instance, after=last)
    first = await frame(ws)
    assert first["type"] == "resume"
    assert all(e["seq"] > last for e in first["events"])
    applied += first["events"]
    seqs = [e["seq"] for e in applied]
    assert seqs == sorted(set(seqs))
    assert sorted(e["key"] for e in applied) == sorted(keys)  # nothing lost, nothing twice
    await ws.close()


async def test_a_console_that_stops_reading_is_cut_off_without_holding_up_the_others(
    sqlite_api,
):
    from hotline.console import feed as feed_mod

    feed = sqlite_api.app[CONSOLE].feed
    slow = await connect(sqlite_api)
    snap = await frame(slow)
    (stalled,) = feed.subscribers
    brisk = await connect(sqlite_api)
    await frame(brisk)
    real = stalled.transport

    class Unread:
        """The client stopped reading: its unsent bytes are past the limit."""

        def get_write_buffer_size(self) -> int:
            return feed_mod.MAX_UNSENT_BYTES + 1

        def __getattr__(self, name):  # type: ignore[no-untyped-def]
            return getattr(real, name)

    stalled.transport = Unread()  # type: ignore[assignment]
    one = await sqlite_api.new_ticket(title="一")
    await events_until(brisk, {f"ticket:{one['number']}"})
    msg = await asyncio.wait_for(slow.receive(), 2)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == feed_mod.SLOW_CONSUMER
    assert stalled not in feed.subscribers and len(feed.subscribers) == 1
    two = await sqlite_api.new_ticket(title="二")
    await events_until(brisk, {f"ticket:{two['number']}"})  # the others go on
    # the cut-off console resumes where it was and misses nothing
    again = await connect(sqlite_api, instance=snap["instance"], after=snap["seq"])
    first = await frame(again)
    assert first["type"] == "resume"
    assert [e["key"] for e in first["events"]] == [
        f"ticket:{one['number']}",
        f"ticket:{two['number']}",
    ]
    for ws in (slow, brisk, again):
        await ws.close()


# ---------------------------------------------------------------- the live read path


async def test_the_live_path_reads_the_same_items_as_a_full_reread(api):
    """The live re-read (a thread of its own on SQLite, a kept autocommit connection
    on PostgreSQL) must give exactly what the safety net's full re-read gives: a
    reconcile right after finds nothing to change."""
    ws = await connect(api)
    await frame(ws)
    a = await api.new_ticket(title="普通")
    b = await api.new_ticket(title="紧急", urgency="emergency")
    await api.move(a["number"], "dispatch", {"department": "urban-mgmt"})
    keys = {f"ticket:{a['number']}", f"ticket:{b['number']}"}
    seen: set[tuple[str, str]] = set()
    while not {(f"ticket:{a['number']}", "remove"), (f"ticket:{b['number']}", "upsert")} <= seen:
        seen |= {(e["key"], e["op"]) for e in (await frame(ws)).get("events", [])}
    feed = api.app[CONSOLE].feed
    assert feed.mirror[f"ticket:{a['number']}"]["audience"] == "dept:urban-mgmt"
    assert feed.mirror[f"ticket:{b['number']}"]["emergency"] is True
    assert feed.mirror[f"ticket:{b['number']}"]["due_at"] is not None
    changed = await feed.reconcile()
    assert not [e for e in changed if e["key"] in keys]
    await ws.close()


async def test_the_live_read_survives_its_connection_being_killed(api, caplog):
    """PostgreSQL restarted or the backend killed: the next re-read notices on its
    first try and reads again on a new connection, without waiting for a reconcile."""
    deps = api.app[DEPS]
    if deps.db.is_sqlite:
        return  # an SQLite connection cannot be killed from outside
    feed = api.app[CONSOLE].feed
    reconciles = 0

    async def no_reconcile() -> list[dict[str, Any]]:
        nonlocal reconciles
        reconciles += 1
        return []

    feed.reconcile = no_reconcile  # type: ignore[method-assign]
    ws = await connect(api)
    await frame(ws)
    one = await api.new_ticket(title="之前")
    await until_key(ws, f"ticket:{one['number']}")
    assert feed._live is not None
    raw = await feed._live.get_raw_connection()
    pid = raw.driver_connection.get_server_pid()  # type: ignore[union-attr]
    async with deps.db.write() as conn:
        await conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    two = await api.new_ticket(title="之后")
    ev = await until_key(ws, f"ticket:{two['number']}")
    assert ev["item"]["title"] == "之后"
    assert reconciles == 0
    assert "retrying on a new connection" in caplog.text
    await ws.close()
