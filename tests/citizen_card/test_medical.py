"""Medical: the bill split (examples + properties), settlement on both backends,
grants checked on every read, check-in with a medical QR token."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from citizen_card import medical as med
from citizen_card import service as svc
from citizen_card.identity import check_char
from citizen_card.ledger import InvalidAmount, InvalidRequest, verify_receipt
from citizen_card.ledger_models import entry_t, pending_t, transfer_t
from citizen_card.medical import BillItem, InsuranceRule, split_bill
from citizen_card.medical_routes import medical_admin_routes, medical_routes
from citizen_card.partner_auth import PartnerCredentials
from citizen_card.partner_middleware import PARTNER
from citizen_card.partner_models import PARTNER_TABLE
from citizen_card.service import CardDeps, CardError
from tests.conftest import make_settings

RULE = InsuranceRule(
    deductible_fen=10_000,
    ratio_bp_by_level={"primary": 9000, "secondary": 8000, "tertiary": 7000},
    excluded_categories=frozenset({"cosmetic"}),
)
HOSPITAL = "hosp-ruijin"
OTHER_HOSPITAL = "hosp-huashan"


def item(code: str, price: int, qty: int = 1, category: str = "drug", **kw: Any) -> BillItem:
    return BillItem(
        code=code, name=code, category=category, unit_price_fen=price, quantity=qty, **kw
    )


# ---------------------------------------------------------------- split_bill: examples


def test_split_example_deductible_ratio_and_self_pay_items() -> None:
    bill = [
        item("amoxicillin", 12_345, 2),  # 24,690
        item("x-ray", 5_000, category="exam"),
        item("imported-stent", 3_000, self_pay_only=True),
        item("whitening", 2_000, category="cosmetic"),
    ]
    s = split_bill(bill, RULE, "tertiary")
    assert s.total_fen == 34_690
    assert s.eligible_fen == 29_690
    assert s.deductible_fen == 10_000  # taken from the first eligible line
    # (29,690 - 10,000) * 70 % = 13,783
    assert (s.covered_fen, s.self_pay_fen, s.ratio_bp) == (13_783, 20_907, 7000)
    assert [(ln.deductible_fen, ln.covered_fen, ln.self_pay_fen) for ln in s.lines] == [
        (10_000, 10_283, 14_407),
        (0, 3_500, 1_500),
        (0, 0, 3_000),
        (0, 0, 2_000),
    ]
    assert [ln.eligible for ln in s.lines] == [True, True, False, False]


def test_split_rounds_covered_down_and_spreads_the_fen_by_largest_remainder() -> None:
    rule = InsuranceRule(0, {"primary": 9000})
    s = split_bill([item("a", 1), item("b", 1), item("c", 1)], rule, "primary")
    # 3 fen * 90 % = 2.7 fen -> 2 covered, 1 self-pay; line floors are all 0
    assert (s.covered_fen, s.self_pay_fen) == (2, 1)
    assert [ln.covered_fen for ln in s.lines] == [1, 1, 0]  # ties go in bill order
    s = split_bill([item("a", 333), item("b", 1_001)], InsuranceRule(0, {"p": 3333}), "p")
    # 1,334 * 33.33 % = 444.62 -> 444; lines 110.98 + 333.63 -> 110 + 333, the lost fen
    # goes to the line that lost most (0.98)
    assert s.covered_fen == 444
    assert [ln.covered_fen for ln in s.lines] == [111, 333]


def test_split_deductible_larger_than_the_bill_and_explicit_remaining() -> None:
    s = split_bill([item("a", 4_000)], RULE, "primary")
    assert (s.covered_fen, s.self_pay_fen, s.deductible_fen) == (0, 4_000, 4_000)
    s = split_bill([item("a", 4_000)], RULE, "primary", deductible_remaining=0)
    assert (s.covered_fen, s.self_pay_fen, s.deductible_fen) == (3_600, 400, 0)
    s = split_bill([item("a", 4_000)], RULE, "secondary", deductible_remaining=1_000)
    assert (s.covered_fen, s.self_pay_fen, s.deductible_fen) == (2_400, 1_600, 1_000)


def test_uninsured_pays_everything() -> None:
    s = med.self_pay_split(
        [
            item("a", 4_000),
            {"code": "b", "name": "b", "category": "x", "unit_price_fen": 5, "quantity": 3},
        ]
    )
    assert (s.total_fen, s.covered_fen, s.self_pay_fen) == (4_015, 0, 4_015)


def test_split_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown hospital level"):
        split_bill([item("a", 1)], RULE, "quaternary")
    with pytest.raises(ValueError):
        item("a", 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        item("a", 100, 0)
    with pytest.raises(ValueError):
        item("a", True)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        split_bill([], RULE, "primary")
    with pytest.raises(ValueError):
        split_bill([item("a", 1)], RULE, "primary", deductible_remaining=-1)
    with pytest.raises(ValueError):
        InsuranceRule(0, {"primary": 10_001})
    with pytest.raises(ValueError):
        InsuranceRule(0, {"primary": 0.9})  # type: ignore[dict-item]
    assert InsuranceRule.from_mapping(RULE.to_dict()) == RULE


# ---------------------------------------------------------------- split_bill: properties

items_st = st.lists(
    st.builds(
        BillItem,
        code=st.sampled_from(["a", "b", "c"]),
        name=st.just("n"),
        category=st.sampled_from(["drug", "exam", "cosmetic"]),
        unit_price_fen=st.integers(0, 200_000),
        quantity=st.integers(1, 20),
        self_pay_only=st.booleans(),
    ),
    min_size=1,
    max_size=12,
)
bp_st = st.integers(0, 10_000)


def rule_with(bp: int, deductible: int = 0) -> InsuranceRule:
    return InsuranceRule(deductible, {"h": bp}, frozenset({"cosmetic"}))


@settings(max_examples=300, deadline=None)
@given(items_st, bp_st, st.integers(0, 1_000_000))
def test_split_adds_up(items: list[BillItem], bp: int, deductible: int) -> None:
    s = split_bill(items, rule_with(bp, deductible), "h")
    total = sum(i.amount_fen for i in items)
    assert s.covered_fen + s.self_pay_fen == s.total_fen == total
    assert s.covered_fen >= 0 and s.self_pay_fen >= 0
    assert sum(ln.covered_fen for ln in s.lines) == s.covered_fen
    assert sum(ln.self_pay_fen for ln in s.lines) == s.self_pay_fen
    for ln in s.lines:
        assert 0 <= ln.covered_fen <= ln.amount_fen - ln.deductible_fen
        if not ln.eligible:
            assert ln.covered_fen == 0 and ln.deductible_fen == 0
    assert s.deductible_fen == min(deductible, s.eligible_fen)
    # rounded down, never up: within one fen below the exact share
    exact_times_bp = (s.eligible_fen - s.deductible_fen) * bp
    assert s.covered_fen * 10_000 <= exact_times_bp < (s.covered_fen + 1) * 10_000


@settings(max_examples=300, deadline=None)
@given(items_st, bp_st, bp_st, st.integers(0, 100_000))
def test_split_is_monotone_in_the_ratio(items: list[BillItem], a: int, b: int, d: int) -> None:
    lo, hi = sorted((a, b))
    assert split_bill(items, rule_with(lo, d), "h").covered_fen <= (
        split_bill(items, rule_with(hi, d), "h").covered_fen
    )


@settings(max_examples=200, deadline=None)
@given(items_st, bp_st, st.integers(0, 100_000), st.integers(0, 100_000))
def test_split_is_antitone_in_the_deductible(
    items: list[BillItem], bp: int, a: int, b: int
) -> None:
    lo, hi = sorted((a, b))
    assert split_bill(items, rule_with(bp, lo), "h").covered_fen >= (
        split_bill(items, rule_with(bp, hi), "h").covered_fen
    )


# ---------------------------------------------------------------- fixtures over the store


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def deps(db_url: str, tmp_path: Any) -> AsyncIterator[CardDeps]:
    from hotline.bootstrap import build_card_deps, build_deps

    config = make_settings(tmp_path, db_url)
    hotline_deps = build_deps(config)
    await hotline_deps.db.create_all()
    card = build_card_deps(config, hotline_deps.db, hotline_deps.cipher)
    card.clock = Clock()
    async with card.write() as conn:
        for pid in (HOSPITAL, OTHER_HOSPITAL):
            await conn.execute(
                sa.insert(PARTNER_TABLE).values(
                    partner_id=pid,
                    type="hospital",
                    scopes=["medical"],
                    keys={},
                    created_at=card.clock(),
                )
            )
    yield card
    await hotline_deps.db.dispose()


def an_id_number(serial: int) -> str:
    first17 = f"11010519900307{serial:03d}"
    return first17 + check_char(first17)


_serial = iter(range(1, 999))


async def resident_with_card(
    deps: CardDeps, *, wallet_fen: int = 0, insured: bool = True, health_card: bool = True
) -> tuple[Any, Any]:
    resident = await svc.register_resident(
        deps, name="张三丰", id_number=an_id_number(next(_serial)), phone="13812345678"
    )
    card = await svc.issue_card(
        deps,
        resident.id,
        actor="agent",
        pin="246813",
        social_security_no="SS1234567" if insured else None,
        health_card_no="HC20240001" if health_card else None,
    )
    if wallet_fen:
        await deps.ledger.top_up(resident.wallet_account_id, wallet_fen, f"seed-{resident.id}")
    return resident, card


async def counts(deps: CardDeps) -> dict[str, int]:
    async with deps.read() as conn:

        async def n(table: sa.Table, *where: Any) -> int:
            q = sa.select(sa.func.count()).select_from(table)
            if where:
                q = q.where(*where)
            return int((await conn.execute(q)).scalar_one())

        return {
            "transfers": await n(transfer_t),
            "entries": await n(entry_t),
            "pending": await n(pending_t),
            "events": await n(svc.event_t, svc.event_t.c.action == med.EVENT_SETTLEMENT),
        }


BILL = [item("amoxicillin", 12_345, 2), item("x-ray", 5_000, category="exam")]  # 29,690


# ---------------------------------------------------------------- settlement


async def test_settlement_splits_pays_and_signs(deps: CardDeps) -> None:
    resident, card = await resident_with_card(deps, wallet_fen=50_000)
    result = await med.settle(
        deps, HOSPITAL, "tertiary", BILL, "bill-1", card_no=card.card_no, rule=RULE
    )
    # (29,690 - 10,000) * 70 % = 13,783 covered; 15,907 self-pay
    assert (result.split.covered_fen, result.split.self_pay_fen) == (13_783, 15_907)
    ledger = deps.ledger
    hospital = await ledger.open_account("merchant", med.hospital_account_owner(HOSPITAL))
    fund = await ledger.system_account("insurance_fund")
    assert await ledger.balance(resident.wallet_account_id) == 50_000 - 15_907
    assert await ledger.balance(hospital) == 29_690
    assert await ledger.balance(fund) == -13_783  # what the insurer owes
    t = result.transfer
    assert (t.kind, t.amount, t.partner_id, t.replayed) == ("settlement", 29_690, HOSPITAL, False)
    assert sorted(p.amount for p in t.postings) == [-15_907, -13_783, 29_690]

    payload = verify_receipt(result.receipt, svc.receipt_public_pem(deps))
    assert payload["kind"] == "settlement" and payload["amount"] == 29_690
    wallet_handle = deps.partner_wallet_handle(resident.handle, HOSPITAL)
    assert wallet_handle != resident.handle  # the owner handle would be the same for all
    assert {a["handle"]: a["amount"] for a in payload["accounts"]} == {
        wallet_handle: -15_907,
        "city:insurance_fund": -13_783,
        f"m:{HOSPITAL}": 29_690,
    }
    statement = svc.verify_detached(deps.service_key.public_key(), result.statement)
    assert statement["transfer_id"] == str(t.id)
    assert (statement["covered_fen"], statement["self_pay_fen"]) == (13_783, 15_907)
    assert statement["lines"] == [
        ["amoxicillin", 24_690, 10_283, 14_407],
        ["x-ray", 5_000, 3_500, 1_500],
    ]
    assert deps.cipher.decrypt(resident.id_number_enc) not in result.receipt + str(statement)


async def test_insufficient_wallet_writes_nothing_not_even_the_insurance_leg(
    deps: CardDeps,
) -> None:
    resident, card = await resident_with_card(deps, wallet_fen=15_906)  # one fen short
    before = await counts(deps)
    with pytest.raises(CardError) as err:
        await med.settle(
            deps, HOSPITAL, "tertiary", BILL, "bill-1", card_no=card.card_no, rule=RULE
        )
    assert (err.value.code, err.value.status) == ("insufficient-funds", 402)
    assert await counts(deps) == before
    fund = await deps.ledger.system_account("insurance_fund")
    assert await deps.ledger.balance(fund) == 0
    assert await deps.ledger.balance(resident.wallet_account_id) == 15_906
    # topped up, the same bill then settles once
    await deps.ledger.top_up(resident.wallet_account_id, 1, "one-more-fen")
    ok = await med.settle(
        deps, HOSPITAL, "tertiary", BILL, "bill-1", card_no=card.card_no, rule=RULE
    )
    assert not ok.transfer.replayed
    assert await deps.ledger.balance(resident.wallet_account_id) == 0


async def test_settlement_retry_is_idempotent_and_a_changed_bill_is_refused(
    deps: CardDeps,
) -> None:
    resident, card = await resident_with_card(deps, wallet_fen=100_000)
    first = await med.settle(
        deps, HOSPITAL, "secondary", BILL, "bill-7", card_no=card.card_no, rule=RULE
    )
    after_first = await counts(deps)
    again = await med.settle(
        deps, HOSPITAL, "secondary", BILL, "bill-7", card_no=card.card_no, rule=RULE
    )
    assert again.transfer.replayed and again.transfer.id == first.transfer.id
    assert again.receipt == first.receipt and again.statement == first.statement
    assert await counts(deps) == after_first  # no second transfer, no second visit
    assert (
        await deps.ledger.balance(resident.wallet_account_id) == 100_000 - first.split.self_pay_fen
    )
    with pytest.raises(CardError) as err:
        await med.settle(
            deps,
            HOSPITAL,
            "secondary",
            [*BILL, item("extra", 1)],
            "bill-7",
            card_no=card.card_no,
            rule=RULE,
        )
    assert err.value.code == "idempotency-conflict"
    # the same bill number at another hospital is another bill
    other = await med.settle(
        deps, OTHER_HOSPITAL, "secondary", BILL, "bill-7", card_no=card.card_no, rule=RULE
    )
    assert other.transfer.id != first.transfer.id


async def test_frozen_card_is_refused_and_nothing_is_written(deps: CardDeps) -> None:
    resident, card = await resident_with_card(deps, wallet_fen=100_000)
    await svc.change_status(deps, card.card_no, "freeze", actor="supervisor", channel="counter")
    before = await counts(deps)
    with pytest.raises(CardError) as err:
        await med.settle(deps, HOSPITAL, "primary", BILL, "bill-1", card_no=card.card_no, rule=RULE)
    assert err.value.code == "card-not-active"
    assert await counts(deps) == before
    assert await deps.ledger.balance(resident.wallet_account_id) == 100_000


async def test_uninsured_card_pays_the_whole_bill_and_covered_only_bills_skip_the_wallet(
    deps: CardDeps,
) -> None:
    _, card = await resident_with_card(deps, wallet_fen=30_000, insured=False)
    r = await med.settle(deps, HOSPITAL, "primary", BILL, "b1", card_no=card.card_no, rule=RULE)
    assert (r.split.covered_fen, r.split.self_pay_fen) == (0, 29_690)
    assert len(r.transfer.postings) == 2  # no insurance leg at all

    rich, card2 = await resident_with_card(deps)  # empty wallet, fully covered bill
    full = InsuranceRule(0, {"primary": 10_000})
    r = await med.settle(deps, HOSPITAL, "primary", BILL, "b2", card_no=card2.card_no, rule=full)
    assert (r.split.covered_fen, r.split.self_pay_fen) == (29_690, 0)
    assert rich.wallet_account_id not in [p.account_id for p in r.transfer.postings]
    verify_receipt(r.receipt, svc.receipt_public_pem(deps))
    with pytest.raises(CardError) as err:
        await med.settle(deps, HOSPITAL, "quaternary", BILL, "b3", card_no=card.card_no)
    assert err.value.status == 422


async def test_ledger_settle_bill_rules_and_reversal(deps: CardDeps) -> None:
    ledger = deps.ledger
    wallet = await ledger.open_account("wallet", f"w:{uuid.uuid4().hex[:8]}")
    await ledger.top_up(wallet, 1_000, "seed")
    shop = await ledger.open_account("merchant", "m:clinic")
    with pytest.raises(InvalidAmount):
        await ledger.settle_bill(wallet, shop, 0, 0, "k0", "clinic")
    with pytest.raises(InvalidAmount):
        await ledger.settle_bill(wallet, shop, -1, 5, "k0", "clinic")
    with pytest.raises(InvalidRequest):
        await ledger.settle_bill(shop, wallet, 1, 1, "k0", "clinic")
    t = await ledger.settle_bill(wallet, shop, 600, 400, "k1", "clinic")
    fund = await ledger.system_account("insurance_fund")
    assert (await ledger.balance(wallet), await ledger.balance(fund)) == (400, -400)
    back = await ledger.reverse(t, "undo-k1")
    assert back.kind == "reversal"
    assert (await ledger.balance(wallet), await ledger.balance(fund)) == (1_000, 0)
    assert await ledger.balance(shop) == 0


# ---------------------------------------------------------------- grants


async def test_grant_is_checked_on_every_read(deps: CardDeps) -> None:
    clock = deps.clock
    assert isinstance(clock, Clock)
    resident, card = await resident_with_card(deps, wallet_fen=100_000)
    await med.settle(deps, HOSPITAL, "tertiary", BILL, "bill-1", card_no=card.card_no, rule=RULE)
    handle = med.medical_handle(deps, resident.id, OTHER_HOSPITAL)

    async def read(partner: str = OTHER_HOSPITAL, purpose: str = "treatment") -> dict:
        return await med.read_records(deps, partner, handle, purpose)

    with pytest.raises(CardError) as err:
        await read()
    assert (err.value.code, err.value.status) == ("grant-required", 403)

    grant = await med.grant_access(
        deps,
        resident.id,
        OTHER_HOSPITAL,
        "treatment",
        not_after=clock.now + timedelta(days=7),
        actor="agent",
    )
    assert await med.check_grant(deps, resident.id, OTHER_HOSPITAL, "treatment")
    summary = await read()
    assert summary["health_card"] == "HC20240001"
    assert summary["insurance_status"] == "insured"
    assert summary["visits"][0] | {"at": None} == {
        "at": None,
        "hospital": HOSPITAL,
        "kind": "settlement",
        "total_fen": 29_690,
        "covered_fen": 13_783,
        "self_pay_fen": 15_907,
    }
    assert deps.cipher.decrypt(resident.id_number_enc) not in str(summary)
    assert "SS1234567" not in str(summary)

    # another purpose, another hospital, another resident's handle: refused
    for kwargs in ({"purpose": "referral"}, {"partner": HOSPITAL}):
        with pytest.raises(CardError):
            await read(**kwargs)  # type: ignore[arg-type]

    # expired: the next read is refused
    clock.now += timedelta(days=7)
    assert not await med.check_grant(deps, resident.id, OTHER_HOSPITAL, "treatment")
    with pytest.raises(CardError) as err:
        await read()
    assert err.value.code == "grant-required"

    # a new grant, then revoked: refused at once
    clock.now += timedelta(hours=1)
    g2 = await med.grant_access(
        deps,
        resident.id,
        OTHER_HOSPITAL,
        "treatment",
        not_after=clock.now + timedelta(days=30),
        actor="agent",
    )
    await read()
    revoked = await med.revoke_grant(deps, resident.id, g2.id, actor="agent")
    assert revoked.revoked_at is not None and revoked.revoked_by == "agent"
    with pytest.raises(CardError):
        await read()
    assert not await med.check_grant(deps, resident.id, OTHER_HOSPITAL, "treatment")
    again = await med.revoke_grant(deps, resident.id, g2.id, actor="other")
    assert again.revoked_by == "agent"  # the first revocation stands

    # a grant that starts later is not in force yet
    await med.grant_access(
        deps,
        resident.id,
        OTHER_HOSPITAL,
        "treatment",
        not_before=clock.now + timedelta(days=1),
        not_after=clock.now + timedelta(days=2),
        actor="agent",
    )
    with pytest.raises(CardError):
        await read()

    views = [med.grant_view(g, clock.now) for g in await med.list_grants(deps, resident.id)]
    assert views[0]["id"] == grant.id
    assert [v["in_force"] for v in views] == [False, False, False]

    async with deps.read() as conn:
        reads = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(svc.event_t)
                .where(svc.event_t.c.action == med.EVENT_RECORD_READ)
            )
        ).scalar_one()
    assert reads == 2  # every successful read is logged


async def test_grant_validation(deps: CardDeps) -> None:
    resident, _ = await resident_with_card(deps)
    now = deps.clock()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"purpose": "marketing"}, "validation"),
        ({"not_after": now - timedelta(seconds=1)}, "validation"),
        ({"not_after": now + timedelta(days=400)}, "validation"),
        ({"partner_id": "nobody"}, "not-found"),
        ({"resident_id": 999_999}, "not-found"),
    ]
    for change, code in cases:
        args: dict[str, Any] = {
            "resident_id": resident.id,
            "partner_id": HOSPITAL,
            "purpose": "treatment",
            "not_after": now + timedelta(days=1),
        } | change
        with pytest.raises(CardError) as err:
            await med.grant_access(deps, **args, actor="agent")
        assert err.value.code == code, change
    with pytest.raises(CardError):
        await med.revoke_grant(deps, resident.id, 12_345, actor="agent")


# ---------------------------------------------------------------- check-in


async def test_check_in_with_a_medical_token(deps: CardDeps) -> None:
    resident, card = await resident_with_card(deps)
    token = await svc.make_token(deps, card.card_no, "medical")
    seen = await med.check_in(deps, token, HOSPITAL)
    assert seen == {
        "handle": med.medical_handle(deps, resident.id, HOSPITAL),
        "name": "张三丰",
        "health_card": "HC20240001",
        "insurance_status": "insured",
    }
    text = str(seen)
    assert resident.id_number_enc not in text and "SS1234567" not in text
    assert deps.cipher.decrypt(resident.id_number_enc) not in text
    other = await med.check_in(deps, token, OTHER_HOSPITAL)
    assert other["handle"] != seen["handle"]  # unlinkable between hospitals

    # replaced card: the resident keeps the same pseudonym at this hospital
    new = await svc.replace_card(deps, card.card_no, actor="agent", channel="counter")
    assert (await med.check_in(deps, await svc.make_token(deps, new.card_no, "medical"), HOSPITAL))[
        "handle"
    ] == seen["handle"]
    # the old card's token is revoked
    with pytest.raises(CardError) as err:
        await med.check_in(deps, token, HOSPITAL)
    assert err.value.code == "token-invalid"
    # a token of another purpose is not a medical token
    transit = await svc.make_token(deps, new.card_no, "transit")
    with pytest.raises(CardError, match="wrong_purpose"):
        await med.check_in(deps, transit, HOSPITAL)

    # a hospital's own visit card resolves to the same patient view
    await svc.link_hospital_card(deps, resident.id, HOSPITAL, "RJ-000123")
    assert (await med.resolve_visit_card(deps, HOSPITAL, "RJ-000123"))["handle"] == seen["handle"]
    with pytest.raises(CardError):
        await med.resolve_visit_card(deps, OTHER_HOSPITAL, "RJ-000123")


async def test_link_medical_cards(deps: CardDeps) -> None:
    _, card = await resident_with_card(deps, insured=False, health_card=False)
    with pytest.raises(CardError):
        await svc.make_token(deps, card.card_no, "medical")
    row = await med.link_medical_cards(
        deps, card.card_no, actor="agent", health_card_no="HC-77", social_security_no="SS-77"
    )
    assert (row.health_card_no, row.social_security_no) == ("HC-77", "SS-77")
    seen = await med.check_in(deps, await svc.make_token(deps, card.card_no, "medical"), HOSPITAL)
    assert (seen["health_card"], seen["insurance_status"]) == ("HC-77", "insured")
    with pytest.raises(CardError):
        await med.link_medical_cards(deps, card.card_no, actor="agent", health_card_no="x y")


# ---------------------------------------------------------------- the partner routes


def with_partner(partner_id: str, scopes: frozenset[str]) -> Callable[..., Any]:
    """Stands in for partner_auth_middleware: the tests here are about the handlers."""

    @web.middleware
    async def mw(request: web.Request, handler: Any) -> web.StreamResponse:
        request[PARTNER] = PartnerCredentials(partner_id, "hospital", scopes)
        return await handler(request)

    return mw


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_partner_routes(deps: CardDeps, aiohttp_client: Any) -> None:
    from citizen_card.partner_auth import PartnerAuthError

    @web.middleware
    async def scope_errors(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except PartnerAuthError as exc:
            return web.json_response({"code": exc.code}, status=exc.status)

    app = web.Application(
        middlewares=[scope_errors, with_partner(HOSPITAL, frozenset({"medical"}))]
    )
    app.add_routes(medical_routes(deps, rule=RULE, hospital_levels={HOSPITAL: "tertiary"}))
    client = await aiohttp_client(app)
    resident, card = await resident_with_card(deps, wallet_fen=100_000)
    token = await svc.make_token(deps, card.card_no, "medical")

    r = await client.post("/medical/check-in", json={"token": token})
    assert r.status == 200, await r.text()
    handle = (await r.json())["handle"]

    bill = {
        "bill_no": "B-1",
        "token": token,
        "items": [
            {
                "code": "amoxicillin",
                "name": "阿莫西林",
                "category": "drug",
                "unit_price_fen": 12_345,
                "quantity": 2,
            },
            {"code": "x-ray", "name": "胸片", "category": "exam", "unit_price_fen": 5_000},
        ],
    }
    r = await client.post("/medical/settlements", json=bill)
    assert r.status == 201, await r.text()
    body = await r.json()
    assert (body["covered_fen"], body["self_pay_fen"]) == (13_783, 15_907)
    verify_receipt(body["receipt"], svc.receipt_public_pem(deps))
    r = await client.post("/medical/settlements", json=bill)
    assert r.status == 200 and (await r.json())["replayed"] is True

    bad = {**bill, "items": [{**bill["items"][0], "unit_price_fen": 1.5}]}
    r = await client.post("/medical/settlements", json=bad)
    assert r.status == 422
    assert (await r.json())["type"] == "/problems/partner-validation_error"

    r = await client.get(f"/medical/records/{handle}?purpose=treatment")
    assert r.status == 403
    assert (await r.json())["type"] == "/problems/partner-grant_required"
    await med.grant_access(
        deps,
        resident.id,
        HOSPITAL,
        "treatment",
        not_after=deps.clock() + timedelta(days=1),
        actor="agent",
    )
    r = await client.get(f"/medical/records/{handle}?purpose=treatment")
    assert r.status == 200, await r.text()
    assert (await r.json())["visits"][0]["kind"] == "settlement"

    # no scope, no entry; an unconfigured hospital cannot settle
    app2 = web.Application(middlewares=[scope_errors, with_partner(HOSPITAL, frozenset())])
    app2.add_routes(medical_routes(deps))
    client2 = await aiohttp_client(app2)
    r = await client2.post("/medical/check-in", json={"token": token})
    assert (r.status, (await r.json())["code"]) == (403, "insufficient_scope")
    app3 = web.Application(middlewares=[with_partner(HOSPITAL, frozenset({"medical"}))])
    app3.add_routes(medical_routes(deps))
    client3 = await aiohttp_client(app3)
    r = await client3.post("/medical/settlements", json={**bill, "bill_no": "B-2"})
    assert r.status == 403
    assert (await r.json())["type"] == "/problems/partner-hospital_level_unknown"


class FakeStaff:
    username = "agent"
    role_name = "agent"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_admin_routes(deps: CardDeps, aiohttp_client: Any) -> None:
    app = web.Application()
    for route in medical_admin_routes(deps, lambda request, roles: FakeStaff()):
        app.router.add_route(route.method, route.path, route.handler)
    client = await aiohttp_client(app)
    resident, card = await resident_with_card(deps, health_card=False)
    base = f"/api/v1/residents/{resident.id}/grants"

    r = await client.post(base, json={"partner_id": HOSPITAL, "purpose": "referral", "days": 30})
    assert r.status == 201, await r.text()
    grant = await r.json()
    assert (grant["purpose"], grant["in_force"], grant["granted_by"]) == ("referral", True, "agent")
    assert await med.check_grant(deps, resident.id, HOSPITAL, "referral")
    r = await client.post(base, json={"partner_id": HOSPITAL, "purpose": "referral"})
    assert r.status == 422  # neither not_after nor days
    r = await client.post(base, json={"partner_id": HOSPITAL, "purpose": "ads", "days": 1})
    assert r.status == 422

    r = await client.post(f"{base}/{grant['id']}/revoke")
    assert r.status == 200 and (await r.json())["in_force"] is False
    r = await client.get(base)
    assert [g["id"] for g in (await r.json())["items"]] == [grant["id"]]
    assert (await client.post(f"{base}/999/revoke")).status == 404

    r = await client.post(
        f"/api/v1/cards/{card.card_no}/medical-links", json={"health_card_no": "HC-9"}
    )
    assert r.status == 200, await r.text()
    assert (await r.json())["health_card_no"] == "HC-9"
