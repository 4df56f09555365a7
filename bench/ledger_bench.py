"""Wallet ledger payments/s and latency, straight against the ``Ledger`` API (no HTTP).

Run: ``.venv/bin/python -m bench.ledger_bench [--clients 32] [--seconds 5]
[--backends sqlite,postgres] [--direct] [--pg-socket /var/run/postgresql]``

``bench_payments(url, clients, seconds)`` runs each scenario on fresh accounts in the
database at ``url`` (tables created if missing) and returns a dict:

* ``spread``: every client pays from its own wallet into one of 8 merchants. Wallet
  rows see no contention; this is the ledger's own cost per payment.
* ``hot_merchant``: every client pays from its own wallet into *one* merchant, which
  every payment credits. Merchant accounts are buffered (their credits are pending
  rows, folded later by ``Ledger.settle``), so this should cost the same as ``spread``.
* ``hot_merchant_direct`` (``--direct``): the same with a merchant opened
  ``buffered=False``: each payment locks the merchant row until its commit's WAL
  flush -- the serialization the buffering avoids, shown for comparison.

Each scenario: 1 s of warm-up (not measured), then ``seconds`` of payments of 100 fen;
latency is per ``Ledger.pay`` call (pool wait included). After each run the books are
checked: merchant balance == payments x 100, and every wallet's balance equals its
entries; then the merchants are settled (``settle_ms``) and checked again. SQLite runs
with ``synchronous=FULL`` (as the service does), so every commit is an fsync;
PostgreSQL with the server's settings (``synchronous_commit=on``), over TCP to
127.0.0.1 unless ``--pg-socket`` is given.

Load generator and ledger share one process and one event loop, as the service would
run them; ``client_cpu_ms_per_payment`` is that process's CPU per payment, which says
more than payments/s when other work shares the machine (the 1-minute load average
after each backend's runs is reported with it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench.harness import drop_store, make_store
from citizen_card.ledger import Account, Ed25519Signer, InsufficientFunds, Ledger
from citizen_card.ledger_models import create_ledger_tables, entry_t

AMOUNT = 100
SEED = 5_000_000
WARMUP_S = 1.0
SCENARIOS = ("spread", "hot_merchant")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str, clients: int) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_size=clients, max_overflow=4)


def _pct(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return float("nan")
    i = min(len(sorted_ms) - 1, max(0, round(q * (len(sorted_ms) - 1))))
    return round(sorted_ms[i], 2)


async def _scenario(
    ledger: Ledger, name: str, clients: int, seconds: float, tag: str
) -> dict[str, Any]:
    wallets: list[Account] = []
    for c in range(clients):
        w = await ledger.open_account("wallet", f"w:bench-{tag}-{name}-{c}")
        await ledger.top_up(w, SEED, f"seed-{tag}-{name}-{c}")
        wallets.append(w)
    if name == "spread":
        merchants = [await ledger.open_account("merchant", f"m:bench-{tag}-{i}") for i in range(8)]
    elif name == "hot_merchant":
        merchants = [await ledger.open_account("merchant", f"m:bench-{tag}-hot")]
    elif name == "hot_merchant_direct":
        merchants = [
            await ledger.open_account("merchant", f"m:bench-{tag}-hot-direct", buffered=False)
        ]
    else:
        raise ValueError(f"unknown scenario {name}")

    latencies: list[float] = []
    failures = 0
    counter = 0

    async def client(c: int, until: float, record: bool) -> None:
        nonlocal failures, counter
        wallet = wallets[c]
        shop = merchants[c % len(merchants)]
        while time.perf_counter() < until:
            counter += 1
            key = f"{tag}-{name}-{c}-{counter}"
            t0 = time.perf_counter()
            try:
                await ledger.pay(wallet, shop, AMOUNT, key, partner_id="bench")
            except InsufficientFunds:
                failures += 1
                continue
            if record:
                latencies.append((time.perf_counter() - t0) * 1000)

    warm_until = time.perf_counter() + WARMUP_S
    await asyncio.gather(*(client(c, warm_until, False) for c in range(clients)))
    failures = 0
    start, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client(c, start + seconds, True) for c in range(clients)))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0

    # The books after the run: every payment landed once, on both sides.
    paid = 0
    async with ledger.engine.connect() as conn:
        for w in wallets:
            spent = SEED - await ledger.balance(w)
            paid += spent
            entries = (
                await conn.execute(
                    sa.select(sa.func.sum(entry_t.c.amount)).where(entry_t.c.account_id == w.id)
                )
            ).scalar()
            if entries != SEED - spent:
                raise RuntimeError(f"wallet {w.id}: balance != its entries")
    merchant_total = sum([await ledger.balance(m) for m in merchants])
    if merchant_total != paid:
        raise RuntimeError("merchants were not credited exactly what wallets paid")
    t0 = time.perf_counter()
    for m in merchants:  # fold the buffered credits, as a periodic settler would
        await ledger.settle(m)
    settle_ms = (time.perf_counter() - t0) * 1000
    if sum([await ledger.balance(m) for m in merchants]) != paid:
        raise RuntimeError("settling changed a merchant balance")
    ms = sorted(latencies)
    counted = len(ms) + failures
    return {
        "payments": len(ms),
        "seconds": round(elapsed, 2),
        "payments_per_s": round(len(ms) / elapsed, 1),
        "p50_ms": _pct(ms, 0.50),
        "p99_ms": _pct(ms, 0.99),
        "max_ms": round(ms[-1], 2) if ms else None,
        "insufficient_funds": failures,
        # CPU of this process (ledger + driver + load generator) per payment: less
        # sensitive than payments/s to whatever else the machine is running.
        "client_cpu_ms_per_payment": round(cpu * 1000 / max(1, counted), 3),
        "settle_ms": round(settle_ms, 1),
        "books_ok": True,
    }


async def bench_payments(
    url: str,
    clients: int = 32,
    seconds: float = 5,
    *,
    scenarios: tuple[str, ...] = SCENARIOS,
) -> dict[str, Any]:
    """Concurrent payments against the Ledger API on ``url``; payments/s and p50/p99 ms."""
    engine = make_engine(url, clients)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(create_ledger_tables)
        ledger = Ledger(engine, Ed25519Signer(key_id="bench-1"))
        tag = uuid.uuid4().hex[:8]
        runs = {}
        for name in scenarios:
            runs[name] = await _scenario(ledger, name, clients, seconds, tag)
        return {
            "backend": engine.dialect.name,
            "clients": clients,
            "amount_fen": AMOUNT,
            "cpus": os.cpu_count(),
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
            "runs": runs,
        }
    finally:
        await engine.dispose()


async def _main(args: argparse.Namespace) -> None:
    scenarios = SCENARIOS + (("hot_merchant_direct",) if args.direct else ())
    results = []
    for backend in args.backends.split(","):
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                url = f"sqlite+aiosqlite:///{Path(tmp) / 'ledger.db'}"
                results.append(
                    await bench_payments(url, args.clients, args.seconds, scenarios=scenarios)
                )
        elif backend == "postgres":
            store = await make_store("postgres", Path(), name="ledger")
            if store is None:
                continue
            url = target = store.url
            if args.pg_socket:  # same database, reached over the Unix socket
                parsed = sa.engine.make_url(url)
                target = parsed.set(host=None, port=None, query={"host": args.pg_socket})
                target = target.render_as_string(hide_password=False)
            try:
                results.append(
                    await bench_payments(target, args.clients, args.seconds, scenarios=scenarios)
                )
            finally:
                await drop_store(store)
        else:
            raise SystemExit(f"unknown backend {backend}")
    for res in results:
        for name, run in res["runs"].items():
            print(
                f"{res['backend']:<10} {name:<20} clients={res['clients']:<3} "
                f"{run['payments_per_s']:>8.1f} payments/s  p50={run['p50_ms']:.2f} ms  "
                f"p99={run['p99_ms']:.2f} ms  cpu/payment={run['client_cpu_ms_per_payment']:.2f} ms"
                f"  (n={run['payments']}, load {res['loadavg_1m_after']} on {res['cpus']} cpus)"
            )
    if args.json:
        print(json.dumps(results, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--direct", action="store_true", help="also an unbuffered hot merchant")
    parser.add_argument(
        "--pg-socket",
        metavar="DIR",
        help="reach PostgreSQL over its Unix socket in DIR (e.g. /var/run/postgresql)",
    )
    parser.add_argument("--json", action="store_true")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
