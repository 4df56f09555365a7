"""When FreeSWITCH answers but will not serve us, and when a bgapi result never comes.

A refusal (the ACL's rude rejection, a wrong password) needs an operator: it must be
an error that names the fix, a state the phone line reports, and slow retries. A lost
BACKGROUND_JOB must end the wait with its own error instead of hanging the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from hotline.telephony.errors import ESLAccessDenied, ESLAuthError, ESLJobTimeout
from hotline.telephony.esl_connection import ESLConnection
from hotline.telephony.esl_frames import (
    DISCONNECT_NOTICE,
    RUDE_REJECTION,
    FrameParser,
    encode_reply,
    encode_rude_rejection,
)
from hotline.telephony.esl_inbound import Backoff, InboundESL
from hotline.telephony.simulator import FreeSwitchSimulator
from tests.hotline.telephony.replay import connected_to, read_command

# mod_event_socket.c, listener_run(), FreeSWITCH 1.10: the ACL check runs before the
# auth/request; the rejection, then send_disconnect()'s goodbye, then the socket closes
RUDE_BYTES = (
    b"Content-Type: text/rude-rejection\nContent-Length: 24\n\nAccess Denied, go away.\n"
    b"Content-Type: text/disconnect-notice\nContent-Length: 67\n\n"
    b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
)
AUTH = b"Content-Type: auth/request\n\n"
OK = b"Content-Type: command/reply\nReply-Text: +OK\n\n"


async def until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not check():  # noqa: ASYNC110 (polling a plain attribute)
            await asyncio.sleep(0.01)


def client(port: int, password: str = "ClueCon", **kw: object) -> InboundESL:
    return InboundESL(
        "127.0.0.1",
        port,
        password,
        backoff=Backoff(0.02, 0.05),
        refused_backoff=Backoff(2.0, 2.0),  # 1 to 2 s, where a dead link retries in 0.05
        connect_timeout=2,
        **kw,  # type: ignore[arg-type]
    )


# ----------------------------------------------------------------------------- ACL


def test_the_rude_rejection_is_encoded_as_mod_event_socket_sends_it() -> None:
    assert encode_rude_rejection() == RUDE_BYTES
    parser = FrameParser()
    frames = [f for i in range(0, len(RUDE_BYTES), 7) for f in parser.feed(RUDE_BYTES[i : i + 7])]
    assert [f.content_type for f in frames] == [RUDE_REJECTION, DISCONNECT_NOTICE]
    assert frames[0].text == "Access Denied, go away.\n"


async def test_a_rejected_connection_fails_as_access_denied_not_as_a_disconnect() -> None:
    async def switch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for i in range(0, len(RUDE_BYTES), 20):  # in pieces, as TCP may deliver it
            writer.write(RUDE_BYTES[i : i + 20])
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(switch, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(ESLConnection, "127.0.0.1", port)
    with pytest.raises(ESLAccessDenied, match="Access Denied, go away"):
        await asyncio.wait_for(conn.auth_requested, 2)
    assert conn.rejected == "Access Denied, go away."
    assert conn.local_address == "127.0.0.1"
    server.close()


async def test_an_acl_refusal_is_an_error_naming_the_fix_retried_slowly_until_fixed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "hotline.telephony")
    async with FreeSwitchSimulator(deny_inbound=True) as sim:
        esl = client(sim.port)
        await esl.start()
        await until(lambda: esl.state == "access_denied")
        assert esl.last_error == "refused by FreeSWITCH's ACL: Access Denied, go away."
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1
        message = errors[0].getMessage()
        for needle in ("apply-inbound-acl", "event_socket.conf.xml", "127.0.0.1", "Access Denied"):
            assert needle in message
        await asyncio.sleep(0.5)
        # one attempt so far: not the 0.02 s pace of a switch that is down
        assert esl.backoff.attempt == 0 and esl.refused_backoff.attempt == 1
        assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
        assert not sim.listeners

        sim.deny_inbound = False  # the operator fixes the ACL
        async with asyncio.timeout(3):
            await esl.wait_connected()
        assert esl.state == "connected" and esl.refused is None and esl.last_error is None
        assert esl.refused_backoff.attempt == 0
        assert (await esl.api("status")).startswith("UP ")
        await esl.stop()


async def test_a_wrong_password_is_an_error_naming_the_setting_and_clears_once_fixed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with FreeSwitchSimulator(password="s3cret") as sim:
        esl = client(sim.port, "ClueCon")
        await esl.start()
        await until(lambda: esl.state == "auth_failed")
        assert esl.last_error == "authentication refused: -ERR invalid"
        (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert "HOTLINE_ESL_PASSWORD" in error.getMessage()
        assert "-ERR invalid" in error.getMessage()
        assert not issubclass(ESLAuthError, ESLAccessDenied)  # told apart by type
        sim.password = "ClueCon"  # FreeSWITCH's password changed back
        async with asyncio.timeout(3):
            await esl.wait_connected()
        assert esl.state == "connected"
        await esl.stop()


# ----------------------------------------------------------------------------- bgapi

Script = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def switch_with(
    script: Script, **kw: object
) -> AsyncIterator[tuple[InboundESL, list[bytes]]]:
    received: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(AUTH)
        while (cmd := await read_command(reader)) is not None:
            received.append(cmd)
            await script(cmd, writer)

    async with connected_to(serve, lambda port: client(port, event_format="plain", **kw)) as esl:
        yield esl, received


def job_of(cmd: bytes) -> str:
    return cmd.split(b"Job-UUID: ")[1].split(b"\n")[0].decode()


def job_event(job: str, body: str) -> bytes:
    from hotline.telephony.esl_frames import encode_event_plain

    return encode_event_plain([("Event-Name", "BACKGROUND_JOB"), ("Job-UUID", job)], body=body)


async def test_a_bgapi_whose_job_result_never_comes_times_out_and_forgets_the_job() -> None:
    """Before: bgapi awaited the BACKGROUND_JOB forever (lost subscription, reloaded
    module, hung job), and so did the ACD's ring."""
    late: list[str] = []

    async def script(cmd: bytes, writer: asyncio.StreamWriter) -> None:
        if cmd.startswith(b"bgapi"):
            job = job_of(cmd)
            writer.write(encode_reply(f"+OK Job-UUID: {job}", [("Job-UUID", job)]))
            late.append(job)  # its result is never sent... until too late
        elif cmd.startswith(b"api"):
            writer.write(b"Content-Type: api/response\nContent-Length: 3\n\n+OK")
            for job in late:
                writer.write(job_event(job, "+OK late\n"))
        else:
            writer.write(OK)

    async with switch_with(script, job_timeout_s=0.2) as (esl, _):
        with pytest.raises(ESLJobTimeout, match=r"within 0\.2 s") as caught:
            await asyncio.wait_for(esl.bgapi("originate user/1001 &park()"), 2)
        assert caught.value.job_uuid == late[0]
        assert caught.value.command == "originate user/1001 &park()"
        with pytest.raises(ESLJobTimeout, match=r"within 0\.05 s"):
            await esl.bgapi("status", job_timeout=0.05)  # a per-call limit
        assert esl._jobs == {} and esl.jobs_timed_out == 2
        assert await esl.api("status") == "+OK"  # the late results are harmless
        assert esl.connected


async def test_a_bgapi_within_its_timeout_returns_its_result() -> None:
    async def script(cmd: bytes, writer: asyncio.StreamWriter) -> None:
        if cmd.startswith(b"bgapi"):
            job = job_of(cmd)
            writer.write(encode_reply(f"+OK Job-UUID: {job}", [("Job-UUID", job)]))
            await asyncio.sleep(0.15)
            writer.write(job_event(job, "+OK 1234\n"))
        else:
            writer.write(OK)

    async with switch_with(script, job_timeout_s=0.05) as (esl, _):
        assert await esl.bgapi("status", job_timeout=1.0) == "+OK 1234\n"
        assert await esl.bgapi("status", job_timeout=float("inf")) == "+OK 1234\n"


async def test_raw_subscription_commands_are_refused_so_job_results_keep_flowing() -> None:
    """Before: `command("nixevent BACKGROUND_JOB")` or `command("noevents")` went to the
    switch behind the client's back; every later bgapi then waited for nothing."""

    async def script(cmd: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(OK)

    async with switch_with(script) as (esl, received):
        for line in ("nixevent BACKGROUND_JOB", "noevents", "event plain ALL", "filter a b"):
            with pytest.raises(ValueError, match="use the client's method"):
                await esl.command(line)
        assert await esl.command("log 0") == "+OK"
    assert not any(r.startswith((b"nixevent", b"noevents", b"event plain ALL")) for r in received)


async def test_deleting_event_name_filters_keeps_the_background_job_filter() -> None:
    """Before: `filter delete Event-Name` (which drops every filter on that header on the
    switch) also dropped our BACKGROUND_JOB helper while a Unique-ID filter stayed: job
    results were filtered out and bgapi hung."""

    async def script(cmd: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(OK)

    async with switch_with(script) as (esl, received):
        await esl.filter("Unique-ID", "abc")
        await esl.filter("Event-Name", "CHANNEL_ANSWER")
        await esl.filter_delete("Event-Name")
    filters = [r for r in received if r.startswith(b"filter")]
    assert filters == [
        b"filter Unique-ID abc\n\n",
        b"filter Event-Name BACKGROUND_JOB\n\n",
        b"filter Event-Name CHANNEL_ANSWER\n\n",
        b"filter delete Event-Name\n\n",
        b"filter Event-Name BACKGROUND_JOB\n\n",
    ]
