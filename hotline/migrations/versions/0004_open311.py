"""Open311 GeoReport v2: API keys and the Open311 side of tickets.

Tables of channels.open311.models: ``open311_api_key`` (SHA-256 of each key, never
the key) and ``open311_request`` (per ticket filed through Open311: the client's own
description, attribute answers, address_id, media_url and the encrypted email).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 00:30:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import ticketing.models

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "open311_api_key",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=48), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", ticketing.models.UTCDateTime(), nullable=False),
        sa.Column("revoked_at", ticketing.models.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_open311_api_key_key_hash"), "open311_api_key", ["key_hash"], unique=True
    )
    op.create_index(op.f("ix_open311_api_key_name"), "open311_api_key", ["name"], unique=True)
    op.create_table(
        "open311_request",
        sa.Column("ticket_number", sa.String(length=20), nullable=False),
        sa.Column("api_key_name", sa.String(length=48), nullable=False),
        sa.Column("service_code", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("address_id", sa.String(length=100), nullable=True),
        sa.Column("media_url", sa.String(length=2048), nullable=True),
        sa.Column("account_id", sa.String(length=100), nullable=True),
        sa.Column("device_id", sa.String(length=100), nullable=True),
        sa.Column("email_enc", sa.String(length=512), nullable=True),
        sa.Column("created_at", ticketing.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("ticket_number"),
    )
    op.create_index(
        op.f("ix_open311_request_api_key_name"),
        "open311_request",
        ["api_key_name"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_open311_request_api_key_name"), table_name="open311_request")
    op.drop_table("open311_request")
    op.drop_index(op.f("ix_open311_api_key_name"), table_name="open311_api_key")
    op.drop_index(op.f("ix_open311_api_key_key_hash"), table_name="open311_api_key")
    op.drop_table("open311_api_key")
