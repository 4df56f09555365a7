"""The SQLite intake's writer process (ticketing/intake_writer_proc.py): it dies, it is
stopped mid-batch, it fails, it cannot start. Whatever happens, nobody is told a
ticket was stored unless its COMMIT answered, nothing is half-written, no number is
skipped, and SQLite's write lock is never left held."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from ticket_world import AGENT, World

from ticketing import intake as intake_mod
from ticketing import intake_writer_proc as writer_proc
from ticketing.intake import IdempotencySpec, NewTicket, WriterProcessDied
from ticketing.store import StoreUnavailable, sqlite_pragmas

DAY = "20260420"  # the world's clock


def db_path(world: World) -> Path:
    path = world.db.sqlite_file
    assert path is not None
    return path


async def stored(world: World) -> dict[str, Any]:
    """Row counts of everything a batch writes, and the day's counter."""
    async with world.db.read() as conn:
        out: dict[str, Any] = {}
        for table in ("ticket", "ticket_event", "work_item", "idempotency_record"):
            out[table] = (await conn.execute(sa.text(f"SELECT count(*) FROM {table}"))).scalar()
        out["counter"] = (
            await conn.execute(
                sa.text("SELECT value FROM ticket_counter WHERE day = :d"), {"d": DAY}
            )
        ).scalar()
    return out


def each(n: int) -> dict[str, Any]:
    """What `stored` says after n tickets without idempotency keys."""
    return {"ticket": n, "ticket_event": n, "work_item": n, "idempotency_record": 0, "counter": n}


def writer_pid(world: World) -> int:
    writer = world.intake._sqlite
    assert writer is not None and writer._proc is not None
    return writer._proc.pid


def on_build(world: World, hook: Callable[[list[Any]], None]) -> None:
    """Run `hook(batch)` each time the intake numbers a batch (on the event loop,
    before it goes to the writer process)."""
    original = world.intake._number_and_build

    def wrapped(batch: list[Any], by_day: Any, lasts: Any) -> Any:
        hook(batch)
        return original(batch, by_day, lasts)

    world.intake._number_and_build = wrapped  # type: ignore[method-assign]


def ticket(i: int) -> NewTicket:
    return NewTicket(
        kind="complaint",
        title=f"工单 {i}",
        description="幸福小区南门路灯不亮",
        channel="phone",
        principal=AGENT,
        category="urban.street-lights",
    )


def lock_is_free(path: Path) -> bool:
    conn = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


# ---------------------------------------------------------------- the process dies


@pytest.mark.parametrize("guessed", [True, False], ids=["one-trip", "inside-transaction"])
async def test_writer_dying_mid_batch_fails_it_as_unavailable_and_the_next_ticket_succeeds(
    sqlite_world: World, guessed: bool
) -> None:
    """Killed before its request (one-trip path) or with the transaction open and the
    counter already bumped (two-step path): the ticket is refused as unavailable (503),
    nothing of it stays, and the next ticket gets the number it would have had."""
    world = sqlite_world
    assert (await world.create())["number"] == f"{DAY}00001"
    first_pid = writer_pid(world)
    if not guessed:
        world.intake._lasts = {}  # as after a restart: the counter is read first
    killed: list[int] = []

    def kill_once(batch: list[Any]) -> None:
        if not killed:
            killed.append(len(batch))
            os.kill(first_pid, signal.SIGKILL)

    on_build(world, kill_once)
    with pytest.raises(WriterProcessDied) as err:
        await world.create(title="不会保存")
    assert isinstance(err.value, StoreUnavailable)  # what the API answers 503 for
    assert killed == [1]
    assert await stored(world) == each(1)
    assert lock_is_free(db_path(world))

    assert (await world.create(title="重试"))["number"] == f"{DAY}00002"
    assert writer_pid(world) != first_pid
    assert await stored(world) == each(2)


async def test_a_batch_whose_writer_died_is_retried_in_halves_without_gaps(
    sqlite_world: World,
) -> None:
    """GroupCommit halves a failed batch: a new process stores every ticket once, and
    the numbers the dead transaction had reserved are given out, not skipped."""
    world = sqlite_world
    await world.create()
    world.intake._lasts = {}
    sizes: list[int] = []
    pid = writer_pid(world)

    def kill_first(batch: list[Any]) -> None:
        sizes.append(len(batch))
        if len(sizes) == 1:
            os.kill(pid, signal.SIGKILL)

    on_build(world, kill_first)
    views = await asyncio.gather(*(world.create(title=f"批 {i}") for i in range(6)))
    assert sizes[0] == 6  # one batch, then its halves
    assert sorted(v["number"] for v in views) == [f"{DAY}{i:05d}" for i in range(2, 8)]
    assert await stored(world) == each(7)


async def test_a_writer_that_keeps_dying_gives_way_to_sqlalchemy(sqlite_world: World) -> None:
    """A crash loop must not refuse every ticket: after WRITER_MAX_DEATHS lost
    processes in a row, tickets go through SQLAlchemy (same rows, same counter)."""
    world = sqlite_world
    await world.create()

    def kill_writer(batch: list[Any]) -> None:
        writer = world.intake._sqlite
        if writer is not None and writer._proc is not None:
            os.kill(writer._proc.pid, signal.SIGKILL)

    on_build(world, kill_writer)
    for _ in range(intake_mod.WRITER_MAX_DEATHS):
        with pytest.raises(WriterProcessDied):
            await world.create()
    assert (await world.create())["number"] == f"{DAY}00002"
    assert world.intake._sqlite is None
    assert await stored(world) == each(2)


async def test_api_answers_503_when_the_writer_dies_and_201_right_after(sqlite_api) -> None:  # type: ignore[no-untyped-def]
    from hotline.appkeys import INTAKE

    api = sqlite_api
    assert (await api.new_ticket())["number"].endswith("00001")
    intake = api.app[INTAKE]
    assert intake._sqlite is not None and intake._sqlite._proc is not None
    os.kill(intake._sqlite._proc.pid, signal.SIGKILL)
    original = intake._writer_process

    async def no_restart_check(path: Path) -> Any:  # the death is noticed mid-batch
        return intake._sqlite

    intake._writer_process = no_restart_check
    body = {
        "kind": "complaint",
        "title": "路灯不亮",
        "description": "幸福小区南门路灯不亮",
        "channel": "phone",
        "category": "urban.street-lights",
    }
    r = await api.post("/api/v1/tickets", body)
    assert r.status == 503, await r.text()
    assert r.headers["Retry-After"] == "5"
    intake._writer_process = original
    r = await api.post("/api/v1/tickets", body)
    assert r.status == 201
    assert (await r.json())["number"].endswith("00002")


# ---------------------------------------------------------------- stopped mid-batch


async def test_stop_while_the_writer_waits_for_the_sqlite_lock_does_not_wait_it_out(
    sqlite_world: World,
) -> None:
    """Another process holds SQLite's write lock, so the batch waits in BEGIN IMMEDIATE
    (busy timeout 30 s). stop() ends it at once: nothing could have committed."""
    world = sqlite_world
    await world.create()
    proc = world.intake._sqlite._proc  # type: ignore[union-attr]
    assert proc is not None
    world.intake._lasts = {}
    blocker = sqlite3.connect(db_path(world), isolation_level=None, check_same_thread=False)
    await asyncio.to_thread(blocker.execute, "BEGIN IMMEDIATE")
    try:
        task = asyncio.create_task(world.create(title="停机时"))
        await asyncio.sleep(0.3)  # the request is out, the process waits for the lock
        assert not task.done()
        started = time.monotonic()
        await world.intake.stop()
        assert time.monotonic() - started < 5
        with pytest.raises(RuntimeError, match="shutting down"):
            await task
        assert proc.returncode is not None  # gone, and its connection with it
    finally:
        await asyncio.to_thread(blocker.execute, "ROLLBACK")
        blocker.close()
    assert await stored(world) == each(1)
    assert lock_is_free(db_path(world))


@pytest.mark.parametrize("guessed", [True, False], ids=["one-trip", "two-step"])
async def test_stop_while_the_statements_are_out_waits_for_commit_and_frees_the_lock(
    sqlite_world: World, guessed: bool
) -> None:
    """stop() lands once the rows have gone to the process: COMMIT may be under way,
    so stop waits for its answer. The caller is told the service is shutting down (no
    201), the batch is in the database whole or not at all, and the lock is free."""
    world = sqlite_world
    await world.create()
    if not guessed:
        world.intake._lasts = {}
    stopping: list[asyncio.Task[None]] = []

    def stop_now(batch: list[Any]) -> None:
        if not stopping:  # runs once the request is out (cancellation lands there)
            stopping.append(asyncio.create_task(world.intake.stop()))

    on_build(world, stop_now)
    with pytest.raises(RuntimeError, match="shutting down"):
        await world.create(title="停机时")
    await stopping[0]
    assert world.intake._sqlite is None
    assert lock_is_free(db_path(world))
    after = await stored(world)
    assert after in (each(1), each(2)), after


# ---------------------------------------------------------------- errors and big batches


async def test_a_failing_ticket_fails_alone_with_the_sqlite_error(sqlite_world: World) -> None:
    """Two tickets of one batch with the same idempotency key: the INSERT fails in the
    process, the batch is halved, and only the second ticket fails, with the same
    sqlite3.IntegrityError a writer in this process would have raised."""
    world = sqlite_world
    results = await asyncio.gather(
        world.intake.create(ticket(0)),
        world.intake.create(ticket(1), IdempotencySpec("agent", "k", "hash-1")),
        world.intake.create(ticket(2)),
        world.intake.create(ticket(3), IdempotencySpec("agent", "k", "hash-2")),
        return_exceptions=True,
    )
    assert isinstance(results[3], sqlite3.IntegrityError), results[3]
    ok = [r for r in results[:3] if isinstance(r, dict)]
    assert len(ok) == 3
    assert sorted(v["number"] for v in ok) == [f"{DAY}{i:05d}" for i in range(1, 4)]
    assert await stored(world) == {**each(3), "idempotency_record": 1}
    assert (await world.create())["number"] == f"{DAY}00004"  # the writer lives on


async def test_a_batch_spanning_several_statements_per_table_stores_every_row(
    sqlite_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """121 tickets (40 with idempotency records) in one batch: at most 999 parameters
    per INSERT make that several statements per table in one request to the process,
    and every row arrives."""
    world = sqlite_world
    await world.create()  # the next batch is built with guessed numbers: one request
    sent: list[list[tuple[str, tuple[Any, ...]]]] = []
    original = intake_mod._SqlitePlans.statements

    def spy(self: Any, rows: Any) -> Any:
        out = original(self, rows)
        sent.append(out)
        return out

    monkeypatch.setattr(intake_mod._SqlitePlans, "statements", spy)
    writer = world.intake._writer
    hold = asyncio.Event()
    commit = writer._commit

    async def held(batch: list[Any]) -> Any:
        await hold.wait()  # the rest queue up behind the first
        return await commit(batch)

    writer._commit = held  # type: ignore[method-assign]
    tasks = [asyncio.create_task(world.create(title="先到"))]
    await asyncio.sleep(0.05)
    for i in range(120):
        key = IdempotencySpec("agent", f"key-{i}", "h") if i % 3 == 0 else None
        tasks.append(asyncio.create_task(world.intake.create(ticket(i), key)))
    await asyncio.sleep(0.05)
    hold.set()
    views = await asyncio.gather(*tasks)
    writer._commit = commit  # type: ignore[method-assign]
    big = max(sent, key=len)
    per_table: dict[str, int] = {}
    for sql, params in big:
        table = sql.split('"')[1]
        per_table[table] = per_table.get(table, 0) + 1
        assert len(params) <= 999
    assert per_table["ticket"] >= 3 and per_table["ticket_event"] >= 2, per_table
    assert set(per_table) == {"ticket", "ticket_event", "work_item", "idempotency_record"}
    assert sorted(v["number"] for v in views) == [f"{DAY}{i:05d}" for i in range(2, 123)]
    assert await stored(world) == {**each(122), "idempotency_record": 40}
    async with world.db.read() as conn:
        rows = dict((await conn.execute(sa.text("SELECT number, title FROM ticket"))).all())
    assert all(rows[v["number"]] == v["title"] for v in views)


# ---------------------------------------------------------------- the process itself


def test_writer_process_runs_the_services_pragmas(tmp_path: Path) -> None:
    """The process gets the statements `sqlite_pragmas` runs (it imports no SQLAlchemy)
    and ends up with the same settings as the service's own connections."""
    path = tmp_path / "p.db"
    ours = sqlite3.connect(path)
    sqlite_pragmas(ours)
    writer = writer_proc.Writer(str(path), list(intake_mod._pragma_sql()))
    writer._connect()
    assert writer.conn is not None
    for pragma in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys"):
        want = ours.execute(f"PRAGMA {pragma}").fetchone()
        assert writer.conn.execute(f"PRAGMA {pragma}").fetchone() == want, pragma
    assert writer.conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    writer.close()
    ours.close()


async def test_a_broken_writer_process_is_logged_and_reported_unavailable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What the process writes on stderr reaches our log; a process that exits
    mid-request is a WriterProcessDied, not a hang."""
    writer = intake_mod._WriterProcess(tmp_path / "x.db")
    await writer.start()
    proc = writer._proc
    assert proc is not None and proc.stdin is not None
    with caplog.at_level(logging.WARNING, logger="ticketing.intake"):
        proc.stdin.write(writer_proc.HEADER.pack(5) + b"junk!")
        with pytest.raises(WriterProcessDied):
            await writer._reply()
    assert proc.returncode == 1
    assert any(
        "intake writer process failed: UnpicklingError" in r.getMessage() for r in caplog.records
    ), [r.getMessage() for r in caplog.records]
    await writer.close()


async def test_intake_writes_through_sqlalchemy_when_no_process_can_start(
    sqlite_world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    world = sqlite_world
    monkeypatch.setattr(sys, "executable", str(Path("/nonexistent/python")))
    with caplog.at_level(logging.ERROR, logger="ticketing.intake"):
        assert (await world.create())["number"] == f"{DAY}00001"
    assert world.intake._sqlite is None
    assert any("could not start" in r.getMessage() for r in caplog.records)
    monkeypatch.undo()
    assert (await world.create())["number"] == f"{DAY}00002"  # still SQLAlchemy for now
    assert world.intake._sqlite is None
    world.intake._start_again_at = 0.0  # the retry delay is over
    assert (await world.create())["number"] == f"{DAY}00003"
    assert world.intake._sqlite is not None
    assert await stored(world) == each(3)
