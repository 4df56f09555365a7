"""Our inbound client and outbound server, facing the recorded FreeSWITCH side of each
transcript: they must send what FreeSWITCH expects and understand what it answered."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from hotline.telephony.errors import ESLCommandError
from hotline.telephony.esl_frames import Event
from hotline.telephony.esl_inbound import Backoff, InboundESL
from hotline.telephony.esl_outbound import CallLeg, OutboundServer
from tests.hotline.telephony.replay import Replay


@contextlib.asynccontextmanager
async def replay_server(replay: Replay) -> AsyncIterator[int]:
    server = await asyncio.start_server(replay.serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def client(port: int, password: str = "ClueCon", **kw: object) -> InboundESL:
    return InboundESL(
        "127.0.0.1", port, password, backoff=Backoff(0.05, 0.2), connect_timeout=2, **kw
    )  # type: ignore[arg-type]


async def test_a_wrong_password_is_an_auth_error_and_the_client_keeps_retrying() -> None:
    replay = Replay("01a_inbound_auth_failure.txt")
    async with replay_server(replay) as port:
        esl = client(port, "WrongPassword")
        await esl.start()
        for _ in range(100):
            if esl.last_error:
                break
            await asyncio.sleep(0.02)
        assert not esl.connected
        assert esl.last_error == "authentication refused: -ERR invalid"
        assert replay.received[0] == b"auth WrongPassword\n\n"
        await esl.stop()


async def test_api_and_bgapi_against_transcript_01b() -> None:
    # Skipped: the bgapi sent before any BACKGROUND_JOB subscription (no job event came),
    # the recorded `event ...` lines (our client subscribes once, at connect), and the
    # sendevent/log steps this client has no use for.
    replay = Replay("01b_inbound_auth_api_bgapi.txt", skip={8, 9, 13, 15, 17, 18, 19, 20, 21, 22})
    async with replay_server(replay) as port:
        esl = client(port, event_format="plain")
        await esl.start()
        async with asyncio.timeout(5):
            await esl.wait_connected()
            assert (await esl.api("status")).startswith("UP 0 years")
            assert "1.10.12" in await esl.api("version")
            with pytest.raises(ESLCommandError, match="Command not found"):
                await esl.api("nosuchcommand foo")
            with pytest.raises(ESLCommandError, match="No such channel"):
                await esl.api("uuid_getvar 00000000-0000-0000-0000-000000000000 foo")
            assert await esl.api("show channels") == "\n0 total.\n"
            assert await esl.api("show channels as json") == '{"row_count": 0}\n'
            with pytest.raises(ESLCommandError, match="command not found"):
                await esl.command("nosuchesl command")
            assert (await esl.bgapi("status")).startswith("UP 0 years")  # plain job event
            assert (await esl.bgapi("version")).startswith("FreeSWITCH Version")
            with pytest.raises(ESLCommandError, match="nosuchcommand Command not found"):
                await esl.bgapi("nosuchcommand")
            assert (await esl.bgapi("version")).startswith("FreeSWITCH Version")  # json event
            assert (await esl.bgapi("version")).startswith("FreeSWITCH Version")  # xml event
        await esl.stop()
    lines = [r.split(b"\n", 1)[0] for r in replay.received]
    assert lines[0] == b"auth ClueCon"
    assert lines[1] == b"event plain BACKGROUND_JOB HEARTBEAT"
    assert lines[-1] == b"exit"
    assert all(b"Job-UUID: " in r for r in replay.received if r.startswith(b"bgapi"))
    assert replay.mismatches == []


async def test_sendmsg_filters_and_events_against_transcript_09() -> None:
    uuid = "a0a870fe-ac91-4c3d-999c-370330fa0b5c"
    # skipped: the recorded `event` line (ours differs) and the bgapi (its job never came)
    replay = Replay("09_inbound_sendmsg_filter_heartbeat.txt", skip={1, 4})
    async with replay_server(replay) as port:
        esl = client(port, event_format="plain", events=["CHANNEL_EXECUTE", "DTMF"])
        dtmf: list[str] = []
        esl.on("DTMF", lambda e: dtmf.append(e["DTMF-Digit"]))
        await esl.start()
        async with asyncio.timeout(5):
            await esl.wait_connected()
            await esl.filter("Unique-ID", uuid)
            await esl.filter("Event-Name", "HEARTBEAT")
            done = asyncio.ensure_future(
                esl.wait_event(
                    "CHANNEL_EXECUTE_COMPLETE", lambda e: e.application_uuid.endswith("1")
                )
            )
            await asyncio.sleep(0)
            await esl.sendmsg_execute(
                uuid, "playback", "tone_stream://%(300,0,440)",
                event_uuid="aaaaaaaa-0000-0000-0000-000000000001", event_lock=True,
            )  # fmt: skip
            assert (await done)["Application-Response"] == "FILE PLAYED"
            text = "INFO arg carried in a body: spaces, colons: and\nnewlines survive"
            done = asyncio.ensure_future(
                esl.wait_event(
                    "CHANNEL_EXECUTE_COMPLETE", lambda e: e.application_uuid.endswith("2")
                )
            )
            await asyncio.sleep(0)
            await esl.sendmsg_execute(
                uuid, "log", text, event_uuid="aaaaaaaa-0000-0000-0000-000000000002"
            )
            assert (await done)["Application-Data"] == text
            await esl.api(f"uuid_recv_dtmf {uuid} 7")
            await esl.filter_delete("Unique-ID", uuid)
            await esl.nixevent("DTMF")
            heartbeat = asyncio.ensure_future(esl.wait_event("HEARTBEAT"))
            await asyncio.sleep(0)
            await esl.api(f"uuid_recv_dtmf {uuid} 8")
            assert (await heartbeat)["Event-Info"] == "System Ready"
            await esl.filter_delete("all")
            gone = asyncio.ensure_future(
                esl.wait_event("CHANNEL_HANGUP_COMPLETE", lambda e: e.unique_id == uuid)
            )
            await asyncio.sleep(0)
            await esl.hangup(uuid, "USER_BUSY")
            assert (await gone).get_all("Hangup-Cause") == ["USER_BUSY", "USER_BUSY"]
        await esl.stop()
    assert dtmf == ["7"]  # the 8 came after nixevent DTMF
    lines = [r.split(b"\n", 1)[0] for r in replay.received]
    assert b"filter Event-Name BACKGROUND_JOB" in lines  # keeps bgapi alive under filters
    assert replay.mismatches == []  # sendmsg/api bytes identical to the recording


async def test_outbound_call_against_transcript_04() -> None:
    replay = Replay("04_outbound_socket_both_directions.txt")
    outcome: dict[str, object] = {}

    async def handler(leg: CallLeg) -> None:
        outcome["caller"] = leg.caller_number
        outcome["destination"] = leg.destination_number
        await leg.answer()
        outcome["answered"] = leg.answered
        outcome["playback"] = await leg.playback("tone_stream://%(300,100,440);loops=2")
        started = asyncio.ensure_future(leg.wait_event("CHANNEL_EXECUTE"))
        digits = asyncio.ensure_future(
            leg.play_and_get_digits(
                "tone_stream://%(200,0,660)", max_digits=4, timeout_ms=4000, digit_timeout_ms=2000
            )
        )
        await started
        await leg.api(f"uuid_recv_dtmf {leg.uuid} 42#")
        outcome["digits"] = await digits
        outcome["getvar"] = await leg.get_variable("pagd_digits")
        await leg.hangup()

    server = OutboundServer(handler, port=0, drain_timeout=3)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        async with asyncio.timeout(5):
            await replay.serve(reader, writer)  # returns when our server closes the socket
    finally:
        await server.stop()
    assert outcome == {
        "caller": "5552000",
        "destination": "9200",
        "answered": True,
        "playback": "FILE PLAYED",
        "digits": "42",
        "getvar": "42",
    }
    lines = [r.split(b"\n", 1)[0] for r in replay.received]
    assert lines[:3] == [b"connect", b"myevents", b"linger"]
    assert replay.mismatches == []
    assert replay.next == len(replay.steps)  # every recorded step was used, in order
    assert replay.closed_by_peer.is_set() and server.legs == {}


def test_event_handlers_see_decoded_events() -> None:
    ev = Event.from_headers([("Event-Name", "DTMF"), ("DTMF-Digit", "#")])
    assert ev.name == "DTMF" and ev["DTMF-Digit"] == "#"
