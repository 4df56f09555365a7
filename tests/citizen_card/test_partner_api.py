"""The partner API end to end: partners registered by an admin, calls signed by the
reference client, answers disclosing only what each scope allows."""

from __future__ import annotations

import asyncio
import csv
import io

import aiohttp
import pytest
import sqlalchemy as sa
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from citizen_card import service as svc
from citizen_card.identity import check_char
from citizen_card.ledger import verify_detached, verify_receipt
from citizen_card.partner_auth import (
    CitySigner,
    MemoryNonceStore,
    SqlNonceStore,
    SqlPartnerRegistry,
    public_key_pem,
)
from citizen_card.partner_client import PartnerClient, sign_headers
from citizen_card.partner_routes import (
    RECONCILIATION_SIGNATURE_HEADER,
    MemoryIdempotencyStore,
    partner_app,
)
from hotline.appkeys import CARD_DEPS

PIN = "246813"
_SESSIONS: list[aiohttp.ClientSession] = []


@pytest.fixture(autouse=True)
async def _close_partner_sessions():  # type: ignore[no-untyped-def]
    yield
    while _SESSIONS:
        await _SESSIONS.pop().close()


def a_session() -> aiohttp.ClientSession:
    """A partner's own HTTP session: no staff cookie from the test client's jar."""
    session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
    _SESSIONS.append(session)
    return session


def an_id_number(serial: int = 1) -> str:
    first17 = f"11010519900307{serial:03d}"
    return first17 + check_char(first17)


async def city_key(api) -> bytes:  # type: ignore[no-untyped-def]
    r = await api.client.get("/.well-known/citizen-card/receipt-key.pem")
    assert r.status == 200
    return await r.read()


async def partner(api, partner_id: str, type_: str, *scopes: str, rate: int = 1000):  # type: ignore[no-untyped-def]
    """Register a partner through the admin API; a signing client for it."""
    key = Ed25519PrivateKey.generate()
    body = {
        "partner_id": partner_id,
        "type": type_,
        "scopes": list(scopes),
        "keys": {"k1": public_key_pem(key)},
        "rate_per_minute": rate,
    }
    r = await api.post("/api/v1/partners", body, as_="admin")
    assert r.status == 201, await r.text()
    return PartnerClient(
        str(api.client.make_url("/")),
        partner_id,
        "k1",
        private_key=key,
        city_public_key_pem=await city_key(api),
        session=a_session(),
    )


async def resident_with_card(api, serial: int = 1, **card):  # type: ignore[no-untyped-def]
    body = {
        "name": "张三丰",
        "id_number": an_id_number(serial),
        "verified_source": "counter-id-check",
    }
    r = await api.post("/api/v1/residents", body)
    assert r.status == 201, await r.text()
    resident = await r.json()
    r = await api.post(f"/api/v1/residents/{resident['id']}/cards", {"pin": PIN, **card})
    assert r.status == 201, await r.text()
    return resident, await r.json()


async def token(api, card_no: str, purpose: str) -> str:  # type: ignore[no-untyped-def]
    r = await api.get(f"/api/v1/cards/{card_no}/token?purpose={purpose}")
    assert r.status == 200, await r.text()
    return (await r.json())["token"]


async def wallet_with(api, resident: dict, fen: int) -> int:  # type: ignore[no-untyped-def]
    card = api.app[CARD_DEPS]
    wallet = (await svc.get_resident(card, resident["id"])).wallet_account_id
    await card.ledger.top_up(wallet, fen, f"topup-{resident['id']}-{fen}")
    return wallet


async def authorize(client, api, card_no: str) -> str:  # type: ignore[no-untyped-def]
    status, body = await client.request(
        "POST",
        "/partner/v1/tokens/verify",
        json={"token": await token(api, card_no, "pay"), "purpose": "pay"},
    )
    assert status == 200 and body["valid"], body
    assert set(body) == {"valid", "reason", "authorization", "expires_in"}
    return body["authorization"]


# ---------------------------------------------------------------- registry


async def test_only_admins_register_partners_and_hmac_secrets_are_shown_once(api):
    body = {"partner_id": "metro", "type": "transit", "scopes": ["transit"], "hmac": True}
    r = await api.post("/api/v1/partners", body, as_="supervisor")
    assert r.status == 403
    r = await api.post("/api/v1/partners", body, as_="admin")
    assert r.status == 201, await r.text()
    created = await r.json()
    secret = created.pop("hmac_secret")
    assert len(secret) >= 32
    assert created == {
        "partner_id": "metro",
        "type": "transit",
        "scopes": ["transit"],
        "keys": {},
        "hmac": True,
        "enabled": True,
        "rate_per_minute": 600,
    }
    r = await api.post("/api/v1/partners", body, as_="admin")
    assert r.status == 409
    r = await api.get("/api/v1/partners", as_="admin")
    assert await r.json() == {"items": [created]}  # the secret is never shown again

    metro = PartnerClient(
        str(api.client.make_url("/")),
        "metro",
        hmac_secret=secret.encode(),
        city_public_key_pem=await city_key(api),
        session=a_session(),
    )
    status, _ = await metro.request("GET", "/partner/v1/reconciliation/2026-01-01")
    assert status == 403  # signed correctly with the secret; transit holds no "pay"

    r = await api.post("/api/v1/partners/metro/disable", {}, as_="admin")
    assert r.status == 200 and (await r.json())["enabled"] is False
    status, body = await metro.request("POST", "/partner/v1/tokens/verify", json={})
    assert (status, body["type"]) == (401, "/problems/partner-partner_disabled")


async def test_bad_registrations_are_refused(sqlite_api):
    api = sqlite_api
    base = {"partner_id": "shop", "type": "merchant", "scopes": ["pay"]}
    r = await api.post("/api/v1/partners", base, as_="admin")
    assert r.status == 422  # neither a key nor an HMAC secret
    r = await api.post("/api/v1/partners", {**base, "keys": {"k1": "not a pem"}}, as_="admin")
    assert r.status == 422
    assert (await r.json())["errors"][0]["field"] == "keys.k1"
    r = await api.post("/api/v1/partners", {**base, "scopes": ["everything"]}, as_="admin")
    assert r.status == 422
    r = await api.post("/api/v1/partners", {**base, "type": "bank", "hmac": True}, as_="admin")
    assert r.status == 422


async def test_a_second_key_rotates_in(sqlite_api):
    api = sqlite_api
    old = await partner(api, "shop", "merchant", "pay")
    new_key = Ed25519PrivateKey.generate()
    r = await api.post(
        "/api/v1/partners/shop/keys",
        {"key_id": "k2", "public_key_pem": public_key_pem(new_key)},
        as_="admin",
    )
    assert r.status == 201, await r.text()
    assert set((await r.json())["keys"]) == {"k1", "k2"}
    new = PartnerClient(
        str(api.client.make_url("/")),
        "shop",
        "k2",
        private_key=new_key,
        city_public_key_pem=await city_key(api),
        session=a_session(),
    )
    for client in (old, new):
        status, _ = await client.request("GET", "/partner/v1/reconciliation/2026-01-01")
        assert status == 200


# ---------------------------------------------------------------- signatures and scopes


async def test_unsigned_requests_are_refused_even_on_unknown_paths(sqlite_api):
    api = sqlite_api
    for path in ("/partner/v1/payments", "/partner/v1/no-such-thing"):
        r = await api.client.post(path, json={"amount": 100})
        assert r.status == 401, path
        assert (await r.json())["type"] == "/problems/partner-missing_signature"
        assert r.headers["X-Citycard-Signature"]  # the refusal is signed too


async def test_staff_sessions_do_not_open_the_partner_api(sqlite_api):
    r = await sqlite_api.get("/partner/v1/reconciliation/2026-01-01", as_="admin")
    assert r.status == 401


async def test_a_transit_partner_cannot_pay(sqlite_api):
    api = sqlite_api
    metro = await partner(api, "metro", "transit", "transit")
    status, body = await metro.request(
        "POST", "/partner/v1/payments", json={"token": "CC1:x", "amount": 100}, idempotency_key="k"
    )
    assert status == 403
    assert body["type"] == "/problems/partner-insufficient_scope"
    status, body = await metro.request(
        "POST", "/partner/v1/tokens/verify", json={"token": "CC1:x", "purpose": "medical"}
    )
    assert (status, body["type"]) == (403, "/problems/partner-insufficient_scope")


async def test_the_sub_app_authenticates_wherever_it_is_mounted(sqlite_api, aiohttp_client):
    """Requests reach a sub-app with their full path: the middleware guards all of it."""
    card = sqlite_api.app[CARD_DEPS]

    async def nobody(partner_id: str):  # type: ignore[no-untyped-def]
        return None

    class Registry:
        get = staticmethod(nobody)

    app = web.Application()
    app.add_subapp(
        "/elsewhere/v9",
        partner_app(
            card,
            registry=Registry(),  # type: ignore[arg-type]
            nonce_store=MemoryNonceStore(),
            city_signer=CitySigner("test", Ed25519PrivateKey.generate()),
        ),
    )
    client = await aiohttp_client(app)
    r = await client.get("/elsewhere/v9/reconciliation/2026-01-01")
    assert r.status == 401
    assert (await r.json())["type"] == "/problems/partner-missing_signature"


# ---------------------------------------------------------------- identity


async def test_identity_verification_answers_only_yes_or_no(api):
    await resident_with_card(api)
    dept = await partner(api, "civil-affairs", "department", "identity")
    ask = {"name": "张三丰", "id_number": an_id_number()}
    assert await dept.request("POST", "/partner/v1/identity/verify", json=ask) == (
        200,
        {"match": True},
    )
    for wrong in (
        {**ask, "name": "张三"},
        {**ask, "id_number": an_id_number(2)},
        {"name": "李四", "id_number": an_id_number(3)},
    ):
        assert await dept.request("POST", "/partner/v1/identity/verify", json=wrong) == (
            200,
            {"match": False},
        )


async def test_unverified_residents_never_match(sqlite_api):
    api = sqlite_api
    r = await api.post("/api/v1/residents", {"name": "王五", "id_number": an_id_number(7)})
    assert r.status == 201
    dept = await partner(api, "civil-affairs", "department", "identity")
    status, body = await dept.request(
        "POST",
        "/partner/v1/identity/verify",
        json={"name": "王五", "id_number": an_id_number(7)},
    )
    assert (status, body) == (200, {"match": False})


# ---------------------------------------------------------------- online token checks


async def test_transit_learns_validity_and_concession_and_a_loss_report_revokes_at_once(api):
    _, card = await resident_with_card(api, concession="student")
    metro = await partner(api, "metro", "transit", "transit")
    tok = await token(api, card["card_no"], "transit")
    ask = {"token": tok, "purpose": "transit"}
    assert await metro.request("POST", "/partner/v1/tokens/verify", json=ask) == (
        200,
        {"valid": True, "reason": "ok", "concession": "student"},
    )

    r = await api.post(f"/api/v1/cards/{card['card_no']}/report-lost", {"channel": "phone"})
    assert r.status == 200
    assert await metro.request("POST", "/partner/v1/tokens/verify", json=ask) == (
        200,
        {"valid": False, "reason": "revoked"},
    )


async def test_a_token_for_another_purpose_is_refused(sqlite_api):
    api = sqlite_api
    _, card = await resident_with_card(api)
    metro = await partner(api, "metro", "transit", "transit")
    tok = await token(api, card["card_no"], "id")
    assert await metro.request(
        "POST", "/partner/v1/tokens/verify", json={"token": tok, "purpose": "transit"}
    ) == (200, {"valid": False, "reason": "wrong_purpose"})


async def test_a_hospital_learns_name_health_card_and_its_own_handle(api):
    resident, card = await resident_with_card(
        api, health_card_no="HC-0001", social_security_no="SS-42"
    )
    r = await api.post(
        f"/api/v1/residents/{resident['id']}/hospital-cards",
        {"hospital_code": "rmyy", "hospital_card_no": "V-778"},
    )
    assert r.status == 201
    rmyy = await partner(api, "rmyy", "hospital", "medical")
    other = await partner(api, "zsyy", "hospital", "medical")
    tok = await token(api, card["card_no"], "medical")
    status, body = await rmyy.request(
        "POST", "/partner/v1/tokens/verify", json={"token": tok, "purpose": "medical"}
    )
    handle = svc.card_handle(api.app[CARD_DEPS], card["card_no"], "rmyy")
    assert (status, body) == (
        200,
        {
            "valid": True,
            "reason": "ok",
            "handle": handle,
            "name": "张三丰",
            "health_card": "HC-0001",
            "insurance_status": "insured",
        },
    )
    assert await rmyy.request("GET", "/partner/v1/hospital-cards/rmyy/V-778") == (
        200,
        {"handle": handle, "health_card": "HC-0001"},
    )
    status, _ = await other.request("GET", "/partner/v1/hospital-cards/rmyy/V-778")
    assert status == 403  # another hospital's visit cards
    status, body = await other.request(
        "POST", "/partner/v1/tokens/verify", json={"token": tok, "purpose": "medical"}
    )
    assert body["handle"] != handle  # each partner sees its own pseudonym
    assert card["card_no"] not in str(body) and an_id_number() not in str(body)
    status, _ = await rmyy.request("GET", "/partner/v1/hospital-cards/rmyy/V-000")
    assert status == 404


# ---------------------------------------------------------------- payments


async def test_payment_is_idempotent_and_its_receipt_verifies_offline(api):
    resident, card = await resident_with_card(api)
    await wallet_with(api, resident, 1_000)
    shop = await partner(api, "shop", "merchant", "pay")
    auth = await authorize(shop, api, card["card_no"])

    pay = {"authorization": auth, "amount": 250, "description": "咖啡"}
    status, body = await shop.request("POST", "/partner/v1/payments", json=pay)
    assert (status, body["type"]) == (400, "/problems/idempotency-key-required")
    status, first = await shop.request(
        "POST", "/partner/v1/payments", json=pay, idempotency_key="order-1"
    )
    assert status == 201, first
    assert set(first) == {"transfer_id", "amount", "seq", "receipt"}
    assert first["amount"] == 250

    again = await shop.request("POST", "/partner/v1/payments", json=pay, idempotency_key="order-1")
    assert again == (201, first)  # replayed, not paid twice
    status, body = await shop.request(
        "POST", "/partner/v1/payments", json={**pay, "amount": 300}, idempotency_key="order-1"
    )
    assert (status, body["type"]) == (422, "/problems/idempotency-key-reused")
    status, body = await shop.request(
        "POST", "/partner/v1/payments", json=pay, idempotency_key="order-2"
    )
    assert (status, body["type"]) == (409, "/problems/authorization-used")

    payload = verify_receipt(first["receipt"], await city_key(api))
    assert payload["transfer_id"] == first["transfer_id"]
    assert (payload["kind"], payload["amount"], payload["partner_id"]) == ("payment", 250, "shop")
    card_deps = api.app[CARD_DEPS]
    wallet = (await svc.get_resident(card_deps, resident["id"])).wallet_account_id
    assert await card_deps.ledger.balance(wallet) == 750


async def test_a_token_pays_directly_once(sqlite_api):
    api = sqlite_api
    resident, card = await resident_with_card(api)
    await wallet_with(api, resident, 1_000)
    shop = await partner(api, "shop", "merchant", "pay")
    tok = await token(api, card["card_no"], "pay")
    status, body = await shop.request(
        "POST", "/partner/v1/payments", json={"token": tok, "amount": 100}, idempotency_key="a"
    )
    assert status == 201, body
    status, body = await shop.request(
        "POST", "/partner/v1/payments", json={"token": tok, "amount": 100}, idempotency_key="b"
    )
    assert (status, body["reason"]) == (422, "replayed")


async def test_another_instance_replays_a_payment_from_the_ledger(api, aiohttp_client):
    """The idempotency store is per instance; the ledger keeps payments idempotent."""
    resident, card = await resident_with_card(api)
    await wallet_with(api, resident, 1_000)
    shop = await partner(api, "shop", "merchant", "pay")
    pay = {"authorization": await authorize(shop, api, card["card_no"]), "amount": 100}
    status, first = await shop.request(
        "POST", "/partner/v1/payments", json=pay, idempotency_key="x"
    )
    assert status == 201

    card_deps = api.app[CARD_DEPS]
    other = web.Application()
    other.add_subapp(
        "/partner/v1",
        partner_app(
            card_deps,
            registry=SqlPartnerRegistry(card_deps.engine, card_deps.cipher),
            nonce_store=SqlNonceStore(card_deps.engine),
            city_signer=CitySigner("city-service", card_deps.service_key),
            idempotency_store=MemoryIdempotencyStore(),
        ),
    )
    http = await aiohttp_client(other)
    shop2 = PartnerClient(
        str(http.make_url("/")),
        "shop",
        "k1",
        private_key=shop.private_key,
        city_public_key_pem=await city_key(api),
        session=a_session(),
    )
    again = await shop2.request("POST", "/partner/v1/payments", json=pay, idempotency_key="x")
    assert again == (201, first)
    status, body = await shop2.request(
        "POST", "/partner/v1/payments", json={**pay, "amount": 99}, idempotency_key="x"
    )
    assert (status, body["type"]) == (422, "/problems/idempotency-key-reused")
    wallet = (await svc.get_resident(card_deps, resident["id"])).wallet_account_id
    assert await card_deps.ledger.balance(wallet) == 900


async def test_insufficient_funds_is_402_and_a_frozen_card_409(api):
    resident, card = await resident_with_card(api)
    await wallet_with(api, resident, 100)
    shop = await partner(api, "shop", "merchant", "pay")
    pay = {"authorization": await authorize(shop, api, card["card_no"]), "amount": 101}
    status, body = await shop.request("POST", "/partner/v1/payments", json=pay, idempotency_key="a")
    assert (status, body["type"]) == (402, "/problems/insufficient-funds")

    auth = await authorize(shop, api, card["card_no"])
    r = await api.post(f"/api/v1/cards/{card['card_no']}/freeze", {}, as_="supervisor")
    assert r.status == 200
    status, body = await shop.request(
        "POST",
        "/partner/v1/payments",
        json={"authorization": auth, "amount": 50},
        idempotency_key="b",
    )
    assert (status, body["type"]) == (409, "/problems/card-card-not-active")


async def test_refunds_never_exceed_the_payment_and_only_its_merchant_refunds(api):
    resident, card = await resident_with_card(api)
    await wallet_with(api, resident, 1_000)
    shop = await partner(api, "shop", "merchant", "pay")
    rival = await partner(api, "rival", "merchant", "pay")
    pay = {"authorization": await authorize(shop, api, card["card_no"]), "amount": 500}
    _, paid = await shop.request("POST", "/partner/v1/payments", json=pay, idempotency_key="p")
    path = f"/partner/v1/payments/{paid['transfer_id']}/refund"

    status, refund = await shop.request("POST", path, json={"amount": 200}, idempotency_key="r1")
    assert status == 201, refund
    assert refund["original_transfer_id"] == paid["transfer_id"]
    assert verify_receipt(refund["receipt"], await city_key(api))["kind"] == "refund"
    assert await shop.request("POST", path, json={"amount": 200}, idempotency_key="r1") == (
        201,
        refund,
    )
    status, body = await shop.request("POST", path, json={"amount": 301}, idempotency_key="r2")
    assert (status, body["type"]) == (409, "/problems/refund-exceeds-original")
    status, _ = await rival.request("POST", path, json={"amount": 1}, idempotency_key="r3")
    assert status == 404
    status, _ = await shop.request("POST", path, json={"amount": 300}, idempotency_key="r4")
    assert status == 201


async def test_reconciliation_equals_the_ledger_and_is_signed(api):
    resident, card = await resident_with_card(api)
    await wallet_with(api, resident, 5_000)
    shop = await partner(api, "shop", "merchant", "pay")
    paid = []
    for i, amount in enumerate((1_000, 700, 300)):
        pay = {"authorization": await authorize(shop, api, card["card_no"]), "amount": amount}
        status, body = await shop.request(
            "POST", "/partner/v1/payments", json=pay, idempotency_key=f"p{i}"
        )
        assert status == 201
        paid.append(body)
    status, _ = await shop.request(
        "POST",
        f"/partner/v1/payments/{paid[0]['transfer_id']}/refund",
        json={"amount": 250},
        idempotency_key="r",
    )
    assert status == 201

    card_deps = api.app[CARD_DEPS]
    day = svc.today(card_deps).isoformat()
    status, data = await shop.request("GET", f"/partner/v1/reconciliation/{day}")
    assert status == 200
    # the signature comes in a header, which the reference client does not return
    url = str(api.client.make_url(f"/partner/v1/reconciliation/{day}"))
    signed = sign_headers("GET", url, partner_id="shop", key_id="k1", private_key=shop.private_key)
    r = await a_session().get(url, headers=signed)
    assert r.status == 200 and r.content_type == "text/csv"
    assert await r.read() == data
    verify_detached(data, r.headers[RECONCILIATION_SIGNATURE_HEADER], await city_key(api))

    rows = list(csv.DictReader(io.StringIO(data.decode())))
    details = [row for row in rows if row["record"] == "D"]
    assert [(d["kind"], int(d["merchant_net_fen"])) for d in details] == [
        ("payment", 1_000),
        ("payment", 700),
        ("payment", 300),
        ("refund", -250),
    ]
    total = next(row for row in rows if row["record"] == "T" and row["kind"] == "all")
    assert int(total["merchant_net_fen"]) == 1_000 + 700 + 300 - 250
    merchant = await card_deps.ledger.open_account("merchant", "shop")
    assert await card_deps.ledger.balance(merchant) == 1_750  # the figures equal the ledger

    status, _ = await shop.request("GET", "/partner/v1/reconciliation/2999-01-01")
    assert status == 422
    status, _ = await shop.request("GET", "/partner/v1/reconciliation/yesterday")
    assert status == 422
    status, body = await shop.request("GET", "/partner/v1/reconciliation/0001-01-01")
    assert status == 422, body  # no UTC instant for its start: refused, not a 500


async def test_100_concurrent_payments_against_5000_fen_pay_exactly_50(api):
    resident, card = await resident_with_card(api)
    wallet = await wallet_with(api, resident, 5_000)
    shop = await partner(api, "shop", "merchant", "pay", rate=1_000)
    card_deps = api.app[CARD_DEPS]
    tokens = [await svc.make_token(card_deps, card["card_no"], "pay") for _ in range(100)]

    async def pay(i: int) -> int:
        status, body = await shop.request(
            "POST",
            "/partner/v1/payments",
            json={"token": tokens[i], "amount": 100},
            idempotency_key=f"order-{i}",
        )
        assert status in (201, 402), body
        return status

    statuses = await asyncio.gather(*(pay(i) for i in range(100)))
    assert sorted(statuses) == [201] * 50 + [402] * 50
    assert await card_deps.ledger.balance(wallet) == 0
    merchant = await card_deps.ledger.open_account("merchant", "shop")
    assert await card_deps.ledger.balance(merchant) == 5_000


# ---------------------------------------------------------------- audit


async def test_every_partner_call_is_audited_without_personal_data(api):
    resident, card = await resident_with_card(api, concession="senior")
    await wallet_with(api, resident, 1_000)
    metro = await partner(api, "metro", "transit", "transit")
    dept = await partner(api, "civil-affairs", "department", "identity")
    shop = await partner(api, "shop", "merchant", "pay")
    await metro.request(
        "POST",
        "/partner/v1/tokens/verify",
        json={"token": await token(api, card["card_no"], "transit"), "purpose": "transit"},
    )
    await dept.request(
        "POST",
        "/partner/v1/identity/verify",
        json={"name": "张三丰", "id_number": an_id_number()},
    )
    auth = await authorize(shop, api, card["card_no"])
    await shop.request(
        "POST",
        "/partner/v1/payments",
        json={"authorization": auth, "amount": 100},
        idempotency_key="o1",
    )
    await metro.request("POST", "/partner/v1/payments", json={}, idempotency_key="o2")

    card_deps = api.app[CARD_DEPS]
    async with card_deps.read() as conn:
        rows = (
            await conn.execute(
                sa.select(svc.event_t)
                .where(svc.event_t.c.channel == "partner")
                .order_by(svc.event_t.c.id)
            )
        ).all()
    seen = [(r.actor, r.action, r.data["status"], r.card_no) for r in rows]
    assert seen == [
        ("partner:metro", "tokens.verify", 200, card["card_no"]),
        ("partner:civil-affairs", "identity.verify", 200, ""),
        ("partner:shop", "tokens.verify", 200, card["card_no"]),
        ("partner:shop", "payments", 201, card["card_no"]),
        ("partner:metro", "payments", 403, ""),
    ]
    assert all(r.data["nonce"] for r in rows)
    text = str([r.data for r in rows])
    assert an_id_number() not in text and "张三丰" not in text
    assert rows[1].data["match"] is True
