"""Fewer ticket indexes: each one is paid for by every new ticket.

On SQLite every secondary index of `ticket` cost the intake ~6-10 us of CPU and more
WAL pages per ticket (all of them together ~70 us, two thirds of the writer's CPU).
Gone: those a wider index already serves (`ix_ticket_status` by (status, created_at),
`ix_ticket_event_ticket_number` by the unique (ticket_number, seq)), those of columns
with a handful of values (kind, channel: a list page walks created_at and filters),
and the dispatch due time (queried only with its phase's statuses, which
(status, created_at) finds). Partial now (`IS NOT NULL`): lead department, merged_into
and the feedback due time, NULL on every new ticket.

On PostgreSQL the indexes are built and dropped CONCURRENTLY, outside the migration's
transaction: a plain CREATE INDEX would hold back every ticket write of a running
service for as long as the build of a big table takes. Each step may be run again
after a failure (a build that failed leaves an invalid index, dropped on the next run).

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-24 00:30:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DROPPED = ("status", "kind", "channel", "dispatch_due_at")
PARTIAL = ("lead_department", "merged_into", "feedback_due_at")


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        _upgrade_postgresql()
        return
    for col in DROPPED:
        op.drop_index(f"ix_ticket_{col}", table_name="ticket")
    op.drop_index("ix_ticket_event_ticket_number", table_name="ticket_event")
    for col in PARTIAL:
        op.drop_index(f"ix_ticket_{col}", table_name="ticket")
        where = sa.text(f"{col} IS NOT NULL")
        op.create_index(
            f"ix_ticket_{col}", "ticket", [col], sqlite_where=where, postgresql_where=where
        )


def _upgrade_postgresql() -> None:
    with op.get_context().autocommit_block():
        for col in PARTIAL:
            new = f"ix_ticket_{col}_set"
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {new}")
            op.execute(f"CREATE INDEX CONCURRENTLY {new} ON ticket ({col}) WHERE {col} IS NOT NULL")
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS ix_ticket_{col}")
            op.execute(f"ALTER INDEX {new} RENAME TO ix_ticket_{col}")
        for col in DROPPED:
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS ix_ticket_{col}")
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_ticket_event_ticket_number")


def downgrade() -> None:
    for col in PARTIAL:
        op.drop_index(f"ix_ticket_{col}", table_name="ticket")
        op.create_index(f"ix_ticket_{col}", "ticket", [col])
    op.create_index("ix_ticket_event_ticket_number", "ticket_event", ["ticket_number"])
    for col in DROPPED:
        op.create_index(f"ix_ticket_{col}", "ticket", [col])
