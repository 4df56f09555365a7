"""The wallet ledger, once on SQLite and once on PostgreSQL (``db_url``)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from citizen_card.ledger import (
    AlreadyReversed,
    Ed25519Signer,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    InvalidRequest,
    Ledger,
    NotRefundable,
    NotReversible,
    ReceiptInvalid,
    RefundExceedsOriginal,
    Unbalanced,
    check_balanced,
    day_bounds,
    refund_cap,
    validate_amount,
    verify_detached,
    verify_receipt,
)
from citizen_card.ledger_models import (
    account_t,
    create_ledger_tables,
    entry_t,
    pending_t,
    transfer_t,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_size=20, max_overflow=20)


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(db_url)
    async with eng.begin() as conn:
        await conn.run_sync(create_ledger_tables)
    yield eng
    await eng.dispose()


@pytest.fixture
def signer() -> Ed25519Signer:
    return Ed25519Signer(key_id="city-test-1")


@pytest.fixture
def ledger(engine: AsyncEngine, signer: Ed25519Signer) -> Ledger:
    return Ledger(engine, signer)


async def funded_wallet(ledger: Ledger, fen: int, owner: str | None = None) -> Any:
    wallet = await ledger.open_account("wallet", owner or f"w:{uuid.uuid4().hex[:12]}")
    if fen:
        await ledger.top_up(wallet, fen, f"seed-{wallet.id}")
    return wallet


async def merchant(ledger: Ledger, name: str = "m:metro") -> Any:
    return await ledger.open_account("merchant", name)


async def count_transfers(ledger: Ledger) -> int:
    async with ledger.engine.connect() as conn:
        return (await conn.execute(sa.select(sa.func.count()).select_from(transfer_t))).scalar()


async def assert_books(ledger: Ledger) -> None:
    """Every transfer sums to zero; every balance equals its entries; no wallet < 0."""
    async with ledger.engine.connect() as conn:
        unbalanced = (
            await conn.execute(
                sa.select(entry_t.c.transfer_id)
                .group_by(entry_t.c.transfer_id)
                .having(sa.func.sum(entry_t.c.amount) != 0)
            )
        ).all()
        assert unbalanced == []
        legless = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(transfer_t)
                .where(~sa.exists().where(entry_t.c.transfer_id == transfer_t.c.id))
            )
        ).scalar()
        assert legless == 0
        sums = dict(
            (
                await conn.execute(
                    sa.select(entry_t.c.account_id, sa.func.sum(entry_t.c.amount)).group_by(
                        entry_t.c.account_id
                    )
                )
            ).all()
        )
        accounts = (await conn.execute(sa.select(account_t.c.id, account_t.c.kind))).all()
    for aid, kind in accounts:
        bal = await ledger.balance(aid)
        assert bal == int(sums.get(aid, 0)), (aid, kind)
        if kind == "wallet":
            assert bal >= 0


# ----------------------------------------------------------------------------- pure rules


def test_amount_rules() -> None:
    assert validate_amount(1) == 1
    assert validate_amount(5_000, max_amount=5_000) == 5_000
    for bad in (0, -1, 1.0, 0.5, True, "100", None, 5_001):
        with pytest.raises(InvalidAmount):
            validate_amount(bad, max_amount=5_000)
    assert refund_cap(1000, 300) == 700
    assert refund_cap(1000, 1000) == 0
    check_balanced([(1, -5), (2, 5)])
    for legs in ([(1, -5), (2, 4)], [(1, 0), (2, 0)], [(1, -5), (1, 5)], [(1, 5)]):
        with pytest.raises(Unbalanced):
            check_balanced(legs)


def test_day_bounds_shanghai() -> None:
    start, end = day_bounds(date(2024, 5, 1), "Asia/Shanghai")
    assert start == datetime(2024, 4, 30, 16, 0, tzinfo=UTC)
    assert end == datetime(2024, 5, 1, 16, 0, tzinfo=UTC)


# ----------------------------------------------------------------------------- operations


async def test_top_up_and_balance(ledger: Ledger, signer: Ed25519Signer) -> None:
    wallet = await ledger.open_account("wallet", "w:alice")
    assert await ledger.open_account("wallet", "w:alice") == wallet  # idempotent open
    t = await ledger.top_up(wallet, 10_000, "topup-1", meta={"channel": "bank"})
    assert t.kind == "topup" and t.amount == 10_000 and t.currency == "CNY"
    assert await ledger.balance(wallet) == 10_000
    clearing = await ledger.system_account("topup_clearing")
    assert await ledger.balance(clearing) == -10_000
    assert sum(p.amount for p in t.postings) == 0
    payload = verify_receipt(t.receipt, signer.public_key_pem())
    assert payload["amount"] == 10_000
    assert {a["handle"] for a in payload["accounts"]} == {"w:alice", "city:topup_clearing"}
    page = await ledger.statement(wallet)
    assert [(ln.kind, ln.amount, ln.balance_after) for ln in page.lines] == [
        ("topup", 10_000, 10_000)
    ]
    with pytest.raises(InvalidRequest):
        await ledger.open_account("wallet", "w:bob", allow_negative=True)
    await assert_books(ledger)


async def test_pay_moves_money(ledger: Ledger, signer: Ed25519Signer) -> None:
    wallet = await funded_wallet(ledger, 5_000)
    shop = await merchant(ledger)
    t = await ledger.pay(wallet, shop, 1_250, "pay-1", partner_id="metro", meta={"gate": "A3"})
    assert (t.kind, t.amount, t.partner_id, t.meta) == ("payment", 1_250, "metro", {"gate": "A3"})
    assert await ledger.balance(wallet) == 3_750
    assert await ledger.balance(shop) == 1_250
    payload = verify_receipt(t.receipt, signer.public_key_pem(), key_id="city-test-1")
    assert payload["seq"] == t.seq and payload["transfer_id"] == str(t.id)
    assert payload["partner_id"] == "metro"
    assert payload["accounts"] == [
        {"handle": wallet.owner, "amount": -1_250},
        {"handle": shop.owner, "amount": 1_250},
    ]
    assert await ledger.get_transfer(t.id) == t
    await assert_books(ledger)


async def test_invalid_payments_write_nothing(ledger: Ledger) -> None:
    wallet = await funded_wallet(ledger, 1_000)
    other = await funded_wallet(ledger, 0)
    shop = await merchant(ledger)
    before = await count_transfers(ledger)
    for bad in (0, -5, 1.5, True, "10", ledger.max_amount + 1):
        with pytest.raises(InvalidAmount):
            await ledger.pay(wallet, shop, bad, f"bad-{bad!r}")  # type: ignore[arg-type]
    with pytest.raises(InsufficientFunds):
        await ledger.pay(wallet, shop, 1_001, "too-much")
    with pytest.raises(InvalidRequest):
        await ledger.pay(wallet, other, 10, "wallet-to-wallet")
    with pytest.raises(InvalidRequest):
        await ledger.pay(shop, wallet, 10, "merchant-pays")
    assert await count_transfers(ledger) == before
    assert await ledger.balance(wallet) == 1_000
    # A failed attempt does not burn the key: the retry with funds succeeds.
    await ledger.top_up(wallet, 1, "one-more")
    t = await ledger.pay(wallet, shop, 1_001, "too-much")
    assert not t.replayed and await ledger.balance(wallet) == 0
    await assert_books(ledger)


async def test_precheck_runs_in_the_transaction_and_can_abort(ledger: Ledger) -> None:
    wallet = await funded_wallet(ledger, 1_000)
    shop = await merchant(ledger)
    seen: list[int] = []

    async def frozen(conn: AsyncConnection) -> None:
        seen.append((await conn.execute(sa.text("SELECT 1"))).scalar_one())
        raise PermissionError("card frozen")

    with pytest.raises(PermissionError):
        await ledger.pay(wallet, shop, 100, "frozen-pay", precheck=frozen)
    assert seen == [1]
    assert await ledger.balance(wallet) == 1_000

    async def active(conn: AsyncConnection) -> None:
        await conn.execute(sa.text("SELECT 1"))

    await ledger.pay(wallet, shop, 100, "active-pay", precheck=active)
    assert await ledger.balance(wallet) == 900
    await assert_books(ledger)


async def test_precheck_shares_the_payment_transaction(ledger: Ledger) -> None:
    """What the precheck writes commits or rolls back with the payment."""
    async with ledger.engine.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE probe (note VARCHAR(20) PRIMARY KEY)"))
    wallet = await funded_wallet(ledger, 100)
    shop = await merchant(ledger)

    def writing(note: str) -> Any:
        async def check(conn: AsyncConnection) -> None:
            await conn.execute(sa.text("INSERT INTO probe (note) VALUES (:n)"), {"n": note})

        return check

    with pytest.raises(InsufficientFunds):
        await ledger.pay(wallet, shop, 101, "too-much", precheck=writing("rolled-back"))
    await ledger.pay(wallet, shop, 100, "ok", precheck=writing("committed"))
    async with ledger.engine.connect() as conn:
        notes = (await conn.execute(sa.text("SELECT note FROM probe"))).scalars().all()
    assert notes == ["committed"]


async def test_refund_never_beyond_original(ledger: Ledger) -> None:
    wallet = await funded_wallet(ledger, 2_000)
    shop = await merchant(ledger)
    pay = await ledger.pay(wallet, shop, 1_000, "p", partner_id="mall")
    r1 = await ledger.refund(pay.id, 300, "r1")
    r2 = await ledger.refund(pay.id, 500, "r2")
    assert (r1.kind, r1.original_transfer_id, r1.partner_id) == ("refund", pay.id, "mall")
    with pytest.raises(RefundExceedsOriginal):
        await ledger.refund(pay.id, 201, "r3")
    assert await ledger.balance(wallet) == 1_800
    assert await ledger.balance(shop) == 200
    r3 = await ledger.refund(pay.id, 200, "r3")  # exactly what remains
    assert r3.amount == 200 and r2.amount == 500
    with pytest.raises(RefundExceedsOriginal):
        await ledger.refund(pay.id, 1, "r4")
    assert await ledger.balance(wallet) == 2_000
    assert await ledger.balance(shop) == 0
    top = (await ledger.statement(wallet, limit=50)).lines[-1]
    with pytest.raises(NotRefundable):
        await ledger.refund(top.transfer_id, 1, "refund-a-topup")
    await assert_books(ledger)


async def test_reversal_only_once(ledger: Ledger) -> None:
    wallet = await funded_wallet(ledger, 1_000)
    shop = await merchant(ledger)
    pay = await ledger.pay(wallet, shop, 400, "p1", partner_id="mall")
    rev = await ledger.reverse(pay.id, "rev-1")
    assert rev.kind == "reversal" and rev.original_transfer_id == pay.id and rev.amount == 400
    assert [p.amount for p in rev.postings] == [-p.amount for p in pay.postings]
    assert await ledger.balance(wallet) == 1_000 and await ledger.balance(shop) == 0
    assert (await ledger.reverse(pay.id, "rev-1")) == rev  # retry: same reversal
    with pytest.raises(AlreadyReversed):
        await ledger.reverse(pay.id, "rev-2")
    with pytest.raises(AlreadyReversed):
        await ledger.refund(pay.id, 100, "late-refund")
    with pytest.raises(NotReversible):
        await ledger.reverse(rev.id, "rev-of-rev")

    # A refunded payment is not reversed; reversing its refund re-opens the amount.
    pay2 = await ledger.pay(wallet, shop, 600, "p2", partner_id="mall")
    refund = await ledger.refund(pay2.id, 600, "r")
    with pytest.raises(NotReversible):
        await ledger.reverse(pay2.id, "rev-p2")
    await ledger.reverse(refund.id, "rev-r")
    assert await ledger.balance(wallet) == 400
    await ledger.refund(pay2.id, 600, "r-again")
    assert await ledger.balance(wallet) == 1_000

    # Reversing a top-up needs the money to still be there.
    wallet2 = await funded_wallet(ledger, 0)
    top = await ledger.top_up(wallet2, 300, "t2")
    await ledger.pay(wallet2, shop, 200, "spend")
    with pytest.raises(InsufficientFunds):
        await ledger.reverse(top.id, "rev-top")
    await ledger.top_up(wallet2, 200, "t3")
    await ledger.reverse(top.id, "rev-top")
    assert await ledger.balance(wallet2) == 0
    await assert_books(ledger)


async def test_disbursement_batch_is_idempotent_per_resident(ledger: Ledger) -> None:
    wallets = [await funded_wallet(ledger, 0) for _ in range(3)]
    fund = await ledger.system_account("benefits_fund")
    batch = [(w, 1_000 + i) for i, w in enumerate(wallets)]
    first = await ledger.disburse("2024-spring-subsidy", batch[:2])
    assert [t.kind for t in first] == ["disbursement", "disbursement"]
    assert all(t.meta["batch_id"] == "2024-spring-subsidy" for t in first)
    # The whole batch again (a rerun after a crash): the first two are not paid twice.
    again = await ledger.disburse("2024-spring-subsidy", batch)
    assert [t.replayed for t in again] == [True, True, False]
    assert again[:2] == first
    assert [await ledger.balance(w) for w in wallets] == [1_000, 1_001, 1_002]
    assert await ledger.balance(fund) == -3_003
    rerun = await ledger.disburse("2024-spring-subsidy", batch)
    assert all(t.replayed for t in rerun) and rerun == again
    assert [await ledger.balance(w) for w in wallets] == [1_000, 1_001, 1_002]
    with pytest.raises(IdempotencyConflict):
        await ledger.disburse("2024-spring-subsidy", [(wallets[0], 5)])
    with pytest.raises(InvalidRequest):
        await ledger.disburse("dup", [(wallets[0], 5), (wallets[0], 5)])
    await ledger.disburse("2024-autumn-subsidy", [(wallets[0], 50)])  # another batch pays
    assert await ledger.balance(wallets[0]) == 1_050
    await assert_books(ledger)


async def test_disbursement_in_chunks(engine: AsyncEngine, signer: Ed25519Signer) -> None:
    ledger = Ledger(engine, signer, disbursement_chunk=4)
    wallets = [await funded_wallet(ledger, 0) for _ in range(10)]
    out = await ledger.disburse("b", [(w, 10) for w in wallets])
    assert len({t.id for t in out}) == 10
    assert [t.seq for t in out] == sorted(t.seq for t in out)
    again = await ledger.disburse("b", [(w, 10) for w in reversed(wallets)])
    assert [t.id for t in again] == [t.id for t in reversed(out)]
    assert sum([await ledger.balance(w) for w in wallets]) == 100
    await assert_books(ledger)


async def test_idempotent_retry_returns_the_same_transfer(ledger: Ledger) -> None:
    wallet = await funded_wallet(ledger, 1_000)
    shop = await merchant(ledger)
    first = await ledger.pay(wallet, shop, 100, "k-1", partner_id="metro", meta={"a": 1})
    retry = await ledger.pay(wallet, shop, 100, "k-1", partner_id="metro", meta={"a": 1})
    assert retry == first and retry.replayed and not first.replayed
    assert retry.receipt == first.receipt and retry.created_at == first.created_at
    assert await ledger.balance(wallet) == 900
    # The same key under another partner is another payment (keys are per partner).
    other = await ledger.pay(wallet, shop, 100, "k-1", partner_id="bus")
    assert other.id != first.id
    top = await ledger.top_up(wallet, 5, "top-k")
    assert await ledger.top_up(wallet, 5, "top-k") == top
    assert await ledger.balance(wallet) == 805
    await assert_books(ledger)


async def test_same_key_different_request_conflicts(ledger: Ledger) -> None:
    wallet = await funded_wallet(ledger, 1_000)
    shop = await merchant(ledger)
    other_shop = await merchant(ledger, "m:other")
    await ledger.pay(wallet, shop, 100, "k", partner_id="metro")
    before = await count_transfers(ledger)
    with pytest.raises(IdempotencyConflict):
        await ledger.pay(wallet, shop, 101, "k", partner_id="metro")
    with pytest.raises(IdempotencyConflict):
        await ledger.pay(wallet, other_shop, 100, "k", partner_id="metro")
    pay = await ledger.pay(wallet, shop, 200, "k2")
    await ledger.refund(pay.id, 50, "rk")
    with pytest.raises(IdempotencyConflict):
        await ledger.refund(pay.id, 60, "rk")
    assert await count_transfers(ledger) == before + 2
    assert await ledger.balance(wallet) == 750
    await assert_books(ledger)


async def test_receipts_verify_and_tampering_fails(ledger: Ledger, signer: Ed25519Signer) -> None:
    wallet = await funded_wallet(ledger, 1_000)
    shop = await merchant(ledger)
    t = await ledger.pay(wallet, shop, 100, "k", partner_id="metro")
    pem = signer.public_key_pem()
    payload = verify_receipt(t.receipt, pem)
    assert payload["kid"] == "city-test-1" and payload["currency"] == "CNY"
    assert payload["at"].endswith("Z")

    doc = json.loads(t.receipt)
    doc["payload"]["amount"] = 1
    with pytest.raises(ReceiptInvalid):
        verify_receipt(json.dumps(doc), pem)
    doc = json.loads(t.receipt)
    doc["payload"]["accounts"][1]["handle"] = "m:thief"
    with pytest.raises(ReceiptInvalid):
        verify_receipt(json.dumps(doc), pem)
    doc = json.loads(t.receipt)
    doc["sig"] = doc["sig"][:-4] + ("AAAA" if doc["sig"][-4:] != "AAAA" else "BBBB")
    with pytest.raises(ReceiptInvalid):
        verify_receipt(json.dumps(doc), pem)
    with pytest.raises(ReceiptInvalid):
        verify_receipt(t.receipt, Ed25519Signer().public_key_pem())
    with pytest.raises(ReceiptInvalid):
        verify_receipt(t.receipt, pem, key_id="another-key")
    with pytest.raises(ReceiptInvalid):
        verify_receipt("not json", pem)
    # Re-serialized differently (spaces, key order) it still verifies: canonical JSON.
    assert verify_receipt(json.dumps(json.loads(t.receipt), indent=2), pem) == payload


async def test_ecdsa_receipts(engine: AsyncEngine) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())

    class EcSigner:
        key_id = "city-ec-1"

        def sign(self, data: bytes) -> bytes:
            return key.sign(data, ec.ECDSA(hashes.SHA256()))

    ledger = Ledger(engine, EcSigner())
    wallet = await ledger.open_account("wallet", "w:ec")
    t = await ledger.top_up(wallet, 10, "t")
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert verify_receipt(t.receipt, pem)["kid"] == "city-ec-1"


async def _set_time(ledger: Ledger, tid: uuid.UUID, at: datetime) -> None:
    """Test-only: move a transfer to another moment (the DB clock cannot be faked),
    past the trigger that keeps transfers immutable."""
    async with ledger.engine.begin() as conn:
        if ledger.is_sqlite:
            await conn.execute(sa.text("DROP TRIGGER IF EXISTS ledger_transfer_frozen"))
        else:
            await conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
        await conn.execute(
            sa.update(transfer_t).where(transfer_t.c.id == tid).values(created_at=at)
        )


async def test_reconciliation_matches_the_ledger(ledger: Ledger, signer: Ed25519Signer) -> None:
    wallet = await funded_wallet(ledger, 100_000)
    metro = await merchant(ledger, "m:metro")
    bus = await merchant(ledger, "m:bus")
    day = date(2024, 5, 1)

    def local(*args: int) -> datetime:
        return datetime(*args, tzinfo=SHANGHAI)

    cases = [
        ("in-early", 1_000, local(2024, 5, 1, 0, 0, 0), True),
        ("before", 2_000, local(2024, 4, 30, 23, 59, 59), False),
        ("in-late", 3_000, local(2024, 5, 1, 23, 59, 59, 999_999), True),
        ("after", 4_000, local(2024, 5, 2, 0, 0, 0), False),
        ("in-noon", 5_000, local(2024, 5, 1, 12, 0, 0), True),
    ]
    pays = {}
    for key, amount, at, _ in cases:
        t = await ledger.pay(wallet, metro, amount, key, partner_id="metro")
        await _set_time(ledger, t.id, at)
        pays[key] = t
    r1 = await ledger.refund(pays["in-early"].id, 400, "r1")
    await _set_time(ledger, r1.id, local(2024, 5, 1, 8, 0))
    r2 = await ledger.refund(pays["before"].id, 700, "r2")  # refund today of yesterday's pay
    await _set_time(ledger, r2.id, local(2024, 5, 1, 9, 0))
    r3 = await ledger.refund(pays["in-late"].id, 100, "r3")  # tomorrow
    await _set_time(ledger, r3.id, local(2024, 5, 2, 9, 0))
    rev = await ledger.reverse(pays["in-noon"].id, "rev")
    await _set_time(ledger, rev.id, local(2024, 5, 1, 13, 0))
    other = await ledger.pay(wallet, bus, 9_999, "bus-1", partner_id="bus")
    await _set_time(ledger, other.id, local(2024, 5, 1, 10, 0))
    bill = await ledger.settle_bill(wallet, metro, 600, 400, "bill-1", partner_id="metro")
    await _set_time(ledger, bill.id, local(2024, 5, 1, 11, 0))  # a clinic settlement counts
    top = await ledger.top_up(wallet, 10, "top")  # no partner: never in a partner's file
    await _set_time(ledger, top.id, local(2024, 5, 1, 10, 0))

    data, signature = await ledger.reconciliation("metro", day, "Asia/Shanghai")
    assert verify_detached(data, signature, signer.public_key_pem()) == "city-test-1"
    with pytest.raises(ReceiptInvalid):
        verify_detached(data.replace(b"5000", b"5001"), signature, signer.public_key_pem())

    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    assert all(r["partner_id"] == "metro" and r["day"] == "2024-05-01" for r in rows)
    detail = [r for r in rows if r["record"] == "D"]
    totals = {r["kind"]: r for r in rows if r["record"] == "T"}
    expected_ids = {
        str(pays["in-early"].id),
        str(pays["in-late"].id),
        str(pays["in-noon"].id),
        str(r1.id),
        str(r2.id),
        str(rev.id),
        str(bill.id),
    }
    assert {r["transfer_id"] for r in detail} == expected_ids
    assert [int(r["seq"]) for r in detail] == sorted(int(r["seq"]) for r in detail)
    assert detail[0]["time"].endswith("+08:00")

    def total(kind: str) -> tuple[int, int, int]:
        t = totals[kind]
        return int(t["count"]), int(t["amount_fen"]), int(t["merchant_net_fen"])

    assert total("payment") == (3, 9_000, 9_000)
    assert total("refund") == (2, 1_100, -1_100)
    assert total("reversal") == (1, 5_000, -5_000)
    assert total("settlement") == (1, 1_000, 1_000)  # self-pay and insurance parts together
    assert int(totals["all"]["count"]) == 7
    net = int(totals["all"]["merchant_net_fen"])
    assert net == 9_000 - 1_100 - 5_000 + 1_000

    # The file's figures are the ledger's: sum the merchant legs of the day independently.
    start, end = day_bounds(day, "Asia/Shanghai")
    async with ledger.engine.connect() as conn:
        ledger_net = (
            await conn.execute(
                sa.select(sa.func.sum(entry_t.c.amount))
                .join(transfer_t, transfer_t.c.id == entry_t.c.transfer_id)
                .where(
                    transfer_t.c.partner_id == "metro",
                    transfer_t.c.created_at >= start,
                    transfer_t.c.created_at < end,
                    entry_t.c.account_id == metro.id,
                )
            )
        ).scalar()
    assert ledger_net == net
    assert sum(int(r["merchant_net_fen"]) for r in detail) == net

    empty, sig = await ledger.reconciliation("metro", date(2024, 6, 1))
    verify_detached(empty, sig, signer.public_key_pem())
    assert [r["record"] for r in csv.DictReader(io.StringIO(empty.decode()))] == ["T"] * 5
    await assert_books(ledger)


async def test_statement_pages_and_seq(ledger: Ledger) -> None:
    wallet = await funded_wallet(ledger, 10_000)
    shop = await merchant(ledger)
    pays = [await ledger.pay(wallet, shop, 100 + i, f"p{i}") for i in range(7)]
    seqs = [t.seq for t in pays]
    assert seqs == sorted(seqs) and len(set(seqs)) == 7
    lines = []
    cursor = None
    while True:
        page = await ledger.statement(wallet, limit=3, cursor=cursor)
        lines.extend(page.lines)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert len(lines) == 8  # 7 payments + the seed top-up, newest first
    assert [ln.seq for ln in lines] == sorted((ln.seq for ln in lines), reverse=True)
    running = 0
    for ln in reversed(lines):
        running += ln.amount
        assert ln.balance_after == running
    assert running == await ledger.balance(wallet)
    pos = await ledger.ledger_position()
    assert pos == max(seqs)
    await ledger.pay(wallet, shop, 1, "after")
    assert await ledger.ledger_position() > pos


async def test_buffered_accounts_settle(ledger: Ledger) -> None:
    wallet = await funded_wallet(ledger, 5_000)
    shop = await merchant(ledger)
    pay = await ledger.pay(wallet, shop, 3_000, "p")
    async with ledger.engine.connect() as conn:
        posted = (
            await conn.execute(sa.select(account_t.c.balance).where(account_t.c.id == shop.id))
        ).scalar()
    assert posted == 0 and await ledger.balance(shop) == 3_000  # credit still buffered
    # A refund debits the merchant: it folds first, then debits under the row lock.
    await ledger.refund(pay.id, 1_000, "r")
    assert await ledger.balance(shop) == 2_000
    await ledger.pay(wallet, shop, 500, "p2")
    assert await ledger.settle() >= 1
    async with ledger.engine.connect() as conn:
        left = (await conn.execute(sa.select(sa.func.count()).select_from(pending_t))).scalar()
    assert left == 0
    assert await ledger.balance(shop) == 2_500
    await assert_books(ledger)


# ----------------------------------------------------------------------------- concurrency


async def test_concurrent_payments_exactly_as_far_as_the_balance_allows(ledger: Ledger) -> None:
    wallet = await funded_wallet(ledger, 5_000)
    shop = await merchant(ledger)

    async def one(i: int) -> str:
        try:
            await ledger.pay(wallet, shop, 100, f"c-{i}", partner_id="metro")
            return "ok"
        except InsufficientFunds:
            return "insufficient"

    outcomes = await asyncio.gather(*(one(i) for i in range(100)))
    assert outcomes.count("ok") == 50
    assert outcomes.count("insufficient") == 50
    assert await ledger.balance(wallet) == 0
    assert await ledger.balance(shop) == 5_000
    async with ledger.engine.connect() as conn:
        total = (await conn.execute(sa.select(sa.func.sum(entry_t.c.amount)))).scalar()
        pays = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(transfer_t)
                .where(transfer_t.c.kind == "payment")
            )
        ).scalar()
    assert total == 0 and pays == 50
    # Per wallet, seq order is commit order: the running balance reads straight.
    page = await ledger.statement(wallet, limit=100)
    payments = [ln for ln in page.lines if ln.kind == "payment"]
    assert [ln.balance_after for ln in payments] == [100 * i for i in range(50)]
    await assert_books(ledger)


async def test_concurrent_refunds_respect_the_cap(ledger: Ledger) -> None:
    wallet = await funded_wallet(ledger, 1_000)
    shop = await merchant(ledger)
    pay = await ledger.pay(wallet, shop, 1_000, "p")

    async def one(i: int) -> bool:
        try:
            await ledger.refund(pay.id, 100, f"r-{i}")
            return True
        except RefundExceedsOriginal:
            return False

    done = await asyncio.gather(*(one(i) for i in range(25)))
    assert sum(done) == 10
    assert await ledger.balance(wallet) == 1_000 and await ledger.balance(shop) == 0
    await assert_books(ledger)


async def test_concurrent_retries_create_one_transfer(ledger: Ledger) -> None:
    wallet = await funded_wallet(ledger, 150)
    shop = await merchant(ledger)
    results = await asyncio.gather(
        *(ledger.pay(wallet, shop, 100, "same-key", partner_id="metro") for _ in range(20))
    )
    assert len({t.id for t in results}) == 1
    assert sum(not t.replayed for t in results) == 1
    assert await ledger.balance(wallet) == 50
    await assert_books(ledger)


async def test_concurrent_disbursement_reruns(ledger: Ledger) -> None:
    wallets = [await funded_wallet(ledger, 0) for _ in range(8)]
    batch = [(w, 700) for w in wallets]
    runs = await asyncio.gather(*(ledger.disburse("b-1", batch) for _ in range(4)))
    assert all([t.id for t in run] == [t.id for t in runs[0]] for run in runs)
    assert [await ledger.balance(w) for w in wallets] == [700] * 8
    await assert_books(ledger)


async def test_sequence_timestamps_follow_per_wallet_order(ledger: Ledger) -> None:
    wallet = await funded_wallet(ledger, 10_000)
    shop = await merchant(ledger)
    out = await asyncio.gather(*(ledger.pay(wallet, shop, 10, f"s{i}") for i in range(30)))
    by_seq = sorted(out, key=lambda t: t.seq)
    assert [t.created_at for t in by_seq] == sorted(t.created_at for t in out)
    assert all(t.created_at.tzinfo is not None for t in out)
    assert max(t.created_at for t in out) - min(t.created_at for t in out) < timedelta(minutes=1)


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # SQLite has one writer
async def test_ledger_position_waits_for_transfers_in_flight(ledger: Ledger, db_url: str) -> None:
    """PostgreSQL: a transfer that drew its seq but has not committed holds the barrier,
    so ``ledger_position()`` cannot hand out a position that it would later fall under."""
    import asyncpg

    from citizen_card.ledger import LEDGER_BARRIER_KEY

    wallet = await funded_wallet(ledger, 1_000)
    before = await ledger.ledger_position()
    raw = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        tx = raw.transaction()
        await tx.start()
        await raw.execute("SELECT pg_advisory_xact_lock_shared($1)", LEDGER_BARRIER_KEY)
        drawn = await raw.fetchval("SELECT nextval('ledger_transfer_seq')")
        waiting = asyncio.create_task(ledger.ledger_position())
        await asyncio.sleep(0.3)
        assert not waiting.done()  # the barrier waits for the in-flight draw
        await tx.rollback()
        position = await asyncio.wait_for(waiting, 10)
    finally:
        await raw.close()
    assert position == before  # the drawn seq never committed
    t = await ledger.pay(wallet, await merchant(ledger), 1, "after-barrier")
    assert t.seq > drawn > position


async def test_entries_and_transfers_are_immutable(ledger: Ledger) -> None:
    wallet = await funded_wallet(ledger, 1_000)
    t = await ledger.pay(wallet, await merchant(ledger), 10, "p")
    attempts = [
        sa.update(entry_t).where(entry_t.c.transfer_id == t.id).values(amount=1),
        sa.delete(entry_t).where(entry_t.c.transfer_id == t.id),
        sa.update(transfer_t).where(transfer_t.c.id == t.id).values(amount=1),
        sa.delete(transfer_t).where(transfer_t.c.id == t.id),
    ]
    for stmt in attempts:
        with pytest.raises(sa.exc.DBAPIError, match="immutable"):
            async with ledger.engine.begin() as conn:
                await conn.execute(stmt)
    assert await ledger.get_transfer(t.id) == t
    await ledger.refund(t.id, 5, "r")  # the bookkeeping columns still move
    await assert_books(ledger)
