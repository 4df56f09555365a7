"""The phone line when the switch misbehaves or is busy: the inbound socket drops with calls
in progress, the switch sends garbage, two hundred callers arrive at once."""

from __future__ import annotations

import asyncio
import logging

import pytest

from hotline.calls import store
from hotline.telephony.simulator import AgentPhone
from tests.hotline.acd.phone_rig import eventually, phone_rig

GARBLED = b"Content-Length: banana\n\nnot an event\n\n"


async def test_inbound_socket_drop_with_calls_in_progress_keeps_the_acd_consistent(
    aiohttp_client, tmp_path, sqlite_url
) -> None:  # type: ignore[no-untyped-def]
    agents = [AgentPhone("1001", answer_after=1.0), AgentPhone("1002", answer_after=1.0)]
    async with phone_rig(aiohttp_client, tmp_path, sqlite_url, agents=agents) as rig:
        await rig.login("alice", "1001")
        talking = await rig.call(caller_number="13800138010")
        await eventually(lambda: rig.agent_state("alice") == "on_call", what="alice talking")
        # the ACD marks alice on the call before the switch has bridged the two legs
        await eventually(lambda: talking.partner is not None, what="legs bridged")
        agent_leg = talking.partner
        assert agent_leg is not None
        inbound = rig.line.esl.inbound  # type: ignore[union-attr]

        for listener in list(rig.sim.listeners):  # the switch drops our inbound socket
            listener.close()
        rig.sim.hangup(agent_leg)  # ... and alice hangs up while nobody listens
        await rig.login("bob", "1002")
        waiting = await rig.call(caller_number="13800138011")  # arrives meanwhile

        await eventually(lambda: inbound.connects == 2, what="reconnected")
        # the hang-up we missed is found on reconnect: the call ends, alice is free
        await eventually(lambda: talking.uuid not in rig.acd.calls, what="call 1 ended")
        assert rig.agent_state("alice") in ("wrap_up", "available")
        assert rig.line.esl.switch.missed_hangups == 1  # type: ignore[union-attr]
        row = await store.get_call(rig.deps, talking.uuid)
        assert row is not None and row["state"] == "ended" and row["agent"] == "alice"
        # the caller who arrived during the outage still reaches an agent
        await eventually(
            lambda: waiting.partner is not None and waiting.partner.up, what="call 2 answered"
        )
        assert rig.acd.calls[waiting.uuid].state == "talking"
        assert sum(a["state"] == "on_call" for a in rig.acd.agents_view()) == 1


async def test_garbled_frames_from_the_switch_do_not_take_the_service_down(
    aiohttp_client, tmp_path, sqlite_url, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING)
    agents = [AgentPhone("1001", answer_after=1.0)]
    async with phone_rig(aiohttp_client, tmp_path, sqlite_url, agents=agents) as rig:
        esl = rig.line.esl
        assert esl is not None
        for listener in list(rig.sim.listeners):
            listener.send(GARBLED)  # the inbound connection receives garbage
        await eventually(lambda: esl.inbound.connects == 2, what="inbound reconnected")

        # a peer on the outbound port that does not speak ESL
        reader, writer = await asyncio.open_connection(esl.server.host, esl.server.port)
        assert await reader.readuntil(b"\n\n") == b"connect\n\n"
        writer.write(GARBLED)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # that connection is closed
        writer.close()
        assert esl.server.calls_failed_setup == 1
        assert "garbled frame" in caplog.text

        r = await rig.api.client.get("/healthz")
        assert r.status == 200
        await rig.login("alice", "1001")
        caller = await rig.call()
        await eventually(lambda: rig.agent_state("alice") == "on_call", what="a call still works")
        await eventually(lambda: caller.partner is not None, what="legs bridged")
        assert caller.partner is not None


async def test_two_hundred_calls_at_once_are_all_answered(
    aiohttp_client, tmp_path, sqlite_url
) -> None:  # type: ignore[no-untyped-def]
    agents = [AgentPhone(str(1001 + i), answer_after=0.5, talk_time=1.0) for i in range(20)]
    async with phone_rig(
        aiohttp_client, tmp_path, sqlite_url, agents=agents, acd_wrap_up_s=0.0, record_calls=False
    ) as rig:
        for a in agents:
            await rig.login(f"agent-{a.extension}", a.extension)
        callers = await asyncio.gather(*(rig.call(caller_number=f"139{i:08d}") for i in range(200)))
        await eventually(
            lambda: not any(c.up for c in callers), limit_s=120, what="every call finished"
        )
        assert not rig.acd.calls
        kpis = rig.acd.kpis()
        assert (kpis["offered"], kpis["answered"], kpis["abandoned"]) == (200, 200, 0)
        assert rig.line.esl.server.calls_started == 200  # type: ignore[union-attr]
        assert sum(a.answered for a in agents) == 200
        metrics = await (await rig.api.client.get("/metrics")).text()
        assert "hotline_calls_answered_total 200.0" in metrics


async def test_with_no_freeswitch_reachable_the_service_runs_and_keeps_trying(
    aiohttp_client, tmp_path, sqlite_url, unused_tcp_port
) -> None:  # type: ignore[no-untyped-def]
    from hotline.app import create_app
    from hotline.appkeys import PHONE_LINE
    from tests.conftest import make_settings

    settings = make_settings(
        tmp_path,
        sqlite_url,
        esl_host="127.0.0.1",
        esl_port=unused_tcp_port,  # nothing listens there
        esl_listen="127.0.0.1:0",
    )
    client = await aiohttp_client(create_app(settings, watch_deadlines=False))
    line = client.app[PHONE_LINE].esl
    assert line is not None
    await eventually(lambda: line.inbound.backoff.attempt >= 2, what="retrying")
    assert line.status()["inbound"] == "connecting"
    assert line.inbound.last_error == "connection refused"
    assert line.listening  # FreeSWITCH can already send us calls when it comes up
    r = await client.get("/healthz")
    assert r.status == 200
    text = await (await client.get("/metrics")).text()
    assert 'hotline_esl_link_state{state="connecting"} 1.0' in text
    assert "hotline_esl_command_timeouts_total 0.0" in text
    assert "hotline_esl_calls_lost_total 0.0" in text


async def test_a_switch_whose_acl_refuses_us_shows_in_the_line_status_as_access_denied(
    aiohttp_client, tmp_path, sqlite_url
) -> None:  # type: ignore[no-untyped-def]
    from hotline.app import create_app
    from hotline.appkeys import PHONE_LINE
    from hotline.telephony.simulator import FreeSwitchSimulator
    from tests.conftest import make_settings

    async with FreeSwitchSimulator(deny_inbound=True) as sim:
        settings = make_settings(
            tmp_path, sqlite_url, esl_host=sim.host, esl_port=sim.port, esl_listen="127.0.0.1:0"
        )
        client = await aiohttp_client(create_app(settings, watch_deadlines=False))
        line = client.app[PHONE_LINE].esl
        assert line is not None
        await eventually(lambda: line.inbound.refused is not None, what="refused")
        status = line.status()
        assert status["inbound"] == "access_denied"
        assert "ACL" in status["inbound_error"]
        assert (await client.get("/healthz")).status == 200  # the service itself runs on
        # and the operator's alerting sees it on /metrics
        text = await (await client.get("/metrics")).text()
        assert 'hotline_esl_link_state{state="access_denied"} 1.0' in text
        assert 'hotline_esl_link_state{state="connected"} 0.0' in text
