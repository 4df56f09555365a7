"""Group commit for the partner API's small durable writes: nonces, audit rows, first answers.

Every partner call writes a few small rows that must be durable before the answer
leaves: its request nonce (a replay refused on any instance), its audit row
(nothing disclosed unaudited) and, on a POST with an `Idempotency-Key`, the claim
and then the first answer. One transaction per row costs a connection checkout, a
BEGIN and a COMMIT (an fsync) each -- far more than the partner call itself. So
callers hand their rows to one writer task per instance, which takes whatever has
queued up, writes it in one transaction (one statement per kind on PostgreSQL,
one thread hop on SQLite), commits, and only then wakes the callers. Nobody is
answered before the commit that holds their row.

The database decides, not this process: a nonce is fresh when the upsert returns
it (an expired row with the same key is taken over), a key is claimed when its
upsert returns it. So two instances never both accept one nonce or both run one key.

If a batch fails, each of its operations is retried alone, so one bad row fails
only its own caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from citizen_card.jsontext import dumps_text
from citizen_card.models import CardEvent

log = logging.getLogger(__name__)

event_t = CardEvent.__table__  # type: ignore[attr-defined]
MAX_BATCH = 512
PURGE_EVERY_S = 60.0
CLAIM_LEASE_S = 120  # an unanswered claim frees itself after this (a crashed instance)


@dataclass(frozen=True)
class StoredAnswer:
    status: int
    body: bytes
    content_type: str


@dataclass(frozen=True)
class ClaimResult:
    """`claimed`: the key is ours now. Otherwise the row found: its fingerprint, and
    its answer (None while the first request is still running)."""

    claimed: bool
    fingerprint: str = ""
    answer: StoredAnswer | None = None


@dataclass
class _Op:
    kind: str  # nonce | admit | claim | complete | abandon | audit | purge
    args: tuple[Any, ...]
    future: asyncio.Future[Any]


# ---------------------------------------------------------------- SQL, both dialects

_NONCE_SQLITE = (
    "INSERT INTO partner_nonce (partner_id, nonce, expires_at) VALUES (?, ?, ?) "
    "ON CONFLICT (partner_id, nonce) DO UPDATE SET expires_at = excluded.expires_at "
    "WHERE partner_nonce.expires_at <= ? RETURNING 1"
)
_NONCE_PG = (
    "INSERT INTO partner_nonce (partner_id, nonce, expires_at) "
    "SELECT * FROM unnest($1::varchar[], $2::varchar[], $3::bigint[]) "
    "ON CONFLICT (partner_id, nonce) DO UPDATE SET expires_at = excluded.expires_at "
    "WHERE partner_nonce.expires_at <= $4 RETURNING partner_id, nonce"
)
_CLAIM_SQLITE = (
    "INSERT INTO partner_idempotency (partner_id, key, fingerprint, status, content_type, "
    "body, expires_at) VALUES (?, ?, ?, NULL, NULL, NULL, ?) "
    "ON CONFLICT (partner_id, key) DO UPDATE SET fingerprint = excluded.fingerprint, "
    "status = NULL, content_type = NULL, body = NULL, expires_at = excluded.expires_at "
    "WHERE partner_idempotency.expires_at <= ? RETURNING 1"
)
_CLAIM_PG = (
    "INSERT INTO partner_idempotency (partner_id, key, fingerprint, expires_at) "
    "SELECT * FROM unnest($1::varchar[], $2::varchar[], $3::varchar[], $4::bigint[]) "
    "ON CONFLICT (partner_id, key) DO UPDATE SET fingerprint = excluded.fingerprint, "
    "status = NULL, content_type = NULL, body = NULL, expires_at = excluded.expires_at "
    "WHERE partner_idempotency.expires_at <= $5 RETURNING partner_id, key"
)
_FOUND_SQLITE = (
    "SELECT fingerprint, status, content_type, body FROM partner_idempotency "
    "WHERE partner_id = ? AND key = ?"
)
_FOUND_PG = (
    "SELECT fingerprint, status, content_type, body FROM partner_idempotency "
    "WHERE partner_id = $1 AND key = $2"
)
_COMPLETE_SQLITE = (
    "UPDATE partner_idempotency SET status = ?, content_type = ?, body = ?, expires_at = ? "
    "WHERE partner_id = ? AND key = ? AND fingerprint = ? AND status IS NULL"
)
_COMPLETE_PG = (
    "UPDATE partner_idempotency SET status = $1, content_type = $2, body = $3, expires_at = $4 "
    "WHERE partner_id = $5 AND key = $6 AND fingerprint = $7 AND status IS NULL"
)
_ABANDON_SQLITE = (
    "DELETE FROM partner_idempotency WHERE partner_id = ? AND key = ? AND fingerprint = ? "
    "AND status IS NULL"
)
_ABANDON_PG = (
    "DELETE FROM partner_idempotency WHERE partner_id = $1 AND key = $2 AND fingerprint = $3 "
    "AND status IS NULL"
)
_AUDIT_SQLITE = (
    "INSERT INTO card_event (card_no, at, actor, channel, action, data) VALUES (?, ?, ?, ?, ?, ?)"
)
_AUDIT_PG = (
    "INSERT INTO card_event (card_no, at, actor, channel, action, data) "
    "SELECT a, b, c, d, e, f::json FROM unnest($1::varchar[], $2::timestamptz[], "
    "$3::varchar[], $4::varchar[], $5::varchar[], $6::text[]) AS u(a, b, c, d, e, f)"
)
_SQLITE_PRAGMAS = (  # as the service's other SQLite connections (durable at COMMIT)
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA busy_timeout=30000",
    "PRAGMA foreign_keys=ON",
    "PRAGMA wal_autocheckpoint=10000",  # the service checkpoints beside the commits
)
_PURGE = (
    "DELETE FROM partner_nonce WHERE expires_at <= {now}",
    "DELETE FROM partner_idempotency WHERE expires_at <= {now}",
)


class PartnerJournal:
    """One writer per instance (see the module doc). Starts itself on first use;
    `stop()` fails what is still queued."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        write_lock: asyncio.Lock | None = None,
        clock: Callable[[], float] = time.time,
        max_batch: int = MAX_BATCH,
        purge_every_s: float = PURGE_EVERY_S,
    ) -> None:
        self.engine = engine
        self.write_lock = write_lock
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._clock = clock
        self.max_batch = max_batch
        self._purge_every_s = purge_every_s
        self._next_purge = 0.0
        self._purge_asked = False  # a "purge" op is queued (see asyncpg_ride)
        self.raw_pool: Any = None  # PostgreSQL: a citizen_card.pgpool.RawPool, if set
        self._queue: asyncio.Queue[_Op] | None = None
        self._task: asyncio.Task[None] | None = None
        self._pg_engine = (
            None if self.is_sqlite else engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        database = engine.url.database if self.is_sqlite else None
        self._path = database if database and database != ":memory:" else None
        self._executor: ThreadPoolExecutor | None = None
        self._lite: sqlite3.Connection | None = None  # only ever touched in that thread
        dialect = engine.dialect
        self._at_bind = event_t.c.at.type.dialect_impl(dialect).bind_processor(dialect)
        self.batches = 0
        self.ops = 0

    # ------------------------------------------------------------ the callers' side

    async def remember_nonce(self, partner_id: str, nonce: str, expires_at: int) -> bool:
        """True if this (partner, nonce) is new (or its old row had expired)."""
        return bool(await self._submit("nonce", partner_id, nonce, int(expires_at)))

    async def admit(
        self, partner_id: str, nonce: str, expires_at: int, key: str, fingerprint: str
    ) -> tuple[bool, ClaimResult | None]:
        """A request's nonce and, if it is fresh, its Idempotency-Key claim: one commit."""
        fresh, found = await self._submit(
            "admit", partner_id, nonce, int(expires_at), key, fingerprint
        )
        return bool(fresh), found

    async def claim(self, partner_id: str, key: str, fingerprint: str) -> ClaimResult:
        """Claim an Idempotency-Key, or what is stored for it."""
        result: ClaimResult = await self._submit("claim", partner_id, key, fingerprint)
        return result

    def complete(
        self, partner_id: str, key: str, fingerprint: str, answer: StoredAnswer, ttl_s: int
    ) -> asyncio.Future[Any]:
        """Store the first answer (kept `ttl_s`); the returned future resolves at commit.

        Not awaited by the caller when it writes an audit row next: the queue is FIFO,
        so the audit row's commit includes this one."""
        return self._enqueue("complete", partner_id, key, fingerprint, answer, int(ttl_s))

    def abandon(self, partner_id: str, key: str, fingerprint: str) -> asyncio.Future[Any]:
        """Drop an unanswered claim (nothing was done: a retry runs again)."""
        return self._enqueue("abandon", partner_id, key, fingerprint)

    async def audit(
        self,
        *,
        card_no: str,
        at: datetime,
        actor: str,
        channel: str,
        action: str,
        data: dict[str, Any],
        nonce: tuple[str, str, int] | None = None,
        refused: dict[str, Any] | None = None,
    ) -> bool:
        """One `card_event` row, committed before this returns.

        With `nonce` (partner, nonce, expires_at) the request's nonce is recorded in
        the same commit (a call that changes nothing need not wait for two); if it
        was not fresh, the row records `refused` instead of `data` (and no card) and returns
        False: the caller then answers "replayed" instead."""
        text = dumps_text(data)
        return bool(
            await self._submit(
                "audit",
                card_no,
                at,
                actor,
                channel,
                action,
                text,
                nonce,
                dumps_text(refused) if refused is not None else text,
            )
        )

    async def asyncpg_ride(
        self,
        pg: Any,
        nonces: Sequence[tuple[str, str, int]],
        audits: Sequence[tuple[str, datetime, str, str, str, dict[str, Any]]],
    ) -> bool:
        """Inside another writer's PostgreSQL transaction (a payment's or a payment
        batch's, see `citizen_card.ledger.Rider`): record the calls' nonces (partner,
        nonce, expires_at) and their audit rows (card_no, at, actor, channel, action,
        data), so the call commits once. False, with nothing written, if any nonce is
        not fresh (or twice here): the caller rolls its transaction back."""
        if not self._purge_asked and self._clock() >= self._next_purge:
            self._purge_asked = True
            # the writer purges expired nonces beside its batches, and a payments-only
            # load may give it none: wake it for that (not in this transaction, whose
            # locks would then cover every expired row)
            self._enqueue("purge").add_done_callback(_retrieved)
        if not await asyncpg_all_fresh(pg, nonces, int(self._clock())):
            return False
        if audits:
            cols = [list(c) for c in zip(*audits, strict=True)]
            cols[5] = [dumps_text(data) for data in cols[5]]
            await pg.execute(_AUDIT_PG, *cols)
        return True

    def _enqueue(self, kind: str, *args: Any) -> asyncio.Future[Any]:
        if self._queue is None:
            self._queue = asyncio.Queue()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Op(kind, args, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="partner-journal")
        return fut

    async def _submit(self, kind: str, *args: Any) -> Any:
        return await self._enqueue(kind, *args)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        queue = self._queue
        while queue is not None and not queue.empty():
            op = queue.get_nowait()
            if not op.future.done():
                op.future.set_exception(RuntimeError("service shutting down"))
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.submit(self._close_sqlite)
            executor.shutdown(wait=False)

    def _close_sqlite(self) -> None:
        db, self._lite = self._lite, None
        if db is not None:
            db.close()

    # ------------------------------------------------------------ the writer

    async def _run(self) -> None:
        assert self._queue is not None
        queue = self._queue
        # exits when the queue is empty (restarted by the next call): no task is left
        # behind when the loop or the engine goes away
        while not queue.empty():
            batch = [queue.get_nowait()]
            while len(batch) < self.max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await self._write(batch)
            except asyncio.CancelledError:
                for op in batch:
                    if not op.future.done():
                        op.future.set_exception(RuntimeError("service shutting down"))
                raise
            except Exception as exc:
                if len(batch) == 1:
                    _fail(batch[0], exc)
                    continue
                log.warning("partner journal batch of %d failed (%s); one by one", len(batch), exc)
                for op in batch:
                    try:
                        await self._write([op])
                    except asyncio.CancelledError:
                        raise
                    except Exception as one:
                        _fail(op, one)

    async def _write(self, batch: list[_Op]) -> None:
        now = self._clock()
        purge = now >= self._next_purge
        if purge:
            self._next_purge = now + self._purge_every_s
            self._purge_asked = False
        if self.is_sqlite:
            results = await self._write_sqlite(batch, int(now), purge)
        else:
            results = await self._write_pg(batch, int(now), purge)
        self.batches += 1
        self.ops += len(batch)
        for op, result in zip(batch, results, strict=True):
            if not op.future.done():
                op.future.set_result(result)

    async def _write_sqlite(self, batch: list[_Op], now: int, purge: bool) -> list[Any]:
        at_bind = self._at_bind
        lock = self.write_lock or contextlib.nullcontext()
        if self._path is None:  # an in-memory database: only the engine's connection sees it
            async with lock, self.engine.begin() as conn:
                lite = (await conn.get_raw_connection()).driver_connection
                return list(
                    await lite._execute(_sqlite_batch, lite._conn, batch, now, purge, at_bind)
                )
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="partner-journal")
        loop = asyncio.get_running_loop()
        async with lock:
            # one hop into our own thread and connection for the whole batch; shielded:
            # once handed over, the transaction finishes (or rolls back) on its own
            fut = loop.run_in_executor(
                self._executor, self._sqlite_transaction, batch, now, purge, at_bind
            )
            return await asyncio.shield(fut)

    def _sqlite_transaction(
        self, batch: list[_Op], now: int, purge: bool, at_bind: Callable[[Any], Any] | None
    ) -> list[Any]:
        """On the journal's thread: BEGIN IMMEDIATE, the batch, COMMIT."""
        db = self._lite
        if db is None:
            db = sqlite3.connect(self._path, timeout=30, isolation_level=None)
            for pragma in _SQLITE_PRAGMAS:
                db.execute(pragma)
            self._lite = db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                results = _sqlite_batch(db, batch, now, purge, at_bind)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error:
            self._lite = None  # a fresh connection for the next batch
            with contextlib.suppress(sqlite3.Error):
                db.close()
            raise
        return results

    @contextlib.asynccontextmanager
    async def _pg_connection(self) -> AsyncIterator[Any]:
        if self.raw_pool is not None:  # citizen_card.pgpool: no pre-ping, no SQLAlchemy
            async with self.raw_pool.acquire() as pg:
                yield pg
        else:
            assert self._pg_engine is not None
            async with self._pg_engine.connect() as conn:
                yield (await conn.get_raw_connection()).driver_connection

    async def _write_pg(self, batch: list[_Op], now: int, purge: bool) -> list[Any]:
        """The batch as one statement per kind: nonces first (every operation that
        carries one), then the claims of fresh admissions and plain claims, then
        answers, abandons and audit rows."""
        nonces: list[tuple[int, str, str, int]] = []
        for i, op in enumerate(batch):
            if op.kind in ("nonce", "admit"):
                nonces.append((i, op.args[0], op.args[1], op.args[2]))
            elif op.kind == "audit" and op.args[6] is not None:
                nonces.append((i, *op.args[6]))
        async with self._pg_connection() as pg, pg.transaction():
            if purge:
                for sql in _PURGE:
                    await pg.execute(sql.format(now=now))
            fresh: dict[int, bool] = {}
            if nonces:
                first = _first_of(nonces, lambda t: (t[1], t[2]))
                rows = await pg.fetch(
                    _NONCE_PG,
                    [t[1] for t in first],
                    [t[2] for t in first],
                    [t[3] for t in first],
                    now,
                )
                new = {(r[0], r[1]) for r in rows}
                for i, pid, nonce, _ in nonces:
                    fresh[i] = (pid, nonce) in new
                    new.discard((pid, nonce))  # a twin in the same batch is a replay
            claims: list[tuple[int, str, str, str]] = []
            for i, op in enumerate(batch):
                if op.kind == "claim":
                    claims.append((i, op.args[0], op.args[1], op.args[2]))
                elif op.kind == "admit" and fresh[i]:
                    claims.append((i, op.args[0], op.args[3], op.args[4]))
            claimed: dict[int, ClaimResult] = {}
            if claims:
                first = _first_of(claims, lambda t: (t[1], t[2]))
                rows = await pg.fetch(
                    _CLAIM_PG,
                    [t[1] for t in first],
                    [t[2] for t in first],
                    [t[3] for t in first],
                    [now + CLAIM_LEASE_S] * len(first),
                    now,
                )
                won = {(r[0], r[1]) for r in rows}
                for i, pid, key, _ in claims:
                    if (pid, key) in won:
                        claimed[i] = ClaimResult(True)
                        won.discard((pid, key))
                    else:
                        claimed[i] = _found(await pg.fetchrow(_FOUND_PG, pid, key))
            completes = [op.args for op in batch if op.kind == "complete"]
            if completes:
                await pg.executemany(
                    _COMPLETE_PG,
                    [
                        (a.status, a.content_type, a.body, now + ttl, pid, key, fp)
                        for pid, key, fp, a, ttl in completes
                    ],
                )
            abandons = [op.args for op in batch if op.kind == "abandon"]
            if abandons:
                await pg.executemany(_ABANDON_PG, abandons)
            audits = [
                (*op.args[:5], op.args[5])
                if fresh.get(i, True)
                else ("", *op.args[1:5], op.args[7])  # a refused replay: no card, no facts
                for i, op in enumerate(batch)
                if op.kind == "audit"
            ]
            if audits:
                cols = list(zip(*audits, strict=True))
                await pg.execute(_AUDIT_PG, *(list(c) for c in cols))
        results: list[Any] = []
        for i, op in enumerate(batch):
            if op.kind == "nonce":
                results.append(fresh[i])
            elif op.kind == "admit":
                results.append((fresh[i], claimed.get(i)))
            elif op.kind == "claim":
                results.append(claimed[i])
            elif op.kind == "audit":
                results.append(fresh.get(i, True))
            else:
                results.append(None)
        return results


async def asyncpg_all_fresh(pg: Any, nonces: Sequence[tuple[str, str, int]], now: int) -> bool:
    """Record one-time nonces (namespace, nonce, expires_at) in one statement, inside
    the caller's transaction; True if every one was new (a row that had expired is
    taken over). False if any was seen, or is twice in `nonces`: the caller rolls back
    (what was written here goes with it)."""
    if not nonces:
        return True
    keys = {(ns, nonce) for ns, nonce, _ in nonces}
    if len(keys) < len(nonces):
        return False
    rows = await pg.fetch(
        _NONCE_PG,
        [ns for ns, _, _ in nonces],
        [nonce for _, nonce, _ in nonces],
        [int(exp) for _, _, exp in nonces],
        now,
    )
    return len(rows) == len(nonces)


def _first_of(items: list[Any], key: Callable[[Any], Any]) -> list[Any]:
    seen: set[Any] = set()
    out = []
    for item in items:
        k = key(item)
        if k not in seen:
            seen.add(k)
            out.append(item)
    return out


def _found(row: Any) -> ClaimResult:
    if row is None:  # deleted between our upsert and this read: treat as in flight
        return ClaimResult(False, "", None)
    fingerprint, status, content_type, body = row[0], row[1], row[2], row[3]
    answer = None
    if status is not None:
        answer = StoredAnswer(int(status), bytes(body or b""), content_type or "application/json")
    return ClaimResult(False, fingerprint, answer)


def _retrieved(fut: asyncio.Future[Any]) -> None:
    """For a future nobody awaits: its failure is logged by the writer already."""
    if not fut.cancelled():
        fut.exception()


def _fail(op: _Op, exc: BaseException) -> None:
    if not op.future.done():
        op.future.set_exception(exc)


def _sqlite_batch(
    db: Any, batch: list[_Op], now: int, purge: bool, at_bind: Callable[[Any], Any] | None
) -> list[Any]:
    """On the writer's thread, inside the batch's transaction: each operation in order."""

    def nonce(pid: str, n: str, exp: int) -> bool:
        return bool(db.execute(_NONCE_SQLITE, (pid, n, exp, now)).fetchall())

    def claim(pid: str, key: str, fp: str) -> ClaimResult:
        if db.execute(_CLAIM_SQLITE, (pid, key, fp, now + CLAIM_LEASE_S, now)).fetchall():
            return ClaimResult(True)
        return _found(db.execute(_FOUND_SQLITE, (pid, key)).fetchone())

    results: list[Any] = []
    if purge:
        for sql in _PURGE:
            db.execute(sql.format(now=now))
    for op in batch:
        a = op.args
        if op.kind == "nonce":
            results.append(nonce(a[0], a[1], a[2]))
        elif op.kind == "admit":
            fresh = nonce(a[0], a[1], a[2])
            results.append((fresh, claim(a[0], a[3], a[4]) if fresh else None))
        elif op.kind == "claim":
            results.append(claim(a[0], a[1], a[2]))
        elif op.kind == "complete":
            pid, key, fp, answer, ttl = a
            db.execute(
                _COMPLETE_SQLITE,
                (answer.status, answer.content_type, answer.body, now + ttl, pid, key, fp),
            )
            results.append(None)
        elif op.kind == "abandon":
            db.execute(_ABANDON_SQLITE, a)
            results.append(None)
        elif op.kind == "purge":  # done above, when due
            results.append(None)
        elif op.kind == "audit":
            card_no, at, actor, channel, action, data, with_nonce, refused = a
            fresh = True if with_nonce is None else nonce(*with_nonce)
            db.execute(
                _AUDIT_SQLITE,
                (
                    card_no if fresh else "",  # a refused replay records nothing of a card
                    at_bind(at) if at_bind else at,
                    actor,
                    channel,
                    action,
                    data if fresh else refused,
                ),
            )
            results.append(fresh)
        else:  # pragma: no cover
            raise ValueError(op.kind)
    return results


__all__ = ["ClaimResult", "PartnerJournal", "StoredAnswer", "asyncpg_all_fresh"]
