"""Two batches out to the SQLite writer process at once, and what must still hold:
every ticket stored once under its own number, a miss or a failure never stranding the
batch behind it, other writers of the file not starved by a stream of tickets, and a
batch whose answer was lost after COMMIT (writer process, or PostgreSQL connection)
not written twice."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from test_intake_writer_proc import (
    DAY,
    db_path,
    each,
    lock_is_free,
    on_build,
    stored,
    ticket,
)
from ticket_world import World, open_world

from ticketing.intake import IdempotencySpec, WriterProcessDied
from ticketing.store import StoreUnavailable


def watch_outstanding(world: World) -> list[int]:
    """Replies awaited from the writer process each time a request goes out."""
    writer = world.intake._sqlite
    assert writer is not None
    seen: list[int] = []
    original = writer._request

    async def spy(message: Any) -> Any:
        reply = await original(message)
        seen.append(len(writer._waiting))
        return reply

    writer._request = spy  # type: ignore[method-assign]
    return seen


async def test_two_batches_are_out_at_once_and_every_ticket_gets_its_own_number(
    sqlite_world: World,
) -> None:
    world = sqlite_world
    await world.create()  # the counter is known: batches go out with guessed numbers
    world.intake._writer.max_batch = 4
    outstanding = watch_outstanding(world)
    views = await asyncio.gather(*(world.create(title=f"{i}") for i in range(60)))
    assert max(outstanding) == 2  # overlapped, and never more than two
    assert sorted(v["number"] for v in views) == [f"{DAY}{i:05d}" for i in range(2, 62)]
    assert await stored(world) == each(61)


async def test_numbers_taken_by_another_writer_send_the_batches_out_again(
    sqlite_world: World,
) -> None:
    """Another process takes five numbers while batches are out: the ones guessed
    from our own counter miss, are written again with the counter's numbers, and no
    number is given twice."""
    world = sqlite_world
    await world.create()
    world.intake._writer.max_batch = 3
    path = db_path(world)
    builds = 0

    def someone_else_takes_numbers(batch: list[Any]) -> None:
        nonlocal builds
        builds += 1
        if builds == 4:  # batches are out, and more follow
            other = sqlite3.connect(path, timeout=30, isolation_level=None)
            try:
                other.execute("UPDATE ticket_counter SET value = value + 5 WHERE day = ?", (DAY,))
            finally:
                other.close()

    on_build(world, someone_else_takes_numbers)
    writer = world.intake._sqlite
    assert writer is not None
    answers: list[str] = []
    original = writer.batch

    async def spy(*args: Any) -> Any:
        state, lasts = await original(*args)
        answers.append(state)
        return state, lasts

    writer.batch = spy  # type: ignore[method-assign]
    views = await asyncio.gather(*(world.create(title=f"{i}") for i in range(30)))
    assert "missed" in answers and answers.count("committed") >= 5
    numbers = sorted(v["number"] for v in views)
    assert len(set(numbers)) == 30
    counted = await stored(world)
    assert counted["ticket"] == 31 and counted["counter"] == 36  # 31 ours + 5 taken
    async with world.db.read() as conn:
        in_db = sorted((await conn.execute(sa.text("SELECT number FROM ticket"))).scalars().all())
    assert in_db == sorted([f"{DAY}00001", *numbers])
    assert (await world.create())["number"] == f"{DAY}00037"  # guessed right again


async def test_a_failing_batch_out_in_front_does_not_strand_the_one_behind(
    sqlite_world: World,
) -> None:
    world = sqlite_world
    await world.create()
    world.intake._writer.max_batch = 2
    outstanding = watch_outstanding(world)
    # the same key twice: one INSERT of those fails in the process, its batch is halved
    keys = {5: IdempotencySpec("agent", "k", "h1"), 6: IdempotencySpec("agent", "k", "h2")}
    creates = [world.intake.create(ticket(i), keys.get(i)) for i in range(20)]
    results = await asyncio.gather(*creates, return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 1 and isinstance(failed[0], sqlite3.IntegrityError)
    ok = [r["number"] for r in results if isinstance(r, dict)]
    assert len(ok) == 19 and len(set(ok)) == 19
    assert max(outstanding) == 2
    counted = await stored(world)
    assert counted["ticket"] == 20 and counted["idempotency_record"] == 1
    assert counted["counter"] == 20  # a batch that failed took no number
    assert (await world.create())["number"] == f"{DAY}00021"


async def test_another_writer_gets_the_lock_while_tickets_keep_coming(
    sqlite_world: World,
) -> None:
    """A stream of tickets keeps two batches out back to back; a writer waiting for
    the write lock (a ticket move, a call step) is let in between, not after the
    stream."""
    world = sqlite_world
    await world.create()
    world.intake._writer.max_batch = 4
    done = 0

    async def client() -> None:  # one at a time, the next as soon as one is in
        nonlocal done
        for _ in range(20):
            await world.create()
            done += 1

    flood = asyncio.gather(*(client() for _ in range(16)))
    while done < 16:  # noqa: ASYNC110  (the stream is well under way)
        await asyncio.sleep(0.005)
    async with world.db.write() as conn:
        await conn.execute(sa.text("SELECT 1"))
        at = done
    await flood
    assert at < 320 - 16, "the other writer waited for the whole stream"
    assert await stored(world) == each(321)


async def test_stop_with_two_batches_out_answers_everyone_and_frees_the_lock(
    sqlite_world: World,
) -> None:
    """Every caller hears back (201 or "shutting down"), whatever was acknowledged is
    stored, nothing half-written stays, and the write lock is free afterwards."""
    world = sqlite_world
    await world.create()
    world.intake._writer.max_batch = 3
    outstanding = watch_outstanding(world)
    stopping: list[asyncio.Task[None]] = []

    def stop_when_two_are_out(batch: list[Any]) -> None:
        if not stopping and outstanding and outstanding[-1] == 2:
            stopping.append(asyncio.create_task(world.intake.stop()))

    on_build(world, stop_when_two_are_out)
    results = await asyncio.wait_for(
        asyncio.gather(*(world.create(title=f"{i}") for i in range(40)), return_exceptions=True),
        10,
    )
    assert stopping, "never had two batches out"
    await stopping[0]
    acknowledged = [r["number"] for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert refused and all("shutting down" in str(r) for r in refused)
    counted = await stored(world)
    assert counted["ticket"] >= len(acknowledged) + 1  # a batch answered late may be in
    assert counted["ticket"] == counted["ticket_event"] == counted["work_item"]
    async with world.db.read() as conn:
        in_db = set((await conn.execute(sa.text("SELECT number FROM ticket"))).scalars().all())
    assert set(acknowledged) <= in_db
    assert world.db.write_lock is None or not world.db.write_lock.locked()
    assert lock_is_free(db_path(world))


@pytest.mark.parametrize("way", ["batch", "transaction"], ids=["guessed", "two-step"])
async def test_an_answer_lost_after_commit_is_read_from_the_database_not_written_twice(
    sqlite_world: World, caplog: pytest.LogCaptureFixture, way: str
) -> None:
    """The process commits and dies before it answers (its pipe breaks, it is killed):
    the tickets are in, so their callers get their 201s and nothing is stored twice."""
    world = sqlite_world
    await world.create()
    if way == "transaction":
        world.intake._lasts = {}  # numbers unknown: the two-step way
    writer = world.intake._sqlite
    assert writer is not None
    original = getattr(writer, way)

    async def commit_then_die(*args: Any) -> Any:
        await original(*args)  # committed for real
        died = WriterProcessDied("the intake writer process exited (status -9)")
        await writer.kill(died)
        raise died

    setattr(writer, way, commit_then_die)
    with caplog.at_level(logging.WARNING, logger="ticketing.intake"):
        views = await asyncio.gather(*(world.create(title=f"{i}") for i in range(5)))
    assert sorted(v["number"] for v in views) == [f"{DAY}{i:05d}" for i in range(2, 7)]
    assert await stored(world) == each(6)
    assert any("answered from the database" in r.getMessage() for r in caplog.records)
    assert (await world.create())["number"] == f"{DAY}00007"  # a new process goes on


async def test_an_answer_lost_before_commit_still_fails_the_batch(sqlite_world: World) -> None:
    """Dead before it could commit: nothing is in, and the caller hears so (503)."""
    world = sqlite_world
    await world.create()
    writer = world.intake._sqlite
    assert writer is not None

    async def die_first(*args: Any) -> Any:
        died = WriterProcessDied("the intake writer process exited (status -9)")
        await writer.kill(died)
        raise died

    writer.batch = die_first  # type: ignore[method-assign]
    with pytest.raises(WriterProcessDied):
        await world.create(title="不会保存")
    assert await stored(world) == each(1)


def lose_the_first_commit_answer(world: World) -> list[bool]:
    """The first write transaction commits, then its caller hears the connection go."""
    original = world.db.write
    lost: list[bool] = []

    @contextlib.asynccontextmanager
    async def commit_then_lose_the_answer() -> AsyncIterator[Any]:
        async with original() as conn:
            yield conn
        if not lost:
            lost.append(True)
            raise StoreUnavailable("connection was closed in the middle of operation")

    world.db.write = commit_then_lose_the_answer  # type: ignore[method-assign]
    return lost


@pytest.mark.postgres
async def test_on_postgresql_a_commit_whose_answer_was_lost_is_not_written_twice(
    pg_url: str,
) -> None:
    """The connection drops during COMMIT after the server committed: the batch is
    found by its first ticket's number and hash, and nobody writes it again."""
    async for world in open_world(pg_url):
        await world.create()
        lost = lose_the_first_commit_answer(world)
        views = await asyncio.gather(*(world.create(title=f"{i}") for i in range(4)))
        assert lost
        assert sorted(v["number"] for v in views) == [f"{DAY}{i:05d}" for i in range(2, 6)]
        assert (await stored(world))["ticket"] == 5
