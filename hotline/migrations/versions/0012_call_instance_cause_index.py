"""Index on call (instance_id, hangup_cause): each heartbeat finds its swept calls by it.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-23 17:10:00

"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_call_instance_cause", "call", ["instance_id", "hangup_cause"])


def downgrade() -> None:
    op.drop_index("ix_call_instance_cause", table_name="call")
