"""WeChat webhook throughput and latency, against a bare-handler ceiling in the same run.

Run: ``.venv/bin/python -m bench.wechat [--clients 32] [--seconds 8] [--rate 500]``

What is measured: safe-mode (AES) WeChat text pushes, each with a new MsgId from one
of 2,000 residents, encrypted and signed beforehand in the load process (by
wechatpy, as WeChat would), posted to ``/wechat`` of the service (``--serve``: the
production ``create_app`` on SQLite, WAL, synchronous=FULL, migrated), which verifies
both signatures, decrypts, parses, stores the message durably (contact, conversation,
work-queue item; group-committed) and answers "success".

* **Ceiling.** The same clients post the same bodies to a bare aiohttp handler
  (``--serve-ceiling``) that reads the body and answers "success": what HTTP on this
  machine allows. Service and ceiling run at once as separate processes and the load
  alternates between them in short slices, so a busy neighbour slows both alike.
* **Closed loop** (N clients, each posting as soon as the previous answer came):
  messages/s and the ratio to the ceiling (target >= 30%).
* **Open loop at a fixed rate** (default 500 msg/s, requests started on schedule
  whether or not earlier ones finished): p50 / p99 latency (target p99 < 100 ms).
* **Durability.** After the server stops, every MsgId answered 200 must be in the
  database exactly once.
* **CPU per message.** The servers' CPU seconds (from /proc, whole process and its
  event-loop thread) over each phase, divided by the messages of that phase. On a
  shared, busy machine wall-clock rates say more about the neighbours than about the
  code; CPU per message does not, and "service on one full core" (1 / CPU per
  message) is what a quiet machine would give the service.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.harness import HOST, ServerProcess, loadavg, quiet_collector

TOKEN = "bench-token"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
APP_ID = "wxbench0000000000"
PII_KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
TARGET_SHARE = 0.30
TARGET_P99_MS = 100.0
TEXTS = (
    "幸福小区南门的路灯坏了一个星期，晚上很黑",
    "楼下餐馆油烟太大，窗户都不能开",
    "公交 12 路最近总是不按时到站",
    "请问居住证续签需要哪些材料",
    "人行道上的井盖松动了，踩上去会响",
)


class Server(ServerProcess):
    MODULE = "bench.wechat"


def serve(db_url: str, port: int, workdir: Path) -> None:
    """The service as production starts it, with WeChat safe mode configured."""
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
        wechat_token=TOKEN,
        wechat_aes_key=AES_KEY,
        wechat_app_id=APP_ID,
    )
    app = create_app(settings, watch_deadlines=False)
    web.run_app(app, host=HOST, port=port, print=None, access_log=None)


def serve_ceiling(port: int) -> None:
    """The most an aiohttp handler can do here: read the body, answer "success"."""
    from aiohttp import web

    async def push(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="success", content_type="text/plain")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.add_routes([web.post("/wechat", push), web.get("/healthz", healthz)])
    web.run_app(app, host=HOST, port=port, print=None, access_log=None)


@dataclass
class Push:
    msg_id: str
    query: dict[str, str]
    body: bytes


def make_pushes(n: int, start_id: int) -> list[Push]:
    """Encrypted and signed as WeChat does it (wechatpy's PrpCrypto), before timing."""
    from channels.wechat.crypto import MessageCrypto, sign

    crypto = MessageCrypto(TOKEN, AES_KEY, APP_ID)
    ts = str(int(time.time()))
    out = []
    for i in range(n):
        msg_id = str(start_id + i)
        inner = (
            "<xml><ToUserName><![CDATA[gh_bench]]></ToUserName>"
            f"<FromUserName><![CDATA[oBENCH{i % 2000:05d}]]></FromUserName>"
            f"<CreateTime>{ts}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
            f"<Content><![CDATA[{TEXTS[i % len(TEXTS)]}]]></Content>"
            f"<MsgId>{msg_id}</MsgId></xml>"
        )
        nonce = f"n{i}"
        env = crypto.encrypt(inner, nonce=nonce, timestamp=ts)
        enc = env.split("<Encrypt><![CDATA[", 1)[1].split("]]>", 1)[0]
        query = {
            "signature": sign(TOKEN, ts, nonce),
            "timestamp": ts,
            "nonce": nonce,
            "openid": f"oBENCH{i % 2000:05d}",
            "encrypt_type": "aes",
            "msg_signature": sign(TOKEN, ts, nonce, enc),
        }
        body = (
            "<xml><ToUserName><![CDATA[gh_bench]]></ToUserName>"
            f"<Encrypt><![CDATA[{enc}]]></Encrypt></xml>"
        ).encode()
        out.append(Push(msg_id, query, body))
    return out


@dataclass
class Cpu:
    """Server CPU seconds spent during the measured phases (whole process, event loop)."""

    total: float = 0.0
    main: float = 0.0

    @contextlib.contextmanager
    def measure(self, server: ServerProcess) -> Iterator[None]:
        before = server.cpu_seconds()
        yield
        after = server.cpu_seconds()
        if before and after:
            self.total += after[0] - before[0]
            self.main += after[1] - before[1]


@dataclass
class Result:
    name: str
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    errors: int = 0
    accepted: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


async def closed_loop(
    session: aiohttp.ClientSession,
    base: str,
    pushes: list[Push],
    clients: int,
    seconds: float,
    r: Result,
) -> None:
    it = iter(pushes)
    deadline = time.monotonic() + seconds
    started = time.monotonic()

    async def client() -> None:
        while time.monotonic() < deadline:
            p = next(it, None)
            if p is None:
                return
            t0 = time.perf_counter()
            try:
                async with session.post(f"{base}/wechat", params=p.query, data=p.body) as resp:
                    text = await resp.text()
                    ok = resp.status == 200 and text == "success"
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if ok:
                r.latencies.append(time.perf_counter() - t0)
                r.accepted.append(p.msg_id)
            else:
                r.errors += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    r.seconds += time.monotonic() - started


async def open_loop(
    session: aiohttp.ClientSession,
    base: str,
    pushes: list[Push],
    rate: float,
    seconds: float,
    r: Result,
) -> None:
    n = min(len(pushes), int(rate * seconds))
    start = time.monotonic()

    async def one(p: Push, at: float) -> None:
        delay = at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t0 = time.perf_counter()
        try:
            async with session.post(f"{base}/wechat", params=p.query, data=p.body) as resp:
                ok = resp.status == 200 and await resp.text() == "success"
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        if ok:
            r.latencies.append(time.perf_counter() - t0)
            r.accepted.append(p.msg_id)
        else:
            r.errors += 1

    await asyncio.gather(*(one(pushes[i], start + i / rate) for i in range(n)))
    r.seconds = time.monotonic() - start


def stored_ids(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT external_id FROM channel_message WHERE channel='wechat' AND direction='in'"
        ).fetchall()
    finally:
        conn.close()
    return [r[0] for r in rows]


async def bench(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="bench-wechat-"))
    db = workdir / "hotline.db"
    slices = max(2, int(args.seconds // 2))
    per_slice = args.seconds / slices
    closed = make_pushes(60_000, 10**15)
    ceiling_pushes = make_pushes(60_000, 2 * 10**15)
    opened = make_pushes(int(args.rate * args.seconds) + 10, 3 * 10**15)
    svc_server = Server(
        ["--serve", "--db", f"sqlite+aiosqlite:///{db}", "--workdir", str(workdir)],
        workdir / "service.log",
    )
    ceil_server = Server(["--serve-ceiling"], workdir / "ceiling.log")
    conn = aiohttp.TCPConnector(limit=0)
    svc, ceil = Result("service"), Result("ceiling")
    fixed = Result("service @ fixed rate")
    timeout = aiohttp.ClientTimeout(total=10)
    async with ceil_server, svc_server, aiohttp.ClientSession(connector=conn, timeout=timeout) as s:
        quiet_collector()
        # warm-up (connections, first batches), not measured
        await closed_loop(
            s, svc_server.base, make_pushes(200, 4 * 10**15), args.clients, 1.0, Result("w")
        )
        await closed_loop(
            s, ceil_server.base, ceiling_pushes[-200:], args.clients, 1.0, Result("w")
        )
        c_iter, s_iter = 0, 0
        svc_cpu, ceil_cpu, fixed_cpu = Cpu(), Cpu(), Cpu()
        for _ in range(slices):
            chunk = ceiling_pushes[c_iter:]
            before = len(ceil.latencies) + ceil.errors
            with ceil_cpu.measure(ceil_server):
                await closed_loop(s, ceil_server.base, chunk, args.clients, per_slice, ceil)
            c_iter += len(ceil.latencies) + ceil.errors - before
            before = len(svc.latencies) + svc.errors
            with svc_cpu.measure(svc_server):
                await closed_loop(s, svc_server.base, closed[s_iter:], args.clients, per_slice, svc)
            s_iter += len(svc.latencies) + svc.errors - before
        await asyncio.sleep(1.0)
        with fixed_cpu.measure(svc_server):
            await open_loop(s, svc_server.base, opened, args.rate, args.seconds, fixed)
        summary = svc_server.log_summary()
    stored = stored_ids(db)
    acknowledged = svc.accepted + fixed.accepted
    missing = set(acknowledged) - set(stored)
    dupes = len(stored) - len(set(stored))
    share = svc.rate / ceil.rate if ceil.rate else 0.0
    print(f"bench.wechat: {args.clients} clients, {args.seconds:g} s per phase, load {loadavg()}")
    print("| safe-mode WeChat text pushes | msg/s | p50 ms | p99 ms | of ceiling | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in (ceil, svc):
        label = "ceiling: bare aiohttp handler" if r is ceil else "service /wechat (SQLite)"
        of = "—" if r is ceil else f"{share:.0%}"
        p50, p99 = r.pct(0.5), r.pct(0.99)
        print(f"| {label} | {r.rate:,.0f} | {p50:.1f} | {p99:.1f} | {of} | {r.errors} |")
    print(
        f"| service /wechat at {args.rate:g} msg/s (open loop) | {fixed.rate:,.0f} | "
        f"{fixed.pct(0.5):.1f} | {fixed.pct(0.99):.1f} | — | {fixed.errors} |"
    )
    print(
        f"durability: {len(acknowledged):,} acknowledged, {len(stored):,} stored, "
        f"{len(missing)} missing, {dupes} duplicates"
    )
    print("| server CPU per message | total ms | event loop ms | other threads ms | cores |")
    print("|---|---:|---:|---:|---:|")
    for label, cpu, r in (
        ("ceiling (closed loop)", ceil_cpu, ceil),
        ("service (closed loop)", svc_cpu, svc),
        (f"service at {args.rate:g} msg/s", fixed_cpu, fixed),
    ):
        n = len(r.latencies) + r.errors
        if n and r.seconds:
            print(
                f"| {label} | {cpu.total / n * 1000:.3f} | {cpu.main / n * 1000:.3f} | "
                f"{(cpu.total - cpu.main) / n * 1000:.3f} | {cpu.total / r.seconds:.2f} |"
            )
    svc_per = svc_cpu.total / max(1, len(svc.latencies) + svc.errors)
    ceil_per = ceil_cpu.total / max(1, len(ceil.latencies) + ceil.errors)
    if svc_per and ceil_per:
        # Both servers are CPU-bound here; on a quiet machine each gets what it needs, so
        # the ratio of their CPU per message is what the throughput ratio tends to there.
        print(
            f"CPU ratio (ceiling CPU/msg / service CPU/msg): {ceil_per / svc_per:.0%}; "
            f"service on one full core: about {1 / svc_per:,.0f} msg/s"
        )
    print(f"server log: {summary}")
    ok_share = share >= TARGET_SHARE
    ok_p99 = fixed.pct(0.99) < TARGET_P99_MS and fixed.errors == 0
    print(
        f"target: >= {TARGET_SHARE:.0%} of ceiling "
        f"({share:.0%}: {'met' if ok_share else 'MISSED'}); "
        f"p99 < {TARGET_P99_MS:g} ms at {args.rate:g} msg/s "
        f"({fixed.pct(0.99):.1f} ms: {'met' if ok_p99 else 'MISSED'})"
    )
    return 0 if not missing and not dupes else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.wechat", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--serve-ceiling", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--db", help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
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
