"""Bad bytes, dropped sockets and an absent switch: one connection suffers, the service not."""

from __future__ import annotations

import asyncio
import logging

import pytest

from hotline.telephony.errors import ESLDisconnected
from hotline.telephony.esl_inbound import Backoff, InboundESL
from hotline.telephony.esl_outbound import CallLeg, OutboundServer
from hotline.telephony.simulator import CallerScript, FreeSwitchSimulator
from tests.hotline.telephony.replay import read_command

AUTH = b"Content-Type: auth/request\n\n"
OK = b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n"


def fast_client(port: int) -> InboundESL:
    return InboundESL("127.0.0.1", port, "ClueCon", backoff=Backoff(0.02, 0.1), connect_timeout=2)


async def test_commands_in_flight_fail_cleanly_and_the_client_reconnects_and_resubscribes() -> None:
    connections: list[list[bytes]] = []

    async def switch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen: list[bytes] = []
        connections.append(seen)
        writer.write(AUTH)
        while (cmd := await read_command(reader)) is not None:
            seen.append(cmd)
            if cmd.startswith(b"auth") or cmd.startswith(b"event"):
                writer.write(OK)
            elif cmd.startswith(b"api hang"):
                writer.close()  # the switch drops the socket with the api in flight
                return
            elif cmd.startswith(b"api"):
                writer.write(b"Content-Type: api/response\nContent-Length: 3\n\n+OK")

    server = await asyncio.start_server(switch, "127.0.0.1", 0)
    esl = fast_client(server.sockets[0].getsockname()[1])
    await esl.start()
    async with asyncio.timeout(5):
        await esl.wait_connected()
        await esl.subscribe("CHANNEL_ANSWER")
        with pytest.raises(ESLDisconnected):
            await esl.api("hang on")
        with pytest.raises(ESLDisconnected):
            await esl.api("status")  # refused at once while reconnecting, not queued
        await esl.wait_connected()
        while not esl.connected:  # noqa: ASYNC110 (polling a plain attribute)
            await asyncio.sleep(0.01)
        assert await esl.api("status") == "+OK"
    await esl.stop()
    server.close()
    assert len(connections) == 2
    assert connections[1][1] == b"event json BACKGROUND_JOB CHANNEL_ANSWER HEARTBEAT\n\n"


async def test_a_pending_bgapi_fails_when_the_socket_drops() -> None:
    async def switch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(AUTH)
        while (cmd := await read_command(reader)) is not None:
            if cmd.startswith(b"bgapi"):
                writer.write(b"Content-Type: command/reply\nReply-Text: +OK Job-UUID: x\n\n")
                await writer.drain()
                writer.close()
                return
            writer.write(OK)

    server = await asyncio.start_server(switch, "127.0.0.1", 0)
    esl = fast_client(server.sockets[0].getsockname()[1])
    await esl.start()
    async with asyncio.timeout(5):
        await esl.wait_connected()
        with pytest.raises(ESLDisconnected, match="bgapi job"):
            await esl.bgapi("originate user/1001 &park()")
    await esl.stop()
    server.close()


async def test_a_garbled_frame_closes_only_that_connection_with_a_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    attempts = 0

    async def switch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        attempts += 1
        writer.write(AUTH)
        while (cmd := await read_command(reader)) is not None:
            if cmd.startswith(b"api") and attempts == 1:
                writer.write(b"Content-Type: api/response\nContent-Length: banana\n\n")
            elif cmd.startswith(b"api"):
                writer.write(b"Content-Type: api/response\nContent-Length: 3\n\n+OK")
            else:
                writer.write(OK)

    server = await asyncio.start_server(switch, "127.0.0.1", 0)
    esl = fast_client(server.sockets[0].getsockname()[1])
    await esl.start()
    async with asyncio.timeout(5):
        await esl.wait_connected()
        with pytest.raises(ESLDisconnected, match="Content-Length is not a number"):
            await esl.api("status")
        while not esl.connected:  # noqa: ASYNC110 (polling a plain attribute)
            await asyncio.sleep(0.01)
        assert await esl.api("status") == "+OK"
    await esl.stop()
    server.close()
    assert "garbled frame: Content-Length is not a number: 'banana'" in caplog.text


async def test_no_switch_means_quiet_retries_one_line_per_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    caplog.set_level(logging.INFO, logger="hotline.telephony")
    esl = InboundESL("127.0.0.1", port, "x", backoff=Backoff(0.05, 0.1))
    await esl.start()
    await asyncio.sleep(0.5)
    attempts = esl.backoff.attempt
    await esl.stop()
    lines = [r for r in caplog.records if r.name == "hotline.telephony.inbound"]
    assert 2 <= attempts <= 15
    assert len(lines) in (attempts, attempts - 1)
    assert "unavailable (connection refused); retry 1 in" in lines[0].getMessage()


async def test_garbage_on_an_outbound_socket_drops_that_call_and_the_server_serves_the_next(
    caplog: pytest.LogCaptureFixture,
) -> None:
    answered: list[str] = []

    async def handler(leg: CallLeg) -> None:
        await leg.answer()
        answered.append(leg.caller_number)

    server = OutboundServer(handler, port=0)
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    assert await read_command(reader) == b"connect\n\n"
    writer.write(b"\x00\x01garbage without structure\n\n")
    await writer.drain()
    assert await reader.read() == b""  # our server closed this socket
    writer.close()
    assert server.calls_failed_setup == 1
    sim = FreeSwitchSimulator(socket_target=("127.0.0.1", server.port), time_scale=0.01)
    await sim.start()
    ch = await sim.place_call(CallerScript(caller_number="13900000001"))
    async with asyncio.timeout(5):
        await ch.gone.wait()
    await sim.stop()
    await server.stop()
    assert answered == ["13900000001"]
    assert "garbled frame" in caplog.text or "header line without a colon" in caplog.text


async def test_a_truncated_frame_at_close_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def switch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(AUTH)
        await read_command(reader)
        writer.write(OK)
        await read_command(reader)
        writer.write(OK + b"Content-Type: api/response\nContent-Length: 100\n\nonly a bit")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(switch, "127.0.0.1", 0)
    esl = fast_client(server.sockets[0].getsockname()[1])
    await esl.start()
    async with asyncio.timeout(5):
        await esl.wait_connected()
        for _ in range(100):
            if "inside a body" in caplog.text:
                break
            await asyncio.sleep(0.01)
    await esl.stop()
    server.close()
    assert "connection closed inside a body (10 of 100 bytes read)" in caplog.text
