"""Tables of the ticket domain (SQLModel on SQLAlchemy 2).

Rows reference tickets by their public `number`, not a surrogate id, so the bulk
intake path can insert a ticket, its first audit event and its queue item in one
batch without reading generated keys back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend.

    SQLite has no time zone type: we store naive UTC there and re-attach UTC on
    read, so code never compares naive with aware values.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=sa.Column(UTCDateTime(), nullable=nullable))


def _json(default: Any) -> Any:
    return Field(default_factory=default, sa_column=sa.Column(sa.JSON, nullable=False))


class Department(SQLModel, table=True):
    """A unit that handles tickets; a tree city -> district -> street/grid."""

    __tablename__ = "department"
    id: int | None = Field(default=None, primary_key=True)
    code: str = Field(max_length=64, unique=True, index=True)
    name: str = Field(max_length=200)
    parent_code: str | None = Field(default=None, max_length=64, index=True)
    level: str = Field(max_length=16)  # city | district | street | grid | agency
    district: str | None = Field(default=None, max_length=64, index=True)
    is_fallback: bool = Field(default=False)  # the district's 兜底 unit
    active: bool = Field(default=True)


class Category(SQLModel, table=True):
    """Taxonomy node; each names the default department, urgency and limits."""

    __tablename__ = "category"
    id: int | None = Field(default=None, primary_key=True)
    code: str = Field(max_length=64, unique=True, index=True)
    name: str = Field(max_length=200)
    parent_code: str | None = Field(default=None, max_length=64, index=True)
    default_department: str | None = Field(default=None, max_length=64)
    urgency: str = Field(default="normal", max_length=16)
    dispatch_limit: str | None = Field(default=None, max_length=16)  # e.g. "2h"
    feedback_limit: str | None = Field(default=None, max_length=16)  # e.g. "7wd"
    active: bool = Field(default=True)


class StaffUser(SQLModel, table=True):
    __tablename__ = "staff_user"
    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(max_length=64, unique=True, index=True)
    display_name: str = Field(default="", max_length=200)
    password_hash: str = Field(max_length=255)
    role: str = Field(max_length=16)  # agent | supervisor | department | admin
    department_code: str | None = Field(default=None, max_length=64)
    active: bool = Field(default=True)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=sa.Column(UTCDateTime(), nullable=False)
    )
    # sign-in attempts since the last good one, and the lockout they caused (hotline.auth)
    failed_logins: int = Field(
        default=0, sa_column=sa.Column(sa.Integer(), nullable=False, server_default="0")
    )
    locked_until: datetime | None = Field(
        default=None, sa_column=sa.Column(UTCDateTime(), nullable=True)
    )


class StaffEvent(SQLModel, table=True):
    """Who changed which staff account how (created, role, deactivated, unlocked,
    password set or changed): append-only, for the security audit (hotline.staff)."""

    __tablename__ = "staff_event"
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    actor: str = Field(max_length=64)
    username: str = Field(max_length=64, index=True)
    action: str = Field(max_length=32)
    data: dict[str, Any] = _json(dict)


class StaffSession(SQLModel, table=True):
    """A login; only the SHA-256 of the bearer token is stored."""

    __tablename__ = "staff_session"
    token_hash: str = Field(primary_key=True, max_length=64)
    user_id: int = Field(index=True)
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    expires_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class Ticket(SQLModel, table=True):
    __tablename__ = "ticket"
    # Every index is paid for by every new ticket (SQLite: ~6-10 us of CPU and WAL pages
    # per ticket each), so only those a query needs (migration 0015):
    # - status: served by (status, created_at); it also carries the deadline watcher and
    #   the overdue filter (a status IN the phase, then the due time), so neither due
    #   time has an index of its own for that;
    # - kind, channel: a handful of values each; a page of the list walks created_at
    #   and filters, which beats reading every complaint to sort them;
    # - lead department, merged_into, feedback due: NULL on every new ticket, so partial
    #   (`IS NOT NULL`; both databases use such an index for `=`, `<`, `IN` on it).
    __table_args__ = (
        sa.Index("ix_ticket_status_created", "status", "created_at"),
        *(
            sa.Index(
                f"ix_ticket_{col}",
                col,
                sqlite_where=sa.text(f"{col} IS NOT NULL"),
                postgresql_where=sa.text(f"{col} IS NOT NULL"),
            )
            for col in ("lead_department", "merged_into", "feedback_due_at")
        ),
    )
    id: int | None = Field(default=None, primary_key=True)
    number: str = Field(max_length=20, unique=True, index=True)
    kind: str = Field(max_length=16)
    title: str = Field(max_length=200)
    description: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    category_code: str | None = Field(default=None, max_length=64, index=True)
    channel: str = Field(max_length=16)
    urgency: str = Field(max_length=16)
    priority: int = Field(default=2)
    status: str = Field(max_length=24)
    lead_department: str | None = Field(default=None, max_length=64)
    assist_departments: list[str] = _json(list)
    contact_name: str | None = Field(default=None, max_length=100)
    contact_phone_enc: str | None = Field(default=None, max_length=255)
    contact_phone_bidx: str | None = Field(default=None, max_length=64, index=True)
    contact_ids: dict[str, str] = _json(dict)
    address: str | None = Field(default=None, max_length=300)
    district: str | None = Field(default=None, max_length=64, index=True)
    lat: float | None = None
    lon: float | None = None
    merged_into: str | None = Field(default=None, max_length=20)
    satisfaction: str | None = Field(default=None, max_length=24)  # "basically_satisfied"
    reply_text: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    supervision_count: int = Field(default=0)
    reopen_count: int = Field(default=0)
    created_by: str = Field(max_length=64)
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False, index=True))
    updated_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    dispatched_at: datetime | None = _ts()
    dispatch_due_at: datetime | None = _ts()
    feedback_due_at: datetime | None = _ts()
    dispatch_warned_at: datetime | None = _ts()
    dispatch_breached_at: datetime | None = _ts()
    feedback_warned_at: datetime | None = _ts()
    feedback_breached_at: datetime | None = _ts()
    closed_at: datetime | None = _ts()
    version: int = Field(default=1)  # optimistic concurrency between instances
    event_seq: int = Field(default=0)
    last_hash: str = Field(default="", max_length=64)


class TicketEvent(SQLModel, table=True):
    """Append-only, hash-chained trail: a changed past breaks the chain."""

    __tablename__ = "ticket_event"
    __table_args__ = (
        sa.UniqueConstraint("ticket_number", "seq", name="uq_ticket_event_ticket_seq"),
    )
    id: int | None = Field(default=None, primary_key=True)
    # looked up through the unique (ticket_number, seq): no index of its own
    ticket_number: str = Field(max_length=20)
    seq: int
    at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    actor: str = Field(max_length=64)
    actor_role: str = Field(max_length=16)
    action: str = Field(max_length=32)
    from_status: str | None = Field(default=None, max_length=24)
    to_status: str = Field(max_length=24)
    data: dict[str, Any] = _json(dict)
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class Attachment(SQLModel, table=True):
    __tablename__ = "attachment"
    id: int | None = Field(default=None, primary_key=True)
    ticket_number: str = Field(max_length=20, index=True)
    filename: str = Field(max_length=255)
    content_type: str = Field(max_length=100)
    size: int
    sha256: str = Field(max_length=64)
    storage_key: str = Field(max_length=255)
    uploaded_by: str = Field(max_length=64)
    uploaded_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class WorkItem(SQLModel, table=True):
    """Something a person must act on now; tickets are the first kind."""

    __tablename__ = "work_item"
    __table_args__ = (
        sa.UniqueConstraint("kind", "ref", name="uq_work_item_kind_ref"),
        sa.Index("ix_work_item_pick", "audience", "priority", "due_at"),
    )
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=16)
    ref: str = Field(max_length=64)
    audience: str = Field(max_length=80)  # "agents" | "supervisors" | "dept:<code>"
    action: str = Field(max_length=32)  # what the person is expected to do
    priority: int
    due_at: datetime | None = _ts()
    claimed_by: str | None = Field(default=None, max_length=64)
    claim_expires_at: datetime | None = _ts()
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class TicketCounter(SQLModel, table=True):
    """Per-day sequence for ticket numbers (one upsert per batch)."""

    __tablename__ = "ticket_counter"
    day: str = Field(primary_key=True, max_length=8)
    value: int


class IdempotencyRecord(SQLModel, table=True):
    """First answer to a POST with an Idempotency-Key, replayed on retries."""

    __tablename__ = "idempotency_record"
    principal: str = Field(primary_key=True, max_length=64)
    key: str = Field(primary_key=True, max_length=255)
    request_hash: str = Field(max_length=64)
    status: int
    body: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
