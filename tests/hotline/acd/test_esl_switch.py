"""The ACD's Switch over the event socket, against the FreeSWITCH simulator: what goes on
the wire for ringing, cancelling and refusing, and how events become ACD facts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from hotline.acd.esl_switch import EslSwitch
from hotline.acd.switch import RingResult, SwitchError
from hotline.phone.entry import Hours
from hotline.telephony.esl_inbound import Backoff, InboundESL
from hotline.telephony.simulator import AgentPhone, FreeSwitchSimulator
from tests.hotline.telephony.test_esl_refusals import OK, job_event, job_of, switch_with
from ticketing.workdays import WorkCalendar

SCALE = 0.02


@pytest.fixture
async def rig() -> AsyncIterator[tuple[FreeSwitchSimulator, EslSwitch]]:
    sim = FreeSwitchSimulator(time_scale=SCALE)
    await sim.start()
    esl = InboundESL("127.0.0.1", sim.port, backoff=Backoff(0.02, 0.1))
    switch = EslSwitch(esl, {})
    await switch.start()
    await esl.start()
    async with asyncio.timeout(5):
        await esl.wait_connected()
    yield sim, switch
    await switch.close()
    await esl.stop()
    await sim.stop()


async def test_ring_all_connects_the_first_to_answer_and_cancels_the_rest(rig) -> None:  # type: ignore[no-untyped-def]
    sim, switch = rig
    sim.add_agent(AgentPhone("1001", answer_after=3.0))
    sim.add_agent(AgentPhone("1002", answer_after=1.0))
    ring = await switch.ring(["user/1001", "user/1002"], 10, caller_id="+8613800138000")

    assert (ring.result, ring.index) == (RingResult.ANSWERED, 1)
    answered = sim.channels[ring.leg]  # the leg carries the uuid we gave it
    assert answered.destination == "user/1002" and answered.answered_us
    assert answered.variables["origination_caller_id_number"] == "+8613800138000"
    await asyncio.sleep(0.05)
    (loser,) = [ch for ch in sim.finished if ch.destination == "user/1001"]
    assert loser.hangup_cause == "LOSE_RACE"
    assert [ch.destination for ch in sim.channels.values()] == ["user/1002"]


async def test_a_ring_cancelled_because_the_caller_left_hangs_up_the_phone(rig) -> None:  # type: ignore[no-untyped-def]
    sim, switch = rig
    sim.add_agent(AgentPhone("1001", answer_after=100.0))
    task = asyncio.ensure_future(switch.ring(["user/1001"], 60))
    while not sim.channels:  # noqa: ASYNC110 (polling the simulator)
        await asyncio.sleep(0.01)
    (leg,) = sim.channels.values()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not leg.up and leg.hangup_cause == "ORIGINATOR_CANCEL"


@pytest.mark.parametrize(
    ("behaviour", "result", "cause"),
    [
        ("no_answer", RingResult.NO_ANSWER, "NO_ANSWER"),
        ("busy", RingResult.BUSY, "USER_BUSY"),
        ("reject", RingResult.REJECTED, "CALL_REJECTED"),
        ("unregistered", RingResult.FAILED, "USER_NOT_REGISTERED"),
    ],
)
async def test_a_phone_that_does_not_answer_says_why(rig, behaviour, result, cause) -> None:  # type: ignore[no-untyped-def]
    sim, switch = rig
    sim.add_agent(AgentPhone("1001", behaviour=behaviour))
    ring = await switch.ring(["user/1001"], 2)
    assert (ring.result, ring.cause, ring.leg) == (result, cause, None)


async def test_the_end_of_an_originated_leg_reaches_the_acd_with_its_cause(rig) -> None:  # type: ignore[no-untyped-def]
    sim, switch = rig
    sim.add_agent(AgentPhone("1001", answer_after=0.5))
    ring = await switch.ring(["user/1001"], 5)
    assert ring.leg is not None
    waiter = asyncio.ensure_future(switch.wait_hangup(ring.leg))
    await asyncio.sleep(0.02)
    assert not waiter.done()
    sim.hangup(sim.channels[ring.leg], "USER_BUSY")
    assert await asyncio.wait_for(waiter, 2) == "USER_BUSY"
    assert await switch.wait_hangup(ring.leg) == "USER_BUSY"  # asked again: at once


async def test_an_originate_whose_result_never_comes_fails_and_its_leg_is_killed(  # type: ignore[no-untyped-def]
    rig, monkeypatch
) -> None:
    """Before: with its BACKGROUND_JOB lost (here: the switch stopped sending it to
    us, as after a module reload), the ring waited forever and the answered phone
    stayed off the hook in a parked call nobody owned."""
    sim, switch = rig
    monkeypatch.setattr("hotline.acd.esl_switch.ORIGINATE_MARGIN_S", 0.3)
    for listener in sim.listeners:
        listener.events.discard("BACKGROUND_JOB")
    sim.add_agent(AgentPhone("1001", answer_after=0.5))  # x SCALE: answers at once
    ring = await asyncio.wait_for(switch.ring(["user/1001"], 0.1), 3)
    assert (ring.result, ring.cause, ring.leg) == (RingResult.FAILED, "SWITCH_DISCONNECTED", None)
    (leg,) = sim.finished
    assert leg.answered_us and leg.hangup_cause == "ORIGINATOR_CANCEL"
    assert not sim.channels and not switch._orphans and switch.esl._jobs == {}


@pytest.mark.parametrize(
    "dial", ["user/1001\n\napi hupall", "user/1001 &park()", "{origination_uuid=x}user/1001"]
)
async def test_nothing_that_could_smuggle_a_command_reaches_the_switch(rig, dial) -> None:  # type: ignore[no-untyped-def]
    sim, switch = rig
    sim.add_agent(AgentPhone("1001"))
    with pytest.raises(SwitchError):
        await switch.ring([dial], 5)
    with pytest.raises(SwitchError):
        await switch.ring(["user/1001"], 5, variables={"a": "b,c=d"})
    with pytest.raises(SwitchError):
        await switch.play("abc\n\napi hupall", "/tmp/a.wav")
    assert sim.agents["1001"].offered == 0 and not sim.channels


def test_working_hours_follow_the_official_calendar() -> None:
    tz = ZoneInfo("Asia/Shanghai")
    open_ = Hours.parse("08:30-17:30").test(WorkCalendar(), tz)
    assert open_(datetime(2026, 9, 30, 9, 0, tzinfo=tz))  # a Wednesday
    assert not open_(datetime(2026, 9, 30, 18, 0, tzinfo=tz))  # after hours
    assert not open_(datetime(2026, 10, 1, 10, 0, tzinfo=tz))  # National Day
    assert not open_(datetime(2026, 10, 3, 10, 0, tzinfo=tz))  # a Saturday
    always = Hours.parse("always").test(WorkCalendar(), tz)
    assert always(datetime(2026, 10, 1, 3, 0, tzinfo=tz))


async def test_a_late_ok_for_an_originate_we_gave_up_on_kills_the_leg(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The give-up's uuid_kill can come before the leg exists (a busy switch had not
    started the job yet: "no such channel"); the originate then rings and is answered
    into a parked leg nobody owns. Before: its late +OK was dropped silently."""
    monkeypatch.setattr("hotline.acd.esl_switch.ORIGINATE_MARGIN_S", 0.2)
    jobs: list[str] = []
    kills: list[bytes] = []
    writers: list[asyncio.StreamWriter] = []

    async def script(cmd: bytes, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        if cmd.startswith(b"bgapi originate"):
            jobs.append(job_of(cmd))
            writer.write(
                b"Content-Type: command/reply\nReply-Text: +OK Job-UUID: %b\n\n" % jobs[-1].encode()
            )
        elif cmd.startswith(b"api uuid_kill"):
            kills.append(cmd)
            body = b"-ERR No such channel!\n" if len(kills) == 1 else b"+OK\n"
            writer.write(
                b"Content-Type: api/response\nContent-Length: %d\n\n%b" % (len(body), body)
            )
        else:
            writer.write(OK)

    async with switch_with(script) as (esl, _):
        switch = EslSwitch(esl, {})
        await switch.start()
        ring = await asyncio.wait_for(switch.ring(["user/1001"], 0.1), 3)
        assert (ring.result, ring.cause) == (RingResult.FAILED, "SWITCH_DISCONNECTED")
        (leg_uuid,) = {k.split()[2].decode() for k in kills}
        writers[-1].write(job_event(jobs[0], f"+OK {leg_uuid}\n"))  # it rang, it answered
        async with asyncio.timeout(3):
            while len(kills) < 2:  # noqa: ASYNC110 (polling a plain attribute)
                await asyncio.sleep(0.01)
            while switch._tasks:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert kills == [f"api uuid_kill {leg_uuid} ORIGINATOR_CANCEL\n\n".encode()] * 2
        assert not switch._orphans and esl.late_job_results == 1
        await switch.close()
