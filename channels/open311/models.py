"""Tables of the Open311 channel.

`open311_request` keeps what GeoReport v2 returns but a ticket has no column for
(the client's own description, address_id, media_url, attribute answers) plus the
submitter's details a GET must never show (email encrypted like phone numbers).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from ticketing.models import UTCDateTime


class Open311ApiKey(SQLModel, table=True):
    """A client's API key; only its SHA-256 is stored, so a leaked table grants nothing."""

    __tablename__ = "open311_api_key"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=48, unique=True, index=True)
    key_hash: str = Field(max_length=64, unique=True, index=True)
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    revoked_at: datetime | None = Field(
        default=None, sa_column=sa.Column(UTCDateTime(), nullable=True)
    )


class Open311Request(SQLModel, table=True):
    """The Open311 side of a ticket created through the API (one row per ticket)."""

    __tablename__ = "open311_request"
    ticket_number: str = Field(primary_key=True, max_length=20)
    api_key_name: str = Field(max_length=48, index=True)
    service_code: str = Field(max_length=64)
    description: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    attributes: dict[str, Any] = Field(
        default_factory=dict, sa_column=sa.Column(sa.JSON, nullable=False)
    )
    address_id: str | None = Field(default=None, max_length=100)
    media_url: str | None = Field(default=None, max_length=2048)
    account_id: str | None = Field(default=None, max_length=100)
    device_id: str | None = Field(default=None, max_length=100)
    email_enc: str | None = Field(default=None, max_length=512)
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


api_key_t = Open311ApiKey.__table__  # type: ignore[attr-defined]
request_t = Open311Request.__table__  # type: ignore[attr-defined]
