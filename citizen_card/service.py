"""Citizen card use cases: residents, card lifecycle, PINs, tokens, status publication.

A loss report is the case that must never be slow or lost: it freezes the card in
one transaction, bumps the status-list version (so the next list marks the card),
and returns a signed freeze receipt carrying the time and the ledger position that
fix the liability cut-off. Wallet debits check the card inside the ledger's own
transaction (row locked on PostgreSQL), so no payment can slip past a freeze.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import phonenumbers
import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from citizen_card.changes import CARD as CARD_TOPIC
from citizen_card.changes import ChangeFeed, TtlCache
from citizen_card.identity import (
    InvalidIdNumber,
    is_valid_card_number,
    make_card_number,
    mask_name,
    parse_id_number,
)
from citizen_card.journal import asyncpg_all_fresh
from citizen_card.keys import Keyring, build_status_list, build_trust_list, issue_token
from citizen_card.ledger import Ledger
from citizen_card.models import Card, CardCounter, CardEvent, FreezeReceipt, HospitalCard, Resident
from citizen_card.pgpool import RawPool

resident_t = Resident.__table__  # type: ignore[attr-defined]
card_t = Card.__table__  # type: ignore[attr-defined]
hospital_t = HospitalCard.__table__  # type: ignore[attr-defined]
event_t = CardEvent.__table__  # type: ignore[attr-defined]
receipt_t = FreezeReceipt.__table__  # type: ignore[attr-defined]
counter_t = CardCounter.__table__  # type: ignore[attr-defined]

MAX_PIN_FAILURES = 5
CARD_CACHE_TTL_S = 1.0  # backstop for a lost bus message (see citizen_card.changes)
CARD_PREFIX = "3100"
CONCESSIONS = ("adult", "senior", "student", "disabled", "child")
_pin_hasher = PasswordHasher()


class CardStatus(StrEnum):
    ISSUED = "issued"
    ACTIVE = "active"
    LOST = "lost"  # reported lost: payments refused, tokens revoked
    FROZEN = "frozen"  # frozen by staff (suspected fraud, court order)
    REPLACED = "replaced"
    CANCELLED = "cancelled"


REVOKED = frozenset({CardStatus.LOST, CardStatus.FROZEN, CardStatus.REPLACED, CardStatus.CANCELLED})

# action -> (allowed from, to)
CARD_MOVES: dict[str, tuple[frozenset[CardStatus], CardStatus]] = {
    "activate": (frozenset({CardStatus.ISSUED}), CardStatus.ACTIVE),
    "report_lost": (
        frozenset({CardStatus.ISSUED, CardStatus.ACTIVE, CardStatus.FROZEN}),
        CardStatus.LOST,
    ),
    "freeze": (frozenset({CardStatus.ACTIVE}), CardStatus.FROZEN),
    "unfreeze": (frozenset({CardStatus.FROZEN, CardStatus.LOST}), CardStatus.ACTIVE),
    "replace": (
        frozenset({CardStatus.ISSUED, CardStatus.ACTIVE, CardStatus.LOST, CardStatus.FROZEN}),
        CardStatus.REPLACED,
    ),
    "cancel": (
        frozenset({CardStatus.ISSUED, CardStatus.ACTIVE, CardStatus.LOST, CardStatus.FROZEN}),
        CardStatus.CANCELLED,
    ),
}


class CardError(Exception):
    """Refused for a reason a person can act on; `code` is stable for clients."""

    def __init__(self, code: str, message: str, *, status: int = 409, field: str | None = None):
        super().__init__(message)
        self.code = code
        self.status = status
        self.field = field


class NotFound(CardError):
    def __init__(self, what: str):
        super().__init__("not-found", f"no {what}", status=404)


def plan_card_move(action: str, status: str) -> CardStatus:
    """The card's next status, or CardError naming what is allowed now."""
    sources, target = CARD_MOVES[action]
    current = CardStatus(status)
    if current not in sources:
        allowed = [a for a, (src, _) in CARD_MOVES.items() if current in src]
        raise CardError(
            "illegal-card-transition",
            f"cannot {action} a card that is {current.value}; "
            f"allowed now: {', '.join(allowed) or 'nothing'}",
        )
    return target


class PiiCipher(Protocol):
    def encrypt(self, plaintext: str) -> str: ...

    def decrypt(self, token: str) -> str: ...

    def blind_index(self, value: str) -> str: ...


@dataclass
class CardDeps:
    engine: AsyncEngine
    cipher: PiiCipher
    keyring: Keyring
    ledger: Ledger
    service_key: ed25519.Ed25519PrivateKey  # signs freeze receipts
    tz: ZoneInfo
    write_lock: asyncio.Lock | None = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    city_code: str = "CITY"
    changes: ChangeFeed = field(default_factory=ChangeFeed)
    card_cache_ttl_s: float = CARD_CACHE_TTL_S
    _status_cache: tuple[int, float, bytes] | None = None
    _trust_cache: tuple[float, bytes] | None = None
    # hot reads of the partner API (see citizen_card.changes): the status-list version
    # and card rows by status index, forgotten on any card change here or elsewhere
    _version: TtlCache[str, int] = field(init=False, repr=False)
    _cards: TtlCache[int, Any] = field(init=False, repr=False)
    _wallets: dict[int, int] = field(init=False, repr=False)  # resident -> wallet (fixed)

    def __post_init__(self) -> None:
        self._version = TtlCache(self.card_cache_ttl_s)
        self._cards = TtlCache(self.card_cache_ttl_s)
        self._wallets = {}
        self.changes.listen(self._on_change)
        if not self.is_sqlite and self.ledger.raw_pool is None:
            self.ledger.raw_pool = RawPool(self.engine)  # payments skip SQLAlchemy's pool
        if self.ledger.pseudonym is None:
            # receipts name a wallet by a handle made for the partner of the transfer,
            # never by the owner handle every partner would see alike
            self.ledger.pseudonym = self.partner_wallet_handle

    def partner_wallet_handle(self, owner: str, partner_id: str) -> str:
        return "h" + self.cipher.blind_index(f"handle|wallet:{partner_id}|{owner}")[:24]

    def _on_change(self, topic: str, key: str) -> None:
        if topic == CARD_TOPIC:
            self._status_cache = None
            self._version.drop()
            self._cards.drop()

    async def card_changed(self, card_no: str) -> None:
        """A card's status (or anything a partner check reads) changed: forget it here
        now, and on the other instances when the bus delivers."""
        await self.changes.changed(CARD_TOPIC, card_no)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        lock = self.write_lock or contextlib.nullcontext()
        async with lock, self.engine.begin() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn


# ---------------------------------------------------------------- helpers


def normalise_phone(raw: str) -> str:
    try:
        num = phonenumbers.parse(raw, "CN")
    except phonenumbers.NumberParseException:
        raise CardError("validation", "not a phone number", status=422, field="phone") from None
    if not phonenumbers.is_valid_number(num):
        raise CardError("validation", "not a valid phone number", status=422, field="phone")
    return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)


def mask_phone(e164: str) -> str:
    national = e164[3:] if e164.startswith("+86") else e164.lstrip("+")
    return national[:3] + "*" * max(0, len(national) - 7) + national[-4:]


async def _next(conn: AsyncConnection, name: str, n: int = 1) -> int:
    res = await conn.execute(
        sa.text(
            "INSERT INTO card_counter (name, value) VALUES (:name, :n) "
            "ON CONFLICT (name) DO UPDATE SET value = card_counter.value + :n RETURNING value"
        ),
        {"name": name, "n": n},
    )
    return int(res.scalar_one())


async def _log(
    conn: AsyncConnection,
    card_no: str,
    actor: str,
    channel: str,
    action: str,
    now: datetime,
    data: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        sa.insert(event_t).values(
            card_no=card_no, at=now, actor=actor, channel=channel, action=action, data=data or {}
        )
    )


def sign_detached(key: ed25519.Ed25519PrivateKey, payload: dict[str, Any]) -> str:
    body = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    sig = key.sign(body)
    return (
        base64.urlsafe_b64encode(body).decode().rstrip("=")
        + "."
        + base64.urlsafe_b64encode(sig).decode().rstrip("=")
    )


def verify_detached(public_key: ed25519.Ed25519PublicKey, signed: str) -> dict[str, Any]:
    """For partners and tests: check a freeze receipt and return its content."""
    body_b64, sig_b64 = signed.split(".")
    body = base64.urlsafe_b64decode(body_b64 + "=" * (-len(body_b64) % 4))
    sig = base64.urlsafe_b64decode(sig_b64 + "=" * (-len(sig_b64) % 4))
    public_key.verify(sig, body)
    return json.loads(body)


# ---------------------------------------------------------------- views


def resident_view(deps: CardDeps, r: Any, *, full_name: bool) -> dict[str, Any]:
    id_number = deps.cipher.decrypt(r.id_number_enc)
    phone = deps.cipher.decrypt(r.phone_enc) if r.phone_enc else None
    return {
        "id": r.id,
        "handle": r.handle,
        "name": r.name if full_name else mask_name(r.name),
        "id_number": id_number[:6] + "*" * 8 + id_number[-4:],
        "phone": mask_phone(phone) if phone else None,
        "birth_date": r.birth_date.isoformat() if full_name else None,
        "sex": r.sex,
        "verified": r.verified,
        "verified_source": r.verified_source,
    }


def card_view(c: Any) -> dict[str, Any]:
    return {
        "card_no": c.card_no,
        "status": c.status,
        "concession": c.concession,
        "social_security_no": c.social_security_no,
        "health_card_no": c.health_card_no,
        "replaced_by": c.replaced_by,
        "pin_set": c.pin_hash is not None,
        "pin_locked": c.pin_failures >= MAX_PIN_FAILURES,
        "issued_at": c.issued_at.isoformat().replace("+00:00", "Z"),
    }


# ---------------------------------------------------------------- residents


async def register_resident(
    deps: CardDeps,
    *,
    name: str,
    id_number: str,
    phone: str | None = None,
    address: str | None = None,
    verified_source: str | None = None,
) -> Any:
    try:
        idn = parse_id_number(id_number, today=deps.clock().astimezone(deps.tz).date())
    except InvalidIdNumber as exc:
        raise CardError("validation", str(exc), status=422, field="id_number") from None
    e164 = normalise_phone(phone) if phone else None
    now = deps.clock()
    bidx = deps.cipher.blind_index(idn.value)
    wallet = await deps.ledger.open_account("wallet", f"r-{secrets.token_hex(8)}")
    async with deps.write() as conn:
        if (
            await conn.execute(
                sa.select(resident_t.c.id).where(resident_t.c.id_number_bidx == bidx)
            )
        ).first():
            raise CardError(
                "resident-exists", "a resident with this ID number exists", field="id_number"
            )
        res = await conn.execute(
            sa.insert(resident_t)
            .values(
                handle=wallet.owner,
                name=name,
                id_number_enc=deps.cipher.encrypt(idn.value),
                id_number_bidx=bidx,
                phone_enc=deps.cipher.encrypt(e164) if e164 else None,
                phone_bidx=deps.cipher.blind_index(e164) if e164 else None,
                birth_date=idn.birth_date,
                sex=idn.sex,
                address=address,
                verified=verified_source is not None,
                verified_source=verified_source,
                verified_at=now if verified_source else None,
                wallet_account_id=wallet.id,
                created_at=now,
            )
            .returning(*resident_t.c)
        )
        return res.one()


async def get_resident(deps: CardDeps, resident_id: int) -> Any:
    async with deps.read() as conn:
        row = (
            await conn.execute(sa.select(resident_t).where(resident_t.c.id == resident_id))
        ).first()
    if row is None:
        raise NotFound(f"resident {resident_id}")
    return row


async def find_resident_by_id_number(deps: CardDeps, id_number: str) -> Any | None:
    async with deps.read() as conn:
        return (
            await conn.execute(
                sa.select(resident_t).where(
                    resident_t.c.id_number_bidx
                    == deps.cipher.blind_index(id_number.strip().upper())
                )
            )
        ).first()


# ---------------------------------------------------------------- cards


async def issue_card(
    deps: CardDeps,
    resident_id: int,
    *,
    actor: str,
    concession: str = "adult",
    social_security_no: str | None = None,
    health_card_no: str | None = None,
    pin: str | None = None,
    channel: str = "counter",
) -> Any:
    if concession not in CONCESSIONS:
        raise CardError(
            "validation",
            f"concession must be one of {', '.join(CONCESSIONS)}",
            status=422,
            field="concession",
        )
    await get_resident(deps, resident_id)
    pin_hash = await _hash_pin(pin) if pin else None
    now = deps.clock()
    async with deps.write() as conn:
        serial = await _next(conn, "card_serial")
        index = await _next(conn, "status_index") - 1
        card_no = make_card_number(CARD_PREFIX, serial)
        res = await conn.execute(
            sa.insert(card_t)
            .values(
                card_no=card_no,
                resident_id=resident_id,
                status=(CardStatus.ACTIVE if pin_hash else CardStatus.ISSUED).value,
                status_index=index,
                concession=concession,
                social_security_no=social_security_no,
                health_card_no=health_card_no,
                pin_hash=pin_hash,
                pin_failures=0,
                issued_at=now,
                updated_at=now,
                version=1,
            )
            .returning(*card_t.c)
        )
        await _log(conn, card_no, actor, channel, "issue", now, {"concession": concession})
        return res.one()


async def get_card(deps: CardDeps, card_no: str) -> Any:
    if not is_valid_card_number(card_no):
        raise NotFound(f"card {card_no}")
    async with deps.read() as conn:
        row = (await conn.execute(sa.select(card_t).where(card_t.c.card_no == card_no))).first()
    if row is None:
        raise NotFound(f"card {card_no}")
    return row


async def _load_for_update(deps: CardDeps, conn: AsyncConnection, card_no: str) -> Any:
    q = sa.select(card_t).where(card_t.c.card_no == card_no)
    if not deps.is_sqlite:
        q = q.with_for_update()
    row = (await conn.execute(q)).first()
    if row is None:
        raise NotFound(f"card {card_no}")
    return row


async def _move(
    deps: CardDeps,
    conn: AsyncConnection,
    card: Any,
    action: str,
    actor: str,
    channel: str,
    now: datetime,
    data: dict[str, Any] | None = None,
    **changes: Any,
) -> CardStatus:
    target = plan_card_move(action, card.status)
    await conn.execute(
        sa.update(card_t)
        .where(card_t.c.id == card.id)
        .values(status=target.value, updated_at=now, version=card.version + 1, **changes)
    )
    if (CardStatus(card.status) in REVOKED) != (target in REVOKED):
        await _next(conn, "status_version")
    await _log(conn, card.card_no, actor, channel, action, now, data)
    return target


async def report_lost(deps: CardDeps, card_no: str, *, actor: str, channel: str) -> dict[str, Any]:
    """Freeze now; answer with the signed receipt a resident can quote later."""
    now = deps.clock()
    async with deps.write() as conn:
        card = await _load_for_update(deps, conn, card_no)
        await _move(deps, conn, card, "report_lost", actor, channel, now)
        seq = await _next(conn, "freeze_receipt")
        number = now.astimezone(deps.tz).strftime("%Y%m%d") + f"{seq:06d}"
        # payments check the card row inside their own transaction: every transfer at
        # or below this position committed before the freeze
        position = await _ledger_position(deps, conn)
        content = {
            "receipt": number,
            "card": card_no[:4] + "*" * (len(card_no) - 8) + card_no[-4:],
            "frozen_at": now.isoformat().replace("+00:00", "Z"),
            "ledger_position": position,
            "channel": channel,
            "issuer": deps.city_code,
        }
        signed = sign_detached(deps.service_key, content)
        await conn.execute(
            sa.insert(receipt_t).values(
                number=number,
                card_no=card_no,
                at=now,
                ledger_position=position,
                channel=channel,
                receipt=signed,
            )
        )
    await deps.card_changed(card_no)
    return {**content, "signed": signed}


async def _ledger_position(deps: CardDeps, conn: AsyncConnection) -> int:
    if deps.is_sqlite:
        # SQLite: we hold the only write transaction, so the counter is exact
        res = await conn.execute(sa.text("SELECT COALESCE(MAX(seq), 0) FROM ledger_transfer"))
        return int(res.scalar_one())
    return await deps.ledger.ledger_position()


async def change_status(
    deps: CardDeps,
    card_no: str,
    action: str,
    *,
    actor: str,
    channel: str,
    reason: str | None = None,
) -> Any:
    """freeze / unfreeze / activate."""
    now = deps.clock()
    async with deps.write() as conn:
        card = await _load_for_update(deps, conn, card_no)
        changes: dict[str, Any] = {}
        if action == "unfreeze":
            changes["pin_failures"] = 0
        await _move(
            deps,
            conn,
            card,
            action,
            actor,
            channel,
            now,
            {"reason": reason} if reason else None,
            **changes,
        )
        row = (await conn.execute(sa.select(card_t).where(card_t.c.id == card.id))).one()
    await deps.card_changed(card_no)
    return row


async def replace_card(deps: CardDeps, card_no: str, *, actor: str, channel: str) -> Any:
    """A new number; the wallet (resident-level), links and hospital mappings carry over."""
    now = deps.clock()
    async with deps.write() as conn:
        old = await _load_for_update(deps, conn, card_no)
        plan_card_move("replace", old.status)
        serial = await _next(conn, "card_serial")
        index = await _next(conn, "status_index") - 1
        new_no = make_card_number(CARD_PREFIX, serial)
        await _move(
            deps,
            conn,
            old,
            "replace",
            actor,
            channel,
            now,
            {"new_card": new_no},
            replaced_by=new_no,
        )
        res = await conn.execute(
            sa.insert(card_t)
            .values(
                card_no=new_no,
                resident_id=old.resident_id,
                status=CardStatus.ACTIVE.value if old.pin_hash else CardStatus.ISSUED.value,
                status_index=index,
                concession=old.concession,
                social_security_no=old.social_security_no,
                health_card_no=old.health_card_no,
                pin_hash=old.pin_hash,
                pin_failures=0,
                issued_at=now,
                updated_at=now,
                version=1,
            )
            .returning(*card_t.c)
        )
        await _log(conn, new_no, actor, channel, "issue", now, {"replaces": card_no})
        new = res.one()
    await deps.card_changed(card_no)
    return new


async def cancel_card(deps: CardDeps, card_no: str, *, actor: str, channel: str) -> dict[str, Any]:
    """Cancel; with no other live card the wallet balance is paid out (refunded)."""
    now = deps.clock()
    async with deps.write() as conn:
        card = await _load_for_update(deps, conn, card_no)
        await _move(deps, conn, card, "cancel", actor, channel, now)
        others = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(card_t)
                .where(
                    card_t.c.resident_id == card.resident_id,
                    card_t.c.status.in_([CardStatus.ACTIVE.value, CardStatus.ISSUED.value]),
                )
            )
        ).scalar_one()
        resident = (
            await conn.execute(sa.select(resident_t).where(resident_t.c.id == card.resident_id))
        ).one()
    await deps.card_changed(card_no)
    refunded = 0
    if not others and resident.wallet_account_id is not None:
        balance = await deps.ledger.balance(resident.wallet_account_id)
        if balance > 0:
            payout = await deps.ledger.system_account("refunds")
            await deps.ledger.pay(
                resident.wallet_account_id,
                payout,
                balance,
                f"cancel:{card_no}",
                meta={"reason": "card cancelled", "card": card_no[-4:]},
            )
            refunded = balance
    return {"card_no": card_no, "status": CardStatus.CANCELLED.value, "refunded_fen": refunded}


# ---------------------------------------------------------------- PIN


async def _hash_pin(pin: str) -> str:
    if not (pin.isdigit() and len(pin) == 6):
        raise CardError("validation", "a PIN is 6 digits", status=422, field="pin")
    if len(set(pin)) == 1 or pin in "0123456789" or pin in "9876543210":
        raise CardError("validation", "choose a PIN that is not trivial", status=422, field="pin")
    return await asyncio.to_thread(_pin_hasher.hash, pin)


async def verify_pin(deps: CardDeps, card_no: str, pin: str, *, actor: str, channel: str) -> bool:
    """Five wrong tries lock the PIN; a reset needs an identity check."""
    card = await get_card(deps, card_no)
    if card.pin_hash is None:
        raise CardError("pin-not-set", "this card has no PIN yet")
    if card.pin_failures >= MAX_PIN_FAILURES:
        raise CardError(
            "pin-locked",
            "the PIN is locked after 5 wrong tries; reset it with an identity check",
            status=423,
        )

    def check() -> bool:
        try:
            return _pin_hasher.verify(card.pin_hash, pin)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    ok = await asyncio.to_thread(check)
    now = deps.clock()
    async with deps.write() as conn:
        if ok:
            await conn.execute(
                sa.update(card_t).where(card_t.c.id == card.id).values(pin_failures=0)
            )
        else:
            await conn.execute(
                sa.update(card_t)
                .where(card_t.c.id == card.id)
                .values(pin_failures=card_t.c.pin_failures + 1)
            )
            await _log(conn, card_no, actor, channel, "pin_failed", now)
    return ok


async def reset_pin(
    deps: CardDeps,
    card_no: str,
    *,
    name: str,
    id_last6: str,
    new_pin: str,
    actor: str,
    channel: str,
) -> None:
    card = await get_card(deps, card_no)
    resident = await get_resident(deps, card.resident_id)
    id_number = deps.cipher.decrypt(resident.id_number_enc)
    if not (
        hmac.compare_digest(resident.name.encode(), name.strip().encode())
        and hmac.compare_digest(id_number[-6:].encode(), id_last6.strip().upper().encode())
    ):
        raise CardError("identity-mismatch", "the name or ID number does not match", status=403)
    pin_hash = await _hash_pin(new_pin)
    now = deps.clock()
    async with deps.write() as conn:
        await conn.execute(
            sa.update(card_t)
            .where(card_t.c.id == card.id)
            .values(pin_hash=pin_hash, pin_failures=0, updated_at=now)
        )
        await _log(conn, card_no, actor, channel, "pin_reset", now)


# ---------------------------------------------------------------- tokens and lists


def card_handle(deps: CardDeps, card_no: str, audience: str) -> str:
    """A pseudonym for the card, different per audience (purpose or partner)."""
    digest = deps.cipher.blind_index(f"handle|{audience}|{card_no}")
    return "h" + digest[:24]


async def make_token(deps: CardDeps, card_no: str, purpose: str) -> str:
    card = await get_card(deps, card_no)
    if card.status != CardStatus.ACTIVE.value:
        raise CardError("card-not-active", f"the card is {card.status}")
    payload: dict[str, str] = {}
    if purpose == "transit":
        payload = {"concession": card.concession}
    elif purpose == "medical":
        if not card.health_card_no:
            raise CardError("no-health-card", "no health card is linked to this card")
        payload = {"health_card": card.health_card_no}
    elif purpose not in ("id", "pay"):
        raise CardError(
            "validation", "purpose must be id, transit, pay or medical", status=422, field="purpose"
        )
    return issue_token(
        deps.keyring,
        sub=card_handle(deps, card_no, purpose),
        purpose=purpose,
        status_index=card.status_index,
        payload=payload,
        now=deps.clock(),
        iss=deps.city_code,
    )


async def status_version(deps: CardDeps) -> int:
    """The status list's version (bumped by every revocation change), cached briefly."""

    async def read() -> int:
        async with deps.read() as conn:
            version = (
                await conn.execute(
                    sa.select(counter_t.c.value).where(counter_t.c.name == "status_version")
                )
            ).scalar_one_or_none()
        return int(version or 0)

    return await deps._version.load("v", read)


async def card_by_status_index(deps: CardDeps, index: int) -> Any | None:
    """The card at a status-list position (the online check's live status), cached
    briefly and forgotten on any card change."""

    async def read() -> Any | None:
        async with deps.read() as conn:
            q = sa.select(card_t).where(card_t.c.status_index == index)
            return (await conn.execute(q)).first()

    # a card issued a moment later must not look unknown: "none" is not kept
    return await deps._cards.load(index, read, keep=lambda row: row is not None)


async def wallet_of(deps: CardDeps, resident_id: int) -> int:
    """A resident's wallet account (set at registration, never changed): cached."""
    wallet = deps._wallets.get(resident_id)
    if wallet is None:
        resident = await get_resident(deps, resident_id)
        if resident.wallet_account_id is None:
            raise CardError("no-wallet", "this resident has no wallet")
        wallet = int(resident.wallet_account_id)
        if len(deps._wallets) > 100_000:
            deps._wallets.clear()
        deps._wallets[resident_id] = wallet
    return wallet


async def status_list(deps: CardDeps) -> bytes:
    """The signed status list, rebuilt only when a card's revocation changed."""
    version = await status_version(deps)
    cached = deps._status_cache
    # rebuilt when a revocation changed, and at least every minute so offline
    # verifiers always hold a list whose `exp` lies ahead
    if cached and cached[0] == version and time.time() - cached[1] < 60:
        return cached[2]
    async with deps.read() as conn:
        size = (
            await conn.execute(
                sa.select(counter_t.c.value).where(counter_t.c.name == "status_index")
            )
        ).scalar_one_or_none() or 0
        revoked = (
            (
                await conn.execute(
                    sa.select(card_t.c.status_index).where(
                        card_t.c.status.in_([s.value for s in REVOKED])
                    )
                )
            )
            .scalars()
            .all()
        )
    data = build_status_list(deps.keyring, revoked, max(size, 8), int(version), now=deps.clock())
    deps._status_cache = (int(version), time.time(), data)
    return data


def trust_list(deps: CardDeps) -> bytes:
    now = time.time()
    if deps._trust_cache and now - deps._trust_cache[0] < 60:
        return deps._trust_cache[1]
    data = build_trust_list(deps.keyring, deps.clock())
    deps._trust_cache = (now, data)
    return data


async def link_hospital_card(
    deps: CardDeps, resident_id: int, hospital_code: str, hospital_card_no: str
) -> None:
    await get_resident(deps, resident_id)
    async with deps.write() as conn:
        await conn.execute(
            sa.insert(hospital_t).values(
                hospital_code=hospital_code,
                hospital_card_no=hospital_card_no,
                resident_id=resident_id,
                created_at=deps.clock(),
            )
        )


async def resolve_hospital_card(
    deps: CardDeps, hospital_code: str, hospital_card_no: str
) -> Any | None:
    async with deps.read() as conn:
        return (
            await conn.execute(
                sa.select(resident_t)
                .join(hospital_t, hospital_t.c.resident_id == resident_t.c.id)
                .where(
                    hospital_t.c.hospital_code == hospital_code,
                    hospital_t.c.hospital_card_no == hospital_card_no,
                )
            )
        ).first()


class OneTimeUsed(CardError):
    """A single-use credential (pay token, payment authorization) was used already."""

    def __init__(self) -> None:
        super().__init__("replayed", "this one-time credential was used already")


_PG_CARD_STATUS = "SELECT status FROM card WHERE card_no = $1 FOR SHARE"
_PG_CARD_STATUS_CONSUME = (
    "WITH n AS (INSERT INTO partner_nonce (partner_id, nonce, expires_at) VALUES ($2, $3, $4) "
    "ON CONFLICT (partner_id, nonce) DO UPDATE SET expires_at = excluded.expires_at "
    "WHERE partner_nonce.expires_at <= $5 RETURNING 1) "
    "SELECT c.status, (SELECT count(*) FROM n) AS fresh FROM card c "
    "WHERE c.card_no = $1 FOR SHARE OF c"
)
# the batch form (Ledger._pay_batch): the cards locked in card-number order, so two
# batches and a freeze always take them in the same order
_PG_CARD_STATUS_BATCH = (
    "SELECT card_no, status FROM card WHERE card_no = ANY($1::varchar[]) ORDER BY card_no FOR SHARE"
)
_SQLITE_CONSUME = (
    "INSERT INTO partner_nonce (partner_id, nonce, expires_at) VALUES (?, ?, ?) "
    "ON CONFLICT (partner_id, nonce) DO UPDATE SET expires_at = excluded.expires_at "
    "WHERE partner_nonce.expires_at <= ? RETURNING 1"
)
_CONSUME = sa.text(
    "INSERT INTO partner_nonce (partner_id, nonce, expires_at) VALUES (:p, :n, :e) "
    "ON CONFLICT (partner_id, nonce) DO UPDATE SET expires_at = excluded.expires_at "
    "WHERE partner_nonce.expires_at <= :now RETURNING 1"
)


class CardPrecheck:
    """For Ledger.pay: refuse a debit unless the card is active, read under a row lock
    (so a freeze waits for payments already past the check; see the ledger's doc).

    With `consume=(namespace, nonce, expires_at)` it also uses up a one-time nonce in
    the payment's own transaction (`OneTimeUsed` if it was used): a payment that fails
    leaves its token usable, and a retry of a payment that went through finds its
    token used -- the ledger then answers with the first transfer.
    """

    def __init__(
        self, card_no: str, deps: CardDeps, consume: tuple[str, str, int] | None = None
    ) -> None:
        self.card_no = card_no
        self.is_sqlite = deps.is_sqlite
        self.consume = consume

    def _check(self, status: str | None) -> None:
        if status != CardStatus.ACTIVE.value:
            raise CardError("card-not-active", f"the card is {status or 'unknown'}")

    async def __call__(self, conn: AsyncConnection) -> None:
        q = sa.select(card_t.c.status).where(card_t.c.card_no == self.card_no)
        if not self.is_sqlite:
            q = q.with_for_update(read=True)
        self._check((await conn.execute(q)).scalar_one_or_none())
        if self.consume is not None:
            ns, nonce, expires_at = self.consume
            params = {"p": ns, "n": nonce, "e": expires_at, "now": int(time.time())}
            if (await conn.execute(_CONSUME, params)).first() is None:
                raise OneTimeUsed()

    def sqlite(self, db: Any) -> None:
        """The same on the ledger's sqlite3 connection (called on aiosqlite's thread)."""
        row = db.execute("SELECT status FROM card WHERE card_no = ?", (self.card_no,)).fetchone()
        self._check(None if row is None else row[0])
        if self.consume is not None:
            ns, nonce, expires_at = self.consume
            got = db.execute(_SQLITE_CONSUME, (ns, nonce, expires_at, int(time.time())))
            if not got.fetchall():
                raise OneTimeUsed()

    async def asyncpg(self, pg: Any) -> None:
        """The same in one round trip on the ledger's asyncpg connection."""
        if self.consume is None:
            self._check(await pg.fetchval(_PG_CARD_STATUS, self.card_no))
            return
        ns, nonce, expires_at = self.consume
        row = await pg.fetchrow(
            _PG_CARD_STATUS_CONSUME, self.card_no, ns, nonce, expires_at, int(time.time())
        )
        self._check(None if row is None else row["status"])
        if not row["fresh"]:
            raise OneTimeUsed()

    @staticmethod
    async def asyncpg_lock_batch(pg: Any, checks: Sequence[CardPrecheck]) -> list[bool]:
        """For a batch of payments (Ledger._pay_batch): lock every card row (FOR SHARE)
        and read its status in one statement; True where the card is active. The
        one-time nonces are used up later, by `asyncpg_consume_batch`, only for the
        payments the balance allowed."""
        rows = await pg.fetch(_PG_CARD_STATUS_BATCH, sorted({c.card_no for c in checks}))
        status = {r["card_no"]: r["status"] for r in rows}
        return [status.get(c.card_no) == CardStatus.ACTIVE.value for c in checks]

    @staticmethod
    async def asyncpg_consume_batch(pg: Any, checks: Sequence[CardPrecheck]) -> bool:
        """Use up the batch's one-time nonces in one statement; False if any was used
        already (or twice in the batch): the caller then rolls the batch back."""
        once = [c.consume for c in checks if c.consume is not None]
        return await asyncpg_all_fresh(pg, once, int(time.time()))


def card_precheck(card_no: str, deps: CardDeps) -> CardPrecheck:
    """For Ledger.pay: refuse a debit unless the card is active (row-locked read)."""
    return CardPrecheck(card_no, deps)


def today(deps: CardDeps) -> date:
    return deps.clock().astimezone(deps.tz).date()


def receipt_public_pem(deps: CardDeps) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return deps.service_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
