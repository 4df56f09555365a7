"""One-row SQLAlchemy write transactions on SQLite, with and without the pool's reset.

Run: ``.venv/bin/python -m bench.sqlite_writes [--n 2000] [--rounds 3]``

Why: ``ticketing.store.Database`` turns the pool's rollback-on-return off for SQLite
(every checkout ends its own transaction). This measures what that saves per write
transaction (``engine.begin()`` + one INSERT + COMMIT, WAL, synchronous=FULL as the
service runs it): wall and CPU time, the reset variant as the baseline measured in the
same run, rounds alternating so that other work on the machine hits both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from ticketing.store import sqlite_pragmas


async def one_round(reset: bool, n: int) -> tuple[float, float]:
    """(wall µs, CPU µs) per write transaction."""
    with tempfile.TemporaryDirectory() as d:
        kwargs = {} if reset else {"pool_reset_on_return": None}
        engine = create_async_engine(f"sqlite+aiosqlite:///{Path(d) / 'w.db'}", **kwargs)
        sa.event.listen(engine.sync_engine, "connect", sqlite_pragmas)
        async with engine.begin() as conn:
            await conn.execute(sa.text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
        insert = sa.text("INSERT INTO t (v) VALUES ('x')")
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            async with engine.begin() as conn:
                await conn.execute(insert)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        await engine.dispose()
    return wall / n * 1e6, cpu / n * 1e6


async def bench(n: int, rounds: int) -> None:
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for _ in range(rounds):
        for reset in (True, False):
            results[reset].append(await one_round(reset, n))
    print(f"{n} one-row write transactions per round, {rounds} rounds each, SQLite WAL")
    print("| pool reset on return | wall µs/tx (best) | CPU µs/tx (best) |")
    print("|---|---:|---:|")
    best = {}
    for reset in (True, False):
        wall = min(w for w, _ in results[reset])
        cpu = min(c for _, c in results[reset])
        best[reset] = (wall, cpu)
        label = "rollback (SQLAlchemy default)" if reset else "none (the service)"
        print(f"| {label} | {wall:,.0f} | {cpu:,.0f} |")
    print(
        f"ratio none/rollback: wall {best[False][0] / best[True][0]:.2f}, "
        f"CPU {best[False][1] / best[True][1]:.2f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    asyncio.run(bench(args.n, args.rounds))


if __name__ == "__main__":
    main()
