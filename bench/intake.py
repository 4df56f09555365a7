"""Ticket intake throughput and latency, against a bare-aiohttp ceiling measured in the same run.

Run: ``.venv/bin/python -m bench.intake [--clients 32] [--seconds 10] [--backends sqlite,postgres]``

Why it is built this way:

* **Separate processes.** The service and the load generator each run in their own
  process. On a 2-core machine a server sharing one event loop with 32 client tasks
  would measure the client as much as the server, and every client coroutine would
  add latency to the server's requests. The server (``--serve``) is a tiny entry that
  calls ``web.run_app(create_app(settings, watch_deadlines=False))``, the production
  path, on a loopback port, with PII keys set, log level WARNING and no access log.
* **Same-run baseline, interleaved.** Absolute requests/s depend on the machine, its
  other load and the client itself. So the same clients, body and duration also hit
  a bare aiohttp server (``--serve-ceiling``) whose handler only parses the JSON body
  and answers a constant JSON; ``intake / ceiling`` is what the service keeps of what
  HTTP + JSON + this client allow. All servers run at once and the load visits them
  in turn, in short slices, so a neighbour's test run slows the ceiling and the
  intake alike instead of whichever happened to run at the time. The CPU the rest of
  the machine used during each target's slices is reported ("other CPU"; for the
  postgres row it includes PostgreSQL's own processes), and the run warns when high.
* **Durability check.** Every 201 carries the ticket number in ``Location``. After the
  server has stopped, the numbers in the database are compared with the numbers
  acknowledged: an acknowledged ticket that is missing fails the check.
* **Bounded.** Client loops stop at slice deadlines, every request has a timeout,
  servers are stopped with SIGTERM (then killed), only 127.0.0.1 is used, and the
  temporary PostgreSQL database is dropped at the end.

"server CPU" is the service process with its threads and its child processes (on
SQLite the intake's writer is a child process); "(loop thread)" is the event loop alone.

``--profile`` runs each service process under cProfile (event-loop thread only: the
intake's SQLite writer process and aiosqlite's worker threads are invisible to it) and
times the intake writer's batches; profiled numbers are slower than real ones and only
show where the time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import math
import os
import pstats
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import (
    HOST,
    ROOT,
    ServerProcess,
    Store,
    drop_store,
    loadavg,
    machine_busy,
    make_store,
    wait_for_quiet,
)

PII_KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # 32 bytes, benchmark only
AGENT = "bench-agent"
PASSWORD = "bench-password-1"
PATH = "/api/v1/tickets"
REQUEST_TIMEOUT_S = 10.0
TARGET_SHARE = 0.40  # of the ceiling, SQLite, from the issue
TARGET_P99_MS = 50.0
OTHER_CPU_WARN = 0.25  # cores used by other processes that make a measurement suspect
SPREAD_WARN = 0.25  # ceiling slices that differ this much mean the machine was unsteady

# Realistic calls to a 12345 centre: Chinese text, a mobile number to normalise and
# encrypt, an address. Clients rotate through them; the ceiling gets the same bytes.
BODIES: list[dict[str, Any]] = [
    {
        "kind": "complaint",
        "title": "路灯不亮",
        "description": "幸福小区南门外人行道的路灯已经连续三个晚上不亮，老人晚上出门散步很不安全，"
        "希望有关部门尽快派人检修。",
        "channel": "phone",
        "category": "urban.street-lights",
        "contact": {"name": "王女士", "phone": "138 1234 5678"},
        "location": {
            "address": "东城区新华街道幸福小区南门",
            "district": "东城区",
            "lat": 39.9042,
            "lon": 116.4074,
        },
    },
    {
        "kind": "complaint",
        "title": "夜间施工噪音扰民",
        "description": "和平路与建设街交叉口的工地每天晚上十一点以后还在施工，噪音很大，"
        "附近居民无法休息，请求查处。",
        "channel": "wechat",
        "category": "urban.noise",
        "contact": {"name": "李先生", "phone": "+86 139 8765 4321"},
        "location": {"address": "西城区和平路与建设街交叉口", "district": "西城区"},
    },
    {
        "kind": "complaint",
        "title": "小区垃圾无人清运",
        "description": "南苑小区3号楼旁的垃圾桶已经满了两天，没有人来清运，气味很大，"
        "夏天容易滋生蚊蝇。",
        "channel": "app",
        "category": "urban.garbage",
        "contact": {"name": "张先生", "phone": "0755-12345678"},
        "location": {"address": "南湖区南苑街道南苑小区3号楼", "district": "南湖区"},
    },
]


# ---------------------------------------------------------------- server processes


def serve(db_url: str, port: int, workdir: Path, profile: Path | None, stats: Path | None) -> None:
    """The service exactly as production starts it, on the given database and port."""
    import logging

    from aiohttp import web

    from hotline import appkeys
    from hotline.app import create_app
    from hotline.settings import load_settings

    logging.basicConfig(level=logging.WARNING, format="server %(levelname)s %(name)s: %(message)s")
    settings = load_settings(
        database_url=db_url,
        pii_keys=PII_KEY,
        attachment_dir=workdir / "attachments",
        holiday_override_file=workdir / "no-holidays.yaml",
        log_level="WARNING",
        # no FreeSWITCH here: no reconnect loop, no listener port shared by instances
        esl_host="",
        esl_listen="127.0.0.1:0",
    )
    batch_times = _instrument_intake() if profile else None
    app = create_app(settings, migrate=False, watch_deadlines=False)
    intake = app[appkeys.INTAKE]
    # ticket.created is published by background tasks after each commit; if the bus is
    # slower than intake they pile up, so sample how many are outstanding.
    backlog = {"max": 0, "at_shutdown": 0}

    async def sample_backlog(app: web.Application) -> AsyncIterator[None]:
        async def sample() -> None:
            while True:
                backlog["max"] = max(backlog["max"], len(intake._publishing))
                await asyncio.sleep(0.05)

        task = asyncio.create_task(sample())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def on_shutdown(app: web.Application) -> None:
        backlog["at_shutdown"] = len(intake._publishing)

    async def write_stats(app: web.Application) -> None:
        if stats is None:
            return
        out: dict[str, Any] = {"batches": intake.batches, "publish_backlog": backlog}
        if batch_times is not None:
            out["batch_times"] = batch_times
        await asyncio.to_thread(stats.write_text, json.dumps(out))

    app.cleanup_ctx.append(sample_backlog)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(write_stats)
    profiler = cProfile.Profile() if profile else None
    if profiler:
        # The load visits each server in turn: profile only while this one is measured.
        async def toggle_on_signals(app: web.Application) -> None:
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGUSR1, profiler.enable)
            loop.add_signal_handler(signal.SIGUSR2, profiler.disable)

        app.on_startup.append(toggle_on_signals)
    try:
        web.run_app(app, host=HOST, port=port, print=None, access_log=None)
    finally:
        if profiler and profile:
            profiler.disable()
            profiler.dump_stats(str(profile))


def _instrument_intake() -> list[tuple[int, float]]:
    """Record (batch size, seconds in `Intake._commit`) per batch, without editing it."""
    from ticketing.intake import Intake

    times: list[tuple[int, float]] = []
    original = Intake._commit

    async def timed(self: Intake, batch: list[Any]) -> Any:
        start = time.perf_counter()
        try:
            return await original(self, batch)
        finally:
            times.append((len(batch), time.perf_counter() - start))

    Intake._commit = timed  # type: ignore[method-assign]
    return times


def serve_ceiling(port: int) -> None:
    """The most an aiohttp JSON endpoint can do here: read and parse the body, answer."""
    from aiohttp import web

    answer = b'{"status":"ok"}'

    async def create(request: web.Request) -> web.Response:
        data = await request.json()
        if not isinstance(data, dict):
            raise web.HTTPBadRequest()
        return web.Response(status=201, body=answer, content_type="application/json")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(body=answer, content_type="application/json")

    app = web.Application()
    app.add_routes([web.post(PATH, create), web.get("/healthz", healthz)])
    web.run_app(app, host=HOST, port=port, print=None, access_log=None)


# ---------------------------------------------------------------- databases


class Server(ServerProcess):
    MODULE = "bench.intake"


async def migrate_and_seed(store: Store, workdir: Path) -> None:
    """Schema, the packaged taxonomy and one agent, as `tests/conftest.py` seeds."""
    from hotline.auth import create_user
    from hotline.bootstrap import build_deps
    from hotline.migrate import upgrade_head_async
    from hotline.settings import load_settings
    from ticketing.catalog import seed_from_taxonomy
    from ticketing.lifecycle import Role
    from ticketing.taxonomy import load_taxonomy

    settings = load_settings(
        database_url=store.url,
        pii_keys=PII_KEY,
        attachment_dir=workdir / "attachments",
        holiday_override_file=workdir / "no-holidays.yaml",
    )
    await upgrade_head_async(store.url)
    deps = build_deps(settings)
    try:
        await seed_from_taxonomy(deps.db, load_taxonomy())
        await deps.catalog.reload(deps.db)
        await create_user(deps, AGENT, PASSWORD, Role.AGENT)
    finally:
        await deps.db.dispose()


async def stored_numbers(store: Store) -> set[str]:
    """Ticket numbers in the database, read directly (the service is stopped by then)."""
    if store.pg_name is None:
        path = store.url.split("///", 1)[1]
        with contextlib.closing(sqlite3.connect(path)) as conn:
            return {n for (n,) in conn.execute("SELECT number FROM ticket")}
    import asyncpg

    dsn = store.url.replace("postgresql+asyncpg://", "postgresql://", 1)
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return {r["number"] for r in await conn.fetch("SELECT number FROM ticket")}
    finally:
        await conn.close()


# ---------------------------------------------------------------- load


@dataclass
class Result:
    """What one target did in its measured slices (warm-up excluded, except `ok`)."""

    name: str
    seconds: float = 0.0  # measured time, summed over slices
    latencies: list[float] = field(default_factory=list)  # seconds
    slice_rates: list[float] = field(default_factory=list)
    ok: int = 0  # expected answers, warm-up included (for the durability check)
    errors: dict[str, int] = field(default_factory=dict)
    acknowledged: set[str] = field(default_factory=set)  # ticket numbers from Location
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds in measured slices

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        data = sorted(self.latencies)
        return data[min(len(data) - 1, round(q * (len(data) - 1)))] * 1000

    def cores(self, what: str) -> float | None:
        """Average cores used by `what` (server, loop, client, other) while measured."""
        return self.cpu[what] / self.seconds if what in self.cpu and self.seconds else None

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass
class Target:
    """A running server plus the client state that hits it."""

    result: Result
    server: Server
    session: aiohttp.ClientSession
    token: str | None = None  # None: the ceiling, which needs no sign-in
    store: Store | None = None
    stats_file: Path | None = None
    pstats_file: Path | None = None


async def login(base: str) -> str:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{base}/api/v1/auth/login", json={"username": AGENT, "password": PASSWORD}) as r,
    ):
        if r.status != 200:
            raise RuntimeError(f"login failed: {r.status} {await r.text()}")
        return str((await r.json())["token"])


BODY_BYTES = [json.dumps(b, ensure_ascii=False).encode() for b in BODIES]


async def run_slice(target: Target, clients: int, seconds: float, measure: bool) -> None:
    """`clients` tasks POST in a loop for `seconds`, then drain; answers are verified.

    Only answers completed inside the slice count toward rate and latency; requests
    still in flight at its end are awaited (and checked) but not timed, so slices
    never overlap.
    """
    result = target.result
    headers = {"Content-Type": "application/json"}
    if target.token:
        headers["Authorization"] = f"Bearer {target.token}"
    url = target.server.base + PATH
    latencies: list[float] = []
    end = time.monotonic() + seconds

    def error(kind: str) -> None:
        result.errors[kind] = result.errors.get(kind, 0) + 1

    async def client(i: int) -> None:
        n = i
        while (t0 := time.monotonic()) < end:
            body = BODY_BYTES[n % len(BODY_BYTES)]
            n += 1
            try:
                async with target.session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    status, location = r.status, r.headers.get("Location")
            except (aiohttp.ClientError, TimeoutError) as exc:
                error(type(exc).__name__)
                continue
            t1 = time.monotonic()
            if status != 201:
                error(f"HTTP {status}")
                continue
            result.ok += 1
            if target.token:
                if not location:
                    error("201 without Location")
                    continue
                result.acknowledged.add(location.rsplit("/", 1)[1])
            if t1 <= end:
                latencies.append(t1 - t0)

    profiling = measure and target.pstats_file is not None
    if profiling:
        target.server.signal(signal.SIGUSR1)  # start profiling (see `serve`)
    cpu0, own0, all0 = target.server.cpu_seconds(), time.process_time(), machine_busy()
    tasks = [asyncio.create_task(client(i)) for i in range(clients)]
    await asyncio.sleep(seconds)
    cpu1, own1, all1 = target.server.cpu_seconds(), time.process_time(), machine_busy()
    await asyncio.gather(*tasks)
    if profiling:
        target.server.signal(signal.SIGUSR2)
    if not measure:
        return
    result.seconds += seconds
    result.latencies += latencies
    result.slice_rates.append(len(latencies) / seconds)
    used = {"client": own1 - own0}
    if cpu0 is not None and cpu1 is not None:
        used["server"], used["loop"] = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
        if all0 is not None and all1 is not None:
            used["other"] = max(0.0, all1 - all0 - used["server"] - used["client"])
    for k, v in used.items():
        result.cpu[k] = result.cpu.get(k, 0.0) + v


# ---------------------------------------------------------------- report


@dataclass
class Durability:
    stored: int
    missing: int  # acknowledged but not in the database: the failure that matters
    extra: int  # in the database but never acknowledged (e.g. a client timeout)


def _pct_cores(x: float | None) -> str:
    return f"{x * 100:.0f}%" if x is not None else "?"


def _ms_per_request(r: Result) -> str:
    """Server CPU per answered request: what the service costs, less sensitive to noise."""
    server = r.cpu.get("server")
    return f"{server / len(r.latencies) * 1000:.2f}" if server and r.latencies else "?"


def _errors(r: Result) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(r.errors.items())) or "0"


def table(ceiling: Result, results: list[Result], clients: int) -> str:
    lines = [
        f"| {clients} clients | req/s | p50 ms | p99 ms | of ceiling | errors "
        "| server CPU (loop thread) | server CPU ms/req | client CPU | other CPU |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in [ceiling, *results]:
        share = "—" if r is ceiling else f"{r.rate / ceiling.rate:.0%}"
        label = "ceiling: bare aiohttp" if r is ceiling else f"intake {r.name}"
        lines.append(
            f"| {label} | {r.rate:,.0f} | {r.pct(0.5):.1f} | {r.pct(0.99):.1f} | {share} "
            f"| {_errors(r)} | {_pct_cores(r.cores('server'))} ({_pct_cores(r.cores('loop'))}) "
            f"| {_ms_per_request(r)} | {_pct_cores(r.cores('client'))} "
            f"| {_pct_cores(r.cores('other'))} |"
        )
    return "\n".join(lines)


def profile_summary(pstats_file: Path, stats: dict[str, Any]) -> str:
    buf = io.StringIO()
    times = stats.get("batch_times") or []
    if times:
        sizes = [t[0] for t in times]
        durs = sorted(t[1] for t in times)
        buf.write(
            f"intake batches: {len(times)}, mean size {sum(sizes) / len(sizes):.1f}, "
            f"commit p50 {durs[len(durs) // 2] * 1000:.1f} ms, "
            f"p99 {durs[int(0.99 * (len(durs) - 1))] * 1000:.1f} ms, "
            f"{sum(durs):.2f} s in commits in all\n"
        )
    if pstats_file.exists():
        st = pstats.Stats(str(pstats_file), stream=buf)
        buf.write("own time by package (event-loop thread; 'idle' is epoll waiting):\n")
        by_package = _time_by_package(st)
        total = sum(by_package.values())
        for name, t in sorted(by_package.items(), key=lambda kv: -kv[1])[:15]:
            buf.write(f"  {t:7.2f} s {t / total:6.1%}  {name}\n")
        st.sort_stats("tottime").print_stats(25)
    return buf.getvalue()


def _time_by_package(st: pstats.Stats) -> dict[str, float]:
    """Own (not cumulative) time summed per third-party package, project package or stdlib."""
    out: dict[str, float] = {}
    for (file, _line, func), row in st.stats.items():  # type: ignore[attr-defined]
        tottime = row[2]
        if func == "<method 'poll' of 'select.epoll' objects>":
            name = "idle (epoll)"
        elif file == "~":
            name = "builtins " + func
        elif "site-packages/" in file:
            name = file.split("site-packages/", 1)[1].split("/", 1)[0]
        elif file.startswith(str(ROOT)):
            name = "project " + Path(file).relative_to(ROOT).parts[0]
        else:
            name = "stdlib " + Path(file).parent.name
        out[name] = out.get(name, 0.0) + tottime
    return out


# ---------------------------------------------------------------- driver


async def start_backend(
    stack: contextlib.AsyncExitStack, backend: str, args: argparse.Namespace, workdir: Path
) -> Target | None:
    bdir = workdir / backend
    bdir.mkdir()
    store = await make_store(backend, bdir)
    if store is None:
        return None
    stack.push_async_callback(drop_store, store)
    await migrate_and_seed(store, bdir)
    stats_file, pstats_file = bdir / "server-stats.json", bdir / "server.pstats"
    cmd = ["--serve", "--db", store.url, "--workdir", str(bdir), "--stats", str(stats_file)]
    if args.profile:
        cmd += ["--profile-out", str(pstats_file)]
    server = await stack.enter_async_context(Server(cmd, bdir / "server.log"))
    session = await stack.enter_async_context(_client_session(args.clients))
    token = await login(server.base)
    return Target(
        Result(backend),
        server,
        session,
        token,
        store,
        stats_file,
        pstats_file if args.profile else None,
    )


def _client_session(clients: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=clients),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
    )


async def bench(args: argparse.Namespace) -> int:
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in backends:
        if b not in ("sqlite", "postgres"):
            raise SystemExit(f"unknown backend {b!r} (sqlite, postgres)")
    rounds = max(1, math.ceil(args.seconds / args.slice))
    slice_s = args.seconds / rounds
    python = sys.version.split()[0]
    print(
        f"{args.clients} clients; per target {args.warmup:g}s warm-up, then {args.seconds:g}s "
        f"measured as {rounds} slices of {slice_s:g}s taken in turn; {os.cpu_count()} CPUs, "
        f"Python {python}, load average {loadavg()}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="hotline-bench-") as tmp:
        workdir = Path(tmp)
        async with contextlib.AsyncExitStack() as stack:
            cserver = await stack.enter_async_context(
                Server(["--serve-ceiling"], workdir / "ceiling.log")
            )
            csession = await stack.enter_async_context(_client_session(args.clients))
            ceiling = Target(Result("ceiling"), cserver, csession)
            services = [
                t
                for b in backends
                if (t := await start_backend(stack, b, args, workdir)) is not None
            ]
            targets = [ceiling, *services]
            for t in targets:
                await run_slice(t, args.clients, args.warmup, measure=False)
            for i in range(rounds):
                for t in targets[i % len(targets) :] + targets[: i % len(targets)]:
                    await run_slice(t, args.clients, slice_s, measure=True)
            # stop the services (graceful: in-flight work finishes) before counting
            durability: dict[str, Durability] = {}
            stats: dict[str, dict[str, Any]] = {}
            for t in services:
                assert t.store and t.stats_file
                await t.server.stop()
                stored = await stored_numbers(t.store)
                durability[t.result.name] = Durability(
                    len(stored),
                    len(t.result.acknowledged - stored),
                    len(stored - t.result.acknowledged),
                )
                st = t.stats_file
                stats[t.result.name] = json.loads(st.read_text()) if st.exists() else {}
            await cserver.stop()
            logs = {t.result.name: t.server.log_summary() for t in targets}
            profiles = {
                t.result.name: profile_summary(t.pstats_file, stats[t.result.name])
                for t in services
                if t.pstats_file
            }
    return report(
        args, ceiling.result, [t.result for t in services], durability, stats, logs, profiles
    )


def report(
    args: argparse.Namespace,
    ceiling: Result,
    results: list[Result],
    durability: dict[str, Durability],
    stats: dict[str, dict[str, Any]],
    logs: dict[str, str],
    profiles: dict[str, str],
) -> int:
    """Print the table and the checks; the exit status is 1 on any error or lost ticket."""
    print()
    print(table(ceiling, results, args.clients))
    print()
    rates = ceiling.slice_rates
    spread = (max(rates) - min(rates)) / max(rates) if rates and max(rates) else 0.0
    print(f"ceiling slices: {', '.join(f'{r:,.0f}' for r in rates)} req/s (spread {spread:.0%})")
    print(f"load average at the end: {loadavg()}")
    lost = False
    for r in results:
        d = durability[r.name]
        ok = d.missing == 0 and d.stored == r.ok
        lost = lost or not ok
        print(
            f"durability {r.name}: {r.ok} acknowledged (201), {d.stored} in the database, "
            f"{d.missing} acknowledged but missing, {d.extra} stored but not acknowledged "
            f"-> {'OK' if ok else 'FAILED'}"
        )
    for r in results:
        st = stats.get(r.name, {})
        if st.get("batches"):
            backlog = st.get("publish_backlog", {})
            print(
                f"server {r.name}: {st['batches']} intake batches, "
                f"{r.ok / st['batches']:.1f} tickets/batch; ticket.created publish tasks "
                f"outstanding: max {backlog.get('max', '?')}, "
                f"{backlog.get('at_shutdown', '?')} at shutdown"
            )
    for name, log in logs.items():
        print(f"server log {name}: {log}")
    busy = [
        f"{r.name} {r.cores('other'):.2f}"
        for r in [ceiling, *results]
        if (r.cores("other") or 0.0) > OTHER_CPU_WARN
    ]
    if busy or spread > SPREAD_WARN:
        print(
            "WARNING: other work on the machine during the run (cores used by others: "
            + (", ".join(busy) or "-")
            + f"; ceiling spread {spread:.0%}); absolute numbers and p99 are disturbed, "
            "the interleaved ratio less so"
        )
    for r in results:
        if r.name != "sqlite":
            continue
        share, p99 = r.rate / ceiling.rate, r.pct(0.99)
        met = share >= TARGET_SHARE and p99 < TARGET_P99_MS and r.error_count == 0
        print(
            f"target (SQLite, {args.clients} clients: >= {TARGET_SHARE:.0%} of ceiling, "
            f"p99 < {TARGET_P99_MS:g} ms): {share:.0%} of ceiling, p99 {p99:.1f} ms "
            f"-> {'MET' if met else 'NOT MET'}"
        )
    for name, text in profiles.items():
        print(f"\n===== profile of the {name} service process =====")
        print(text)
    errors = ceiling.error_count + sum(r.error_count for r in results)
    return 1 if lost or errors else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.intake", description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=32, help="concurrent client tasks (32)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured time per target (10)")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up per target (2)")
    p.add_argument("--slice", type=float, default=2.5, help="length of one turn (2.5)")
    p.add_argument("--backends", default="sqlite,postgres", help="comma-separated (both)")
    p.add_argument("--profile", action="store_true", help="cProfile the service processes")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="first wait up to S seconds for a lull in the machine's other work (0: no)",
    )
    # internal: the server processes
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--serve-ceiling", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--db", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--stats", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--profile-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        if not (args.db and args.port and args.workdir):
            p.error("--serve needs --db, --port and --workdir")
        serve(args.db, args.port, args.workdir, args.profile_out, args.stats)
        return 0
    if args.serve_ceiling:
        if not args.port:
            p.error("--serve-ceiling needs --port")
        serve_ceiling(args.port)
        return 0
    if args.clients < 1 or args.seconds <= 0 or args.warmup < 0 or args.slice <= 0:
        p.error("--clients >= 1, --seconds > 0, --warmup >= 0, --slice > 0")
    if args.wait_quiet > 0:
        print(wait_for_quiet(args.wait_quiet), flush=True)
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
