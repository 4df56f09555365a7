"""Console fan-out: 500 agents' websockets, a burst of 1,000 queue events.

What it measures: the time from an event being published on the service's bus (the
console feed stamps each queue event with the moment its subscriber got the bus
event) to the moment the LAST of the 500 agent sockets has received it, for every
one of 1,000 events; p50 and p99 over the events. The events are real: 1,000
tickets created through the API by 32 concurrent clients, each one a ticket.created
on the bus, a work-queue row re-read by the feed and pushed to every agent.

The ceiling, measured in the same run: a bare aiohttp server with the same shape
(the same POSTs, the same 500 sockets, the same batching and one shared JSON
encoding per batch) but no database, no authentication and no intake. The ratio
says how much of the achievable fan-out speed the console keeps.

Memory: the server's resident set before the sockets connect, with 500 sockets,
and after the burst (VmRSS from /proc).

The arrival stamps are taken in this process, so its own pauses count as latency:
before each measurement it collects and freezes its heap (seeding imported the whole
service here; a full collection of that took 100-200 ms), and the last column is its
longest collector pause during the burst, to tell a late batch of its own apart.

    .venv/bin/python -m bench.console                 # sqlite, 500 clients, 1,000 events
    .venv/bin/python -m bench.console --backends sqlite,postgres
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import json
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import (
    HOST,
    ServerProcess,
    drop_store,
    loadavg,
    make_store,
    quiet_collector,
)

PII_KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # bench only
PASSWORD = "bench-password-1"
TARGET_P99_MS = 200.0


class Server(ServerProcess):
    MODULE = "bench.console"


# ---------------------------------------------------------------- server processes


def serve(db_url: str, port: int, workdir: Path) -> None:
    """The service as production starts it (no deadline watcher: it would add events)."""
    import logging

    from aiohttp import web

    from hotline.app import create_app
    from hotline.settings import load_settings

    logging.basicConfig(level=logging.WARNING, format="server %(levelname)s %(name)s: %(message)s")
    settings = load_settings(
        database_url=db_url,
        pii_keys=PII_KEY,
        attachment_dir=workdir / "attachments",
        holiday_override_file=workdir / "no-holidays.yaml",
        card_keyring_file=workdir / "keyring.json",
        card_service_key_file=workdir / "service.pem",
        log_level="WARNING",
        esl_host="",  # no switch: the bench is about the console
    )
    app = create_app(settings, migrate=False, watch_deadlines=False)
    web.run_app(app, host=HOST, port=port, print=None, access_log=None)


def serve_ceiling(port: int) -> None:
    """Same POSTs, same sockets, same batching, the same one frame written to every
    socket's transport (as the console does); nothing else."""
    from aiohttp import web

    sockets: dict[web.WebSocketResponse, asyncio.Transport] = {}
    pending: list[dict[str, Any]] = []
    wake = asyncio.Event()
    seq = 0

    async def broadcaster() -> None:
        nonlocal seq
        while True:
            await wake.wait()
            wake.clear()
            batch, pending[:] = list(pending), []
            events = []
            for item in batch:
                seq += 1
                events.append(
                    {"seq": seq, "op": "upsert", "key": item["key"], "item": item, "at": item["at"]}
                )
            text = json.dumps({"type": "events", "events": events}, ensure_ascii=False)
            payload = text.encode()  # one unmasked final text frame (RFC 6455 5.2)
            n = len(payload)
            if n < 126:
                frame = bytes([0x81, n]) + payload
            elif n < 65536:
                frame = bytes([0x81, 126]) + n.to_bytes(2) + payload
            else:
                frame = bytes([0x81, 127]) + n.to_bytes(8) + payload
            for transport in list(sockets.values()):
                if not transport.is_closing():
                    transport.write(frame)

    async def create(request: web.Request) -> web.Response:
        body = await request.json()
        n = secrets.token_hex(6)
        pending.append(
            {
                "key": f"ticket:{n}",
                "ref": n,
                "title": body.get("title"),
                "audience": "agents",
                "action": "dispatch",
                "priority": 2,
                "at": time.time(),
            }
        )
        wake.set()
        return web.json_response({"number": n}, status=201)

    async def socket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        await ws.send_str(json.dumps({"type": "snapshot", "seq": seq, "items": []}))
        assert request.transport is not None
        sockets[ws] = request.transport
        try:
            async for _ in ws:
                pass
        finally:
            sockets.pop(ws, None)
        return ws

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def run_broadcaster(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(broadcaster())
        yield
        task.cancel()

    async def close_sockets(app: web.Application) -> None:
        for ws in list(sockets):
            await ws.close()

    app = web.Application()
    app.router.add_post("/api/v1/tickets", create)
    app.router.add_get("/api/v1/console/ws", socket)
    app.router.add_get("/healthz", healthz)
    app.cleanup_ctx.append(run_broadcaster)
    app.on_shutdown.append(close_sockets)
    web.run_app(app, host=HOST, port=port, print=None, access_log=None)


async def migrate_and_seed(url: str, workdir: Path, agents: int) -> list[str]:
    """Schema, taxonomy, `agents` agent accounts each with a live session (the tokens)."""
    import sqlalchemy as sa

    from hotline.auth import create_user, hash_password, session_t, token_hash, user_t
    from hotline.bootstrap import build_deps
    from hotline.migrate import upgrade_head_async
    from hotline.settings import load_settings
    from ticketing.catalog import seed_from_taxonomy
    from ticketing.lifecycle import Role
    from ticketing.models import utcnow
    from ticketing.taxonomy import load_taxonomy

    settings = load_settings(
        database_url=url,
        pii_keys=PII_KEY,
        attachment_dir=workdir / "attachments",
        holiday_override_file=workdir / "no-holidays.yaml",
        card_keyring_file=workdir / "keyring.json",
        card_service_key_file=workdir / "service.pem",
    )
    await upgrade_head_async(url)
    deps = build_deps(settings)
    tokens = [secrets.token_urlsafe(32) for _ in range(agents)]
    try:
        await seed_from_taxonomy(deps.db, load_taxonomy())
        await deps.catalog.reload(deps.db)
        pw = await hash_password(PASSWORD)
        for i in range(agents):
            await create_user(deps, f"agent{i:04d}", PASSWORD, Role.AGENT, password_hash=pw)
        now = utcnow()
        async with deps.db.write() as conn:
            ids = dict((await conn.execute(sa.select(user_t.c.username, user_t.c.id))).all())
            await conn.execute(
                sa.insert(session_t),
                [
                    {
                        "token_hash": token_hash(tok),
                        "user_id": ids[f"agent{i:04d}"],
                        "created_at": now,
                        "expires_at": now + timedelta(hours=2),
                    }
                    for i, tok in enumerate(tokens)
                ],
            )
    finally:
        await deps.db.dispose()
    return tokens


# ---------------------------------------------------------------- the load


class Client(asyncio.Protocol):
    """One agent's socket, read as raw bytes: each chunk is stamped as it arrives and
    the websocket frames are parsed only after the burst. 500 aiohttp clients with a
    reader task each would make the load generator, not the server, the bottleneck
    (one process reads what 500 browsers would); this keeps its cost per socket to
    one callback per chunk."""

    def __init__(self, expect: int) -> None:
        self.expect = expect  # "seq" fields to see: the snapshot's and one per event
        self.chunks: list[tuple[float, bytes]] = []
        self.head = b""
        self.seen = 0
        self.tail = b""
        self.upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.all_in = asyncio.Event()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if not self.upgraded.done():
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, data = self.head.split(b"\r\n\r\n", 1)
            if not head.startswith(b"HTTP/1.1 101"):
                self.upgraded.set_exception(RuntimeError(head.decode(errors="replace")))
                return
            self.upgraded.set_result(None)
        if not data:
            return
        self.chunks.append((now, data))
        self.seen += (self.tail + data).count(b'"seq":')  # a marker split across chunks
        self.tail = data[-5:]  # counts once: the tail is too short to hold a whole one
        if self.seen >= self.expect:
            self.all_in.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed before the upgrade"))
        self.all_in.set()

    @property
    def events(self) -> int:
        return max(0, self.seen - 1)

    def frames(self) -> list[tuple[float, str]]:
        """(arrival of its last byte, text) for every text frame (RFC 6455, unmasked)."""
        out: list[tuple[float, str]] = []
        buf = b""
        for at, data in self.chunks:
            buf += data
            while len(buf) >= 2:
                opcode, n, pos = buf[0] & 0x0F, buf[1] & 0x7F, 2
                if n == 126:
                    if len(buf) < 4:
                        break
                    n, pos = int.from_bytes(buf[2:4]), 4
                elif n == 127:
                    if len(buf) < 10:
                        break
                    n, pos = int.from_bytes(buf[2:10]), 10
                if len(buf) < pos + n:
                    break
                if opcode == 0x1:
                    out.append((at, buf[pos : pos + n].decode()))
                buf = buf[pos + n :]
        return out

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect_all(base: str, tokens: list[str], expect: int) -> list[Client]:
    host, port = base.removeprefix("http://").split(":")
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(50)

    async def one(tok: str) -> Client:
        async with sem:
            _, client = await loop.create_connection(lambda: Client(expect + 1), host, int(port))
            assert client.transport is not None
            key = base64.b64encode(secrets.token_bytes(16)).decode()
            client.transport.write(
                (
                    f"GET /api/v1/console/ws HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                    f"Authorization: Bearer {tok}\r\n\r\n"
                ).encode()
            )
            await client.upgraded
            return client

    return list(await asyncio.gather(*(one(t) for t in tokens)))


async def burst(session: aiohttp.ClientSession, base: str, token: str, n: int) -> float:
    """n tickets through the API by 32 concurrent clients; returns the seconds taken."""
    sem = asyncio.Semaphore(32)
    headers = {"Authorization": f"Bearer {token}"}

    async def one(i: int) -> None:
        async with sem:
            body = {
                "kind": "complaint",
                "title": f"路灯不亮 {i}",
                "channel": "phone",
                "description": "幸福小区南门路灯不亮",
                "category": "urban.street-lights",
            }
            async with session.post(base + "/api/v1/tickets", json=body, headers=headers) as r:
                if r.status != 201:
                    raise RuntimeError(f"ticket {i}: HTTP {r.status} {await r.text()}")

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - t0


def fanout_ms(clients: list[Client]) -> list[float]:
    """Per event: received by the last client minus published."""
    last: dict[str, float] = {}
    published: dict[str, float] = {}
    for c in clients:
        for at, text in c.frames():
            for ev in json.loads(text).get("events", []):
                key = ev["key"]
                published[key] = ev["at"]
                last[key] = max(last.get(key, 0.0), at)
    return sorted((last[k] - published[k]) * 1000 for k in last)


class GcPauses:
    """The load generator's own garbage-collector pauses while it is active.

    The sockets' arrival stamps are taken in this process: while its collector runs,
    data waits in the kernel and is stamped late, as if the server had been slow. The
    longest pause is printed beside the result so a late batch can be told apart."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append((time.perf_counter() - self._started) * 1000)

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    @property
    def longest(self) -> float:
        return max(self.pauses, default=0.0)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Result:
    name: str
    p50: float
    p99: float
    worst: float
    events: int
    burst_s: float
    rss: tuple[float, float, float]
    gen_gc_ms: float  # the load generator's longest collector pause during the burst


async def measure(
    name: str, server: Server, tokens: list[str], events: int, session: aiohttp.ClientSession
) -> Result:
    assert server.proc is not None
    pid = server.proc.pid
    rss0 = rss_mib(pid)
    quiet_collector()
    clients = await connect_all(server.base, tokens, events)
    await asyncio.sleep(0.5)
    rss1 = rss_mib(pid)
    with GcPauses() as pauses:
        burst_s = await burst(session, server.base, tokens[0], events)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(120):
                for c in clients:
                    await c.all_in.wait()
    rss2 = rss_mib(pid)
    for c in clients:
        c.close()
    lat = fanout_ms(clients)
    got = min(c.events for c in clients)
    if got < events:
        print(f"{name}: only {got} of {events} events reached every client", file=sys.stderr)
    return Result(
        name,
        statistics.median(lat),
        lat[max(0, int(len(lat) * 0.99) - 1)],
        lat[-1],
        len(lat),
        burst_s,
        (rss0, rss1, rss2),
        pauses.longest,
    )


async def bench(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="bench-console-"))
    results: list[Result] = []
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        async with Server(["--serve-ceiling"], workdir / "ceiling.log") as ceiling:
            fake = [f"t{i}" for i in range(args.clients)]
            results.append(await measure("ceiling", ceiling, fake, args.events, session))
        for backend in args.backends.split(","):
            store = await make_store(backend, workdir, "console")
            if store is None:
                continue
            try:
                bdir = workdir / backend
                bdir.mkdir()
                tokens = await migrate_and_seed(store.url, bdir, args.clients)
                cmd = ["--serve", "--db", store.url, "--workdir", str(bdir)]
                async with Server(cmd, workdir / f"{backend}.log") as server:
                    results.append(await measure(backend, server, tokens, args.events, session))
                    summary = server.log_summary()
                print(f"{backend} server log: {summary}")
            finally:
                await drop_store(store)
    ceiling_p99 = results[0].p99
    print(
        f"\n{args.clients} agent sockets, burst of {args.events} queue events "
        f"(load average {loadavg()})"
    )
    print(
        "| server | fan-out p50 ms | p99 ms | max ms | p99 vs ceiling | burst s "
        "| RSS MiB idle / 500 sockets / after | load generator GC max ms |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    ok = True
    for r in results:
        ratio = ceiling_p99 / r.p99 if r.p99 else float("nan")
        print(
            f"| {r.name} | {r.p50:.1f} | {r.p99:.1f} | {r.worst:.1f} | {ratio:.0%} | "
            f"{r.burst_s:.2f} | {r.rss[0]:.0f} / {r.rss[1]:.0f} / {r.rss[2]:.0f} "
            f"| {r.gen_gc_ms:.1f} |"
        )
        if r.name != "ceiling":
            ok &= r.p99 < TARGET_P99_MS
            per = (r.rss[1] - r.rss[0]) * 1024 / args.clients
            print(
                f"    {r.name}: {per:.0f} KiB per socket; target p99 < {TARGET_P99_MS:.0f} ms: "
                f"{'met' if r.p99 < TARGET_P99_MS else 'MISSED'}"
            )
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=500, help="agent websockets (default 500)")
    p.add_argument("--events", type=int, default=1000, help="queue events in the burst")
    p.add_argument("--backends", default="sqlite", help="sqlite,postgres")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--serve-ceiling", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--db", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.db, args.port, args.workdir)
        return 0
    if args.serve_ceiling:
        serve_ceiling(args.port)
        return 0
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
