"""city app tables: resident accounts, sign-in codes, tokens, notifications, requests,
ratings.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 01:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import ticketing.models

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = ticketing.models.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "app_account",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("phone_enc", sa.String(length=255), nullable=False),
        sa.Column("phone_bidx", sa.String(length=64), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=True),
        sa.Column("feed_seq", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC(), nullable=False),
        sa.Column("last_login_at", UTC(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_app_account_phone_bidx"), "app_account", ["phone_bidx"], unique=True)
    op.create_table(
        "app_signin_code",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("phone_bidx", sa.String(length=64), nullable=False),
        sa.Column("ip_hash", sa.String(length=64), nullable=False),
        sa.Column("salt", sa.String(length=32), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC(), nullable=False),
        sa.Column("expires_at", UTC(), nullable=False),
        sa.Column("used_at", UTC(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_app_signin_code_phone_created", "app_signin_code", ["phone_bidx", "created_at"]
    )
    op.create_index("ix_app_signin_code_ip_created", "app_signin_code", ["ip_hash", "created_at"])
    op.create_table(
        "app_token",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC(), nullable=False),
        sa.Column("expires_at", UTC(), nullable=False),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index(op.f("ix_app_token_account_id"), "app_token", ["account_id"])
    op.create_table(
        "app_notification",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("ticket_number", sa.String(length=20), nullable=True),
        sa.Column("status", sa.String(length=24), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("outbox_id", sa.Integer(), nullable=True),
        sa.Column("created_at", UTC(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "seq"),
        sa.UniqueConstraint("outbox_id", name="uq_app_notification_outbox"),
    )
    op.create_table(
        "app_request",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("ticket_number", sa.String(length=20), nullable=True),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("response", sa.Text(), nullable=True),
        sa.Column("created_at", UTC(), nullable=False),
        sa.Column("updated_at", UTC(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "key"),
    )
    op.create_table(
        "app_rating",
        sa.Column("ticket_number", sa.String(length=20), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("rating", sa.Integer(), nullable=False),
        sa.Column("satisfaction", sa.String(length=24), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("created_at", UTC(), nullable=False),
        sa.PrimaryKeyConstraint("ticket_number"),
    )
    op.create_index(op.f("ix_app_rating_account_id"), "app_rating", ["account_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_app_rating_account_id"), table_name="app_rating")
    op.drop_table("app_rating")
    op.drop_table("app_request")
    op.drop_table("app_notification")
    op.drop_index(op.f("ix_app_token_account_id"), table_name="app_token")
    op.drop_table("app_token")
    op.drop_index("ix_app_signin_code_ip_created", table_name="app_signin_code")
    op.drop_index("ix_app_signin_code_phone_created", table_name="app_signin_code")
    op.drop_table("app_signin_code")
    op.drop_index(op.f("ix_app_account_phone_bidx"), table_name="app_account")
    op.drop_table("app_account")
