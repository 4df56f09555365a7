"""Where our ESL code and a real FreeSWITCH disagreed (fixtures in esl_transcripts/).

Each test below either failed before its fix (named in the docstring) or pins a wire
rule the README of the fixtures calls out, byte splits included, so that a change to
the framer cannot quietly break it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from hotline.telephony.errors import CallHungUp, ESLCommandError, ESLProtocolError
from hotline.telephony.esl_frames import (
    EVENT_TYPES,
    Event,
    Frame,
    FrameParser,
    encode_disconnect_notice,
    encode_event_json,
    encode_event_plain,
    encode_execute,
    encode_reply,
)
from hotline.telephony.esl_inbound import Backoff, InboundESL
from hotline.telephony.esl_outbound import CallLeg, OutboundServer
from tests.hotline.telephony.replay import Replay, connected_to, read_command
from tests.hotline.telephony.transcripts import DIR, chunks, switch_bytes

AUTH = b"Content-Type: auth/request\n\n"
OK = b"Content-Type: command/reply\nReply-Text: +OK\n\n"

Frames = list[tuple[dict[str, str], bytes]]


def frames_of(parser: FrameParser, pieces: list[bytes]) -> Frames:
    out = [f for piece in pieces for f in parser.feed(piece)]
    assert parser.eof_reason() is None and parser.pending == 0
    return [(f.headers, f.body) for f in out]


def whole(data: bytes) -> Frames:
    return frames_of(FrameParser(), [data])


# ----------------------------------------------------------------------------- framing


def test_every_two_piece_split_of_the_raw_01b_bytes_gives_the_same_frames() -> None:
    data = (DIR / "01b_inbound_auth_api_bgapi.s2c.raw").read_bytes()
    assert data == switch_bytes("01b_inbound_auth_api_bgapi.txt")
    expected = whole(data)
    assert len(expected) == 33
    for cut in range(len(data) + 1):
        assert frames_of(FrameParser(), [data[:cut], data[cut:]]) == expected, cut


@pytest.mark.parametrize(
    "name", ["01b_inbound_auth_api_bgapi.s2c.raw", "02_inbound_call_event_plain_ALL.s2c.raw"]
)
def test_one_byte_per_read_splits_every_frame_at_every_byte(name: str) -> None:
    data = (DIR / name).read_bytes()
    parser = FrameParser()
    assert frames_of(parser, [data[i : i + 1] for i in range(len(data))]) == whole(data)


def test_several_frames_in_one_read_then_the_rest_of_a_split_one() -> None:
    data = switch_bytes("01b_inbound_auth_api_bgapi.txt")
    expected = whole(data)
    # the bgapi read carries a reply and an event; cut inside the event's inner body
    cut = data.index(b"min idle cpu 0.00/84.43")
    parser = FrameParser()
    first = parser.feed(data[:cut])
    assert first and first[-1].content_type == "command/reply"
    assert parser.pending > 0 and "inside a body" in (parser.eof_reason() or "")
    assert [(f.headers, f.body) for f in first] + frames_of(parser, [data[cut:]]) == expected


def test_a_large_body_over_many_reads_is_not_recopied_on_every_read() -> None:
    """Before: each read re-concatenated everything held, so an 8 MB api/response (a
    `show channels` on a busy switch) in 4 KiB reads copied ~8 GB: over a second with
    the event loop, and every call on it, stalled (now a few milliseconds)."""
    size = 8 * 1024 * 1024
    data = b"Content-Type: api/response\nContent-Length: %d\n\n" % size + b"x" * size
    parser = FrameParser()
    started = time.perf_counter()
    frames = [f for i in range(0, len(data), 4096) for f in parser.feed(data[i : i + 4096])]
    elapsed = time.perf_counter() - started
    assert len(frames) == 1 and len(frames[0].body) == size
    assert elapsed < 0.25, f"{elapsed:.2f} s for one 8 MB body"


@pytest.mark.parametrize("length", ["\u00b2", "\u0661\u0662", "\uff11\uff12", "1_2", " 12"])
def test_a_content_length_that_is_not_ascii_decimal_is_a_protocol_error(length: str) -> None:
    """Before: str.isdigit() let "²" through to int() (a bare ValueError that nothing
    caught) and read Arabic-Indic or fullwidth "12" as 12."""
    frame = f"Content-Type: api/response\nContent-Length: {length}\n\n12".encode()
    with pytest.raises(ESLProtocolError, match="not a number"):
        FrameParser().feed(frame)


def test_a_huge_content_length_is_refused_before_any_body_is_held() -> None:
    """Past the discard limit a length is garbage, not a big answer: the link goes."""
    parser = FrameParser(max_body=1024, max_discard=4096)
    with pytest.raises(ESLProtocolError, match="exceeds"):
        parser.feed(b"Content-Type: api/response\nContent-Length: 4097\n\n" + b"x" * 10)
    assert parser.pending == 0


def test_a_body_over_the_limit_is_skipped_holding_nothing_and_the_stream_goes_on() -> None:
    """Before: a body over max_body (a `show channels` over 16 MB) was a protocol error
    that closed the whole inbound link. Now it is read past in any split, held nowhere,
    and handed on as one empty frame marked `oversized`, in its place in the stream."""
    big = b"Content-Type: api/response\nContent-Length: 3000\n\n" + b"x" * 3000
    after = b"Content-Type: api/response\nContent-Length: 3\n\n+OK"
    data = big + after
    for step in (1, 7, 100, 1024, len(data)):
        parser = FrameParser(max_body=1024)
        frames = []
        for i in range(0, len(data), step):
            frames += parser.feed(data[i : i + step])
            assert parser.pending <= 1024 + 60  # never the oversized body
        assert [(f.oversized, f.body) for f in frames] == [(3000, b""), (0, b"+OK")]
        assert frames[0].content_type == "api/response"
        assert parser.eof_reason() is None
    parser = FrameParser(max_body=1024)
    parser.feed(big[:2000])
    assert "inside an oversized body" in (parser.eof_reason() or "")


def test_content_length_counts_utf8_bytes_in_plain_and_json_events() -> None:
    name = "张三 Café"
    items = [
        ("Event-Name", "CHANNEL_CREATE"),
        ("Unique-ID", "u1"),
        ("Caller-Caller-ID-Name", name),
    ]
    data = encode_event_plain(items, body="备注 ✓\n") + encode_event_json(items, body="备注 ✓\n")
    assert b"Caller-Caller-ID-Name: %E5%BC%A0%E4%B8%89%20Caf%C3%A9\n" in data
    parser = FrameParser()
    frames = [f for i in range(len(data)) for f in parser.feed(data[i : i + 1])]
    assert [f.content_type for f in frames] == ["text/event-plain", "text/event-json"]
    for frame in frames:
        event = Event.from_frame(frame)
        assert event["Caller-Caller-ID-Name"] == name
        assert event.get("Caller-Caller-ID-Name") == name
        assert event.body == "备注 ✓\n"


def test_plain_values_are_percent_decoded_once_and_json_values_never() -> None:
    # a caller name that really contains "%25" is sent by FreeSWITCH as "%2525"
    plain = encode_event_plain([("Event-Name", "CUSTOM"), ("X-Rate", "100%25 ok")])
    assert b"X-Rate: 100%2525%20ok\n" in plain
    event = Event.from_frame(FrameParser().feed(plain)[0])
    assert event.get("X-Rate") == "100%25 ok"  # the undecoded-event fast path
    assert event["X-Rate"] == "100%25 ok"  # the full decode
    js = Event.from_frame(FrameParser().feed(encode_event_json([("X-Rate", "100%25 ok")]))[0])
    assert js["X-Rate"] == js.get("X-Rate") == "100%25 ok"
    recorded = [
        Event.from_frame(f)
        for f in FrameParser().feed(switch_bytes("02_inbound_call_event_plain_ALL.txt"))
        if f.content_type in EVENT_TYPES
    ]
    data = {e.get("Application-Data") for e in recorded if e.name == "CHANNEL_EXECUTE"}
    assert "tone_stream://%(300,100,440);loops=2" in data


def test_reply_text_is_decoded_only_where_freeswitch_encoded_it() -> None:
    """Before: every Reply-Text with a "%" was unquoted, though only the outbound
    `connect` reply (a serialized event) is URL-encoded; `filter` echoes its value raw."""
    raw = "+OK filter added. [variable_note]=[50%25 off]"
    assert Frame({"Content-Type": "command/reply", "Reply-Text": raw}).reply_text == raw
    error = "-ERR invalid uuid 100%41"
    reply = FrameParser().feed(encode_reply(error))[0]
    assert reply.reply_text == error and not reply.ok
    connect = FrameParser().feed(switch_bytes("04_outbound_socket_both_directions.txt"))[0]
    assert connect.headers["Reply-Text"] == "%2BOK%0A"
    assert connect.reply_text == "+OK\n" and connect.ok


def test_an_application_argument_starting_with_a_space_is_sent_in_the_body() -> None:
    """Before: it went in `execute-app-arg`, where mod_event_socket's header parser
    drops the spaces after the colon, so `log` printed "x" for "  x"."""
    sent = encode_execute("log", "  x", event_uuid="aaaaaaaa-0000-0000-0000-000000000003")
    assert sent.endswith(b"content-type: text/plain\ncontent-length: 3\n\n  x")
    assert b"execute-app-arg" not in sent
    assert b"execute-app-arg: x \n" in encode_execute("log", "x ")  # trailing ones survive


# ----------------------------------------------------------------------------- inbound

Script = Callable[[bytes, asyncio.StreamWriter, set[str]], Awaitable[None]]


@contextlib.asynccontextmanager
async def fake_switch(script: Script) -> AsyncIterator[tuple[InboundESL, list[bytes]]]:
    """A switch that authenticates, tracks `event`/`nixevent` like mod_event_socket,
    answers everything else with +OK, and hands other commands to `script`."""
    received: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        subscribed: set[str] = set()
        writer.write(AUTH)
        while (cmd := await read_command(reader)) is not None:
            received.append(cmd)
            line = cmd.split(b"\n", 1)[0].decode()
            verb, _, rest = line.partition(" ")
            if verb == "event":
                subscribed.update(rest.split()[1:])
                writer.write(OK)
            elif verb == "nixevent":
                if "ALL" in rest.split():  # mod_event_socket clears the whole list
                    subscribed.clear()
                subscribed.difference_update(rest.split())
                writer.write(OK)
            elif verb in ("auth", "filter", "exit"):
                writer.write(OK)
            else:
                await script(cmd, writer, subscribed)

    def make_client(port: int) -> InboundESL:
        return InboundESL(
            "127.0.0.1", port, backoff=Backoff(0.02, 0.1), connect_timeout=2, event_format="plain"
        )

    async with connected_to(serve, make_client) as esl:
        yield esl, received


def job_event(job_uuid: str, result: str) -> bytes:
    items = [("Event-Name", "BACKGROUND_JOB"), ("Job-UUID", job_uuid), ("Job-Command", "x")]
    return encode_event_plain(items, body=result)


def job_uuid_of(cmd: bytes) -> str:
    m = re.search(rb"Job-UUID: (\S+)", cmd)
    assert m is not None
    return m.group(1).decode()


async def test_nixevent_never_unsubscribes_the_background_jobs_bgapi_waits_for() -> None:
    """Before: `nixevent BACKGROUND_JOB` went to the switch, which then stopped sending
    job results (they come only to subscribed sockets, transcript 01b), and every later
    bgapi waited forever."""

    async def script(cmd: bytes, writer: asyncio.StreamWriter, subscribed: set[str]) -> None:
        if cmd.startswith(b"bgapi"):
            job = job_uuid_of(cmd)
            writer.write(encode_reply(f"+OK Job-UUID: {job}", [("Job-UUID", job)]))
            if "BACKGROUND_JOB" in subscribed or "ALL" in subscribed:
                writer.write(job_event(job, "+OK done\n"))
        else:
            writer.write(OK)

    async with fake_switch(script) as (esl, received):
        await esl.subscribe("DTMF")
        await esl.nixevent("BACKGROUND_JOB", "DTMF")
        await esl.nixevent("HEARTBEAT")  # nothing of ours to drop: nothing sent
        assert await asyncio.wait_for(esl.bgapi("status"), 2) == "+OK done\n"
        await esl.subscribe("ALL", "CHANNEL_ANSWER")
        await esl.nixevent("ALL")
        assert await asyncio.wait_for(esl.bgapi("status"), 2) == "+OK done\n"
    nix = [r for r in received if r.startswith((b"nixevent", b"event"))]
    assert nix[0] == b"event plain BACKGROUND_JOB HEARTBEAT\n\n"
    assert nix[1:] == [
        b"event plain DTMF\n\n",
        b"nixevent DTMF\n\n",
        b"event plain ALL CHANNEL_ANSWER\n\n",
        b"nixevent ALL\n\n",
        b"event plain BACKGROUND_JOB CHANNEL_ANSWER HEARTBEAT\n\n",
    ]


async def test_a_custom_event_reaches_the_handler_named_by_its_subclass() -> None:
    """Before: handlers were looked up by Event-Name alone, which for every custom
    event is "CUSTOM"; one registered as subscribed ("CUSTOM esltest::demo") never ran."""
    recorded = next(
        c.data
        for c in chunks("01b_inbound_auth_api_bgapi.txt")
        if c.from_switch and b"Event-Subclass: esltest" in c.data
    )

    async def script(cmd: bytes, writer: asyncio.StreamWriter, subscribed: set[str]) -> None:
        writer.write(OK)
        if cmd.startswith(b"api fire"):
            writer.write(recorded)  # the sendevent's CUSTOM event, byte for byte

    got: list[tuple[str, str | None, str | None]] = []
    other: list[Event] = []
    async with fake_switch(script) as (esl, received):
        esl.on("CUSTOM esltest::demo", lambda e: got.append((e.name, e["X-Utf8"], e.body)))
        esl.on("CUSTOM other::thing", other.append)
        await esl.subscribe("CUSTOM esltest::demo")
        waited = asyncio.ensure_future(esl.wait_event("CUSTOM esltest::demo"))
        await asyncio.sleep(0)
        await esl.command("api fire")
        event = await asyncio.wait_for(waited, 2)
    assert event.get("Event-Subclass") == "esltest::demo"
    assert got == [("CUSTOM", "café ☃", "body line 1\n\n")]
    assert other == []
    assert b"event plain CUSTOM esltest::demo\n\n" in received


async def test_a_job_result_that_overtakes_its_reply_is_still_matched() -> None:
    async def script(cmd: bytes, writer: asyncio.StreamWriter, subscribed: set[str]) -> None:
        if cmd.startswith(b"bgapi"):
            job = job_uuid_of(cmd)
            # one write, the BACKGROUND_JOB first: the reply comes after its result
            writer.write(
                job_event(job, "-ERR nosuchcommand Command not found!\n")
                if b"nosuch" in cmd
                else job_event(job, "UP 0 years")
            )
            writer.write(encode_reply(f"+OK Job-UUID: {job}", [("Job-UUID", job)]))
        elif cmd.startswith(b"api uuid_getvar"):
            writer.write(b"Content-Type: api/response\nContent-Length: 2\n\n42")
        else:
            writer.write(b"Content-Type: command/reply\nReply-Text: -ERR command not found\n\n")

    async with fake_switch(script) as (esl, _):
        async with asyncio.timeout(3):
            assert await esl.bgapi("status") == "UP 0 years"
            with pytest.raises(ESLCommandError, match="Command not found"):
                await esl.bgapi("nosuchcommand")
            assert await esl.api("uuid_getvar x y") == "42"  # no trailing newline
            with pytest.raises(ESLCommandError, match="command not found"):
                await esl.command("nosuchesl command")  # -ERR reply: an error, no hang
            assert esl.connected


# ----------------------------------------------------------------------------- outbound


async def test_events_after_the_linger_notice_still_reach_the_call() -> None:
    """Before: the linger disconnect-notice ended the leg and we closed the socket, so
    what FreeSWITCH sends after it (the notice goes out as soon as the channel is down)
    was lost: here CHANNEL_HANGUP_COMPLETE with the CDR variables."""
    replay = Replay("04_outbound_socket_both_directions.txt", delay_s=0.02)
    hangup = replay.steps[-1]
    assert hangup.command.startswith(b"sendmsg\ncall-command: hangup")
    last = hangup.answer[-1]
    at = last.index(b"Content-Type: text/disconnect-notice")
    notice, trailing = last[at:], last[:at]
    assert b"Content-Disposition: linger" in notice
    assert b"Event-Name: CHANNEL_HANGUP_COMPLETE" in trailing
    hangup.answer[-1:] = [notice, trailing]  # the notice before the channel's last events
    legs: list[CallLeg] = []
    completes: list[Event] = []

    async def handler(leg: CallLeg) -> None:
        legs.append(leg)
        leg.on("CHANNEL_HANGUP_COMPLETE", completes.append)
        replay.skip = set(range(3, len(replay.steps) - 1))  # straight to the hangup
        await leg.hangup()
        await leg.wait_hangup()

    server = OutboundServer(handler, port=0, drain_timeout=3)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        async with asyncio.timeout(5):
            await replay.serve(reader, writer)
    finally:
        await server.stop()
    assert [e.get("variable_billsec") for e in completes] == ["2"]
    assert legs[0].hangup_event is completes[0]
    assert legs[0].hangup_cause == "NORMAL_CLEARING"


@contextlib.asynccontextmanager
async def outbound_call(
    handler: Callable[[CallLeg], Awaitable[None]], drain_timeout: float = 3.0
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """Our server with one call set up from transcript 04's own `connect` reply."""
    connect_reply = next(
        c.data
        for c in chunks("04_outbound_socket_both_directions.txt")
        if c.from_switch and b"CHANNEL_DATA" in c.data
    )
    server = OutboundServer(handler, port=0, drain_timeout=drain_timeout)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        async with asyncio.timeout(5):
            assert await read_command(reader) == b"connect\n\n"
            writer.write(connect_reply)
            for _ in ("myevents", "linger"):
                await read_command(reader)
                writer.write(OK)
            yield reader, writer
    finally:
        await server.stop()


UUID = "d7578828-9ebb-4f72-84fa-bcd689a44f49"  # the channel of transcript 04


def channel_event(name: str, *extra: tuple[str, str]) -> bytes:
    return encode_event_plain([("Event-Name", name), ("Unique-ID", UUID), *extra])


def linger_notice() -> bytes:
    extra = [
        ("Controlled-Session-UUID", UUID),
        ("Content-Disposition", "linger"),
        ("Channel-Name", "loopback/9200-b"),
        ("Linger-Time", "-1"),
    ]
    return encode_disconnect_notice(extra, text="")


async def test_an_application_completing_after_the_linger_notice_returns_its_result() -> None:
    """Before: the notice failed every running application with CallHungUp, though its
    CHANNEL_EXECUTE_COMPLETE (a recording's record_ms) was still on its way."""
    outcome: dict[str, object] = {}

    async def handler(leg: CallLeg) -> None:
        try:
            done = await leg.execute("record", "/tmp/x.wav 60 200")
            outcome["record_ms"] = done.variable("record_ms")
        except CallHungUp as exc:
            outcome["error"] = exc

    async with outbound_call(handler) as (reader, writer):
        cmd = await read_command(reader)
        assert cmd is not None and b"execute-app-name: record" in cmd
        m = re.search(rb"Event-UUID: (\S+)", cmd)
        assert m is not None
        writer.write(OK)
        writer.write(channel_event("CHANNEL_HANGUP", ("Hangup-Cause", "NORMAL_CLEARING")))
        writer.write(linger_notice())
        await asyncio.sleep(0.05)
        writer.write(
            channel_event(
                "CHANNEL_EXECUTE_COMPLETE",
                ("Application", "record"),
                ("Application-UUID", m.group(1).decode()),
                ("variable_record_ms", "1234"),
            )
            + channel_event("CHANNEL_HANGUP_COMPLETE", ("Hangup-Cause", "NORMAL_CLEARING"))
        )
        assert await reader.read() == b""  # then we close the lingering socket
    assert outcome == {"record_ms": "1234"}


async def test_a_linger_notice_with_nothing_after_it_ends_the_call_after_the_grace() -> None:
    outcome: dict[str, object] = {}

    async def handler(leg: CallLeg) -> None:
        with pytest.raises(CallHungUp):
            await leg.execute("playback", "/tmp/x.wav")
        outcome["cause"] = leg.hangup_cause

    started = time.monotonic()
    async with outbound_call(handler, drain_timeout=0.2) as (reader, writer):
        assert await read_command(reader) is not None
        writer.write(OK + linger_notice())  # and the switch says nothing more, ever
        assert await reader.read() == b""
    assert outcome == {"cause": "NORMAL_CLEARING"}
    assert time.monotonic() - started < 2


def test_several_custom_subclasses_go_on_one_line_after_one_custom() -> None:
    """mod_event_socket reads every word after CUSTOM as a subclass: `CUSTOM a CUSTOM b`
    would subscribe a subclass named "CUSTOM"."""
    from hotline.telephony.esl_inbound import _event_groups

    assert _event_groups(["CHANNEL_ANSWER", "CUSTOM b::x", "HEARTBEAT", "CUSTOM a::y"]) == [
        "CHANNEL_ANSWER HEARTBEAT",
        "CUSTOM a::y b::x",
    ]
    assert _event_groups(iter(["CUSTOM"])) == ["CUSTOM"]
    assert _event_groups([]) == []
