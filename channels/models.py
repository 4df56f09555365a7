"""Tables of the written channels: contacts, residents, conversations, messages, outbox.

Idempotency and single-open-conversation rules are unique constraints, so they hold
across instances on PostgreSQL as well as on SQLite, without application locks:
- a channel's own message id is unique per channel (`uq_channel_message_ext`); our
  outbound messages have no external id (NULLs never collide);
- a contact has at most one open conversation: `open_key` is the contact id while
  the conversation is open and NULL once it is closed (`uq_conversation_open`);
- an outbox row with a `dedupe_key` (a ticket notification) exists once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from ticketing.models import UTCDateTime


def _ts(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=sa.Column(UTCDateTime(), nullable=nullable))


def _json(default: Any, nullable: bool = False) -> Any:
    return Field(default_factory=default, sa_column=sa.Column(sa.JSON, nullable=nullable))


class ChannelResident(SQLModel, table=True):
    """One person behind several contacts (WeChat, Telegram, app, phone).

    `citizen_ref` is for a later verified citizen-card identity; until then a
    resident is only "these contacts are the same person", as an agent decided.
    """

    __tablename__ = "channel_resident"
    id: int | None = Field(default=None, primary_key=True)
    display_name: str | None = Field(default=None, max_length=100)
    citizen_ref: str | None = Field(default=None, max_length=64, index=True)
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class ChannelContact(SQLModel, table=True):
    """An address a resident writes from: (channel, the channel's id for them).

    For phone numbers `external_id` is the keyed blind index and the number itself is
    only in `address_enc` (AES-GCM); other channels' ids are pseudonymous already.
    """

    __tablename__ = "channel_contact"
    __table_args__ = (sa.UniqueConstraint("channel", "external_id", name="uq_channel_contact_ext"),)
    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=16)
    external_id: str = Field(max_length=128)
    address_enc: str | None = Field(default=None, max_length=255)
    display_name: str | None = Field(default=None, max_length=100)
    resident_id: int | None = Field(default=None, index=True)
    subscribed: bool = Field(default=True)  # WeChat unsubscribe: no more pushes
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class Conversation(SQLModel, table=True):
    __tablename__ = "conversation"
    __table_args__ = (
        sa.UniqueConstraint("open_key", name="uq_conversation_open"),
        sa.Index("ix_conversation_status_last", "status", "last_message_at"),
    )
    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=16, index=True)
    contact_id: int = Field(index=True)
    open_key: int | None = Field(default=None)
    status: str = Field(max_length=16)  # open | ticketed | closed
    waiting: bool = Field(default=False, index=True)  # a resident message awaits an agent
    waiting_since: datetime | None = _ts()
    emergency: bool = Field(default=False)
    emergency_lines: list[str] = _json(list)
    ticket_number: str | None = Field(default=None, max_length=20, index=True)
    bot_state: dict[str, Any] | None = _json(lambda: None, nullable=True)
    lang: str = Field(default="zh", max_length=8)
    assigned_to: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    updated_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    last_message_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    closed_at: datetime | None = _ts()


class ChannelMessage(SQLModel, table=True):
    """Every message in or out, in the normalized shape all channels share."""

    __tablename__ = "channel_message"
    __table_args__ = (sa.UniqueConstraint("channel", "external_id", name="uq_channel_message_ext"),)
    id: int | None = Field(default=None, primary_key=True)
    conversation_id: int = Field(index=True)
    channel: str = Field(max_length=16)
    external_id: str | None = Field(default=None, max_length=128)
    direction: str = Field(max_length=3)  # in | out
    author: str = Field(max_length=64)  # contact:<id> | staff username | bot | system
    kind: str = Field(max_length=16)  # text image voice video location link event
    text: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    media: list[dict[str, Any]] = _json(list)
    location: dict[str, Any] | None = _json(lambda: None, nullable=True)
    data: dict[str, Any] = _json(dict)  # channel extras: event name/key, link url, ...
    # the inbound message an answer answers (indexed: a retried push gets its first
    # answers back by this, inside the intake's write transaction)
    reply_to: int | None = Field(default=None, index=True)
    delivery: str | None = Field(default=None, max_length=16)  # out: inline|pending|sent|failed
    sent_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    stored_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class ChannelOutbox(SQLModel, table=True):
    """A delivery to make: written in the transaction that decided it, sent afterwards."""

    __tablename__ = "channel_outbox"
    __table_args__ = (
        sa.UniqueConstraint("dedupe_key", name="uq_channel_outbox_dedupe"),
        sa.Index("ix_channel_outbox_due", "state", "next_attempt_at"),
    )
    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=16)
    recipient: str = Field(max_length=128)  # the contact's external id on that channel
    message_id: int | None = Field(default=None, index=True)
    payload: dict[str, Any] = _json(dict)
    dedupe_key: str | None = Field(default=None, max_length=128)
    state: str = Field(max_length=16)  # pending | sent | failed
    attempts: int = Field(default=0)
    next_attempt_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    last_error: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    sent_at: datetime | None = _ts()


resident_t: sa.Table = ChannelResident.__table__  # type: ignore[attr-defined]
contact_t: sa.Table = ChannelContact.__table__  # type: ignore[attr-defined]
conversation_t: sa.Table = Conversation.__table__  # type: ignore[attr-defined]
message_t: sa.Table = ChannelMessage.__table__  # type: ignore[attr-defined]
outbox_t: sa.Table = ChannelOutbox.__table__  # type: ignore[attr-defined]
