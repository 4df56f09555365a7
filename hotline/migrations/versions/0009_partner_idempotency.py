"""Partners' Idempotency-Key answers, shared by every instance (citizen_card.journal).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23 01:50:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "partner_idempotency",
        sa.Column("partner_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("content_type", sa.String(length=64), nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("partner_id", "key"),
    )
    op.create_index(
        op.f("ix_partner_idempotency_expires_at"),
        "partner_idempotency",
        ["expires_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_partner_idempotency_expires_at"), table_name="partner_idempotency")
    op.drop_table("partner_idempotency")
