"""Concurrent calls through our outbound ESL server, driven by the FreeSWITCH simulator.

    python -m bench.calls [--calls 500] [--agents 50] [--scale 1.0]

This process runs only our side (OutboundServer + a call handler); the simulator runs
in a child process (`--simulate`), so the RSS measured here is ours. Each call:
answer, greeting playback, hold music, then the queue step (a stand-in that bridges
to a simulated agent phone; pass another `QueueStep` to `run()` to plug the real ACD),
then hangup. Printed: call setups/s, p50/p99 ESL command round trip (sendmsg -> +OK),
events/s parsed during the run, RSS per call, and the parser's events/s against a
ceiling measured on the same captured bytes in the same run (splitting on blank lines).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.harness import proc_cpu
from hotline.telephony.esl_connection import ESLConnection
from hotline.telephony.esl_frames import API_RESPONSE, COMMAND_REPLY, EVENT_TYPES, FrameParser
from hotline.telephony.esl_outbound import CallLeg, OutboundServer

ROOT = Path(__file__).resolve().parents[1]
QueueStep = Callable[[CallLeg], Awaitable[None]]
CAPTURE_LIMIT = 32 * 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")
_PROFILER: Any = None  # a cProfile.Profile with --profile


def rss_bytes() -> int:
    """Resident set size from /proc/self/statm (status costs ~0.5 ms to read: it ran
    on our event loop every 50 ms)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def bridge_to_agent(agents: int) -> QueueStep:
    """Minimal stand-in for the ACD: round-robin over simulated agent phones."""
    counter = iter(range(10**9))

    async def step(leg: CallLeg) -> None:
        await leg.bridge(f"user/{1000 + next(counter) % agents}")

    return step


class Meter:
    def __init__(self) -> None:
        self.rtts: list[float] = []  # write -> reply frame parsed by our connection
        self.resumed: list[float] = []  # write -> the awaiting task runs again
        self.captured: list[bytes] = []
        self.captured_bytes = 0
        self.events = 0
        self.setups: list[float] = []
        self.done = 0
        self.peak_rss = 0
        self._parsed: dict[int, float] = {}
        self.timeline: list[tuple[float, float, str]] = []  # (sent at, round trip, command)

    def install(self) -> None:
        """Time every command's reply and keep the bytes received, without changing behaviour.

        Two clocks: when the reply frame is parsed (the round trip the issue asks
        about: our write, the switch's turn, our read) and when the command's task
        resumes (adds our own event loop's backlog).
        """
        meter = self
        received, dispatch = ESLConnection.data_received, ESLConnection._dispatch
        parsed = self._parsed

        async def timed_send(conn: ESLConnection, data: bytes, what: str = "command"):  # type: ignore[no-untyped-def]
            fut = conn.send_nowait(data, what)
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
                parsed[id(conn._pending[0][1])] = time.perf_counter()
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


async def run(
    calls: int,
    agents: int,
    scale: float,
    ramp: float = 2.0,
    queue: QueueStep | None = None,
    *,
    jitter: float = 0.2,
    talk: float = 5.0,
) -> dict:
    meter = Meter()
    meter.install()
    queue = queue or bridge_to_agent(agents)
    started = time.perf_counter()

    async def handler(leg: CallLeg) -> None:
        meter.setups.append(time.perf_counter())
        await leg.answer()
        await leg.playback("ivr/12345-greeting.wav")
        await leg.playback("local_stream://moh")
        await queue(leg)
        await leg.hangup()
        meter.done += 1

    load_before = os.getloadavg()
    cpu_start = _cpu(resource.RUSAGE_SELF)
    baseline = rss_bytes()
    server = OutboundServer(handler, port=0, drain_timeout=10)
    await server.start()
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.calls", "--simulate", str(server.port),
        "--calls", str(calls), "--agents", str(agents), "--scale", str(scale),
        "--ramp", str(ramp), "--jitter", str(jitter), "--talk", str(talk),
        cwd=ROOT, stdout=subprocess.PIPE,
    )  # fmt: skip
    concurrent_peak = 0
    cpu_by_second: dict[int, tuple[float, float]] = {}
    while child.returncode is None:
        concurrent_peak = max(concurrent_peak, server.active_calls)
        meter.peak_rss = max(meter.peak_rss, rss_bytes())
        with contextlib.suppress(OSError, IndexError, ValueError):
            cpu_by_second[int(time.perf_counter() - started)] = (
                proc_cpu(Path("/proc/self/stat")),
                proc_cpu(Path(f"/proc/{child.pid}/stat")),
            )
        try:
            await asyncio.wait_for(child.wait(), 0.2)  # /proc reads cost our loop too
        except TimeoutError:
            pass
    out = (await child.stdout.read()).decode() if child.stdout else ""
    wall = time.perf_counter() - started
    await server.stop()
    cpu_ours, cpu_sim = _cpu(resource.RUSAGE_SELF) - cpu_start, _cpu(resource.RUSAGE_CHILDREN)
    sim = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}

    if _PROFILER is not None:  # the parser benchmark below is not part of the run
        _PROFILER.disable()
    data = b"".join(meter.captured)
    parse_eps, ceiling_eps, n_events = parser_ratio(data)
    rtts = sorted(meter.rtts)
    resumed = sorted(meter.resumed)
    setup_span = (max(meter.setups) - min(meter.setups)) if len(meter.setups) > 1 else 0.0
    by_second: dict[int, list[float]] = {}
    for t0, rtt, _ in meter.timeline:
        by_second.setdefault(int(t0 - started), []).append(rtt)
    cpu_share: dict[int, tuple[float, float]] = {}
    previous = (0.0, 0.0)
    for sec, (ours, theirs) in sorted(cpu_by_second.items()):
        cpu_share[sec] = (ours - previous[0], theirs - previous[1])
        previous = (ours, theirs)
    timeline = {
        sec: (
            len(v),
            1000 * sorted(v)[len(v) // 2],
            1000 * sorted(v)[int(len(v) * 0.99) - 1 if len(v) > 1 else 0],
        )
        for sec, v in sorted(by_second.items())
    }
    by_command: dict[str, list[float]] = {}
    for _, rtt, what in meter.timeline:
        by_command.setdefault(
            what.split(" ")[0] if not what.startswith("execute") else what, []
        ).append(rtt)
    return {
        "timeline": timeline,
        "cpu_share": cpu_share,
        "by_command": {
            k: (len(v), 1000 * sorted(v)[int(len(v) * 0.99) - 1 if len(v) > 1 else 0])
            for k, v in by_command.items()
        },
        "calls": calls,
        "completed": meter.done,
        "concurrent_peak": concurrent_peak,
        "setups_per_s": len(meter.setups) / setup_span if setup_span else float("nan"),
        "rtt_p50_ms": 1000 * statistics.median(rtts) if rtts else float("nan"),
        "rtt_p99_ms": 1000 * rtts[int(len(rtts) * 0.99) - 1] if rtts else float("nan"),
        "commands": len(rtts),
        "resumed_p50_ms": 1000 * statistics.median(resumed) if resumed else float("nan"),
        "resumed_p99_ms": 1000 * resumed[int(len(resumed) * 0.99) - 1] if resumed else float("nan"),
        "events_per_s_run": meter.events / wall,
        "rss_peak_mb": meter.peak_rss / 2**20,
        "rss_per_call_kb": (meter.peak_rss - baseline) / max(concurrent_peak, 1) / 1024,
        "parser_events_per_s": parse_eps,
        "ceiling_events_per_s": ceiling_eps,
        "parser_ratio": parse_eps / ceiling_eps if ceiling_eps else float("nan"),
        "parsed_events": n_events,
        "sim": sim,
        "wall_s": wall,
        "cpu_server_s": cpu_ours,
        "cpu_simulator_s": cpu_sim,
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def parser_ratio(data: bytes, rounds: int = 5) -> tuple[float, float, int]:
    """Events/s of FrameParser (64 KiB reads, event name decoded) vs a blank-line split."""
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    n_events = 0
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        parser = FrameParser()
        count = 0
        for chunk in chunks:
            for frame in parser.feed(chunk):
                if frame.content_type in EVENT_TYPES:
                    count += 1
        best = min(best, time.perf_counter() - t0)
        n_events = count
    ceiling = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        data.split(b"\n\n")
        ceiling = min(ceiling, time.perf_counter() - t0)
    return n_events / best, n_events / ceiling, n_events


async def simulate(
    port: int, calls: int, agents: int, scale: float, ramp: float, jitter: float, talk: float
) -> None:
    from hotline.telephony.simulator import AgentPhone, CallerScript, FreeSwitchSimulator

    sim = FreeSwitchSimulator(
        socket_target=("127.0.0.1", port),
        time_scale=scale,
        agents=[AgentPhone(str(1000 + i), answer_after=1.0, talk_time=talk) for i in range(agents)],
        linger_close_after=30,
        jitter=jitter,
        seed=1,
    )
    sim.media_seconds = {"ivr/12345-greeting.wav": 2.0, "local_stream://moh": 3.0}
    await sim.start()
    t0 = time.perf_counter()

    async def arrive(i: int):  # type: ignore[no-untyped-def]
        await asyncio.sleep(ramp * i / calls)  # callers arrive over `ramp` seconds
        return await sim.place_call(CallerScript(caller_number=f"1380{i:07d}"))

    channels = await asyncio.gather(*(arrive(i) for i in range(calls)))
    placed = time.perf_counter() - t0
    await asyncio.gather(*(ch.gone.wait() for ch in channels))
    causes: dict[str, int] = {}
    for ch in channels:
        causes[ch.hangup_cause or "?"] = causes.get(ch.hangup_cause or "?", 0) + 1
    await asyncio.sleep(0.2)
    await sim.stop()
    print(json.dumps({"placed_s": placed, "causes": causes, "events_sent": sim.events_sent}))


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
    ap.add_argument("--simulate", type=int, metavar="PORT", help=argparse.SUPPRESS)
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

        _PROFILER = cProfile.Profile()
        _PROFILER.enable()
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
            run(args.calls, args.agents, args.scale, args.ramp, jitter=args.jitter, talk=args.talk)
        )
    finally:
        if _PROFILER is not None and profile_dir:
            _PROFILER.disable()
            Path(profile_dir).mkdir(parents=True, exist_ok=True)
            who = "simulator" if args.simulate else "server"
            _PROFILER.dump_stats(str(Path(profile_dir) / f"{who}.pstats"))
    print(
        f"calls                 {r['completed']}/{r['calls']} completed, "
        f"{r['concurrent_peak']} concurrent at peak, hangups {r['sim'].get('causes')}"
    )
    print(
        "machine load          before {:.2f} {:.2f} {:.2f}, after {:.2f} {:.2f} {:.2f}".format(
            *r["load_before"], *r["load_after"]
        )
    )
    print(
        f"CPU                   ours {r['cpu_server_s']:.1f} s, simulator "
        f"{r['cpu_simulator_s']:.1f} s, over {r['wall_s']:.1f} s of wall time"
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
        f"RSS                   peak {r['rss_peak_mb']:.0f} MB, "
        f"{r['rss_per_call_kb']:.0f} KB per call"
    )
    print(
        f"parser                {r['parser_events_per_s']:.0f} events/s vs ceiling "
        f"{r['ceiling_events_per_s']:.0f} (split on blank lines): "
        f"ratio {r['parser_ratio']:.2f} (target >= 0.25) over {r['parsed_events']} events"
    )
    ok = (
        r["completed"] == r["calls"]
        and r["rtt_p99_ms"] < 20
        and r["rss_peak_mb"] < 300
        and r["parser_ratio"] >= 0.25
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
    print("targets               " + ("met" if ok else "NOT met"))  # fmt: skip


if __name__ == "__main__":
    main()
