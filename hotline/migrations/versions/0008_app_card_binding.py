"""App sessions proven to a citizen card holder (hotline.card_binding).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 01:40:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import ticketing.models

# revision identifiers, used by Alembic.
revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "app_card_binding",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("resident_id", sa.Integer(), nullable=False),
        sa.Column("bound_at", ticketing.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index(
        op.f("ix_app_card_binding_resident_id"), "app_card_binding", ["resident_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_app_card_binding_resident_id"), table_name="app_card_binding")
    op.drop_table("app_card_binding")
