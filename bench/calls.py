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
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from hotline.telephony.esl_connection import ESLConnection
from hotline.telephony.esl_frames import EVENT_TYPES, FrameParser
from hotline.telephony.esl_outbound import CallLeg, OutboundServer

ROOT = Path(__file__).resolve().parents[1]
QueueStep = Callable[[CallLeg], Awaitable[None]]
CAPTURE_LIMIT = 32 * 1024 * 1024


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def bridge_to_agent(agents: int) -> QueueStep:
    """Minimal stand-in for the ACD: round-robin over simulated agent phones."""
    counter = iter(range(10**9))

    async def step(leg: CallLeg) -> None:
        await leg.bridge(f"user/{1000 + next(counter) % agents}")

    return step


class Meter:
    def __init__(self) -> None:
        self.rtts: list[float] = []
        self.captured: list[bytes] = []
        self.captured_bytes = 0
        self.events = 0
        self.setups: list[float] = []
        self.done = 0
        self.peak_rss = 0

    def install(self) -> None:
        """Time every command's reply and keep the bytes received, without changing behaviour."""
        meter = self
        send, received = ESLConnection.send, ESLConnection.data_received

        async def timed_send(conn: ESLConnection, data: bytes, what: str = "command"):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            reply = await send(conn, data, what)
            meter.rtts.append(time.perf_counter() - t0)
            return reply

        def tapped(conn: ESLConnection, data: bytes) -> None:
            if meter.captured_bytes < CAPTURE_LIMIT:
                meter.captured.append(data)
                meter.captured_bytes += len(data)
            before = conn.events_received
            received(conn, data)
            meter.events += conn.events_received - before

        ESLConnection.send = timed_send  # type: ignore[method-assign]
        ESLConnection.data_received = tapped  # type: ignore[method-assign]


async def run(
    calls: int, agents: int, scale: float, ramp: float = 2.0, queue: QueueStep | None = None
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

    baseline = rss_bytes()
    server = OutboundServer(handler, port=0, drain_timeout=10)
    await server.start()
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.calls", "--simulate", str(server.port),
        "--calls", str(calls), "--agents", str(agents), "--scale", str(scale), "--ramp", str(ramp),
        cwd=ROOT, stdout=subprocess.PIPE,
    )  # fmt: skip
    concurrent_peak = 0
    while child.returncode is None:
        concurrent_peak = max(concurrent_peak, server.active_calls)
        meter.peak_rss = max(meter.peak_rss, rss_bytes())
        try:
            await asyncio.wait_for(child.wait(), 0.05)
        except TimeoutError:
            pass
    out = (await child.stdout.read()).decode() if child.stdout else ""
    wall = time.perf_counter() - started
    await server.stop()
    sim = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}

    data = b"".join(meter.captured)
    parse_eps, ceiling_eps, n_events = parser_ratio(data)
    rtts = sorted(meter.rtts)
    setup_span = (max(meter.setups) - min(meter.setups)) if len(meter.setups) > 1 else 0.0
    return {
        "calls": calls,
        "completed": meter.done,
        "concurrent_peak": concurrent_peak,
        "setups_per_s": len(meter.setups) / setup_span if setup_span else float("nan"),
        "rtt_p50_ms": 1000 * statistics.median(rtts) if rtts else float("nan"),
        "rtt_p99_ms": 1000 * rtts[int(len(rtts) * 0.99) - 1] if rtts else float("nan"),
        "commands": len(rtts),
        "events_per_s_run": meter.events / wall,
        "rss_peak_mb": meter.peak_rss / 2**20,
        "rss_per_call_kb": (meter.peak_rss - baseline) / max(concurrent_peak, 1) / 1024,
        "parser_events_per_s": parse_eps,
        "ceiling_events_per_s": ceiling_eps,
        "parser_ratio": parse_eps / ceiling_eps if ceiling_eps else float("nan"),
        "parsed_events": n_events,
        "sim": sim,
        "wall_s": wall,
    }


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


async def simulate(port: int, calls: int, agents: int, scale: float, ramp: float) -> None:
    from hotline.telephony.simulator import AgentPhone, CallerScript, FreeSwitchSimulator

    sim = FreeSwitchSimulator(
        socket_target=("127.0.0.1", port),
        time_scale=scale,
        agents=[AgentPhone(str(1000 + i), answer_after=1.0, talk_time=5.0) for i in range(agents)],
        linger_close_after=30,
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
    ap.add_argument("--simulate", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.simulate:
        asyncio.run(simulate(args.simulate, args.calls, args.agents, args.scale, args.ramp))
        return
    r = asyncio.run(run(args.calls, args.agents, args.scale, args.ramp))
    print(
        f"calls                 {r['completed']}/{r['calls']} completed, "
        f"{r['concurrent_peak']} concurrent at peak, hangups {r['sim'].get('causes')}"
    )
    print(f"call setups/s         {r['setups_per_s']:.0f}")
    print(
        f"ESL command RTT       p50 {r['rtt_p50_ms']:.2f} ms   p99 {r['rtt_p99_ms']:.2f} ms "
        f"({r['commands']} commands)"
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
    print("targets               " + ("met" if ok else "NOT met"))  # fmt: skip


if __name__ == "__main__":
    main()
