"""Tables of the phone line: calls and their trail, callbacks, agents' phones, emergencies.

The caller's number is personal data: stored encrypted with a blind index (the
same cipher as ticket contacts, so a number finds both its calls and its
tickets) and a masked copy for lists that must not decrypt on every row.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from ticketing.models import UTCDateTime


def _ts(nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_column=sa.Column(UTCDateTime(), nullable=nullable, index=index))


def _json(default: Any) -> Any:
    return Field(default_factory=default, sa_column=sa.Column(sa.JSON, nullable=False))


class Call(SQLModel, table=True):
    """One inbound call from arrival to hang-up; keyed by FreeSWITCH's channel UUID."""

    __tablename__ = "call"
    # every heartbeat looks up this instance's calls that a sweep closed as lost
    # (hotline.calls.instances.reclaim_lost_calls): two index columns, not a scan of
    # all the calls a long-running instance ever took
    __table_args__ = (sa.Index("ix_call_instance_cause", "instance_id", "hangup_cause"),)
    id: int | None = Field(default=None, primary_key=True)
    uuid: str = Field(max_length=64, unique=True, index=True)
    caller_enc: str | None = Field(default=None, max_length=255)
    caller_bidx: str | None = Field(default=None, max_length=64, index=True)
    caller_masked: str = Field(default="", max_length=32)
    queue: str = Field(default="12345", max_length=32)
    priority: int = Field(default=2)
    # queued | ringing | talking | held | ended | abandoned | callback | emergency | overflow
    state: str = Field(max_length=16, index=True)
    agent: str | None = Field(default=None, max_length=64, index=True)
    entered_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False, index=True))
    answered_at: datetime | None = _ts()
    ended_at: datetime | None = _ts()
    wait_s: float | None = None
    talk_s: float | None = None
    hangup_cause: str | None = Field(default=None, max_length=64)
    ticket_number: str | None = Field(default=None, max_length=20, index=True)
    recording_path: str | None = Field(default=None, max_length=500)
    # the service instance whose socket holds the call (ServiceInstance.id); NULL on
    # rows written before instances were recorded
    instance_id: str | None = Field(default=None, max_length=36, index=True)


class ServiceInstance(SQLModel, table=True):
    """One start of the service process, and when it was last seen alive.

    Several instances share the database, and each holds its own calls' sockets: a
    call left live by an instance that stopped (`stopped_at`) or stopped beating
    (`seen_at` too old) is gone, and whoever notices closes it; a call held by an
    instance that is alive is nobody else's business (hotline.calls.instances).
    """

    __tablename__ = "service_instance"
    id: str = Field(primary_key=True, max_length=36)  # a uuid4 per start
    host: str = Field(max_length=255)
    pid: int
    started_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    seen_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    stopped_at: datetime | None = _ts()


class CallEvent(SQLModel, table=True):
    """What happened on a call, in order (offered, answered, held, transferred...)."""

    __tablename__ = "call_event"
    # a unique index, not a constraint: SQLite adds it without rebuilding the table
    __table_args__ = (sa.Index("ix_call_event_step_key", "step_key", unique=True),)
    id: int | None = Field(default=None, primary_key=True)
    call_uuid: str = Field(max_length=64, index=True)
    at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    kind: str = Field(max_length=32)
    actor: str | None = Field(default=None, max_length=64)
    data: dict[str, Any] = _json(dict)
    # the call step that wrote the entry (hotline.calls.store._Step.key), so a step
    # retried after a commit whose outcome was never heard is found written and not
    # written twice; unique (NULLs apart: entries from before, or written by hand)
    step_key: str | None = Field(default=None, max_length=32)


class CallStepMark(SQLModel, table=True):
    """A written call step that has no trail entry to carry its key but writes other
    tables (an emergency hand-off's records): the same retry check as
    `CallEvent.step_key`. Only such steps write a mark (one row per hand-off step)."""

    __tablename__ = "call_step_mark"
    key: str = Field(primary_key=True, max_length=32)
    call_uuid: str = Field(max_length=64)
    at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class CallbackRequest(SQLModel, table=True):
    """A caller we promised to ring back; also an item in the work queue."""

    __tablename__ = "callback_request"
    id: int | None = Field(default=None, primary_key=True)
    call_uuid: str | None = Field(default=None, max_length=64, index=True)
    phone_enc: str = Field(max_length=255)
    phone_bidx: str = Field(max_length=64, index=True)
    phone_masked: str = Field(max_length=32)
    reason: str = Field(max_length=24)  # max_wait | queue_full | ivr | no_agents
    status: str = Field(default="open", max_length=16, index=True)  # open | done | failed
    requested_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    due_at: datetime | None = _ts()
    handled_by: str | None = Field(default=None, max_length=64)
    handled_at: datetime | None = _ts()
    note: str | None = Field(default=None, max_length=500)


class AgentProfile(SQLModel, table=True):
    """An agent's phone (SIP extension / dial string) and skills, kept across logins."""

    __tablename__ = "agent_profile"
    username: str = Field(primary_key=True, max_length=64)
    extension: str | None = Field(default=None, max_length=32)
    dial_string: str = Field(max_length=200)
    skills: list[str] = _json(list)
    updated_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class EmergencyHandoff(SQLModel, table=True):
    """A call handed to 110/119/120/122: which route, when, and how it ended."""

    __tablename__ = "emergency_handoff"
    id: int | None = Field(default=None, primary_key=True)
    call_uuid: str = Field(max_length=64, index=True)
    line: str = Field(max_length=8)
    route: str | None = Field(default=None, max_length=16)  # primary | alternate
    dial_string: str | None = Field(default=None, max_length=200)
    agent: str | None = Field(default=None, max_length=64)
    ticket_number: str | None = Field(default=None, max_length=20, index=True)
    requested_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    answered_at: datetime | None = _ts()
    ended_at: datetime | None = _ts()
    outcome: str = Field(default="pending", max_length=24)  # pending | connected | failed
    attempts: list[dict[str, Any]] = _json(list)


class EmergencyNotice(SQLModel, table=True):
    """Outbox of signed data pushes to emergency centres, retried until delivered."""

    __tablename__ = "emergency_notice"
    id: int | None = Field(default=None, primary_key=True)
    handoff_id: int = Field(index=True)
    line: str = Field(max_length=8)
    endpoint: str = Field(max_length=500)
    body: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    attempts: int = Field(default=0)
    next_attempt_at: datetime = Field(
        sa_column=sa.Column(UTCDateTime(), nullable=False, index=True)
    )
    delivered_at: datetime | None = _ts()
    last_error: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
