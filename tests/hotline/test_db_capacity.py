"""PostgreSQL out of connection slots: every API answers 503 with Retry-After (the
client retries), never 500 (which says the city has a bug), and the log gets one line
per refusal instead of a traceback each. Found by running the staff token route while
another process held every connection slot: 29 of 40 requests were 500s."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from hotline.appkeys import CARD_DEPS, DEPS
from tests.citizen_card.test_card_api import register
from tests.hotline.test_api_robustness import TICKET
from ticketing.store import is_unavailable


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_a_database_out_of_connection_slots_is_503_not_500(
    api, capped_pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    t = await api.new_ticket()
    resident = await register(api)
    r = await api.post(f"/api/v1/residents/{resident['id']}/cards", {"pin": "246813"})
    assert r.status == 201, await r.text()
    card_no = (await r.json())["card_no"]
    for who in ("agent", "admin"):  # signed in before: the sessions are cached
        assert (await api.get("/api/v1/auth/me", as_=who)).status == 200
    db, card = api.app[DEPS].db, api.app[CARD_DEPS]
    real = db.engine, card.engine
    capped = create_async_engine(capped_pg_url)
    db.engine = card.engine = capped
    caplog.set_level(logging.INFO)
    try:
        for req in (
            api.post("/api/v1/tickets", TICKET),
            api.get("/api/v1/tickets"),
            api.get(f"/api/v1/tickets/{t['number']}"),
            api.get(f"/api/v1/residents/{resident['id']}", as_="admin"),
            api.get(f"/api/v1/cards/{card_no}", as_="admin"),
            # the staff token route: where the benchmark first met the 500s
            api.get(f"/api/v1/cards/{card_no}/token", params={"purpose": "transit"}),
            api.client.get("/open311/v2/requests.json"),  # Open311's own error format
        ):
            r = await req
            assert r.status == 503, await r.text()
            assert r.headers["Retry-After"] == "5"
            if r.url.path.startswith("/open311/"):
                assert await r.json() == [
                    {"code": 503, "description": "the service cannot reach its database; retry"}
                ]
                continue
            assert r.content_type == "application/problem+json"
            assert (await r.json())["type"] == "/problems/service-unavailable"
    finally:
        db.engine, card.engine = real
        await capped.dispose()
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert any("database unavailable" in rec.getMessage() for rec in caplog.records)
    # the database is back: so is the service
    assert (await api.get(f"/api/v1/tickets/{t['number']}")).status == 200


def test_unavailable_errors_are_told_by_their_sqlstate() -> None:
    import asyncpg
    from sqlalchemy.exc import DBAPIError, IntegrityError

    from citizen_card.dberrors import unavailable

    slots = asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already")
    shutdown = asyncpg.exceptions.AdminShutdownError("terminating connection")
    disk = asyncpg.exceptions.DiskFullError("could not extend file")
    unique = asyncpg.exceptions.UniqueViolationError("duplicate key")
    syntax = asyncpg.exceptions.PostgresSyntaxError("syntax error at or near")
    wrapped = DBAPIError("SELECT 1", {}, slots)
    wrapped.orig.sqlstate = slots.sqlstate  # type: ignore[union-attr]
    for check in (is_unavailable, unavailable):
        assert check(slots) and check(shutdown) and check(disk)
        assert check(wrapped)
        assert not check(unique) and not check(syntax)
        assert not check(IntegrityError("INSERT", {}, unique)) or check is is_unavailable
        assert check(ConnectionRefusedError())


def test_a_background_pass_logs_an_unreachable_database_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The outbox, the deadline watcher, the ACD tick and the other loops retry on their
    own: a database out of slots is a WARNING line each pass, a bug keeps its traceback."""
    import asyncpg

    from ticketing.store import log_pass_failure

    log = logging.getLogger("test.loop")
    caplog.set_level(logging.INFO, logger="test.loop")
    slots = asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already")
    log_pass_failure(log, slots, "outbox pass failed; retrying in %d s", 5)
    log_pass_failure(log, KeyError("bug"), "outbox pass failed; retrying in %d s", 5)
    first, second = caplog.records
    assert (first.levelno, first.exc_info) == (logging.WARNING, None)
    assert first.getMessage() == (
        "outbox pass failed; retrying in 5 s (database unavailable: "
        "sorry, too many clients already)"
    )
    assert second.levelno == logging.ERROR and second.exc_info is not None
