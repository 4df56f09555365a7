"""Call steps' keys: a step retried after an uncertain commit is not written twice.

`call_event.step_key` (unique where set; NULL on older entries) holds the key of the
call step that wrote the entry; `call_step_mark` holds the keys of written steps that
have no trail entry but write other tables (an emergency hand-off's records).

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-23 19:40:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from ticketing.models import UTCDateTime

# revision identifiers, used by Alembic.
revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # nullable, no default: a plain ADD COLUMN on both databases (no table rebuild)
    op.add_column("call_event", sa.Column("step_key", sa.String(length=32), nullable=True))
    op.create_index("ix_call_event_step_key", "call_event", ["step_key"], unique=True)
    op.create_table(
        "call_step_mark",
        sa.Column("key", sa.String(length=32), primary_key=True),
        sa.Column("call_uuid", sa.String(length=64), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("call_step_mark")
    op.drop_index("ix_call_event_step_key", table_name="call_event")
    with op.batch_alter_table("call_event") as batch:  # SQLite: DROP COLUMN via a copy
        batch.drop_column("step_key")
