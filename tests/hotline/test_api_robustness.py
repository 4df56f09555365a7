"""Retries, bad input and a lost database: clear answers, nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from hotline.appkeys import DEPS

PROBLEM = "application/problem+json"
TICKET = {
    "kind": "complaint",
    "title": "路灯不亮",
    "description": "幸福小区南门路灯不亮",
    "channel": "phone",
    "category": "urban.street-lights",
}


async def ticket_count(api) -> int:  # type: ignore[no-untyped-def]
    r = await api.get("/api/v1/tickets", params={"limit": "200"})
    assert r.status == 200
    return len((await r.json())["items"])


async def assert_problem(r, status: int, slug: str) -> dict:  # type: ignore[no-untyped-def]
    assert r.status == status, await r.text()
    assert r.content_type == PROBLEM
    body = await r.json()
    assert body["type"] == f"/problems/{slug}"
    assert isinstance(body["title"], str) and body["title"]
    assert body["status"] == status
    return body


# ---------------------------------------------------------------- Idempotency-Key


async def test_same_key_and_body_twice_creates_one_ticket(api):
    key = {"Idempotency-Key": "call-7f3a-1"}
    first = await api.post("/api/v1/tickets", TICKET, headers=key)
    assert first.status == 201
    assert "Idempotent-Replayed" not in first.headers

    again = await api.post("/api/v1/tickets", TICKET, headers=key)
    assert again.status == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await again.json() == await first.json()
    assert await ticket_count(api) == 1


async def test_same_key_with_a_different_body_is_422(api):
    key = {"Idempotency-Key": "call-7f3a-2"}
    assert (await api.post("/api/v1/tickets", TICKET, headers=key)).status == 201
    r = await api.post("/api/v1/tickets", {**TICKET, "title": "路灯又不亮"}, headers=key)
    assert r.status == 422
    assert r.content_type == PROBLEM
    assert await r.json() == {
        "type": "/problems/idempotency-key-reuse",
        "title": "This Idempotency-Key was used for a different request",
        "status": 422,
        "detail": "send a new Idempotency-Key for a different request",
    }
    assert await ticket_count(api) == 1


async def test_keys_belong_to_the_user_who_sent_them(sqlite_api):
    key = {"Idempotency-Key": "shared-key"}
    a = await sqlite_api.post("/api/v1/tickets", TICKET, headers=key, as_="agent")
    b = await sqlite_api.post("/api/v1/tickets", TICKET, headers=key, as_="agent2")
    assert a.status == b.status == 201
    assert "Idempotent-Replayed" not in b.headers
    assert (await a.json())["number"] != (await b.json())["number"]


async def test_ten_concurrent_requests_with_one_key_make_one_ticket(api):
    key = {"Idempotency-Key": "burst-1"}
    await api.token("agent")
    responses = await asyncio.gather(
        *(api.post("/api/v1/tickets", TICKET, headers=key) for _ in range(10))
    )
    assert [r.status for r in responses] == [201] * 10
    bodies = [await r.json() for r in responses]
    assert len({b["number"] for b in bodies}) == 1
    replayed = [r.headers.get("Idempotent-Replayed") for r in responses]
    assert replayed.count("true") == 9
    assert await ticket_count(api) == 1


async def test_a_retried_move_replays_instead_of_409(api):
    t = await api.new_ticket()
    path = f"/api/v1/tickets/{t['number']}/dispatch"
    key = {"Idempotency-Key": "dispatch-1"}
    first = await api.post(path, {}, headers=key)
    assert first.status == 200
    again = await api.post(path, {}, headers=key)
    assert again.status == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await again.json() == await first.json()
    # without the key the same move is refused: the ticket is already dispatched
    r = await api.post(path, {})
    assert r.status == 409
    events = (await (await api.get(f"/api/v1/tickets/{t['number']}/events")).json())["items"]
    assert [e["action"] for e in events] == ["create", "dispatch"]


async def test_key_reuse_is_caught_without_a_content_type_too(sqlite_api):
    """A body without Content-Type is read as JSON, so it is part of the key's request."""

    async def send(body: dict):  # type: ignore[no-untyped-def]
        return await sqlite_api.client.post(
            "/api/v1/tickets",
            data=json.dumps(body).encode(),
            headers={**await sqlite_api.headers("agent"), "Idempotency-Key": "no-ctype"},
            skip_auto_headers=["Content-Type"],
        )

    assert (await send(TICKET)).status == 201
    r = await send({**TICKET, "title": "别的事"})
    await assert_problem(r, 422, "idempotency-key-reuse")
    assert await ticket_count(sqlite_api) == 1


async def test_a_failed_request_does_not_burn_its_key(sqlite_api):
    key = {"Idempotency-Key": "retry-after-fix"}
    r = await sqlite_api.post("/api/v1/tickets", {**TICKET, "channel": "fax"}, headers=key)
    assert r.status == 422
    # the key was never used for a request that succeeded, so a corrected body may use it
    r = await sqlite_api.post("/api/v1/tickets", {**TICKET, "channel": "fax"}, headers=key)
    assert r.status == 422
    assert "Idempotent-Replayed" not in r.headers


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there"])
async def test_an_unusable_key_is_422(sqlite_api, key):
    r = await sqlite_api.post("/api/v1/tickets", TICKET, headers={"Idempotency-Key": key})
    body = await assert_problem(r, 422, "validation-error")
    assert body["errors"] == [
        {"field": "Idempotency-Key", "message": "1 to 255 printable ASCII characters"}
    ]
    assert await ticket_count(sqlite_api) == 0


# ---------------------------------------------------------------- problem shapes


async def raw_post(api, path: str, data: bytes, ctype: str = "application/json"):  # type: ignore[no-untyped-def]
    return await api.client.post(
        path, data=data, headers={**await api.headers("agent"), "Content-Type": ctype}
    )


async def test_garbled_json_is_400(sqlite_api):
    r = await raw_post(sqlite_api, "/api/v1/tickets", b'{"kind": "complaint",')
    assert await r.json() == {
        "type": "/problems/malformed-body",
        "title": "The request body could not be read",
        "status": 400,
        "detail": "invalid JSON: Expecting property name enclosed in double quotes at 21",
    }
    assert r.content_type == PROBLEM


async def test_a_body_that_is_not_utf8_is_400(sqlite_api):
    r = await raw_post(sqlite_api, "/api/v1/tickets", '{"title": "路灯"}'.encode("gbk"))
    body = await assert_problem(r, 400, "malformed-body")
    assert body["detail"] == "the body is not UTF-8"


async def test_a_json_array_is_400(sqlite_api):
    r = await raw_post(sqlite_api, "/api/v1/tickets", b"[1, 2, 3]")
    body = await assert_problem(r, 400, "malformed-body")
    assert body["detail"] == "the body must be a JSON object"


async def test_deeply_nested_json_is_400_not_500(sqlite_api):
    r = await raw_post(sqlite_api, "/api/v1/tickets", b"[" * 100_000 + b"]" * 100_000)
    body = await assert_problem(r, 400, "malformed-body")
    assert body["detail"] == "the JSON is nested too deeply"
    r = await raw_post(sqlite_api, "/api/v1/tickets", b'{"a":' * 50_000 + b"1" + b"}" * 50_000)
    await assert_problem(r, 400, "malformed-body")


async def test_a_wrong_content_type_is_415(sqlite_api):
    r = await raw_post(sqlite_api, "/api/v1/tickets", b"kind=complaint", "text/plain")
    assert await r.json() == {
        "type": "/problems/unsupported-media-type",
        "title": "Unsupported content type",
        "status": 415,
        "detail": "send application/json, not text/plain",
    }
    assert r.content_type == PROBLEM


async def test_a_move_without_any_body_or_content_type_is_accepted(sqlite_api):
    """`curl -X POST .../dispatch` sends no body and no Content-Type: that means {}."""
    t = await sqlite_api.new_ticket()
    r = await sqlite_api.client.post(
        f"/api/v1/tickets/{t['number']}/dispatch",
        headers=await sqlite_api.headers("agent"),
        skip_auto_headers=["Content-Type"],
    )
    assert r.status == 200, await r.text()
    assert (await r.json())["status"] == "dispatched"
    # an explicitly declared non-JSON type is still refused
    r = await raw_post(sqlite_api, f"/api/v1/tickets/{t['number']}/supervise", b"", "text/plain")
    await assert_problem(r, 415, "unsupported-media-type")


async def test_an_unknown_field_is_422_naming_it(sqlite_api):
    r = await sqlite_api.post("/api/v1/tickets", {**TICKET, "prioirty": 1, "colour": "red"})
    assert r.status == 422
    assert await r.json() == {
        "type": "/problems/validation-error",
        "title": "Some fields are not valid",
        "status": 422,
        "errors": [
            {"field": "prioirty", "message": "unknown field"},
            {"field": "colour", "message": "unknown field"},
        ],
    }
    r = await sqlite_api.post("/api/v1/tickets", {**TICKET, "contact": {"email": "a@b.cn"}})
    assert (await r.json())["errors"] == [{"field": "contact.email", "message": "unknown field"}]


async def test_a_body_over_the_limit_is_413(sqlite_api):
    big = b'{"description": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    r = await raw_post(sqlite_api, "/api/v1/tickets", big)
    assert await r.json() == {
        "type": "/problems/payload-too-large",
        "title": "The request body is too large",
        "status": 413,
        "detail": "the body is larger than 1048576 bytes",
    }
    assert r.content_type == PROBLEM
    # with an Idempotency-Key the body is read earlier, by the idempotency check
    r = await sqlite_api.client.post(
        "/api/v1/tickets",
        data=big,
        headers={
            **await sqlite_api.headers("agent"),
            "Content-Type": "application/json",
            "Idempotency-Key": "big-1",
        },
    )
    await assert_problem(r, 413, "payload-too-large")
    r = await sqlite_api.client.post(
        "/api/v1/auth/login", data=big, headers={"Content-Type": "application/json"}
    )
    await assert_problem(r, 413, "payload-too-large")
    assert await ticket_count(sqlite_api) == 0


async def test_an_unknown_route_is_404_problem(sqlite_api):
    for path in ("/api/v1/nothing-here", "/api/v2/tickets", "/favicon.ico"):
        r = await sqlite_api.get(path)
        await assert_problem(r, 404, "not-found")


async def test_a_wrong_method_is_405_problem_with_allow(sqlite_api):
    r = await sqlite_api.client.delete("/api/v1/tickets")
    assert await r.json() == {
        "type": "/problems/method-not-allowed",
        "title": "Method not allowed",
        "status": 405,
    }
    assert r.content_type == PROBLEM
    assert set(r.headers["Allow"].split(",")) == {"GET", "HEAD", "POST"}
    r = await sqlite_api.client.put("/healthz")
    await assert_problem(r, 405, "method-not-allowed")


async def test_every_error_is_problem_json(sqlite_api):
    api = sqlite_api
    t = await api.new_ticket()
    n = t["number"]
    cases = [
        (api.get("/api/v1/tickets", as_=None, headers={"Authorization": "Bearer x"}), 401),
        (api.post("/api/v1/tickets", TICKET, as_="urban"), 403),
        (api.get("/api/v1/tickets/2020010100001"), 404),
        (api.get("/problems/no-such-problem", as_=None), 404),
        (api.client.patch("/api/v1/tickets"), 405),
        (api.post(f"/api/v1/tickets/{n}/sign", {}, as_="agent"), 403),
        (api.post(f"/api/v1/tickets/{n}/follow-up", {"satisfaction": "satisfied"}), 409),
        (raw_post(api, "/api/v1/tickets", b"{"), 400),
        (raw_post(api, "/api/v1/tickets", b"<xml/>", "application/xml"), 415),
        (api.post("/api/v1/tickets", {}), 422),
        (api.get("/api/v1/tickets", params={"limit": "0"}), 422),
    ]
    for req, status in cases:
        r = await req
        assert r.status == status, (status, await r.text())
        assert r.content_type == PROBLEM
        body = await r.json()
        assert {"type", "title", "status"} <= set(body)
        assert body["type"].startswith("/problems/")
        assert body["status"] == status
        # the type resolves to a page that explains it
        doc = await api.client.get(body["type"])
        assert doc.status == 200
        assert (await doc.json())["status"] == status


# ---------------------------------------------------------------- the database goes away


async def test_database_unavailable_is_503_and_nothing_is_half_written(api):
    await api.new_ticket()
    t = await api.new_ticket()
    assert (await api.get("/api/v1/auth/me")).status == 200  # session now cached
    assert (await api.get("/api/v1/auth/me", as_="urban")).status == 200

    db = api.app[DEPS].db
    real_engine, real_is_sqlite = db.engine, db.is_sqlite
    db.engine = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:1/x")
    db.is_sqlite = False
    try:
        r = await api.post("/api/v1/tickets", TICKET)
        assert r.status == 503
        assert r.headers["Retry-After"] == "5"
        assert await r.json() == {
            "type": "/problems/service-unavailable",
            "title": "The service cannot reach its database; retry shortly",
            "status": 503,
        }
        assert r.content_type == PROBLEM
        r = await api.post("/api/v1/tickets", TICKET, headers={"Idempotency-Key": "down-1"})
        await assert_problem(r, 503, "service-unavailable")
        for req in (
            api.get("/api/v1/tickets"),
            api.get(f"/api/v1/tickets/{t['number']}"),
            api.post(f"/api/v1/tickets/{t['number']}/dispatch", {}),
            api.client.post(
                "/api/v1/auth/login", json={"username": "water", "password": "whatever-1"}
            ),
        ):
            r = await req
            await assert_problem(r, 503, "service-unavailable")
            assert "Retry-After" in r.headers

        r = await api.get("/readyz", as_=None)
        await assert_problem(r, 503, "service-unavailable")
        assert r.headers["Retry-After"] == "5"
        r = await api.get("/healthz", as_=None)
        assert r.status == 200
        assert await r.json() == {"status": "ok"}
    finally:
        await db.engine.dispose()
        db.engine, db.is_sqlite = real_engine, real_is_sqlite

    assert (await api.get("/readyz", as_=None)).status == 200
    assert await ticket_count(api) == 2
    r = await api.get(f"/api/v1/tickets/{t['number']}")
    assert (await r.json())["status"] == "new"
    # the intake writer survived: the next ticket goes through
    assert (await api.post("/api/v1/tickets", TICKET)).status == 201
    assert await ticket_count(api) == 3
    # the key used while the database was down was not burned
    r = await api.post("/api/v1/tickets", TICKET, headers={"Idempotency-Key": "down-1"})
    assert r.status == 201
    assert "Idempotent-Replayed" not in r.headers


# ---------------------------------------------------------------- what the HTTP parser refuses


async def _raw_exchange(api, request: bytes) -> tuple[int, str, bytes]:  # type: ignore[no-untyped-def]
    """Send bytes no HTTP client would, and read the whole answer (the server closes)."""
    server = api.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), headers.get("Content-Type", ""), body


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n",
        b"POST /api/v1/tickets HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["not-http", "header-over-8k", "bad-chunk-size"],
)
async def test_what_the_http_parser_refuses_is_problem_json(sqlite_api, request_bytes):
    """aiohttp answers these itself, before any middleware: still problem+json, and the
    service goes on serving."""
    status, ctype, body = await _raw_exchange(sqlite_api, request_bytes)
    assert status == 400
    assert ctype.split(";")[0] == PROBLEM
    doc = json.loads(body)
    assert doc["type"] == "/problems/malformed-request"
    assert doc["status"] == 400 and doc["title"]
    r = await sqlite_api.get("/healthz")
    assert r.status == 200


async def test_a_flood_of_malformed_requests_does_not_fill_the_error_log(sqlite_api, caplog):
    """Scanners and TLS sent to the HTTP port are the client's fault: one INFO line each,
    no traceback, so a real fault still stands out in the ERROR log."""
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    for _ in range(3):
        await _raw_exchange(
            sqlite_api, b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 9000 + b"\r\n\r\n"
        )
    await _raw_exchange(sqlite_api, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n")
    server_records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert server_records, "the refusals are still logged"
    assert all(r.levelno < logging.WARNING for r in server_records)
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in server_records)
