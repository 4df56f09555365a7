"""Citizen card: residents and cards, the partner registry, the wallet ledger.

Tables of citizen_card.models, citizen_card.partner_models and
citizen_card.ledger_models, plus what autogenerate cannot see: the PostgreSQL
SEQUENCE ``ledger_transfer_seq`` that numbers ledger transfers there (SQLite uses
the ``ledger_sequence`` row instead) and the triggers that make ledger rows
immutable (``LEDGER_GUARDS`` in citizen_card.ledger_models, per dialect).

The DDL is frozen here on purpose: a later change to the models or to
``LEDGER_GUARDS`` needs a new revision, and tests/hotline/test_migrations.py
compares a database at head with one made by ``create_all``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 23:06:00.121178

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import citizen_card.dbtypes

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite only auto-numbers an INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

LEDGER_SEQUENCE = "ledger_transfer_seq"

# Every ledger_transfer column except the two bookkeeping ones that may change
# (refunded_amount, reversed_by).
_FROZEN = (
    "id, seq, kind, idem_scope, idem_key, request_hash, original_transfer_id, partner_id, "
    "amount, currency, created_at, metadata, receipt"
)

# Run as sa.DDL like the models' after_create listeners, so '%%' is a literal '%'.
LEDGER_GUARDS: dict[str, list[str]] = {
    "postgresql": [
        "CREATE OR REPLACE FUNCTION ledger_immutable() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'ledger rows of %% are immutable', TG_TABLE_NAME; END $$",
        "CREATE TRIGGER ledger_entry_immutable BEFORE UPDATE OR DELETE ON ledger_entry "
        "FOR EACH ROW EXECUTE FUNCTION ledger_immutable()",
        "CREATE TRIGGER ledger_transfer_no_delete BEFORE DELETE ON ledger_transfer "
        "FOR EACH ROW EXECUTE FUNCTION ledger_immutable()",
        f"CREATE TRIGGER ledger_transfer_frozen BEFORE UPDATE OF {_FROZEN} "
        "ON ledger_transfer FOR EACH ROW EXECUTE FUNCTION ledger_immutable()",
    ],
    "sqlite": [
        "CREATE TRIGGER ledger_entry_no_update BEFORE UPDATE ON ledger_entry "
        "BEGIN SELECT RAISE(ABORT, 'ledger entries are immutable'); END",
        "CREATE TRIGGER ledger_entry_no_delete BEFORE DELETE ON ledger_entry "
        "BEGIN SELECT RAISE(ABORT, 'ledger entries are immutable'); END",
        "CREATE TRIGGER ledger_transfer_no_delete BEFORE DELETE ON ledger_transfer "
        "BEGIN SELECT RAISE(ABORT, 'ledger transfers are immutable'); END",
        f"CREATE TRIGGER ledger_transfer_frozen BEFORE UPDATE OF {_FROZEN} "
        "ON ledger_transfer BEGIN SELECT RAISE(ABORT, 'ledger transfers are immutable'); END",
    ],
}
# (trigger, table) pairs, for the downgrade.
_TRIGGERS: dict[str, list[tuple[str, str]]] = {
    "postgresql": [
        ("ledger_transfer_frozen", "ledger_transfer"),
        ("ledger_transfer_no_delete", "ledger_transfer"),
        ("ledger_entry_immutable", "ledger_entry"),
    ],
    "sqlite": [
        ("ledger_transfer_frozen", "ledger_transfer"),
        ("ledger_transfer_no_delete", "ledger_transfer"),
        ("ledger_entry_no_delete", "ledger_entry"),
        ("ledger_entry_no_update", "ledger_entry"),
    ],
}


def _dialect() -> str:
    return op.get_context().dialect.name


def upgrade() -> None:
    # ------------------------------------------------------------ residents and cards
    op.create_table(
        "resident",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("handle", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("id_number_enc", sa.String(length=255), nullable=False),
        sa.Column("id_number_bidx", sa.String(length=64), nullable=False),
        sa.Column("phone_enc", sa.String(length=255), nullable=True),
        sa.Column("phone_bidx", sa.String(length=64), nullable=True),
        sa.Column("birth_date", sa.Date(), nullable=False),
        sa.Column("sex", sa.String(length=1), nullable=False),
        sa.Column("address", sa.String(length=300), nullable=True),
        sa.Column("verified", sa.Boolean(), nullable=False),
        sa.Column("verified_source", sa.String(length=64), nullable=True),
        sa.Column("verified_at", citizen_card.dbtypes.UTCDateTime(), nullable=True),
        sa.Column("wallet_account_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", citizen_card.dbtypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_resident_handle"), "resident", ["handle"], unique=True)
    op.create_index(op.f("ix_resident_id_number_bidx"), "resident", ["id_number_bidx"], unique=True)
    op.create_index(op.f("ix_resident_phone_bidx"), "resident", ["phone_bidx"], unique=False)

    op.create_table(
        "card",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("card_no", sa.String(length=20), nullable=False),
        sa.Column("resident_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_index", sa.Integer(), nullable=False),
        sa.Column("concession", sa.String(length=16), nullable=False),
        sa.Column("social_security_no", sa.String(length=32), nullable=True),
        sa.Column("health_card_no", sa.String(length=32), nullable=True),
        sa.Column("pin_hash", sa.String(length=255), nullable=True),
        sa.Column("pin_failures", sa.Integer(), nullable=False),
        sa.Column("replaced_by", sa.String(length=20), nullable=True),
        sa.Column("issued_at", citizen_card.dbtypes.UTCDateTime(), nullable=False),
        sa.Column("updated_at", citizen_card.dbtypes.UTCDateTime(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        # Unnamed in the model; named here as PostgreSQL would name it.
        sa.UniqueConstraint("status_index", name="card_status_index_key"),
    )
    op.create_index(op.f("ix_card_card_no"), "card", ["card_no"], unique=True)
    op.create_index(op.f("ix_card_health_card_no"), "card", ["health_card_no"], unique=False)
    op.create_index(op.f("ix_card_resident_id"), "card", ["resident_id"], unique=False)
    op.create_index(op.f("ix_card_status"), "card", ["status"], unique=False)

    op.create_table(
        "hospital_card",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("hospital_code", sa.String(length=32), nullable=False),
        sa.Column("hospital_card_no", sa.String(length=64), nullable=False),
        sa.Column("resident_id", sa.Integer(), nullable=False),
        sa.Column("created_at", citizen_card.dbtypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("hospital_code", "hospital_card_no", name="uq_hospital_card"),
    )
    op.create_index(
        op.f("ix_hospital_card_resident_id"), "hospital_card", ["resident_id"], unique=False
    )

    op.create_table(
        "medical_grant",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("resident_id", sa.Integer(), nullable=False),
        sa.Column("partner_id", sa.String(length=64), nullable=False),
        sa.Column("handle", sa.String(length=40), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("not_before", citizen_card.dbtypes.UTCDateTime(), nullable=False),
        sa.Column("not_after", citizen_card.dbtypes.UTCDateTime(), nullable=False),
        sa.Column("revoked_at", citizen_card.dbtypes.UTCDateTime(), nullable=True),
        sa.Column("granted_by", sa.String(length=64), nullable=False),
        sa.Column("revoked_by", sa.String(length=64), nullable=True),
        sa.Column("created_at", citizen_card.dbtypes.UTCDateTime(), nullable=False),
        sa.CheckConstraint("not_after > not_before", name="ck_medical_grant_period"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_medical_grant_resident_id"), "medical_grant", ["resident_id"], unique=False
    )
    op.create_index(
        "ix_medical_grant_partner_handle", "medical_grant", ["partner_id", "handle"], unique=False
    )

    op.create_table(
        "card_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("card_no", sa.String(length=20), nullable=False),
        sa.Column("at", citizen_card.dbtypes.UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_card_event_card_no"), "card_event", ["card_no"], unique=False)

    op.create_table(
        "freeze_receipt",
        sa.Column("number", sa.String(length=20), nullable=False),
        sa.Column("card_no", sa.String(length=20), nullable=False),
        sa.Column("at", citizen_card.dbtypes.UTCDateTime(), nullable=False),
        sa.Column("ledger_position", sa.BigInteger(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("receipt", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("number"),
    )
    op.create_index(op.f("ix_freeze_receipt_card_no"), "freeze_receipt", ["card_no"], unique=False)

    op.create_table(
        "card_counter",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )

    # ------------------------------------------------------------ partner registry
    op.create_table(
        "partner",
        sa.Column("partner_id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("keys", sa.JSON(), nullable=False),
        sa.Column("hmac_secret_enc", sa.Text(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("rate_per_minute", sa.Integer(), nullable=False),
        sa.Column("created_at", citizen_card.dbtypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("partner_id"),
    )
    op.create_table(
        "partner_nonce",
        sa.Column("partner_id", sa.String(length=64), nullable=False),
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("partner_id", "nonce"),
    )
    op.create_index(
        op.f("ix_partner_nonce_expires_at"), "partner_nonce", ["expires_at"], unique=False
    )

    # ------------------------------------------------------------ wallet ledger
    if _dialect() == "postgresql":
        op.execute(sa.schema.CreateSequence(sa.Sequence(LEDGER_SEQUENCE)))

    op.create_table(
        "ledger_account",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("allow_negative", sa.Boolean(), nullable=False),
        sa.Column("buffered", sa.Boolean(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("created_at", citizen_card.dbtypes.UTCDateTime(), nullable=False),
        sa.CheckConstraint("allow_negative OR balance >= 0", name="ck_ledger_account_nonneg"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kind", "owner", "currency", name="uq_ledger_account_owner"),
    )
    op.create_index(op.f("ix_ledger_account_owner"), "ledger_account", ["owner"], unique=False)

    op.create_table(
        "ledger_transfer",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("idem_scope", sa.String(length=96), nullable=False),
        sa.Column("idem_key", sa.String(length=160), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("original_transfer_id", sa.Uuid(), nullable=True),
        sa.Column("partner_id", sa.String(length=64), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("refunded_amount", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("reversed_by", sa.Uuid(), nullable=True),
        sa.Column("created_at", citizen_card.dbtypes.UTCDateTime(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("receipt", sa.Text(), nullable=False),
        sa.CheckConstraint("amount > 0", name="ck_ledger_transfer_amount"),
        sa.CheckConstraint(
            "refunded_amount >= 0 AND refunded_amount <= amount",
            name="ck_ledger_transfer_refunded",
        ),
        sa.ForeignKeyConstraint(
            ["original_transfer_id"],
            ["ledger_transfer.id"],
            name="ledger_transfer_original_transfer_id_fkey",
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idem_scope", "idem_key", name="uq_ledger_transfer_idem"),
        # Unnamed in the model; named here as PostgreSQL would name it.
        sa.UniqueConstraint("seq", name="ledger_transfer_seq_key"),
    )
    op.create_index(
        op.f("ix_ledger_transfer_created_at"), "ledger_transfer", ["created_at"], unique=False
    )
    op.create_index(
        op.f("ix_ledger_transfer_original_transfer_id"),
        "ledger_transfer",
        ["original_transfer_id"],
        unique=False,
    )
    op.create_index(
        "ix_ledger_transfer_partner_time",
        "ledger_transfer",
        ["partner_id", "created_at"],
        unique=False,
    )

    op.create_table(
        "ledger_entry",
        sa.Column("transfer_id", sa.Uuid(), nullable=False),
        sa.Column("leg", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("account_id", BIG_ID, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=True),
        sa.CheckConstraint("amount <> 0", name="ck_ledger_entry_amount"),
        sa.ForeignKeyConstraint(
            ["account_id"], ["ledger_account.id"], name="ledger_entry_account_id_fkey"
        ),
        sa.ForeignKeyConstraint(
            ["transfer_id"], ["ledger_transfer.id"], name="ledger_entry_transfer_id_fkey"
        ),
        sa.PrimaryKeyConstraint("transfer_id", "leg"),
    )
    op.create_index(
        "ix_ledger_entry_account_seq", "ledger_entry", ["account_id", "seq"], unique=False
    )

    op.create_table(
        "ledger_pending",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("account_id", BIG_ID, nullable=False),
        sa.Column("transfer_id", sa.Uuid(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["ledger_account.id"], name="ledger_pending_account_id_fkey"
        ),
        sa.ForeignKeyConstraint(
            ["transfer_id"], ["ledger_transfer.id"], name="ledger_pending_transfer_id_fkey"
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_ledger_pending_account_id"), "ledger_pending", ["account_id"], unique=False
    )

    op.create_table(
        "ledger_sequence",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )

    for sql in LEDGER_GUARDS.get(_dialect(), []):
        op.execute(sa.DDL(sql))


def downgrade() -> None:
    dialect = _dialect()
    for trigger, table in _TRIGGERS.get(dialect, []):
        if dialect == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {table}")
        else:
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    if dialect == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS ledger_immutable()")

    op.drop_index("ix_medical_grant_partner_handle", table_name="medical_grant")
    op.drop_index(op.f("ix_medical_grant_resident_id"), table_name="medical_grant")
    op.drop_table("medical_grant")
    op.drop_table("ledger_sequence")
    op.drop_index(op.f("ix_ledger_pending_account_id"), table_name="ledger_pending")
    op.drop_table("ledger_pending")
    op.drop_index("ix_ledger_entry_account_seq", table_name="ledger_entry")
    op.drop_table("ledger_entry")
    op.drop_index("ix_ledger_transfer_partner_time", table_name="ledger_transfer")
    op.drop_index(op.f("ix_ledger_transfer_original_transfer_id"), table_name="ledger_transfer")
    op.drop_index(op.f("ix_ledger_transfer_created_at"), table_name="ledger_transfer")
    op.drop_table("ledger_transfer")
    op.drop_index(op.f("ix_ledger_account_owner"), table_name="ledger_account")
    op.drop_table("ledger_account")
    if dialect == "postgresql":
        op.execute(sa.schema.DropSequence(sa.Sequence(LEDGER_SEQUENCE)))

    op.drop_index(op.f("ix_partner_nonce_expires_at"), table_name="partner_nonce")
    op.drop_table("partner_nonce")
    op.drop_table("partner")

    op.drop_table("card_counter")
    op.drop_index(op.f("ix_freeze_receipt_card_no"), table_name="freeze_receipt")
    op.drop_table("freeze_receipt")
    op.drop_index(op.f("ix_card_event_card_no"), table_name="card_event")
    op.drop_table("card_event")
    op.drop_index(op.f("ix_hospital_card_resident_id"), table_name="hospital_card")
    op.drop_table("hospital_card")
    op.drop_index(op.f("ix_card_status"), table_name="card")
    op.drop_index(op.f("ix_card_resident_id"), table_name="card")
    op.drop_index(op.f("ix_card_health_card_no"), table_name="card")
    op.drop_index(op.f("ix_card_card_no"), table_name="card")
    op.drop_table("card")
    op.drop_index(op.f("ix_resident_phone_bidx"), table_name="resident")
    op.drop_index(op.f("ix_resident_id_number_bidx"), table_name="resident")
    op.drop_index(op.f("ix_resident_handle"), table_name="resident")
    op.drop_table("resident")
