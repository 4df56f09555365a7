"""Outbound event socket: FreeSWITCH connects to us once per call (`socket ... async full`).

Each connection becomes a CallLeg handed to the application's handler. In async mode
`sendmsg` is answered +OK at once; the application really ends with a
CHANNEL_EXECUTE_COMPLETE carrying our Event-UUID back as Application-UUID, so each
`execute` registers a future under a fresh uuid and the event resolves it (transcript
04). After `linger`, FreeSWITCH sends the call's last events and a disconnect notice
and leaves the socket open for us to close.

What is bounded: every command's reply (`sendmsg` is answered +OK at once in async
mode; an `api` within `api_timeout`), because the socket answers in order and one
missing reply leaves the call beyond our control for good; the socket is then
dropped (FreeSWITCH hangs up a channel whose socket closes, unless we sent
`resume`) and the leg raises CallLost. What is not: an application's
CHANNEL_EXECUTE_COMPLETE. A prompt, a bridge, a conference legitimately last as
long as the call; they end with the channel (its hang-up event, the linger notice,
the socket closing), which is the bound that fits them. Callers that know a limit
(a menu) wrap `execute` in `asyncio.timeout` and break the application with
`uuid_break`.

CallLeg knows nothing of IVR flows or queues: ivr/ and the ACD adapt to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from hotline.telephony.errors import (
    CallHungUp,
    CallLost,
    ESLCommandError,
    ESLCommandTimeout,
    ESLDisconnected,
    ESLError,
)
from hotline.telephony.esl_connection import (
    DEFAULT_API_TIMEOUT_S,
    DEFAULT_REPLY_TIMEOUT_S,
    ESLConnection,
)
from hotline.telephony.esl_frames import Event, Frame, encode_command, encode_execute, encode_hangup

log = logging.getLogger("hotline.telephony.outbound")

CallHandler = Callable[["CallLeg"], Awaitable[None]]
LegEventHandler = Callable[[Event], None]

# Reply headers of `connect` that belong to the reply, not to the channel data.
_REPLY_ONLY = frozenset({"Content-Type", "Reply-Text", "Socket-Mode", "Control"})


@dataclass(frozen=True, slots=True)
class BridgeResult:
    """How a `bridge` ended: `answered` if the far end picked up (the bridge then ran
    until one side hung up), else the reason it never connected."""

    answered: bool
    cause: str
    event: Event


class CallLeg:
    """One call under our control through its outbound socket."""

    def __init__(
        self,
        conn: ESLConnection,
        channel: Event,
        *,
        linger_grace: float = 5.0,
        reply_timeout: float = DEFAULT_REPLY_TIMEOUT_S,
        api_timeout: float = DEFAULT_API_TIMEOUT_S,
    ) -> None:
        self._conn = conn
        self.linger_grace = linger_grace
        self.reply_timeout = reply_timeout
        self.api_timeout = api_timeout
        self._linger_timer: asyncio.TimerHandle | None = None
        self.channel = channel
        self.uuid: str = channel.get("Unique-ID") or channel.get("Channel-Unique-ID") or ""
        self.caller_number: str = channel.get("Caller-Caller-ID-Number") or ""
        self.caller_name: str = channel.get("Caller-Caller-ID-Name") or ""
        self.destination_number: str = channel.get("Caller-Destination-Number") or ""
        self.variables: dict[str, str] = channel.variables
        self.answered = channel.get("Answer-State") == "answered"
        self.hangup_cause: str | None = None
        self.hangup_event: Event | None = None
        self._executing: dict[str, asyncio.Future[Event]] = {}
        self._handlers: dict[str, list[LegEventHandler]] = {}
        loop = asyncio.get_running_loop()
        self._hung_up = asyncio.Event()
        self._finished: asyncio.Future[str] = loop.create_future()
        self.commands_sent = 0

    def __repr__(self) -> str:
        return f"CallLeg({self.uuid}, from {self.caller_number or '?'})"

    # ------------------------------------------------------------------ state

    @property
    def hung_up(self) -> bool:
        return self._hung_up.is_set()

    async def wait_hangup(self) -> str:
        """Until the channel hangs up; returns the hangup cause."""
        await self._hung_up.wait()
        return self.hangup_cause or "UNKNOWN"

    def on(self, event_name: str, handler: LegEventHandler) -> None:
        """Call `handler(event)` for this call's events of that name ("*" for all)."""
        self._handlers.setdefault(event_name, []).append(handler)

    def off(self, event_name: str, handler: LegEventHandler) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._handlers[event_name].remove(handler)

    async def wait_event(
        self, event_name: str, predicate: Callable[[Event], bool] | None = None
    ) -> Event:
        """The next event of that name on this call (e.g. CHANNEL_BRIDGE during a bridge)."""
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()

        def catch(ev: Event) -> None:
            if not fut.done() and (predicate is None or predicate(ev)):
                fut.set_result(ev)

        self.on(event_name, catch)
        try:
            done = asyncio.ensure_future(self._hung_up.wait())
            try:
                await asyncio.wait({fut, done}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                done.cancel()
            if not fut.done():
                raise CallHungUp(self.uuid, self.hangup_cause)
            return fut.result()
        finally:
            self.off(event_name, catch)

    # ------------------------------------------------------------------ wire

    def _on_event(self, event: Event) -> None:
        name = event.name
        if name == "CHANNEL_EXECUTE_COMPLETE":
            fut = self._executing.pop(event.application_uuid or "", None)
            if fut is not None and not fut.done():
                fut.set_result(event)
        elif name == "CHANNEL_ANSWER":
            self.answered = True
        elif name == "CHANNEL_HANGUP" or name == "CHANNEL_HANGUP_COMPLETE":
            self.hangup_cause = event.get("Hangup-Cause") or self.hangup_cause
            if name == "CHANNEL_HANGUP_COMPLETE":
                self.hangup_event = event
            self._hung_up.set()
        for handler in (*self._handlers.get(name, ()), *self._handlers.get("*", ())):
            try:
                handler(event)
            except Exception:
                log.exception("call %s: handler failed on %s", self.uuid, name)
        if name == "CHANNEL_HANGUP_COMPLETE" and self._linger_timer is not None:
            self._end("linger")  # the channel's last word after a linger notice

    def _on_disconnect_notice(self, frame: Frame) -> None:
        """Linger (the channel is gone, FreeSWITCH keeps the socket) or disconnect.

        FreeSWITCH sends the linger notice as soon as the channel goes down, and the
        channel's remaining events (a running application's CHANNEL_EXECUTE_COMPLETE,
        CHANNEL_HANGUP_COMPLETE with the CDR variables) may still follow it: lingering
        exists so the application can read those. So unless CHANNEL_HANGUP_COMPLETE
        has already come, the leg ends with it, or after `linger_grace` seconds
        without it, rather than on the notice itself.
        """
        disposition = frame.headers.get("Content-Disposition", "disconnect")
        if not self._hung_up.is_set():
            self.hangup_cause = self.hangup_cause or "NORMAL_CLEARING"
            self._hung_up.set()
        if disposition == "linger" and self.hangup_event is None and not self._finished.done():
            if self._linger_timer is None:
                self._linger_timer = asyncio.get_running_loop().call_later(
                    self.linger_grace, self._end, "linger (no CHANNEL_HANGUP_COMPLETE)"
                )
            return
        self._end(disposition)

    def _on_closed(self, reason: str) -> None:
        self._hung_up.set()
        self._end(reason)

    def _end(self, how: str) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        self._fail_executing()
        if not self._finished.done():
            self._finished.set_result(how)

    def _fail_executing(self) -> None:
        executing, self._executing = self._executing, {}
        for fut in executing.values():
            if not fut.done():
                fut.set_exception(CallHungUp(self.uuid, self.hangup_cause))

    async def _send(self, data: bytes, what: str) -> Frame:
        if self.hung_up:
            raise CallHungUp(self.uuid, self.hangup_cause)
        self.commands_sent += 1
        try:
            reply = await self._conn.send(data, what, reply_timeout=self.reply_timeout)
        except ESLCommandTimeout as exc:
            raise CallLost(self.uuid, str(exc)) from None
        except ESLDisconnected:
            raise CallHungUp(self.uuid, self.hangup_cause or "socket closed") from None
        if not reply.ok:
            raise ESLCommandError(what, reply.reply_text or reply.text.strip())
        return reply

    async def command(self, line: str) -> str:
        """A plain ESL command on this call's socket (`myevents`, `linger`, `resume` ...)."""
        return (await self._send(encode_command(line), line)).reply_text

    async def api(self, command: str) -> str:
        """`api` over this call's socket (FreeSWITCH allows it in outbound mode too).

        Bounded by `api_timeout`: past it the socket is dropped (nothing more could be
        answered on it) and this raises CallLost; the command may have run.
        """
        if not self._conn.is_open:
            raise CallHungUp(self.uuid, self.hangup_cause or "socket closed")
        what = f"api {command}"
        try:
            reply = await self._conn.send(
                encode_command(what), what, reply_timeout=self.api_timeout
            )
        except ESLCommandTimeout as exc:
            raise CallLost(self.uuid, str(exc)) from None
        if not reply.ok:
            raise ESLCommandError(f"api {command}", reply.text.strip())
        return reply.text

    # ------------------------------------------------------------------ applications

    async def execute(self, app: str, arg: str | None = None, *, event_lock: bool = False) -> Event:
        """Run a dialplan application and wait for its CHANNEL_EXECUTE_COMPLETE.

        Returns that event (its `variables` hold what the application set). Raises
        CallHungUp if the call is gone before or while it runs.
        """
        event_uuid = str(uuidlib.uuid4())
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._executing[event_uuid] = fut
        try:
            await self._send(
                encode_execute(app, arg, event_uuid=event_uuid, event_lock=event_lock),
                f"execute {app}",
            )
            return await fut
        finally:
            self._executing.pop(event_uuid, None)

    async def answer(self) -> None:
        await self.execute("answer")

    async def pre_answer(self) -> None:
        await self.execute("pre_answer")

    async def playback(self, path: str) -> str:
        """Play a file or tone stream to the end; returns FreeSWITCH's result ("FILE PLAYED")."""
        done = await self.execute("playback", path)
        return done.get("Application-Response") or ""

    async def play_and_get_digits(
        self,
        prompt: str,
        *,
        min_digits: int = 1,
        max_digits: int = 1,
        tries: int = 1,
        timeout_ms: int = 5000,
        terminators: str = "#",
        invalid_prompt: str = "silence_stream://250",
        variable: str = "pagd_digits",
        regex: str = "\\d+",
        digit_timeout_ms: int = 3000,
        forget: bool = False,
    ) -> str:
        """Play `prompt` and collect digits; returns them ("" on timeout or no valid input).

        The argument order is mod_dptools' (min max tries timeout terminators file
        invalid_file var_name regexp digit_timeout); `terminators=""` is sent as `none`.
        FreeSWITCH leaves a too-short entry in `variable` with read_result=failure, so
        that is checked too. `forget`: unset the variable afterwards (a PIN must not
        stay on the channel, where CDRs and later events would carry it).
        """
        if not (0 <= min_digits <= max_digits) or tries < 1:
            raise ValueError("need 0 <= min_digits <= max_digits and tries >= 1")
        terminators = terminators or "none"
        for part in (prompt, invalid_prompt, variable, regex, terminators):
            if not part or " " in part or "\n" in part:
                raise ValueError(f"play_and_get_digits argument without spaces expected: {part!r}")
        arg = (
            f"{min_digits} {max_digits} {tries} {timeout_ms} {terminators} {prompt} "
            f"{invalid_prompt} {variable} {regex} {digit_timeout_ms}"
        )
        done = await self.execute("play_and_get_digits", arg)
        digits = done.variable(variable) or ""
        if done.variable("read_result") == "failure":
            digits = ""
        if forget:
            self.variables.pop(variable, None)
            if done.variable(variable) is not None:
                await self.execute("unset", variable)
        else:
            self.variables[variable] = digits
        return digits

    async def bridge(self, dial_string: str) -> BridgeResult:
        """Ring `dial_string` and connect the caller; returns when the bridge attempt ends.

        An answered bridge returns after the talk is over; a failed one returns at once
        with FreeSWITCH's reason (NO_ANSWER, USER_BUSY, CALL_REJECTED ...).
        """
        done = await self.execute("bridge", dial_string)
        disposition = done.variable("originate_disposition") or ""
        answered = disposition in ("SUCCESS", "ANSWER") or done.variable("DIALSTATUS") == "SUCCESS"
        cause = (
            done.variable("bridge_hangup_cause")
            or done.variable("last_bridge_hangup_cause")
            or disposition
            or done.get("Application-Response")
            or "UNKNOWN"
        )
        return BridgeResult(answered=answered, cause=cause, event=done)

    async def record_session(self, path: str) -> None:
        """Start recording both directions to `path` (runs until hangup)."""
        await self.execute("record_session", path)

    async def transfer(
        self, destination: str, dialplan: str = "XML", context: str = "default"
    ) -> None:
        """Send the call to another extension; this socket's control ends with it."""
        await self.execute("transfer", f"{destination} {dialplan} {context}")

    async def set_variable(self, name: str, value: str) -> None:
        if not name or "=" in name or " " in name:
            raise ValueError(f"invalid channel variable name {name!r}")
        await self.execute("set", f"{name}={value}")
        self.variables[name] = value

    async def get_variable(self, name: str) -> str | None:
        """Read a channel variable live (`uuid_getvar`); None when unset."""
        text = await self.api(f"uuid_getvar {self.uuid} {name}")
        return None if text in ("_undef_", "") else text

    async def hangup(self, cause: str = "NORMAL_CLEARING") -> None:
        """Hang the call up; a call already gone is not an error."""
        if self.hung_up:
            return
        with contextlib.suppress(CallHungUp):
            await self._send(encode_hangup(cause), "hangup")


class OutboundServer:
    """The TCP server FreeSWITCH's `socket` application connects to, one CallLeg per call.

    `handler(leg)` runs once the call is set up (connect, myevents, linger); when it
    returns, a call still up is hung up and the socket closed after FreeSWITCH's
    final events.
    """

    def __init__(
        self,
        handler: CallHandler,
        host: str = "127.0.0.1",
        port: int = 8084,
        *,
        linger: bool = True,
        setup_timeout: float = 5.0,
        drain_timeout: float = 5.0,
        reply_timeout: float = DEFAULT_REPLY_TIMEOUT_S,
        api_timeout: float = DEFAULT_API_TIMEOUT_S,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.linger = linger
        self.setup_timeout = setup_timeout
        self.drain_timeout = drain_timeout
        self.reply_timeout = reply_timeout
        self.api_timeout = api_timeout
        self.legs: dict[str, CallLeg] = {}
        self.calls_started = 0
        self.calls_failed_setup = 0
        self.calls_lost = 0  # sockets dropped because a reply never came
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._conns: set[ESLConnection] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._make_conn, self.host, self.port, backlog=1024)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        log.info("outbound ESL server listening on %s:%s", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        for conn in list(self._conns):
            conn.close("server stopping")
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> OutboundServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def active_calls(self) -> int:
        return len(self.legs)

    def _make_conn(self) -> ESLConnection:
        return ESLConnection(label="esl outbound", on_open=self._opened)

    def _opened(self, conn: ESLConnection) -> None:
        self._conns.add(conn)
        task = asyncio.get_running_loop().create_task(self._serve(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: ESLConnection) -> None:
        leg: CallLeg | None = None
        try:
            try:
                async with asyncio.timeout(self.setup_timeout):
                    leg = await self._setup(conn)
            except (ESLError, TimeoutError) as exc:
                self.calls_failed_setup += 1
                conn.abort(f"call setup failed: {exc or 'timed out'}")
                return
            self.calls_started += 1
            self.legs[leg.uuid] = leg
            try:
                await self.handler(leg)
            except CallHungUp:
                pass
            except ESLError as exc:
                log.warning("call %s: %s", leg.uuid, exc)
            except Exception:
                log.exception("call %s: handler failed", leg.uuid)
            await self._finish(conn, leg)
        finally:
            if leg is not None:
                self.legs.pop(leg.uuid, None)
            if conn.timed_out is not None:
                self.calls_lost += 1
            conn.close("call finished")
            self._conns.discard(conn)

    async def _setup(self, conn: ESLConnection) -> CallLeg:
        reply = await conn.send(b"connect\n\n", "connect")
        if not reply.ok or "Event-Name" not in reply.headers:
            raise ESLCommandError("connect", reply.reply_text or "no channel data")
        data = reply.decoded_headers()
        channel = Event.from_headers([kv for kv in data.items() if kv[0] not in _REPLY_ONLY])
        leg = CallLeg(
            conn,
            channel,
            linger_grace=self.drain_timeout,
            reply_timeout=self.reply_timeout,
            api_timeout=self.api_timeout,
        )
        conn.label = f"esl call {leg.uuid}"
        conn.on_event = leg._on_event
        conn.on_disconnect_notice = leg._on_disconnect_notice
        conn.closed.add_done_callback(lambda f: leg._on_closed(f.result()))
        await leg.command("myevents")
        if self.linger:
            await leg.command("linger")
        return leg

    async def _finish(self, conn: ESLConnection, leg: CallLeg) -> None:
        if not conn.is_open:
            return
        if not leg.hung_up:
            with contextlib.suppress(ESLError):
                await leg.hangup()
        if self.linger:  # wait for the final events and the disconnect notice
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.drain_timeout):
                    await asyncio.shield(leg._finished)
