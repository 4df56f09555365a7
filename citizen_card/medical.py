"""Medical use of the citizen card: health-card links, check-in, clinic settlement, grants.

Pure rules first (bill items, the insurance rule, ``split_bill``), then async use
cases over ``CardDeps``. Nothing here imports the hotline.

Settlement (诊间结算)
    A bill is a list of items (integer fen, never a float). ``split_bill`` decides the
    insurance-covered part; the rest is self-pay. One ledger transfer
    (``Ledger.settle_bill``, kind ``settlement``) then credits the hospital's merchant
    account with the whole bill: the self-pay part debited from the resident's
    wallet, the covered part from the city's ``insurance_fund`` account, atomically,
    idempotent per (hospital, bill number), refused unless the card is active (the
    card row is read under a lock inside the ledger's transaction, as for payments),
    with the ledger's signed receipt. A short wallet writes nothing at all: no
    insurance leg either.

The insurance rule and its rounding
    Per bill: items flagged ``self_pay_only`` or in an excluded category are not
    eligible. The deductible (起付线; ``deductible_remaining``, by default the rule's
    per-bill ``deductible_fen``) is taken from the eligible items in bill order. Of
    the eligible amount above it the insurer pays ``ratio_bp`` basis points (1/100 %)
    for the hospital's level: ``covered = (eligible - deductible) * ratio_bp // 10000``,
    i.e. the covered part is rounded DOWN to the fen and the self-pay part, ``total -
    covered``, takes the remainder. The covered fen are spread over the lines by
    largest remainder (ties: bill order), so the lines add up to the totals exactly.
    An uninsured card (no social-security card linked) pays everything itself.

Identity and pseudonyms
    A hospital never sees the ID number or the social-security number. It knows the
    resident by a per-hospital pseudonym, ``medical_handle`` (stable across card
    replacement; unlinkable between hospitals), plus the name and health-card id it
    needs at the desk.

Grants
    A resident (through staff at the counter) grants a hospital access to their
    records for a purpose and a period (``medical_grant`` rows). Every record read
    checks, in the reading transaction, that a grant for that hospital, handle and
    purpose is in force now (``not_before <= now < not_after``, not revoked), and
    logs the read as a ``card_event``. Check-ins and settlements are logged the same
    way; the "records" the city holds are that visit history and the health-card
    links, nothing clinical.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import Field, SQLModel

from citizen_card import service as svc
from citizen_card.dbtypes import UTCDateTime
from citizen_card.ledger import (
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    InvalidRequest,
    Transfer,
)
from citizen_card.partner_models import PARTNER_TABLE
from citizen_card.service import CardDeps, CardError, CardStatus, NotFound
from citizen_card.verify import verify_token

# ---------------------------------------------------------------- the grant table


class MedicalGrant(SQLModel, table=True):
    """A resident's consent: ``partner_id`` may read their records for ``purpose`` in
    ``[not_before, not_after)`` unless revoked. ``handle`` is the resident's pseudonym
    for that partner (``medical_handle``), so a read by handle finds its grant."""

    __tablename__ = "medical_grant"
    __table_args__ = (
        sa.CheckConstraint("not_after > not_before", name="ck_medical_grant_period"),
        sa.Index("ix_medical_grant_partner_handle", "partner_id", "handle"),
    )

    id: int | None = Field(default=None, primary_key=True)
    resident_id: int = Field(index=True)
    partner_id: str = Field(max_length=64)
    handle: str = Field(max_length=40)
    purpose: str = Field(max_length=32)
    not_before: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    not_after: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    revoked_at: datetime | None = Field(
        default=None, sa_column=sa.Column(UTCDateTime(), nullable=True)
    )
    granted_by: str = Field(max_length=64)
    revoked_by: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


grant_t: sa.Table = MedicalGrant.__table__  # type: ignore[attr-defined]
MEDICAL_TABLES: tuple[sa.Table, ...] = (grant_t,)

GRANT_PURPOSES = ("treatment", "referral", "follow_up", "second_opinion")
MAX_GRANT_DAYS = 366
LEVELS = ("primary", "secondary", "tertiary")
BP = 10_000  # basis points in 100 %
MAX_ITEMS = 500
EVENT_CHECK_IN = "medical_check_in"
EVENT_SETTLEMENT = "medical_settlement"
EVENT_RECORD_READ = "medical_record_read"
VISIT_EVENTS = (EVENT_CHECK_IN, EVENT_SETTLEMENT)
PARTNER_CHANNEL = "partner"

_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_CARD_ID_RE = re.compile(r"^[A-Za-z0-9-]{4,32}$")


# ---------------------------------------------------------------- pure rules


def _fen(value: object, what: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}")
    return value


@dataclass(frozen=True)
class BillItem:
    """One line of a hospital bill. ``unit_price_fen`` and ``quantity`` are integers."""

    code: str
    name: str
    category: str
    unit_price_fen: int
    quantity: int = 1
    self_pay_only: bool = False  # e.g. 丙类 items: never covered

    def __post_init__(self) -> None:
        for name in ("code", "name", "category"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or len(value) > 100:
                raise ValueError(f"item {name} must be 1-100 characters")
        _fen(self.unit_price_fen, "unit_price_fen")
        _fen(self.quantity, "quantity", minimum=1)
        if not isinstance(self.self_pay_only, bool):
            raise ValueError("self_pay_only must be a boolean")

    @property
    def amount_fen(self) -> int:
        return self.unit_price_fen * self.quantity

    @classmethod
    def of(cls, value: BillItem | Mapping[str, Any]) -> BillItem:
        if isinstance(value, BillItem):
            return value
        try:
            return cls(**dict(value))
        except TypeError as exc:
            raise ValueError(f"not a bill item: {exc}") from None


@dataclass(frozen=True)
class InsuranceRule:
    """The configurable outpatient rule: a per-bill deductible (fen), the covered share
    by hospital level in basis points (9000 = 90 %), categories never covered."""

    deductible_fen: int
    ratio_bp_by_level: Mapping[str, int]
    excluded_categories: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        _fen(self.deductible_fen, "deductible_fen")
        if not self.ratio_bp_by_level:
            raise ValueError("ratio_bp_by_level names at least one hospital level")
        for level, bp in self.ratio_bp_by_level.items():
            if not isinstance(level, str) or not level:
                raise ValueError("hospital levels are non-empty strings")
            if _fen(bp, f"ratio for {level}") > BP:
                raise ValueError(f"ratio for {level} is at most {BP} basis points")
        object.__setattr__(self, "ratio_bp_by_level", dict(self.ratio_bp_by_level))
        object.__setattr__(self, "excluded_categories", frozenset(self.excluded_categories))

    def ratio_bp(self, level: str) -> int:
        try:
            return self.ratio_bp_by_level[level]
        except KeyError:
            raise ValueError(
                f"unknown hospital level {level!r}; known: {', '.join(self.ratio_bp_by_level)}"
            ) from None

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> InsuranceRule:
        """From configuration: ``{"deductible_fen": 0, "ratio_bp_by_level": {...},
        "excluded_categories": [...]}``."""
        return cls(
            deductible_fen=config["deductible_fen"],
            ratio_bp_by_level=dict(config["ratio_bp_by_level"]),
            excluded_categories=frozenset(config.get("excluded_categories", ())),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "deductible_fen": self.deductible_fen,
            "ratio_bp_by_level": dict(sorted(self.ratio_bp_by_level.items())),
            "excluded_categories": sorted(self.excluded_categories),
        }


DEFAULT_RULE = InsuranceRule(
    deductible_fen=0,
    ratio_bp_by_level={"primary": 9000, "secondary": 8000, "tertiary": 7000},
)


@dataclass(frozen=True)
class SplitLine:
    code: str
    name: str
    category: str
    amount_fen: int
    eligible: bool
    deductible_fen: int
    covered_fen: int
    self_pay_fen: int


@dataclass(frozen=True)
class Split:
    total_fen: int
    eligible_fen: int
    deductible_fen: int  # the part of the deductible this bill used up
    covered_fen: int
    self_pay_fen: int
    ratio_bp: int
    lines: tuple[SplitLine, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"lines": [asdict(line) for line in self.lines]}


def _items(items: Iterable[BillItem | Mapping[str, Any]]) -> list[BillItem]:
    out = [BillItem.of(i) for i in items]
    if not out:
        raise ValueError("a bill has at least one item")
    if len(out) > MAX_ITEMS:
        raise ValueError(f"a bill has at most {MAX_ITEMS} items")
    return out


def split_bill(
    items: Iterable[BillItem | Mapping[str, Any]],
    rule: InsuranceRule,
    hospital_level: str,
    deductible_remaining: int | None = None,
) -> Split:
    """Split a bill into the insurance-covered part and the self-pay part (module doc).

    ``deductible_remaining`` is what is left of the resident's deductible (default: the
    rule's per-bill ``deductible_fen``); ``Split.deductible_fen`` says how much this
    bill used. Raises ``ValueError`` for a bad item, level or deductible.
    """
    bill = _items(items)
    ratio = rule.ratio_bp(hospital_level)
    remaining = _fen(
        rule.deductible_fen if deductible_remaining is None else deductible_remaining,
        "deductible_remaining",
    )
    plan: list[tuple[BillItem, bool, int, int]] = []  # item, eligible, deductible, base
    for item in bill:
        eligible = not item.self_pay_only and item.category not in rule.excluded_categories
        ded = min(remaining, item.amount_fen) if eligible else 0
        remaining -= ded
        plan.append((item, eligible, ded, item.amount_fen - ded if eligible else 0))
    base = sum(p[3] for p in plan)
    covered = base * ratio // BP
    shares = [p[3] * ratio // BP for p in plan]
    # Largest remainder: the fen lost by flooring each line go to the lines that lost
    # most (ties in bill order), so the lines sum to the bill-level ``covered``.
    leftover = covered - sum(shares)
    order = sorted(range(len(plan)), key=lambda i: (-(plan[i][3] * ratio % BP), i))
    for i in order[:leftover]:
        shares[i] += 1
    lines = tuple(
        SplitLine(
            code=item.code,
            name=item.name,
            category=item.category,
            amount_fen=item.amount_fen,
            eligible=eligible,
            deductible_fen=ded,
            covered_fen=share,
            self_pay_fen=item.amount_fen - share,
        )
        for (item, eligible, ded, _), share in zip(plan, shares, strict=True)
    )
    total = sum(item.amount_fen for item in bill)
    return Split(
        total_fen=total,
        eligible_fen=sum(p[0].amount_fen for p in plan if p[1]),
        deductible_fen=sum(p[2] for p in plan),
        covered_fen=covered,
        self_pay_fen=total - covered,
        ratio_bp=ratio,
        lines=lines,
    )


def self_pay_split(items: Iterable[BillItem | Mapping[str, Any]]) -> Split:
    """The split of an uninsured resident: everything is self-pay."""
    bill = _items(items)
    total = sum(i.amount_fen for i in bill)
    lines = tuple(
        SplitLine(i.code, i.name, i.category, i.amount_fen, False, 0, 0, i.amount_fen) for i in bill
    )
    return Split(total, 0, 0, 0, total, 0, lines)


def bill_digest(items: Sequence[BillItem]) -> str:
    """SHA-256 of the bill's items as canonical JSON: binds a settlement to its bill."""
    doc = [asdict(i) for i in items]
    data = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(data.encode("ascii")).hexdigest()


def grant_in_force(
    not_before: datetime, not_after: datetime, revoked_at: datetime | None, now: datetime
) -> bool:
    return revoked_at is None and not_before <= now < not_after


# ---------------------------------------------------------------- pseudonyms and views


def medical_handle(deps: CardDeps, resident_id: int, partner_id: str) -> str:
    """The resident's pseudonym for one hospital: stable across card replacement,
    different for every hospital, not reversible without the city's index key."""
    digest = deps.cipher.blind_index(f"handle|medical:{partner_id}|resident:{resident_id}")
    return "h" + digest[:24]


def insurance_status(card_row: Any) -> str:
    return "insured" if card_row.social_security_no else "uninsured"


def _patient_view(deps: CardDeps, card_row: Any, resident: Any, partner_id: str) -> dict[str, Any]:
    """What a hospital desk sees: never the ID number nor the social-security number."""
    return {
        "handle": medical_handle(deps, resident.id, partner_id),
        "name": resident.name,
        "health_card": card_row.health_card_no,
        "insurance_status": insurance_status(card_row),
    }


def _partner_id(partner_id: str) -> str:
    if not isinstance(partner_id, str) or not _ID_RE.fullmatch(partner_id):
        raise CardError("validation", "not a partner id", status=422, field="partner_id")
    return partner_id


async def _event(
    conn: AsyncConnection,
    card_no: str,
    actor: str,
    action: str,
    now: datetime,
    data: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        sa.insert(svc.event_t).values(
            card_no=card_no,
            at=now,
            actor=actor,
            channel=PARTNER_CHANNEL,
            action=action,
            data=data or {},
        )
    )


# ---------------------------------------------------------------- health-card links


async def link_medical_cards(
    deps: CardDeps,
    card_no: str,
    *,
    actor: str,
    health_card_no: str | None = None,
    social_security_no: str | None = None,
    channel: str = "counter",
) -> Any:
    """Link (or change) the health card and/or social-security card of a live card.
    The numbers are kept on the card (replacement carries them over); the event log
    records that they changed, not the numbers."""
    if health_card_no is None and social_security_no is None:
        raise CardError("validation", "give health_card_no or social_security_no", status=422)
    changes: dict[str, str] = {}
    for name, value in (
        ("health_card_no", health_card_no),
        ("social_security_no", social_security_no),
    ):
        if value is None:
            continue
        value = value.strip()
        if not _CARD_ID_RE.fullmatch(value):
            raise CardError(
                "validation", f"{name} is 4-32 letters, digits or '-'", status=422, field=name
            )
        changes[name] = value
    now = deps.clock()
    async with deps.write() as conn:
        row = await svc._load_for_update(deps, conn, card_no)
        if row.status in (CardStatus.REPLACED.value, CardStatus.CANCELLED.value):
            raise CardError("card-not-live", f"the card is {row.status}")
        await conn.execute(
            sa.update(svc.card_t)
            .where(svc.card_t.c.id == row.id)
            .values(updated_at=now, version=row.version + 1, **changes)
        )
        await svc._log(
            conn, card_no, actor, channel, "link_medical", now, {"linked": sorted(changes)}
        )
        return (await conn.execute(sa.select(svc.card_t).where(svc.card_t.c.id == row.id))).one()


async def _live_card_of(conn: AsyncConnection, resident_id: int) -> Any | None:
    """The resident's newest card that is not replaced or cancelled."""
    return (
        await conn.execute(
            sa.select(svc.card_t)
            .where(
                svc.card_t.c.resident_id == resident_id,
                svc.card_t.c.status.notin_([CardStatus.REPLACED.value, CardStatus.CANCELLED.value]),
            )
            .order_by(svc.card_t.c.issued_at.desc(), svc.card_t.c.id.desc())
            .limit(1)
        )
    ).first()


async def _resident(conn: AsyncConnection, resident_id: int) -> Any:
    row = (
        await conn.execute(sa.select(svc.resident_t).where(svc.resident_t.c.id == resident_id))
    ).first()
    if row is None:
        raise NotFound(f"resident {resident_id}")
    return row


# ---------------------------------------------------------------- identifying the patient


async def _card_from_token(deps: CardDeps, token: str) -> Any:
    """Verify a ``medical`` token as a clinic would offline (the served trust list and
    status list, the pinned root key), then against the live card."""
    verdict = verify_token(
        token,
        svc.trust_list(deps),
        await svc.status_list(deps),
        "medical",
        deps.clock(),
        root_key=deps.keyring.root_public_pem(),
    )
    if not verdict.valid:
        raise CardError(
            "token-invalid", f"the medical code is not valid ({verdict.reason})", status=422
        )
    claims = verdict.claims
    async with deps.read() as conn:
        row = (
            await conn.execute(
                sa.select(svc.card_t).where(svc.card_t.c.status_index == claims["status_index"])
            )
        ).first()
    if row is None or not hmac.compare_digest(
        svc.card_handle(deps, row.card_no, "medical"), str(claims["sub"])
    ):
        raise CardError("token-invalid", "the medical code names no card", status=422)
    if claims["payload"].get("health_card") != row.health_card_no:
        raise CardError("token-invalid", "the health card changed; show a new code", status=422)
    return row


async def _identify(
    deps: CardDeps,
    partner_id: str,
    *,
    token: str | None = None,
    card_no: str | None = None,
    hospital_card_no: str | None = None,
) -> Any:
    """The card named by exactly one of: a medical QR token, a card number, or this
    hospital's own visit card number (its ``hospital_code`` is the partner id)."""
    given = [x for x in (token, card_no, hospital_card_no) if x is not None]
    if len(given) != 1:
        raise CardError(
            "validation", "give exactly one of token, card_no, hospital_card_no", status=422
        )
    if token is not None:
        return await _card_from_token(deps, token)
    if card_no is not None:
        return await svc.get_card(deps, card_no)
    resident = await svc.resolve_hospital_card(deps, partner_id, str(hospital_card_no))
    if resident is None:
        raise NotFound(f"visit card {hospital_card_no}")
    async with deps.read() as conn:
        row = await _live_card_of(conn, resident.id)
    if row is None:
        raise CardError("card-not-active", "the resident has no live card")
    return row


# ---------------------------------------------------------------- check-in


async def check_in(deps: CardDeps, token: str, hospital_partner_id: str) -> dict[str, Any]:
    """The hospital scanned the resident's medical QR code: who is it?

    Returns ``{handle, name, health_card, insurance_status}`` (``handle`` is the
    per-hospital pseudonym). The token must verify for purpose ``medical`` and the
    card must be active now (the live status, not only the published list)."""
    partner_id = _partner_id(hospital_partner_id)
    row = await _card_from_token(deps, token)
    if row.status != CardStatus.ACTIVE.value:
        raise CardError("card-not-active", f"the card is {row.status}")
    if not row.health_card_no:
        raise CardError("no-health-card", "no health card is linked to this card")
    now = deps.clock()
    async with deps.write() as conn:
        resident = await _resident(conn, row.resident_id)
        await _event(conn, row.card_no, partner_id, EVENT_CHECK_IN, now)
    return _patient_view(deps, row, resident, partner_id)


async def resolve_visit_card(
    deps: CardDeps, hospital_partner_id: str, hospital_card_no: str
) -> dict[str, Any]:
    """A hospital's own visit card (诊疗卡) -> the patient, as at check-in."""
    partner_id = _partner_id(hospital_partner_id)
    row = await _identify(deps, partner_id, hospital_card_no=hospital_card_no)
    async with deps.read() as conn:
        resident = await _resident(conn, row.resident_id)
    return _patient_view(deps, row, resident, partner_id)


# ---------------------------------------------------------------- settlement


@dataclass(frozen=True)
class Settlement:
    split: Split
    transfer: Transfer
    statement: str  # the itemised split, signed with the service key (verify_detached)

    @property
    def receipt(self) -> str:
        """The ledger's signed receipt (``ledger.verify_receipt``)."""
        return self.transfer.receipt

    def to_dict(self) -> dict[str, Any]:
        return {
            "transfer_id": str(self.transfer.id),
            "total_fen": self.split.total_fen,
            "covered_fen": self.split.covered_fen,
            "self_pay_fen": self.split.self_pay_fen,
            "deductible_fen": self.split.deductible_fen,
            "ratio_bp": self.split.ratio_bp,
            "lines": [asdict(line) for line in self.split.lines],
            "receipt": self.transfer.receipt,
            "statement": self.statement,
            "replayed": self.transfer.replayed,
        }


def hospital_account_owner(partner_id: str) -> str:
    return f"m:{partner_id}"


async def settle(
    deps: CardDeps,
    hospital_partner_id: str,
    hospital_level: str,
    bill_items: Iterable[BillItem | Mapping[str, Any]],
    idem_key: str,
    *,
    token: str | None = None,
    card_no: str | None = None,
    hospital_card_no: str | None = None,
    rule: InsuranceRule = DEFAULT_RULE,
    deductible_remaining: int | None = None,
) -> Settlement:
    """Clinic settlement (诊间结算) of one bill, named by ``idem_key`` (the hospital's
    bill number): split it, then one atomic ledger transfer (module doc).

    A retry with the same key and the same bill returns the first settlement
    (``transfer.replayed``); the same key with another bill is refused. Identify the
    card by exactly one of ``token`` (medical QR; a retry after it expired must name
    the card another way), ``card_no`` or ``hospital_card_no``.
    """
    partner_id = _partner_id(hospital_partner_id)
    if hospital_level not in rule.ratio_bp_by_level:
        raise CardError(
            "validation",
            f"unknown hospital level {hospital_level!r}",
            status=422,
            field="hospital_level",
        )
    try:
        items = _items(bill_items)
        row = await _identify(
            deps, partner_id, token=token, card_no=card_no, hospital_card_no=hospital_card_no
        )
        split = (
            split_bill(items, rule, hospital_level, deductible_remaining)
            if row.social_security_no
            else self_pay_split(items)
        )
    except ValueError as exc:
        raise CardError("validation", str(exc), status=422) from None
    async with deps.read() as conn:
        resident = await _resident(conn, row.resident_id)
    if resident.wallet_account_id is None:
        raise CardError("no-wallet", "the resident has no wallet")
    digest = bill_digest(items)
    lock_card = svc.card_precheck(row.card_no, deps)

    async def precheck(conn: AsyncConnection) -> None:
        await lock_card(conn)  # active, under a row lock: no settlement slips past a freeze
        # the visit joins the resident's history in the transfer's own transaction
        await _event(
            conn,
            row.card_no,
            partner_id,
            EVENT_SETTLEMENT,
            deps.clock(),
            {
                "bill": idem_key,
                "total_fen": split.total_fen,
                "covered_fen": split.covered_fen,
                "self_pay_fen": split.self_pay_fen,
            },
        )

    ledger = deps.ledger
    hospital = await ledger.open_account("merchant", hospital_account_owner(partner_id))
    try:
        transfer = await ledger.settle_bill(
            resident.wallet_account_id,
            hospital,
            split.self_pay_fen,
            split.covered_fen,
            idem_key,
            partner_id,
            meta={
                "bill_sha256": digest,
                "hospital_level": hospital_level,
                "deductible_fen": split.deductible_fen,
                "ratio_bp": split.ratio_bp,
            },
            precheck=precheck,
        )
    except InsufficientFunds:
        raise CardError("insufficient-funds", "the wallet balance is too low", status=402) from None
    except IdempotencyConflict:
        raise CardError(
            "idempotency-conflict", f"bill {idem_key!r} was settled with other contents"
        ) from None
    except (InvalidAmount, InvalidRequest) as exc:
        raise CardError("validation", str(exc), status=422) from None
    statement = svc.sign_detached(
        deps.service_key,
        {
            "type": "medical-settlement",
            "issuer": deps.city_code,
            "hospital": partner_id,
            "hospital_level": hospital_level,
            "bill": idem_key,
            "bill_sha256": digest,
            "transfer_id": str(transfer.id),
            "receipt_sha256": hashlib.sha256(transfer.receipt.encode("ascii")).hexdigest(),
            "at": transfer.created_at.isoformat().replace("+00:00", "Z"),
            **{k: v for k, v in split.to_dict().items() if k != "lines"},
            "lines": [
                [ln.code, ln.amount_fen, ln.covered_fen, ln.self_pay_fen] for ln in split.lines
            ],
        },
    )
    return Settlement(split=split, transfer=transfer, statement=statement)


# ---------------------------------------------------------------- grants


def _grant_view(row: Any) -> dict[str, Any]:
    def iso(t: datetime | None) -> str | None:
        return None if t is None else t.isoformat().replace("+00:00", "Z")

    return {
        "id": row.id,
        "resident_id": row.resident_id,
        "partner_id": row.partner_id,
        "purpose": row.purpose,
        "not_before": iso(row.not_before),
        "not_after": iso(row.not_after),
        "revoked_at": iso(row.revoked_at),
        "granted_by": row.granted_by,
        "revoked_by": row.revoked_by,
        "created_at": iso(row.created_at),
    }


def grant_view(row: Any, now: datetime) -> dict[str, Any]:
    return _grant_view(row) | {
        "in_force": grant_in_force(row.not_before, row.not_after, row.revoked_at, now)
    }


async def grant_access(
    deps: CardDeps,
    resident_id: int,
    partner_id: str,
    purpose: str,
    *,
    not_after: datetime,
    not_before: datetime | None = None,
    actor: str,
) -> Any:
    """The resident grants a hospital access to their records for a purpose and a
    period (at most ``MAX_GRANT_DAYS``, ending in the future)."""
    partner_id = _partner_id(partner_id)
    if purpose not in GRANT_PURPOSES:
        raise CardError(
            "validation",
            f"purpose must be one of {', '.join(GRANT_PURPOSES)}",
            status=422,
            field="purpose",
        )
    now = deps.clock()
    start = now if not_before is None else not_before
    for name, t in (("not_before", start), ("not_after", not_after)):
        if t.tzinfo is None:
            raise CardError("validation", f"{name} needs a time zone", status=422, field=name)
    if not_after <= max(start, now):
        raise CardError(
            "validation",
            "not_after must lie after now and not_before",
            status=422,
            field="not_after",
        )
    if not_after - start > timedelta(days=MAX_GRANT_DAYS):
        raise CardError(
            "validation",
            f"a grant lasts at most {MAX_GRANT_DAYS} days",
            status=422,
            field="not_after",
        )
    async with deps.write() as conn:
        await _resident(conn, resident_id)
        known = (
            await conn.execute(
                sa.select(PARTNER_TABLE.c.partner_id).where(
                    PARTNER_TABLE.c.partner_id == partner_id
                )
            )
        ).first()
        if known is None:
            raise NotFound(f"partner {partner_id}")
        res = await conn.execute(
            sa.insert(grant_t)
            .values(
                resident_id=resident_id,
                partner_id=partner_id,
                handle=medical_handle(deps, resident_id, partner_id),
                purpose=purpose,
                not_before=start,
                not_after=not_after,
                revoked_at=None,
                granted_by=actor,
                revoked_by=None,
                created_at=now,
            )
            .returning(*grant_t.c)
        )
        return res.one()


async def revoke_grant(deps: CardDeps, resident_id: int, grant_id: int, *, actor: str) -> Any:
    """Revoke at once; revoking a revoked grant changes nothing and is not an error."""
    now = deps.clock()
    async with deps.write() as conn:
        await conn.execute(
            sa.update(grant_t)
            .where(
                grant_t.c.id == grant_id,
                grant_t.c.resident_id == resident_id,
                grant_t.c.revoked_at.is_(None),
            )
            .values(revoked_at=now, revoked_by=actor)
        )
        row = (
            await conn.execute(
                sa.select(grant_t).where(
                    grant_t.c.id == grant_id, grant_t.c.resident_id == resident_id
                )
            )
        ).first()
    if row is None:
        raise NotFound(f"grant {grant_id}")
    return row


async def list_grants(deps: CardDeps, resident_id: int) -> list[Any]:
    async with deps.read() as conn:
        await _resident(conn, resident_id)
        return list(
            (
                await conn.execute(
                    sa.select(grant_t)
                    .where(grant_t.c.resident_id == resident_id)
                    .order_by(grant_t.c.id)
                )
            ).all()
        )


def _in_force(partner_id: str, purpose: str, now: datetime) -> Any:
    return sa.and_(
        grant_t.c.partner_id == partner_id,
        grant_t.c.purpose == purpose,
        grant_t.c.revoked_at.is_(None),
        grant_t.c.not_before <= now,
        grant_t.c.not_after > now,
    )


async def check_grant(
    deps: CardDeps,
    resident_id: int,
    partner_id: str,
    purpose: str,
    now: datetime | None = None,
    *,
    conn: AsyncConnection | None = None,
) -> bool:
    """Is a grant for this resident, hospital and purpose in force at ``now``?"""
    now = deps.clock() if now is None else now
    stmt = (
        sa.select(grant_t.c.id)
        .where(grant_t.c.resident_id == resident_id, _in_force(partner_id, purpose, now))
        .limit(1)
    )
    if conn is not None:
        return (await conn.execute(stmt)).first() is not None
    async with deps.read() as rconn:
        return (await rconn.execute(stmt)).first() is not None


async def read_records(
    deps: CardDeps, partner_id: str, handle: str, purpose: str, *, limit: int = 20
) -> dict[str, Any]:
    """The minimal record summary a hospital may read under a grant in force: the
    health card, insurance status and recent visits (check-ins, settlements at any
    hospital). The grant is checked in the reading transaction, and the read logged.
    No grant (or an unknown handle: indistinguishable) -> ``grant-required`` (403)."""
    partner_id = _partner_id(partner_id)
    now = deps.clock()
    async with deps.write() as conn:
        grant = (
            await conn.execute(
                sa.select(grant_t)
                .where(grant_t.c.handle == handle, _in_force(partner_id, purpose, now))
                .order_by(grant_t.c.not_after.desc())
                .limit(1)
            )
        ).first()
        if grant is None:
            raise CardError(
                "grant-required",
                f"no grant in force lets {partner_id} read these records for {purpose!r}",
                status=403,
            )
        card_row = await _live_card_of(conn, grant.resident_id)
        card_nos = (
            (
                await conn.execute(
                    sa.select(svc.card_t.c.card_no).where(
                        svc.card_t.c.resident_id == grant.resident_id
                    )
                )
            )
            .scalars()
            .all()
        )
        events = (
            await conn.execute(
                sa.select(svc.event_t)
                .where(svc.event_t.c.card_no.in_(card_nos), svc.event_t.c.action.in_(VISIT_EVENTS))
                .order_by(svc.event_t.c.at.desc(), svc.event_t.c.id.desc())
                .limit(limit)
            )
        ).all()
        if card_row is not None:
            await _event(
                conn,
                card_row.card_no,
                partner_id,
                EVENT_RECORD_READ,
                now,
                {"grant": grant.id, "purpose": purpose},
            )
    visits = []
    for e in events:
        visit: dict[str, Any] = {
            "at": e.at.isoformat().replace("+00:00", "Z"),
            "hospital": e.actor,
            "kind": "settlement" if e.action == EVENT_SETTLEMENT else "check_in",
        }
        if e.action == EVENT_SETTLEMENT:
            visit.update({k: e.data.get(k) for k in ("total_fen", "covered_fen", "self_pay_fen")})
        visits.append(visit)
    return {
        "handle": handle,
        "purpose": purpose,
        "grant": {"id": grant.id, "not_after": _grant_view(grant)["not_after"]},
        "health_card": card_row.health_card_no if card_row is not None else None,
        "insurance_status": insurance_status(card_row) if card_row is not None else None,
        "visits": visits,
    }
