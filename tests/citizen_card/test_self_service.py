"""A resident's own card by phone and in the app; what instances share: first answers to
an Idempotency-Key, and a loss report that every instance sees at once."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import web

from citizen_card import service as svc
from citizen_card.changes import ChangeFeed
from citizen_card.journal import PartnerJournal, StoredAnswer
from citizen_card.ledger import verify_receipt
from citizen_card.partner_auth import CitySigner, SqlNonceStore, SqlPartnerRegistry
from citizen_card.partner_client import sign_headers
from citizen_card.partner_routes import (
    IdempotencyInFlight,
    IdempotencyKeyReused,
    SqlIdempotencyStore,
    partner_app,
)
from citizen_card.self_service import (
    balance_by_phone,
    report_lost_by_phone,
    resident_card_routes,
    verify_holder_by_phone,
)
from citizen_card.verify import verify_token
from hotline.appkeys import CARD_DEPS
from tests.citizen_card.test_partner_api import (
    PIN,
    a_session,
    an_id_number,
    authorize,
    partner,
    resident_with_card,
    token,
    wallet_with,
)

ID_LAST6 = an_id_number(1)[-6:]


# ---------------------------------------------------------------- by phone


async def test_loss_report_by_phone_needs_id_and_pin_and_locks_after_five(api):  # type: ignore[no-untyped-def]
    _, card = await resident_with_card(api)
    deps = api.app[CARD_DEPS]
    no = card["card_no"]

    assert (await report_lost_by_phone(deps, "3100000000000", ID_LAST6, PIN)).outcome == (
        "unknown_card"
    )
    wrong_id = await report_lost_by_phone(deps, no, "000000", PIN)
    assert (wrong_id.outcome, wrong_id.tries_left) == ("wrong_pin", 4)  # same answer as a PIN
    wrong_pin = await report_lost_by_phone(deps, no, ID_LAST6, "135790")
    assert (wrong_pin.outcome, wrong_pin.tries_left) == ("wrong_pin", 3)
    ok = await report_lost_by_phone(deps, no, ID_LAST6, PIN)  # a success clears the count
    assert ok.outcome == "ok" and ok.receipt is not None and ok.receipt.isdigit()
    receipt = svc.verify_detached(deps.service_key.public_key(), ok.signed or "")
    assert (receipt["receipt"], receipt["channel"]) == (ok.receipt, "ivr")
    assert (await svc.get_card(deps, no)).status == "lost"
    assert (await report_lost_by_phone(deps, no, ID_LAST6, PIN)).outcome == "refused"

    for left in (4, 3, 2, 1):
        reply = await report_lost_by_phone(deps, no, ID_LAST6, "135790")
        assert (reply.outcome, reply.tries_left) == ("wrong_pin", left)
    assert (await report_lost_by_phone(deps, no, ID_LAST6, "135790")).outcome == "locked"
    # locked: even the right PIN is refused until a counter resets it
    assert (await report_lost_by_phone(deps, no, ID_LAST6, PIN)).outcome == "locked"
    assert (await svc.get_card(deps, no)).pin_failures == 5


async def test_balance_by_phone(api):  # type: ignore[no-untyped-def]
    resident, card = await resident_with_card(api)
    await wallet_with(api, resident, 1_234)
    deps = api.app[CARD_DEPS]
    reply = await balance_by_phone(deps, card["card_no"], PIN, channel="wechat")
    assert (reply.outcome, reply.balance_fen) == ("ok", 1_234)
    assert (await balance_by_phone(deps, card["card_no"], "135790")).outcome == "wrong_pin"


# ---------------------------------------------------------------- in the app


async def app_client(api, aiohttp_client):  # type: ignore[no-untyped-def]
    """The app routes behind a stand-in sign-in: header X-Resident names the resident."""
    deps = api.app[CARD_DEPS]

    async def resolve(request: web.Request) -> int:
        who = request.headers.get("X-Resident", "")
        if not who.isdigit():
            raise web.HTTPUnauthorized()
        return int(who)

    app = web.Application()
    app.add_routes(
        [web.route(r.method, r.path, r.handler) for r in resident_card_routes(deps, resolve)]
    )
    return await aiohttp_client(app)


async def test_the_app_shows_only_the_signed_in_residents_card(api, aiohttp_client):  # type: ignore[no-untyped-def]
    alice, card = await resident_with_card(api, 1)
    bob, _ = await resident_with_card(api, 2)
    await wallet_with(api, alice, 500)
    http = await app_client(api, aiohttp_client)
    me = {"X-Resident": str(alice["id"])}

    r = await http.get("/api/v1/app/cards", headers=me)
    assert r.status == 200
    assert [c["card_no"] for c in (await r.json())["items"]] == [card["card_no"]]
    r = await http.get("/api/v1/app/wallet", headers=me)
    body = await r.json()
    assert (r.status, body["balance_fen"], body["lines"][0]["amount_fen"]) == (200, 500, 500)

    r = await http.get(f"/api/v1/app/cards/{card['card_no']}/token?purpose=transit", headers=me)
    assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
    token = (await r.json())["token"]
    deps = api.app[CARD_DEPS]
    verdict = verify_token(
        token,
        svc.trust_list(deps),
        await svc.status_list(deps),
        "transit",
        root_key=deps.keyring.root_public_pem(),
    )
    assert verdict.valid, verdict.reason
    r = await http.get(f"/api/v1/app/cards/{card['card_no']}/qr.png", headers=me)
    assert (r.status, r.content_type) == (200, "image/png")

    bobs = {"X-Resident": str(bob["id"])}
    r = await http.get(f"/api/v1/app/cards/{card['card_no']}/token", headers=bobs)
    assert r.status == 404  # not 403: a card number is not confirmed to exist
    assert (await http.get("/api/v1/app/cards")).status == 401

    r = await http.post(f"/api/v1/app/cards/{card['card_no']}/report-lost", headers=me)
    assert r.status == 200
    assert (await r.json())["channel"] == "app"
    r = await http.get(f"/api/v1/app/cards/{card['card_no']}/token", headers=me)
    assert r.status == 409  # a lost card issues no tokens


# ---------------------------------------------------------------- shared between instances


async def test_idempotency_keys_are_shared_between_instances(api):  # type: ignore[no-untyped-def]
    deps = api.app[CARD_DEPS]
    one = SqlIdempotencyStore(PartnerJournal(deps.engine, write_lock=deps.write_lock))
    two = SqlIdempotencyStore(PartnerJournal(deps.engine, write_lock=deps.write_lock))
    try:
        assert await one.begin("shop", "k1", "f" * 64) is None  # claimed
        with pytest.raises(IdempotencyInFlight):
            await two.begin("shop", "k1", "f" * 64)
        with pytest.raises(IdempotencyKeyReused):
            await two.begin("shop", "k1", "e" * 64)
        answer = StoredAnswer(201, b'{"ok":true}', "application/json")
        durable = await one.complete("shop", "k1", answer)
        await durable
        assert await two.begin("shop", "k1", "f" * 64) == answer
        assert await two.begin("bus", "k1", "e" * 64) is None  # keys are per partner
        await two.abandon("bus", "k1")  # nothing done: a retry runs again
        assert await one.begin("bus", "k1", "d" * 64) is None
    finally:
        await one.journal.stop()
        await two.journal.stop()


async def test_a_loss_report_reaches_the_other_instances_cache_at_once(api):  # type: ignore[no-untyped-def]
    _, card = await resident_with_card(api)
    here = api.app[CARD_DEPS]
    # another instance: the same database, its own caches, linked by a (stand-in) bus
    there = dataclasses.replace(here, changes=ChangeFeed())

    async def bus(topic: str, key: str) -> None:
        there.changes.received(topic, key)

    here.changes.publish, saved = bus, here.changes.publish
    try:
        index = (await svc.get_card(here, card["card_no"])).status_index
        assert (await svc.card_by_status_index(there, index)).status == "active"
        version = await svc.status_version(there)
        await svc.report_lost(here, card["card_no"], actor="t", channel="counter")
        assert (await svc.card_by_status_index(there, index)).status == "lost"
        assert await svc.status_version(there) == version + 1
    finally:
        here.changes.publish = saved


async def test_without_the_bus_a_stale_card_lives_at_most_the_ttl(api):  # type: ignore[no-untyped-def]
    _, card = await resident_with_card(api)
    here = api.app[CARD_DEPS]
    there = dataclasses.replace(here, changes=ChangeFeed(), card_cache_ttl_s=0.2)
    index = (await svc.get_card(here, card["card_no"])).status_index
    assert (await svc.card_by_status_index(there, index)).status == "active"
    await svc.report_lost(here, card["card_no"], actor="t", channel="counter")
    await asyncio.sleep(0.25)  # the TTL, with nobody to tell "there"
    assert (await svc.card_by_status_index(there, index)).status == "lost"


async def test_receipts_show_each_partner_its_own_wallet_handle(api):  # type: ignore[no-untyped-def]
    resident, card = await resident_with_card(api)
    await wallet_with(api, resident, 1_000)
    receipts: dict[str, Any] = {}
    for name in ("shop", "cafe"):
        client = await partner(api, name, "merchant", "pay")
        pay = {"authorization": await authorize(client, api, card["card_no"]), "amount": 100}
        status, body = await client.request(
            "POST", "/partner/v1/payments", json=pay, idempotency_key="o1"
        )
        assert status == 201, body
        receipts[name] = verify_receipt(body["receipt"], svc.receipt_public_pem(api.app[CARD_DEPS]))
    wallet_handles = {
        name: next(a["handle"] for a in r["accounts"] if a["amount"] < 0)
        for name, r in receipts.items()
    }
    assert wallet_handles["shop"] != wallet_handles["cafe"]
    assert resident["handle"] not in wallet_handles.values()


async def test_a_replayed_request_is_refused_after_or_before_its_handler(api):  # type: ignore[no-untyped-def]
    """A call that changes nothing records its nonce with its audit row (one commit):
    a replay is still refused, and its audit row says so. A payment's nonce is
    recorded with the payment on PostgreSQL (a replay is audited as refused too), on
    SQLite before anything runs: either way a replay pays nothing."""
    resident, card = await resident_with_card(api)
    await wallet_with(api, resident, 1_000)
    metro = await partner(api, "metro", "transit", "transit")
    shop = await partner(api, "shop", "merchant", "pay")
    session = a_session()

    async def twice(client, path: str, body: dict, key: str | None = None):  # type: ignore[no-untyped-def]
        url = str(api.client.make_url(path))
        raw = json.dumps(body).encode()
        headers = sign_headers(
            "POST",
            url,
            raw,
            partner_id=client.partner_id,
            key_id="k1",
            private_key=client.private_key,
        )
        headers["Content-Type"] = "application/json"
        if key:
            headers["Idempotency-Key"] = key
        out = []
        for _ in range(2):
            r = await session.post(url, data=raw, headers=headers)
            out.append((r.status, await r.json()))
        return out

    tok = await token(api, card["card_no"], "transit")
    first, again = await twice(
        metro, "/partner/v1/tokens/verify", {"token": tok, "purpose": "transit"}
    )
    assert first == (200, {"valid": True, "reason": "ok", "concession": "adult"})
    assert (again[0], again[1]["type"]) == (401, "/problems/partner-replayed_nonce")

    pay = {"token": await token(api, card["card_no"], "pay"), "amount": 100}
    first, again = await twice(shop, "/partner/v1/payments", pay, key="order-9")
    assert first[0] == 201
    assert (again[0], again[1]["type"]) == (401, "/problems/partner-replayed_nonce")
    deps = api.app[CARD_DEPS]
    wallet = await svc.wallet_of(deps, resident["id"])
    assert await deps.ledger.balance(wallet) == 900

    async with deps.read() as conn:
        rows = (
            await conn.execute(
                sa.select(svc.event_t)
                .where(svc.event_t.c.channel == "partner")
                .order_by(svc.event_t.c.id)
            )
        ).all()
    seen = [(r.action, r.data["status"], r.card_no, r.data.get("refused")) for r in rows]
    assert seen == [
        ("tokens.verify", 200, card["card_no"], None),
        ("tokens.verify", 401, "", "replayed_nonce"),  # nothing of the card recorded
        ("payments", 201, card["card_no"], None),
        *([("payments", 401, "", "replayed_nonce")] if deps.ledger.takes_riders else []),
    ]


async def test_another_instance_answers_a_retry_from_the_shared_store(api, aiohttp_client):  # type: ignore[no-untyped-def]
    """The service's own idempotency store is in the database: a retry that reaches
    another instance gets the first answer byte for byte, a changed body 422."""
    resident, card = await resident_with_card(api)
    await wallet_with(api, resident, 1_000)
    shop = await partner(api, "shop", "merchant", "pay")
    pay = {"token": await token(api, card["card_no"], "pay"), "amount": 100}
    status, first = await shop.request(
        "POST", "/partner/v1/payments", json=pay, idempotency_key="x"
    )
    assert status == 201

    deps = api.app[CARD_DEPS]
    other = web.Application()
    other.add_subapp(
        "/partner/v1",
        partner_app(  # defaults, as the service builds it: SQL nonces, SQL idempotency
            deps,
            registry=SqlPartnerRegistry(deps.engine, deps.cipher),
            nonce_store=SqlNonceStore(deps.engine, write_lock=deps.write_lock),
            city_signer=CitySigner("city-service", deps.service_key),
        ),
    )
    http = await aiohttp_client(other)
    url = str(http.make_url("/partner/v1/payments"))
    raw = json.dumps(pay, separators=(",", ":")).encode()  # the same bytes as the client
    headers = sign_headers(
        "POST", url, raw, partner_id="shop", key_id="k1", private_key=shop.private_key
    )
    headers |= {"Content-Type": "application/json", "Idempotency-Key": "x"}
    r = await a_session().post(url, data=raw, headers=headers)
    assert (r.status, r.headers.get("Idempotent-Replayed")) == (201, "true")
    assert await r.json() == first
    status, body = await shop.request(
        "POST", "/partner/v1/payments", json={**pay, "amount": 99}, idempotency_key="x"
    )
    assert (status, body["type"]) == (422, "/problems/idempotency-key-reused")
    assert await deps.ledger.balance(await svc.wallet_of(deps, resident["id"])) == 900


async def test_verify_holder_for_linking_a_sign_in(api):  # type: ignore[no-untyped-def]
    """Card number + ID digits + PIN, and the phone on record must be the signed-in one."""
    deps = api.app[CARD_DEPS]
    r = await api.post(
        "/api/v1/residents",
        {"name": "李四", "id_number": an_id_number(2), "phone": "13812345678"},
    )
    assert r.status == 201, await r.text()
    resident = await r.json()
    r = await api.post(f"/api/v1/residents/{resident['id']}/cards", {"pin": PIN})
    no = (await r.json())["card_no"]
    last6 = an_id_number(2)[-6:]
    mine = deps.cipher.blind_index("+8613812345678")
    assert await verify_holder_by_phone(deps, no, last6, PIN, phone_bidx=mine) == (
        resident["id"],
        None,
    )
    _, refusal = await verify_holder_by_phone(deps, no, last6, "135790", phone_bidx=mine)
    assert refusal is not None and (refusal.outcome, refusal.tries_left) == ("wrong_pin", 4)
    other_phone = deps.cipher.blind_index("+8613900000000")
    _, refusal = await verify_holder_by_phone(deps, no, last6, PIN, phone_bidx=other_phone)
    assert refusal is not None and refusal.outcome == "refused"


def test_cache_entries_filled_together_expire_spread_out_within_the_ttl() -> None:
    """A thousand entries put in the same instant: none outlives the TTL (the bound on a
    stale card), and their expiries spread over the last half of it, so the database
    sees their refills a few at a time instead of all at once."""
    from citizen_card.changes import TtlCache

    now = [100.0]
    cache: TtlCache[int, str] = TtlCache(1.0, clock=lambda: now[0])
    for k in range(1000):
        cache.put(k, "row")
    alive = []
    for step in range(11):  # 0.0, 0.1, ... 1.0 s later
        now[0] = 100.0 + step / 10
        alive.append(sum(cache.get(k)[0] for k in range(1000)))
    assert alive[:5] == [1000] * 5  # the first half of the TTL: every entry lives
    assert alive[10] == 0  # at the TTL: none
    assert 1000 > alive[6] > alive[8] > 0  # in between, a few at a time
    with pytest.raises(ValueError):
        TtlCache(1.0, jitter=1.0)
