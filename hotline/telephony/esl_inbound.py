"""Inbound event socket: we connect to FreeSWITCH (port 8021) for api/bgapi and events.

The client owns what it wants (event subscriptions, filters, handlers) rather than
what the current socket happens to have, so after a reconnect it re-authenticates
and re-subscribes on its own. While FreeSWITCH is unreachable it retries with
jittered exponential backoff, one log line per attempt; commands issued meanwhile
fail at once with ESLDisconnected instead of piling up. When FreeSWITCH answers but
refuses us (its ACL, or our password) only an operator can help: that is logged as
an error naming the fix, shown in `state`, and retried slowly, not hammered.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import random
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Iterable

from hotline.telephony.errors import (
    ESLAccessDenied,
    ESLAuthError,
    ESLCommandError,
    ESLDisconnected,
    ESLJobTimeout,
)
from hotline.telephony.esl_connection import ESLConnection
from hotline.telephony.esl_frames import (
    Event,
    Frame,
    encode_command,
    encode_execute,
    encode_hangup,
)

log = logging.getLogger("hotline.telephony.inbound")

EventHandler = Callable[[Event], Awaitable[None] | None]
ConnectHook = Callable[[], Awaitable[None] | None]

# Always subscribed: bgapi results and the switch's 20 s heartbeat (a liveness signal).
BASE_EVENTS = ("BACKGROUND_JOB", "HEARTBEAT")
_JOB_FILTER = ("Event-Name", "BACKGROUND_JOB")
# How long a bgapi waits for its BACKGROUND_JOB when the caller does not say: longer
# than FreeSWITCH's default originate_timeout (60 s) plus call setup, so a plain
# `bgapi originate` is not cut short; callers that know better pass `job_timeout`.
DEFAULT_JOB_TIMEOUT_S = 120.0
# Commands that change what this socket receives: sent raw through `command()` they
# would leave the client believing in subscriptions (BACKGROUND_JOB above all) that
# the switch no longer has, and nothing would restore them until the next reconnect.
_SUBSCRIPTION_VERBS = frozenset({"event", "nixevent", "noevents", "filter", "myevents"})


class Backoff:
    """Exponential backoff with "equal jitter": half the step fixed, half random.

    Many instances restarting after a switch reboot then do not reconnect in lockstep.
    """

    def __init__(self, initial: float = 0.5, maximum: float = 30.0, factor: float = 2.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.attempt = 0

    def next(self) -> float:
        step = min(self.maximum, self.initial * self.factor**self.attempt)
        self.attempt += 1
        return step / 2 + random.uniform(0, step / 2)

    def reset(self) -> None:
        self.attempt = 0


class InboundESL:
    """A kept-alive inbound ESL client: `start()`, then api/bgapi/events; `stop()`."""

    def __init__(
        self,
        host: str,
        port: int = 8021,
        password: str = "ClueCon",
        *,
        events: Iterable[str] = (),
        event_format: str = "json",
        connect_timeout: float = 5.0,
        keepalive_s: float = 20.0,
        backoff: Backoff | None = None,
        refused_backoff: Backoff | None = None,
        job_timeout_s: float = DEFAULT_JOB_TIMEOUT_S,
    ) -> None:
        if event_format not in ("json", "plain"):
            raise ValueError("event_format must be 'json' or 'plain'")
        self.host = host
        self.port = port
        self._password = password
        self.event_format = event_format
        self.connect_timeout = connect_timeout
        self.keepalive_s = keepalive_s
        self.backoff = backoff or Backoff()
        # refused by the ACL or the password: the first retry soon (FreeSWITCH may have
        # been mid-reload), then every one to two minutes until an operator fixes it
        self.refused_backoff = refused_backoff or Backoff(10.0, 120.0)
        self.job_timeout_s = job_timeout_s
        self._events: set[str] = set(BASE_EVENTS) | set(events)
        self._filters: list[tuple[str, str]] = []
        self._handlers: dict[str, list[EventHandler]] = {}
        self._on_connect: list[ConnectHook] = []
        self._jobs: dict[str, asyncio.Future[Event]] = {}
        self._conn: ESLConnection | None = None
        self._connected = asyncio.Event()
        self._stopping = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._last_local_address: str | None = None
        self._tasks: set[asyncio.Task[object]] = set()
        self.connects = 0
        self.last_error: str | None = None
        self.refused: str | None = None  # "access_denied" | "auth_failed" | None
        self.jobs_timed_out = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Begin connecting in the background; returns at once (the switch may be down)."""
        if self._runner is None:
            self._stopping.clear()
            self._runner = asyncio.create_task(self._run(), name=f"esl-inbound {self.host}")

    async def stop(self) -> None:
        self._stopping.set()
        conn = self._conn
        if conn is not None and conn.is_open:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.send(b"exit\n\n", "exit"), 2)
            conn.close("client stopping")
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        for task in list(self._tasks):
            task.cancel()

    async def __aenter__(self) -> InboundESL:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.is_open and self._connected.is_set()

    @property
    def state(self) -> str:
        """Connected, connecting, or why FreeSWITCH refuses us: "access_denied" (its ACL)
        or "auth_failed" (our password), the two only an operator can fix."""
        if self.connected:
            return "connected"
        return self.refused or "connecting"

    async def wait_connected(self) -> None:
        """Until connected and subscribed (wrap in `asyncio.timeout` to bound it)."""
        await self._connected.wait()

    def on_connect(self, hook: ConnectHook) -> None:
        """Run after every (re)connect, once subscribed: resync state the switch owns."""
        self._on_connect.append(hook)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                conn = await asyncio.wait_for(self._open(), self.connect_timeout)
            except ESLAuthError as exc:
                self.backoff.reset()  # once it is fixed, a later outage starts afresh
                delay = self.refused_backoff.next()
                self.last_error = str(exc)
                self.refused = (
                    "access_denied" if isinstance(exc, ESLAccessDenied) else "auth_failed"
                )
                log.error(
                    "%s; retry %d in %.0f s",
                    self._fix_for(exc),
                    self.refused_backoff.attempt,
                    delay,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                continue
            except (OSError, TimeoutError, ESLDisconnected, ESLCommandError) as exc:
                self.refused = None
                delay = self.backoff.next()
                self.last_error = _describe(exc)
                log.warning(
                    "FreeSWITCH ESL %s:%s unavailable (%s); retry %d in %.2f s",
                    self.host,
                    self.port,
                    self.last_error,
                    self.backoff.attempt,
                    delay,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                continue
            self.backoff.reset()
            self.refused_backoff.reset()
            self.connects += 1
            self.last_error = None
            self.refused = None
            self._conn = conn
            self._connected.set()
            log.info("connected to FreeSWITCH ESL %s:%s", self.host, self.port)
            for hook in list(self._on_connect):
                self._spawn(hook())
            keepalive = asyncio.create_task(self._keepalive(conn))
            try:
                reason = await conn.closed
            finally:
                keepalive.cancel()
                self._connected.clear()
                self._conn = None
                self._fail_jobs(conn.closed.result() if conn.closed.done() else "client stopping")
            if not self._stopping.is_set():
                log.warning("FreeSWITCH ESL connection lost (%s); reconnecting", reason)

    def _fix_for(self, exc: ESLAuthError) -> str:
        """The error line an operator reads: what FreeSWITCH said and what to change."""
        where = f"FreeSWITCH ESL {self.host}:{self.port}"
        if isinstance(exc, ESLAccessDenied):
            ours = self._last_local_address or "this host's address"
            return (
                f"{where}: {exc}; to fix, allow {ours} (as FreeSWITCH sees it: a NAT in "
                "between changes it) in the ACL list named by apply-inbound-acl in "
                "event_socket.conf.xml (unset, it is loopback.auto: local clients only), "
                "then `reloadacl` (list changed) or `reload mod_event_socket` (param changed)"
            )
        return (
            f"{where}: {exc}; to fix, set HOTLINE_ESL_PASSWORD to the password param "
            "of event_socket.conf.xml"
        )

    async def _open(self) -> ESLConnection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            lambda: ESLConnection(
                label=f"esl {self.host}:{self.port}",
                on_event=self._on_event,
                on_disconnect_notice=lambda f: None,
            ),
            self.host,
            self.port,
        )
        self._last_local_address = conn.local_address
        try:
            await conn.auth_requested
            reply = await conn.send(encode_command(f"auth {self._password}"), "auth")
            if not reply.ok:
                raise ESLAuthError(f"authentication refused: {reply.reply_text}")
            await self._subscribe_on(conn, self._events)
            for name, value in self._effective_filters():
                await self._checked(conn, encode_command(f"filter {name} {value}"), "filter")
        except BaseException:
            conn.close("setup failed")
            raise
        return conn

    async def _keepalive(self, conn: ESLConnection) -> None:
        """Probe a silent link with `api status`; a probe left unanswered drops it.

        Only when nothing else is in flight: a long blocking `api originate` is silence
        too, and TCP keep-alive covers a dead peer in that case.
        """
        while conn.is_open:
            await asyncio.sleep(self.keepalive_s / 2)
            if time.monotonic() - conn.last_rx < self.keepalive_s or conn.in_flight:
                continue
            try:
                await asyncio.wait_for(conn.send(b"api status\n\n", "keep-alive"), self.keepalive_s)
            except TimeoutError:
                conn.abort(f"keep-alive: no answer to api status within {self.keepalive_s} s")
            except ESLDisconnected:
                return

    # ------------------------------------------------------------------ events

    def on(self, event_name: str, handler: EventHandler) -> None:
        """Call `handler(event)` for each event of that name ("*" for all).

        A custom event is named as subscribed, "CUSTOM <subclass>" ("CUSTOM" alone
        gets every subclass). Sync handlers run inline (keep them short); async ones
        run as tasks.
        """
        self._handlers.setdefault(event_name, []).append(handler)

    def off(self, event_name: str, handler: EventHandler) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._handlers[event_name].remove(handler)

    def _on_event(self, event: Event) -> None:
        name = event.name
        if name == "BACKGROUND_JOB":
            fut = self._jobs.pop(event.job_uuid or "", None)
            if fut is not None and not fut.done():
                fut.set_result(event)
        handlers = self._handlers.get(name, ())
        if name == "CUSTOM":
            # subscribed as "CUSTOM <subclass>", but the event says Event-Name: CUSTOM
            # and carries the subclass in its own header: a handler registered under
            # the name it was subscribed by must see it
            subclass = event.get("Event-Subclass")
            if subclass:
                handlers = (*handlers, *self._handlers.get(f"CUSTOM {subclass}", ()))
        for handler in (*handlers, *self._handlers.get("*", ())):
            try:
                result = handler(event)
            except Exception:
                log.exception("ESL handler %r failed on %s", handler, name)
                continue
            if inspect.isawaitable(result):
                self._spawn(result)

    def _spawn(self, aw: Awaitable[object] | None) -> None:
        if aw is None or not inspect.isawaitable(aw):
            return
        task = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Future[object]) -> None:
        self._tasks.discard(task)  # type: ignore[arg-type]
        if not task.cancelled() and task.exception() is not None:
            log.error("ESL handler task failed", exc_info=task.exception())

    async def wait_event(
        self,
        event_name: str,
        predicate: Callable[[Event], bool] | None = None,
    ) -> Event:
        """The next event of that name matching `predicate` (subscribe to it first)."""
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()

        def catch(ev: Event) -> None:
            if not fut.done() and (predicate is None or predicate(ev)):
                fut.set_result(ev)

        self.on(event_name, catch)
        try:
            return await fut
        finally:
            self.off(event_name, catch)

    # ------------------------------------------------------------------ subscriptions

    async def subscribe(self, *event_names: str) -> None:
        """Add event names (FreeSWITCH's `event` is additive); kept across reconnects."""
        new = [n for n in event_names if n not in self._events]
        self._events.update(new)
        conn = self._conn
        if new and conn is not None and conn.is_open:
            await self._subscribe_on(conn, new)

    async def nixevent(self, *event_names: str) -> None:
        """Drop subscriptions, except the ones this client itself lives on.

        FreeSWITCH sends BACKGROUND_JOB only to a subscribed socket (transcript 01b), so
        passing it on would leave every later bgapi waiting for a result that never
        comes; HEARTBEAT is the liveness signal. `nixevent ALL` clears every
        subscription on the switch's side, so what we still want is subscribed again.
        As with `event`, every word after CUSTOM is a subclass: custom names go alone.
        """
        names = [n for n in event_names if n not in BASE_EVENTS]
        self._events.difference_update(names)
        plain = [n for n in names if not n.startswith("CUSTOM")]
        custom = [n for n in names if n.startswith("CUSTOM")]
        for group in (plain, custom):
            if group:
                await self._command(f"nixevent {' '.join(group)}")
        if "ALL" in plain:
            await self._subscribe_on(self._live(), self._events)

    async def filter(self, header: str, value: str) -> None:
        """Pass only events matching any filter (FreeSWITCH ORs filters).

        A filter on Unique-ID alone would swallow BACKGROUND_JOB (it has no Unique-ID)
        and hang every bgapi, so a filter for Event-Name BACKGROUND_JOB rides along.
        """
        first = not self._filters
        if (header, value) not in self._filters:
            self._filters.append((header, value))
        conn = self._conn
        if conn is None or not conn.is_open:
            return
        await self._checked(conn, encode_command(f"filter {header} {value}"), "filter")
        if first and (header, value) != _JOB_FILTER:
            await self._checked(conn, encode_command("filter {} {}".format(*_JOB_FILTER)), "filter")

    async def filter_delete(self, header: str, value: str | None = None) -> None:
        """Remove filters; when none of ours is left, the BACKGROUND_JOB helper goes too
        (a lone helper filter would pass nothing but job results)."""
        if header == "all":
            self._filters.clear()
            await self._command("filter delete all")
            return
        self._filters = [f for f in self._filters if not (f[0] == header and value in (None, f[1]))]
        await self._command(f"filter delete {header}" + (f" {value}" if value else ""))
        if not self._filters:
            await self._command("filter delete {} {}".format(*_JOB_FILTER))
        elif header == _JOB_FILTER[0] and value in (None, _JOB_FILTER[1]):
            # `filter delete Event-Name` drops every Event-Name filter on the switch,
            # the BACKGROUND_JOB helper too; with other filters left, job results
            # would no longer pass and every bgapi would wait for nothing
            await self._command("filter {} {}".format(*_JOB_FILTER))

    def _effective_filters(self) -> list[tuple[str, str]]:
        if not self._filters or _JOB_FILTER in self._filters:
            return list(self._filters)
        return [*self._filters, _JOB_FILTER]

    async def _subscribe_on(self, conn: ESLConnection, names: Iterable[str]) -> None:
        plain = sorted(n for n in names if not n.startswith("CUSTOM"))
        custom = sorted(n for n in names if n.startswith("CUSTOM"))
        for group in (plain, custom):
            if group:
                line = f"event {self.event_format} {' '.join(group)}"
                await self._checked(conn, encode_command(line), "event")

    # ------------------------------------------------------------------ commands

    def _live(self) -> ESLConnection:
        conn = self._conn
        if conn is None or not conn.is_open:
            why = self.last_error or "connecting"
            raise ESLDisconnected(f"not connected to FreeSWITCH ({why})")
        return conn

    async def _checked(self, conn: ESLConnection, data: bytes, what: str) -> Frame:
        reply = await conn.send(data, what)
        if not reply.ok:
            raise ESLCommandError(what, reply.reply_text or reply.text)
        return reply

    async def _command(self, line: str, headers: Iterable[tuple[str, str]] = ()) -> Frame:
        return await self._checked(self._live(), encode_command(line, list(headers)), line)

    async def command(self, line: str) -> str:
        """Any ESL command; returns Reply-Text, raises ESLCommandError on -ERR.

        Not for subscriptions or filters (ValueError): use subscribe / nixevent /
        filter / filter_delete, which the client remembers and restores after a
        reconnect and which keep BACKGROUND_JOB flowing for bgapi.
        """
        verb = line.split(" ", 1)[0].strip().lower()
        if verb in _SUBSCRIPTION_VERBS:
            raise ValueError(f"{verb!r} changes what this socket receives: use the client's method")
        reply = await self._command(line)
        return reply.reply_text

    async def api(self, command: str, *, check: bool = True) -> str:
        """Blocking `api`: FreeSWITCH holds the socket until it returns, so keep these short."""
        reply = await self._live().send(encode_command(f"api {command}"), f"api {command}")
        text = reply.text
        if check and not reply.ok:
            raise ESLCommandError(f"api {command}", text.strip())
        return text

    async def bgapi(
        self, command: str, *, check: bool = True, job_timeout: float | None = None
    ) -> str:
        """`bgapi` with our own Job-UUID, resolved by its BACKGROUND_JOB; returns the job body.

        The future is registered before sending, since the job event can arrive in the
        same read as the +OK reply (transcript 01b). Nothing in ESL guarantees that the
        event comes (a lost subscription, a module reload, a job that hangs), so the
        wait is bounded: `job_timeout` seconds (default `job_timeout_s`; math.inf waits
        forever), then ESLJobTimeout. The job may still run on the switch then.
        """
        limit = self.job_timeout_s if job_timeout is None else job_timeout
        job_uuid = str(uuidlib.uuid4())
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._jobs[job_uuid] = fut
        try:
            async with asyncio.timeout(None if math.isinf(limit) else limit):
                await self._checked(
                    self._live(),
                    encode_command(f"bgapi {command}", [("Job-UUID", job_uuid)]),
                    f"bgapi {command}",
                )
                event = await fut
        except TimeoutError:
            self.jobs_timed_out += 1
            raise ESLJobTimeout(command, job_uuid, limit) from None
        finally:
            self._jobs.pop(job_uuid, None)
        text = event.body or ""
        if check and text.startswith("-"):
            raise ESLCommandError(f"bgapi {command}", text.strip())
        return text

    async def sendmsg_execute(
        self,
        uuid: str,
        app: str,
        arg: str | None = None,
        *,
        event_uuid: str | None = None,
        event_lock: bool = False,
    ) -> str:
        """Run an application on a channel we do not hold a socket for; returns event_uuid.

        Its CHANNEL_EXECUTE_COMPLETE carries the id as Application-UUID (subscribe to it
        and use `wait_event` to await completion).
        """
        event_uuid = event_uuid or str(uuidlib.uuid4())
        data = encode_execute(app, arg, uuid=uuid, event_uuid=event_uuid, event_lock=event_lock)
        await self._checked(self._live(), data, f"sendmsg {uuid} {app}")
        return event_uuid

    async def hangup(self, uuid: str, cause: str = "NORMAL_CLEARING") -> None:
        """Hang up a channel by uuid (`sendmsg <uuid>` call-command hangup)."""
        await self._checked(self._live(), encode_hangup(cause, uuid=uuid), f"hangup {uuid}")

    def _fail_jobs(self, reason: str) -> None:
        jobs, self._jobs = self._jobs, {}
        for job_uuid, fut in jobs.items():
            if not fut.done():
                fut.set_exception(ESLDisconnected(f"bgapi job {job_uuid} lost: {reason}"))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return str(exc) or type(exc).__name__
