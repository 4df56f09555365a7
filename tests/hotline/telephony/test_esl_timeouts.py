"""Replies that never come, results that come too late, answers too big, and
subscriptions that must survive a reconnect.

FreeSWITCH answers one socket's commands strictly in order, so a single reply that
never comes stalls everything behind it: the client must bound it, drop the link
and say so, not wait forever.
"""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

from hotline.telephony.errors import (
    CallLost,
    ESLCommandTimeout,
    ESLDisconnected,
    ESLJobTimeout,
    ESLReplyTooLarge,
)
from hotline.telephony.esl_frames import Event, encode_event_plain, encode_reply
from hotline.telephony.esl_inbound import Backoff, InboundESL
from hotline.telephony.esl_outbound import CallLeg, OutboundServer
from tests.hotline.telephony.replay import read_command
from tests.hotline.telephony.test_esl_refusals import (
    OK,
    Script,
    job_event,
    job_of,
    switch_with,
    until,
)

API_OK = b"Content-Type: api/response\nContent-Length: 3\n\n+OK"


# ----------------------------------------------------------------------------- api timeout


async def test_a_hung_api_drops_the_link_fails_what_is_queued_and_the_client_reconnects(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before: an `api` whose reply never came (a stuck module) held the inbound socket
    for ever: every later command queued behind it and the keep-alive never probed."""

    release = asyncio.Event()

    async def script(cmd: bytes, writer: asyncio.StreamWriter) -> None:
        if cmd.startswith(b"api hang"):
            await release.wait()  # stuck: and, like FreeSWITCH, reads nothing more
            return
        writer.write(API_OK if cmd.startswith(b"api") else OK)

    async with switch_with(script, api_timeout_s=0.2) as (esl, _):
        hung = asyncio.ensure_future(esl.api("hang on"))
        await asyncio.sleep(0)
        behind = asyncio.ensure_future(esl.api("status"))
        with pytest.raises(ESLCommandTimeout, match=r"'api hang on': no reply within 0\.2 s"):
            await hung
        with pytest.raises(ESLDisconnected, match=r"not answered: no reply to 'api hang on'") as e:
            await behind
        assert not isinstance(e.value, ESLCommandTimeout)
        await until(lambda: esl.connected and esl.connects == 2)
        assert await esl.api("status") == "+OK"
        assert esl.commands_timed_out == 1
        release.set()
    assert "no reply to 'api hang on' within 0.2 s; dropping the link" in caplog.text
    assert "1 command(s) queued behind it" in caplog.text


async def test_the_reply_clock_starts_at_the_head_of_the_queue_and_a_call_may_allow_more() -> None:
    """A slow api allowed 1 s by its caller; a quick command written right after it waits
    behind it longer than its own 0.2 s, and is not blamed for the wait."""

    async def script(cmd: bytes, writer: asyncio.StreamWriter) -> None:
        if cmd.startswith(b"api show"):
            await asyncio.sleep(0.5)  # the switch works through the socket in order
        writer.write(API_OK if cmd.startswith(b"api") else OK)

    async with switch_with(script, api_timeout_s=0.2, reply_timeout_s=0.2) as (esl, _):
        slow = asyncio.ensure_future(esl.api("show channels", reply_timeout=1.0))
        await asyncio.sleep(0)
        assert await esl.command("log 0") == "+OK"
        assert await slow == "+OK"
        assert esl.connects == 1 and esl.commands_timed_out == 0
        with pytest.raises(ESLCommandTimeout):
            await esl.api("show channels")  # the default 0.2 s


# ----------------------------------------------------------------------------- outbound


async def test_an_outbound_reply_is_bounded_but_a_long_application_is_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A prompt's CHANNEL_EXECUTE_COMPLETE may come long after the +OK (here past the
    reply timeout): fine. An `api` on the call's socket that is never answered loses
    the call (CallLost) instead of hanging its flow for ever."""
    outcome: list[object] = []

    async def handler(leg: CallLeg) -> None:
        done = await leg.execute("playback", "long.wav")
        outcome.append(done.get("Application-Response"))
        try:
            await leg.api(f"uuid_getvar {leg.uuid} x")
        except CallLost as exc:
            outcome.append(exc)

    server = OutboundServer(handler, port=0, linger=False, reply_timeout=0.2, api_timeout=0.2)
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        async with asyncio.timeout(5):
            assert await read_command(reader) == b"connect\n\n"
            writer.write(
                b"Content-Type: command/reply\nReply-Text: %2BOK%0A\n"
                b"Event-Name: CHANNEL_DATA\nUnique-ID: u-1\nAnswer-State: answered\n\n"
            )
            assert await read_command(reader) == b"myevents\n\n"
            writer.write(OK)
            cmd = await read_command(reader)
            assert cmd is not None and cmd.startswith(b"sendmsg")
            event_uuid = re.search(rb"Event-UUID: (\S+)", cmd).group(1).decode()  # type: ignore[union-attr]
            writer.write(OK)
            await asyncio.sleep(0.5)  # the prompt plays
            writer.write(
                encode_event_plain(
                    [
                        ("Event-Name", "CHANNEL_EXECUTE_COMPLETE"),
                        ("Unique-ID", "u-1"),
                        ("Application", "playback"),
                        ("Application-UUID", event_uuid),
                        ("Application-Response", "FILE PLAYED"),
                    ]
                )
            )
            cmd = await read_command(reader)
            assert cmd == b"api uuid_getvar u-1 x\n\n"  # ... and never answered
            assert await reader.read() == b""  # we dropped the socket
            while server.legs:  # noqa: ASYNC110 (polling a plain attribute)
                await asyncio.sleep(0.01)
    finally:
        writer.close()
        await server.stop()
    assert outcome[0] == "FILE PLAYED"
    assert isinstance(outcome[1], CallLost) and "no reply within 0.2 s" in str(outcome[1])
    assert server.calls_lost == 1
    assert "esl call u-1: closing connection" in caplog.text


# ----------------------------------------------------------------------------- late jobs


def job_answered_after_an_api(jobs: list[str], result: str, *, drop_link: bool) -> Script:
    """A switch that accepts each bgapi (its job ids go to `jobs`), dropping the link
    right after if told to, and sends the first job's `result` with the next api reply:
    the result comes after the client stopped waiting for it."""

    async def script(cmd: bytes, writer: asyncio.StreamWriter) -> None:
        if cmd.startswith(b"bgapi"):
            jobs.append(job_of(cmd))
            writer.write(encode_reply(f"+OK Job-UUID: {jobs[-1]}", [("Job-UUID", jobs[-1])]))
            if drop_link:  # the link drops with the job running
                await writer.drain()
                writer.close()
        elif cmd.startswith(b"api"):
            writer.write(API_OK)
            writer.write(job_event(jobs[0], result))
        else:
            writer.write(OK)

    return script


async def test_a_late_job_result_is_logged_with_its_job_and_command_and_handed_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before: a BACKGROUND_JOB for a bgapi that had timed out was dropped silently."""
    caplog.set_level(logging.INFO, logger="hotline.telephony.inbound")
    jobs: list[str] = []
    late: list[Event] = []
    script = job_answered_after_an_api(jobs, "+OK 4f1e-leg\n", drop_link=False)

    async with switch_with(script) as (esl, _):
        with pytest.raises(ESLJobTimeout):
            await esl.bgapi("originate user/1001 &park()", job_timeout=0.1, on_late=late.append)
        await esl.api("status")
        await until(lambda: bool(late))
        assert late[0].body == "+OK 4f1e-leg\n" and esl.late_job_results == 1
        assert esl._late == {}
    assert (
        f"late result of bgapi job {jobs[0]} ('originate user/1001 &park()'), "
        "after we gave up: +OK 4f1e-leg"
    ) in caplog.text


async def test_a_job_lost_with_the_link_is_still_recognised_when_its_result_comes_later() -> None:
    """BACKGROUND_JOB goes to every subscribed socket, so the result of a job started on
    a connection that dropped can arrive on the next one: it reaches on_late."""
    jobs: list[str] = []
    late: list[Event] = []
    script = job_answered_after_an_api(jobs, "-ERR NO_ANSWER\n", drop_link=True)

    async with switch_with(script) as (esl, _):
        with pytest.raises(ESLDisconnected, match="bgapi job"):
            await esl.bgapi("originate user/1001 &park()", on_late=late.append)
        await until(lambda: esl.connected and esl.connects == 2)
        await esl.api("status")
        await until(lambda: bool(late))
        assert late[0].body == "-ERR NO_ANSWER\n"


# ----------------------------------------------------------------------------- big replies


async def test_a_reply_over_the_size_limit_fails_only_its_command() -> None:
    """Before: a body over the limit (a `show channels` on a very busy switch) was a
    protocol error that closed the whole inbound link, bgapi jobs and all."""

    async def script(cmd: bytes, writer: asyncio.StreamWriter) -> None:
        if cmd.startswith(b"api show"):
            body = b"uuid,direction,created\n" + b"x" * 5000
            writer.write(b"Content-Type: api/response\nContent-Length: %d\n\n" % len(body))
            for i in range(0, len(body), 700):  # over several reads
                writer.write(body[i : i + 700])
                await writer.drain()
                await asyncio.sleep(0.001)
        elif cmd.startswith(b"api"):
            writer.write(API_OK)
        else:
            writer.write(OK)

    async with switch_with(script, max_body_bytes=1024) as (esl, _):
        with pytest.raises(ESLReplyTooLarge, match="5023 bytes exceeds the 1024-byte limit"):
            await esl.api("show channels")
        assert await esl.api("status") == "+OK"
        assert esl.connected and esl.connects == 1


# ----------------------------------------------------------------------------- nixevent


async def test_events_nixed_under_all_stay_nixed_after_a_reconnect() -> None:
    """Before: after `event ALL` and `nixevent X`, a reconnect sent `event ALL` again
    and X came back."""
    connections: list[list[bytes]] = []
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen: list[bytes] = []
        connections.append(seen)
        writers.append(writer)
        writer.write(b"Content-Type: auth/request\n\n")
        while (cmd := await read_command(reader)) is not None:
            seen.append(cmd)
            writer.write(OK)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    esl = InboundESL(
        "127.0.0.1",
        server.sockets[0].getsockname()[1],
        events=["ALL"],
        event_format="plain",
        backoff=Backoff(0.02, 0.05),
    )
    await esl.start()
    try:
        async with asyncio.timeout(5):
            await esl.wait_connected()
            await esl.nixevent("RE_SCHEDULE", "CUSTOM sofia::register", "CHANNEL_CALLSTATE")
            writers[0].close()  # the link drops
            await until(lambda: esl.connected and esl.connects == 2)
            await esl.subscribe("RE_SCHEDULE")  # wanted again: no longer nixed
            writers[1].close()
            await until(lambda: esl.connected and esl.connects == 3)
    finally:
        await esl.stop()
        server.close()
    assert connections[1][1:] == [
        b"event plain ALL BACKGROUND_JOB HEARTBEAT\n\n",
        b"nixevent CHANNEL_CALLSTATE RE_SCHEDULE\n\n",
        b"nixevent CUSTOM sofia::register\n\n",
        b"event plain RE_SCHEDULE\n\n",
    ]
    assert connections[2][1:4] == [
        b"event plain ALL BACKGROUND_JOB HEARTBEAT RE_SCHEDULE\n\n",
        b"nixevent CHANNEL_CALLSTATE\n\n",
        b"nixevent CUSTOM sofia::register\n\n",
    ]
