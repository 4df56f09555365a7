"""The simulator must look like the real switch: same frames, header names, event order.
Then: agent phones, the inbound server, and 200 calls at once through our outbound server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from hotline.telephony.esl_frames import (
    EVENT_TYPES,
    Event,
    Frame,
    FrameParser,
    encode_event_plain,
)
from hotline.telephony.esl_inbound import InboundESL
from hotline.telephony.esl_outbound import CallLeg, OutboundServer
from hotline.telephony.simulator import (
    AgentPhone,
    CallerScript,
    FreeSwitchSimulator,
    SimChannel,
)
from tests.hotline.telephony.transcripts import TRANSCRIPTS, switch_bytes

Handler = Callable[[CallLeg], Awaitable[None]]


class TapParser(FrameParser):
    """A parser that also keeps every frame it completes."""

    __slots__ = ("frames",)

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Frame] = []

    def feed(self, data: bytes) -> list[Frame]:
        out = super().feed(data)
        self.frames.extend(out)
        return out


class Wiretap(OutboundServer):
    """Our outbound server, keeping every frame the (simulated) switch sent."""

    frames: list[Frame]

    def _opened(self, conn) -> None:  # type: ignore[no-untyped-def]
        conn.parser = TapParser()
        self.frames = conn.parser.frames
        super()._opened(conn)


async def run_like_transcript_04(leg: CallLeg) -> None:
    """The call transcript 04 recorded, as our server would drive it."""
    await leg.answer()
    await leg.playback("tone_stream://%(300,100,440);loops=2")
    started = asyncio.ensure_future(leg.wait_event("CHANNEL_EXECUTE"))
    digits = asyncio.ensure_future(
        leg.play_and_get_digits(
            "tone_stream://%(200,0,660)", max_digits=4, timeout_ms=4000, digit_timeout_ms=2000
        )
    )
    await started
    await leg.api(f"uuid_recv_dtmf {leg.uuid} 42#")  # as the recording did
    await digits
    await leg.get_variable("pagd_digits")
    await leg.hangup()


@pytest.fixture
async def wired() -> AsyncIterator[tuple[Wiretap, FreeSwitchSimulator]]:
    server = Wiretap(run_like_transcript_04, port=0, drain_timeout=2)
    await server.start()
    sim = FreeSwitchSimulator(
        socket_target=("127.0.0.1", server.port),
        time_scale=0.01,
        agents=[AgentPhone("1001", answer_after=1, talk_time=2)],
        linger_close_after=1,
    )
    await sim.start()
    yield server, sim
    await sim.stop()
    await server.stop()


def recorded_events(name: str) -> list[Event]:
    frames = FrameParser().feed(switch_bytes(name))
    return [Event.from_frame(f) for f in frames if f.content_type in EVENT_TYPES]


def header_names(ev: Event) -> list[str]:
    return [k for k, _ in ev.items if not k.startswith("variable_")]


async def test_an_outbound_call_looks_like_transcript_04(wired) -> None:  # type: ignore[no-untyped-def]
    server, sim = wired
    ch = await sim.place_call(CallerScript(caller_number="5552000"))
    async with asyncio.timeout(5):
        await ch.gone.wait()
        while server.legs:  # noqa: ASYNC110 (polling a plain attribute)
            await asyncio.sleep(0.01)
    ours = server.frames
    real = FrameParser().feed(switch_bytes("04_outbound_socket_both_directions.txt"))
    # same sequence of content types and events, frame for frame
    assert [f.content_type for f in ours] == [f.content_type for f in real]
    ours_ev = [Event.from_frame(f) for f in ours if f.content_type in EVENT_TYPES]
    real_ev = [Event.from_frame(f) for f in real if f.content_type in EVENT_TYPES]
    assert [e.name for e in ours_ev] == [e.name for e in real_ev]
    # same header names in the same order, event by event
    for a, b in zip(ours_ev, real_ev, strict=True):
        assert header_names(a) == header_names(b), a.name

    # channel data: same header names in the same order, values URL-encoded the same way
    def fixed(frame: Frame) -> list[str]:
        return [k for k in frame.headers if not k.startswith("variable_")]

    assert fixed(ours[0]) == fixed(real[0])
    assert ours[0].headers["Reply-Text"] == "%2BOK%0A"
    # no invented channel variables: each is one the real switch sets for that event
    known: dict[str, set[str]] = {}
    for t in TRANSCRIPTS:
        for e in recorded_events(t):
            known.setdefault(e.name, set()).update(e.variables)
    for e in ours_ev:
        assert set(e.variables) <= known[e.name], (e.name, set(e.variables) - known[e.name])
    # the disconnect notice after linger
    assert ours[-1].headers["Content-Disposition"] == "linger"
    assert ours_ev[-1].get_all("Hangup-Cause") == ["NORMAL_CLEARING", "NORMAL_CLEARING"]
    assert [e for e in ours_ev if e.name == "CHANNEL_EXECUTE_COMPLETE"][2].variable(
        "pagd_digits"
    ) == "42"


async def test_bridge_events_look_like_transcript_05(wired) -> None:  # type: ignore[no-untyped-def]
    server, sim = wired
    results = []

    async def handler(leg: CallLeg) -> None:
        await leg.answer()
        results.append(await leg.bridge("user/1001"))

    server.handler = handler
    ch = await sim.place_call()
    async with asyncio.timeout(5):
        await ch.gone.wait()
    names = {
        e.name: e
        for e in recorded_events("05_bridge_dialplan_bridge_and_blocking_api_originate.txt")
    }
    ours = {
        Event.from_frame(f).name: Event.from_frame(f)
        for f in server.frames
        if f.content_type in EVENT_TYPES
    }
    for name in ("CHANNEL_BRIDGE", "CHANNEL_UNBRIDGE"):
        real_names = [n for n in header_names(names[name]) if n != "Hangup-Cause"]
        our_names = [n for n in header_names(ours[name]) if n != "Hangup-Cause"]
        assert our_names == real_names, name
    assert results[0].answered and results[0].cause == "NORMAL_CLEARING"


@pytest.mark.parametrize(
    ("behaviour", "cause"),
    [("no_answer", "NO_ANSWER"), ("reject", "CALL_REJECTED"), ("busy", "USER_BUSY")],
)
async def test_agent_phones_that_do_not_answer(wired, behaviour: str, cause: str) -> None:  # type: ignore[no-untyped-def]
    server, sim = wired
    sim.add_agent(AgentPhone("1002", behaviour=behaviour))
    results = []

    async def handler(leg: CallLeg) -> None:
        await leg.answer()
        results.append(await leg.bridge("{call_timeout=5}user/1002"))
        await leg.playback("ivr/agent-unavailable.wav")

    server.handler = handler
    ch = await sim.place_call()
    async with asyncio.timeout(5):
        await ch.gone.wait()
    assert not results[0].answered and results[0].cause == cause
    assert ch.apps[-1] == ("playback", "ivr/agent-unavailable.wav")  # the call went on


async def test_a_caller_hanging_up_mid_prompt_ends_the_call_cleanly(wired) -> None:  # type: ignore[no-untyped-def]
    server, sim = wired
    seen = []

    async def handler(leg: CallLeg) -> None:
        await leg.answer()
        try:
            await leg.playback("long.wav")
            await leg.playback("never.wav")
        finally:
            seen.append(leg.hangup_cause)

    sim.media_seconds["long.wav"] = 50
    server.handler = handler
    ch = await sim.place_call(CallerScript(hangup_after=1))
    async with asyncio.timeout(5):
        await ch.gone.wait()
        while server.legs:  # noqa: ASYNC110 (polling a plain attribute)
            await asyncio.sleep(0.01)
    assert seen == ["NORMAL_CLEARING"]
    assert [a for a, _ in ch.apps] == ["answer", "playback"]


async def test_the_inbound_server_speaks_like_transcript_01b(wired) -> None:  # type: ignore[no-untyped-def]
    server, sim = wired

    async def answer_and_park(leg: CallLeg) -> None:
        await leg.answer()
        await leg.execute("park")

    server.handler = answer_and_park
    esl = InboundESL("127.0.0.1", sim.port, "ClueCon", events=["CHANNEL_ANSWER"])
    answered: list[str] = []
    esl.on("CHANNEL_ANSWER", lambda e: answered.append(e["Unique-ID"]))
    await esl.start()
    async with asyncio.timeout(5):
        await esl.wait_connected()
        assert (await esl.bgapi("status")).startswith("UP ")
        assert await esl.api("show channels") == "\n0 total.\n"
        ch = await sim.place_call()
        while not ch.answered_us:  # noqa: ASYNC110 (polling a plain attribute)
            await asyncio.sleep(0.01)
        assert await esl.api(f"uuid_getvar {ch.uuid} channel_name") == ch.name
        assert await esl.api(f"uuid_kill {ch.uuid}") == "+OK\n"
        await ch.gone.wait()
        leg, cause = await sim.originate("user/1001", None)
        assert cause == "SUCCESS" and leg is not None
        assert (
            await esl.bgapi("originate user/404 &park()", check=False)
        ) == "-ERR USER_NOT_REGISTERED\n"
    await esl.stop()
    assert answered[:2] == [ch.uuid, leg.uuid]
    assert sim.channels.get(ch.uuid) is None and ch.hangup_cause == "NORMAL_CLEARING"


async def test_a_wrong_password_gets_the_real_rejection() -> None:
    sim = FreeSwitchSimulator()
    await sim.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    writer.write(b"auth WrongPassword\n\n")
    data = await reader.read()
    writer.close()
    await sim.stop()
    real = switch_bytes("01a_inbound_auth_failure.txt")
    assert data == real


async def test_200_simultaneous_calls_through_the_outbound_server() -> None:
    done: list[tuple[str, str]] = []

    async def handler(leg: CallLeg) -> None:
        await leg.answer()
        await leg.playback("ivr/greeting.wav")
        digits = await leg.play_and_get_digits("ivr/menu.wav", max_digits=4)
        result = await leg.bridge("user/1001")
        done.append((leg.caller_number, digits + ("+" if result.answered else "-")))

    # generous set-up time: on a loaded CI machine 200 accepts can queue behind other work
    server = OutboundServer(handler, port=0, setup_timeout=30.0)
    await server.start()
    sim = FreeSwitchSimulator(
        socket_target=("127.0.0.1", server.port),
        time_scale=0.2,  # simulated timeouts must not expire under a loaded CI machine
        agents=[AgentPhone("1001", answer_after=2, talk_time=3)],
    )
    await sim.start()
    calls = await asyncio.gather(
        *(sim.place_call(CallerScript(caller_number=f"1380000{i:04d}", presses=[f"{i % 10}#"]))
          for i in range(200))
    )  # fmt: skip
    assert server.active_calls <= 200
    async with asyncio.timeout(60):
        await asyncio.gather(*(c.gone.wait() for c in calls))
        while server.legs:  # noqa: ASYNC110 (polling a plain attribute)
            await asyncio.sleep(0.05)
    await sim.stop()
    await server.stop()
    assert len(done) == 200
    assert sorted(done) == sorted((f"1380000{i:04d}", f"{i % 10}+") for i in range(200))
    assert server.calls_started == 200 and server.calls_failed_setup == 0


async def test_pre_rendered_events_are_the_bytes_the_header_list_encodes_to() -> None:
    """The simulator's cached text blocks must never drift from its event model."""
    sim = FreeSwitchSimulator(agents=[AgentPhone("1001")])
    ch = SimChannel(
        sim,
        name="sofia/external/13800138000@sim",
        direction="inbound",
        caller_number="13800138000",
        caller_name="Zhang San 张三",
        destination="12345",
        variables={"sip_from_display": "a b%c&d", "empty": ""},
    )
    agent = sim.new_outbound("user/1001", ch)

    def check(
        name: str, extra: list[tuple[str, str]] | None = None, body: str | None = None
    ) -> None:
        stamp = sim._stamp()
        fast = sim._render_plain(ch, name, extra or [], body, stamp)
        slow = encode_event_plain(sim._event_items(ch, name, extra or [], stamp), body)
        assert fast == slow, name

    check("CHANNEL_CREATE")
    check("DTMF", [("DTMF-Digit", "#"), ("DTMF-Duration", "2000")])
    sim.answer(ch)
    ch.variables["current_application"] = "playback"
    check("CHANNEL_EXECUTE", [("Application", "playback"), ("Application-UUID", "u-1")])
    check("CHANNEL_EXECUTE")  # cached blocks, unchanged state
    sim.bridge_pair(ch, agent)
    bridge = [("Bridge-A-Unique-ID", ch.uuid), ("Bridge-B-Unique-ID", agent.uuid)]
    check("CHANNEL_BRIDGE", [*bridge, ("Other-Type", "originatee"), ("Other-Leg-Unique-ID", "x")])
    check("CUSTOM", [("Event-Subclass", "hotline::test")], body="line 1\nline 2 ü")
    sim.hangup(ch, "USER_BUSY")
    check("CHANNEL_HANGUP_COMPLETE")
    check("CHANNEL_DESTROY")
