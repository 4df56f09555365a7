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
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from hotline.telephony.errors import (
    ESLAccessDenied,
    ESLAuthError,
    ESLCommandError,
    ESLDisconnected,
    ESLJobTimeout,
)
from hotline.telephony.esl_connection import (
    DEFAULT_API_TIMEOUT_S,
    DEFAULT_REPLY_TIMEOUT_S,
    ESLConnection,
)
from hotline.telephony.esl_frames import (
    MAX_BODY_BYTES,
    Event,
    Frame,
    encode_command,
    encode_execute,
    encode_hangup,
)

log = logging.getLogger("hotline.telephony.inbound")

EventHandler = Callable[[Event], Awaitable[None] | None]
ConnectHook = Callable[[], Awaitable[None] | None]
LateJobHook = Callable[[Event], Awaitable[None] | None]

# Always subscribed: bgapi results and the switch's 20 s heartbeat (a liveness signal).
BASE_EVENTS = ("BACKGROUND_JOB", "HEARTBEAT")
_JOB_FILTER = ("Event-Name", "BACKGROUND_JOB")
# How long a bgapi waits for its BACKGROUND_JOB when the caller does not say: longer
# than FreeSWITCH's default originate_timeout (60 s) plus call setup, so a plain
# `bgapi originate` is not cut short; callers that know better pass `job_timeout`.
DEFAULT_JOB_TIMEOUT_S = 120.0
# Timed-out or lost bgapi jobs remembered so that a late BACKGROUND_JOB is recognised
# (logged, and handed to the caller's on_late). Bounded: the oldest are forgotten.
LATE_JOBS_KEPT = 1000
# Commands that change what this socket receives: sent raw through `command()` they
# would leave the client believing in subscriptions (BACKGROUND_JOB above all) that
# the switch no longer has, and nothing would restore them until the next reconnect.
_SUBSCRIPTION_VERBS = frozenset({"event", "nixevent", "noevents", "filter", "myevents"})


@dataclass(slots=True)
class _Job:
    """A bgapi job we wait for (or waited for: see `InboundESL._late`)."""

    command: str
    fut: asyncio.Future[Event]
    on_late: LateJobHook | None = None


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


def _event_groups(names: Iterable[str]) -> list[str]:
    """The arguments of `event` / `nixevent` lines: plain names in one, CUSTOM subclasses
    in another as mod_event_socket reads them (`CUSTOM a b`: after CUSTOM every word is a
    subclass, so a second "CUSTOM" would be taken for a subclass name)."""
    names = list(names)
    plain = sorted(n for n in names if not n.startswith("CUSTOM"))
    subclasses = sorted({n.split(None, 1)[1] for n in names if n.startswith("CUSTOM ")})
    bare_custom = any(n == "CUSTOM" for n in names)
    groups = [" ".join(plain)] if plain else []
    if subclasses or bare_custom:
        groups.append(" ".join(["CUSTOM", *subclasses]))
    return groups


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
        api_timeout_s: float = DEFAULT_API_TIMEOUT_S,
        reply_timeout_s: float = DEFAULT_REPLY_TIMEOUT_S,
        max_body_bytes: int = MAX_BODY_BYTES,
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
        self.api_timeout_s = api_timeout_s
        self.reply_timeout_s = reply_timeout_s
        self.max_body_bytes = max_body_bytes
        self._events: set[str] = set(BASE_EVENTS) | set(events)
        # names nixed while ALL is subscribed: `event ALL` on a new socket brings them
        # back, so a reconnect nixes them again after subscribing
        self._nixed: set[str] = set()
        self._filters: list[tuple[str, str]] = []
        self._handlers: dict[str, list[EventHandler]] = {}
        self._on_connect: list[ConnectHook] = []
        self._jobs: dict[str, _Job] = {}
        self._late: OrderedDict[str, _Job] = OrderedDict()
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
        self.late_job_results = 0
        self.commands_timed_out = 0  # replies that never came: each one dropped the link

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
                if conn.timed_out is not None:
                    self.commands_timed_out += 1
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
                max_body=self.max_body_bytes,
            ),
            self.host,
            self.port,
        )
        self._last_local_address = conn.local_address
        try:
            await conn.auth_requested
            reply = await conn.send(
                encode_command(f"auth {self._password}"), "auth", reply_timeout=self.reply_timeout_s
            )
            if not reply.ok:
                raise ESLAuthError(f"authentication refused: {reply.reply_text}")
            await self._subscribe_on(conn, self._events)
            await self._nix_on(conn, self._nixed)
            for name, value in self._effective_filters():
                await self._checked(conn, encode_command(f"filter {name} {value}"), "filter")
        except BaseException:
            conn.close("setup failed")
            raise
        return conn

    async def _keepalive(self, conn: ESLConnection) -> None:
        """Probe a silent link with `api status`; a probe left unanswered drops it.

        Only when nothing else is in flight: a command in flight has its own reply
        timeout (a hung one drops the link), and TCP keep-alive covers a dead peer.
        """
        while conn.is_open:
            await asyncio.sleep(self.keepalive_s / 2)
            if time.monotonic() - conn.last_rx < self.keepalive_s or conn.in_flight:
                continue
            try:
                await conn.send(b"api status\n\n", "keep-alive", reply_timeout=self.keepalive_s)
            except ESLDisconnected:  # ESLCommandTimeout too: the link was dropped
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
            job_uuid = event.job_uuid or ""
            job = self._jobs.pop(job_uuid, None)
            if job is not None and not job.fut.done():
                job.fut.set_result(event)
            elif (late := self._late.pop(job_uuid, None)) is not None:
                self._late_result(job_uuid, late, event)
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

    def _late_result(self, job_uuid: str, job: _Job, event: Event) -> None:
        """A result we stopped waiting for: say so, and let the caller clean up (a late
        +OK of an originate is a leg that rang and answered with nobody to take it)."""
        self.late_job_results += 1
        first = (event.body or "").strip().split("\n", 1)[0][:200]
        log.info(
            "late result of bgapi job %s (%r), after we gave up: %s", job_uuid, job.command, first
        )
        if job.on_late is None:
            return
        try:
            self._spawn(job.on_late(event))
        except Exception:
            log.exception("on_late hook of bgapi job %s failed", job_uuid)

    def _remember_late(self, job_uuid: str, job: _Job) -> None:
        self._late[job_uuid] = job
        while len(self._late) > LATE_JOBS_KEPT:
            self._late.popitem(last=False)

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
        if "ALL" in new:
            self._nixed.clear()  # `event ALL` turns every event back on
        else:
            self._nixed.difference_update(new)
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

        Kept across reconnects like `subscribe`: a name nixed while ALL is subscribed
        is nixed again on every new connection right after its `event ... ALL`, which
        would otherwise bring it back (mod_event_socket applies `nixevent X` under ALL
        as "everything but X", so replaying both in order gives the same set).
        """
        names = [n for n in event_names if n not in BASE_EVENTS]
        self._events.difference_update(names)
        if "ALL" in names:
            self._nixed.clear()
        elif "ALL" in self._events:
            # still within ALL: a reconnect's `event ALL` would bring these back
            self._nixed.update(names)
        conn = self._conn
        if conn is None or not conn.is_open:
            return  # remembered: the next connection subscribes without them
        await self._nix_on(conn, names)
        if "ALL" in names:
            await self._subscribe_on(conn, self._events)

    async def _nix_on(self, conn: ESLConnection, names: Iterable[str]) -> None:
        for group in _event_groups(names):
            line = f"nixevent {group}"
            await self._checked(conn, encode_command(line), line)

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
        for group in _event_groups(names):
            line = f"event {self.event_format} {group}"
            await self._checked(conn, encode_command(line), "event")

    # ------------------------------------------------------------------ commands

    def _live(self) -> ESLConnection:
        conn = self._conn
        if conn is None or not conn.is_open:
            why = self.last_error or "connecting"
            raise ESLDisconnected(f"not connected to FreeSWITCH ({why})")
        return conn

    async def _checked(self, conn: ESLConnection, data: bytes, what: str) -> Frame:
        reply = await conn.send(data, what, reply_timeout=self.reply_timeout_s)
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

    async def api(
        self, command: str, *, check: bool = True, reply_timeout: float | None = None
    ) -> str:
        """Blocking `api`: FreeSWITCH holds the socket until it returns, so keep these short.

        Bounded by `reply_timeout` seconds (default `api_timeout_s`; math.inf: none),
        counted from when the switch gets to it. Past it the reply order of this
        socket is stuck behind the command, so the link is dropped and remade
        (logged, counted in `commands_timed_out`): this raises ESLCommandTimeout and
        the commands in flight with it fail with ESLDisconnected. The command may
        still complete on the switch. Use `bgapi` for anything that may take long.
        """
        limit = self.api_timeout_s if reply_timeout is None else reply_timeout
        what = f"api {command}"
        reply = await self._live().send(encode_command(what), what, reply_timeout=limit)
        text = reply.text
        if check and not reply.ok:
            raise ESLCommandError(f"api {command}", text.strip())
        return text

    async def bgapi(
        self,
        command: str,
        *,
        check: bool = True,
        job_timeout: float | None = None,
        on_late: LateJobHook | None = None,
    ) -> str:
        """`bgapi` with our own Job-UUID, resolved by its BACKGROUND_JOB; returns the job body.

        The future is registered before sending, since the job event can arrive in the
        same read as the +OK reply (transcript 01b). Nothing in ESL guarantees that the
        event comes (a lost subscription, a module reload, a job that hangs), so the
        wait is bounded: `job_timeout` seconds (default `job_timeout_s`; math.inf waits
        forever), then ESLJobTimeout. The job may still run on the switch then.

        If we stop waiting (timeout, lost link, cancelled), the job is remembered: its
        result arriving later (BACKGROUND_JOB goes to every subscribed socket, so also
        to the next connection) is logged at INFO and passed to `on_late(event)`.
        """
        limit = self.job_timeout_s if job_timeout is None else job_timeout
        job_uuid = str(uuidlib.uuid4())
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        job = _Job(command, fut, on_late)
        self._jobs[job_uuid] = job
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
            self._remember_late(job_uuid, job)
            raise ESLJobTimeout(command, job_uuid, limit) from None
        except (ESLDisconnected, asyncio.CancelledError):
            self._remember_late(job_uuid, job)  # the switch may have started it
            raise
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
        for job_uuid, job in jobs.items():
            if not job.fut.done():
                job.fut.set_exception(ESLDisconnected(f"bgapi job {job_uuid} lost: {reason}"))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return str(exc) or type(exc).__name__
