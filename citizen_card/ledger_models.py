"""Tables of the wallet ledger (SQLModel on SQLAlchemy 2, shared ``SQLModel.metadata``).

Money is integer fen (分) in ``BIGINT`` columns; there is no float anywhere.

* ``ledger_account``: one row per account. ``balance`` is the *posted* balance.
  For ordinary accounts (wallets) it is the whole balance and is changed by a
  conditional ``UPDATE`` under the row lock. For *buffered* accounts (hot accounts:
  merchant settlement, top-up clearing, benefits fund) credits, and debits when the
  account may go negative, are written as ``ledger_pending`` rows instead, so that a
  thousand payments a second to one merchant do not queue on its row; the true
  balance is ``balance + sum(pending)``, and ``Ledger.settle`` folds pending rows into
  ``balance``. A CHECK keeps ``balance >= 0`` unless ``allow_negative``.
* ``ledger_transfer``: one row per transfer; ``seq`` is the ledger position.
  Its amounts, entries and receipt never change. Only two bookkeeping columns move,
  each monotone and each behind a conditional ``UPDATE``: ``refunded_amount`` (a
  payment's refunds so far, capped by ``amount``) and ``reversed_by`` (set once).
* ``ledger_entry``: the immutable legs of a transfer (signed fen, sum zero per
  transfer), with ``seq`` copied for per-account statements and, for accounts
  posted directly, the balance right after the leg.
* ``ledger_pending``: buffered legs not yet folded into their account's ``balance``.
* Triggers (``LEDGER_GUARDS``) refuse UPDATE/DELETE of entries, DELETE of transfers
  and UPDATE of a transfer's frozen columns.
* ``ledger_sequence``: the SQLite sequence counter (one row). On PostgreSQL ``seq``
  comes from the SEQUENCE ``ledger_transfer_seq`` instead (see ``citizen_card.ledger``).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from citizen_card.dbtypes import UTCDateTime

CURRENCY = "CNY"
LEDGER_SEQUENCE_NAME = "ledger_transfer_seq"

# SQLite only auto-numbers an INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(index: bool = False) -> Any:
    return Field(
        default_factory=utcnow,
        sa_column=sa.Column(UTCDateTime(), nullable=False, index=index),
    )


class LedgerAccount(SQLModel, table=True):
    __tablename__ = "ledger_account"
    __table_args__ = (
        sa.UniqueConstraint("kind", "owner", "currency", name="uq_ledger_account_owner"),
        sa.CheckConstraint("allow_negative OR balance >= 0", name="ck_ledger_account_nonneg"),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    # wallet | merchant | topup_clearing | benefits_fund | refunds | ...
    kind: str = Field(max_length=32)
    # A pseudonymous handle ("w:3f9a…", "m:metro-line-2"), never a name or an ID number.
    owner: str = Field(max_length=128, index=True)
    currency: str = Field(default=CURRENCY, max_length=3)
    balance: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False))
    allow_negative: bool = Field(default=False)
    buffered: bool = Field(default=False)
    version: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False))
    created_at: datetime = _ts()


class LedgerTransfer(SQLModel, table=True):
    __tablename__ = "ledger_transfer"
    __table_args__ = (
        sa.UniqueConstraint("idem_scope", "idem_key", name="uq_ledger_transfer_idem"),
        sa.CheckConstraint("amount > 0", name="ck_ledger_transfer_amount"),
        sa.CheckConstraint(
            "refunded_amount >= 0 AND refunded_amount <= amount",
            name="ck_ledger_transfer_refunded",
        ),
        sa.Index("ix_ledger_transfer_partner_time", "partner_id", "created_at"),
    )

    id: uuid.UUID = Field(sa_column=sa.Column(sa.Uuid(), primary_key=True))
    seq: int = Field(
        sa_column=sa.Column(
            sa.BigInteger,
            sa.Sequence(LEDGER_SEQUENCE_NAME),  # PostgreSQL only; ignored on SQLite
            nullable=False,
            unique=True,
        )
    )
    kind: str = Field(max_length=16)  # topup | payment | refund | disbursement | reversal
    idem_scope: str = Field(max_length=96)
    idem_key: str = Field(max_length=160)
    request_hash: str = Field(max_length=64)
    original_transfer_id: uuid.UUID | None = Field(
        default=None,
        sa_column=sa.Column(sa.Uuid(), sa.ForeignKey("ledger_transfer.id"), index=True),
    )
    partner_id: str | None = Field(default=None, max_length=64)
    amount: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    currency: str = Field(default=CURRENCY, max_length=3)
    refunded_amount: int = Field(
        default=0, sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0")
    )
    # The reversal that undid this transfer (no FK: set in the reversal's transaction).
    reversed_by: uuid.UUID | None = Field(default=None, sa_column=sa.Column(sa.Uuid()))
    created_at: datetime = _ts(index=True)
    meta: dict[str, Any] = Field(
        default_factory=dict, sa_column=sa.Column("metadata", sa.JSON, nullable=False)
    )
    receipt: str = Field(sa_column=sa.Column(sa.Text, nullable=False))


class LedgerEntry(SQLModel, table=True):
    __tablename__ = "ledger_entry"
    __table_args__ = (
        sa.CheckConstraint("amount <> 0", name="ck_ledger_entry_amount"),
        sa.Index("ix_ledger_entry_account_seq", "account_id", "seq"),
    )

    transfer_id: uuid.UUID = Field(
        sa_column=sa.Column(sa.Uuid(), sa.ForeignKey("ledger_transfer.id"), primary_key=True)
    )
    leg: int = Field(sa_column=sa.Column(sa.SmallInteger, primary_key=True, autoincrement=False))
    account_id: int = Field(
        sa_column=sa.Column(BigId, sa.ForeignKey("ledger_account.id"), nullable=False)
    )
    seq: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    amount: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))  # signed fen
    # Balance of the account right after this leg; only for directly posted accounts.
    balance_after: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger))


class LedgerPending(SQLModel, table=True):
    __tablename__ = "ledger_pending"

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    account_id: int = Field(
        sa_column=sa.Column(BigId, sa.ForeignKey("ledger_account.id"), nullable=False, index=True)
    )
    transfer_id: uuid.UUID = Field(
        sa_column=sa.Column(sa.Uuid(), sa.ForeignKey("ledger_transfer.id"), nullable=False)
    )
    amount: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))


class LedgerSequence(SQLModel, table=True):
    """SQLite's sequence counter; bumped as the first statement of every write."""

    __tablename__ = "ledger_sequence"

    name: str = Field(primary_key=True, max_length=32)
    value: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False))


account_t: sa.Table = LedgerAccount.__table__  # type: ignore[attr-defined]
transfer_t: sa.Table = LedgerTransfer.__table__  # type: ignore[attr-defined]
entry_t: sa.Table = LedgerEntry.__table__  # type: ignore[attr-defined]
pending_t: sa.Table = LedgerPending.__table__  # type: ignore[attr-defined]
sequence_t: sa.Table = LedgerSequence.__table__  # type: ignore[attr-defined]

LEDGER_TABLES: tuple[sa.Table, ...] = (account_t, transfer_t, entry_t, pending_t, sequence_t)

# Immutability, enforced by the database too: entries are never updated or deleted,
# transfers never deleted, and of a transfer only the two bookkeeping columns
# (refunded_amount, reversed_by) ever change. Attached to table creation below; a
# migration creating these tables must run the same statements.
_FROZEN = [c.name for c in transfer_t.c if c.key not in ("refunded_amount", "reversed_by")]
LEDGER_GUARDS: dict[str, list[str]] = {
    "postgresql": [
        "CREATE OR REPLACE FUNCTION ledger_immutable() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'ledger rows of %% are immutable', TG_TABLE_NAME; END $$",
        "CREATE TRIGGER ledger_entry_immutable BEFORE UPDATE OR DELETE ON ledger_entry "
        "FOR EACH ROW EXECUTE FUNCTION ledger_immutable()",
        "CREATE TRIGGER ledger_transfer_no_delete BEFORE DELETE ON ledger_transfer "
        "FOR EACH ROW EXECUTE FUNCTION ledger_immutable()",
        f"CREATE TRIGGER ledger_transfer_frozen BEFORE UPDATE OF {', '.join(_FROZEN)} "
        "ON ledger_transfer FOR EACH ROW EXECUTE FUNCTION ledger_immutable()",
    ],
    "sqlite": [
        "CREATE TRIGGER ledger_entry_no_update BEFORE UPDATE ON ledger_entry "
        "BEGIN SELECT RAISE(ABORT, 'ledger entries are immutable'); END",
        "CREATE TRIGGER ledger_entry_no_delete BEFORE DELETE ON ledger_entry "
        "BEGIN SELECT RAISE(ABORT, 'ledger entries are immutable'); END",
        "CREATE TRIGGER ledger_transfer_no_delete BEFORE DELETE ON ledger_transfer "
        "BEGIN SELECT RAISE(ABORT, 'ledger transfers are immutable'); END",
        f"CREATE TRIGGER ledger_transfer_frozen BEFORE UPDATE OF {', '.join(_FROZEN)} "
        "ON ledger_transfer BEGIN SELECT RAISE(ABORT, 'ledger transfers are immutable'); END",
    ],
}


def _attach_guards() -> None:
    for dialect, statements in LEDGER_GUARDS.items():
        for sql in statements:
            table = entry_t if "ON ledger_entry" in sql else transfer_t
            sa.event.listen(table, "after_create", sa.DDL(sql).execute_if(dialect=dialect))


_attach_guards()


def create_ledger_tables(sync_conn: sa.Connection) -> None:
    """``await conn.run_sync(create_ledger_tables)``: only the ledger's tables (tests)."""
    SQLModel.metadata.create_all(sync_conn, tables=list(LEDGER_TABLES))
