"""The phone line end to end through the FreeSWITCH simulator: a caller dials 12345, the
simulator connects the call to our outbound socket server, the IVR greets, the ACD
rings agents' simulated phones with `originate` over the inbound socket and bridges.
Simulated time runs 50x faster than real time (`SCALE`)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from zoneinfo import ZoneInfo

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
    await eventually(lambda: caller.partner is not None, what="legs bridged")

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
    await eventually(lambda: "record_session_path" in caller.variables, what="recording")
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
        await eventually(lambda: caller.partner is not None, what="legs bridged")

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
    aiohttp_client, tmp_path, db_url
) -> None:  # type: ignore[no-untyped-def]
    async with phone_rig(aiohttp_client, tmp_path, db_url, acd_queue_capacity=1) as rig:
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


async def test_emergency_from_the_agent_is_an_attended_three_way_call(rig: PhoneRig) -> None:
    rig.sim.add_agent(AgentPhone("119", answer_after=2.0))
    r = await rig.api.post("/api/v1/agents/me/login", {"extension": "1001"})
    assert r.status == 200, await r.text()
    caller = await rig.call(caller_number="13800138004")
    await eventually(lambda: rig.agent_state("agent") == "on_call", what="agent talking")
    await eventually(lambda: caller.partner is not None, what="legs bridged")
    agent_leg = caller.partner
    assert agent_leg is not None

    r = await rig.api.post(
        f"/api/v1/calls/{caller.uuid}/emergency", {"line": "119", "summary": "厨房起火"}
    )
    assert r.status == 200, await r.text()
    body = await r.json()
    assert (body["line"], body["route"], body["outcome"]) == ("119", "primary", "connected")
    # while 119 rang, the caller heard the emergency notice, not silence
    assert any(arg.endswith("/emergency_notice.wav") for _, arg in caller.apps)
    await eventually(lambda: len(rig.sim.rooms) == 1, what="conference room")
    ((room, members),) = rig.sim.rooms.items()
    centre = next(ch for ch in rig.sim.channels.values() if ch.destination == "user/119")
    await eventually(lambda: len(members) == 3, what="three in the room")
    assert members == {caller.uuid, agent_leg.uuid, centre.uuid}
    assert room == f"emergency-119-{caller.uuid}"

    rig.sim.hangup(agent_leg)  # the agent may leave: caller and 119 stay together
    await eventually(lambda: rig.agent_state("agent") != "on_call", what="agent released")
    assert caller.up and centre.up and members == {caller.uuid, centre.uuid}

    rig.sim.hangup(caller)
    await eventually(lambda: not centre.up, what="the room closed after the caller")
    (handoff,) = await rig.line.desk.handoffs_for(caller.uuid)
    assert (handoff["outcome"], handoff["agent"], handoff["route"]) == (
        "connected",
        "agent",
        "primary",
    )


async def test_emergency_key_on_the_card_line_bridges_the_caller_to_119(rig: PhoneRig) -> None:
    rig.sim.add_agent(AgentPhone("119", answer_after=1.0))
    caller = await rig.call(destination="12345-2", presses=["9", "2"])
    await eventually(
        lambda: caller.partner is not None and caller.partner.destination == "user/119",
        what="caller with the fire brigade",
    )
    centre = caller.partner
    assert centre is not None and centre.up
    assert not rig.acd.calls  # an emergency caller never waits in the agents' queue
    handoffs: list = []

    async def recorded() -> bool:
        handoffs[:] = await rig.line.desk.handoffs_for(caller.uuid)
        return bool(handoffs) and handoffs[0]["outcome"] != "pending"

    while not await recorded():  # noqa: ASYNC110 (polling the store)
        await asyncio.sleep(0.02)
    assert [(h["line"], h["outcome"], h["agent"]) for h in handoffs] == [("119", "connected", None)]

    rig.sim.hangup(centre)  # the centre finishes: the caller is not left in silence
    await eventually(lambda: not caller.up, what="caller released")


async def test_a_lost_card_reported_by_phone_is_frozen_and_the_receipt_read_back(
    rig: PhoneRig,
) -> None:
    from citizen_card import service as svc
    from hotline.appkeys import CARD_DEPS
    from tests.citizen_card.test_partner_api import PIN, an_id_number, resident_with_card

    _, card = await rig.api_card(resident_with_card)
    no = card["card_no"]
    id6 = an_id_number(1)[-6:].replace("X", "*")  # the check character X is keyed as *
    caller = await rig.call(destination="12345-2", presses=["2", no + "#", id6 + "#", PIN + "#"])
    await eventually(lambda: not caller.up, limit_s=10, what="call finished")

    card_deps = rig.api.app[CARD_DEPS]
    assert (await svc.get_card(card_deps, no)).status == "lost"
    async with card_deps.read() as conn:
        receipt = (
            await conn.execute(
                sa.select(svc.receipt_t.c.number).where(svc.receipt_t.c.card_no == no)
            )
        ).scalar_one()
    played = [arg.removeprefix("file_string://") for app, arg in caller.apps if app == "playback"]
    files = [f.rsplit("/", 1)[-1] for arg in played for f in arg.split("!")]
    spoken = "".join(f[6] for f in files[files.index("card_frozen.wav") :] if f[:6] == "digit_")
    assert receipt.isdigit() and spoken.startswith(receipt)  # read back, digit by digit
    assert "card_frozen.wav" in files
    # nobody keyed digits into a channel variable that FreeSWITCH would log
    assert no not in caller.variables.values() and PIN not in caller.variables.values()


async def test_the_caller_who_stays_after_the_agent_hangs_up_rates_the_call(
    aiohttp_client, tmp_path, db_url
) -> None:  # type: ignore[no-untyped-def]
    agents = [AgentPhone("1001", answer_after=1.0)]
    async with phone_rig(aiohttp_client, tmp_path, db_url, agents=agents, ivr_survey=True) as rig:
        r = await rig.api.post("/api/v1/agents/me/login", {"extension": "1001"})
        assert r.status == 200
        ticket = await rig.api.new_ticket()
        caller = await rig.call(caller_number="13800138005", presses=["2"])
        await eventually(lambda: rig.agent_state("agent") == "on_call", what="talking")
        r = await rig.api.post(f"/api/v1/calls/{caller.uuid}/ticket", {"ticket": ticket["number"]})
        assert r.status == 200, await r.text()
        assert caller.partner is not None

        rig.sim.hangup(caller.partner)  # the agent hangs up first; the caller stays
        await eventually(lambda: not caller.up, what="survey done")
        row = await store.get_call(rig.deps, caller.uuid)
        assert row is not None
        (survey,) = [e["data"] for e in row["events"] if e["kind"] == "survey"]
        assert survey == {"score": 2, "satisfaction": "basically_satisfied"}
        r = await rig.api.get(f"/api/v1/tickets/{ticket['number']}/events")
        trail = [e for e in (await r.json())["items"] if e["action"] == "call_survey"]
        assert [e["data"]["satisfaction"] for e in trail] == ["basically_satisfied"]


async def test_after_hours_the_caller_leaves_a_voicemail_that_becomes_a_callback(
    aiohttp_client, tmp_path, db_url
) -> None:  # type: ignore[no-untyped-def]
    # staffed half an hour a day, six hours from now: this call arrives outside it
    hour = (datetime.now(ZoneInfo("Asia/Shanghai")).hour + 6) % 24
    hours = f"{hour:02d}:00-{hour:02d}:30"
    async with phone_rig(aiohttp_client, tmp_path, db_url, ivr_hours=hours) as rig:
        caller = await rig.call(caller_number="13800138006", presses=["2"], speaks_for=4.0)
        await eventually(lambda: not caller.up, what="message left")

        row = await store.get_call(rig.deps, caller.uuid)
        assert row is not None and row["state"] == "voicemail"
        assert row["recording"].startswith(str(tmp_path / "voicemail"))
        assert ("record", f"{row['recording']} 120 200") in caller.apps
        r = await rig.api.get("/api/v1/callbacks?status=open")
        (cb,) = (await r.json())["callbacks"]
        assert (cb["call"], cb["reason"], cb["caller"]) == (caller.uuid, "voicemail", "138****8006")
        assert not rig.acd.calls  # nobody was put in the agents' queue


async def test_hold_and_blind_transfer_from_the_console_move_the_real_legs(rig: PhoneRig) -> None:
    r = await rig.api.post("/api/v1/agents/me/login", {"extension": "1001"})
    assert r.status == 200
    await rig.login("bob", "1002")
    caller = await rig.call(caller_number="13800138007")
    await eventually(lambda: rig.agent_state("agent") == "on_call", what="agent talking")
    await eventually(lambda: caller.partner is not None, what="legs bridged")
    alice_leg = caller.partner
    assert alice_leg is not None and alice_leg.destination == "user/1001"

    r = await rig.api.post(f"/api/v1/calls/{caller.uuid}/hold")
    assert r.status == 200 and (await r.json())["state"] == "held"
    # holding the agent's side is what makes FreeSWITCH play hold music to the caller
    await eventually(lambda: "CHANNEL_HOLD" in alice_leg.events, what="held")
    r = await rig.api.post(f"/api/v1/calls/{caller.uuid}/unhold")
    assert r.status == 200 and (await r.json())["state"] == "talking"
    await eventually(lambda: "CHANNEL_UNHOLD" in alice_leg.events, what="unheld")

    r = await rig.api.post(
        f"/api/v1/calls/{caller.uuid}/transfer", {"mode": "blind", "target": "agent:bob"}
    )
    assert r.status == 200, await r.text()
    await eventually(
        lambda: caller.partner is not None and caller.partner.destination == "user/1002",
        what="caller with bob",
    )
    assert caller.up and not alice_leg.up
    await eventually(lambda: rig.acd.calls[caller.uuid].agent == "bob", what="bob's call")
    assert rig.agent_state("agent") in ("wrap_up", "available")


async def test_serve_demo_runs_the_simulator_in_process_with_agents_logged_in(
    aiohttp_client, tmp_path, sqlite_url
) -> None:  # type: ignore[no-untyped-def]
    from hotline.app import create_app
    from hotline.appkeys import PHONE_LINE
    from hotline.telephony.simulator import CallerScript
    from tests.conftest import make_settings

    settings = make_settings(tmp_path, sqlite_url, esl_listen="127.0.0.1:0", acd_wrap_up_s=0)
    client = await aiohttp_client(create_app(settings, demo=True, watch_deadlines=False))
    line = client.app[PHONE_LINE]
    await eventually(lambda: len(line.service.acd.agents) == 4, what="demo agents logged in")
    sim = line.simulator
    assert sim is not None and line.esl is not None and line.esl.inbound.connected
    assert sim.socket_target == (line.esl.server.host, line.esl.server.port)

    caller = await sim.place_call(CallerScript(caller_number="13800138009"))
    await eventually(lambda: caller.partner is not None, limit_s=15, what="a demo agent answers")
    metrics = await (await client.get("/metrics")).text()
    assert (
        "hotline_calls_answered_total" in metrics and 'hotline_agents{state="on_call"}' in metrics
    )
    sim.hangup(caller)
    await eventually(lambda: caller.uuid not in line.service.calls, what="call over")
