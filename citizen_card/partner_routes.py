"""The partner API (/partner/v1) and the staff routes that register partners.

`partner_app` is an aiohttp sub-application; the hotline mounts it with
`app.add_subapp("/partner/v1", partner_app(...))`. Requests reach a sub-application
with their full path (`/partner/v1/payments`), and that full, raw path is what the
partner signed. The signature middleware is installed with prefix "/": it guards
every request the sub-application sees -- unknown paths too, wherever it is
mounted -- so a route can never be left unauthenticated by a prefix mismatch.

Middlewares of the sub-application, outermost first:

1. `partner_auth_middleware`: signature, clock window, nonce, per-partner rate
   limit; signs every answer (see docs/partner-api.md);
2. audit: one `card_event` row per authenticated call (actor `partner:<id>`,
   channel `partner`, action = the endpoint, data: status, nonce and the
   non-personal facts the handler noted). When the row cannot be written the
   answer is a 500: nothing is disclosed unaudited (a payment already made is
   safe to retry with its Idempotency-Key);
3. idempotency: `Idempotency-Key` on POST (required on payments and refunds): the
   first 2xx answer is kept 24 h and replayed, the same key with another request is
   422, while the first is still running 409. The store (`SqlIdempotencyStore`,
   table `partner_idempotency`) is shared by every instance. Payments and refunds
   are durable beyond it too: the key is also the ledger's idempotency key, and the
   ledger stores a digest of the request with the transfer.

The small durable writes of a call -- its nonce, its key's claim and first answer,
its audit row -- are group-committed by the instance's `PartnerJournal`
(citizen_card.journal), in as few commits as the call allows (`_admission`): a call
that changes nothing records its nonce with its audit row after the handler (a
replay is then answered 401 and nothing the handler found leaves); a POST with an
Idempotency-Key records its nonce with the key's claim. The partner, the status-list
version and card rows are read from short-lived caches that a change empties at once
(citizen_card.changes).

Disclosure is minimal and by scope: `identity` answers only match yes/no;
`transit` validity and concession class; `medical` name, health card, insurance
status (and the partner's own card handle); `pay` an opaque single-use payment
authorization; `id` validity only. A partner only ever sees card handles made for
it (`service.card_handle(card, card_no, partner_id)`), never a card or ID number.

This module imports nothing of the hotline.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal, Protocol

import sqlalchemy as sa
from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from citizen_card import service as svc
from citizen_card.journal import ClaimResult, PartnerJournal, StoredAnswer
from citizen_card.jsontext import dumps
from citizen_card.ledger import (
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    LedgerInconsistent,
    NotRefundable,
    RefundExceedsOriginal,
    RiderRefused,
    Transfer,
    UnknownTransfer,
)
from citizen_card.ledger_models import transfer_t
from citizen_card.partner_auth import (
    HMAC_KEY_ID,
    CitySigner,
    NonceStore,
    PartnerAuthError,
    PartnerCredentials,
    PartnerKey,
    PartnerType,
    SignedRequestParams,
    SqlNonceStore,
    load_public_key,
)
from citizen_card.partner_middleware import (
    PARTNER,
    PARTNER_REQUEST,
    Admit,
    partner_auth_middleware,
    require_scope,
)
from citizen_card.partner_models import PARTNER_TABLE
from citizen_card.routes import CardRoute, StaffOf, Strict, nul_errors, problem
from citizen_card.service import CardDeps, CardError, CardStatus
from citizen_card.verify import ListError, ReplayCache, Verifier

log = logging.getLogger(__name__)

SCOPES = ("identity", "id", "transit", "medical", "pay")
TOKEN_SCOPES = frozenset({"id", "transit", "medical", "pay"})  # named after token purposes
IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
RECONCILIATION_SIGNATURE_HEADER = "X-Citycard-Reconciliation-Signature"
IDEMPOTENCY_TTL_S = 24 * 3600
AUTHORIZATION_TTL_S = 120  # a payment authorization is used at once or not at all
ADMIN = ("admin",)
MAX_PARTNER_ID = 56  # "partner:" + id fits card_event.actor (64)
PAY_TOKENS = "*"  # nonce-store namespace of used payment tokens (not a valid partner id)
EARLIEST_DAY = date(1970, 1, 1)  # reconciliation: no transfer can be older

event_t = svc.event_t
card_t = svc.card_t
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PartnerRegistry(Protocol):
    """What this module needs of the registry (`partner_auth.SqlPartnerRegistry`)."""

    async def get(self, partner_id: str) -> PartnerCredentials | None: ...

    async def put(self, partner: PartnerCredentials) -> None: ...

    async def set_enabled(self, partner_id: str, enabled: bool) -> bool: ...


# ---------------------------------------------------------------- idempotency store


class IdempotencyKeyReused(Exception):
    """The key was used for a different request."""


class IdempotencyInFlight(Exception):
    """The first request with this key has not answered yet."""


class IdempotencyStore(Protocol):
    """First answers by (partner, key). `begin` claims the key or returns the answer.

    `SqlIdempotencyStore` (table `partner_idempotency`, shared by every instance) is
    what the service runs; `MemoryIdempotencyStore` is for one process (tests).
    """

    async def begin(self, partner_id: str, key: str, fingerprint: str) -> StoredAnswer | None:
        """None: the key is now ours (in flight). Raises IdempotencyKeyReused/InFlight."""
        ...

    async def complete(
        self, partner_id: str, key: str, answer: StoredAnswer
    ) -> Awaitable[Any] | None:
        """Keep the answer. May return an awaitable that resolves once it is durable
        (the audit middleware awaits it with the call's audit row: one commit)."""
        ...

    async def abandon(self, partner_id: str, key: str) -> None:
        """Forget a claimed key whose request produced no answer worth keeping."""
        ...


@dataclass
class _IdemEntry:
    fingerprint: str
    expires_at: float
    answer: StoredAnswer | None = None


class MemoryIdempotencyStore:
    """One process. Entries live `ttl_s`; when full the oldest answered ones go first
    (payments and refunds stay idempotent through the ledger even then)."""

    def __init__(
        self,
        *,
        ttl_s: float = IDEMPOTENCY_TTL_S,
        max_entries: int = 200_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], _IdemEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _prune(self, now: float) -> None:
        expired = [k for k, e in self._entries.items() if e.expires_at <= now]
        for k in expired:
            del self._entries[k]
        if len(self._entries) >= self.max_entries:
            for k in [k for k, e in self._entries.items() if e.answer is not None]:
                del self._entries[k]
                if len(self._entries) < self.max_entries:
                    break

    async def begin(self, partner_id: str, key: str, fingerprint: str) -> StoredAnswer | None:
        now = self._clock()
        entry = self._entries.get((partner_id, key))
        if entry is not None and entry.expires_at <= now:
            del self._entries[(partner_id, key)]
            entry = None
        if entry is not None:
            if not hmac.compare_digest(entry.fingerprint, fingerprint):
                raise IdempotencyKeyReused(key)
            if entry.answer is None:
                raise IdempotencyInFlight(key)
            return entry.answer
        if len(self._entries) >= self.max_entries:
            self._prune(now)
        self._entries[(partner_id, key)] = _IdemEntry(fingerprint, now + self.ttl_s)
        return None

    async def complete(self, partner_id: str, key: str, answer: StoredAnswer) -> None:
        entry = self._entries.get((partner_id, key))
        if entry is not None:
            entry.answer = answer
        return None

    async def abandon(self, partner_id: str, key: str) -> None:
        entry = self._entries.get((partner_id, key))
        if entry is not None and entry.answer is None:
            del self._entries[(partner_id, key)]


class SqlIdempotencyStore:
    """Shared by every instance (table `partner_idempotency`), through the instance's
    `PartnerJournal`: the claim is an upsert the database decides (so two instances
    never both run one key), answers are kept `ttl_s`, an unanswered claim frees
    itself after a short lease (an instance that died mid-request)."""

    def __init__(self, journal: PartnerJournal, *, ttl_s: int = IDEMPOTENCY_TTL_S) -> None:
        self.journal = journal
        self.ttl_s = ttl_s
        self._mine: dict[tuple[str, str], str] = {}  # claims of this instance: fingerprint

    async def begin(self, partner_id: str, key: str, fingerprint: str) -> StoredAnswer | None:
        return self.resolve(
            partner_id, key, fingerprint, await self.journal.claim(partner_id, key, fingerprint)
        )

    def resolve(
        self, partner_id: str, key: str, fingerprint: str, found: ClaimResult
    ) -> StoredAnswer | None:
        """What a claim made (by `begin`, or with the nonce by `journal.admit`) means."""
        if found.claimed:
            self._mine[(partner_id, key)] = fingerprint
            return None
        if not hmac.compare_digest(found.fingerprint, fingerprint):
            raise IdempotencyKeyReused(key)
        if found.answer is None:
            raise IdempotencyInFlight(key)
        return found.answer

    async def complete(self, partner_id: str, key: str, answer: StoredAnswer) -> Awaitable[Any]:
        fingerprint = self._mine.pop((partner_id, key), "")
        return self.journal.complete(partner_id, key, fingerprint, answer, self.ttl_s)

    async def abandon(self, partner_id: str, key: str) -> None:
        fingerprint = self._mine.pop((partner_id, key), None)
        if fingerprint is not None:
            await self.journal.abandon(partner_id, key, fingerprint)


@dataclass(frozen=True)
class _Idem:
    key: str
    fingerprint: str


IDEMPOTENCY = web.RequestKey("citycard_partner_idempotency", _Idem)


# ---------------------------------------------------------------- audit


@dataclass
class _Audit:
    action: str = "unknown"
    card_no: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    # writes queued before the audit row that must be durable with it (a first answer)
    durable: list[Awaitable[Any]] = field(default_factory=list)
    fresh: bool = True  # False: the deferred nonce was a replay (see _admission)
    recorded: bool = False  # True: committed already, with the call's payment (_PayRider)


AUDIT = web.RequestKey("citycard_partner_audit", _Audit)
# set by `_admission`: the nonce to record with the audit row (partner, nonce, expires_at)
DEFERRED_NONCE = web.RequestKey("citycard_partner_deferred_nonce", tuple)
# set by `_admission`: the Idempotency-Key claimed with the nonce (key, fingerprint, found)
PRECLAIM = web.RequestKey("citycard_partner_preclaim", tuple)
# calls that change nothing: their nonce is recorded with their audit row (one commit)
DEFERRED_NONCE_ROUTES = frozenset(
    {"tokens.verify", "identity.verify", "reconciliation", "hospital-cards"}
)
# calls whose nonce and audit row ride in the ledger's transaction (`_PayRider`), where
# the ledger takes riders (PostgreSQL); with the audit row when the call pays nothing
RIDING_ROUTES = frozenset({"payments"})
# POSTs whose Idempotency-Key the ledger keeps itself (the transfer's own key, checked
# in the payment's transaction): no separate claim, no stored answer to commit
LEDGER_IDEMPOTENT_ROUTES = frozenset({"payments"})


def _audit(request: web.Request) -> _Audit:
    """What the handler wants recorded besides the action (the route's name)."""
    entry = request.get(AUDIT)
    if entry is None:  # the handler runs outside the sub-app's middlewares
        entry = request[AUDIT] = _Audit()
    return entry


def _action(request: web.Request) -> str:
    route = request.match_info.route
    if route.name:
        return route.name[:32]
    resource = route.resource
    return resource.canonical[-32:] if resource is not None else "unknown"


def _actor(request: web.Request) -> str:
    return f"partner:{request[PARTNER].partner_id}"[:64]


def _audit_data(request: web.Request, status: int, facts: Mapping[str, Any]) -> dict[str, Any]:
    params = request.get(PARTNER_REQUEST)
    return {
        "partner": request[PARTNER].partner_id,
        "status": status,
        "method": request.method,
        "nonce": params.nonce if params else None,
        **facts,
    }


class _PayRider:
    """A payment call's request nonce and audit row, committed in the ledger's
    transaction with the payment itself: the call waits for one commit instead of
    three (nonce, payment, audit). See `citizen_card.ledger.Rider`. A payment that
    fails writes neither: its nonce is then recorded with its audit row, by the
    audit middleware (as for the calls that change nothing)."""

    __slots__ = ("at", "entry", "journal", "nonce", "request", "written")

    def __init__(
        self, journal: PartnerJournal, request: web.Request, entry: _Audit, at: datetime
    ) -> None:
        self.journal = journal
        self.request = request
        self.entry = entry
        self.at = at
        self.nonce: tuple[str, str, int] = request[DEFERRED_NONCE]
        self.written = False

    def audit_row(self, t: Transfer) -> tuple[str, datetime, str, str, str, dict[str, Any]]:
        request, entry = self.request, self.entry
        facts = {"transfer_id": str(t.id), "amount": t.amount, "replayed": False}
        data = _audit_data(request, 201, facts)
        return entry.card_no, self.at, _actor(request), "partner", entry.action[:32], data

    async def asyncpg_write(self, pg: Any, made: Sequence[tuple[Any, Transfer]]) -> bool:
        return await self.journal.asyncpg_ride(
            pg, [r.nonce for r, _ in made], [r.audit_row(t) for r, t in made]
        )


# ---------------------------------------------------------------- request/response helpers


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=dumps(data),
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )


async def _read(request: web.Request, model: type[BaseModel]) -> Any:
    raw = await request.read()
    try:
        body = model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        if any(e["type"] in ("json_invalid", "json_type") for e in exc.errors()):
            raise problem(400, "malformed-body", "The request body could not be read") from None
        errors = [
            {
                "field": ".".join(str(p) for p in e["loc"]) or "(body)",
                "message": "unknown field" if e["type"] == "extra_forbidden" else e["msg"],
            }
            for e in exc.errors(include_url=False)
        ]
        raise problem(422, "validation-error", "Some fields are not valid", errors=errors) from None
    nul = nul_errors(raw)
    if nul:
        raise problem(422, "validation-error", "Some fields are not valid", errors=nul)
    return body


def _card_problem(exc: CardError) -> web.HTTPException:
    slug = "validation-error" if exc.code == "validation" else f"card-{exc.code}"
    if exc.code == "not-found":
        slug = "not-found"
    return problem(exc.status, slug, str(exc), str(exc))


def _fingerprint(request: web.Request, body: bytes) -> str:
    h = hashlib.sha256()
    h.update(request.method.encode() + b" " + request.raw_path.encode() + b"\n")
    h.update(body)
    return h.hexdigest()


def _valid_key(key: str) -> bool:
    return 1 <= len(key) <= 128 and key.isascii() and key.isprintable()


def _norm_name(name: str) -> bytes:
    return unicodedata.normalize("NFC", "".join(name.split())).encode("utf-8")


# ---------------------------------------------------------------- bodies


class PartnerBody(BaseModel):
    """Partner bodies: unknown fields refused, like the staff API."""

    model_config = Strict.model_config


class IdentityVerifyIn(PartnerBody):
    name: str = Field(min_length=1, max_length=100)
    id_number: str = Field(min_length=15, max_length=18)


# No max_length on tokens: the 1 MiB body cap bounds them, and an oversized token must
# get the offline verifier's verdict (`too_large`) like any other bad token, not a 422.
TOKEN_FIELD_DOC = "CC1:... as scanned; any non-empty text gets a verdict"


class TokenVerifyIn(PartnerBody):
    token: str = Field(min_length=1, description=TOKEN_FIELD_DOC)
    purpose: Literal["id", "transit", "pay", "medical"]


class PaymentIn(PartnerBody):
    authorization: str | None = Field(None, min_length=1, max_length=2048)
    token: str | None = Field(None, min_length=1, description=TOKEN_FIELD_DOC)
    amount: int = Field(gt=0, strict=True, description="fen")
    description: str | None = Field(None, max_length=200)


class RefundIn(PartnerBody):
    amount: int = Field(gt=0, strict=True, description="fen")


# ---------------------------------------------------------------- the sub-application


class _PartnerApi:
    def __init__(
        self,
        card: CardDeps,
        nonce_store: NonceStore,
        hospital_codes: Mapping[str, Collection[str]],
        journal: PartnerJournal,
    ) -> None:
        self.card = card
        self.nonce_store = nonce_store
        self.journal = journal
        self.hospital_codes = hospital_codes
        self.root_key = card.keyring.root_public_pem()
        self.replay = ReplayCache()  # payment tokens, kept across Verifier rebuilds
        self._verifier: tuple[bytes, bytes, Verifier] | None = None
        self._merchants: dict[str, int] = {}

    # -------------------------------------------------------- helpers

    async def verifier(self) -> Verifier:
        """A Verifier over the current lists; rebuilt when either list changes (a loss
        report bumps the status-list version, so the next call sees it)."""
        status = await svc.status_list(self.card)
        trust = svc.trust_list(self.card)
        cached = self._verifier
        if cached is not None and cached[0] == trust and cached[1] == status:
            return cached[2]
        try:
            verifier = Verifier(trust, status, self.root_key, replay_cache=self.replay)
        except ListError:
            log.exception("the city's own trust/status list does not verify")
            raise problem(503, "service-unavailable", "Token verification is unavailable") from None
        self._verifier = (trust, status, verifier)
        return verifier

    async def verify_online(
        self, token: str, purpose: str, *, consume: bool = True
    ) -> tuple[str, Any, tuple[str, str, int] | None]:
        """(reason, card row, one-time nonce): the token's checks, then the card's live
        status (cached for at most a second, forgotten at once on any card change).

        A pay token is used up here (`consume`), or -- for a payment -- handed back as
        the nonce the payment's own transaction uses up."""
        verdict = (await self.verifier()).verify(token, purpose, now=self.card.clock())
        if not verdict.valid:
            return verdict.reason, None, None
        claims = verdict.claims
        row = await svc.card_by_status_index(self.card, claims["status_index"])
        if row is None:
            return "status_unknown", None, None
        expected = svc.card_handle(self.card, row.card_no, purpose)
        if not hmac.compare_digest(str(claims["sub"]).encode(), expected.encode()):
            return "bad_claims", None, None
        if row.status != CardStatus.ACTIVE.value:
            return "revoked", None, None
        once = None
        if purpose == "pay":  # one-time across instances, not only in this process
            once = (PAY_TOKENS, "t-" + claims["cti"].hex(), int(claims["exp"]) + 60)
            if consume:
                if not await self.nonce_store.remember(*once):
                    return "replayed", None, None
                once = None
        return "ok", row, once

    def authorization(self, partner_id: str, card_no: str) -> str:
        exp = int(self.card.clock().timestamp()) + AUTHORIZATION_TTL_S
        body = {
            "t": "pay-auth",
            "p": partner_id,
            "c": card_no,
            "e": exp,
            "n": secrets.token_hex(16),
        }
        return self.card.cipher.encrypt(json.dumps(body, separators=(",", ":")))

    def redeem(self, partner_id: str, authorization: str) -> tuple[str, tuple[str, str, int]]:
        """The card of a payment authorization and the nonce that uses it up (in the
        payment's transaction)."""
        try:
            data = json.loads(self.card.cipher.decrypt(authorization))
            ok = isinstance(data, dict) and data.get("t") == "pay-auth"
            ok = ok and data.get("p") == partner_id
            card_no, exp, nonce = str(data["c"]), int(data["e"]), str(data["n"])
        except Exception:  # not JSON, a field missing, the cipher's own errors (bad tag)
            ok = False
        if not ok:
            raise problem(422, "invalid-authorization", "This payment authorization is not valid")
        if self.card.clock().timestamp() > exp:
            raise problem(409, "authorization-expired", "The payment authorization has expired")
        return card_no, (partner_id, "a-" + nonce, exp + 1)

    async def merchant_account(self, partner_id: str) -> int:
        aid = self._merchants.get(partner_id)
        if aid is None:
            aid = (await self.card.ledger.open_account("merchant", partner_id)).id
            self._merchants[partner_id] = aid
        return aid

    async def payment_by_key(self, partner_id: str, key: str) -> Any:
        async with self.card.read() as conn:
            return (
                await conn.execute(
                    sa.select(transfer_t).where(
                        transfer_t.c.idem_scope == f"payment:{partner_id}",
                        transfer_t.c.idem_key == key,
                    )
                )
            ).first()

    async def _replay(self, pid: str, idem: _Idem, audit: _Audit) -> web.Response | None:
        """The first answer to a payment's Idempotency-Key from the ledger, if any."""
        done = await self.payment_by_key(pid, idem.key)
        if done is None:
            return None
        if (done.metadata or {}).get("request") != idem.fingerprint:
            raise problem(
                422, "idempotency-key-reused", "This Idempotency-Key was used for another request"
            )
        audit.card_no = ""
        audit.data = {"transfer_id": str(done.id), "amount": done.amount, "replayed": True}
        return _json(_payment_view(done), 201, {REPLAYED_HEADER: "true"})

    # -------------------------------------------------------- handlers

    async def identity_verify(self, request: web.Request) -> web.StreamResponse:
        require_scope(request, "identity")
        audit = _audit(request)
        body = await _read(request, IdentityVerifyIn)
        resident = await svc.find_resident_by_id_number(self.card, body.id_number)
        expected = resident.name if resident is not None else "\x00" * 4
        same = hmac.compare_digest(_norm_name(expected), _norm_name(body.name))
        match = bool(same and resident is not None and resident.verified)
        audit.data = {"match": match, "resident": resident.handle if resident else None}
        return _json({"match": match})

    async def tokens_verify(self, request: web.Request) -> web.StreamResponse:
        partner = request[PARTNER]
        audit = _audit(request)
        if not partner.scopes & TOKEN_SCOPES:
            require_scope(request, "id")  # a 403 before anything is read
        body = await _read(request, TokenVerifyIn)
        require_scope(request, body.purpose)
        reason, row, _ = await self.verify_online(body.token, body.purpose)
        audit.data = {"purpose": body.purpose, "valid": row is not None, "reason": reason}
        if row is None:
            return _json({"valid": False, "reason": reason})
        audit.card_no = row.card_no
        answer: dict[str, Any] = {"valid": True, "reason": reason}
        if body.purpose == "transit":
            answer["concession"] = row.concession
        elif body.purpose == "medical":
            resident = await svc.get_resident(self.card, row.resident_id)
            answer |= {
                "handle": svc.card_handle(self.card, row.card_no, partner.partner_id),
                "name": resident.name,
                "health_card": row.health_card_no,
                "insurance_status": "insured" if row.social_security_no else "unknown",
            }
        elif body.purpose == "pay":
            answer["authorization"] = self.authorization(partner.partner_id, row.card_no)
            answer["expires_in"] = AUTHORIZATION_TTL_S
        return _json(answer)

    async def payments(self, request: web.Request) -> web.StreamResponse:
        partner = require_scope(request, "pay")
        pid = partner.partner_id
        audit = _audit(request)
        idem = request.get(IDEMPOTENCY)
        if idem is None:
            raise problem(400, "idempotency-key-required", f"Send an {IDEMPOTENCY_HEADER} header")
        body = await _read(request, PaymentIn)
        if (body.authorization is None) == (body.token is None):
            raise problem(
                422,
                "validation-error",
                "Give exactly one of authorization and token",
                errors=[{"field": "authorization", "message": "or token, exactly one"}],
            )
        # No look-up by Idempotency-Key first: a retry of a payment that went through
        # finds its token (or authorization) used inside the ledger's transaction, and
        # the ledger then answers with the first transfer (or 422 for another request).
        if body.authorization is not None:
            try:
                card_no, once = self.redeem(pid, body.authorization)
            except web.HTTPException:  # expired by now: a retry still gets its answer
                done = await self._replay(pid, idem, audit)
                if done is not None:
                    return done
                raise
            card = await svc.get_card(self.card, card_no)
        else:
            reason, card, token_once = await self.verify_online(body.token, "pay", consume=False)
            if card is None:
                # expired or revoked by now: a retry of a payment made still gets its answer
                done = await self._replay(pid, idem, audit)
                if done is not None:
                    return done
                raise problem(
                    422, "token-not-valid", "The payment token is not valid", reason=reason
                )
            assert token_once is not None
            card_no, once = card.card_no, token_once
        audit.card_no = card_no
        merchant = await self.merchant_account(pid)
        meta: dict[str, Any] = {"request": idem.fingerprint}
        if body.description:
            meta["description"] = body.description
        rider = None
        if DEFERRED_NONCE in request:
            rider = _PayRider(self.journal, request, audit, self.card.clock())
        try:
            wallet = await svc.wallet_of(self.card, card.resident_id)
            transfer = await self.card.ledger.pay(
                wallet,
                merchant,
                body.amount,
                idem.key,
                pid,
                meta,
                precheck=svc.CardPrecheck(card_no, self.card, consume=once),
                rider=rider,
            )
        except InsufficientFunds:
            audit.data = {"amount": body.amount, "refused": "insufficient-funds"}
            raise problem(
                402, "insufficient-funds", "The wallet balance is too low for this payment"
            ) from None
        except svc.OneTimeUsed:
            audit.data = {"amount": body.amount, "refused": "replayed"}
            if body.authorization is not None:
                raise problem(
                    409, "authorization-used", "The payment authorization was used already"
                ) from None
            raise problem(
                422, "token-not-valid", "The payment token is not valid", reason="replayed"
            ) from None
        except CardError as exc:
            audit.data = {"amount": body.amount, "refused": exc.code}
            raise _card_problem(exc) from None
        except IdempotencyConflict:
            raise problem(
                422, "idempotency-key-reused", "This Idempotency-Key was used for another request"
            ) from None
        except InvalidAmount as exc:
            raise problem(
                422,
                "validation-error",
                str(exc),
                errors=[{"field": "amount", "message": str(exc)}],
            ) from None
        except RiderRefused:  # the audit middleware records the refusal with the nonce
            raise PartnerAuthError(
                "replayed_nonce", f"nonce {request[PARTNER_REQUEST].nonce} was already used"
            ) from None
        audit.data = {
            "transfer_id": str(transfer.id),
            "amount": transfer.amount,
            "replayed": transfer.replayed,
        }
        if rider is not None and rider.written:  # nonce and audit row are in its commit
            request.pop(DEFERRED_NONCE, None)
            audit.recorded = True
        headers = {REPLAYED_HEADER: "true"} if transfer.replayed else None
        return _json(_payment_view(transfer), 201, headers)

    async def refund(self, request: web.Request) -> web.StreamResponse:
        partner = require_scope(request, "pay")
        audit = _audit(request)
        idem = request.get(IDEMPOTENCY)
        if idem is None:
            raise problem(400, "idempotency-key-required", f"Send an {IDEMPOTENCY_HEADER} header")
        body = await _read(request, RefundIn)
        not_found = problem(404, "not-found", "No such payment of yours")
        try:
            original = await self.card.ledger.get_transfer(request.match_info["transfer_id"])
        except UnknownTransfer:
            raise not_found from None
        if original.kind != "payment" or original.partner_id != partner.partner_id:
            raise not_found
        audit.data = {"original": str(original.id), "amount": body.amount}
        try:
            transfer = await self.card.ledger.refund(
                original.id, body.amount, idem.key, meta={"request": idem.fingerprint}
            )
        except (RefundExceedsOriginal, NotRefundable) as exc:
            audit.data["refused"] = "refund-exceeds-original"
            raise problem(409, "refund-exceeds-original", str(exc), str(exc)) from None
        except IdempotencyConflict:
            raise problem(
                422, "idempotency-key-reused", "This Idempotency-Key was used for another request"
            ) from None
        except InvalidAmount as exc:
            raise problem(
                422,
                "validation-error",
                str(exc),
                errors=[{"field": "amount", "message": str(exc)}],
            ) from None
        audit.data["transfer_id"] = str(transfer.id)
        view = _payment_view(transfer) | {"original_transfer_id": str(original.id)}
        headers = {REPLAYED_HEADER: "true"} if transfer.replayed else None
        return _json(view, 201, headers)

    async def reconciliation(self, request: web.Request) -> web.StreamResponse:
        partner = require_scope(request, "pay")
        audit = _audit(request)
        text = request.match_info["date"]
        try:
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
                raise ValueError(text)
            day = date.fromisoformat(text)
        except ValueError:
            raise problem(
                422,
                "validation-error",
                "The date is YYYY-MM-DD",
                errors=[{"field": "date", "message": "YYYY-MM-DD"}],
            ) from None
        if day < EARLIEST_DAY:  # nothing then, and year 1 at UTC+8 has no UTC start
            raise problem(
                422,
                "validation-error",
                f"No transfers before {EARLIEST_DAY}",
                errors=[{"field": "date", "message": f"on or after {EARLIEST_DAY}"}],
            )
        if day > svc.today(self.card):
            raise problem(
                422,
                "validation-error",
                "That day has not begun",
                errors=[{"field": "date", "message": "not in the future"}],
            )
        audit.data = {"day": day.isoformat()}
        try:
            data, signature = await self.card.ledger.reconciliation(
                partner.partner_id, day, self.card.tz
            )
        except LedgerInconsistent:
            log.critical("reconciliation of %s for %s disagrees with the ledger", partner, day)
            raise problem(500, "internal-error", "The books do not reconcile") from None
        return web.Response(
            body=data,
            content_type="text/csv",
            charset="utf-8",
            headers={
                RECONCILIATION_SIGNATURE_HEADER: signature,
                "Cache-Control": "no-store",
                "Content-Disposition": f'attachment; filename="{partner.partner_id}-{day}.csv"',
            },
        )

    async def hospital_card(self, request: web.Request) -> web.StreamResponse:
        partner = require_scope(request, "medical")
        audit = _audit(request)
        code = request.match_info["hospital_code"]
        allowed = {partner.partner_id, *self.hospital_codes.get(partner.partner_id, ())}
        audit.data = {"hospital_code": code}
        if code not in allowed:
            raise problem(403, "not-your-hospital", "Only your own hospital's cards")
        resident = await svc.resolve_hospital_card(self.card, code, request.match_info["card_no"])
        not_found = problem(404, "not-found", "No citizen card for this hospital card")
        if resident is None:
            raise not_found
        live = [CardStatus.ACTIVE, CardStatus.ISSUED, CardStatus.LOST, CardStatus.FROZEN]
        async with self.card.read() as conn:
            row = (
                await conn.execute(
                    sa.select(card_t)
                    .where(
                        card_t.c.resident_id == resident.id,
                        card_t.c.status.in_([s.value for s in live]),
                    )
                    .order_by(card_t.c.issued_at.desc(), card_t.c.id.desc())
                    .limit(1)
                )
            ).first()
        if row is None:
            raise not_found
        audit.card_no = row.card_no
        return _json(
            {
                "handle": svc.card_handle(self.card, row.card_no, partner.partner_id),
                "health_card": row.health_card_no,
            }
        )


def _payment_view(t: Transfer | Any) -> dict[str, Any]:
    return {"transfer_id": str(t.id), "amount": t.amount, "seq": t.seq, "receipt": t.receipt}


def _audit_middleware(card: CardDeps, journal: PartnerJournal) -> Any:
    @web.middleware
    async def audit(request: web.Request, handler: Handler) -> web.StreamResponse:
        entry = request[AUDIT] = _Audit(action=_action(request))
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
        except (web.HTTPException, PartnerAuthError) as exc:
            await _record_or_refuse(journal, card, request, entry, exc.status)
            raise
        except Exception:
            await _record_or_refuse(journal, card, request, entry, status)
            raise
        if not await _record_or_refuse(journal, card, request, entry, status):
            raise problem(500, "internal-error", "The call could not be audited")
        return resp

    return audit


async def _record_or_refuse(
    journal: PartnerJournal, card: CardDeps, request: web.Request, entry: _Audit, status: int
) -> bool:
    """Record the call; for a call whose nonce was deferred (see `_admission`), refuse
    it now if the nonce turned out to be a replay (nothing the handler found leaves)."""
    ok = await _record(journal, card, request, entry, status)
    deferred = request.get(DEFERRED_NONCE)
    if deferred is not None:
        if not ok:  # the nonce is unproven: disclose nothing
            raise problem(500, "internal-error", "The call could not be audited")
        if not entry.fresh:
            params = request[PARTNER_REQUEST]
            raise PartnerAuthError("replayed_nonce", f"nonce {params.nonce} was already used")
    return ok


async def _record(
    journal: PartnerJournal, card: CardDeps, request: web.Request, entry: _Audit, status: int
) -> bool:
    """The call's audit row, group-committed (see citizen_card.journal); True once it
    (and every write queued before it for this call) is durable."""
    if entry.recorded:
        return True
    data = _audit_data(request, status, entry.data)
    deferred = request.get(DEFERRED_NONCE)
    refused = None
    if deferred is not None:
        refused = {**{k: data[k] for k in ("partner", "method", "nonce")}, "status": 401}
        refused["refused"] = "replayed_nonce"
    try:
        entry.fresh = await journal.audit(
            card_no=entry.card_no,
            at=card.clock(),
            actor=_actor(request),
            channel="partner",
            action=entry.action[:32],
            data=data,
            nonce=deferred,
            refused=refused,
        )
    except Exception:
        log.exception("could not audit partner call %s %s", request.method, request.path)
        return False
    finally:
        for write in entry.durable:  # queued earlier: done by now
            try:
                await write
            except Exception:
                log.exception("could not keep the answer of %s %s", request.method, request.path)
    return True


def _idempotency_middleware(store: IdempotencyStore) -> Any:
    # keys of LEDGER_IDEMPOTENT_ROUTES calls running here: a twin on this instance is
    # told to retry (its token reads as used until the first commits); on another
    # instance the ledger's transaction makes it wait for the first, then replay it
    running: set[tuple[str, str]] = set()

    def in_flight() -> web.HTTPException:
        exc = problem(409, "idempotency-key-in-flight", "The first request is still running")
        exc.headers["Retry-After"] = "1"
        return exc

    @web.middleware
    async def idempotency(request: web.Request, handler: Handler) -> web.StreamResponse:
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if request.method != "POST" or key is None:
            return await handler(request)
        if not _valid_key(key):
            raise problem(
                422,
                "validation-error",
                "The Idempotency-Key is not valid",
                errors=[{"field": IDEMPOTENCY_HEADER, "message": "1-128 printable ASCII"}],
            )
        pid = request[PARTNER].partner_id
        fingerprint = _fingerprint(request, await request.read())
        if request.match_info.route.name in LEDGER_IDEMPOTENT_ROUTES:
            if (pid, key) in running:
                raise in_flight()
            request[IDEMPOTENCY] = _Idem(key, fingerprint)
            running.add((pid, key))
            try:
                return await handler(request)
            finally:
                running.discard((pid, key))
        pre = request.get(PRECLAIM)
        try:
            if pre is not None and pre[0] == key and isinstance(store, SqlIdempotencyStore):
                stored = store.resolve(pid, key, fingerprint, pre[2])  # claimed with the nonce
            else:
                stored = await store.begin(pid, key, fingerprint)
        except IdempotencyKeyReused:
            raise problem(
                422, "idempotency-key-reused", "This Idempotency-Key was used for another request"
            ) from None
        except IdempotencyInFlight:
            raise in_flight() from None
        if stored is not None:
            _audit(request).data = {"replayed": True}
            return web.Response(
                status=stored.status,
                body=stored.body,
                content_type=stored.content_type,
                headers={REPLAYED_HEADER: "true"},
            )
        request[IDEMPOTENCY] = _Idem(key, fingerprint)
        answered = False
        try:
            resp = await handler(request)
            if 200 <= resp.status < 300 and isinstance(resp, web.Response):
                body = resp.body if isinstance(resp.body, bytes) else b""
                durable = await store.complete(
                    pid, key, StoredAnswer(resp.status, body, resp.content_type)
                )
                if durable is not None:
                    _audit(request).durable.append(durable)
                answered = True
            return resp
        finally:
            if not answered:  # errors are not kept: nothing was done, a retry runs again
                await store.abandon(pid, key)

    return idempotency


def _admission(journal: PartnerJournal, store: IdempotencyStore, *, rides: bool) -> Admit:
    """How a request's nonce is recorded, with as few commits as the call allows:

    * a call that changes nothing (`DEFERRED_NONCE_ROUTES`): with its audit row, after
      the handler; a replay is answered 401 then, and nothing the handler found leaves;
    * a payment, where the ledger takes riders (`rides`): in the ledger's transaction,
      with the payment and its audit row (`_PayRider`); with the audit row, after the
      handler, when the call pays nothing (a refusal, a replayed answer);
    * a POST with an Idempotency-Key the ledger does not keep: with the key's claim,
      before the handler;
    * anything else: on its own, before the handler. On SQLite that includes payments:
      there the nonce and the audit row group-committed beside the payment measured
      faster than both inside the payment's transaction (bench/RESULTS.md, session 12).
    """
    shared = isinstance(store, SqlIdempotencyStore) and store.journal is journal

    async def admit(request: web.Request, params: SignedRequestParams, expires_at: int) -> bool:
        name = request.match_info.route.name
        if name in DEFERRED_NONCE_ROUTES or (rides and name in RIDING_ROUTES):
            request[DEFERRED_NONCE] = (params.partner_id, params.nonce, expires_at)
            return True
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if (
            shared
            and request.method == "POST"
            and key is not None
            and _valid_key(key)
            and name not in LEDGER_IDEMPOTENT_ROUTES
        ):
            fingerprint = _fingerprint(request, await request.read())
            fresh, found = await journal.admit(
                params.partner_id, params.nonce, expires_at, key, fingerprint
            )
            if fresh and found is not None:
                request[PRECLAIM] = (key, fingerprint, found)
            return fresh
        return await journal.remember_nonce(params.partner_id, params.nonce, expires_at)

    return admit


def partner_app(
    card: CardDeps,
    *,
    registry: PartnerRegistry,
    nonce_store: NonceStore,
    city_signer: CitySigner,
    medical_routes: Sequence[web.RouteDef] = (),
    idempotency_store: IdempotencyStore | None = None,
    hospital_codes: Mapping[str, Collection[str]] | None = None,
) -> web.Application:
    """The /partner/v1 sub-application (mount it with `app.add_subapp`).

    `hospital_codes` maps a partner to hospital codes it may resolve besides its own
    partner id; `medical_routes` are added as they are (they are authenticated,
    audited under their own path and idempotent like the rest).
    """
    if isinstance(nonce_store, SqlNonceStore):
        journal = nonce_store.journal  # one group-commit writer for all the call's rows
    else:
        journal = PartnerJournal(card.engine, write_lock=card.write_lock)
    if idempotency_store is None:
        idempotency_store = SqlIdempotencyStore(journal)
    api = _PartnerApi(card, nonce_store, hospital_codes or {}, journal)
    admit = None
    if isinstance(nonce_store, SqlNonceStore):
        admit = _admission(journal, idempotency_store, rides=card.ledger.takes_riders)
    app = web.Application(
        middlewares=[
            # "/": everything this sub-application serves is partner-only, wherever
            # it is mounted (requests arrive with their full path)
            partner_auth_middleware(
                registry.get, nonce_store, city_signer, prefix="/", admit=admit
            ),
            _audit_middleware(card, journal),
            _idempotency_middleware(idempotency_store),
        ]
    )

    if journal.raw_pool is None:
        journal.raw_pool = card.ledger.raw_pool

    async def stop_journal(app: web.Application) -> None:
        await journal.stop()
        if card.ledger.raw_pool is not None:  # made again by the next use, if any
            await card.ledger.raw_pool.close()

    app.on_cleanup.append(stop_journal)
    app.add_routes(
        [
            web.post("/identity/verify", api.identity_verify, name="identity.verify"),
            web.post("/tokens/verify", api.tokens_verify, name="tokens.verify"),
            web.post("/payments", api.payments, name="payments"),
            web.post("/payments/{transfer_id}/refund", api.refund, name="payments.refund"),
            web.get(
                "/reconciliation/{date}",
                api.reconciliation,
                name="reconciliation",
                allow_head=False,
            ),
            web.get(
                "/hospital-cards/{hospital_code}/{card_no}",
                api.hospital_card,
                name="hospital-cards",
                allow_head=False,
            ),
            *medical_routes,
        ]
    )
    return app


# ---------------------------------------------------------------- staff: the registry


class PartnerKeyIn(Strict):
    public_key_pem: str = Field(min_length=1, max_length=2000)
    not_after: datetime | None = Field(None, description="refused from then on (ISO 8601)")


class PartnerIn(Strict):
    partner_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,56}$")
    type: PartnerType
    scopes: list[Literal["identity", "id", "transit", "medical", "pay"]] = Field(min_length=1)
    keys: dict[str, str | PartnerKeyIn] = Field(
        default_factory=dict,
        description="key_id -> Ed25519 public key (PEM) or {public_key_pem, not_after}",
    )
    hmac: bool = Field(False, description="issue an HMAC secret (answered once)")
    rate_per_minute: int = Field(600, ge=1, le=100_000)


class PartnerKeyAddIn(PartnerKeyIn):
    key_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")


def _invalid(field_name: str, message: str) -> web.HTTPException:
    return problem(
        422,
        "validation-error",
        "Some fields are not valid",
        errors=[{"field": field_name, "message": message}],
    )


def _parse_key(key_id: str, spec: str | PartnerKeyIn) -> PartnerKey:
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", key_id) or key_id == HMAC_KEY_ID:
        raise _invalid(f"keys.{key_id}", "a key id is 1-64 of [A-Za-z0-9._-], not 'hmac'")
    pem, not_after = (
        (spec, None) if isinstance(spec, str) else (spec.public_key_pem, spec.not_after)
    )
    if not_after is not None and not_after.tzinfo is None:
        raise _invalid(f"keys.{key_id}.not_after", "give a time zone (e.g. Z)")
    try:
        return PartnerKey(load_public_key(pem), not_after)
    except (ValueError, TypeError):
        raise _invalid(f"keys.{key_id}", "not an Ed25519 public key in PEM") from None


def partner_view(p: PartnerCredentials) -> dict[str, Any]:
    return {
        "partner_id": p.partner_id,
        "type": p.type.value,
        "scopes": sorted(p.scopes),
        "keys": {
            kid: {"not_after": k.not_after.isoformat() if k.not_after else None}
            for kid, k in sorted(p.keys.items())
        },
        "hmac": p.hmac_secret is not None,
        "enabled": p.enabled,
        "rate_per_minute": p.rate_per_minute,
    }


def partner_admin_routes(
    card: CardDeps, registry: PartnerRegistry, staff: StaffOf
) -> list[CardRoute]:
    """Admin routes of the partner registry, for the hotline's main application."""

    async def create_partner(request: web.Request) -> web.StreamResponse:
        staff(request, ADMIN)
        body = await _read(request, PartnerIn)
        keys = {kid: _parse_key(kid, spec) for kid, spec in body.keys.items()}
        if not keys and not body.hmac:
            raise _invalid("keys", "register at least one Ed25519 key, or ask for an HMAC secret")
        if await registry.get(body.partner_id) is not None:
            raise problem(409, "partner-exists", f"Partner {body.partner_id} exists")
        secret = secrets.token_urlsafe(32) if body.hmac else None
        partner = PartnerCredentials(
            partner_id=body.partner_id,
            type=body.type,
            scopes=frozenset(body.scopes),
            keys=keys,
            hmac_secret=secret.encode("ascii") if secret else None,
            rate_per_minute=body.rate_per_minute,
        )
        await registry.put(partner)
        view = partner_view(partner)
        if secret is not None:
            view["hmac_secret"] = secret  # shown once; only the encrypted form is kept
        return _json(view, 201, {"Cache-Control": "no-store"})

    async def list_partners(request: web.Request) -> web.StreamResponse:
        staff(request, ADMIN)
        async with card.read() as conn:
            ids = (
                await conn.execute(
                    sa.select(PARTNER_TABLE.c.partner_id).order_by(PARTNER_TABLE.c.partner_id)
                )
            ).scalars()
            ids = list(ids)
        out = []
        for pid in ids:
            p = await registry.get(pid)
            if p is not None:
                out.append(partner_view(p))
        return _json({"items": out})

    async def _existing(request: web.Request) -> PartnerCredentials:
        p = await registry.get(request.match_info["id"])
        if p is None:
            raise problem(404, "not-found", "No such partner")
        return p

    async def disable_partner(request: web.Request) -> web.StreamResponse:
        staff(request, ADMIN)
        p = await _existing(request)
        await registry.set_enabled(p.partner_id, False)
        return _json(partner_view((await registry.get(p.partner_id)) or p))

    async def add_partner_key(request: web.Request) -> web.StreamResponse:
        staff(request, ADMIN)
        body = await _read(request, PartnerKeyAddIn)
        p = await _existing(request)
        if body.key_id in p.keys:
            raise problem(409, "partner-key-exists", f"Key {body.key_id} is registered")
        key = _parse_key(
            body.key_id, PartnerKeyIn(public_key_pem=body.public_key_pem, not_after=body.not_after)
        )
        updated = PartnerCredentials(
            partner_id=p.partner_id,
            type=p.type,
            scopes=p.scopes,
            keys={**p.keys, body.key_id: key},
            hmac_secret=p.hmac_secret,
            enabled=p.enabled,
            rate_per_minute=p.rate_per_minute,
        )
        await registry.put(updated)
        return _json(partner_view(updated), 201)

    p = "/api/v1/partners"
    return [
        CardRoute(
            "POST",
            p,
            create_partner,
            "Register a partner (keys or an HMAC secret, answered once)",
            PartnerIn,
            ADMIN,
            responses={201: "registered", 409: "exists", 422: "invalid"},
        ),
        CardRoute("GET", p, list_partners, "The partner registry", roles=ADMIN),
        CardRoute(
            "POST",
            p + "/{id}/disable",
            disable_partner,
            "Disable a partner: its next request is refused",
            roles=ADMIN,
            responses={200: "disabled", 404: "no such partner"},
        ),
        CardRoute(
            "POST",
            p + "/{id}/keys",
            add_partner_key,
            "Add a public key (rotation: add, switch, let the old one expire)",
            PartnerKeyAddIn,
            ADMIN,
            responses={201: "added", 404: "no such partner", 409: "key id taken"},
        ),
    ]


__all__ = [
    "AUDIT",
    "IDEMPOTENCY_HEADER",
    "RECONCILIATION_SIGNATURE_HEADER",
    "IdempotencyStore",
    "MemoryIdempotencyStore",
    "PartnerRegistry",
    "SqlIdempotencyStore",
    "StoredAnswer",
    "partner_admin_routes",
    "partner_app",
    "partner_view",
]
