"""One event-socket connection (either mode): frames in, replies to commands, events out.

FreeSWITCH answers the commands on one socket strictly in the order it read them
(an `api` even blocks the socket until it returns), so replies are matched to
commands first-in first-out. Events, disconnect notices and auth requests arrive
in between and go to callbacks. A protocol error closes this connection only, with
the reason logged; everything waiting on it fails with ESLDisconnected.

Each command may carry a reply timeout. Since FreeSWITCH works through a socket's
commands one at a time, a command's clock starts when it reaches the head of the
queue (the one before it answered), not when it was written: a quick `filter` queued
behind a legitimately slow `api` is not blamed for the wait. A head command past its
time means the switch's side of this socket is stuck (a hung module, a huge `show`):
nothing queued behind it can ever be answered, so the connection is dropped, the
head command fails with ESLCommandTimeout and the rest with ESLDisconnected. Its
owner reconnects (inbound) or loses the call (outbound).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable

from hotline.telephony.errors import (
    ESLAccessDenied,
    ESLCommandTimeout,
    ESLDisconnected,
    ESLProtocolError,
    ESLReplyTooLarge,
)
from hotline.telephony.esl_frames import (
    API_RESPONSE,
    AUTH_REQUEST,
    COMMAND_REPLY,
    DISCONNECT_NOTICE,
    EVENT_TYPES,
    LOG_DATA,
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    RUDE_REJECTION,
    Event,
    Frame,
    FrameParser,
)

log = logging.getLogger("hotline.telephony.esl")

EventCallback = Callable[[Event], None]
FrameCallback = Callable[[Frame], None]

READ_SIZE = 256 * 1024  # what asyncio's socket transport reads at most per call

# How long a blocking `api` may hold a socket. What we send (uuid_kill, uuid_bridge,
# uuid_exists, uuid_break, uuid_getvar ...) answers in milliseconds and even a `show
# channels` on a busy switch in a few seconds; past this the command is taken as hung
# and the socket dropped (see the module doc). Anything slower belongs in bgapi.
DEFAULT_API_TIMEOUT_S = 30.0
# Every other command (auth, event, filter, bgapi's +OK, sendmsg, hangup) is answered
# by the socket's listener at once, even in async outbound mode, where the
# application's end comes later as an event; one unanswered this long at the head of
# the queue means a stuck listener.
DEFAULT_REPLY_TIMEOUT_S = 10.0


class _ReadBuffer(threading.local):
    """One receive buffer per thread, shared by every connection on its event loop.

    A plain `asyncio.Protocol` gets each read as a fresh `bytes`: the transport
    allocates READ_SIZE and shrinks it to what arrived. With a thousand calls each
    holding a few small objects between those big transient blocks, the C heap
    fragmented and kept ~80 KB per call even after the calls ended. As a
    `BufferedProtocol` the transport reads into this buffer instead, and
    `buffer_updated` copies out only the bytes that arrived, at once: the next
    read, on whatever connection, reuses the same memory.
    """

    def __init__(self) -> None:
        self.view = memoryview(bytearray(READ_SIZE))


_read_buffer = _ReadBuffer()


class _Pending:
    """A command written and not yet answered: its name, future and reply timeout."""

    __slots__ = ("fut", "timeout", "what")

    def __init__(self, what: str, fut: asyncio.Future[Frame], timeout: float | None) -> None:
        self.what = what
        self.fut = fut
        self.timeout = timeout


class ESLConnection(asyncio.BufferedProtocol):
    """asyncio protocol for one ESL socket; the inbound client and each outbound call own one."""

    def __init__(
        self,
        *,
        label: str = "esl",
        on_event: EventCallback | None = None,
        on_disconnect_notice: FrameCallback | None = None,
        on_log: FrameCallback | None = None,
        on_open: Callable[[ESLConnection], None] | None = None,
        max_header: int = MAX_HEADER_BYTES,
        max_body: int = MAX_BODY_BYTES,
    ) -> None:
        self.label = label
        self.on_event = on_event
        self.on_disconnect_notice = on_disconnect_notice
        self.on_log = on_log
        self.on_open = on_open
        self.parser = FrameParser(max_header, max_body)
        self.transport: asyncio.Transport | None = None
        self.last_rx = time.monotonic()
        self.events_received = 0
        self._pending: deque[_Pending] = deque()
        self._head_timer: asyncio.TimerHandle | None = None
        # set when a reply did not come in time and we dropped the link: what it was
        self.timed_out: str | None = None
        self.oversized_replies = 0
        loop = asyncio.get_running_loop()
        self.auth_requested: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[str] = loop.create_future()
        self._close_reason: str | None = None
        # set when FreeSWITCH's ACL turned us away (text/rude-rejection): its text
        self.rejected: str | None = None
        self.local_address: str | None = None  # ours, for telling the operator what to allow

    # ---------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sockname = transport.get_extra_info("sockname")
        if isinstance(sockname, tuple) and sockname:
            self.local_address = str(sockname[0])
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            _enable_keepalive(sock)
        if self.on_open is not None:
            self.on_open(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _read_buffer.view

    def buffer_updated(self, nbytes: int) -> None:
        # copied before anything else runs: the buffer is the next read's, too
        self.data_received(_read_buffer.view[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        try:
            frames = self.parser.feed(data)
        except ESLProtocolError as exc:
            self.abort(f"garbled frame: {exc}")
            return
        for frame in frames:
            if self.transport is None or self.transport.is_closing():
                return
            try:
                self._dispatch(frame)
            except ESLProtocolError as exc:
                self.abort(f"garbled event: {exc}")
                return
            except Exception:  # a handler's bug must not take the socket down
                log.exception("%s: handler failed on %r", self.label, frame)

    def eof_received(self) -> bool | None:
        truncated = self.parser.eof_reason()
        if truncated and self._close_reason is None:
            self._close_reason = truncated
            log.warning("%s: %s", self.label, truncated)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        reason = self._close_reason or (f"connection lost: {exc}" if exc else "closed by peer")
        self.transport = None
        self._disarm()
        while self._pending:
            cmd = self._pending.popleft()
            if not cmd.fut.done():
                cmd.fut.set_exception(ESLDisconnected(f"{cmd.what!r} not answered: {reason}"))
        if not self.auth_requested.done():
            self.auth_requested.set_exception(
                ESLAccessDenied(reason) if self.rejected is not None else ESLDisconnected(reason)
            )
            self.auth_requested.exception()  # retrieved: nobody may be waiting
        if not self.closed.done():
            self.closed.set_result(reason)

    # ---------------------------------------------------------------- frames

    def _dispatch(self, frame: Frame) -> None:
        ct = frame.content_type
        if frame.oversized and ct not in (COMMAND_REPLY, API_RESPONSE):
            # an event or log line we cannot hold: lost, but the stream is intact
            log.warning(
                "%s: %s frame of %d bytes over the %d-byte limit; discarded",
                self.label,
                ct or "untyped",
                frame.oversized,
                self.parser.max_body,
            )
            return
        if ct in EVENT_TYPES:
            self.events_received += 1
            if self.on_event is not None:
                self.on_event(Event.from_frame(frame))
        elif ct == COMMAND_REPLY or ct == API_RESPONSE:
            if not self._pending:
                log.warning("%s: reply with no command waiting: %r", self.label, frame)
                return
            cmd = self._pending.popleft()
            self._arm_head()
            if cmd.fut.done():  # its caller gave up; the slot kept the order
                return
            if frame.oversized:
                self.oversized_replies += 1
                log.warning(
                    "%s: reply to %r of %d bytes is over the %d-byte limit; discarded",
                    self.label,
                    cmd.what,
                    frame.oversized,
                    self.parser.max_body,
                )
                cmd.fut.set_exception(
                    ESLReplyTooLarge(cmd.what, frame.oversized, self.parser.max_body)
                )
            else:
                cmd.fut.set_result(frame)
        elif ct == AUTH_REQUEST:
            if not self.auth_requested.done():
                self.auth_requested.set_result(None)
        elif ct == DISCONNECT_NOTICE:
            if self.on_disconnect_notice is not None:
                self.on_disconnect_notice(frame)
        elif ct == RUDE_REJECTION:
            # the ACL refused our address: FreeSWITCH sends this instead of auth/request,
            # then a disconnect-notice, and closes. The owner says what to fix (it knows
            # the mode and the settings), so no warning of our own here.
            self.rejected = frame.text.strip() or "access denied"
            if self._close_reason is None:
                self._close_reason = f"refused by FreeSWITCH's ACL: {self.rejected}"
            if self.transport is not None:
                self.transport.abort()
        elif ct == LOG_DATA:
            if self.on_log is not None:
                self.on_log(frame)
        else:
            log.debug("%s: ignoring frame of unknown type %r", self.label, ct)

    # ---------------------------------------------------------------- commands

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def send(
        self, data: bytes, what: str = "command", *, reply_timeout: float | None = None
    ) -> Frame:
        """Write one encoded command and wait for its reply frame.

        `reply_timeout`: seconds the reply may take once the switch gets to this command
        (None: unbounded); past it the connection is dropped (see the module doc).
        A caller that stops waiting (cancelled) leaves its slot in the queue, so a
        late reply is still matched to it and not to the next command.
        """
        fut = self.send_nowait(data, what, reply_timeout=reply_timeout)
        return await fut

    def send_nowait(
        self, data: bytes, what: str = "command", *, reply_timeout: float | None = None
    ) -> asyncio.Future[Frame]:
        if self.transport is None or self.transport.is_closing():
            raise ESLDisconnected(f"{what!r} not sent: {self._close_reason or 'not connected'}")
        fut: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(what, fut, reply_timeout))
        if len(self._pending) == 1:
            self._arm_head()
        self.transport.write(data)
        return fut

    def _arm_head(self) -> None:
        """Start the reply clock of the command now at the head of the queue."""
        self._disarm()
        if not self._pending or self.transport is None:
            return
        head = self._pending[0]
        if head.timeout is not None and head.timeout != float("inf"):
            loop = asyncio.get_running_loop()
            self._head_timer = loop.call_later(head.timeout, self._overdue, head)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _overdue(self, head: _Pending) -> None:
        self._head_timer = None
        if not self._pending or self._pending[0] is not head or head.timeout is None:
            return
        self._pending.popleft()
        behind = len(self._pending)
        self.timed_out = head.what
        if not head.fut.done():
            head.fut.set_exception(ESLCommandTimeout(head.what, head.timeout))
        self.abort(
            f"no reply to {head.what!r} within {head.timeout:g} s; dropping the link "
            f"(FreeSWITCH answers in order: {behind} command(s) queued behind it)"
        )

    def write(self, data: bytes) -> None:
        """Write bytes that expect no reply (none in ESL today except after `exit`)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def abort(self, reason: str) -> None:
        """Drop this connection now, logging why (the service itself carries on)."""
        if self._close_reason is None:
            self._close_reason = reason
            peer = self.transport.get_extra_info("peername") if self.transport else None
            log.warning("%s: closing connection to %s: %s", self.label, peer, reason)
        if self.transport is not None:
            self.transport.abort()

    def close(self, reason: str = "closed by us") -> None:
        if self._close_reason is None:
            self._close_reason = reason
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


def _enable_keepalive(sock: socket.socket) -> None:
    """TCP keep-alive notices a switch that vanished without a FIN (power cut, cable)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, value in (("TCP_KEEPIDLE", 15), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, opt):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
