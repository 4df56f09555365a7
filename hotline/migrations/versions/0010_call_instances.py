"""Service instances and the calls each holds (hotline.calls.instances).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-23 02:10:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from ticketing.models import UTCDateTime

# revision identifiers, used by Alembic.
revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "service_instance",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("seen_at", UTCDateTime(), nullable=False),
        sa.Column("stopped_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    # existing calls keep NULL: the first instance to start treats them as left over
    with op.batch_alter_table("call") as batch_op:
        batch_op.add_column(sa.Column("instance_id", sa.String(length=36), nullable=True))
        batch_op.create_index(batch_op.f("ix_call_instance_id"), ["instance_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("call") as batch_op:
        batch_op.drop_index(batch_op.f("ix_call_instance_id"))
        batch_op.drop_column("instance_id")
    op.drop_table("service_instance")
