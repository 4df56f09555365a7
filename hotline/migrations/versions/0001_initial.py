"""Initial schema: every table of ticketing.models.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-22 22:15:50.444357

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import ticketing.models

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "attachment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ticket_number", sa.String(length=20), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("content_type", sa.String(length=100), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("storage_key", sa.String(length=255), nullable=False),
        sa.Column("uploaded_by", sa.String(length=64), nullable=False),
        sa.Column("uploaded_at", ticketing.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_attachment_ticket_number"), "attachment", ["ticket_number"], unique=False
    )
    op.create_table(
        "category",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("parent_code", sa.String(length=64), nullable=True),
        sa.Column("default_department", sa.String(length=64), nullable=True),
        sa.Column("urgency", sa.String(length=16), nullable=False),
        sa.Column("dispatch_limit", sa.String(length=16), nullable=True),
        sa.Column("feedback_limit", sa.String(length=16), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_category_code"), "category", ["code"], unique=True)
    op.create_index(op.f("ix_category_parent_code"), "category", ["parent_code"], unique=False)
    op.create_table(
        "department",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("parent_code", sa.String(length=64), nullable=True),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("district", sa.String(length=64), nullable=True),
        sa.Column("is_fallback", sa.Boolean(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_department_code"), "department", ["code"], unique=True)
    op.create_index(op.f("ix_department_district"), "department", ["district"], unique=False)
    op.create_index(op.f("ix_department_parent_code"), "department", ["parent_code"], unique=False)
    op.create_table(
        "idempotency_record",
        sa.Column("principal", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", ticketing.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("principal", "key"),
    )
    op.create_table(
        "staff_session",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", ticketing.models.UTCDateTime(), nullable=False),
        sa.Column("expires_at", ticketing.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index(op.f("ix_staff_session_user_id"), "staff_session", ["user_id"], unique=False)
    op.create_table(
        "staff_user",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("department_code", sa.String(length=64), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", ticketing.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_staff_user_username"), "staff_user", ["username"], unique=True)
    op.create_table(
        "ticket",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("number", sa.String(length=20), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("category_code", sa.String(length=64), nullable=True),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("urgency", sa.String(length=16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("lead_department", sa.String(length=64), nullable=True),
        sa.Column("assist_departments", sa.JSON(), nullable=False),
        sa.Column("contact_name", sa.String(length=100), nullable=True),
        sa.Column("contact_phone_enc", sa.String(length=255), nullable=True),
        sa.Column("contact_phone_bidx", sa.String(length=64), nullable=True),
        sa.Column("contact_ids", sa.JSON(), nullable=False),
        sa.Column("address", sa.String(length=300), nullable=True),
        sa.Column("district", sa.String(length=64), nullable=True),
        sa.Column("lat", sa.Float(), nullable=True),
        sa.Column("lon", sa.Float(), nullable=True),
        sa.Column("merged_into", sa.String(length=20), nullable=True),
        sa.Column("satisfaction", sa.String(length=24), nullable=True),
        sa.Column("reply_text", sa.Text(), nullable=True),
        sa.Column("supervision_count", sa.Integer(), nullable=False),
        sa.Column("reopen_count", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", ticketing.models.UTCDateTime(), nullable=False),
        sa.Column("updated_at", ticketing.models.UTCDateTime(), nullable=False),
        sa.Column("dispatched_at", ticketing.models.UTCDateTime(), nullable=True),
        sa.Column("dispatch_due_at", ticketing.models.UTCDateTime(), nullable=True),
        sa.Column("feedback_due_at", ticketing.models.UTCDateTime(), nullable=True),
        sa.Column("dispatch_warned_at", ticketing.models.UTCDateTime(), nullable=True),
        sa.Column("dispatch_breached_at", ticketing.models.UTCDateTime(), nullable=True),
        sa.Column("feedback_warned_at", ticketing.models.UTCDateTime(), nullable=True),
        sa.Column("feedback_breached_at", ticketing.models.UTCDateTime(), nullable=True),
        sa.Column("closed_at", ticketing.models.UTCDateTime(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("event_seq", sa.Integer(), nullable=False),
        sa.Column("last_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_ticket_category_code"), "ticket", ["category_code"], unique=False)
    op.create_index(op.f("ix_ticket_channel"), "ticket", ["channel"], unique=False)
    op.create_index(
        op.f("ix_ticket_contact_phone_bidx"), "ticket", ["contact_phone_bidx"], unique=False
    )
    op.create_index(op.f("ix_ticket_created_at"), "ticket", ["created_at"], unique=False)
    op.create_index(op.f("ix_ticket_dispatch_due_at"), "ticket", ["dispatch_due_at"], unique=False)
    op.create_index(op.f("ix_ticket_district"), "ticket", ["district"], unique=False)
    op.create_index(op.f("ix_ticket_feedback_due_at"), "ticket", ["feedback_due_at"], unique=False)
    op.create_index(op.f("ix_ticket_kind"), "ticket", ["kind"], unique=False)
    op.create_index(op.f("ix_ticket_lead_department"), "ticket", ["lead_department"], unique=False)
    op.create_index(op.f("ix_ticket_merged_into"), "ticket", ["merged_into"], unique=False)
    op.create_index(op.f("ix_ticket_number"), "ticket", ["number"], unique=True)
    op.create_index(op.f("ix_ticket_status"), "ticket", ["status"], unique=False)
    op.create_index("ix_ticket_status_created", "ticket", ["status", "created_at"], unique=False)
    op.create_table(
        "ticket_counter",
        sa.Column("day", sa.String(length=8), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("day"),
    )
    op.create_table(
        "ticket_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ticket_number", sa.String(length=20), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("at", ticketing.models.UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("actor_role", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("from_status", sa.String(length=24), nullable=True),
        sa.Column("to_status", sa.String(length=24), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("ticket_number", "seq", name="uq_ticket_event_ticket_seq"),
    )
    op.create_index(
        op.f("ix_ticket_event_ticket_number"), "ticket_event", ["ticket_number"], unique=False
    )
    op.create_table(
        "work_item",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("ref", sa.String(length=64), nullable=False),
        sa.Column("audience", sa.String(length=80), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("due_at", ticketing.models.UTCDateTime(), nullable=True),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("claim_expires_at", ticketing.models.UTCDateTime(), nullable=True),
        sa.Column("created_at", ticketing.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kind", "ref", name="uq_work_item_kind_ref"),
    )
    op.create_index(
        "ix_work_item_pick", "work_item", ["audience", "priority", "due_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_work_item_pick", table_name="work_item")
    op.drop_table("work_item")
    op.drop_index(op.f("ix_ticket_event_ticket_number"), table_name="ticket_event")
    op.drop_table("ticket_event")
    op.drop_table("ticket_counter")
    op.drop_index("ix_ticket_status_created", table_name="ticket")
    op.drop_index(op.f("ix_ticket_status"), table_name="ticket")
    op.drop_index(op.f("ix_ticket_number"), table_name="ticket")
    op.drop_index(op.f("ix_ticket_merged_into"), table_name="ticket")
    op.drop_index(op.f("ix_ticket_lead_department"), table_name="ticket")
    op.drop_index(op.f("ix_ticket_kind"), table_name="ticket")
    op.drop_index(op.f("ix_ticket_feedback_due_at"), table_name="ticket")
    op.drop_index(op.f("ix_ticket_district"), table_name="ticket")
    op.drop_index(op.f("ix_ticket_dispatch_due_at"), table_name="ticket")
    op.drop_index(op.f("ix_ticket_created_at"), table_name="ticket")
    op.drop_index(op.f("ix_ticket_contact_phone_bidx"), table_name="ticket")
    op.drop_index(op.f("ix_ticket_channel"), table_name="ticket")
    op.drop_index(op.f("ix_ticket_category_code"), table_name="ticket")
    op.drop_table("ticket")
    op.drop_index(op.f("ix_staff_user_username"), table_name="staff_user")
    op.drop_table("staff_user")
    op.drop_index(op.f("ix_staff_session_user_id"), table_name="staff_session")
    op.drop_table("staff_session")
    op.drop_table("idempotency_record")
    op.drop_index(op.f("ix_department_parent_code"), table_name="department")
    op.drop_index(op.f("ix_department_district"), table_name="department")
    op.drop_index(op.f("ix_department_code"), table_name="department")
    op.drop_table("department")
    op.drop_index(op.f("ix_category_parent_code"), table_name="category")
    op.drop_index(op.f("ix_category_code"), table_name="category")
    op.drop_table("category")
    op.drop_index(op.f("ix_attachment_ticket_number"), table_name="attachment")
    op.drop_table("attachment")
