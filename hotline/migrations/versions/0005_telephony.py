"""Telephony tables: calls and their trail, callbacks, agents' phones, emergency hand-offs.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 00:30:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from ticketing.models import UTCDateTime

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "agent_profile",
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("extension", sa.String(length=32), nullable=True),
        sa.Column("dial_string", sa.String(length=200), nullable=False),
        sa.Column("skills", sa.JSON(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("username"),
    )
    op.create_table(
        "call",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(length=64), nullable=False),
        sa.Column("caller_enc", sa.String(length=255), nullable=True),
        sa.Column("caller_bidx", sa.String(length=64), nullable=True),
        sa.Column("caller_masked", sa.String(length=32), nullable=False),
        sa.Column("queue", sa.String(length=32), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("agent", sa.String(length=64), nullable=True),
        sa.Column("entered_at", UTCDateTime(), nullable=False),
        sa.Column("answered_at", UTCDateTime(), nullable=True),
        sa.Column("ended_at", UTCDateTime(), nullable=True),
        sa.Column("wait_s", sa.Float(), nullable=True),
        sa.Column("talk_s", sa.Float(), nullable=True),
        sa.Column("hangup_cause", sa.String(length=64), nullable=True),
        sa.Column("ticket_number", sa.String(length=20), nullable=True),
        sa.Column("recording_path", sa.String(length=500), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_call_agent"), "call", ["agent"], unique=False)
    op.create_index(op.f("ix_call_caller_bidx"), "call", ["caller_bidx"], unique=False)
    op.create_index(op.f("ix_call_entered_at"), "call", ["entered_at"], unique=False)
    op.create_index(op.f("ix_call_state"), "call", ["state"], unique=False)
    op.create_index(op.f("ix_call_ticket_number"), "call", ["ticket_number"], unique=False)
    op.create_index(op.f("ix_call_uuid"), "call", ["uuid"], unique=True)
    op.create_table(
        "call_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("call_uuid", sa.String(length=64), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_call_event_call_uuid"), "call_event", ["call_uuid"], unique=False)
    op.create_table(
        "callback_request",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("call_uuid", sa.String(length=64), nullable=True),
        sa.Column("phone_enc", sa.String(length=255), nullable=False),
        sa.Column("phone_bidx", sa.String(length=64), nullable=False),
        sa.Column("phone_masked", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.String(length=24), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("requested_at", UTCDateTime(), nullable=False),
        sa.Column("due_at", UTCDateTime(), nullable=True),
        sa.Column("handled_by", sa.String(length=64), nullable=True),
        sa.Column("handled_at", UTCDateTime(), nullable=True),
        sa.Column("note", sa.String(length=500), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_callback_request_call_uuid"), "callback_request", ["call_uuid"], unique=False
    )
    op.create_index(
        op.f("ix_callback_request_phone_bidx"), "callback_request", ["phone_bidx"], unique=False
    )
    op.create_index(
        op.f("ix_callback_request_status"), "callback_request", ["status"], unique=False
    )
    op.create_table(
        "emergency_handoff",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("call_uuid", sa.String(length=64), nullable=False),
        sa.Column("line", sa.String(length=8), nullable=False),
        sa.Column("route", sa.String(length=16), nullable=True),
        sa.Column("dial_string", sa.String(length=200), nullable=True),
        sa.Column("agent", sa.String(length=64), nullable=True),
        sa.Column("ticket_number", sa.String(length=20), nullable=True),
        sa.Column("requested_at", UTCDateTime(), nullable=False),
        sa.Column("answered_at", UTCDateTime(), nullable=True),
        sa.Column("ended_at", UTCDateTime(), nullable=True),
        sa.Column("outcome", sa.String(length=24), nullable=False),
        sa.Column("attempts", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_emergency_handoff_call_uuid"), "emergency_handoff", ["call_uuid"], unique=False
    )
    op.create_index(
        op.f("ix_emergency_handoff_ticket_number"),
        "emergency_handoff",
        ["ticket_number"],
        unique=False,
    )
    op.create_table(
        "emergency_notice",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("handoff_id", sa.Integer(), nullable=False),
        sa.Column("line", sa.String(length=8), nullable=False),
        sa.Column("endpoint", sa.String(length=500), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_emergency_notice_handoff_id"), "emergency_notice", ["handoff_id"], unique=False
    )
    op.create_index(
        op.f("ix_emergency_notice_next_attempt_at"),
        "emergency_notice",
        ["next_attempt_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_emergency_notice_next_attempt_at"), table_name="emergency_notice")
    op.drop_index(op.f("ix_emergency_notice_handoff_id"), table_name="emergency_notice")
    op.drop_table("emergency_notice")
    op.drop_index(op.f("ix_emergency_handoff_ticket_number"), table_name="emergency_handoff")
    op.drop_index(op.f("ix_emergency_handoff_call_uuid"), table_name="emergency_handoff")
    op.drop_table("emergency_handoff")
    op.drop_index(op.f("ix_callback_request_status"), table_name="callback_request")
    op.drop_index(op.f("ix_callback_request_phone_bidx"), table_name="callback_request")
    op.drop_index(op.f("ix_callback_request_call_uuid"), table_name="callback_request")
    op.drop_table("callback_request")
    op.drop_index(op.f("ix_call_event_call_uuid"), table_name="call_event")
    op.drop_table("call_event")
    op.drop_index(op.f("ix_call_uuid"), table_name="call")
    op.drop_index(op.f("ix_call_ticket_number"), table_name="call")
    op.drop_index(op.f("ix_call_state"), table_name="call")
    op.drop_index(op.f("ix_call_entered_at"), table_name="call")
    op.drop_index(op.f("ix_call_caller_bidx"), table_name="call")
    op.drop_index(op.f("ix_call_agent"), table_name="call")
    op.drop_table("call")
    op.drop_table("agent_profile")
