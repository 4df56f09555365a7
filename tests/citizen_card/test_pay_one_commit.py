"""A payment call commits once on PostgreSQL: its request nonce and audit row ride in
the ledger's transaction (`_PayRider`), alone or in a batch (on SQLite the nonce is
group-committed before the payment, the audit row after it). What must still hold: a replayed
request pays nothing -- not even one that was refused the first time and would go
through now -- a batch holding a replay rolls back without losing or doubling anyone
else's payment or audit row, and the Idempotency-Key (kept by the ledger alone for
payments) still answers a retry with the first answer, byte for byte."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
import sqlalchemy as sa

from citizen_card import service as svc
from citizen_card.ledger import InvalidRequest
from citizen_card.partner_client import sign_headers
from hotline.appkeys import CARD_DEPS, PARTNER_JOURNAL
from tests.citizen_card.test_partner_api import (
    a_session,
    authorize,
    partner,
    resident_with_card,
    token,
    wallet_with,
)

PG = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)


def _signed(api: Any, client: Any, body: dict[str, Any], key: str) -> tuple[str, bytes, dict]:
    """One signed payment request, to send as often as a test likes (same nonce)."""
    url = str(api.client.make_url("/partner/v1/payments"))
    raw = json.dumps(body).encode()
    headers = sign_headers(
        "POST", url, raw, partner_id=client.partner_id, key_id="k1", private_key=client.private_key
    )
    headers |= {"Content-Type": "application/json", "Idempotency-Key": key}
    return url, raw, headers


async def _send(request: tuple[str, bytes, dict]) -> tuple[int, dict[str, Any]]:
    url, raw, headers = request
    r = await a_session().post(url, data=raw, headers=headers)
    return r.status, await r.json()


async def _journal_idle(journal: Any) -> None:
    for _ in range(200):
        if journal._task is None or journal._task.done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the partner journal did not go idle")


async def _partner_events(deps: Any) -> list[Any]:
    async with deps.read() as conn:
        return list(
            (
                await conn.execute(
                    sa.select(svc.event_t)
                    .where(svc.event_t.c.channel == "partner", svc.event_t.c.action == "payments")
                    .order_by(svc.event_t.c.id)
                )
            ).all()
        )


async def test_a_refused_payment_replayed_after_a_top_up_pays_nothing(api: Any) -> None:
    """The nonce of a refused call is recorded too: once the wallet holds enough, the
    captured request replayed is 401, not a payment (an authorization is used up only
    by a payment that went through, so only the nonce stands in the way). On
    PostgreSQL the ledger's transaction meets the used nonce (and its audit row says
    so); on SQLite the admission does, before anything runs."""
    resident, card = await resident_with_card(api)
    wallet = await wallet_with(api, resident, 50)
    shop = await partner(api, "shop", "merchant", "pay")
    deps = api.app[CARD_DEPS]
    auth = await authorize(shop, api, card["card_no"])
    request = _signed(api, shop, {"authorization": auth, "amount": 100}, "o-1")

    status, body = await _send(request)
    assert (status, body["type"]) == (402, "/problems/insufficient-funds")
    await deps.ledger.top_up(wallet, 1_000, "topup-more")
    status, body = await _send(request)
    assert (status, body["type"]) == (401, "/problems/partner-replayed_nonce")
    assert await deps.ledger.balance(wallet) == 1_050
    seen = [
        (e.data["status"], e.card_no, e.data.get("refused")) for e in await _partner_events(deps)
    ]
    refused = [(401, "", "replayed_nonce")] if deps.ledger.takes_riders else []
    assert seen == [(402, card["card_no"], "insufficient-funds"), *refused]
    # the same authorization with a new nonce is a new request: it pays
    status, body = await _send(_signed(api, shop, {"authorization": auth, "amount": 100}, "o-1"))
    assert status == 201, body
    assert await deps.ledger.balance(wallet) == 950


@PG
async def test_a_payment_commits_its_nonce_and_audit_row_with_itself(api: Any) -> None:
    """No write of the call goes through the partner journal's own commits."""
    deps = api.app[CARD_DEPS]
    journal = api.app[PARTNER_JOURNAL]
    resident, card = await resident_with_card(api)
    await wallet_with(api, resident, 1_000)
    shop = await partner(api, "shop", "merchant", "pay")
    # a first payment wakes the journal for its first purge of expired nonces (below);
    # the next is due a minute later
    first = {"token": await token(api, card["card_no"], "pay"), "amount": 1}
    assert (await _send(_signed(api, shop, first, "o-0")))[0] == 201
    await _journal_idle(journal)
    request = _signed(
        api, shop, {"token": await token(api, card["card_no"], "pay"), "amount": 300}, "o-1"
    )
    nonce = request[2]["Authorization"].split("nonce=")[1].split(",")[0]
    ops, batches = journal.ops, deps.ledger.pay_batches

    status, body = await _send(request)
    assert status == 201, body
    assert deps.ledger.pay_batches == batches + 1
    assert journal.ops == ops  # nothing of the call went through the journal's commits
    (_, event) = await _partner_events(deps)
    assert event.card_no == card["card_no"]
    assert event.data == {
        "partner": "shop",
        "status": 201,
        "method": "POST",
        "nonce": nonce,
        "transfer_id": body["transfer_id"],
        "amount": 300,
        "replayed": False,
    }
    async with deps.read() as conn:
        kept = await conn.execute(
            sa.text("SELECT count(*) FROM partner_nonce WHERE partner_id = 'shop' AND nonce = :n"),
            {"n": nonce},
        )
        assert kept.scalar_one() == 1
    status, body = await _send(request)  # the same request again
    assert (status, body["type"]) == (401, "/problems/partner-replayed_nonce")


@PG
async def test_a_replay_in_a_batch_rolls_it_back_and_everyone_else_still_pays_once(
    api: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The replay's nonce meets the batch's insert: the batch rolls back, every payment
    of it runs alone -- the others pay once and are audited once, the replay pays
    nothing."""
    deps = api.app[CARD_DEPS]
    shop = await partner(api, "shop", "merchant", "pay", rate=10_000)
    cards = []
    for serial in range(1, 11):
        resident, card = await resident_with_card(api, serial)
        cards.append((card["card_no"], await wallet_with(api, resident, 1_000)))
    victim_no, victim_wallet = cards[0]
    # the captured request was refused at first (too much): its authorization is unused
    auth = await authorize(shop, api, victim_no)
    replay = _signed(api, shop, {"authorization": auth, "amount": 5_000}, "v")
    assert (await _send(replay))[0] == 402
    await deps.ledger.top_up(victim_wallet, 10_000, "topup-victim")
    others = [
        _signed(api, shop, {"token": await token(api, no, "pay"), "amount": 100}, f"o-{i}")
        for i, (no, _) in enumerate(cards[1:])
    ]
    batches = deps.ledger.pay_batches
    with caplog.at_level(logging.INFO, logger="citizen_card.ledger"):
        answers = await asyncio.gather(*(_send(r) for r in [replay, *others]))

    assert answers[0][0] == 401 and answers[0][1]["type"] == "/problems/partner-replayed_nonce"
    assert [status for status, _ in answers[1:]] == [201] * len(others)
    assert "a rider of the batch refused" in caplog.text  # the batch path met the replay
    assert deps.ledger.pay_batches >= batches
    assert await deps.ledger.balance(victim_wallet) == 11_000
    for _, wallet in cards[1:]:
        assert await deps.ledger.balance(wallet) == 900
    events = await _partner_events(deps)
    paid = [e.data["transfer_id"] for e in events if e.data["status"] == 201]
    assert sorted(paid) == sorted(body["transfer_id"] for _, body in answers[1:])
    assert [e.data.get("refused") for e in events if e.data["status"] == 401] == ["replayed_nonce"]


async def test_a_retry_racing_its_first_request_is_told_to_wait_then_gets_its_answer(
    api: Any,
) -> None:
    """Two sends of one payment (new nonces, one Idempotency-Key) at once: one transfer;
    the twin is 409 in flight, and its retry gets the first answer byte for byte."""
    resident, card = await resident_with_card(api)
    wallet = await wallet_with(api, resident, 1_000)
    shop = await partner(api, "shop", "merchant", "pay")
    deps = api.app[CARD_DEPS]
    body = {"token": await token(api, card["card_no"], "pay"), "amount": 250}

    async def send(request: tuple[str, bytes, dict]) -> tuple[int, bytes, Any]:
        url, raw, headers = request
        r = await a_session().post(url, data=raw, headers=headers)
        return r.status, await r.read(), r.headers

    first, twin = await asyncio.gather(*(send(_signed(api, shop, body, "o-77")) for _ in "12"))
    assert first[0] == 201, first
    assert twin[0] == 409 and b"idempotency-key-in-flight" in twin[1]
    assert twin[2]["Retry-After"] == "1"
    assert await deps.ledger.balance(wallet) == 750
    retry = await send(_signed(api, shop, body, "o-77"))
    assert (retry[0], retry[1], retry[2]["Idempotent-Replayed"]) == (201, first[1], "true")
    changed = await send(_signed(api, shop, body | {"amount": 251}, "o-77"))
    assert changed[0] == 422 and b"idempotency-key-reused" in changed[1]
    assert await deps.ledger.balance(wallet) == 750


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_ledger_on_sqlite_refuses_a_rider_rather_than_drop_its_rows(api: Any) -> None:
    deps = api.app[CARD_DEPS]
    resident, _ = await resident_with_card(api)
    wallet = await wallet_with(api, resident, 1_000)
    merchant = await deps.ledger.open_account("merchant", "shop")

    class Rider:
        written = False

        async def asyncpg_write(self, pg: Any, made: Any) -> bool:
            raise AssertionError("not on SQLite")

    assert not deps.ledger.takes_riders
    with pytest.raises(InvalidRequest):
        await deps.ledger.pay(wallet, merchant, 100, "k-1", "shop", rider=Rider())
    assert await deps.ledger.balance(wallet) == 1_000


async def test_a_captured_payment_replayed_at_once_with_another_key_pays_once(api: Any) -> None:
    """The Idempotency-Key header is not signed: an attacker can resend a captured
    request under a key of its own, while the first is still running. One payment."""
    resident, card = await resident_with_card(api)
    wallet = await wallet_with(api, resident, 1_000)
    shop = await partner(api, "shop", "merchant", "pay")
    deps = api.app[CARD_DEPS]
    auth = await authorize(shop, api, card["card_no"])
    url, raw, headers = _signed(api, shop, {"authorization": auth, "amount": 100}, "o-1")
    sends = [(url, raw, headers | {"Idempotency-Key": k}) for k in ("o-1", "evil-1", "evil-2")]

    answers = await asyncio.gather(*(_send(r) for r in sends))
    assert sorted(status for status, _ in answers) == [201, 401, 401], answers
    refused = [body["type"] for status, body in answers if status == 401]
    assert refused == ["/problems/partner-replayed_nonce"] * 2
    assert await deps.ledger.balance(wallet) == 900


@PG
async def test_payments_alone_still_purge_expired_nonces(api: Any) -> None:
    """The journal purges expired nonces beside its own writes; when every call rides
    in the ledger's transactions (a payments-only load), a ride wakes it for that."""
    deps = api.app[CARD_DEPS]
    resident, card = await resident_with_card(api)
    await wallet_with(api, resident, 1_000)
    shop = await partner(api, "shop", "merchant", "pay")
    count = sa.text("SELECT count(*) FROM partner_nonce WHERE partner_id = :p")
    async with deps.engine.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO partner_nonce (partner_id, nonce, expires_at) VALUES ('old', 'n', 1)"
            )
        )
    body = {"token": await token(api, card["card_no"], "pay"), "amount": 100}
    assert (await _send(_signed(api, shop, body, "o-1")))[0] == 201
    await _journal_idle(api.app[PARTNER_JOURNAL])
    async with deps.read() as conn:
        assert (await conn.execute(count, {"p": "old"})).scalar_one() == 0
        assert (await conn.execute(count, {"p": "shop"})).scalar_one() == 1
