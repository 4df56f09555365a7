"""channels tables: contacts and residents, conversations, messages, the outbox.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 00:30:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import ticketing.models

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "channel_contact",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("external_id", sa.String(length=128), nullable=False),
        sa.Column("address_enc", sa.String(length=255), nullable=True),
        sa.Column("display_name", sa.String(length=100), nullable=True),
        sa.Column("resident_id", sa.Integer(), nullable=True),
        sa.Column("subscribed", sa.Boolean(), nullable=False),
        sa.Column("created_at", ticketing.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("channel", "external_id", name="uq_channel_contact_ext"),
    )
    op.create_index(
        op.f("ix_channel_contact_resident_id"), "channel_contact", ["resident_id"], unique=False
    )
    op.create_table(
        "channel_message",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("conversation_id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("external_id", sa.String(length=128), nullable=True),
        sa.Column("direction", sa.String(length=3), nullable=False),
        sa.Column("author", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("media", sa.JSON(), nullable=False),
        sa.Column("location", sa.JSON(), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("reply_to", sa.Integer(), nullable=True),
        sa.Column("delivery", sa.String(length=16), nullable=True),
        sa.Column("sent_at", ticketing.models.UTCDateTime(), nullable=False),
        sa.Column("stored_at", ticketing.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("channel", "external_id", name="uq_channel_message_ext"),
    )
    op.create_index(
        op.f("ix_channel_message_conversation_id"),
        "channel_message",
        ["conversation_id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_channel_message_reply_to"), "channel_message", ["reply_to"], unique=False
    )
    op.create_table(
        "channel_outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("recipient", sa.String(length=128), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("dedupe_key", sa.String(length=128), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", ticketing.models.UTCDateTime(), nullable=False),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("created_at", ticketing.models.UTCDateTime(), nullable=False),
        sa.Column("sent_at", ticketing.models.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dedupe_key", name="uq_channel_outbox_dedupe"),
    )
    op.create_index(
        "ix_channel_outbox_due", "channel_outbox", ["state", "next_attempt_at"], unique=False
    )
    op.create_index(
        op.f("ix_channel_outbox_message_id"), "channel_outbox", ["message_id"], unique=False
    )
    op.create_table(
        "channel_resident",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("display_name", sa.String(length=100), nullable=True),
        sa.Column("citizen_ref", sa.String(length=64), nullable=True),
        sa.Column("created_at", ticketing.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_channel_resident_citizen_ref"), "channel_resident", ["citizen_ref"], unique=False
    )
    op.create_table(
        "conversation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("open_key", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("waiting", sa.Boolean(), nullable=False),
        sa.Column("waiting_since", ticketing.models.UTCDateTime(), nullable=True),
        sa.Column("emergency", sa.Boolean(), nullable=False),
        sa.Column("emergency_lines", sa.JSON(), nullable=False),
        sa.Column("ticket_number", sa.String(length=20), nullable=True),
        sa.Column("bot_state", sa.JSON(), nullable=True),
        sa.Column("lang", sa.String(length=8), nullable=False),
        sa.Column("assigned_to", sa.String(length=64), nullable=True),
        sa.Column("created_at", ticketing.models.UTCDateTime(), nullable=False),
        sa.Column("updated_at", ticketing.models.UTCDateTime(), nullable=False),
        sa.Column("last_message_at", ticketing.models.UTCDateTime(), nullable=False),
        sa.Column("closed_at", ticketing.models.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("open_key", name="uq_conversation_open"),
    )
    op.create_index(op.f("ix_conversation_channel"), "conversation", ["channel"], unique=False)
    op.create_index(
        op.f("ix_conversation_contact_id"), "conversation", ["contact_id"], unique=False
    )
    op.create_index(
        "ix_conversation_status_last", "conversation", ["status", "last_message_at"], unique=False
    )
    op.create_index(
        op.f("ix_conversation_ticket_number"), "conversation", ["ticket_number"], unique=False
    )
    op.create_index(op.f("ix_conversation_waiting"), "conversation", ["waiting"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_conversation_waiting"), table_name="conversation")
    op.drop_index(op.f("ix_conversation_ticket_number"), table_name="conversation")
    op.drop_index("ix_conversation_status_last", table_name="conversation")
    op.drop_index(op.f("ix_conversation_contact_id"), table_name="conversation")
    op.drop_index(op.f("ix_conversation_channel"), table_name="conversation")
    op.drop_table("conversation")
    op.drop_index(op.f("ix_channel_resident_citizen_ref"), table_name="channel_resident")
    op.drop_table("channel_resident")
    op.drop_index(op.f("ix_channel_outbox_message_id"), table_name="channel_outbox")
    op.drop_index("ix_channel_outbox_due", table_name="channel_outbox")
    op.drop_table("channel_outbox")
    op.drop_index(op.f("ix_channel_message_reply_to"), table_name="channel_message")
    op.drop_index(op.f("ix_channel_message_conversation_id"), table_name="channel_message")
    op.drop_table("channel_message")
    op.drop_index(op.f("ix_channel_contact_resident_id"), table_name="channel_contact")
    op.drop_table("channel_contact")
