"""The ESL parser and encoder against real FreeSWITCH bytes (tests/.../esl_transcripts)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hotline.telephony.errors import ESLProtocolError
from hotline.telephony.esl_frames import (
    EVENT_TYPES,
    Event,
    FrameParser,
    encode_command,
    encode_execute,
    encode_hangup,
    url_encode,
)
from tests.hotline.telephony.transcripts import TRANSCRIPTS, chunks, switch_bytes


def parse(data: bytes) -> list:
    parser = FrameParser()
    frames = parser.feed(data)
    assert parser.pending == 0 and parser.eof_reason() is None
    return frames


def events(name: str) -> list[Event]:
    return [Event.from_frame(f) for f in parse(switch_bytes(name)) if f.content_type in EVENT_TYPES]


EXPECTED_TYPES = {
    "01a_inbound_auth_failure.txt": {
        "auth/request": 1, "command/reply": 1, "text/disconnect-notice": 1,
    },
    "01b_inbound_auth_api_bgapi.txt": {
        "auth/request": 1, "command/reply": 17, "api/response": 7, "text/event-plain": 4,
        "text/event-json": 1, "text/event-xml": 1, "log/data": 1, "text/disconnect-notice": 1,
    },
    "02_inbound_call_event_plain_ALL.txt": {
        "auth/request": 1, "command/reply": 4, "text/event-plain": 71, "api/response": 1,
        "text/disconnect-notice": 1,
    },
    "03_inbound_sip_call_event_json_rfc2833_dtmf.txt": {
        "auth/request": 1, "command/reply": 3, "text/event-json": 26, "text/disconnect-notice": 1,
    },
    "04_outbound_socket_both_directions.txt": {
        "command/reply": 7, "text/event-plain": 17, "api/response": 2, "text/disconnect-notice": 1,
    },
}  # fmt: skip


@pytest.mark.parametrize("name", TRANSCRIPTS)
def test_every_transcript_parses_completely_with_every_event_named(name: str) -> None:
    frames = parse(switch_bytes(name))
    counts: dict[str, int] = {}
    for f in frames:
        counts[f.content_type] = counts.get(f.content_type, 0) + 1
    if name in EXPECTED_TYPES:
        assert counts == EXPECTED_TYPES[name]
    for f in frames:
        if f.content_type in EVENT_TYPES:
            assert Event.from_frame(f).name  # every event decodes and has a name


@pytest.mark.parametrize("name", TRANSCRIPTS)
def test_the_recorded_tcp_reads_give_the_same_frames_as_one_buffer(name: str) -> None:
    parser = FrameParser()
    frames = []
    for c in chunks(name):
        if c.from_switch:
            frames += parser.feed(c.data)
    assert [(f.headers, f.body) for f in frames] == [
        (f.headers, f.body) for f in parse(switch_bytes(name))
    ]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(TRANSCRIPTS),
    cuts=st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=40),
)
def test_any_tcp_split_gives_the_same_frames(name: str, cuts: list[float]) -> None:
    data = switch_bytes(name)
    points = sorted({int(c * len(data)) for c in cuts} | {0, len(data)})
    parser = FrameParser()
    frames = []
    for a, b in itertools.pairwise(points):
        frames += parser.feed(data[a:b])
    assert parser.eof_reason() is None
    assert [(f.headers, f.body) for f in frames] == [(f.headers, f.body) for f in parse(data)]


def test_one_byte_at_a_time() -> None:
    data = switch_bytes("04_outbound_socket_both_directions.txt")
    parser = FrameParser()
    frames = [f for i in range(len(data)) for f in parser.feed(data[i : i + 1])]
    assert len(frames) == 27


def test_bodies_are_exactly_content_length_with_or_without_a_final_newline() -> None:
    frames = parse(switch_bytes("01b_inbound_auth_api_bgapi.txt"))
    api = [f.body for f in frames if f.content_type == "api/response"]
    assert api[2] == b"-ERR nosuchcommand Command not found!\n"
    assert api[4] == b"\n0 total.\n"  # show channels starts with a blank line
    outbound = parse(switch_bytes("04_outbound_socket_both_directions.txt"))
    assert [f.body for f in outbound if f.content_type == "api/response"][1] == b"42"


def test_a_plain_background_job_nests_its_own_body() -> None:
    jobs = events("01b_inbound_auth_api_bgapi.txt")
    plain = jobs[0]
    assert plain.format == "plain" and plain.name == "BACKGROUND_JOB"
    assert plain.job_uuid == "20301d18-7873-4263-b160-ce60b8c57f41"
    assert plain.body is not None and plain.body.startswith("UP 0 years")
    assert len(plain.body.encode()) == 369
    assert jobs[2].body == "-ERR nosuchcommand Command not found!\n"


def test_json_and_xml_events_carry_raw_values_and_the_body() -> None:
    jobs = events("01b_inbound_auth_api_bgapi.txt")
    js, xml = jobs[3], jobs[4]
    assert js.format == "json" and js["FreeSWITCH-IPv6"] == "fd00::2"
    assert js.body is not None and js.body.startswith("FreeSWITCH Version 1.10.12")
    assert "_body" not in js.headers
    assert xml.format == "xml" and xml["Event-Date-Local"] == "2026-11-22 21:53:04"
    assert xml.body == js.body.replace("11e293ce", "11e293ce")  # same job result text
    assert xml.job_uuid == "40743a8f-b2a9-41d0-aca3-21734bb324f2"


def test_plain_values_are_url_decoded_including_utf8() -> None:
    custom = events("01b_inbound_auth_api_bgapi.txt")[5]
    assert custom.name == "CUSTOM"
    assert custom["X-Utf8"] == "café ☃"
    assert custom["Event-Subclass"] == "esltest::demo"
    assert custom.body == "body line 1\n\n"


def test_duplicate_headers_are_all_kept_and_get_returns_the_first() -> None:
    complete = next(e for e in events("04_outbound_socket_both_directions.txt")
                if e.name == "CHANNEL_HANGUP_COMPLETE")  # fmt: skip
    assert complete.get_all("Hangup-Cause") == ["NORMAL_CLEARING", "NORMAL_CLEARING"]
    assert complete.variables["pagd_digits"] == "42"
    assert complete.variable("read_terminator_used") == "#"


def test_json_duplicate_keys_survive() -> None:
    evs = events("03_inbound_sip_call_event_json_rfc2833_dtmf.txt")
    digits = [e["DTMF-Digit"] for e in evs if e.name == "DTMF"]
    assert digits == ["2", "4", "#"]
    complete = next(e for e in evs if e.name == "CHANNEL_HANGUP_COMPLETE")
    assert len(complete.get_all("Hangup-Cause")) == 2


def test_the_connect_reply_is_channel_data_with_encoded_values() -> None:
    connect = parse(switch_bytes("04_outbound_socket_both_directions.txt"))[0]
    assert connect.content_type == "command/reply" and connect.body == b""
    assert connect.reply_text == "+OK\n" and connect.ok
    data = connect.decoded_headers()
    assert data["Event-Name"] == "CHANNEL_DATA"
    assert data["variable_current_application_data"] == "127.0.0.1:8084 async full"
    assert data["Socket-Mode"] == "async" and data["Control"] == "full"


def test_log_frames_keep_an_empty_user_data_header() -> None:
    log = next(f for f in parse(switch_bytes("01b_inbound_auth_api_bgapi.txt"))
           if f.content_type == "log/data")  # fmt: skip
    assert log.headers["User-Data"] == "" and log.headers["Log-Level"] == "5"


def test_the_linger_disconnect_notice_has_headers_and_an_empty_body() -> None:
    notice = parse(switch_bytes("04_outbound_socket_both_directions.txt"))[-1]
    assert notice.content_type == "text/disconnect-notice"
    assert notice.headers["Content-Disposition"] == "linger"
    assert notice.headers["Linger-Time"] == "-1"
    assert notice.body == b""


def test_replies_report_errors() -> None:
    frames = parse(switch_bytes("01a_inbound_auth_failure.txt"))
    assert frames[1].reply_text == "-ERR invalid" and not frames[1].ok


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"this is not esl at all\n\n", "without a colon"),
        (b"Content-Type: api/response\nContent-Length: 12abc\n\n", "not a number"),
        (b"Content-Type: api/response\nContent-Length: 999999999999\n\n", "exceeds"),
        (b"\n\n", "empty header block"),
        (b"Content-Type: x\nbad name here: y\n\n", "invalid header name"),
    ],
)
def test_garbled_frames_raise_a_clear_error(data: bytes, reason: str) -> None:
    with pytest.raises(ESLProtocolError, match=reason):
        FrameParser().feed(data)


def test_a_header_block_without_an_end_is_bounded() -> None:
    parser = FrameParser(max_header=1024)
    with pytest.raises(ESLProtocolError, match="no end of header block"):
        parser.feed(b"Content-Type: text/event-plain\n" + b"X" * 2000)


def test_a_truncated_stream_says_where_it_stopped() -> None:
    data = switch_bytes("02_inbound_call_event_plain_ALL.txt")
    parser = FrameParser()
    parser.feed(data[:5000])
    assert "inside a body" in (parser.eof_reason() or "")
    parser = FrameParser()
    parser.feed(b"Content-Type: command/reply\nReply-")
    assert "inside a header block" in (parser.eof_reason() or "")


def test_a_garbled_event_body_fails_on_decoding() -> None:
    bad = b'{"Event-Name": "X", '
    frame = FrameParser().feed(
        b"Content-Length: %d\nContent-Type: text/event-json\n\n%s" % (len(bad), bad)
    )[0]
    with pytest.raises(ESLProtocolError, match="not JSON"):
        _ = Event.from_frame(frame).name


# ----------------------------------------------------------------------------- encoding


def client_chunks(name: str) -> list[bytes]:
    return [c.data for c in chunks(name) if not c.from_switch]


def test_sendmsg_execute_is_byte_identical_to_transcript_04() -> None:
    sent = client_chunks("04_outbound_socket_both_directions.txt")
    assert encode_execute("answer", event_uuid="5bb34208-c040-4e5f-930d-5e38cea143e7") == sent[3]
    assert (
        encode_execute(
            "playback",
            "tone_stream://%(300,100,440);loops=2",
            event_uuid="b74a22f2-d8b8-453e-a214-1242dcb38f7d",
        )
        == sent[4]
    )
    assert encode_hangup("NORMAL_CLEARING") == sent[-1]


def test_event_lock_and_a_multiline_argument_match_transcript_09() -> None:
    sent = client_chunks("09_inbound_sendmsg_filter_heartbeat.txt")
    uuid = "a0a870fe-ac91-4c3d-999c-370330fa0b5c"
    playback = encode_execute(
        "playback",
        "tone_stream://%(300,0,440)",
        uuid=uuid,
        event_uuid="aaaaaaaa-0000-0000-0000-000000000001",
        event_lock=True,
    )
    assert playback in sent
    body = "INFO arg carried in a body: spaces, colons: and\nnewlines survive"
    log = encode_execute("log", body, uuid=uuid, event_uuid="aaaaaaaa-0000-0000-0000-000000000002")
    assert log in sent
    assert encode_hangup("USER_BUSY", uuid=uuid) in sent


def test_commands_cannot_smuggle_a_second_command() -> None:
    with pytest.raises(ValueError, match="line break"):
        encode_command("api status\n\napi hupall")
    with pytest.raises(ValueError, match="line break"):
        encode_command("sendmsg", [("execute-app-name", "playback\n\nexit")])
    # an application argument with a newline is carried safely in the body instead
    assert encode_execute("playback", "a\nb").endswith(b"content-length: 3\n\na\nb")


def test_url_encoding_matches_freeswitch() -> None:
    assert url_encode("tone_stream://%(300,100,440);loops=2") == (
        "tone_stream%3A//%25(300,100,440)%3Bloops%3D2"
    )
    assert url_encode("café ☃") == "caf%C3%A9%20%E2%98%83"
    assert (
        url_encode("Sun, 22 Nov 2026 21:54:35 +0000")
        == "Sun,%2022%20Nov%202026%2021%3A54%3A35%20%2B0000"
    )
