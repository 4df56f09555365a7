"""What the benchmarks share: server subprocesses, machine load readings, throw-away stores.

Each benchmark runs the thing measured and its ceiling as separate processes, so the
load generator never shares an event loop with either; this module is that plumbing.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
ADMIN_DSN = os.environ.get("HOTLINE_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A server subprocess (`python -m <MODULE> --serve...`), stopped by SIGTERM.

    Its output goes to `log`, so server warnings do not interleave with the report;
    `log_summary()` then says how many errors and warnings it logged, and which.
    """

    MODULE = "bench.intake"  # subclasses name the benchmark module that serves

    def __init__(self, args: list[str], log: Path) -> None:
        self.port = free_port()
        self.args = [*args, "--port", str(self.port)]
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def __aenter__(self) -> Self:
        with self.log.open("wb") as out:  # the child keeps its own copy of the descriptor
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", self.MODULE, *self.args, cwd=ROOT, stdout=out, stderr=out
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline and self.proc.returncode is None:
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with s.get(f"{self.base}/healthz") as r:
                        if r.status == 200:
                            return self
                await asyncio.sleep(0.1)
        await self.stop()
        tail = self.log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"server on port {self.port} did not become ready:\n{tail}")

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)

    def cpu_seconds(self) -> tuple[float, float] | None:
        """(whole process and its live child processes, event-loop thread) user+system
        CPU seconds, from /proc.

        The difference is what other threads and children used: on SQLite the ticket
        intake writes each batch in a child process of the service, and aiosqlite runs
        every other SQLite call in a worker thread of its own.
        """
        if self.proc is None:
            return None
        try:
            total = proc_cpu(Path(f"/proc/{self.proc.pid}/stat"))
            main = proc_cpu(Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/stat"))
        except (OSError, IndexError, ValueError):
            return None
        return total + children_cpu(self.proc.pid), main

    def log_summary(self) -> str:
        """`N errors, M warnings` in the server's log, with the commonest messages."""
        counts = {"ERROR": 0, "WARNING": 0}
        seen: dict[str, int] = {}
        for line in self.log.read_text(errors="replace").splitlines():
            parts = line.split(" ", 2)
            if len(parts) == 3 and parts[0] == "server" and parts[1] in counts:
                counts[parts[1]] += 1
                seen[line] = seen.get(line, 0) + 1
        text = f"{counts['ERROR']} errors, {counts['WARNING']} warnings"
        for line, n in sorted(seen.items(), key=lambda kv: -kv[1])[:4]:
            text += f"\n    {n} x {line[:160]}"
        return text


def proc_cpu(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu(pid: int) -> float:
    """CPU seconds of the live child processes of `pid` (a finished child's time is in
    the parent's cutime only once it has been waited for, so live ones are read here)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return total


def machine_busy() -> float | None:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_wait_s: float, below_cores: float = 0.5, window_s: float = 3.0) -> str:
    """Wait (at most `max_wait_s`) until the machine's busy cores over `window_s` fall
    below `below_cores`: on a machine shared with other work, measure in its lulls.
    Returns what was seen, for the report."""
    deadline = time.monotonic() + max_wait_s
    used = float("nan")
    while True:
        a, t0 = machine_busy(), time.monotonic()
        time.sleep(window_s)
        b, t1 = machine_busy(), time.monotonic()
        if a is None or b is None:
            return "machine load unknown"
        used = (b - a) / (t1 - t0)
        if used < below_cores:
            return f"quiet: {used:.2f} cores busy over {window_s:g} s (load {loadavg()})"
        if time.monotonic() >= deadline:
            return f"still busy after {max_wait_s:g} s: {used:.2f} cores (load {loadavg()})"


def quiet_collector() -> None:
    """Collect once, then freeze what this process holds, before the measurement.

    A load generator holds its prepared requests (tens of thousands of pre-signed
    bodies) and, for some benchmarks, the whole service it seeded: a full collection
    of that heap takes 100-200 ms. One that falls inside an open-loop phase holds
    back every answer in flight and then sends the requests due meanwhile as one
    burst, which the server is blamed for. Frozen objects are not scanned again;
    what the measurement itself allocates is still collected."""
    gc.collect()
    gc.freeze()


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# ---------------------------------------------------------------- databases


@dataclass
class Store:
    """A fresh database for one backend; `url` is what the service is given."""

    backend: str
    url: str
    pg_name: str | None = None


async def make_store(backend: str, workdir: Path, name: str = "hotline") -> Store | None:
    """SQLite: a file in `workdir`; PostgreSQL: a uniquely named database (None if the
    server is unreachable, so a run without PostgreSQL still reports SQLite)."""
    if backend == "sqlite":
        return Store("sqlite", f"sqlite+aiosqlite:///{workdir}/{name}.db")
    if backend != "postgres":
        raise SystemExit(f"unknown backend {backend!r} (sqlite, postgres)")
    import asyncpg

    db = f"{name}_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        conn = await asyncpg.connect(ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        print(f"postgres: unreachable at {ADMIN_DSN} ({exc}); skipping", flush=True)
        return None
    try:
        await conn.execute(f'CREATE DATABASE "{db}"')
    finally:
        await conn.close()
    url = ADMIN_DSN.rsplit("/", 1)[0] + f"/{db}"
    return Store("postgres", url.replace("postgresql://", "postgresql+asyncpg://", 1), db)


async def drop_store(store: Store) -> None:
    if store.pg_name is None:
        return
    import asyncpg

    conn = await asyncpg.connect(ADMIN_DSN, timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{store.pg_name}" WITH (FORCE)')
    finally:
        await conn.close()
