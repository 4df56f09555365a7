"""The phone line end to end through the FreeSWITCH simulator: a caller dials 12345, the
simulator connects the call to our outbound socket server, the IVR greets, the ACD
rings agents' simulated phones with `originate` over the inbound socket and bridges.
Simulated time runs 50x faster than real time (`SCALE`)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from hotline.calls import store
from hotline.telephony.simulator import AgentPhone
from tests.hotline.acd.phone_rig import PhoneRig, eventually, phone_rig
from ticketing import workqueue


async def work_items(rig: PhoneRig) -> set[tuple[str, str]]:
    async with rig.deps.db.read() as conn:
        rows = (await conn.execute(sa.select(workqueue.work_item))).all()
    return {(r.kind, r.ref) for r in rows}


@pytest.fixture
async def rig(aiohttp_client, tmp_path, sqlite_url):  # type: ignore[no-untyped-def]
    agents = [AgentPhone("1001", answer_after=2.0), AgentPhone("1002", answer_after=2.0)]
    async with phone_rig(aiohttp_client, tmp_path, sqlite_url, agents=agents) as r:
        yield r


async def test_a_call_with_no_menu_reaches_an_available_agent_within_15_s(rig: PhoneRig) -> None:
    await rig.login("alice", "1001")
    caller = await rig.call(caller_number="13800138000")
    await eventually(lambda: rig.agent_state("alice") == "on_call", what="alice talking")

    agent_leg = caller.partner
    assert agent_leg is not None and agent_leg.destination == "user/1001"
    waited = rig.sim_seconds((agent_leg.answered_us - caller.created_us) / 1e6)
    assert waited < 15  # GB/T 33358: a live agent within 15 s, greeting included
    # no menu: the greeting played, nothing asked for digits before the agent
    apps = [app for app, _ in caller.apps]
    assert "play_and_get_digits" not in apps
    assert any(arg.endswith("/greeting.wav") for app, arg in caller.apps if app == "playback")
    call = rig.acd.calls[caller.uuid]
    assert (call.state, call.agent, call.agent_leg) == ("talking", "alice", agent_leg.uuid)
    assert caller.variables["record_session_path"].endswith(f"{caller.uuid}.wav")

    rig.sim.hangup(caller)
    await eventually(lambda: rig.agent_state("alice") in ("wrap_up", "available"))
    assert not agent_leg.up  # the agent's leg goes with the caller
    row = await store.get_call(rig.deps, caller.uuid)
    assert row is not None
    assert (row["state"], row["agent"], row["caller"]) == ("ended", "alice", "138****8000")
    assert [e["kind"] for e in row["events"]][:4] == ["queued", "offered", "answered", "ended"]


async def test_an_agent_who_does_not_answer_is_passed_over_for_the_next(
    aiohttp_client, tmp_path, sqlite_url
) -> None:  # type: ignore[no-untyped-def]
    agents = [AgentPhone("1001", behaviour="no_answer"), AgentPhone("1002", answer_after=1.0)]
    async with phone_rig(
        aiohttp_client, tmp_path, sqlite_url, agents=agents, acd_ring_timeout_s=3
    ) as rig:
        await rig.login("alice", "1001")  # idle longest: rung first
        await rig.login("bob", "1002")
        caller = await rig.call()
        await eventually(lambda: rig.agent_state("bob") == "on_call", what="bob talking")

        assert caller.partner is not None and caller.partner.destination == "user/1002"
        assert rig.sim.agents["1001"].offered == 1
        assert rig.acd.agent_view("alice")["missed_rings"] == 1
        assert rig.agent_state("alice") == "available"
        # the ringing leg that nobody answered is gone, not left parked on the switch
        assert not [ch for ch in rig.sim.channels.values() if ch.destination == "user/1001"]
        row = await store.get_call(rig.deps, caller.uuid)
        assert row is not None
        failed = [e["data"] for e in row["events"] if e["kind"] == "ring_failed"]
        assert failed == [{"agents": ["alice"], "result": "no_answer", "cause": "NO_ANSWER"}]


async def test_a_full_queue_turns_the_call_into_a_callback_work_item(
    aiohttp_client, tmp_path, sqlite_url
) -> None:  # type: ignore[no-untyped-def]
    async with phone_rig(aiohttp_client, tmp_path, sqlite_url, acd_queue_capacity=1) as rig:
        first = await rig.call(caller_number="13800138001")
        await eventually(lambda: first.uuid in rig.acd.acd.queue, what="first in line")
        second = await rig.call(caller_number="13800138002")
        await eventually(lambda: not second.up, what="second caller released")

        assert first.up and first.uuid in rig.acd.acd.queue
        heard = [arg for app, arg in second.apps if app == "playback"]
        assert heard[-1].endswith("/callback_confirmed.wav")
        r = await rig.api.get("/api/v1/callbacks?status=open")
        assert r.status == 200
        (cb,) = (await r.json())["callbacks"]
        assert (cb["call"], cb["caller"], cb["reason"]) == (
            second.uuid,
            "138****8002",
            "queue_full",
        )
        assert await work_items(rig) == {("call", first.uuid), ("callback", str(cb["id"]))}
        row = await store.get_call(rig.deps, second.uuid)
        assert row is not None and row["state"] == "callback"


async def test_an_abandoned_call_is_recorded_with_its_wait(rig: PhoneRig) -> None:
    caller = await rig.call(caller_number="13800138003", hangup_after=10.0)
    await eventually(lambda: caller.uuid in rig.acd.acd.queue, what="in line")
    await eventually(lambda: caller.uuid not in rig.acd.calls, what="abandoned")

    row = await store.get_call(rig.deps, caller.uuid)
    assert row is not None
    assert row["state"] == "abandoned" and row["hangup_cause"] == "NORMAL_CLEARING"
    # ten simulated seconds minus the one-second greeting, in real seconds at 1:50
    assert 0.5 * rig.sim.time_scale * 9 < row["wait_s"] < 3 * rig.sim.time_scale * 9 + 1
    abandoned = [e for e in row["events"] if e["kind"] == "abandoned"]
    assert abandoned and abandoned[0]["data"]["wait_s"] == pytest.approx(row["wait_s"], abs=1e-3)
    metrics = await (await rig.api.client.get("/metrics")).text()
    assert "hotline_calls_abandoned_total 1.0" in metrics
    assert "hotline_calls_offered_total 1.0" in metrics
