"""Event bus: local fan-out, and PostgreSQL LISTEN/NOTIFY between two real instances."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from ticketing.bus import EventBus, InProcessBus, PostgresBus, make_bus
from ticketing.events import DomainEvent, SessionRevoked, TicketCreated, TicketTransitioned

TIMEOUT = 5.0


def _created(number: str = "T-1", category: str | None = "roads") -> TicketCreated:
    return TicketCreated(
        number=number, kind="complaint", channel="phone", category=category, urgency="normal"
    )


def _collector() -> tuple[asyncio.Queue[DomainEvent], Callable[[DomainEvent], Awaitable[None]]]:
    queue: asyncio.Queue[DomainEvent] = asyncio.Queue()

    async def handler(event: DomainEvent) -> None:
        queue.put_nowait(event)

    return queue, handler


def _listening(bus: EventBus) -> asyncio.Queue[DomainEvent]:
    """What `bus` delivers to its local subscribers, from now on."""
    queue, handler = _collector()
    bus.subscribe(handler)
    return queue


async def _next(queue: asyncio.Queue[DomainEvent]) -> DomainEvent:
    return await asyncio.wait_for(queue.get(), TIMEOUT)


# --- in process -------------------------------------------------------------------------


async def test_in_process_subscriber_receives_event() -> None:
    bus = InProcessBus()
    await bus.start()
    queue, handler = _collector()
    bus.subscribe(handler)
    await bus.publish(_created())
    assert queue.get_nowait() == _created()
    await bus.stop()


async def test_in_process_unsubscribe() -> None:
    bus = InProcessBus()
    queue, handler = _collector()
    unsubscribe = bus.subscribe(handler)
    unsubscribe()
    unsubscribe()  # twice is harmless
    await bus.publish(_created())
    assert queue.empty()


async def test_in_process_failing_subscriber_is_isolated(caplog: pytest.LogCaptureFixture) -> None:
    bus = InProcessBus()

    async def broken(event: DomainEvent) -> None:
        raise RuntimeError("console went away")

    queue, handler = _collector()
    bus.subscribe(broken)
    bus.subscribe(handler)
    with caplog.at_level(logging.ERROR, logger="ticketing.bus"):
        await bus.publish(_created())  # does not raise
    assert queue.get_nowait() == _created()
    assert any("console went away" in (r.exc_text or "") for r in caplog.records)


# --- make_bus ---------------------------------------------------------------------------


async def test_make_bus_chooses_by_url() -> None:
    pg = make_bus("postgresql+asyncpg://hotline@db.example:5432/hotline")
    assert isinstance(pg, PostgresBus)
    assert pg.dsn == "postgresql://hotline@db.example:5432/hotline"
    assert isinstance(make_bus("sqlite+aiosqlite:///var/hotline.db"), InProcessBus)
    for bus in (pg, InProcessBus()):
        assert isinstance(bus, EventBus)


# --- PostgreSQL -------------------------------------------------------------------------


@pytest.fixture
async def two_buses(pg_dsn: str) -> AsyncIterator[tuple[PostgresBus, PostgresBus]]:
    a = PostgresBus(pg_dsn, instance_id="a")
    b = PostgresBus(pg_dsn, instance_id="b")
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await a.stop()
        await b.stop()


@pytest.mark.postgres
async def test_pg_event_reaches_other_instance_and_self_once(
    two_buses: tuple[PostgresBus, PostgresBus],
) -> None:
    a, b = two_buses
    qa, qb = _listening(a), _listening(b)

    await a.publish(_created("T-1"))
    assert qa.get_nowait() == _created("T-1")  # local delivery is immediate
    assert await _next(qb) == _created("T-1")

    # A's own echo was queued on A's listener before B's reply; once the reply is in,
    # the echo must have been seen and dropped.
    reply = SessionRevoked(token_hash="abc")
    await b.publish(reply)
    assert await _next(qa) == reply
    assert qa.empty()
    assert qb.get_nowait() == reply
    assert qb.empty()


@pytest.mark.postgres
async def test_pg_a_batch_is_one_statement_and_arrives_in_order(
    two_buses: tuple[PostgresBus, PostgresBus],
) -> None:
    a, b = two_buses
    qa, qb = _listening(a), _listening(b)
    batch = [_created(f"T-{i}") for i in range(40)]
    publisher = a._publisher  # counting its statements from outside
    assert publisher is not None
    sent: list[str] = []
    publisher.add_query_logger(lambda record: sent.append(record.query))
    await a.publish_many(batch)
    await a.publish_many([])  # nothing to say: no statement
    await asyncio.sleep(0)  # asyncpg calls query loggers soon, not at once
    assert len(sent) == 1, sent
    assert [qa.get_nowait() for _ in batch] == batch  # local delivery first, in order
    assert [await _next(qb) for _ in batch] == batch  # the other instance: same order
    assert qa.empty() and qb.empty()  # and our own echoes dropped


@pytest.mark.postgres
async def test_pg_an_oversized_event_refuses_its_whole_batch(
    two_buses: tuple[PostgresBus, PostgresBus],
) -> None:
    a, b = two_buses
    qa, qb = _listening(a), _listening(b)
    with pytest.raises(ValueError, match="bytes"):
        await a.publish_many([_created("T-1"), _created(category="道路" * 1350)])
    await a.publish(_created("T-2"))  # the bus goes on
    assert await _next(qb) == _created("T-2")
    assert qa.get_nowait() == _created("T-2") and qa.empty() and qb.empty()


@pytest.mark.postgres
async def test_pg_bad_notifications_are_dropped(
    two_buses: tuple[PostgresBus, PostgresBus], pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = two_buses
    qb, hb = _collector()
    b.subscribe(hb)
    unknown = json.dumps({"origin": "elsewhere", "event": {"name": "no.such.event"}})
    missing_field = json.dumps({"origin": "elsewhere", "event": {"name": "ticket.created"}})
    raw = await asyncpg.connect(pg_dsn)
    try:
        with caplog.at_level(logging.WARNING, logger="ticketing.bus"):
            for payload in ("not json", "[1, 2]", unknown, missing_field):
                await raw.execute("SELECT pg_notify('hotline_events', $1)", payload)
            good = TicketTransitioned(
                number="T-2",
                action="dispatch",
                from_status="new",
                to_status="dispatched",
                actor="agent:7",
            )
            await a.publish(good)
            assert await _next(qb) == good
    finally:
        await raw.close()
    assert qb.empty()
    dropped = [r for r in caplog.records if "dropping bad notification" in r.getMessage()]
    assert len(dropped) >= 4  # at least B's four; A drops them too


@pytest.mark.postgres
async def test_pg_listener_reconnects_after_backend_killed(
    two_buses: tuple[PostgresBus, PostgresBus], pg_dsn: str
) -> None:
    a, b = two_buses
    qb, hb = _collector()
    b.subscribe(hb)
    old_pid = b.listener_pid
    assert old_pid is not None

    raw = await asyncpg.connect(pg_dsn)
    try:
        assert await raw.fetchval("SELECT pg_terminate_backend($1)", old_pid)
    finally:
        await raw.close()

    async def relistening() -> None:
        # Polling from outside on purpose: the bus offers no "reconnected" hook to await.
        while b.listener_pid in (None, old_pid):  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    await asyncio.wait_for(relistening(), TIMEOUT)
    await a.publish(_created("T-3"))
    assert await _next(qb) == _created("T-3")


@pytest.mark.postgres
async def test_pg_publisher_survives_killed_connection(
    two_buses: tuple[PostgresBus, PostgresBus], pg_dsn: str
) -> None:
    a, b = two_buses
    qb, hb = _collector()
    b.subscribe(hb)
    raw = await asyncpg.connect(pg_dsn)
    try:
        # Several rounds: whether the publish races the dying backend varies run to run.
        for round_ in range(5):
            # Every backend of this database but the listeners and ourselves: the publishers.
            await raw.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> ALL($1::int[])",
                [a.listener_pid, b.listener_pid, raw.get_server_pid()],
            )
            await a.publish(_created(f"T-{round_}"))
            assert await _next(qb) == _created(f"T-{round_}")
    finally:
        await raw.close()


@pytest.mark.postgres
async def test_pg_oversized_event_is_refused(two_buses: tuple[PostgresBus, PostgresBus]) -> None:
    a, _b = two_buses
    qa, ha = _collector()
    a.subscribe(ha)
    # 2,700 Chinese characters: under 8,000 characters but over 8,000 bytes in UTF-8.
    with pytest.raises(ValueError, match="bytes"):
        await a.publish(_created(category="道路" * 1350))
    assert qa.empty()  # refused before anyone saw it


@pytest.mark.postgres
async def test_pg_stop_is_clean(pg_dsn: str) -> None:
    bus = PostgresBus(pg_dsn)
    await bus.stop()  # before start: harmless
    await bus.start()
    assert bus.listener_pid is not None
    await bus.stop()
    await bus.stop()  # twice: harmless
    assert bus.listener_pid is None
    leftover = [t for t in asyncio.all_tasks() if t.get_name().startswith("PostgresBus")]
    assert leftover == []
    with pytest.raises(RuntimeError):
        await bus.publish(_created())
