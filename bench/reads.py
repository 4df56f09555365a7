"""Staff and Open311 read endpoints on SQLite, against a bare-handler ceiling in the same run.

Run: ``.venv/bin/python -m bench.reads [--clients 32] [--seconds 6] [--tickets 300]``

What a night-shift console and an Open311 client read most: a page of the ticket
list, the agent's work queue, the public request list. The service runs in its own
process (``bench.intake``'s production entry, SQLite file, PII keys set), seeded with
``--tickets`` tickets through its own API. Two service processes share that file:

* ``one-hop``: the service as shipped (``ticketing/sqlite_driver.py``: one aiosqlite
  thread hop per statement);
* ``stock``: the same service with SQLAlchemy's stock aiosqlite adapter (a hop per
  cursor step and one for every ROLLBACK), the before of that change.

The ceiling is a bare aiohttp handler answering a constant JSON (``bench.intake``'s
ceiling server, ``GET /healthz``). The load visits ceiling, one-hop and stock in turn in
short slices, per endpoint, so the machine's other work slows all three alike. Printed
per endpoint: requests/s, p50/p99, share of the ceiling, and server CPU per request
(whole process: event loop plus aiosqlite's threads).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.harness import HOST, ServerProcess, loadavg, make_store, proc_cpu, quiet_collector
from bench.intake import AGENT, BODY_BYTES, PASSWORD, PATH, migrate_and_seed

ENDPOINTS = (
    ("GET /api/v1/tickets?limit=20", "/api/v1/tickets?limit=20", True),
    ("GET /api/v1/queue", "/api/v1/queue", True),
    ("GET /open311/v2/requests.json", "/open311/v2/requests.json", False),
)


class Server(ServerProcess):
    MODULE = "bench.reads"


def serve(db_url: str, port: int, workdir: Path, stock: bool) -> None:
    if stock:
        import sqlite3

        import aiosqlite
        from sqlalchemy.dialects.sqlite.aiosqlite import AsyncAdapt_aiosqlite_dbapi

        import ticketing.sqlite_driver as driver

        driver.dbapi = lambda: AsyncAdapt_aiosqlite_dbapi(aiosqlite, sqlite3)  # type: ignore[assignment,return-value]
    from bench.intake import serve as serve_service

    serve_service(db_url, port, workdir, None, None)


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0
    cpu: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000 if xs else float("nan")


async def run_slice(
    s: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    clients: int,
    seconds: float,
    r: Result | None,
    pid: int | None,
) -> None:
    deadline = time.monotonic() + seconds
    stat = Path(f"/proc/{pid}/stat") if pid else None
    cpu0 = proc_cpu(stat) if stat else 0.0

    async def client() -> None:
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                async with s.get(url, headers=headers) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if r is None:
                continue
            if ok:
                r.latencies.append(time.perf_counter() - t0)
            else:
                r.errors += 1

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    if r is not None:
        r.seconds += time.monotonic() - started
        if stat:
            r.cpu += proc_cpu(stat) - cpu0


async def seed(base: str, n: int) -> str:
    async with aiohttp.ClientSession() as s:
        async with s.post(
            f"{base}/api/v1/auth/login", json={"username": AGENT, "password": PASSWORD}
        ) as r:
            token = str((await r.json())["token"])
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with sem, s.post(base + PATH, data=BODY_BYTES[i % 3], headers=headers) as r:
                if r.status != 201:
                    raise RuntimeError(f"seeding failed: {r.status} {await r.text()}")

        await asyncio.gather(*(one(i) for i in range(n)))
    return token


async def bench(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="bench-reads-"))
    store = await make_store("sqlite", workdir)
    assert store is not None
    await migrate_and_seed(store, workdir)
    common = ["--db", store.url, "--workdir", str(workdir)]
    one_hop = Server(["--serve", *common], workdir / "one-hop.log")
    stock = Server(["--serve", "--stock", *common], workdir / "stock.log")
    from bench.intake import Server as IntakeServer

    ceiling = IntakeServer(["--serve-ceiling"], workdir / "ceiling.log")
    print(
        f"bench.reads: {args.clients} clients, {args.seconds:g} s per target and endpoint, "
        f"{args.tickets} tickets, SQLite, load {loadavg()}"
    )
    print("| endpoint | server | req/s | p50 ms | p99 ms | of ceiling | CPU ms/req | errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    async with ceiling, one_hop, stock:
        token = await seed(one_hop.base, args.tickets)
        auth = {"Authorization": f"Bearer {token}"}
        timeout = aiohttp.ClientTimeout(total=10)
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn, timeout=timeout) as s:
            quiet_collector()
            for label, path, staff in ENDPOINTS:
                headers = auth if staff else {}
                targets = [
                    ("ceiling", f"http://{HOST}:{ceiling.port}/healthz", {}, ceiling),
                    ("one-hop", one_hop.base + path, headers, one_hop),
                    ("stock", stock.base + path, headers, stock),
                ]
                results = {name: Result() for name, *_ in targets}
                for _, url, h, _srv in targets:  # warm-up, not measured
                    await run_slice(s, url, h, args.clients, 0.5, None, None)
                slices = max(2, int(args.seconds // args.slice))
                for _ in range(slices):
                    for name, url, h, srv in targets:
                        pid = srv.proc.pid if srv.proc else None
                        await run_slice(
                            s, url, h, args.clients, args.seconds / slices, results[name], pid
                        )
                ceil = results["ceiling"].rate
                for name, *_ in targets:
                    r = results[name]
                    n = len(r.latencies) + r.errors
                    share = "—" if name == "ceiling" else f"{r.rate / ceil:.1%}" if ceil else "?"
                    cpu = f"{r.cpu / n * 1000:.2f}" if n else "—"
                    print(
                        f"| {label} | {name} | {r.rate:,.0f} | {r.pct(0.5):.1f} | "
                        f"{r.pct(0.99):.1f} | {share} | {cpu} | {r.errors} |",
                        flush=True,
                    )
    for srv in (one_hop, stock):
        print(f"{srv.log.stem} log: {srv.log_summary()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.reads", description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=6.0, help="measured time per target")
    p.add_argument("--slice", type=float, default=1.5)
    p.add_argument("--tickets", type=int, default=300)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--stock", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--db", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.db, args.port, args.workdir, args.stock)
        return 0
    return asyncio.run(bench(args))


if __name__ == "__main__":
    raise SystemExit(main())
