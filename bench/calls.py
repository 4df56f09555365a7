"""Concurrent calls through the service's phone line, driven by the FreeSWITCH simulator.

    python -m bench.calls [--calls 500] [--agents 50] [--ramp 2] [--talk 5] [--path real]

This process runs only our side; the simulator (`hotline/telephony/simulator.py`) runs
in a child process (`--simulate`), so the RSS and CPU measured here are ours.

`--path real` (the default) is the service as `python main.py serve` builds it:
`create_app` on a fresh SQLite file in a temporary directory (migrated, WAL,
synchronous=FULL: the production store settings), started by aiohttp's runner with
no HTTP listener. Its phone line (`hotline.acd.wiring.build_phone_line`: `EslLine`,
the ACD over `EslSwitch`, `CallEntry`) connects its inbound client to the simulator
and the simulator connects each caller to its outbound server, as `serve --demo` and
`tests/hotline/acd/phone_rig.py` wire it. `--agents` simulated phones are logged in
to the ACD (`AcdService.login`, extensions 1000...). Each call: answer, the IVR flow
`12345-default` (greeting 2 s, then the queue node), the ACD queues it (call record,
work item, position announcement, hold music), rings a free agent with `bgapi
originate`, bridges on answer (the agent answers after 1 s), starts the recording,
the agent hangs up after `--talk` s, the ACD ends the conversation, the post-call
survey flow asks its question, the caller keys 1, the goodbye prompt, hangup. ACD
settings are the production defaults except the agents' wrap-up (`--wrap-up`,
default 0 s: simulated agents are ready at once).

`--path standin` is the earlier stand-in handler (answer, greeting 2 s, hold music
3 s, `bridge` to a simulated agent phone round-robin, hangup) on a bare
OutboundServer, kept as a comparison of the protocol layer alone.

Printed: call setups/s, p50/p99 ESL command round trip (write -> reply parsed, on
every connection: the callers' sockets and the inbound client) and to the awaiting
task resumed, events/s parsed during the run, RSS peak and per call (and once every
call has ended, with the bench's own copy of the received bytes named), the parser's
events/s against a ceiling measured on the same captured bytes in the same run
(splitting on blank lines; both in CPU time), CPU of both processes, the machine's
load average before and after, and whether each target is met. A call counts as
completed when its handler returned and (real path) its record in the store is
`ended` with an agent. `BENCH_CALLS_TIMELINE=1` adds a
per-second table and p99 per command; `--profile DIR` writes cProfile stats of both
processes for the measured part.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.harness import proc_cpu
from hotline.telephony.esl_connection import ESLConnection
from hotline.telephony.esl_frames import API_RESPONSE, COMMAND_REPLY, EVENT_TYPES, FrameParser
from hotline.telephony.esl_outbound import CallLeg, OutboundServer

ROOT = Path(__file__).resolve().parents[1]
QueueStep = Callable[[CallLeg], Awaitable[None]]
CallHandler = Callable[[CallLeg], Awaitable[None]]
CAPTURE_LIMIT = 32 * 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")
PATHS = ("real", "standin")
SIM_PASSWORD = "ClueCon"
FIRST_EXTENSION = 1000
GREETING_S = 2.0  # the greeting prompt; every other prompt plays 1 s
SET_UP_TIMEOUT_S = 60.0  # migrate, start, inbound connected (agents' logins excluded)
CALLS_DEADLINE_S = 900.0  # the simulator ends calls still up by then: the run stops by itself
_PROFILER: Any = None  # a cProfile.Profile with --profile, enabled for the measured part


def rss_bytes() -> int:
    """Resident set size from /proc/self/statm (status costs ~0.5 ms to read: it ran
    on our event loop every 50 ms)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def bridge_to_agent(agents: int) -> QueueStep:
    """The stand-in path's queue: round-robin over simulated agent phones, no ACD."""
    counter = iter(range(10**9))

    async def step(leg: CallLeg) -> None:
        await leg.bridge(f"user/{FIRST_EXTENSION + next(counter) % agents}")

    return step


class Meter:
    def __init__(self) -> None:
        self.rtts: list[float] = []  # write -> reply frame parsed by our connection
        self.resumed: list[float] = []  # write -> the awaiting task runs again
        self.captured: list[bytes] = []
        self.captured_bytes = 0
        self.events = 0
        self.setups: list[float] = []
        self.done = 0  # call handlers that returned without an exception
        self.peak_rss = 0
        self._parsed: dict[int, float] = {}
        self.timeline: list[tuple[float, float, str]] = []  # (sent at, round trip, command)
        self._originals: tuple[Any, Any, Any] | None = None

    def reset(self) -> None:
        """Forget what the set-up sent and received (the inbound client's auth and
        subscriptions): only the calls are measured."""
        self.rtts.clear()
        self.resumed.clear()
        self.captured.clear()
        self.captured_bytes = 0
        self.events = 0
        self.timeline.clear()

    def install(self) -> None:
        """Time every command's reply and keep the bytes received, without changing behaviour.

        Two clocks: when the reply frame is parsed (the round trip the issue asks
        about: our write, the switch's turn, our read) and when the command's task
        resumes (adds our own event loop's backlog). Every ESL connection is
        patched, so the inbound client's `bgapi originate` and `api` count too.
        """
        meter = self
        received, dispatch = ESLConnection.data_received, ESLConnection._dispatch
        self._originals = (ESLConnection.send, dispatch, received)
        parsed = self._parsed

        async def timed_send(  # type: ignore[no-untyped-def]
            conn: ESLConnection,
            data: bytes,
            what: str = "command",
            *,
            reply_timeout: float | None = None,
        ):
            fut = conn.send_nowait(data, what, reply_timeout=reply_timeout)
            t0 = time.perf_counter()
            try:
                reply = await fut
            finally:
                t_parsed = parsed.pop(id(fut), None)
            meter.resumed.append(time.perf_counter() - t0)
            if t_parsed is not None:
                meter.rtts.append(t_parsed - t0)
                meter.timeline.append((t0, t_parsed - t0, what))
            return reply

        def stamped(conn: ESLConnection, frame):  # type: ignore[no-untyped-def]
            if conn._pending and frame.content_type in (COMMAND_REPLY, API_RESPONSE):
                parsed[id(conn._pending[0].fut)] = time.perf_counter()
            dispatch(conn, frame)

        def tapped(conn: ESLConnection, data: bytes) -> None:
            if meter.captured_bytes < CAPTURE_LIMIT:
                meter.captured.append(data)
                meter.captured_bytes += len(data)
            before = conn.events_received
            received(conn, data)
            meter.events += conn.events_received - before

        ESLConnection.send = timed_send  # type: ignore[method-assign]
        ESLConnection._dispatch = stamped  # type: ignore[method-assign]
        ESLConnection.data_received = tapped  # type: ignore[method-assign]

    def uninstall(self) -> None:
        """Put the connection class back (a test runs the bench inside its own process)."""
        if self._originals is not None:
            send, dispatch, received = self._originals
            ESLConnection.send = send  # type: ignore[method-assign]
            ESLConnection._dispatch = dispatch  # type: ignore[method-assign]
            ESLConnection.data_received = received  # type: ignore[method-assign]
            self._originals = None

    def counted(self, handler: CallHandler) -> CallHandler:
        """The outbound server's per-call handler, with the set-up time and its end
        counted (wraps whatever the server runs; changes nothing else)."""

        async def call(leg: CallLeg) -> None:
            self.setups.append(time.perf_counter())
            await handler(leg)
            self.done += 1

        return call


class LogCount(logging.Handler):
    """Counts the service's warnings and errors (and keeps the commonest) so a run that
    logged trouble says so next to its numbers instead of scrolling them away."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts = {"WARNING": 0, "ERROR": 0}
        self.messages: dict[str, int] = {}

    def reset(self) -> None:
        self.counts = {"WARNING": 0, "ERROR": 0}
        self.messages.clear()

    def emit(self, record: logging.LogRecord) -> None:
        level = "ERROR" if record.levelno >= logging.ERROR else "WARNING"
        self.counts[level] += 1
        with contextlib.suppress(Exception):
            text = f"{level} {record.name}: {record.getMessage()}"[:160]
            self.messages[text] = self.messages.get(text, 0) + 1

    def summary(self) -> str:
        text = f"{self.counts['ERROR']} errors, {self.counts['WARNING']} warnings"
        for line, n in sorted(self.messages.items(), key=lambda kv: -kv[1])[:3]:
            text += f"\n    {n} x {line}"
        return text


@contextlib.asynccontextmanager
async def real_line(
    workdir: Path, sim_port: int, agents: int, wrap_up: float
) -> AsyncIterator[Any]:
    """The service as `serve` builds it (create_app, migrations, every cleanup context,
    the deadline watcher), without the HTTP listener, its phone line pointed at the
    simulator; `agents` simulated phones logged in to its ACD. Yields the PhoneLine."""
    from aiohttp import web

    from hotline.app import create_app
    from hotline.appkeys import PHONE_LINE
    from hotline.settings import load_settings

    settings = load_settings(
        database_url=f"sqlite+aiosqlite:///{workdir}/hotline.db",
        pii_keys=base64.b64encode(os.urandom(32)).decode(),
        attachment_dir=workdir / "attachments",
        holiday_override_file=workdir / "no-holidays.yaml",
        card_keyring_file=workdir / "citycard-keyring.json",
        card_service_key_file=workdir / "citycard-service.pem",
        recording_dir=workdir / "recordings",
        voicemail_dir=workdir / "voicemail",
        esl_host="127.0.0.1",
        esl_port=sim_port,
        esl_password=SIM_PASSWORD,
        esl_listen="127.0.0.1:0",
        acd_wrap_up_s=wrap_up,
        # production defaults, pinned so a HOTLINE_* variable in the shell cannot
        # change what is measured (after-hours flow, no survey, another language)
        ivr_hours="always",
        ivr_survey=True,
        record_calls=True,
        prompt_language="zh",
        log_level="INFO",
    )
    root = logging.getLogger()
    level = root.level
    root.setLevel(settings.log_level)  # as `main.py serve` does
    runner = web.AppRunner(create_app(settings), handle_signals=False)
    try:
        await runner.setup()  # runs every cleanup context: store, bus, ..., the phone line
        line = runner.app[PHONE_LINE]
        esl = line.esl
        assert esl is not None, "the phone line has no ESL link"
        deadline = time.monotonic() + SET_UP_TIMEOUT_S
        while not (esl.inbound.connected and esl.listening):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the phone line did not come up: {esl.status()}")
            await asyncio.sleep(0.05)
        for i in range(agents):
            ext = str(FIRST_EXTENSION + i)
            await line.service.login(f"bench-agent-{ext}", ext)
        yield line
    finally:
        await runner.cleanup()
        root.setLevel(level)


async def call_records(deps: Any) -> dict[str, int]:
    """What the store says about the calls: records by state, answered ones ended,
    surveys stored, work items left (a waiting call's item must go when it is answered)."""
    import sqlalchemy as sa

    from hotline.calls import store

    call, event, item = store.call_t, store.call_event_t, store.work_item
    async with deps.db.read() as conn:
        by_state = sa.select(call.c.state, sa.func.count()).group_by(call.c.state)
        states = {state: n for state, n in (await conn.execute(by_state)).all()}
        ended_with_agent = (
            await conn.execute(
                sa.select(sa.func.count()).where(call.c.state == "ended", call.c.agent.is_not(None))
            )
        ).scalar_one()
        surveys = (
            await conn.execute(sa.select(sa.func.count()).where(event.c.kind == "survey"))
        ).scalar_one()
        items = (await conn.execute(sa.select(sa.func.count()).select_from(item))).scalar_one()
    return {
        **{f"state {k}": int(v) for k, v in states.items()},
        "answered and ended": int(ended_with_agent),
        "surveys": int(surveys),
        "work items left": int(items),
    }


async def run(
    calls: int,
    agents: int,
    scale: float,
    ramp: float = 2.0,
    queue: QueueStep | None = None,
    *,
    jitter: float = 0.2,
    talk: float = 5.0,
    path: str = "real",
    wrap_up: float = 0.0,
) -> dict:
    """One run: the simulator in a child process, our side (`path`) here; the figures.

    The service shuts down before the simulator does, as it would with a switch that
    stays up, so its shutdown is not mistaken for the switch going away."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}")
    meter = Meter()
    meter.install()
    logs = LogCount()
    logging.getLogger().addHandler(logs)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.calls", "--simulate", path,
        "--calls", str(calls), "--agents", str(agents), "--scale", str(scale),
        "--ramp", str(ramp), "--jitter", str(jitter), "--talk", str(talk),
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    try:
        hello = json.loads(await asyncio.wait_for(child.stdout.readline(), SET_UP_TIMEOUT_S))
        async with contextlib.AsyncExitStack() as stack:
            set_up_started = time.perf_counter()
            line: Any = None
            if path == "real":
                workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="calls-")))
                line = await stack.enter_async_context(
                    real_line(workdir, hello["inbound_port"], agents, wrap_up)
                )
                server = line.esl.server
                server.handler = meter.counted(server.handler)
            else:
                standin = queue or bridge_to_agent(agents)

                async def handler(leg: CallLeg) -> None:
                    await leg.answer()
                    await leg.playback("ivr/12345-greeting.wav")
                    await leg.playback("local_stream://moh")
                    await standin(leg)
                    await leg.hangup()

                server = OutboundServer(meter.counted(handler), port=0, drain_timeout=10)
                await server.start()
                stack.push_async_callback(server.stop)
            set_up_s = time.perf_counter() - set_up_started
            logs.reset()  # set-up's notices (new key files) are not the calls' business
            r = await _measure(meter, child, server)
            r["set_up_s"] = set_up_s
            if line is not None:
                r["acd"] = line.service.kpis()
                r["store"] = await call_records(line.service.deps)
        # our side has shut down while the switch is still there (no lost-link noise);
        # now the simulator may stop
        with contextlib.suppress(ConnectionError):
            child.stdin.write(b"stop\n")
            await child.stdin.drain()
        await asyncio.wait_for(child.wait(), 30)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        logging.getLogger().removeHandler(logs)
        meter.uninstall()
    r.update(path=path, agents=agents, wrap_up_s=wrap_up, log=logs.summary(), calls=calls)
    r["completed"] = (
        min(meter.done, r["store"]["answered and ended"]) if path == "real" else meter.done
    )
    r["handlers_done"] = meter.done
    r["load_after"] = os.getloadavg()
    return r


async def _measure(meter: Meter, child: asyncio.subprocess.Process, server: OutboundServer) -> dict:
    """Tell the simulator where to call, then watch until it reports every call ended;
    the figures of the run."""
    assert child.stdin is not None and child.stdout is not None
    load_before = os.getloadavg()
    cpu_start = _cpu(resource.RUSAGE_SELF)
    loop_stat = Path(f"/proc/self/task/{os.getpid()}/stat")  # the event loop's thread
    loop_start = proc_cpu(loop_stat)
    baseline = rss_bytes()
    meter.reset()
    if _PROFILER is not None:
        _PROFILER.enable()
    started = time.perf_counter()
    child.stdin.write(f"{server.port}\n".encode())
    await child.stdin.drain()
    concurrent_peak = 0
    cpu_by_second: dict[int, tuple[float, float]] = {}
    child_stat = Path(f"/proc/{child.pid}/stat")
    cpu_at_start = (proc_cpu(Path("/proc/self/stat")), proc_cpu(child_stat))
    result = asyncio.ensure_future(child.stdout.readline())
    while not result.done():
        concurrent_peak = max(concurrent_peak, server.active_calls)
        meter.peak_rss = max(meter.peak_rss, rss_bytes())
        with contextlib.suppress(OSError, IndexError, ValueError):
            cpu_by_second[int(time.perf_counter() - started)] = (
                proc_cpu(Path("/proc/self/stat")),
                proc_cpu(child_stat),
            )
        await asyncio.wait({result}, timeout=0.2)  # /proc reads cost our loop too
    out = result.result().decode()
    wall = time.perf_counter() - started
    rss_end = rss_bytes()  # every call has ended; before the parser's timing below
    if _PROFILER is not None:  # the parser benchmark below is not part of the run
        _PROFILER.disable()
    cpu_ours = _cpu(resource.RUSAGE_SELF) - cpu_start
    cpu_loop = proc_cpu(loop_stat) - loop_start
    cpu_sim = proc_cpu(child_stat)  # the whole child: its start-up is a fraction of a second
    sim = json.loads(out) if out.strip() else {}

    data = b"".join(meter.captured)
    parse_eps, ceiling_eps, n_events = parser_ratio(data)
    rtts = sorted(meter.rtts)
    resumed = sorted(meter.resumed)
    setup_span = (max(meter.setups) - min(meter.setups)) if len(meter.setups) > 1 else 0.0
    by_second: dict[int, list[float]] = {}
    for t0, rtt, _ in meter.timeline:
        by_second.setdefault(int(t0 - started), []).append(rtt)
    cpu_share: dict[int, tuple[float, float]] = {}
    previous = cpu_at_start
    for sec, (ours, theirs) in sorted(cpu_by_second.items()):
        cpu_share[sec] = (ours - previous[0], theirs - previous[1])
        previous = (ours, theirs)
    timeline = {
        sec: (len(v), 1000 * sorted(v)[len(v) // 2], 1000 * _p99(sorted(v)))
        for sec, v in sorted(by_second.items())
    }
    by_command: dict[str, list[float]] = {}
    for _, rtt, what in meter.timeline:
        by_command.setdefault(_command_kind(what), []).append(rtt)
    return {
        "timeline": timeline,
        "cpu_share": cpu_share,
        "by_command": {k: (len(v), 1000 * _p99(sorted(v))) for k, v in by_command.items()},
        "concurrent_peak": concurrent_peak,
        "setups": len(meter.setups),
        "setups_per_s": len(meter.setups) / setup_span if setup_span else float("nan"),
        "rtt_p50_ms": 1000 * statistics.median(rtts) if rtts else float("nan"),
        "rtt_p99_ms": 1000 * _p99(rtts) if rtts else float("nan"),
        "commands": len(rtts),
        "resumed_p50_ms": 1000 * statistics.median(resumed) if resumed else float("nan"),
        "resumed_p99_ms": 1000 * _p99(resumed) if resumed else float("nan"),
        "events_per_s_run": meter.events / wall,
        "rss_baseline_mb": baseline / 2**20,
        "rss_peak_mb": meter.peak_rss / 2**20,
        "rss_per_call_kb": (meter.peak_rss - baseline) / max(concurrent_peak, 1) / 1024,
        "rss_end_mb": rss_end / 2**20,
        "capture_mb": meter.captured_bytes / 2**20,
        "parser_events_per_s": parse_eps,
        "ceiling_events_per_s": ceiling_eps,
        "parser_ratio": parse_eps / ceiling_eps if ceiling_eps else float("nan"),
        "parsed_events": n_events,
        "sim": sim,
        "wall_s": wall,
        "cpu_server_s": cpu_ours,
        "cpu_loop_s": cpu_loop,
        "cpu_simulator_s": cpu_sim,
        "load_before": load_before,
    }


def _p99(ordered: list[float]) -> float:
    return ordered[int(len(ordered) * 0.99) - 1 if len(ordered) > 1 else 0]


def _command_kind(what: str) -> str:
    """`execute playback`, `api uuid_bridge`, `bgapi originate`, `myevents`: the
    command without its arguments (uuids, paths), for the p99-per-command table."""
    words = what.split(" ")
    if words[0] in ("execute", "api", "bgapi") and len(words) > 1:
        return " ".join(words[:2])
    return words[0]


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def parser_ratio(data: bytes, rounds: int = 5) -> tuple[float, float, int]:
    """Events/s of FrameParser (64 KiB reads, event name decoded) vs a blank-line split.

    Both are timed in this thread's CPU time with the cyclic collector off (as timeit
    does), best of `rounds`, the two interleaved: on a shared machine wall time counts
    the rounds another process preempted, and a 200 ms parser round is preempted more
    often than a 50 ms split, which made the ratio swing with the load average.
    """
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    n_events = 0
    best = ceiling = float("inf")
    collecting = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            t0 = time.thread_time()
            parser = FrameParser()
            count = 0
            for chunk in chunks:
                for frame in parser.feed(chunk):
                    if frame.content_type in EVENT_TYPES:
                        count += 1
            best = min(best, time.thread_time() - t0)
            n_events = count
            t0 = time.thread_time()
            data.split(b"\n\n")
            ceiling = min(ceiling, time.thread_time() - t0)
    finally:
        if collecting:
            gc.enable()
    if not n_events:
        return 0.0, 0.0, 0
    return n_events / best, n_events / max(ceiling, 1e-9), n_events


async def simulate(
    path: str, calls: int, agents: int, scale: float, ramp: float, jitter: float, talk: float
) -> None:
    """The child process: a simulated FreeSWITCH. Prints its inbound ESL port, reads
    our outbound port from stdin (once our side is ready), places the calls, waits
    for every one to end and prints what it saw as one JSON line."""
    from hotline.acd.esl_switch import MUSIC_ON_HOLD
    from hotline.telephony.simulator import AgentPhone, CallerScript, FreeSwitchSimulator
    from ivr.audio import SHIPPED_ROOT

    phones = [
        AgentPhone(str(FIRST_EXTENSION + i), answer_after=1.0, talk_time=talk)
        for i in range(agents)
    ]
    sim = FreeSwitchSimulator(
        password=SIM_PASSWORD,
        time_scale=scale,
        agents=phones,
        linger_close_after=30,
        jitter=jitter,
        seed=1,
    )
    if path == "real":
        sim.media_seconds[str(SHIPPED_ROOT / "zh" / "greeting.wav")] = GREETING_S
        sim.media_seconds[MUSIC_ON_HOLD] = 3600.0  # a local stream never ends on its own
    else:
        sim.media_seconds = {"ivr/12345-greeting.wav": GREETING_S, MUSIC_ON_HOLD: 3.0}
    await sim.start()
    print(json.dumps({"inbound_port": sim.port}), flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if not line.strip():
        await sim.stop()
        return
    sim.socket_target = ("127.0.0.1", int(line))
    if _PROFILER is not None:
        _PROFILER.enable()
    # the real path's callers key 1 at the post-call survey (its only digit prompt)
    presses = ["1"] if path == "real" else []
    t0 = time.perf_counter()

    async def arrive(i: int):  # type: ignore[no-untyped-def]
        await asyncio.sleep(ramp * i / calls)  # callers arrive over `ramp` seconds
        return await sim.place_call(CallerScript(caller_number=f"1380{i:07d}", presses=presses))

    channels = await asyncio.gather(*(arrive(i) for i in range(calls)))
    placed = time.perf_counter() - t0
    _, stuck = await asyncio.wait(
        [asyncio.ensure_future(ch.gone.wait()) for ch in channels], timeout=CALLS_DEADLINE_S
    )
    for ch in channels:
        if ch.up:
            sim.hangup(ch, "RECOVERY_ON_TIMER_EXPIRE")
    causes: dict[str, int] = {}
    for ch in channels:
        causes[ch.hangup_cause or "?"] = causes.get(ch.hangup_cause or "?", 0) + 1
    if _PROFILER is not None:
        _PROFILER.disable()
    result = {
        "placed_s": placed,
        "causes": causes,
        "events_sent": sim.events_sent,
        "agents_answered": sum(p.answered for p in phones),
        "stuck": len(stuck),
    }
    print(json.dumps(result), flush=True)
    # our side shuts down first, as it would with a switch that stays up
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await sim.stop()


def targets(r: dict) -> dict[str, bool]:
    """Each target of the issue, met or not."""
    return {
        "every call completed": r["completed"] == r["calls"],
        "p99 command round trip < 20 ms": r["rtt_p99_ms"] < 20,
        "RSS < 300 MB": r["rss_peak_mb"] < 300,
        "parser >= 25% of the ceiling": r["parser_ratio"] >= 0.25,
    }


def report(r: dict) -> None:
    if r["path"] == "real":
        what = (
            f"real path: create_app on SQLite, IVR 12345-default -> ACD, {r['agents']} agents "
            f"logged in (wrap-up {r['wrap_up_s']:g} s), set up in {r['set_up_s']:.1f} s"
        )
    else:
        what = f"stand-in handler on a bare OutboundServer, {r['agents']} agent phones"
    print(f"path                  {what}")
    print(
        f"calls                 {r['completed']}/{r['calls']} completed, "
        f"{r['concurrent_peak']} concurrent at peak, hangups {r['sim'].get('causes')}"
        + (f", {r['sim']['stuck']} STUCK" if r["sim"].get("stuck") else "")
    )
    if r["path"] == "real":
        acd = r["acd"]
        print(
            f"ACD                   offered {acd['offered']}, answered {acd['answered']}, "
            f"abandoned {acd['abandoned']}, ASA {acd['asa_s']} s, service level "
            f"{acd['service_level']}; agents' phones answered {r['sim'].get('agents_answered')}"
        )
        print(
            "store                 "
            + ", ".join(f"{k} {v}" for k, v in r["store"].items())
            + f"; handlers returned {r['handlers_done']}"
        )
    print(f"service log           {r['log']}")
    print(
        "machine load          before {:.2f} {:.2f} {:.2f}, after {:.2f} {:.2f} {:.2f}".format(
            *r["load_before"], *r["load_after"]
        )
    )
    print(
        f"CPU                   ours {r['cpu_server_s']:.1f} s (event loop "
        f"{r['cpu_loop_s']:.1f} s, other threads {r['cpu_server_s'] - r['cpu_loop_s']:.1f} s), "
        f"simulator {r['cpu_simulator_s']:.1f} s, over {r['wall_s']:.1f} s of wall time"
    )
    print(f"call setups/s         {r['setups_per_s']:.0f}")
    print(
        f"ESL command RTT       p50 {r['rtt_p50_ms']:.2f} ms   p99 {r['rtt_p99_ms']:.2f} ms "
        f"({r['commands']} commands; write -> reply parsed)"
    )
    print(
        f"  ... task resumed    p50 {r['resumed_p50_ms']:.2f} ms   "
        f"p99 {r['resumed_p99_ms']:.2f} ms "
        "(write -> the awaiting task runs: adds our loop's backlog)"
    )
    print(f"events/s parsed (run) {r['events_per_s_run']:.0f}")
    print(
        f"RSS                   peak {r['rss_peak_mb']:.0f} MB (before the calls "
        f"{r['rss_baseline_mb']:.0f} MB), {r['rss_per_call_kb']:.0f} KB per call; "
        f"{r['rss_end_mb']:.0f} MB once every call ended; the bench's own copy of the "
        f"bytes received (for the parser's ratio) is {r['capture_mb']:.0f} MB of it"
    )
    print(
        f"parser                {r['parser_events_per_s']:.0f} events/CPU-s vs ceiling "
        f"{r['ceiling_events_per_s']:.0f} (split on blank lines): "
        f"ratio {r['parser_ratio']:.2f} (target >= 0.25) over {r['parsed_events']} events"
    )
    if os.environ.get("BENCH_CALLS_TIMELINE"):
        for sec, (n, p50, p99) in r["timeline"].items():
            ours, theirs = r["cpu_share"].get(sec, (0.0, 0.0))
            print(
                f"  t={sec:3d}s  {n:5d} commands  p50 {p50:8.2f} ms  p99 {p99:8.2f} ms  "
                f"CPU ours {ours:4.2f} s  simulator {theirs:4.2f} s"
            )
        for what, (n, p99) in r["by_command"].items():
            print(f"  {what:30s} {n:5d}  p99 {p99:8.2f} ms")
    met = targets(r)
    for name, ok in met.items():
        print(f"  {'met    ' if ok else 'NOT met'}  {name}")
    print("targets               " + ("met" if all(met.values()) else "NOT met"))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--scale", type=float, default=1.0, help="simulated time factor")
    ap.add_argument("--ramp", type=float, default=2.0, help="seconds over which callers arrive")
    ap.add_argument(
        "--jitter",
        type=float,
        default=0.2,
        help="+- fraction on simulated step durations (0: every call in lockstep)",
    )
    ap.add_argument("--talk", type=float, default=5.0, help="seconds each agent talks")
    ap.add_argument(
        "--path",
        choices=PATHS,
        default="real",
        help="real: the service's phone line (IVR, ACD, store); standin: the old handler",
    )
    ap.add_argument(
        "--wrap-up", type=float, default=0.0, help="agents' after-call work, s (real path)"
    )
    ap.add_argument("--simulate", choices=PATHS, help=argparse.SUPPRESS)
    ap.add_argument(
        "--profile", metavar="DIR", help="write cProfile stats of both processes to DIR"
    )
    args = ap.parse_args()
    if args.profile:
        os.environ["BENCH_CALLS_PROFILE"] = args.profile
    profile_dir = os.environ.get("BENCH_CALLS_PROFILE")
    global _PROFILER
    if profile_dir:
        import cProfile

        _PROFILER = cProfile.Profile()  # enabled when the calls start
    try:
        if args.simulate:
            asyncio.run(
                simulate(
                    args.simulate,
                    args.calls,
                    args.agents,
                    args.scale,
                    args.ramp,
                    args.jitter,
                    args.talk,
                )
            )
            return
        r = asyncio.run(
            run(
                args.calls,
                args.agents,
                args.scale,
                args.ramp,
                jitter=args.jitter,
                talk=args.talk,
                path=args.path,
                wrap_up=args.wrap_up,
            )
        )
    finally:
        if _PROFILER is not None and profile_dir:
            _PROFILER.disable()
            Path(profile_dir).mkdir(parents=True, exist_ok=True)
            who = "simulator" if args.simulate else "server"
            _PROFILER.dump_stats(str(Path(profile_dir) / f"{who}.pstats"))
    report(r)


if __name__ == "__main__":
    main()
