"""A FreeSWITCH event-socket simulator on loopback, for tests, the benchmark and `--demo`.

It speaks the real wire protocol, in both directions, with the frames, header names,
URL encoding and event order of the transcripts captured from FreeSWITCH 1.10.12:

- an inbound ESL server (auth, event plain|json, filter, nixevent, api, bgapi, sendmsg,
  exit) broadcasting every channel's events to its subscribers, or, with
  `deny_inbound`, refusing each client as a non-matching apply-inbound-acl does;
- simulated callers, each connecting to the service's outbound socket server as
  `socket host:port async full` does (connect -> CHANNEL_DATA, myevents, linger, sendmsg
  execute with Application-UUID completions, disconnect notice after hangup), following
  a script: digits pressed at each prompt, when to hang up;
- simulated agent phones (`user/1001`): answer after ringing, ring out (NO_ANSWER),
  reject (CALL_REJECTED) or be busy (USER_BUSY).

It is never used when a real switch is configured; `DESIGN.md` calls it a faithful
stand-in for tests and the demo, not a replacement for the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import re
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from hotline.telephony.esl_frames import (
    encode_api_response,
    encode_disconnect_notice,
    encode_event_json,
    encode_event_plain,
    encode_event_plain_text,
    encode_reply,
    encode_rude_rejection,
    plain_line,
    url_encode,
)

log = logging.getLogger("hotline.telephony.simulator")

HOSTNAME = "sim"
IPV4 = "127.0.0.1"
IPV6 = "::1"

# Which source line each event comes from in FreeSWITCH 1.10.12 (as in the transcripts).
_CALLING: dict[str, tuple[str, str, int]] = {
    "CHANNEL_DATA": ("mod_event_socket.c", "parse_command", 2021),
    "CHANNEL_CREATE": ("switch_core_state_machine.c", "switch_core_session_run", 626),
    "CHANNEL_ANSWER": ("switch_channel.c", "switch_channel_perform_mark_answered", 3846),
    "CHANNEL_PARK": ("switch_ivr.c", "switch_ivr_park", 1002),
    "CHANNEL_UNPARK": ("switch_ivr.c", "switch_ivr_park", 1213),
    "CHANNEL_EXECUTE": ("switch_core_session.c", "switch_core_session_exec", 2944),
    "CHANNEL_EXECUTE_COMPLETE": ("switch_core_session.c", "switch_core_session_exec", 2967),
    "CHANNEL_HANGUP": ("switch_channel.c", "switch_channel_perform_hangup", 3445),
    "CHANNEL_STATE": ("switch_channel.c", "switch_channel_perform_set_running_state", 2408),
    "CHANNEL_HANGUP_COMPLETE": (
        "switch_core_state_machine.c",
        "switch_core_session_reporting_state",
        943,
    ),
    "CHANNEL_DESTROY": ("switch_core_session.c", "switch_core_session_perform_destroy", 1584),
    "CHANNEL_BRIDGE": ("switch_ivr_bridge.c", "switch_ivr_multi_threaded_bridge", 1689),
    "CHANNEL_UNBRIDGE": ("switch_ivr_bridge.c", "switch_ivr_multi_threaded_bridge", 1879),
    "DTMF": ("switch_channel.c", "switch_channel_dequeue_dtmf", 677),
    "PLAYBACK_START": ("switch_ivr_play_say.c", "switch_ivr_play_file", 1646),
    "PLAYBACK_STOP": ("switch_ivr_play_say.c", "switch_ivr_play_file", 2020),
    "BACKGROUND_JOB": ("mod_event_socket.c", "api_exec", 1572),
    "HEARTBEAT": ("switch_core.c", "send_heartbeat", 95),
}
# Events without channel variables (FreeSWITCH fires them without event_set_data extras).
_NO_VARIABLES = frozenset({"DTMF", "CHANNEL_STATE"})
# What `myevents` subscribes an outbound socket to (mod_event_socket.c); no PLAYBACK_*.
_MYEVENTS = frozenset(
    {
        "CHANNEL_CREATE", "CHANNEL_DESTROY", "CHANNEL_STATE", "CHANNEL_ANSWER",
        "CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE", "CHANNEL_EXECUTE",
        "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_BRIDGE", "CHANNEL_UNBRIDGE", "CHANNEL_PARK",
        "CHANNEL_UNPARK", "CHANNEL_HOLD", "CHANNEL_UNHOLD", "DTMF",
    }
)  # fmt: skip
_STATE_NUMBER = {"CS_EXECUTE": 4, "CS_HANGUP": 10, "CS_REPORTING": 11, "CS_DESTROY": 12}
_DIALSTATUS = {
    "NO_ANSWER": "NOANSWER",
    "USER_BUSY": "BUSY",
    "CALL_REJECTED": "CALL_REJECTED",
    "USER_NOT_REGISTERED": "CHANUNAVAIL",
}


@dataclass
class AgentPhone:
    """A simulated SIP phone reachable as `user/<extension>`."""

    extension: str
    behaviour: str = "answer"  # answer | no_answer | reject | busy | unregistered
    answer_after: float = 1.0  # seconds of ringing before it answers
    talk_time: float | None = None  # agent hangs up after this long; None: the other side ends
    offered: int = 0
    answered: int = 0


@dataclass
class CallerScript:
    """What a simulated caller does: who calls, what they press at each prompt, when they quit."""

    caller_number: str = "13800138000"
    caller_name: str = ""
    destination: str = "12345"
    presses: Sequence[str] = ()  # digits keyed at each successive digit prompt
    press_delay: float = 0.3  # seconds into a prompt before the first digit
    hangup_after: float | None = None  # seconds after connecting; None: waits for us
    speaks_for: float = 5.0  # seconds spoken into a recording before pressing #
    variables: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Command:
    line: str
    headers: dict[str, str]
    body: str | None = None


class SimChannel:
    """One simulated channel's state (what FreeSWITCH keeps in switch_channel_t)."""

    def __init__(
        self,
        sim: FreeSwitchSimulator,
        *,
        name: str,
        direction: str,
        caller_number: str,
        caller_name: str,
        destination: str,
        context: str = "public",
        uuid: str | None = None,
        variables: Mapping[str, str] = (),  # type: ignore[assignment]
    ) -> None:
        self.sim = sim
        self.uuid = uuid or str(uuidlib.uuid4())
        self.name = name
        self.direction = direction
        self.caller_number = caller_number
        self.caller_name = caller_name
        self.destination = destination
        self.context = context
        self.created_us = sim.now_us()
        self.answered_us = 0
        self.bridged_us = 0
        self.hangup_us = 0
        self.state = "CS_EXECUTE"
        self.call_state = "RINGING"
        self.answer_state = "ringing"
        self.hangup_cause: str | None = None
        self.partner: SimChannel | None = None
        self.socket: _SocketSession | None = None
        self.parked = False
        self.variables: dict[str, str] = {
            "direction": direction,
            "uuid": self.uuid,
            "session_id": str(next(sim._session_ids)),
            "channel_name": name,
            "read_codec": "PCMU",
            "read_rate": "8000",
            "write_codec": "PCMU",
            "write_rate": "8000",
            "call_uuid": self.uuid,
            **dict(variables),
        }
        self.gone = asyncio.Event()
        self._gone_future: asyncio.Future[None] | None = None
        self.key_waiter: asyncio.Future[None] | None = None  # a prompt waiting for a key
        self.answered_evt = asyncio.Event()
        self.dtmf: asyncio.Queue[str] = asyncio.Queue()
        self.events: list[str] = []  # every event name emitted for this channel
        self.apps: list[tuple[str, str]] = []  # applications run, with arguments
        self.on_prompt: Callable[[], None] | None = None
        self.speaks_for = 5.0  # how long this caller talks into a recording
        self.recording: float | None = None  # loop time the running `record` started
        self.bridge_a = False
        self.bridged_by_app = False
        # [application headers, Application-UUID, completion sent] of the running app
        self.running: list | None = None  # type: ignore[type-arg]
        self._text: dict[str, tuple[object, str]] = {}  # rendered header blocks by key

    def gone_future(self) -> asyncio.Future[None]:
        """Resolved at hang-up (cheaper to wait on than `gone`, which needs a task)."""
        if self._gone_future is None:
            self._gone_future = asyncio.get_running_loop().create_future()
            if not self.up:
                self._gone_future.set_result(None)
        return self._gone_future

    def text_block(
        self, kind: str, key: object, items: Callable[[SimChannel], list[tuple[str, str]]]
    ) -> str:
        """A block of plain header lines, re-rendered only when `key` changes."""
        cached = self._text.get(kind)
        if cached is not None and cached[0] == key:
            return cached[1]
        text = "".join([plain_line(kv) for kv in items(self)])
        self._text[kind] = (key, text)
        return text

    def __repr__(self) -> str:
        return f"SimChannel({self.name}, {self.uuid}, {self.hangup_cause or self.answer_state})"

    @property
    def up(self) -> bool:
        return self.hangup_cause is None


class FreeSwitchSimulator:
    """Start with `await sim.start()`; place calls with `await sim.place_call(script)`."""

    def __init__(
        self,
        *,
        socket_target: tuple[str, int] | None = None,
        password: str = "ClueCon",
        host: str = "127.0.0.1",
        port: int = 0,
        time_scale: float = 1.0,
        playback_seconds: float = 1.0,
        ring_timeout: float = 30.0,
        linger_close_after: float = 10.0,
        agents: Iterable[AgentPhone] = (),
        jitter: float = 0.0,
        seed: int | None = None,
        deny_inbound: bool = False,
    ) -> None:
        self.socket_target = socket_target
        # as if event_socket.conf.xml's apply-inbound-acl did not list the client:
        # each inbound connection gets a rude rejection (flip it to "fix the ACL")
        self.deny_inbound = deny_inbound
        self.jitter = jitter  # +- this fraction on media, ringing and talk durations
        self._random = random.Random(seed)
        self.password = password
        self.host = host
        self.port = port
        self.time_scale = time_scale
        self.playback_seconds = playback_seconds
        self.media_seconds: dict[str, float] = {}
        self.ring_timeout = ring_timeout
        self.linger_close_after = linger_close_after
        self.agents: dict[str, AgentPhone] = {a.extension: a for a in agents}
        self.core_uuid = str(uuidlib.uuid4())
        self.channels: dict[str, SimChannel] = {}
        self.finished: list[SimChannel] = []
        self.events_sent = 0
        self.calls_placed = 0
        self.listeners: set[_InboundSession] = set()
        self.rooms: dict[str, set[str]] = {}  # conference name -> member channel uuids
        self.observers: list[Callable[[SimChannel, str, list[tuple[str, str]]], None]] = []
        self._seq = itertools.count(1000)
        self._session_ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[object]] = set()
        self._started = time.time()
        self._date_second = -1
        self._dates = ("", "")
        self._dates_text = ""
        self._heads: dict[str, tuple[str, str]] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._inbound_client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for ch in list(self.channels.values()):
            self.hangup(ch, "SYSTEM_SHUTDOWN")
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        for listener in list(self.listeners):
            listener.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def __aenter__(self) -> FreeSwitchSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def spawn(self, coro: object) -> asyncio.Task[object]:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("simulator task failed", exc_info=task.exception())

    def vary(self, seconds: float) -> float:
        """A step's duration with the configured jitter: real callers, prompts and
        agents never act in lockstep, and a simulator that does makes bursts no switch
        would send."""
        if not self.jitter:
            return seconds
        return seconds * (1 + self._random.uniform(-self.jitter, self.jitter))

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds * self.time_scale)

    def now_us(self) -> int:
        return int(time.time() * 1_000_000)

    def add_agent(self, agent: AgentPhone) -> None:
        self.agents[agent.extension] = agent

    # ------------------------------------------------------------------ callers

    async def place_call(self, script: CallerScript | None = None) -> SimChannel:
        """A caller dials in; FreeSWITCH runs `socket` and connects to our outbound server."""
        if self.socket_target is None:
            raise RuntimeError("simulator has no socket_target for outbound calls")
        script = script or CallerScript()
        self.calls_placed += 1
        ch = SimChannel(
            self,
            name=f"sofia/external/{script.caller_number}@sim",
            direction="inbound",
            caller_number=script.caller_number,
            caller_name=script.caller_name,
            destination=script.destination,
            variables={
                "current_application_data": f"{self.socket_target[0]}:{self.socket_target[1]} "
                "async full",
                "current_application": "socket",
                **dict(script.variables),
            },
        )
        self.channels[ch.uuid] = ch
        self.emit(ch, "CHANNEL_CREATE")
        presses = list(script.presses)

        def prompt_started() -> None:
            if presses:
                digits = presses.pop(0)
                self.spawn(self._press(ch, digits, script.press_delay))

        ch.on_prompt = prompt_started
        ch.speaks_for = script.speaks_for
        if script.hangup_after is not None:
            self.spawn(self._hangup_later(ch, script.hangup_after, "NORMAL_CLEARING"))
        await self._connect_socket(ch)
        return ch

    async def _connect_socket(self, ch: SimChannel) -> None:
        assert self.socket_target is not None
        session = _SocketSession(self, ch)
        ch.socket = session
        try:
            reader, writer = await asyncio.open_connection(*self.socket_target)
        except OSError:
            ch.socket = None
            self.hangup(ch, "DESTINATION_OUT_OF_ORDER")
            return
        session.attach(reader, writer)
        self.spawn(session.run())

    async def _press(self, ch: SimChannel, digits: str, delay: float) -> None:
        await self.sleep(delay)
        for digit in digits:
            if not ch.up:
                return
            ch.dtmf.put_nowait(digit)
            if ch.key_waiter is not None and not ch.key_waiter.done():
                ch.key_waiter.set_result(None)
            self.emit(
                ch,
                "DTMF",
                [("DTMF-Digit", digit), ("DTMF-Duration", "2000"), ("DTMF-Source", "RTP")],
            )
            await self.sleep(0.1)

    async def _hangup_later(self, ch: SimChannel, after: float, cause: str) -> None:
        await self.sleep(after)
        self.hangup(ch, cause)

    # ------------------------------------------------------------------ events

    def _stamp(self) -> tuple[int, int]:
        """An event's timestamp (µs) and sequence number; refreshes the date headers."""
        ts = self.now_us()
        second = ts // 1_000_000
        if second != self._date_second:  # two strftime calls per event add up at 1,000 calls
            now = datetime.fromtimestamp(second, UTC)
            self._date_second = second
            self._dates = (
                now.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
                now.strftime("%a, %d %b %Y %H:%M:%S GMT"),
            )
            self._dates_text = (
                f"Event-Date-Local: {url_encode(self._dates[0])}\n"
                f"Event-Date-GMT: {url_encode(self._dates[1])}\n"
            )
        return ts, next(self._seq)

    def _event_items(
        self,
        ch: SimChannel | None,
        name: str,
        extra: Sequence[tuple[str, str]],
        stamp: tuple[int, int] | None = None,
    ) -> list[tuple[str, str]]:
        ts, seq = stamp or self._stamp()
        calling = _CALLING.get(name, _DEFAULT_CALLING)
        items = [
            ("Event-Name", name),
            ("Core-UUID", self.core_uuid),
            ("FreeSWITCH-Hostname", HOSTNAME),
            ("FreeSWITCH-Switchname", HOSTNAME),
            ("FreeSWITCH-IPv4", IPV4),
            ("FreeSWITCH-IPv6", IPV6),
            ("Event-Date-Local", self._dates[0]),
            ("Event-Date-GMT", self._dates[1]),
            ("Event-Date-Timestamp", str(ts)),
            ("Event-Calling-File", calling[0]),
            ("Event-Calling-Function", calling[1]),
            ("Event-Calling-Line-Number", str(calling[2])),
            ("Event-Sequence", str(seq)),
        ]
        if ch is None:
            items.extend(extra)
            return items
        leading, other, rest = _split_extra(extra)
        items.extend(leading)
        if name == "CHANNEL_HANGUP_COMPLETE":
            items.append(("Hangup-Cause", ch.hangup_cause or "NORMAL_CLEARING"))
        items += _state_items(ch)
        items += _codec_items()
        items += _profile_items("Caller", ch)
        items += other
        if name not in _NO_VARIABLES:
            items += [(f"variable_{k}", v) for k, v in ch.variables.items()]
        items += rest
        return items

    def _render_plain(
        self,
        ch: SimChannel,
        name: str,
        extra: Sequence[tuple[str, str]],
        body: str | None,
        stamp: tuple[int, int],
    ) -> bytes:
        """`encode_event_plain(self._event_items(...))`, byte for byte, from text blocks
        cached per event name and per channel state: the simulator shares the cores with
        the service it drives, so at 1,000 calls its cost per event is part of what the
        benchmark measures."""
        ts, seq = stamp
        head = self._heads.get(name)
        if head is None:
            calling = _CALLING.get(name, _DEFAULT_CALLING)
            head = self._heads[name] = (
                "".join(
                    plain_line(kv)
                    for kv in (
                        ("Event-Name", name),
                        ("Core-UUID", self.core_uuid),
                        ("FreeSWITCH-Hostname", HOSTNAME),
                        ("FreeSWITCH-Switchname", HOSTNAME),
                        ("FreeSWITCH-IPv4", IPV4),
                        ("FreeSWITCH-IPv6", IPV6),
                    )
                ),
                f"Event-Calling-File: {url_encode(calling[0])}\n"
                f"Event-Calling-Function: {url_encode(calling[1])}\n"
                f"Event-Calling-Line-Number: {calling[2]}\n",
            )
        parts = [
            head[0],
            self._dates_text,
            f"Event-Date-Timestamp: {ts}\n",
            head[1],
            f"Event-Sequence: {seq}\n",
        ]
        leading, other, rest = _split_extra(extra) if extra else ((), (), ())
        parts += [plain_line(kv) for kv in leading]
        if name == "CHANNEL_HANGUP_COMPLETE":
            parts.append(plain_line(("Hangup-Cause", ch.hangup_cause or "NORMAL_CLEARING")))
        parts.append(ch.text_block("state", _state_key(ch), _state_items))
        parts.append(_CODEC_TEXT)
        parts.append(ch.text_block("profile", _profile_key(ch), _caller_profile))
        parts += [plain_line(kv) for kv in other]
        if name not in _NO_VARIABLES:
            parts.append(ch.text_block("variables", tuple(ch.variables.items()), _variable_items))
        parts += [plain_line(kv) for kv in rest]
        return encode_event_plain_text("".join(parts), body)

    def emit(
        self,
        ch: SimChannel | None,
        name: str,
        extra: Sequence[tuple[str, str]] = (),
        body: str | None = None,
    ) -> None:
        """Fire an event: to the channel's own socket (myevents) and to inbound listeners.

        The header list is only built for listeners and observers; a plain socket gets
        the pre-rendered text (same bytes)."""
        stamp = self._stamp()
        items: list[tuple[str, str]] | None = None
        if ch is not None:
            ch.events.append(name)
            session = ch.socket
            if session is not None and session.myevents and name in _MYEVENTS:
                if session.format == "plain":
                    self.events_sent += 1
                    session.send(self._render_plain(ch, name, extra, body, stamp))
                else:
                    items = self._event_items(ch, name, extra, stamp)
                    session.send_event(items, body)
        if self.listeners:
            items = items or self._event_items(ch, name, extra, stamp)
            for listener in list(self.listeners):
                listener.maybe_send(name, items, body)
        if ch is not None and self.observers:
            items = items or self._event_items(ch, name, extra, stamp)
            for observer in self.observers:
                observer(ch, name, items)

    # ------------------------------------------------------------------ channel actions

    def answer(self, ch: SimChannel) -> None:
        if ch.answered_us or not ch.up:
            return
        ch.answered_us = self.now_us()
        ch.answer_state = "answered"
        ch.variables["endpoint_disposition"] = "ANSWER"
        self.emit(ch, "CHANNEL_ANSWER")
        ch.call_state = "ACTIVE"
        ch.answered_evt.set()

    def hangup(self, ch: SimChannel, cause: str = "NORMAL_CLEARING") -> None:
        """Hang a channel up with the event sequence of transcript 04."""
        if not ch.up:
            return
        ch.hangup_cause = cause
        ch.hangup_us = self.now_us()
        ch.call_state = "HANGUP"
        ch.answer_state = "hangup"
        self.emit(ch, "CHANNEL_HANGUP")
        ch.gone.set()
        if ch._gone_future is not None and not ch._gone_future.done():
            ch._gone_future.set_result(None)
        partner = ch.partner
        if partner is not None:
            # The caller's side going ends the bridge for both; the far end going only
            # ends the caller's `bridge` application (unless hangup_after_bridge).
            a_side = ch.bridge_a or not ch.bridged_by_app
            self.unbridge(ch, partner)
            # park_after_bridge keeps the survivor (our socket session decides its fate)
            if a_side and partner.variables.get("park_after_bridge") != "true":
                self.hangup(partner, "NORMAL_CLEARING")
        _stop_recording(self, ch)
        self._complete_running(ch)
        session = ch.socket
        if session is not None:
            session.interrupt()
        if ch.parked:
            self.emit(ch, "CHANNEL_UNPARK")
        if session is not None:
            self.emit(
                ch,
                "CHANNEL_EXECUTE_COMPLETE",
                [
                    ("Application", "socket"),
                    ("Application-Data", ch.variables.get("current_application_data", "")),
                    ("Application-Response", "_none_"),
                    ("Application-UUID", session.app_uuid),
                ],
            )
        ch.state = "CS_HANGUP"
        self.emit(ch, "CHANNEL_STATE")
        ch.state = "CS_REPORTING"
        self.emit(ch, "CHANNEL_STATE")
        self._set_cdr_variables(ch)
        self.emit(ch, "CHANNEL_HANGUP_COMPLETE")
        if session is not None:
            session.channel_gone()
        ch.state = "CS_DESTROY"
        self.emit(ch, "CHANNEL_DESTROY")
        self.channels.pop(ch.uuid, None)
        self.finished.append(ch)
        if len(self.finished) > 10_000:
            del self.finished[:5_000]

    def _set_cdr_variables(self, ch: SimChannel) -> None:
        start, answer, end = ch.created_us, ch.answered_us, ch.hangup_us
        v = ch.variables  # set in the reporting state, as FreeSWITCH does
        v["hangup_cause"] = ch.hangup_cause or "NORMAL_CLEARING"
        v["hangup_cause_q850"] = str(_Q850.get(v["hangup_cause"], 16))
        v["start_epoch"] = str(start // 1_000_000)
        v["answer_epoch"] = str(answer // 1_000_000)
        v["end_epoch"] = str(end // 1_000_000)
        v["duration"] = str((end - start) // 1_000_000)
        v["billsec"] = str((end - answer) // 1_000_000 if answer else 0)
        v["billmsec"] = str((end - answer) // 1000 if answer else 0)

    def _complete_running(self, ch: SimChannel) -> None:
        """The running application ends with the hangup, before the hangup's later events."""
        running = ch.running
        if running is not None and not running[2]:
            running[2] = True
            self.emit(
                ch,
                "CHANNEL_EXECUTE_COMPLETE",
                [*running[0], ("Application-Response", "_none_"), ("Application-UUID", running[1])],
            )

    def bridge_pair(self, a: SimChannel, b: SimChannel, *, by_app: bool = False) -> None:
        a.partner, b.partner = b, a
        a.bridge_a, b.bridge_a = True, False
        a.bridged_by_app = b.bridged_by_app = by_app
        a.bridged_us = b.bridged_us = self.now_us()
        for ch, other in ((a, b), (b, a)):
            ch.variables["bridge_uuid"] = other.uuid
            ch.variables["bridge_channel"] = other.name
            ch.variables["last_bridge_to"] = other.uuid
        extra = [("Bridge-A-Unique-ID", a.uuid), ("Bridge-B-Unique-ID", b.uuid)]
        self.emit(a, "CHANNEL_BRIDGE", extra + _other_leg_items(b))

    def unbridge(self, x: SimChannel, y: SimChannel) -> None:
        if x.partner is not y:
            return
        x.partner = y.partner = None
        a, b = (x, y) if x.bridge_a else (y, x)
        extra = [("Bridge-A-Unique-ID", a.uuid), ("Bridge-B-Unique-ID", b.uuid)]
        self.emit(a, "CHANNEL_UNBRIDGE", extra + _other_leg_items(b))

    def new_outbound(
        self, dial: str, caller: SimChannel | None, uuid: str | None = None
    ) -> SimChannel:
        ch = SimChannel(
            self,
            name=f"sofia/internal/{dial}@sim",
            direction="outbound",
            caller_number=caller.caller_number if caller else "0000000000",
            caller_name=caller.caller_name if caller else "",
            destination=dial,
            context="default",
            uuid=uuid,
        )
        self.channels[ch.uuid] = ch
        self.emit(ch, "CHANNEL_CREATE")
        return ch

    async def originate(
        self, dial_string: str, caller: SimChannel | None, ring_for: float | None = None
    ) -> tuple[SimChannel | None, str]:
        """Ring a simulated endpoint; (channel, "SUCCESS") or (None, hangup cause)."""
        target = re.sub(r"^(\{[^}]*\}|\[[^]]*\])+", "", dial_string.strip())
        m = re.fullmatch(r"user/([^@]+)(@.*)?", target)
        if target.startswith("error/"):
            return None, target[6:] or "NORMAL_CLEARING"
        agent = self.agents.get(m.group(1)) if m else None
        if agent is None:
            return None, "USER_NOT_REGISTERED" if m else "NO_ROUTE_DESTINATION"
        agent.offered += 1
        if agent.behaviour in ("busy", "unregistered"):
            return None, "USER_BUSY" if agent.behaviour == "busy" else "USER_NOT_REGISTERED"
        # {origination_uuid=...,originate_timeout=...} as `originate` honours them: the
        # service names the leg up front so it can uuid_kill it while it rings
        dial_vars = _dial_variables(dial_string)
        b = self.new_outbound(target, caller, uuid=dial_vars.get("origination_uuid") or None)
        b.variables.update(dial_vars)
        timeout_var = dial_vars.get("originate_timeout", "")
        wait = (
            ring_for
            if ring_for is not None
            else float(timeout_var)
            if timeout_var.isdigit()
            else self.ring_timeout
        )
        # a ringing leg ends early if the caller goes or the leg is killed (uuid_kill)
        ends = caller or b
        if agent.behaviour == "reject":
            await self.sleep(min(0.2, wait))
            self.hangup(b, "CALL_REJECTED")
            return None, "CALL_REJECTED"
        if agent.behaviour == "no_answer" or agent.answer_after >= wait:
            done = await _wait_or(self, wait, ends)
            cause = "NO_ANSWER" if not done else "ORIGINATOR_CANCEL"
            self.hangup(b, cause)
            return None, b.hangup_cause or cause
        done = await _wait_or(self, self.vary(agent.answer_after), ends)
        if done or not b.up:
            self.hangup(b, "ORIGINATOR_CANCEL")
            return None, b.hangup_cause or "ORIGINATOR_CANCEL"
        self.answer(b)
        agent.answered += 1
        if agent.talk_time is not None:
            self.spawn(self._hangup_later(b, self.vary(agent.talk_time), "NORMAL_CLEARING"))
        return b, "SUCCESS"

    # ------------------------------------------------------------------ api

    async def api(self, command: str, caller: SimChannel | None = None) -> str:
        """The `api` commands the service uses, answered like FreeSWITCH does."""
        name, _, args = command.strip().partition(" ")
        argv = args.split()
        ch = self.channels.get(argv[0]) if argv else None
        if name == "status":
            up = time.time() - self._started
            return (
                f"UP 0 years, 0 days, 0 hours, 0 minutes, {int(up)} seconds, 0 milliseconds, "
                f"0 microseconds\nFreeSWITCH (Version 1.10.12-release simulator) is ready\n"
                f"{self.calls_placed} session(s) since startup\n{len(self.channels)} session(s)"
                " - peak 0, last 5min 0 \n"
            )
        if name == "version":
            return "FreeSWITCH Version 1.10.12-release (simulator)\n"
        if name == "show" and argv[:1] == ["channels"]:
            return self._show_channels(argv[1:])
        if name == "uuid_exists":
            return "true" if ch is not None else "false"
        if name in ("uuid_getvar", "uuid_setvar", "uuid_kill", "uuid_bridge", "uuid_transfer",
                    "uuid_recv_dtmf", "uuid_send_dtmf", "uuid_break"):  # fmt: skip
            if ch is None:
                return "-ERR No such channel!\n"
        if name == "uuid_getvar" and ch is not None:
            return (
                ch.variables.get(argv[1], "_undef_") if len(argv) > 1 else "-USAGE: <uuid> <var>\n"
            )
        if name == "uuid_setvar" and ch is not None and len(argv) > 1:
            ch.variables[argv[1]] = " ".join(argv[2:])
            return "+OK\n"
        if name == "uuid_kill" and ch is not None:
            self.hangup(ch, argv[1] if len(argv) > 1 else "NORMAL_CLEARING")
            return "+OK\n"
        if name in ("uuid_recv_dtmf", "uuid_send_dtmf") and ch is not None and len(argv) > 1:
            self.spawn(self._press(ch, argv[1], 0))
            return f"+OK {ch.uuid} received DTMF {argv[1]}.\n"
        if name == "uuid_bridge" and ch is not None and len(argv) > 1:
            other = self.channels.get(argv[1])
            if other is None:
                return f"-ERR Invalid uuid {argv[1]}\n"
            for leg in (ch, other):
                if leg.partner is not None:
                    self.unbridge(leg, leg.partner)
                if leg.socket is not None:
                    leg.socket.interrupt()
            self.bridge_pair(ch, other)
            return f"+OK {other.uuid}\n"
        if name == "uuid_transfer" and ch is not None and len(argv) > 1:
            self.transfer(ch, argv[1])
            return "+OK\n"
        if name == "uuid_break" and ch is not None:
            if ch.socket is not None:
                ch.socket.interrupt()
            return "+OK\n"
        if name == "hupall":
            for leg in list(self.channels.values()):
                self.hangup(leg, argv[0] if argv else "MANAGER_REQUEST")
            return (
                "+OK hangup all channels with cause "
                + (argv[0] if argv else "MANAGER_REQUEST")
                + "\n"
            )
        if name == "originate" and argv:
            leg, cause = await self.originate(argv[0], None)
            if leg is None:
                return f"-ERR {cause}\n"
            rest = argv[1:]
            if rest and rest[0] == "&park()":
                leg.parked = True
                self.emit(leg, "CHANNEL_PARK")
            return f"+OK {leg.uuid}\n"
        extra = self._api_call_control(name, argv, ch)
        if extra is not None:
            return extra
        return f"-ERR {name} Command not found!\n"

    def _api_call_control(self, name: str, argv: list[str], ch: SimChannel | None) -> str | None:
        """uuid_hold, uuid_record, uuid_broadcast and `conference <room> hup all|list`."""
        if name == "uuid_hold":
            off = argv[:1] == ["off"]
            leg = self.channels.get(argv[1] if off and len(argv) > 1 else argv[0]) if argv else None
            if leg is None:
                return "-ERR No such channel!\n"
            self.emit(leg, "CHANNEL_UNHOLD" if off else "CHANNEL_HOLD")
            return "+OK Success\n"
        if name == "uuid_record":
            if ch is None or len(argv) < 3:
                return "-ERR No such channel!\n" if ch is None else "-USAGE: <uuid> start <path>\n"
            if argv[1] == "start":
                ch.variables["record_session_path"] = argv[2]
            return "+OK Success\n"
        if name == "uuid_broadcast":
            if ch is None or len(argv) < 2:
                return "-ERR No such channel!\n"
            self.spawn(_run_app(self, ch, Command("sendmsg", {
                "call-command": "execute", "execute-app-name": "playback",
                "execute-app-arg": argv[1]})))  # fmt: skip
            return "+OK Message sent\n"
        if name == "conference" and len(argv) >= 2:
            members = self.rooms.get(argv[0])
            if members is None:
                return f"-ERR Conference {argv[0]} not found\n"
            if argv[1] == "hup" and argv[2:3] == ["all"]:
                for uuid in list(members):
                    if (leg := self.channels.get(uuid)) is not None:
                        self.hangup(leg, "NORMAL_CLEARING")
                return "OK kicked all\n"
            if argv[1] == "list":
                return "".join(f"{i};{u}\n" for i, u in enumerate(sorted(members), 1))
        return None

    def transfer(self, ch: SimChannel, destination: str) -> None:
        if ch.partner is not None:
            partner = ch.partner
            self.unbridge(ch, partner)
            self.hangup(partner, "NORMAL_CLEARING")
        if ch.socket is not None:
            ch.socket.release()
        ch.destination = destination
        if self.socket_target is not None and destination == "12345" and ch.up:
            self.spawn(self._connect_socket(ch))

    def _show_channels(self, args: list[str]) -> str:
        rows = list(self.channels.values())
        if args[:1] == ["count"]:
            return f"\n{len(rows)} total.\n"
        if args[:2] == ["as", "json"]:
            if not rows:
                return '{"row_count": 0}\n'
            data = {
                "row_count": len(rows),
                "rows": [
                    {"uuid": r.uuid, "direction": r.direction, "name": r.name,
                     "cid_num": r.caller_number, "dest": r.destination,
                     "callstate": r.call_state, "created_epoch": str(r.created_us // 1_000_000)}
                    for r in rows
                ],
            }  # fmt: skip
            return json.dumps(data, indent=1) + "\n"
        if not rows:
            return "\n0 total.\n"
        head = "uuid,direction,created_epoch,name,cid_num,dest,callstate\n"
        lines = [
            f"{r.uuid},{r.direction},{r.created_us // 1_000_000},{r.name},{r.caller_number},"
            f"{r.destination},{r.call_state}"
            for r in rows
        ]
        return "\n" + head + "\n".join(lines) + f"\n\n{len(rows)} total.\n"

    # ------------------------------------------------------------------ inbound ESL server

    async def _inbound_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        session = _InboundSession(self, reader, writer)
        try:
            await session.run()
        finally:
            self.listeners.discard(session)
            session.close()


def _dial_variables(dial_string: str) -> dict[str, str]:
    """The `{a=b,c=d}` and `[a=b]` blocks in front of a dial string, as a dict."""
    out: dict[str, str] = {}
    rest = dial_string.strip()
    while m := re.match(r"\{([^}]*)\}|\[([^]]*)\]", rest):
        for part in filter(None, (m.group(1) or m.group(2) or "").split(",")):
            name, _, value = part.partition("=")
            out[name.strip()] = value.strip()
        rest = rest[m.end() :]
    return out


async def _wait_or(
    sim: FreeSwitchSimulator, seconds: float, gone: SimChannel | asyncio.Event | None
) -> bool:
    """Sleep `seconds` (scaled) unless the channel hangs up (or `gone` is set) first;
    True if it did.

    For a channel: one future per channel and `asyncio.wait` (a timer, no task), as
    this runs for every prompt of every simulated call."""
    if gone is None:
        await sim.sleep(seconds)
        return False
    if isinstance(gone, SimChannel):
        if not gone.up:
            return True
        await asyncio.wait((gone.gone_future(),), timeout=seconds * sim.time_scale)
        return not gone.up
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(gone.wait(), seconds * sim.time_scale)
    return gone.is_set()


_Q850 = {
    "NORMAL_CLEARING": 16,
    "USER_BUSY": 17,
    "NO_ANSWER": 19,
    "CALL_REJECTED": 21,
    "ORIGINATOR_CANCEL": 487,
    "DESTINATION_OUT_OF_ORDER": 27,
    "SYSTEM_SHUTDOWN": 41,
    "MANAGER_REQUEST": 0,
}


_DEFAULT_CALLING = ("switch_event.c", "switch_event_fire_detailed", 1)
_LEADING = ("Bridge-A-Unique-ID", "Bridge-B-Unique-ID")


def _split_extra(
    extra: Sequence[tuple[str, str]],
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
    """An event's own headers by where FreeSWITCH puts them: bridge ids before the
    channel block, Other-Leg-* after the caller profile, the rest after the variables."""
    leading = [kv for kv in extra if kv[0] in _LEADING]
    rest = [kv for kv in extra if kv not in leading]
    other = [kv for kv in rest if kv[0].startswith("Other-")]
    return leading, other, [kv for kv in rest if kv not in other]


def _state_key(ch: SimChannel) -> tuple[str, str, str, str | None]:
    return (ch.state, ch.call_state, ch.answer_state, ch.hangup_cause)


def _state_items(ch: SimChannel) -> list[tuple[str, str]]:
    items = [
        ("Channel-State", ch.state),
        ("Channel-Call-State", ch.call_state),
        ("Channel-State-Number", str(_STATE_NUMBER.get(ch.state, 4))),
        ("Channel-Name", ch.name),
        ("Unique-ID", ch.uuid),
        ("Call-Direction", ch.direction),
        ("Presence-Call-Direction", ch.direction),
        ("Channel-HIT-Dialplan", "true" if ch.direction == "inbound" else "false"),
        ("Channel-Call-UUID", ch.uuid),
        ("Answer-State", ch.answer_state),
    ]
    if ch.hangup_cause:
        items.append(("Hangup-Cause", ch.hangup_cause))
    return items


def _profile_key(ch: SimChannel) -> tuple[object, ...]:
    return (
        ch.caller_name,
        ch.caller_number,
        ch.destination,
        ch.context,
        ch.name,
        ch.answered_us,
        ch.hangup_us,
        ch.bridged_us,
    )


def _caller_profile(ch: SimChannel) -> list[tuple[str, str]]:
    return _profile_items("Caller", ch)


def _variable_items(ch: SimChannel) -> list[tuple[str, str]]:
    return [(f"variable_{k}", v) for k, v in ch.variables.items()]


def _codec_items() -> list[tuple[str, str]]:
    return [
        ("Channel-Read-Codec-Name", "PCMU"),
        ("Channel-Read-Codec-Rate", "8000"),
        ("Channel-Read-Codec-Bit-Rate", "64000"),
        ("Channel-Write-Codec-Name", "PCMU"),
        ("Channel-Write-Codec-Rate", "8000"),
        ("Channel-Write-Codec-Bit-Rate", "64000"),
    ]


def _profile_items(prefix: str, ch: SimChannel) -> list[tuple[str, str]]:
    """The caller profile block (Caller-*, Channel-* in CHANNEL_DATA, Other-Leg-* in bridges)."""
    items = [
        (f"{prefix}-Direction", ch.direction),
        (f"{prefix}-Logical-Direction", ch.direction),
        (f"{prefix}-Dialplan", "xml"),
    ]
    if ch.caller_name:
        items.append((f"{prefix}-Caller-ID-Name", ch.caller_name))
    items += [
        (f"{prefix}-Caller-ID-Number", ch.caller_number),
        (f"{prefix}-Orig-Caller-ID-Number", ch.caller_number),
        (f"{prefix}-Callee-ID-Name", "Outbound Call"),
        (f"{prefix}-Callee-ID-Number", ch.destination),
        (f"{prefix}-ANI", ch.caller_number),
        (f"{prefix}-Destination-Number", ch.destination),
        (f"{prefix}-Unique-ID", ch.uuid),
        (f"{prefix}-Source", "mod_sofia"),
        (f"{prefix}-Context", ch.context),
        (f"{prefix}-Channel-Name", ch.name),
    ]
    if prefix != "Other-Leg":
        items.append((f"{prefix}-Profile-Index", "1"))
    items += [
        (f"{prefix}-Profile-Created-Time", str(ch.created_us)),
        (f"{prefix}-Channel-Created-Time", str(ch.created_us)),
        (f"{prefix}-Channel-Answered-Time", str(ch.answered_us)),
        (f"{prefix}-Channel-Progress-Time", "0"),
        (f"{prefix}-Channel-Progress-Media-Time", "0"),
        (f"{prefix}-Channel-Hangup-Time", str(ch.hangup_us)),
        (f"{prefix}-Channel-Transfer-Time", "0"),
        (f"{prefix}-Channel-Resurrect-Time", "0"),
        (f"{prefix}-Channel-Bridged-Time", str(ch.bridged_us)),
        (f"{prefix}-Channel-Last-Hold", "0"),
        (f"{prefix}-Channel-Hold-Accum", "0"),
        (f"{prefix}-Screen-Bit", "true"),
        (f"{prefix}-Privacy-Hide-Name", "false"),
        (f"{prefix}-Privacy-Hide-Number", "false"),
    ]
    return items


def _other_leg_items(other: SimChannel) -> list[tuple[str, str]]:
    return [("Other-Type", "originatee"), *_profile_items("Other-Leg", other)]


async def _read_command(reader: asyncio.StreamReader) -> Command | None:
    """One command as mod_event_socket reads it (line, headers, optional body)."""
    try:
        block = await reader.readuntil(b"\n\n")
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        return None
    lines = block.decode("utf-8", "replace").rstrip("\n").split("\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.setdefault(k.strip().lower(), v.strip())
    body = None
    length = headers.get("content-length")
    if length and length.isdigit():
        try:
            body = (await reader.readexactly(int(length))).decode("utf-8", "replace")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
    return Command(lines[0].strip(), headers, body)


class _Writer:
    """Shared write side of both session kinds.

    What one turn of the event loop sends to a socket (a command's reply and the
    events it caused, a hang-up's seven events) goes out as one write: a syscall per
    frame on both ends was a large share of a 1,000-call run. The bytes are the same.
    """

    writer: asyncio.StreamWriter | None
    _out: list[bytes] | None = None

    def send(self, data: bytes) -> None:
        w = self.writer
        if w is None or w.is_closing():
            return
        if self._out is None:
            self._out = [data]
            asyncio.get_running_loop().call_soon(self.flush)
        else:
            self._out.append(data)

    def flush(self) -> None:
        out, self._out = self._out, None
        w = self.writer
        if out and w is not None and not w.is_closing():
            w.write(out[0] if len(out) == 1 else b"".join(out))

    async def drain(self) -> None:
        self.flush()
        if self.writer is not None:
            with contextlib.suppress(ConnectionError):
                await self.writer.drain()

    def close(self) -> None:
        self.flush()
        w = self.writer
        if w is not None and not w.is_closing():
            w.close()


class _InboundSession(_Writer):
    """One inbound ESL client of the simulated switch (port 8021)."""

    def __init__(
        self, sim: FreeSwitchSimulator, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.sim = sim
        self.reader = reader
        self.writer = writer
        self.format = "plain"
        self.events: set[str] = set()
        self.filters: list[tuple[str, str]] = []

    async def run(self) -> None:
        if self.sim.deny_inbound:
            self.send(encode_rude_rejection())
            await self.drain()
            return
        self.send(b"Content-Type: auth/request\n\n")
        cmd = await _read_command(self.reader)
        if cmd is None:
            return
        if cmd.line != f"auth {self.sim.password}":
            self.send(encode_reply("-ERR invalid") + encode_disconnect_notice())
            await self.drain()
            return
        self.send(encode_reply("+OK accepted"))
        self.sim.listeners.add(self)
        while (cmd := await _read_command(self.reader)) is not None:
            if not await self.handle(cmd):
                return

    async def handle(self, cmd: Command) -> bool:
        verb, _, rest = cmd.line.partition(" ")
        sim = self.sim
        if verb == "event":
            fmt, _, names = rest.partition(" ")
            if fmt not in ("plain", "json"):
                self.send(encode_reply(f"-ERR {fmt} events are not simulated"))
                return True
            self.format = fmt
            self.events.update(names.split())
            self.send(encode_reply(f"+OK event listener enabled {fmt}"))
        elif verb == "nixevent":
            self.events.difference_update(rest.split())
            self.send(encode_reply("+OK events nixed"))
        elif verb == "noevents":
            self.events.clear()
            self.send(encode_reply("+OK no longer listening for events"))
        elif verb == "filter":
            argv = rest.split(" ", 2)
            if argv[0] == "delete":
                if argv[1:2] == ["all"]:
                    self.filters.clear()
                    self.send(encode_reply("+OK filter deleted. [all][]"))
                else:
                    hdr = argv[1] if len(argv) > 1 else ""
                    val = argv[2] if len(argv) > 2 else None
                    self.filters = [
                        f for f in self.filters if not (f[0] == hdr and val in (None, f[1]))
                    ]
                    self.send(encode_reply(f"+OK filter deleted. [{hdr}][{val or ''}]"))
            elif len(argv) == 2:
                self.filters.append((argv[0], argv[1]))
                self.send(encode_reply(f"+OK filter added. [{argv[0]}]=[{argv[1]}]"))
            else:
                self.send(encode_reply("-ERR invalid syntax"))
        elif verb == "api":
            self.send(encode_api_response(await sim.api(rest)))
        elif verb == "bgapi":
            job = cmd.headers.get("job-uuid") or str(uuidlib.uuid4())
            self.send(encode_reply(f"+OK Job-UUID: {job}", [("Job-UUID", job)]))
            sim.spawn(self._bgapi(rest, job))
        elif verb == "sendmsg":
            ch = sim.channels.get(rest.strip())
            if ch is None:
                self.send(encode_reply(f"-ERR invalid session id [{rest.strip()}]"))
            else:
                self.send(encode_reply("+OK"))
                _apply_sendmsg(sim, ch, cmd, ch.socket)
        elif verb == "exit":
            self.send(encode_reply("+OK bye") + encode_disconnect_notice())
            sim.listeners.discard(self)
            await self.drain()
            return False
        else:
            self.send(encode_reply("-ERR command not found"))
        return True

    async def _bgapi(self, command: str, job: str) -> None:
        result = await self.sim.api(command)
        name, _, arg = command.partition(" ")
        extra = [("Job-UUID", job), ("Job-Command", name)]
        if arg:
            extra.append(("Job-Command-Arg", arg))
        self.sim.emit(None, "BACKGROUND_JOB", extra, body=result)

    def maybe_send(self, name: str, items: Sequence[tuple[str, str]], body: str | None) -> None:
        if name not in self.events and "ALL" not in self.events:
            return
        if self.filters and not any((k, v) in self.filters for k, v in items):
            return
        self.sim.events_sent += 1
        self.send(
            encode_event_plain(items, body)
            if self.format == "plain"
            else encode_event_json(items, body)
        )


class _SocketSession(_Writer):
    """The simulated switch's side of one outbound socket (`socket ... async full`)."""

    def __init__(self, sim: FreeSwitchSimulator, ch: SimChannel) -> None:
        self.sim = sim
        self.ch = ch
        self.reader: asyncio.StreamReader | None = None
        self.writer = None
        self.myevents = False
        self.format = "plain"
        self.linger = False
        self.app_uuid = str(uuidlib.uuid4())  # the `socket` application's own id
        self.queue: asyncio.Queue[Command] = asyncio.Queue()
        self._runner: asyncio.Task[object] | None = None
        self._current: asyncio.Task[object] | None = None
        self._released = False

    def attach(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def send_event(self, items: Sequence[tuple[str, str]], body: str | None) -> None:
        self.sim.events_sent += 1
        self.send(
            encode_event_plain(items, body)
            if self.format == "plain"
            else encode_event_json(items, body)
        )

    async def run(self) -> None:
        assert self.reader is not None
        sim, ch = self.sim, self.ch
        try:
            cmd = await _read_command(self.reader)
            if cmd is None or cmd.line != "connect":
                return
            self.send(self._channel_data())
            self._runner = sim.spawn(self._apps())
            while (cmd := await _read_command(self.reader)) is not None:
                verb, _, rest = cmd.line.partition(" ")
                if verb == "myevents":
                    self.myevents = True
                    self.format = "json" if rest.strip() == "json" else "plain"
                    self.send(encode_reply("+OK Events Enabled"))
                elif verb == "linger":
                    self.linger = True
                    self.send(encode_reply("+OK will linger"))
                elif verb == "nolinger":
                    self.linger = False
                    self.send(encode_reply("+OK will not linger"))
                elif verb == "resume":
                    self.send(encode_reply("+OK"))
                elif verb == "sendmsg":
                    if not ch.up:
                        self.send(encode_reply("-ERR invalid session id"))
                        continue
                    self.send(encode_reply("+OK"))
                    if not ch.parked:
                        ch.parked = True
                        sim.emit(ch, "CHANNEL_PARK")
                    _apply_sendmsg(sim, ch, cmd, self)
                elif verb == "api":
                    self.send(encode_api_response(await sim.api(rest, ch)))
                elif verb == "exit":
                    self.send(encode_reply("+OK bye") + encode_disconnect_notice())
                    break
                else:
                    self.send(encode_reply("-ERR command not found"))
        finally:
            if self._runner is not None:
                self._runner.cancel()
            self.close()
            if ch.socket is self:
                ch.socket = None
                if ch.up and not self._released:  # the app dropped the socket: FS hangs up
                    sim.hangup(ch, "NORMAL_CLEARING")

    def _channel_data(self) -> bytes:
        ch = self.ch
        items = self.sim._event_items(ch, "CHANNEL_DATA", ())
        head = items[:13]
        body = items[13:]
        profile = _profile_items("Channel", ch)
        text = "".join([plain_line(kv) for kv in [*head, *profile, *body]])
        return (
            text + "Content-Type: command/reply\nReply-Text: %2BOK%0A\n"
            "Socket-Mode: async\nControl: full\n\n"
        ).encode()

    async def _apps(self) -> None:
        while True:
            cmd = await self.queue.get()
            if not self.ch.up:
                continue
            self._current = asyncio.current_task()  # type: ignore[assignment]
            await _run_app(self.sim, self.ch, cmd)

    def enqueue(self, cmd: Command) -> None:
        self.queue.put_nowait(cmd)

    def interrupt(self) -> None:
        """Stop the running application (hangup, uuid_break, uuid_bridge)."""
        runner = self._runner
        if runner is not None and self._current is runner:
            runner.cancel()
            self._runner = self.sim.spawn(self._apps())
            self._current = None

    def channel_gone(self) -> None:
        """After CHANNEL_HANGUP_COMPLETE: disconnect notice; with linger, wait for the app.

        The session is detached from the channel first, so CHANNEL_DESTROY never reaches
        the socket (transcript 04 ends with the notice)."""
        ch = self.ch
        self.myevents = False
        if self.linger:
            extra = [
                ("Controlled-Session-UUID", ch.uuid),
                ("Content-Disposition", "linger"),
                ("Channel-Name", ch.name),
                ("Linger-Time", "-1"),
            ]
            self.send(encode_disconnect_notice(extra, text=""))
            self.sim.spawn(self._close_later())
        else:
            extra = [
                ("Controlled-Session-UUID", ch.uuid),
                ("Content-Disposition", "disconnect"),
            ]
            self.send(encode_disconnect_notice(extra, text=""))
            self.close()

    def release(self) -> None:
        """The channel left socket control (transfer): FreeSWITCH disconnects the socket."""
        self._released = True
        extra = [("Controlled-Session-UUID", self.ch.uuid), ("Content-Disposition", "disconnect")]
        self.send(encode_disconnect_notice(extra, text=""))
        self.close()

    async def _close_later(self) -> None:
        await asyncio.sleep(self.sim.linger_close_after)
        self.close()


def _apply_sendmsg(
    sim: FreeSwitchSimulator, ch: SimChannel, cmd: Command, session: _SocketSession | None
) -> None:
    what = cmd.headers.get("call-command", "")
    if what == "hangup":
        sim.hangup(ch, cmd.headers.get("hangup-cause") or "NORMAL_CLEARING")
    elif what == "execute":
        if session is not None:
            session.enqueue(cmd)
        else:
            sim.spawn(_run_app(sim, ch, cmd))
    elif what == "unicast" or what == "nomedia":
        pass


async def _run_app(sim: FreeSwitchSimulator, ch: SimChannel, cmd: Command) -> None:
    app = cmd.headers.get("execute-app-name", "")
    arg = cmd.body if cmd.body is not None else cmd.headers.get("execute-app-arg")
    app_uuid = cmd.headers.get("event-uuid") or str(uuidlib.uuid4())
    ch.apps.append((app, arg or ""))
    ch.variables["current_application"] = app
    if arg is not None:
        ch.variables["current_application_data"] = arg
    else:
        ch.variables.pop("current_application_data", None)
    app_headers = [("Application", app)]
    if arg is not None:
        app_headers.append(("Application-Data", arg))
    sim.emit(ch, "CHANNEL_EXECUTE", [*app_headers, ("Application-UUID", app_uuid)])
    running: list = [app_headers, app_uuid, False]  # type: ignore[type-arg]
    ch.running = running
    response = "_none_"
    try:
        response = await _APPS.get(app, _invalid_app)(sim, ch, arg or "")
    finally:
        if ch.running is running:
            ch.running = None
        if not running[2]:
            running[2] = True
            sim.emit(
                ch,
                "CHANNEL_EXECUTE_COMPLETE",
                [*app_headers, ("Application-Response", response), ("Application-UUID", app_uuid)],
            )


async def _app_answer(sim: FreeSwitchSimulator, ch: SimChannel, arg: str) -> str:
    sim.answer(ch)
    return "_none_"


async def _app_noop(sim: FreeSwitchSimulator, ch: SimChannel, arg: str) -> str:
    return "_none_"


async def _app_set(sim: FreeSwitchSimulator, ch: SimChannel, arg: str) -> str:
    name, _, value = arg.partition("=")
    if name:
        ch.variables[name] = value
    return "_none_"


async def _app_sleep(sim: FreeSwitchSimulator, ch: SimChannel, arg: str) -> str:
    ms = int(arg) if arg.strip().isdigit() else 0
    await _wait_or(sim, ms / 1000, ch)
    return "_none_"


async def _app_park(sim: FreeSwitchSimulator, ch: SimChannel, arg: str) -> str:
    await ch.gone.wait()
    return "_none_"


def _media_files(arg: str) -> list[str]:
    """`file_string://a!b` plays a, then b; anything else is one file or stream."""
    if arg.startswith("file_string://"):
        return [f for f in arg[len("file_string://") :].split("!") if f]
    return [arg]


async def _play(
    sim: FreeSwitchSimulator, ch: SimChannel, path: str, stop_keys: str = ""
) -> str | None:
    """Play one file: "" if it ran to the end, the key that stopped it, None if the
    channel went. Keys not in `stop_keys` are swallowed, as the playback loop does."""
    ftype = path.split("://", 1)[0] if "://" in path else path.rsplit(".", 1)[-1]
    extra = [("Playback-File-Type", ftype), ("Playback-File-Path", path)]
    for listener in list(sim.listeners):  # myevents does not carry PLAYBACK_* (transcript 04)
        listener.maybe_send("PLAYBACK_START", sim._event_items(ch, "PLAYBACK_START", extra), None)
    seconds = sim.vary(sim.media_seconds.get(path, sim.playback_seconds))
    key = ""
    if stop_keys:
        key_or_gone = await _key_or_gone(sim, ch, seconds, stop_keys)
        gone = key_or_gone is None
        key = key_or_gone or ""
    else:
        gone = await _wait_or(sim, seconds, ch)
        while not ch.dtmf.empty():
            ch.dtmf.get_nowait()
    ms = int(seconds * 1000)
    ch.variables.update(
        playback_seconds=str(ms // 1000), playback_ms=str(ms), playback_samples=str(ms * 8)
    )
    stop = [*extra, ("Playback-Status", "break" if gone or key else "done")]
    for listener in list(sim.listeners):
        listener.maybe_send("PLAYBACK_STOP", sim._event_items(ch, "PLAYBACK_STOP", stop), None)
    return None if gone else key


async def _key_or_gone(
    sim: FreeSwitchSimulator, ch: SimChannel, seconds: float, stop_keys: str
) -> str | None:
    """Wait `seconds` for a key in `stop_keys`: the key, "" when time ran out, None if
    the channel went first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds * sim.time_scale
    gone = ch.gone_future()
    while ch.up:
        while not ch.dtmf.empty():
            digit = ch.dtmf.get_nowait()
            if digit in stop_keys:
                return digit
        remaining = deadline - loop.time()
        if remaining <= 0:
            return ""
        ch.key_waiter = loop.create_future()  # no task per prompt: futures and a timer
        try:
            await asyncio.wait(
                (ch.key_waiter, gone), timeout=remaining, return_when="FIRST_COMPLETED"
            )
        finally:
            ch.key_waiter = None
    return None


async def _play_files(
    sim: FreeSwitchSimulator, ch: SimChannel, arg: str, stop_keys: str = ""
) -> str | None:
    for path in _media_files(arg):
        result = await _play(sim, ch, path, stop_keys)
        if result is None or result:
            return result
    return ""


def _playback_terminators(ch: SimChannel) -> str:
    """mod_dptools' on_dtmf: `playback_terminators`, `*` when unset, `none` for none."""
    keys = ch.variables.get("playback_terminators", "*")
    return "" if keys.lower() == "none" else keys


async def _app_playback(sim: FreeSwitchSimulator, ch: SimChannel, arg: str) -> str:
    if not ch.answered_us:
        sim.answer(ch)  # FreeSWITCH pre-answers/answers to play media
    ch.variables.pop("playback_terminator_used", None)  # set to "" = unset
    result = await _play_files(sim, ch, arg, _playback_terminators(ch))
    if result:
        ch.variables["playback_terminator_used"] = result
    return "FILE NOT FOUND" if result is None else "FILE PLAYED"


async def _app_record(sim: FreeSwitchSimulator, ch: SimChannel, arg: str) -> str:
    """`record <path> [<limit s>] [<silence thresh>] [<silence hits>]`: the caller talks
    for `speaks_for` seconds and presses #, or the limit or a hang-up ends it."""
    argv = arg.split()
    if not argv:
        return "_none_"
    limit_arg = argv[1].lstrip("+") if len(argv) > 1 else ""
    limit = float(limit_arg) if limit_arg.isdigit() and int(limit_arg) > 0 else None
    ch.variables.pop("playback_terminator_used", None)  # set to "" = unset
    for listener in list(sim.listeners):
        items = sim._event_items(ch, "RECORD_START", [("Record-File-Path", argv[0])])
        listener.maybe_send("RECORD_START", items, None)
    ch.recording = asyncio.get_running_loop().time()
    talk = ch.speaks_for if limit is None else min(ch.speaks_for, limit)
    gone = await _wait_or(sim, talk, ch)
    if not gone:
        if limit is None or ch.speaks_for < limit:
            ch.variables["playback_terminator_used"] = "#"
        _stop_recording(sim, ch, argv[0])
    return "_none_"


def _stop_recording(sim: FreeSwitchSimulator, ch: SimChannel, path: str = "") -> None:
    """What switch_ivr_record_file sets when it returns (also when a hang-up ends it)."""
    started, ch.recording = ch.recording, None
    if started is None:
        return
    elapsed = (asyncio.get_running_loop().time() - started) / (sim.time_scale or 1)
    ms = int(elapsed * 1000)
    ch.variables.update(
        record_ms=str(ms), record_seconds=str(ms // 1000), record_samples=str(ms * 8)
    )
    for listener in list(sim.listeners):
        items = sim._event_items(ch, "RECORD_STOP", [("Record-File-Path", path)])
        listener.maybe_send("RECORD_STOP", items, None)


async def _app_unset(sim: FreeSwitchSimulator, ch: SimChannel, arg: str) -> str:
    ch.variables.pop(arg.strip(), None)
    return "_none_"


async def _app_pagd(sim: FreeSwitchSimulator, ch: SimChannel, arg: str) -> str:
    """Arguments: min max tries timeout terminators file invalid_file var regexp digit_timeout.

    As switch_play_and_get_digits: any key stops the prompt and counts; the variable
    is cleared at each try and holds what was read (even a too-short entry, with
    read_result=failure); a regexp mismatch clears it again.
    """
    argv = arg.split()
    if len(argv) < 6:
        return "_none_"
    min_d, max_d, tries, timeout_ms = (int(x) for x in argv[:4])
    terminators = "" if argv[4].lower() == "none" else argv[4]
    prompt = argv[5]
    invalid = argv[6] if len(argv) > 6 else ""
    var = argv[7] if len(argv) > 7 else ""
    regex = argv[8] if len(argv) > 8 else ""
    digit_timeout = int(argv[9]) / 1000 if len(argv) > 9 and int(argv[9]) else timeout_ms / 1000
    for _ in range(max(tries, 1)):
        ch.variables.pop("read_result", None)
        if var:
            ch.variables.pop(var, None)
        if ch.on_prompt is not None:
            ch.on_prompt()
        first = await _play_files(sim, ch, prompt, "0123456789*#ABCD")
        if first is None:
            return "_none_"
        digits, term = "", ""
        pending = [first] if first else []
        wait = timeout_ms / 1000
        timed_out = False
        while len(digits) < max_d and ch.up:
            if pending:
                digit = pending.pop()
            else:
                try:
                    digit = await asyncio.wait_for(ch.dtmf.get(), wait * sim.time_scale)
                except TimeoutError:
                    timed_out = True
                    break
            if digit in terminators:
                term = digit
                break
            digits += digit
            wait = digit_timeout
        if not ch.up:
            return "_none_"
        if term:
            ch.variables["read_terminator_used"] = term
        ok = len(digits) >= min_d
        ch.variables["read_result"] = "failure" if not ok else "timeout" if timed_out else "success"
        if var and digits:
            ch.variables[var] = digits
        if ok and digits:
            if not regex or re.search(regex, digits):
                return "_none_"
            if var:
                ch.variables.pop(var, None)
                ch.variables[f"{var}_invalid"] = digits
        if invalid:
            await _play_files(sim, ch, invalid)
    return "_none_"


async def _app_bridge(sim: FreeSwitchSimulator, ch: SimChannel, arg: str) -> str:
    """Ring each `|`-separated target in turn; the first answer is bridged until a hangup."""
    timeout = ch.variables.get("call_timeout")
    limit = float(timeout) if timeout and timeout.isdigit() else None
    m = re.search(r"(?:leg_timeout|call_timeout)=(\d+)", arg)
    if m:
        limit = float(m.group(1))
    cause = "NO_ROUTE_DESTINATION"
    for target in arg.split("|"):
        leg, cause = await sim.originate(target.split(",")[0], ch, limit)
        if leg is not None:
            break
        if not ch.up:
            return "_none_"
    else:
        ch.variables["originate_disposition"] = cause
        ch.variables["DIALSTATUS"] = _DIALSTATUS.get(cause, cause)
        ch.variables["originate_failed_cause"] = cause
        return "_none_"
    if not ch.answered_us:
        sim.answer(ch)
    ch.variables["originate_disposition"] = "SUCCESS"
    ch.variables["DIALSTATUS"] = "SUCCESS"
    sim.bridge_pair(ch, leg, by_app=True)
    await leg.gone.wait()
    ch.variables["bridge_hangup_cause"] = leg.hangup_cause or "NORMAL_CLEARING"
    ch.variables["last_bridge_hangup_cause"] = leg.hangup_cause or "NORMAL_CLEARING"
    if ch.up and ch.partner is leg:
        sim.unbridge(ch, leg)
    if ch.up and ch.variables.get("hangup_after_bridge") == "true":
        sim.hangup(ch, "NORMAL_CLEARING")
    return "_none_"


async def _app_conference(sim: FreeSwitchSimulator, ch: SimChannel, arg: str) -> str:
    """`conference <room>@<profile>`: leaves any bridge, stays in the room until hangup."""
    room = arg.split("@", 1)[0].strip()
    if not room:
        return "_none_"
    if not ch.answered_us:
        sim.answer(ch)
    if ch.partner is not None:
        sim.unbridge(ch, ch.partner)
    members = sim.rooms.setdefault(room, set())
    members.add(ch.uuid)
    ch.variables["conference_name"] = room
    try:
        await ch.gone.wait()
    finally:
        members.discard(ch.uuid)
        if not members:
            sim.rooms.pop(room, None)
    return "_none_"


async def _app_hangup(sim: FreeSwitchSimulator, ch: SimChannel, arg: str) -> str:
    sim.hangup(ch, arg.strip() or "NORMAL_CLEARING")
    return "_none_"


async def _app_record_session(sim: FreeSwitchSimulator, ch: SimChannel, arg: str) -> str:
    ch.variables["record_session_path"] = arg
    return "_none_"


async def _app_transfer(sim: FreeSwitchSimulator, ch: SimChannel, arg: str) -> str:
    sim.transfer(ch, arg.split()[0] if arg.split() else "")
    return "_none_"


async def _invalid_app(sim: FreeSwitchSimulator, ch: SimChannel, arg: str) -> str:
    log.info("simulator: invalid application on %s", ch.uuid)
    sim.hangup(ch, "DESTINATION_OUT_OF_ORDER")
    return "_none_"


_APPS = {
    "answer": _app_answer,
    "pre_answer": _app_noop,
    "ring_ready": _app_noop,
    "log": _app_noop,
    "export": _app_set,
    "set": _app_set,
    "sleep": _app_sleep,
    "park": _app_park,
    "playback": _app_playback,
    "play_and_get_digits": _app_pagd,
    "record": _app_record,
    "unset": _app_unset,
    "bridge": _app_bridge,
    "hangup": _app_hangup,
    "record_session": _app_record_session,
    "transfer": _app_transfer,
    "conference": _app_conference,
}


_CODEC_TEXT = "".join(plain_line(kv) for kv in _codec_items())
