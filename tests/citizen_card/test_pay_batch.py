"""Payments on PostgreSQL share transactions (`Ledger._pay_batch`, a group commit).
A payment must not be able to tell: every outcome -- paid, refused for the card, the
balance, a used token, a replayed or conflicting Idempotency-Key -- is the one it gets
alone, and the books are the same double entry with the same signed receipts."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from citizen_card import service as svc
from citizen_card.ledger import verify_receipt
from hotline.appkeys import CARD_DEPS
from tests.citizen_card.test_partner_api import partner, resident_with_card, wallet_with

pytestmark = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
MINE = 100  # payments of the card that is reported lost among them


async def _cards(api: Any, n: int, fen: int) -> list[tuple[str, int]]:
    out = []
    for serial in range(1, n + 1):
        resident, card = await resident_with_card(api, serial)
        out.append((card["card_no"], await wallet_with(api, resident, fen)))
    return out


async def test_concurrent_payments_share_transactions_and_keep_the_books(api: Any) -> None:
    deps = api.app[CARD_DEPS]
    ledger = deps.ledger
    assert ledger.raw_pool is not None and ledger.batch_payments
    cards = await _cards(api, 12, 1_000)
    shop = await partner(api, "shop", "merchant", "pay", rate=10_000)
    # two payments per wallet: a batch takes a wallet once, so they land in different ones
    tokens = [
        (i, await svc.make_token(deps, c, "pay")) for _ in (1, 2) for i, (c, _) in enumerate(cards)
    ]
    before = ledger.pay_batches

    async def pay(n: int, token: str) -> dict[str, Any]:
        status, body = await shop.request(
            "POST",
            "/partner/v1/payments",
            json={"token": token, "amount": 300},
            idempotency_key=f"order-{n}",
        )
        assert status == 201, body
        return body

    answers = await asyncio.gather(*(pay(n, t) for n, (_, t) in enumerate(tokens)))
    batches = ledger.pay_batches - before
    assert 1 <= batches < len(tokens)  # some transactions carried several payments
    assert len({a["seq"] for a in answers}) == len(answers)
    key = deps.ledger.signer.public_key_pem()
    for a in answers:
        verify_receipt(a["receipt"], key)
    for _, wallet in cards:
        assert await ledger.balance(wallet) == 1_000 - 2 * 300
        lines = (await ledger.statement(wallet)).lines
        # newest first; each payment's balance_after continues the one before it
        after = [line.balance_after for line in lines]
        assert after == [400, 700, 1_000]
    merchant = await ledger.open_account("merchant", "shop")
    assert await ledger.balance(merchant) == len(tokens) * 300


async def _outcomes(api: Any, deps: Any, prefix: str, cards: list[tuple[str, int]]) -> list[str]:
    """One concurrent round of payments covering every way a payment can end."""
    ledger = deps.ledger
    merchant = await ledger.open_account("merchant", "shop")
    (good, w_good), (short, w_short), (frozen, w_frozen), (used, w_used) = cards
    r = await api.post(f"/api/v1/cards/{frozen}/report-lost", {"channel": "counter"})
    assert r.status == 200, await r.text()
    used_nonce = ("pay-tokens", f"{prefix}-used", 2**40)
    pre = svc.CardPrecheck(used, deps, consume=used_nonce)
    assert await ledger.pay(w_used, merchant, 1, f"{prefix}-first", "shop", precheck=pre)

    def pay(wallet: int, fen: int, key: str, card_no: str, nonce: str | None = None) -> Any:
        once = used_nonce if nonce is None else ("pay-tokens", f"{prefix}-{nonce}", 2**40)
        pre = svc.CardPrecheck(card_no, deps, consume=once)
        return ledger.pay(wallet, merchant, fen, f"{prefix}-{key}", "shop", precheck=pre)

    first = await pay(w_good, 100, "k1", good, "a")
    for wallet in (w_good, w_short, w_frozen, w_used):
        await ledger._account(wallet)  # cached: the round's calls queue together
    # refusals the batch itself tells apart (the card's lock, the balance) ...
    round1 = {
        "paid": pay(w_good, 100, "k2", good, "b"),
        "short": pay(w_short, 10**6, "k3", short, "e"),
        "frozen": pay(w_frozen, 100, "k4", frozen, "f"),
    }
    # ... and those that roll the batch back (the unique Idempotency-Key, a used token)
    round2 = {
        "replay": pay(w_good, 100, "k1", good, "c"),
        "conflict": pay(w_good, 999, "k1", good, "d"),
        "used token": pay(w_used, 100, "k5", used),
    }
    out = []
    for calls in (round1, round2):
        before = ledger.pay_batches
        results = await asyncio.gather(*calls.values(), return_exceptions=True)
        out.append(f"batches committed: {ledger.pay_batches - before}")
        for name, res in zip(calls, results, strict=True):
            if isinstance(res, BaseException):
                code = getattr(res, "code", "")
                out.append(f"{name}: {type(res).__name__} {code}".rstrip())
            else:
                same = "the first transfer" if res.id == first.id else "a new transfer"
                out.append(f"{name}: {same}, replayed={res.replayed}")
    return out


async def test_every_outcome_in_a_batch_is_the_one_a_payment_gets_alone(api: Any) -> None:
    deps = api.app[CARD_DEPS]
    await partner(api, "shop", "merchant", "pay")
    cards = await _cards(api, 8, 1_000)
    batched = await _outcomes(api, deps, uuid.uuid4().hex[:8], cards[:4])
    deps.ledger.batch_payments = False
    alone = await _outcomes(api, deps, uuid.uuid4().hex[:8], cards[4:])
    expected = [
        "paid: a new transfer, replayed=False",
        "short: InsufficientFunds",
        "frozen: CardError card-not-active",
        "replay: the first transfer, replayed=True",
        "conflict: IdempotencyConflict",
        "used token: OneTimeUsed replayed",
    ]
    # batched: the first round in one transaction (the good payment committed, the two
    # refusals then answered alone); the second rolled back, every call answered alone
    assert batched == ["batches committed: 1", *expected[:3], "batches committed: 0", *expected[3:]]
    assert alone == ["batches committed: 0", *expected[:3], "batches committed: 0", *expected[3:]]


async def test_a_loss_report_cuts_off_batched_payments_at_its_ledger_position(api: Any) -> None:
    """The freeze receipt's position P fixes liability: every payment of the card that
    went through has seq <= P, every one after the freeze is refused -- also when the
    payments share transactions and the report lands in the middle of them."""
    deps = api.app[CARD_DEPS]
    ledger = deps.ledger
    await partner(api, "shop", "merchant", "pay")
    (card_no, wallet), *others = await _cards(api, 4, 100_000)
    merchant = await ledger.open_account("merchant", "shop")
    for w in [wallet, *(w for _, w in others)]:
        await ledger._account(w)  # cached: the payments queue at once
    some_paid = asyncio.Event()

    async def pay(n: int, wallet: int, card: str) -> Any:
        pre = svc.CardPrecheck(card, deps, consume=("pay-tokens", f"cut-{n}", 2**40))
        try:
            done = await ledger.pay(wallet, merchant, 10, f"cut-{n}", "shop", precheck=pre)
        except svc.CardError as exc:
            return exc.code
        if card == card_no and n >= 2:
            some_paid.set()
        return done

    async def report() -> dict[str, Any]:
        await some_paid.wait()  # a few of the card's batches are through
        r = await api.post(f"/api/v1/cards/{card_no}/report-lost", {"channel": "counter"})
        assert r.status == 200, await r.text()
        return await r.json()

    # the card's payments run one batch after another (its wallet is in one batch at a
    # time): 100 of them leave the report a wide window, even on a slow machine
    mine = [pay(n, wallet, card_no) for n in range(MINE)]
    theirs = [pay(1000 + n, w, c) for n, (c, w) in enumerate(others * 10)]
    *results, receipt = await asyncio.gather(*mine, *theirs, report())
    position = receipt["ledger_position"]
    paid = [r for r in results[:MINE] if not isinstance(r, str)]
    refused = [r for r in results[:MINE] if isinstance(r, str)]
    assert set(refused) <= {"card-not-active"} and len(paid) + len(refused) == MINE
    assert paid and refused, (len(paid), len(refused))  # the report landed among them
    assert all(t.seq <= position for t in paid)
    assert all(not isinstance(r, str) for r in results[MINE:])  # other cards unaffected
    assert await ledger.balance(wallet) == 100_000 - 10 * len(paid)
