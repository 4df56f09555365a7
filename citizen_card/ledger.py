"""The wallet ledger: double-entry bookkeeping in integer fen, with signed receipts.

Everything here is a library over an ``AsyncEngine`` the caller owns; the card,
partner and HTTP layers sit on top. The first half of the module is pure rules
(amount validation, balanced postings, refund cap, reversal rules, canonical JSON,
receipts and their offline verification); the second half is ``Ledger``.

Money
    ``int`` fen (分), currency CNY, never a float. One transfer is an immutable set of
    entries (signed fen) that sums to zero; a transfer's amount is positive and at
    most ``max_amount``.

Balances never go negative
    A debit is one conditional statement, ``UPDATE ledger_account SET balance =
    balance + :delta WHERE id = :id AND (balance + :delta >= 0 OR allow_negative)``:
    on PostgreSQL the row lock serializes debits of one wallet and the condition is
    re-checked on the latest row version; on SQLite every write transaction runs
    under one asyncio lock (the caller's process-wide ``write_lock``, or our own) and
    takes SQLite's write lock with its first statement. No row -> ``InsufficientFunds``
    and the transaction rolls back, so nothing is written. A CHECK constraint on the
    table backs this up.

Hot accounts (buffered posting, 缓冲记账)
    Every payment credits a merchant, every top-up debits the top-up clearing
    account, every disbursement debits the benefits fund. Updating those rows per
    transfer would put one row lock, held through the commit's WAL flush (about
    1.7 ms on the benchmark machine), in front of every transfer: about 600 per
    second at most. So accounts opened ``buffered`` (by default every kind except
    ``wallet``) receive their credits -- and their debits too when they may go
    negative -- as rows of ``ledger_pending`` that lock nothing. Their balance is
    ``balance + sum(pending)``; ``settle()`` folds pending rows into ``balance`` (one
    ``DELETE ... RETURNING`` + ``UPDATE``, atomic), and a debit of a buffered account
    that may not go negative folds first and then debits under the row lock. The
    caller runs ``settle()`` periodically (a few seconds apart keeps ``balance()`` of
    a hot merchant cheap; folding ~5,000 pending rows took ~15 ms in the benchmark).
    Wallets are always posted directly (their debits need the check, and their
    statement shows the balance after each line).

Ledger sequence (``seq``) -- the choice and its consequences
    *SQLite*: a counter row (``ledger_sequence``) bumped inside the serialized write
    transaction, so ``seq`` order is commit order, trivially.

    *PostgreSQL*: a SEQUENCE, not a counter row. A counter row would be locked from
    the draw until the commit's WAL flush, i.e. every transfer of the city would
    queue on one lock: ~600 transfers/s here, below the 1,000/s target. A SEQUENCE
    does not block, but two transactions can commit in the other order than they
    drew. We keep what matters:

    * ``seq`` is drawn as the *last* step before the insert, after every account row
      lock of the transfer is held. Two transfers touching the same directly-posted
      account (a wallet) are serialized by its row lock, so the later one draws
      after the earlier one committed: **per wallet, seq order is commit order**, and
      the statement's ``balance_after`` column reads as a running balance.
    * Globally, a reader may see seq 11 committed before seq 10. ``ledger_position()``
      therefore returns a *stable* position P: every transfer with seq <= P has
      committed, and every transfer that commits later has seq > P. It is made with
      a barrier: each transfer takes a shared transaction-level advisory lock
      (``LEDGER_BARRIER_KEY``) in the same statement that draws its seq, and
      ``ledger_position()`` takes that lock exclusively (waiting for transfers that
      hold a seq but have not finished; new draws wait for the instant the barrier is
      held) and reads ``max(seq)``. Readers that page a feed by seq must stop at P.
    * The transfer's time is ``clock_timestamp()`` read in that same statement, so
      ``created_at`` comes from one clock and is ordered the same way as seq for one
      wallet; a transfer still in flight when the barrier is taken has its time and
      seq from before the barrier.

    *Freeze cut-off* ("ledger position at freeze time"): the card layer freezes the
    card, then calls ``ledger_position()``; the receipt says "every payment of this
    card with seq <= P was before the freeze, none after". That holds if the
    payment's ``precheck`` locks the card row (``SELECT ... FOR SHARE``, or
    ``FOR UPDATE``) while checking "not frozen": the freeze's UPDATE then waits for
    payments already past the check, they commit with a seq drawn before the barrier
    and so <= P, and payments after the freeze fail the check. With a plain read in
    the precheck a payment could pass the check, the freeze commit, and the payment
    commit afterwards with seq > P -- the precheck must lock.

Idempotency
    Every transfer has a scope and a key (unique together) and the hash of its
    request. Same scope+key and same request: the first transfer is returned
    unchanged (``replayed=True``); same key, different request:
    ``IdempotencyConflict``. The check is optimistic: a new request (the common case)
    pays no extra round trip; a repeat fails -- on the unique index, or earlier on
    the balance, the refund cap, the reversal rule or a precheck -- rolls back, and
    only then is the key looked up. A concurrent twin ends the same way. (Scopes:
    ``payment:<partner>``, ``topup``, ``refund:<original>``, ``reversal:<original>``,
    ``disbursement`` with key ``<batch>:<wallet>``, ``settlement:<partner>``.)

Hot path, per payment
    PostgreSQL: ``BEGIN``; [precheck]; one statement that debits the wallet
    conditionally, takes the barrier lock and draws seq and time; sign; one
    statement inserting transfer, entries and pending rows; ``COMMIT`` -- four round
    trips, issued on the asyncpg connection under the caller's engine (SQLAlchemy
    left in AUTOCOMMIT so the ledger owns the transaction; statements a precheck
    sends through the SQLAlchemy connection run inside it).

    Batched (PostgreSQL with ``raw_pool``; wallet to buffered merchant; a precheck with
    a batch form, i.e. the card's): concurrent payments share one transaction, a group
    commit. One writer task takes what queued, a wallet at most once per batch, and
    runs ``_pay_batch``: lock and read the cards (FOR SHARE, card-number order), debit
    every wallet in one statement (each conditionally; barrier and seqs after all row
    locks), use up the pay tokens of the payments that went through, sign, one insert,
    ``COMMIT`` -- six round trips and one WAL flush for the batch. The guarantees
    above hold per payment: each wallet's row lock is held to the commit, every seq is
    drawn under the barrier, the card lock orders a freeze. A payment the card or its
    balance refuses is then run alone (above) for its exact answer; a used token, a
    repeated Idempotency-Key or any error rolls the batch back and each of its
    payments runs alone, so no outcome differs from the unbatched path
    (``tests/citizen_card/test_pay_batch.py``). Measured: ~1.4x the payments per second
    of one transaction each, and less than half of PostgreSQL's CPU per payment
    (bench/RESULTS.md). SQLite: the seq draw
    (which also takes the write lock), then the balance UPDATEs and inserts, each run
    as one call on aiosqlite's worker thread (the same internals SQLAlchemy's adapter
    uses) instead of several thread hops per statement. Errors from these paths may
    be the driver's own (``asyncpg.PostgresError``, ``sqlite3.Error``).

Receipts
    Canonical JSON (sorted keys, no spaces, ASCII) of ``{v, kid, transfer_id, seq,
    kind, amount, currency, accounts: [{handle, amount}], at, [partner_id],
    [original_transfer_id]}`` signed by the caller's ``Signer``; the receipt text is
    ``{"payload": ..., "sig": base64url}``. ``verify_receipt`` needs only this module's
    pure half and the city's public key (Ed25519, ECDSA P-256/SHA-256 or RSA
    PKCS#1 v1.5/SHA-256).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import functools
import hashlib
import io
import json
import logging
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from citizen_card.dberrors import sqlstate
from citizen_card.ledger_models import (
    CURRENCY,
    LEDGER_SEQUENCE_NAME,
    account_t,
    entry_t,
    pending_t,
    transfer_t,
    utcnow,
)

DEFAULT_MAX_AMOUNT = 5_000_000  # 50,000.00 yuan per transfer
LEDGER_BARRIER_KEY = 0x4C45_4447_4552_0001  # "LEDGER" + 1: advisory lock of the seq barrier
SHANGHAI = "Asia/Shanghai"

KINDS = ("topup", "payment", "refund", "disbursement", "reversal", "settlement")
ACCOUNT_KINDS = (
    "wallet",
    "merchant",
    "topup_clearing",
    "benefits_fund",
    "refunds",
    "insurance_fund",
)
SYSTEM_KINDS = ("topup_clearing", "benefits_fund", "refunds", "insurance_fund")
RECONCILED_KINDS = ("payment", "refund", "reversal", "settlement")


# ----------------------------------------------------------------------------- errors


class LedgerError(Exception):
    """Base of the ledger's refusals; nothing was written when one is raised."""


class InvalidAmount(LedgerError, ValueError):
    pass


class InvalidRequest(LedgerError, ValueError):
    pass


class InsufficientFunds(LedgerError):
    pass


class IdempotencyConflict(LedgerError):
    """The idempotency key was already used for a different request."""


class UnknownAccount(LedgerError, LookupError):
    pass


class UnknownTransfer(LedgerError, LookupError):
    pass


class NotRefundable(LedgerError):
    pass


class RefundExceedsOriginal(LedgerError):
    pass


class NotReversible(LedgerError):
    pass


class AlreadyReversed(NotReversible):
    pass


class Unbalanced(LedgerError):
    pass


class LedgerInconsistent(LedgerError):
    """The books disagree with themselves: a bug or tampering, never a user error."""


class ReceiptInvalid(LedgerError):
    pass


# ----------------------------------------------------------------------------- pure rules


def validate_amount(amount: object, max_amount: int = DEFAULT_MAX_AMOUNT) -> int:
    """A transfer amount: a positive ``int`` of fen, at most ``max_amount``."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidAmount(f"amount must be an integer number of fen, got {type(amount).__name__}")
    if amount <= 0:
        raise InvalidAmount("amount must be positive")
    if amount > max_amount:
        raise InvalidAmount(f"amount {amount} exceeds the per-transfer maximum {max_amount}")
    return amount


def check_balanced(postings: Sequence[tuple[int, int]]) -> None:
    """At least two legs on distinct accounts, none zero, summing to zero."""
    if len(postings) < 2:
        raise Unbalanced("a transfer needs at least two legs")
    accounts = [a for a, _ in postings]
    if len(set(accounts)) != len(accounts):
        raise Unbalanced("a transfer touches each account once")
    for _, amount in postings:
        if isinstance(amount, bool) or not isinstance(amount, int) or amount == 0:
            raise Unbalanced("legs are non-zero integers of fen")
    if sum(a for _, a in postings) != 0:
        raise Unbalanced("legs do not sum to zero")


def refund_cap(original_amount: int, refunded_so_far: int) -> int:
    """What may still be refunded of a payment."""
    return max(0, original_amount - refunded_so_far)


def check_refund(
    original_kind: str, original_amount: int, refunded: int, reversed_: bool, amount: int
) -> None:
    if original_kind != "payment":
        raise NotRefundable(f"only payments are refunded, not a {original_kind}")
    if reversed_:
        raise AlreadyReversed("the payment was reversed")
    cap = refund_cap(original_amount, refunded)
    if amount > cap:
        raise RefundExceedsOriginal(f"refund {amount} exceeds what remains refundable ({cap})")


def check_reversible(kind: str, reversed_: bool, refunded: int) -> None:
    if kind == "reversal":
        raise NotReversible("a reversal is not reversed; make a new transfer")
    if reversed_:
        raise AlreadyReversed("the transfer was already reversed")
    if refunded:
        raise NotReversible("the payment has refunds; reverse them first")


def reversal_postings(postings: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(account, -amount) for account, amount in postings]


def canonical_json(obj: Any) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def request_hash(request: Any) -> str:
    return hashlib.sha256(canonical_json(request)).hexdigest()


def day_bounds(day: date, tz: str | tzinfo = SHANGHAI) -> tuple[datetime, datetime]:
    """[start, end) of a local calendar day, as aware UTC datetimes."""
    zone = ZoneInfo(tz) if isinstance(tz, str) else tz
    start = datetime.combine(day, time(0), tzinfo=zone)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone)
    return start.astimezone(UTC), end.astimezone(UTC)


def format_time(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer(Protocol):
    """The city's signing key (an HSM in production): ``sign`` raw bytes, name the key."""

    key_id: str

    def sign(self, data: bytes) -> bytes: ...


class Ed25519Signer:
    """A software Ed25519 signer (tests, benchmarks, development)."""

    def __init__(self, private_key: Any = None, key_id: str = "ledger-dev-1") -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self._key = private_key or Ed25519PrivateKey.generate()
        self.key_id = key_id

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def public_key_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _verify_signature(public_key_pem: str | bytes, signature: bytes, data: bytes) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    pem = public_key_pem.encode("ascii") if isinstance(public_key_pem, str) else public_key_pem
    key = serialization.load_pem_public_key(pem)
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise ReceiptInvalid(f"unsupported key type {type(key).__name__}")
    except InvalidSignature as exc:
        raise ReceiptInvalid("bad signature") from exc


def receipt_payload(
    *,
    key_id: str,
    transfer_id: uuid.UUID,
    seq: int,
    kind: str,
    amount: int,
    currency: str,
    accounts: Sequence[tuple[str, int]],
    at: datetime,
    partner_id: str | None = None,
    original_transfer_id: uuid.UUID | None = None,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "v": 1,
        "kid": key_id,
        "transfer_id": str(transfer_id),
        "seq": seq,
        "kind": kind,
        "amount": amount,
        "currency": currency,
        "accounts": [{"handle": h, "amount": a} for h, a in accounts],
        "at": format_time(at),
    }
    if partner_id is not None:
        payload["partner_id"] = partner_id
    if original_transfer_id is not None:
        payload["original_transfer_id"] = str(original_transfer_id)
    return payload


def make_receipt(payload: dict[str, Any], signer: Signer) -> str:
    data = canonical_json(payload)
    sig = signer.sign(data)
    # == canonical_json({"payload": payload, "sig": ...}) without encoding twice
    return '{"payload":' + data.decode("ascii") + ',"sig":"' + _b64(sig) + '"}'


def verify_receipt(
    receipt: str | bytes, public_key_pem: str | bytes, *, key_id: str | None = None
) -> dict[str, Any]:
    """Check a receipt offline; return its payload or raise ``ReceiptInvalid``.

    Pure: needs only the receipt and the city's published public key.
    """
    try:
        doc = json.loads(receipt)
        payload = doc["payload"]
        sig = _unb64(doc["sig"])
        data = canonical_json(payload)
    except (ValueError, KeyError, TypeError) as exc:
        raise ReceiptInvalid(f"malformed receipt: {exc}") from exc
    if key_id is not None and payload.get("kid") != key_id:
        raise ReceiptInvalid("receipt signed with another key")
    _verify_signature(public_key_pem, sig, data)
    try:
        legs = [int(a["amount"]) for a in payload["accounts"]]
        if sum(legs) != 0 or int(payload["amount"]) <= 0:
            raise ReceiptInvalid("receipt legs do not balance")
    except (KeyError, TypeError, ValueError) as exc:
        raise ReceiptInvalid(f"malformed receipt payload: {exc}") from exc
    return payload


def sign_detached(data: bytes, signer: Signer) -> str:
    """``"<key_id>.<base64url signature>"`` over ``data`` (reconciliation files)."""
    return f"{signer.key_id}.{_b64(signer.sign(data))}"


def verify_detached(data: bytes, signature: str, public_key_pem: str | bytes) -> str:
    """Verify a ``sign_detached`` signature; return the key id or raise ``ReceiptInvalid``."""
    key_id, sep, sig = signature.rpartition(".")
    if not sep or not key_id:
        raise ReceiptInvalid("malformed signature")
    try:
        raw = _unb64(sig)
    except ValueError as exc:
        raise ReceiptInvalid("malformed signature") from exc
    _verify_signature(public_key_pem, raw, data)
    return key_id


# ----------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Account:
    id: int
    kind: str
    owner: str
    currency: str
    allow_negative: bool
    buffered: bool


@dataclass(frozen=True)
class Posting:
    account_id: int
    amount: int  # signed fen


@dataclass(frozen=True)
class Transfer:
    id: uuid.UUID
    seq: int
    kind: str
    amount: int
    currency: str
    partner_id: str | None
    original_transfer_id: uuid.UUID | None
    created_at: datetime
    meta: dict[str, Any]
    receipt: str
    postings: tuple[Posting, ...]
    replayed: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class StatementLine:
    seq: int
    transfer_id: uuid.UUID
    kind: str
    amount: int  # signed, for this account
    balance_after: int | None
    at: datetime
    partner_id: str | None
    original_transfer_id: uuid.UUID | None


@dataclass(frozen=True)
class StatementPage:
    lines: tuple[StatementLine, ...]
    next_cursor: str | None


AccountRef = int | Account
Precheck = Callable[[AsyncConnection], Awaitable[None]]


class Rider(Protocol):
    """A caller's own rows that must commit with its payment or not at all -- the
    partner API's request nonce and audit row -- so that a call costs one commit.

    PostgreSQL only (`Ledger.takes_riders`). The ledger writes them in the payment's
    transaction, after the transfer: for a batch, the first rider's `asyncpg_write`
    gets every payment the batch made; alone, its own. False (a request nonce used
    before) rolls the transaction back: alone, the payment raises `RiderRefused`; a
    batch runs each of its payments alone. `written` is set once the transaction
    holding the rows committed. A payment that fails writes nothing of its rider:
    the caller records what it must itself."""

    written: bool

    async def asyncpg_write(self, pg: Any, made: Sequence[tuple[Rider, Transfer]]) -> bool: ...


def _aid(ref: AccountRef) -> int:
    if isinstance(ref, Account):
        return ref.id
    if isinstance(ref, bool) or not isinstance(ref, int):
        raise InvalidRequest("an account is an Account or its integer id")
    return ref


def _uid(ref: uuid.UUID | str | Transfer) -> uuid.UUID:
    if isinstance(ref, Transfer):
        return ref.id
    if isinstance(ref, uuid.UUID):
        return ref
    try:
        return uuid.UUID(str(ref))
    except ValueError as exc:
        raise UnknownTransfer(f"not a transfer id: {ref!r}") from exc


def _key(text: object, what: str = "idempotency key") -> str:
    if not isinstance(text, str) or not text or len(text) > 128:
        raise InvalidRequest(f"{what} must be a non-empty string of at most 128 characters")
    return text


def _retryable(exc: BaseException) -> bool:
    if type(exc).__name__ == "ConnectionDoesNotExistError":  # asyncpg: the backend went
        return True  # away mid-transaction (rolled back); a retry uses a fresh connection
    return sqlstate(exc) in ("40P01", "40001")  # deadlock detected, serialization failure


def _unique_violation(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.IntegrityError):  # raised on aiosqlite's thread, unwrapped
        return "UNIQUE" in str(exc)
    return isinstance(exc, IntegrityError) or sqlstate(exc) == "23505"


@dataclass
class _Idem:
    scope: str
    key: str
    hash: str


@dataclass(slots=True)
class _PayItem:
    """A payment waiting for the next batch transaction (PostgreSQL)."""

    wallet: Account
    merchant: Account
    amount: int
    idem: _Idem
    partner_id: str | None
    meta: dict[str, Any]
    meta_json: str
    precheck: Any
    rider: Rider | None
    future: asyncio.Future[Transfer | None]


class RiderRefused(LedgerError):
    """The payment's rider refused its rows (its request nonce was used before):
    nothing was written."""


class _BatchRefused(Exception):
    """A one-time nonce of the batch was already used (a pay token's, or a rider's
    request nonce): roll it all back."""


@dataclass
class _Tx:
    """One write transaction: the SQLAlchemy connection (callers' prechecks, cold
    paths) and the driver connection under it (hot path)."""

    conn: Any  # AsyncConnection; None on the raw asyncpg path (no SQLAlchemy at all)
    pg: Any = None  # PostgreSQL: the asyncpg connection
    lite: Any = None  # SQLite: the aiosqlite connection
    seq: int | None = None  # SQLite: drawn by the transaction's first statement


# ----------------------------------------------------------------------------- statements

log = logging.getLogger(__name__)

_T = transfer_t.c
_E = entry_t.c
_A = account_t.c
_P = pending_t.c

# PostgreSQL hot path, asyncpg syntax. The seq is drawn in the same statement as the
# last account-row lock of the transfer, after it (see the module doc).
_PGQ_APPLY = (
    "UPDATE ledger_account SET balance = balance + $1, version = version + 1 "
    "WHERE id = $2 AND (balance + $1 >= 0 OR allow_negative) RETURNING balance"
)
_PGQ_APPLY_SEQ = (
    f"WITH u AS ({_PGQ_APPLY}), "
    "l AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared($3) AS x FROM u) "
    f"SELECT u.balance, nextval('{LEDGER_SEQUENCE_NAME}') AS seq, clock_timestamp() AS at "
    "FROM u, l"
)
_PGQ_SEQ = (
    "WITH l AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared($1) AS x) "
    f"SELECT NULL::bigint AS balance, nextval('{LEDGER_SEQUENCE_NAME}') AS seq, "
    "clock_timestamp() AS at FROM l"
)
_PGQ_FOLD = (
    "WITH d AS (DELETE FROM ledger_pending WHERE account_id = $1 RETURNING amount) "
    "UPDATE ledger_account SET balance = balance + (SELECT coalesce(sum(amount), 0) FROM d), "
    "version = version + 1 WHERE id = $1 RETURNING balance"
)
_PG_BARRIER = sa.text("SELECT pg_advisory_xact_lock(:k)")
# A batch of payments (see ``Ledger._pay_batch``): every wallet debited in one
# statement, each conditionally; the barrier is taken and the seqs drawn only after
# every row lock of the batch is held (``l`` counts all of ``u`` first).
_PGQ_DEBIT_BATCH = (
    "WITH d AS (SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::int[]) AS d(id, delta, i)), "
    "u AS (UPDATE ledger_account a SET balance = a.balance + d.delta, version = a.version + 1 "
    "FROM d WHERE a.id = d.id AND (a.balance + d.delta >= 0 OR a.allow_negative) "
    "RETURNING d.i, a.balance), "
    "l AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared($4) AS x, "
    "(SELECT count(*) FROM u) AS n) "
    f"SELECT u.i, u.balance, nextval('{LEDGER_SEQUENCE_NAME}') AS seq, "
    "clock_timestamp() AS at FROM u, l"
)
PAY_BATCH_MAX = 64  # payments per batch transaction (a wallet at most once in each)
# batch transactions in flight at once, on wallet-disjoint batches: while one waits
# for its commit's WAL flush the next is already under way (PostgreSQL flushes
# concurrent commits together). 2 vs 1: 715/675 vs 664/655 payments/s in alternate
# runs of bench/card.py (within its noise; the event loop, not PostgreSQL, limits)
PAY_BATCHES_IN_FLIGHT = 2

_FIND_IDEM = sa.select(transfer_t).where(
    _T.idem_scope == sa.bindparam("scope"), _T.idem_key == sa.bindparam("key")
)
_ENTRIES_OF = (
    sa.select(_E.account_id, _E.amount)
    .where(_E.transfer_id == sa.bindparam("tid"))
    .order_by(_E.leg)
)
_BALANCE = sa.select(
    _A.balance
    + sa.select(sa.func.coalesce(sa.func.sum(_P.amount), 0))
    .where(_P.account_id == _A.id)
    .scalar_subquery()
).where(_A.id == sa.bindparam("aid"))


def _insert_columns(table: sa.Table) -> list[sa.Column[Any]]:
    """The columns an insert names (``ledger_pending.id`` is generated)."""
    return [c for c in table.c if table is not pending_t or c.key != "id"]


_PENDING_COLS = tuple(_insert_columns(pending_t))


@functools.lru_cache(maxsize=64)
def _sqlite_insert_sql(n_entries: int, n_pending: int) -> tuple[str, str, str | None]:
    def insert(table: sa.Table, rows: int) -> str:
        cols = _insert_columns(table)
        one = "(" + ", ".join("?" for _ in cols) + ")"
        names = ", ".join(c.name for c in cols)
        return f"INSERT INTO {table.name} ({names}) VALUES {', '.join([one] * rows)}"

    return (
        insert(transfer_t, 1),
        insert(entry_t, n_entries),
        insert(pending_t, n_pending) if n_pending else None,
    )


_SQ_APPLY = (
    "UPDATE ledger_account SET balance = balance + ?, version = version + 1 "
    "WHERE id = ? AND (balance + ? >= 0 OR allow_negative) RETURNING balance"
)
_SQ_GRAB = "UPDATE ledger_sequence SET value = value WHERE name = 'transfer'"
_SQ_SEQ = "UPDATE ledger_sequence SET value = value + 1 WHERE name = 'transfer' RETURNING value"
_SQ_SEQ_INIT = "INSERT INTO ledger_sequence (name, value) VALUES ('transfer', 1)"


def _sqlite_begin(db: sqlite3.Connection, draw: bool) -> int | None:
    """On aiosqlite's thread: the transaction's first write (takes SQLite's write lock),
    drawing the next seq if ``draw``."""
    if not draw:
        db.execute(_SQ_GRAB)
        return None
    rows = db.execute(_SQ_SEQ).fetchall()
    if rows:
        return int(rows[0][0])
    db.execute(_SQ_SEQ_INIT)
    return 1


def _sqlite_post(
    db: sqlite3.Connection,
    direct: list[tuple[int, int]],
    record: dict[int, bool],
    sql: tuple[str, str, str | None],
    transfer: list[Any],
    entries: list[list[Any]],
    entry_accounts: list[int],
    pending: list[list[Any]],
    balance_col: int,
) -> int | None:
    """On aiosqlite's thread: the conditional balance UPDATEs, then the inserts. Returns
    the account that could not pay (the caller rolls back), or None."""
    after: dict[int, int] = {}
    for aid, delta in direct:
        rows = db.execute(_SQ_APPLY, (delta, aid, delta)).fetchall()
        if not rows:
            return aid
        after[aid] = int(rows[0][0])
    db.execute(sql[0], transfer)
    flat: list[Any] = []
    for entry, aid in zip(entries, entry_accounts, strict=True):
        if record.get(aid):
            entry[balance_col] = after[aid]
        flat.extend(entry)
    db.execute(sql[1], flat)
    if sql[2] is not None:
        db.execute(sql[2], [v for row in pending for v in row])
    return None


@functools.lru_cache(maxsize=256)
def _pg_insert(n_entries: int, n_pending: int, n_transfers: int = 1) -> str:
    """The same as one PostgreSQL statement (data-modifying CTEs): one round trip.
    Arguments: each transfer's columns, then each entry's, then each pending row's
    (a batch of payments passes all its transfers, then all entries, then all pending)."""
    n = 0

    def insert(table: sa.Table, columns: Sequence[sa.Column[Any]], rows: int) -> str:
        nonlocal n
        values = []
        for _ in range(rows):
            values.append("(" + ", ".join(f"${n + i + 1}" for i in range(len(columns))) + ")")
            n += len(columns)
        names = ", ".join(c.name for c in columns)
        return f"INSERT INTO {table.name} ({names}) VALUES {', '.join(values)}"

    parts = [f"t AS ({insert(transfer_t, list(transfer_t.c), n_transfers)})"]
    entries = insert(entry_t, list(entry_t.c), n_entries)
    if n_pending:
        parts.append(f"p AS ({insert(pending_t, _PENDING_COLS, n_pending)})")
    return f"WITH {', '.join(parts)} {entries}"


def _pg_insert_args(
    trow: dict[str, Any],
    erows: list[dict[str, Any]],
    prows: list[dict[str, Any]],
    meta_json: str,
    after: dict[int, int | None],
) -> tuple[list[Any], list[Any], list[Any]]:
    """``_pg_insert``'s arguments for one transfer, in its three parts: the transfer's
    columns, each entry's (with the balance after, for accounts posted directly), each
    pending row's. A batch passes every transfer's first part, then the entries', then
    the pending rows'."""
    for row in erows:
        row["balance_after"] = after.get(row["account_id"])
    transfer = [meta_json if c.key == "metadata" else trow[c.key] for c in transfer_t.c]
    entries = [row[c.key] for row in erows for c in entry_t.c]
    pending = [row[c.key] for row in prows for c in _PENDING_COLS]
    return transfer, entries, pending


def _meta(meta: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
    """A transfer's metadata and its JSON text (bad metadata is refused here, early)."""
    meta = dict(meta or {})
    return meta, json.dumps(meta, sort_keys=True, allow_nan=False)


def _raw_ok(precheck: Precheck | None) -> bool:
    return precheck is None or hasattr(precheck, "asyncpg")


async def _precheck(precheck: Precheck, tx: _Tx) -> None:
    """A precheck that also speaks the driver (``precheck.asyncpg(connection)``, or
    ``precheck.sqlite(sqlite3_connection)`` run on aiosqlite's thread) runs on the driver
    connection: one round trip or hop, without SQLAlchemy's per-statement cost."""
    raw = getattr(precheck, "asyncpg", None)
    lite = getattr(precheck, "sqlite", None)
    if tx.pg is not None and raw is not None:
        await raw(tx.pg)
    elif tx.lite is not None and lite is not None:  # one hop into aiosqlite's thread
        await tx.lite._execute(lite, tx.lite._conn)
    else:
        await precheck(tx.conn)


class Ledger:
    """Async operations of the wallet ledger over the caller's engine (see module doc)."""

    def __init__(
        self,
        engine: AsyncEngine,
        signer: Signer,
        *,
        write_lock: asyncio.Lock | None = None,
        max_amount: int = DEFAULT_MAX_AMOUNT,
        disbursement_chunk: int = 200,
    ) -> None:
        self.engine = engine
        self.signer = signer
        self.is_sqlite = engine.dialect.name == "sqlite"
        if not self.is_sqlite and engine.dialect.driver != "asyncpg":
            raise InvalidRequest("the ledger runs on SQLite (aiosqlite) or PostgreSQL (asyncpg)")
        if write_lock is None and self.is_sqlite:
            write_lock = asyncio.Lock()
        self._lock = write_lock
        # PostgreSQL: SQLAlchemy keeps out of transaction control (AUTOCOMMIT) and the
        # ledger runs the transaction on the asyncpg connection itself; statements the
        # caller's precheck issues through SQLAlchemy run inside it all the same.
        self._pg_engine = (
            None if self.is_sqlite else engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        self.max_amount = max_amount
        self.disbursement_chunk = disbursement_chunk
        # (wallet owner handle, partner id) -> the handle that partner's receipts show
        self.pseudonym: Callable[[str, str], str] | None = None
        # PostgreSQL: plain asyncpg connections for payments (citizen_card.pgpool)
        self.raw_pool: Any = None
        self._accounts: dict[int, Account] = {}  # immutable attributes only
        self._system: dict[str, int] = {}
        self._bind_procs: dict[str, list[tuple[str, Any]]] = {}
        # PostgreSQL with raw_pool: concurrent payments share transactions (group
        # commit, see ``_pay_batch``); False runs each in its own, as SQLite does
        self.batch_payments = True
        self._pay_queue: list[_PayItem] = []
        self._pay_running: set[asyncio.Task[None]] = set()
        self._pay_busy: set[int] = set()  # wallets of the batches in flight
        # riders (see `Rider`) on PostgreSQL only: on SQLite, with one writer and one
        # transaction per payment, a caller's rows group-committed apart measured faster
        self.takes_riders = not self.is_sqlite
        self.pay_batches = 0  # batch transactions committed (tests, metrics)

    # ------------------------------------------------------------------ plumbing

    @contextlib.asynccontextmanager
    async def _write(self, *, transfer: bool = False, raw: bool = False) -> AsyncIterator[_Tx]:
        """One write transaction. ``raw``: the body touches only ``tx.pg`` on PostgreSQL,
        so it may run on a connection of ``raw_pool`` (no SQLAlchemy checkout)."""
        lock = self._lock if self._lock is not None else contextlib.nullcontext()
        async with lock:
            if raw and self._pg_engine is not None and self.raw_pool is not None:
                async with self.raw_pool.acquire() as pg, pg.transaction():
                    yield _Tx(None, pg)
            elif self._pg_engine is None:
                async with self.engine.begin() as conn:
                    lite = (await conn.get_raw_connection()).driver_connection
                    tx = _Tx(conn, lite=lite)
                    # Take SQLite's write lock now (like BEGIN IMMEDIATE), so no read
                    # of this transaction can go stale under another process's write;
                    # a transfer's transaction draws its seq with that first statement.
                    tx.seq = await self._in_sqlite(tx, _sqlite_begin, transfer)
                    yield tx
            else:
                async with self._pg_engine.connect() as conn:
                    pg = (await conn.get_raw_connection()).driver_connection
                    async with pg.transaction():
                        yield _Tx(conn, pg)

    async def _account(self, ref: AccountRef, conn: AsyncConnection | None = None) -> Account:
        aid = _aid(ref)
        acct = self._accounts.get(aid)
        if acct is not None:
            return acct
        stmt = sa.select(account_t).where(_A.id == aid)
        if conn is not None:
            row = (await conn.execute(stmt)).first()
        else:
            async with self.engine.connect() as rconn:
                row = (await rconn.execute(stmt)).first()
        if row is None:
            raise UnknownAccount(f"no account {aid}")
        acct = Account(
            id=row.id,
            kind=row.kind,
            owner=row.owner,
            currency=row.currency,
            allow_negative=bool(row.allow_negative),
            buffered=bool(row.buffered),
        )
        self._accounts[aid] = acct
        return acct

    @staticmethod
    def _transfer_from_row(row: Any, postings: Iterable[Any], replayed: bool) -> Transfer:
        return Transfer(
            id=row.id,
            seq=row.seq,
            kind=row.kind,
            amount=row.amount,
            currency=row.currency,
            partner_id=row.partner_id,
            original_transfer_id=row.original_transfer_id,
            created_at=row.created_at,
            meta=dict(row.metadata or {}),
            receipt=row.receipt,
            postings=tuple(Posting(p.account_id, p.amount) for p in postings),
            replayed=replayed,
        )

    async def _load(self, conn: AsyncConnection, tid: uuid.UUID) -> Transfer:
        row = (await conn.execute(sa.select(transfer_t).where(_T.id == tid))).first()
        if row is None:
            raise UnknownTransfer(f"no transfer {tid}")
        postings = (await conn.execute(_ENTRIES_OF, {"tid": tid})).all()
        return self._transfer_from_row(row, postings, replayed=False)

    async def _state(self, conn: AsyncConnection, tid: uuid.UUID) -> Any:
        stmt = sa.select(_T.kind, _T.amount, _T.refunded_amount, _T.reversed_by).where(_T.id == tid)
        row = (await conn.execute(stmt)).first()
        if row is None:
            raise UnknownTransfer(f"no transfer {tid}")
        return row

    async def _find_idem(self, conn: AsyncConnection, idem: _Idem) -> Transfer | None:
        row = (await conn.execute(_FIND_IDEM, {"scope": idem.scope, "key": idem.key})).first()
        if row is None:
            return None
        if row.request_hash != idem.hash:
            raise IdempotencyConflict(
                f"idempotency key {idem.key!r} ({idem.scope}) was used for another request"
            )
        postings = (await conn.execute(_ENTRIES_OF, {"tid": row.id})).all()
        return self._transfer_from_row(row, postings, replayed=True)

    async def _find_idem_fresh(self, idem: _Idem) -> Transfer | None:
        async with self.engine.connect() as conn:
            return await self._find_idem(conn, idem)

    async def _once(
        self, idem: _Idem, body: Callable[[_Tx], Awaitable[Transfer]], *, raw: bool = False
    ) -> Transfer:
        """Run one idempotent transfer transaction, optimistically.

        The unique index on (scope, key) is the idempotency check: a retry of a done
        request fails -- on the index at the insert, or earlier on the balance, the
        refund cap, a precheck -- and rolls back; only then do we look the key up and
        return the first transfer (or raise ``IdempotencyConflict``). So a new request,
        the common case, costs no extra round trip. A concurrent twin ends the same way.
        Deadlocks and serialization failures are retried.
        """
        for attempt in range(4):
            try:
                async with self._write(transfer=True, raw=raw) as tx:
                    return await body(tx)
            except (IdempotencyConflict, RiderRefused):
                raise
            except Exception as exc:
                if _retryable(exc) and attempt < 3:
                    continue
                try:
                    twin = await self._find_idem_fresh(idem)
                except IdempotencyConflict:
                    raise
                except Exception:
                    twin = None  # report the original failure, not the lookup's
                if twin is not None:
                    return twin
                if _unique_violation(exc) and attempt < 3:
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _fold(self, tx: _Tx, account_id: int) -> int:
        if tx.pg is not None:
            new = await tx.pg.fetchval(_PGQ_FOLD, account_id)
        else:
            conn = tx.conn
            total = (
                await conn.execute(
                    sa.select(sa.func.coalesce(sa.func.sum(_P.amount), 0)).where(
                        _P.account_id == account_id
                    )
                )
            ).scalar_one()
            await conn.execute(sa.delete(pending_t).where(_P.account_id == account_id))
            new = (
                await conn.execute(
                    sa.update(account_t)
                    .where(_A.id == account_id)
                    .values(balance=_A.balance + total, version=_A.version + 1)
                    .returning(_A.balance)
                )
            ).scalar()
        if new is None:
            raise UnknownAccount(f"no account {account_id}")
        return int(new)

    async def _in_sqlite(self, tx: _Tx, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(sqlite3_connection, *args)`` on aiosqlite's thread: one hop for
        several statements, instead of four hops per statement through the SQLAlchemy
        adapter (which reaches into the same aiosqlite internals)."""
        lite = tx.lite
        return await lite._execute(fn, lite._conn, *args)

    async def _pg_apply(
        self, tx: _Tx, direct: Sequence[tuple[Account, int]]
    ) -> tuple[dict[int, int | None], int, datetime]:
        """PostgreSQL: post the direct legs (conditional UPDATEs, account-id order) and
        draw seq and time, riding on the last UPDATE, i.e. after every row lock."""
        after: dict[int, int | None] = {}
        row = None
        for i, (acct, delta) in enumerate(direct):
            if acct.buffered:  # a checked debit of a buffered account: fold, then debit
                await self._fold(tx, acct.id)
            if i == len(direct) - 1:
                row = await tx.pg.fetchrow(_PGQ_APPLY_SEQ, delta, acct.id, LEDGER_BARRIER_KEY)
                new = None if row is None else row["balance"]
            else:
                new = await tx.pg.fetchval(_PGQ_APPLY, delta, acct.id)
            if new is None:
                raise InsufficientFunds(f"account {acct.id} ({acct.owner}) cannot pay {-delta} fen")
            after[acct.id] = None if acct.buffered else int(new)
        if not direct:
            row = await tx.pg.fetchrow(_PGQ_SEQ, LEDGER_BARRIER_KEY)
        assert row is not None
        return after, int(row["seq"]), row["at"].astimezone(UTC)

    def _receipt_handle(self, acct: Account, partner_id: str | None) -> str:
        """A wallet appears on a partner's receipt under a handle made for that partner,
        so two partners cannot link their customers by comparing receipts."""
        if acct.kind == "wallet" and partner_id is not None and self.pseudonym is not None:
            return self.pseudonym(acct.owner, partner_id)
        return acct.owner

    def _sqlite_bind(self, table: sa.Table, row: dict[str, Any]) -> list[Any]:
        procs = self._bind_procs.get(table.name)
        if procs is None:
            dialect = self.engine.dialect
            procs = [(c.key, c.type.bind_processor(dialect)) for c in _insert_columns(table)]
            self._bind_procs[table.name] = procs
        return [row[k] if proc is None else proc(row[k]) for k, proc in procs]

    def _rows(
        self,
        *,
        tid: uuid.UUID,
        seq: int,
        at: datetime,
        kind: str,
        legs: Sequence[tuple[Account, int]],
        amount: int,
        currency: str,
        idem: _Idem,
        partner_id: str | None,
        original: uuid.UUID | None,
        meta: dict[str, Any],
        pending: Sequence[tuple[int, int]],
    ) -> tuple[Transfer, dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
        """The transfer, its row (with its signed receipt), its entries and pending rows,
        once seq and time are drawn."""
        payload = receipt_payload(
            key_id=self.signer.key_id,
            transfer_id=tid,
            seq=seq,
            kind=kind,
            amount=amount,
            currency=currency,
            accounts=[(self._receipt_handle(a, partner_id), m) for a, m in legs],
            at=at,
            partner_id=partner_id,
            original_transfer_id=original,
        )
        receipt = make_receipt(payload, self.signer)
        trow: dict[str, Any] = {
            "id": tid,
            "seq": seq,
            "kind": kind,
            "idem_scope": idem.scope,
            "idem_key": idem.key,
            "request_hash": idem.hash,
            "original_transfer_id": original,
            "partner_id": partner_id,
            "amount": amount,
            "currency": currency,
            "refunded_amount": 0,
            "reversed_by": None,
            "created_at": at,
            "metadata": meta,
            "receipt": receipt,
        }
        erows = [
            {
                "transfer_id": tid,
                "leg": i,
                "account_id": a.id,
                "seq": seq,
                "amount": m,
                "balance_after": None,
            }
            for i, (a, m) in enumerate(legs)
        ]
        prows = [{"account_id": a, "transfer_id": tid, "amount": m} for a, m in pending]
        made = Transfer(
            id=tid,
            seq=seq,
            kind=kind,
            amount=amount,
            currency=currency,
            partner_id=partner_id,
            original_transfer_id=original,
            created_at=at,
            meta=meta,
            receipt=trow["receipt"],
            postings=tuple(Posting(a.id, m) for a, m in legs),
        )
        return made, trow, erows, prows

    async def _post(
        self,
        tx: _Tx,
        *,
        kind: str,
        legs: Sequence[tuple[Account, int]],
        amount: int,
        idem: _Idem,
        partner_id: str | None = None,
        original: uuid.UUID | None = None,
        meta: dict[str, Any] | None = None,
        tid: uuid.UUID | None = None,
        rider: Rider | None = None,
    ) -> Transfer:
        """Write one balanced transfer inside ``tx`` and return it (and the rider's
        rows after it, see `Rider`)."""
        check_balanced([(a.id, m) for a, m in legs])
        currencies = {a.currency for a, _ in legs}
        if len(currencies) != 1:
            raise InvalidRequest("a transfer stays in one currency")
        currency = currencies.pop()
        meta, meta_json = _meta(meta)
        direct: list[tuple[Account, int]] = []
        pending: list[tuple[int, int]] = []
        # Account-id order is the one lock order of the ledger: no deadlocks.
        for acct, delta in sorted(legs, key=lambda leg: leg[0].id):
            if acct.buffered and (delta > 0 or acct.allow_negative):
                pending.append((acct.id, delta))  # no lock, no check needed
            else:
                direct.append((acct, delta))
        tid = tid or uuid.uuid4()
        after: dict[int, int | None] = {}
        if tx.pg is not None:
            after, seq, at = await self._pg_apply(tx, direct)
        else:
            for acct, _ in direct:
                if acct.buffered:  # a checked debit of a buffered account: fold first
                    await self._fold(tx, acct.id)
            seq, tx.seq = tx.seq, None
            if seq is None:
                seq = await self._in_sqlite(tx, _sqlite_begin, True)
            at = utcnow()  # under the write lock: in seq order
        made, trow, erows, prows = self._rows(
            tid=tid,
            seq=seq,
            at=at,
            kind=kind,
            legs=legs,
            amount=amount,
            currency=currency,
            idem=idem,
            partner_id=partner_id,
            original=original,
            meta=meta,
            pending=pending,
        )
        if tx.pg is not None:
            transfer, entries, pending_args = _pg_insert_args(trow, erows, prows, meta_json, after)
            await tx.pg.execute(
                _pg_insert(len(erows), len(prows)), *transfer, *entries, *pending_args
            )
            if rider is not None and not await rider.asyncpg_write(tx.pg, [(rider, made)]):
                raise RiderRefused("the payment's rider refused its rows")
        else:
            record = {a.id: not a.buffered for a, _ in direct}
            failed = await self._in_sqlite(
                tx,
                _sqlite_post,
                [(a.id, d) for a, d in direct],
                record,
                _sqlite_insert_sql(len(erows), len(prows)),
                self._sqlite_bind(transfer_t, trow),
                [self._sqlite_bind(entry_t, r) for r in erows],
                [r["account_id"] for r in erows],
                [self._sqlite_bind(pending_t, r) for r in prows],
                _insert_columns(entry_t).index(entry_t.c.balance_after),
            )
            if failed is not None:
                acct = next(a for a, _ in direct if a.id == failed)
                delta = next(d for a, d in direct if a.id == failed)
                raise InsufficientFunds(f"account {acct.id} ({acct.owner}) cannot pay {-delta} fen")
        return made

    # ------------------------------------------------------------------ accounts

    async def open_account(
        self,
        kind: str,
        owner: str,
        allow_negative: bool = False,
        *,
        buffered: bool | None = None,
        currency: str = CURRENCY,
    ) -> Account:
        """Open (or return the existing) account of ``kind`` for a pseudonymous handle."""
        if kind not in ACCOUNT_KINDS:
            raise InvalidRequest(f"unknown account kind {kind!r}")
        _key(owner, "owner handle")
        if currency != CURRENCY:
            raise InvalidRequest("only CNY accounts")
        if kind == "wallet" and allow_negative:
            raise InvalidRequest("a wallet never goes negative")
        if buffered is None:
            buffered = kind != "wallet"
        if kind == "wallet" and buffered:
            raise InvalidRequest("wallets are posted directly")
        select = sa.select(account_t).where(
            _A.kind == kind, _A.owner == owner, _A.currency == currency
        )
        for _ in range(2):
            async with self.engine.connect() as conn:
                row = (await conn.execute(select)).first()
            if row is None:
                try:
                    async with self._write() as tx:
                        await tx.conn.execute(
                            sa.insert(account_t).values(
                                kind=kind,
                                owner=owner,
                                currency=currency,
                                balance=0,
                                allow_negative=allow_negative,
                                buffered=buffered,
                                version=0,
                                created_at=utcnow(),
                            )
                        )
                        row = (await tx.conn.execute(select)).one()
                except IntegrityError:
                    continue  # opened concurrently: read it
            if bool(row.allow_negative) != allow_negative or bool(row.buffered) != buffered:
                raise InvalidRequest(f"account {kind}/{owner} exists with other settings")
            return await self._account(row.id)
        raise InvalidRequest(f"could not open account {kind}/{owner}")  # pragma: no cover

    async def system_account(self, kind: str) -> Account:
        """The city's own account of a kind (top-up clearing, benefits fund, refunds)."""
        if kind not in SYSTEM_KINDS:
            raise InvalidRequest(f"not a system account kind: {kind!r}")
        aid = self._system.get(kind)
        if aid is not None:
            return await self._account(aid)
        acct = await self.open_account(kind, f"city:{kind}", allow_negative=True)
        self._system[kind] = acct.id
        return acct

    async def balance(self, account: AccountRef) -> int:
        """The account's balance in fen (posted balance plus buffered legs)."""
        aid = _aid(account)
        async with self.engine.connect() as conn:
            value = (await conn.execute(_BALANCE, {"aid": aid})).scalar()
        if value is None:
            raise UnknownAccount(f"no account {aid}")
        return int(value)

    async def settle(self, account: AccountRef | None = None) -> int:
        """Fold buffered legs into posted balances; returns how many accounts were folded."""
        if account is not None:
            ids = [_aid(account)]
        else:
            async with self.engine.connect() as conn:
                ids = list((await conn.execute(sa.select(_P.account_id).distinct())).scalars())
        for aid in sorted(ids):
            async with self._write() as tx:
                await self._fold(tx, aid)
        return len(ids)

    # ------------------------------------------------------------------ operations

    async def top_up(
        self,
        wallet: AccountRef,
        amount: int,
        idem_key: str,
        *,
        source: AccountRef | None = None,
        meta: dict[str, Any] | None = None,
        precheck: Precheck | None = None,
    ) -> Transfer:
        """Credit a wallet from a top-up clearing account (default: the city's)."""
        validate_amount(amount, self.max_amount)
        w = await self._account(wallet)
        src = await (
            self._account(source) if source is not None else self.system_account("topup_clearing")
        )
        if w.kind != "wallet":
            raise InvalidRequest("top-ups credit a wallet")
        if src.kind == "wallet":
            raise InvalidRequest("a top-up comes from a clearing account, not a wallet")
        idem = _Idem(
            "topup",
            _key(idem_key),
            request_hash(
                {
                    "op": "topup",
                    "wallet": w.id,
                    "source": src.id,
                    "amount": amount,
                    "meta": meta or {},
                }
            ),
        )

        async def body(tx: _Tx) -> Transfer:
            if precheck is not None:
                await _precheck(precheck, tx)
            return await self._post(
                tx,
                kind="topup",
                legs=[(src, -amount), (w, amount)],
                amount=amount,
                idem=idem,
                meta=meta,
            )

        return await self._once(idem, body)

    async def pay(
        self,
        wallet: AccountRef,
        merchant_account: AccountRef,
        amount: int,
        idem_key: str,
        partner_id: str | None = None,
        meta: dict[str, Any] | None = None,
        *,
        precheck: Precheck | None = None,
        rider: Rider | None = None,
    ) -> Transfer:
        """Debit a wallet, credit a merchant. ``precheck(conn)`` runs in the transaction
        before the debit (e.g. "card not frozen"; lock the card row, see module doc);
        raising aborts the payment with nothing written. It runs with the SQLite
        write lock already held: it must not take ``write_lock`` itself. ``rider``:
        the caller's rows to commit in the payment's transaction (PostgreSQL, see
        `Rider`)."""
        validate_amount(amount, self.max_amount)
        if partner_id is not None:
            _key(partner_id, "partner id")
        if rider is not None and not self.takes_riders:
            raise InvalidRequest("this ledger takes no riders (SQLite)")
        w = await self._account(wallet)
        m = await self._account(merchant_account)
        if w.kind != "wallet":
            raise InvalidRequest("payments debit a wallet")
        if m.kind != "merchant":
            raise InvalidRequest("payments credit a merchant account")
        idem = _Idem(
            f"payment:{partner_id or '-'}",
            _key(idem_key),
            request_hash(
                {
                    "op": "payment",
                    "wallet": w.id,
                    "merchant": m.id,
                    "amount": amount,
                    "partner": partner_id,
                    "meta": meta or {},
                }
            ),
        )

        async def body(tx: _Tx) -> Transfer:
            if precheck is not None:
                await _precheck(precheck, tx)
            return await self._post(
                tx,
                kind="payment",
                legs=[(w, -amount), (m, amount)],
                amount=amount,
                idem=idem,
                partner_id=partner_id,
                meta=meta,
                rider=rider,
            )

        if self._batchable(w, m, precheck):
            item_meta, meta_json = _meta(meta)
            fut: asyncio.Future[Transfer | None] = asyncio.get_running_loop().create_future()
            self._pay_queue.append(
                _PayItem(w, m, amount, idem, partner_id, item_meta, meta_json, precheck, rider, fut)
            )
            self._pay_kick()
            done = await fut
            if done is not None:
                return done
            # refused or failed in the batch: alone, for the exact answer (a replay's
            # first transfer, the card's state, the balance, a retry after a deadlock)
        done = await self._once(idem, body, raw=_raw_ok(precheck))
        if rider is not None and not done.replayed:  # made by our committed transaction
            rider.written = True
        return done

    def _batchable(self, w: Account, m: Account, precheck: Precheck | None) -> bool:
        """Batched: PostgreSQL payments on the raw pool, from a directly posted wallet to
        a buffered merchant, with a precheck that has a batch form."""
        return (
            self.batch_payments
            and self.raw_pool is not None
            and not self.is_sqlite
            and not w.buffered
            and m.buffered
            and w.currency == m.currency
            and hasattr(precheck, "asyncpg_lock_batch")
            and hasattr(precheck, "asyncpg_consume_batch")
        )

    def _pay_kick(self) -> None:
        """Start batch transactions while fewer than PAY_BATCHES_IN_FLIGHT run: each
        takes what queued, a wallet at most once and none that a running batch holds
        (its UPDATE must see the balance the previous payment left, and two batches
        never wait on each other's wallet rows)."""
        queue = self._pay_queue
        while queue and len(self._pay_running) < PAY_BATCHES_IN_FLIGHT:
            batch: list[_PayItem] = []
            later: list[_PayItem] = []
            busy = self._pay_busy
            for item in queue:
                if item.wallet.id in busy or len(batch) >= PAY_BATCH_MAX:
                    later.append(item)
                else:
                    batch.append(item)
                    busy.add(item.wallet.id)
            queue[:] = later
            if not batch:
                return
            task = asyncio.ensure_future(self._pay_batch_task(batch))
            self._pay_running.add(task)
            task.add_done_callback(self._pay_running.discard)

    async def _pay_batch_task(self, batch: list[_PayItem]) -> None:
        try:
            results = await self._pay_batch(batch)
        except asyncio.CancelledError:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(RuntimeError("service shutting down"))
            raise
        except Exception as exc:  # each payment then runs alone and meets it itself
            log.info("payment batch of %d rolled back (%s); one by one", len(batch), exc)
            results = [None] * len(batch)
        finally:
            self._pay_busy.difference_update(item.wallet.id for item in batch)
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)
        self._pay_running.discard(asyncio.current_task())  # type: ignore[arg-type]
        self._pay_kick()

    async def _pay_batch(self, batch: list[_PayItem]) -> list[Transfer | None]:
        """One transaction for many payments, on the raw pool: lock and check the cards
        (FOR SHARE, as each payment's precheck does), debit every wallet that can pay
        and draw seqs after all row locks and the barrier, use up the pay tokens, sign
        the receipts, insert every transfer with its entries and pending rows, COMMIT:
        six round trips for the batch instead of five per payment. A payment whose card
        or balance says no is answered None (the caller runs it alone for its exact
        error); a used token, an Idempotency-Key seen before or any database error rolls
        the whole batch back and every payment of it runs alone."""
        check = batch[0].precheck
        out: list[Transfer | None] = [None] * len(batch)
        async with self.raw_pool.acquire() as pg, pg.transaction():
            ok = await check.asyncpg_lock_batch(pg, [item.precheck for item in batch])
            live = [i for i, good in enumerate(ok) if good]
            if not live:
                return out
            rows = await pg.fetch(
                _PGQ_DEBIT_BATCH,
                [batch[i].wallet.id for i in live],
                [-batch[i].amount for i in live],
                list(range(len(live))),
                LEDGER_BARRIER_KEY,
            )
            if not rows:
                return out
            paid = sorted((live[r["i"]], r) for r in rows)
            if not await check.asyncpg_consume_batch(pg, [batch[i].precheck for i, _ in paid]):
                raise _BatchRefused("a pay token of the batch was already used")
            transfers: list[Any] = []
            entries: list[Any] = []
            pendings: list[Any] = []
            n_entries = n_pending = 0
            for i, row in paid:
                item = batch[i]
                w, m, amount = item.wallet, item.merchant, item.amount
                tid = uuid.uuid4()
                seq, at = int(row["seq"]), row["at"].astimezone(UTC)
                legs = [(w, -amount), (m, amount)]
                out[i], trow, erows, prows = self._rows(
                    tid=tid,
                    seq=seq,
                    at=at,
                    kind="payment",
                    legs=legs,
                    amount=amount,
                    currency=w.currency,
                    idem=item.idem,
                    partner_id=item.partner_id,
                    original=None,
                    meta=item.meta,
                    pending=[(m.id, amount)],
                )
                t_args, e_args, p_args = _pg_insert_args(
                    trow, erows, prows, item.meta_json, {w.id: int(row["balance"])}
                )
                transfers.extend(t_args)
                entries.extend(e_args)
                pendings.extend(p_args)
                n_entries += len(erows)
                n_pending += len(prows)
            sql = _pg_insert(n_entries, n_pending, len(paid))
            await pg.execute(sql, *transfers, *entries, *pendings)
            made = [(r, t) for item, t in zip(batch, out, strict=True) if (r := item.rider) and t]
            if made and not await made[0][0].asyncpg_write(pg, made):
                raise _BatchRefused("a rider of the batch refused (a request nonce used)")
        for rider, _ in made:
            rider.written = True
        self.pay_batches += 1
        return out

    async def settle_bill(
        self,
        wallet: AccountRef,
        merchant_account: AccountRef,
        self_pay: int,
        covered: int,
        idem_key: str,
        partner_id: str | None = None,
        *,
        fund: AccountRef | None = None,
        meta: dict[str, Any] | None = None,
        precheck: Precheck | None = None,
    ) -> Transfer:
        """诊间结算: one atomic transfer crediting a merchant (the hospital) with
        ``self_pay + covered``: ``self_pay`` debited from the wallet, ``covered`` from a
        fund (default: the city's ``insurance_fund``, which may go negative: what the
        insurer owes). Either part may be 0 (that leg is left out), not both. Kind
        ``settlement``, scope ``settlement:<partner>``; ``precheck`` as for ``pay``. A
        short wallet is ``InsufficientFunds`` with nothing written, the fund's leg
        included. Reversible like any transfer; not refundable (only payments are)."""
        for part in (self_pay, covered):
            if isinstance(part, bool) or not isinstance(part, int) or part < 0:
                raise InvalidAmount("settlement parts are non-negative integers of fen")
        total = validate_amount(self_pay + covered, self.max_amount)
        if partner_id is not None:
            _key(partner_id, "partner id")
        w = await self._account(wallet)
        m = await self._account(merchant_account)
        f = await (
            self._account(fund) if fund is not None else self.system_account("insurance_fund")
        )
        if w.kind != "wallet":
            raise InvalidRequest("the self-pay part is debited from a wallet")
        if m.kind != "merchant":
            raise InvalidRequest("settlements credit a merchant account")
        if f.kind in ("wallet", "merchant"):
            raise InvalidRequest("the covered part comes from a fund account")
        idem = _Idem(
            f"settlement:{partner_id or '-'}",
            _key(idem_key),
            request_hash(
                {
                    "op": "settlement",
                    "wallet": w.id,
                    "merchant": m.id,
                    "fund": f.id,
                    "self_pay": self_pay,
                    "covered": covered,
                    "partner": partner_id,
                    "meta": meta or {},
                }
            ),
        )
        legs = [(a, -amount) for a, amount in ((w, self_pay), (f, covered)) if amount]
        legs.append((m, total))

        async def body(tx: _Tx) -> Transfer:
            if precheck is not None:
                await _precheck(precheck, tx)
            return await self._post(
                tx,
                kind="settlement",
                legs=legs,
                amount=total,
                idem=idem,
                partner_id=partner_id,
                meta=meta,
            )

        return await self._once(idem, body)

    async def refund(
        self,
        original_transfer_id: uuid.UUID | str | Transfer,
        amount: int,
        idem_key: str,
        *,
        meta: dict[str, Any] | None = None,
        precheck: Precheck | None = None,
    ) -> Transfer:
        """Refund part or all of a payment: never more than amount − refunded so far."""
        validate_amount(amount, self.max_amount)
        oid = _uid(original_transfer_id)
        idem = _Idem(
            f"refund:{oid}",
            _key(idem_key),
            request_hash(
                {"op": "refund", "original": str(oid), "amount": amount, "meta": meta or {}}
            ),
        )

        async def body(tx: _Tx) -> Transfer:
            orig = await self._load(tx.conn, oid)
            st = await self._state(tx.conn, oid)
            check_refund(st.kind, st.amount, st.refunded_amount, st.reversed_by is not None, amount)
            if precheck is not None:
                await _precheck(precheck, tx)
            # The cap, atomically: concurrent refunds queue on the payment's row.
            bumped = await tx.conn.execute(
                sa.update(transfer_t)
                .where(
                    _T.id == oid,
                    _T.kind == "payment",
                    _T.reversed_by.is_(None),
                    _T.refunded_amount + amount <= _T.amount,
                )
                .values(refunded_amount=_T.refunded_amount + amount)
            )
            if bumped.rowcount != 1:
                st = await self._state(tx.conn, oid)
                check_refund(
                    st.kind, st.amount, st.refunded_amount, st.reversed_by is not None, amount
                )
                raise RefundExceedsOriginal("refund exceeds the original")  # pragma: no cover
            debited = next(p for p in orig.postings if p.amount < 0)
            credited = next(p for p in orig.postings if p.amount > 0)
            wallet = await self._account(debited.account_id, tx.conn)
            merchant = await self._account(credited.account_id, tx.conn)
            return await self._post(
                tx,
                kind="refund",
                legs=[(merchant, -amount), (wallet, amount)],
                amount=amount,
                idem=idem,
                partner_id=orig.partner_id,
                original=oid,
                meta=meta,
            )

        return await self._once(idem, body)

    async def reverse(
        self,
        transfer_id: uuid.UUID | str | Transfer,
        idem_key: str,
        *,
        meta: dict[str, Any] | None = None,
        precheck: Precheck | None = None,
    ) -> Transfer:
        """Undo a whole transfer once (its exact negation). A payment with refunds is
        not reversed (reverse the refunds first); a reversal is not reversed."""
        oid = _uid(transfer_id)
        idem = _Idem(
            f"reversal:{oid}",
            _key(idem_key),
            request_hash({"op": "reversal", "original": str(oid), "meta": meta or {}}),
        )

        async def body(tx: _Tx) -> Transfer:
            orig = await self._load(tx.conn, oid)
            st = await self._state(tx.conn, oid)
            check_reversible(st.kind, st.reversed_by is not None, st.refunded_amount)
            if precheck is not None:
                await _precheck(precheck, tx)
            tid = uuid.uuid4()
            marked = await tx.conn.execute(
                sa.update(transfer_t)
                .where(
                    _T.id == oid,
                    _T.reversed_by.is_(None),
                    _T.refunded_amount == 0,
                    _T.kind != "reversal",
                )
                .values(reversed_by=tid)
            )
            if marked.rowcount != 1:
                st = await self._state(tx.conn, oid)
                check_reversible(st.kind, st.reversed_by is not None, st.refunded_amount)
                raise AlreadyReversed("the transfer was already reversed")  # pragma: no cover
            if orig.kind == "refund" and orig.original_transfer_id is not None:
                # The refunded amount becomes refundable again.
                await tx.conn.execute(
                    sa.update(transfer_t)
                    .where(_T.id == orig.original_transfer_id)
                    .values(refunded_amount=_T.refunded_amount - orig.amount)
                )
            legs = [
                (await self._account(account, tx.conn), amount)
                for account, amount in reversal_postings(
                    (p.account_id, p.amount) for p in orig.postings
                )
            ]
            return await self._post(
                tx,
                kind="reversal",
                legs=legs,
                amount=orig.amount,
                idem=idem,
                partner_id=orig.partner_id,
                original=oid,
                meta=meta,
                tid=tid,
            )

        return await self._once(idem, body)

    async def disburse(
        self,
        batch_id: str,
        items: Sequence[tuple[AccountRef, int]],
        *,
        fund: AccountRef | None = None,
        meta: dict[str, Any] | None = None,
    ) -> list[Transfer]:
        """惠民资金发放: one transfer per resident, idempotent per (batch, wallet).

        Re-running a batch (whole or partly done) credits nobody twice; a wallet listed
        again in the same batch with another amount is an ``IdempotencyConflict``.
        Returns the transfers in the order of ``items`` (``replayed`` for old ones).
        """
        _key(batch_id, "batch id")
        src = await (
            self._account(fund) if fund is not None else self.system_account("benefits_fund")
        )
        if src.kind == "wallet":
            raise InvalidRequest("benefits come from a fund account")
        plan: list[tuple[Account, int, _Idem]] = []
        seen: set[int] = set()
        for ref, amount in items:
            validate_amount(amount, self.max_amount)
            w = await self._account(ref)
            if w.kind != "wallet":
                raise InvalidRequest("benefits are paid into wallets")
            if w.id in seen:
                raise InvalidRequest(f"wallet {w.id} listed twice in batch {batch_id}")
            seen.add(w.id)
            h = request_hash(
                {
                    "op": "disbursement",
                    "batch": batch_id,
                    "wallet": w.id,
                    "fund": src.id,
                    "amount": amount,
                    "meta": meta or {},
                }
            )
            plan.append((w, amount, _Idem("disbursement", f"{batch_id}:{w.id}", h)))
        out: dict[int, Transfer] = {}
        for i in range(0, len(plan), self.disbursement_chunk):
            chunk = sorted(plan[i : i + self.disbursement_chunk], key=lambda p: p[0].id)
            out.update(await self._disburse_chunk(batch_id, src, chunk, meta))
        return [out[w.id] for w, _, _ in plan]

    async def _disburse_chunk(
        self,
        batch_id: str,
        src: Account,
        chunk: list[tuple[Account, int, _Idem]],
        meta: dict[str, Any] | None,
    ) -> dict[int, Transfer]:
        for attempt in range(4):
            try:
                async with self._write() as tx:
                    rows = (
                        await tx.conn.execute(
                            sa.select(transfer_t).where(
                                _T.idem_scope == "disbursement",
                                _T.idem_key.in_([idem.key for _, _, idem in chunk]),
                            )
                        )
                    ).all()
                    existing = {r.idem_key: r for r in rows}
                    result: dict[int, Transfer] = {}
                    for w, amount, idem in chunk:
                        old = existing.get(idem.key)
                        if old is not None:
                            if old.request_hash != idem.hash:
                                raise IdempotencyConflict(
                                    f"batch {batch_id} already paid wallet {w.id} differently"
                                )
                            postings = (await tx.conn.execute(_ENTRIES_OF, {"tid": old.id})).all()
                            result[w.id] = self._transfer_from_row(old, postings, replayed=True)
                            continue
                        result[w.id] = await self._post(
                            tx,
                            kind="disbursement",
                            legs=[(src, -amount), (w, amount)],
                            amount=amount,
                            idem=idem,
                            meta={"batch_id": batch_id, **(meta or {})},
                        )
                    return result
            except Exception as exc:
                # A concurrent run of the same batch won a key: look again (or deadlock).
                if not (_unique_violation(exc) or _retryable(exc)) or attempt >= 3:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ reading

    async def get_transfer(self, transfer_id: uuid.UUID | str) -> Transfer:
        async with self.engine.connect() as conn:
            return await self._load(conn, _uid(transfer_id))

    async def ledger_position(self) -> int:
        """A stable ledger position P: every transfer with seq <= P has committed and
        every transfer committing from now on has seq > P (see module doc)."""
        async with self._write() as tx:
            if not self.is_sqlite:
                await tx.conn.execute(_PG_BARRIER, {"k": LEDGER_BARRIER_KEY})
            pos = (await tx.conn.execute(sa.select(sa.func.max(_T.seq)))).scalar()
        return int(pos or 0)

    async def statement(
        self, account: AccountRef, limit: int = 50, cursor: str | None = None
    ) -> StatementPage:
        """The account's lines, newest first; pass ``next_cursor`` back for older ones."""
        aid = _aid(account)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 500:
            raise InvalidRequest("limit is 1..500")
        stmt = (
            sa.select(
                _E.seq,
                _E.transfer_id,
                _T.kind,
                _E.amount,
                _E.balance_after,
                _T.created_at,
                _T.partner_id,
                _T.original_transfer_id,
            )
            .join(transfer_t, _T.id == _E.transfer_id)
            .where(_E.account_id == aid)
            .order_by(_E.seq.desc())
            .limit(limit + 1)
        )
        if cursor is not None:
            try:
                before = int(cursor)
                if not 0 < before < 2**63:  # a seq the BIGINT column can hold
                    raise ValueError(cursor)
            except ValueError as exc:
                raise InvalidRequest("bad cursor") from exc
            stmt = stmt.where(_E.seq < before)
        async with self.engine.connect() as conn:
            await self._account(aid, conn)
            rows = (await conn.execute(stmt)).all()
        lines = tuple(
            StatementLine(
                seq=r.seq,
                transfer_id=r.transfer_id,
                kind=r.kind,
                amount=r.amount,
                balance_after=r.balance_after,
                at=r.created_at,
                partner_id=r.partner_id,
                original_transfer_id=r.original_transfer_id,
            )
            for r in rows[:limit]
        )
        next_cursor = str(lines[-1].seq) if len(rows) > limit else None
        return StatementPage(lines=lines, next_cursor=next_cursor)

    async def reconciliation(
        self, partner_id: str, day: date, tz: str | tzinfo = SHANGHAI
    ) -> tuple[bytes, str]:
        """The partner's signed daily file: ``(csv_bytes, detached signature)``.

        Rows: ``record,partner_id,day,seq,transfer_id,kind,time,original_transfer_id,
        count,amount_fen,merchant_net_fen``. ``D`` rows are the partner's payments,
        refunds and reversals created in the local day ``[00:00, 24:00)`` of ``tz``,
        ordered by seq; ``merchant_net_fen`` is what the transfer did to the
        partner's merchant accounts, summed from the entries. ``T`` rows total them per
        kind and overall (``all``: count and net). The totals are recomputed from the
        entries in SQL and must agree, or ``LedgerInconsistent`` is raised. Only
        transfers up to the stable ``ledger_position()`` are listed, so run it after
        the day is over for the complete day.
        """
        _key(partner_id, "partner id")
        zone = ZoneInfo(tz) if isinstance(tz, str) else tz
        start, end = day_bounds(day, zone)
        position = await self.ledger_position()
        merchant_leg = sa.case((_A.kind == "merchant", _E.amount), else_=0)
        where = (
            _T.partner_id == partner_id,
            _T.created_at >= start,
            _T.created_at < end,
            _T.seq <= position,
            _T.kind.in_(RECONCILED_KINDS),
        )
        detail = (
            sa.select(
                _T.seq,
                _T.id,
                _T.kind,
                _T.created_at,
                _T.original_transfer_id,
                _T.amount,
                sa.func.sum(merchant_leg).label("net"),
            )
            .join(entry_t, _E.transfer_id == _T.id)
            .join(account_t, _A.id == _E.account_id)
            .where(*where)
            .group_by(_T.seq, _T.id, _T.kind, _T.created_at, _T.original_transfer_id, _T.amount)
            .order_by(_T.seq)
        )
        check = (
            sa.select(
                _T.kind,
                sa.func.count(sa.distinct(_T.id)),
                sa.func.coalesce(sa.func.sum(merchant_leg), 0),
            )
            .join(entry_t, _E.transfer_id == _T.id)
            .join(account_t, _A.id == _E.account_id)
            .where(*where)
            .group_by(_T.kind)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(detail)).all()
            ledger_totals = {k: (int(n), int(s)) for k, n, s in (await conn.execute(check)).all()}
        day_text = day.isoformat()
        buf = io.StringIO()
        out = csv.writer(buf, lineterminator="\r\n")
        out.writerow(
            [
                "record",
                "partner_id",
                "day",
                "seq",
                "transfer_id",
                "kind",
                "time",
                "original_transfer_id",
                "count",
                "amount_fen",
                "merchant_net_fen",
            ]
        )
        totals: dict[str, list[int]] = {k: [0, 0, 0] for k in RECONCILED_KINDS}
        for r in rows:
            net = int(r.net)
            if abs(net) != r.amount:
                raise LedgerInconsistent(f"transfer {r.id}: merchant legs {net} != {r.amount}")
            t = totals[r.kind]
            t[0] += 1
            t[1] += r.amount
            t[2] += net
            out.writerow(
                [
                    "D",
                    partner_id,
                    day_text,
                    r.seq,
                    str(r.id),
                    r.kind,
                    r.created_at.astimezone(zone).isoformat(timespec="microseconds"),
                    str(r.original_transfer_id) if r.original_transfer_id else "",
                    1,
                    r.amount,
                    net,
                ]
            )
        for kind in RECONCILED_KINDS:
            count, amount, net = totals[kind]
            if (count, net) != ledger_totals.get(kind, (0, 0)):
                raise LedgerInconsistent(f"{kind} totals disagree with the entries")
            out.writerow(["T", partner_id, day_text, "", "", kind, "", "", count, amount, net])
        all_count = sum(t[0] for t in totals.values())
        all_net = sum(t[2] for t in totals.values())
        out.writerow(["T", partner_id, day_text, "", "", "all", "", "", all_count, "", all_net])
        data = buf.getvalue().encode("utf-8")
        return data, sign_detached(data, self.signer)
