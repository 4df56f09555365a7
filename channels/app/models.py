"""Tables of the city app: resident accounts, sign-in codes, tokens, the notification
feed, first answers to Idempotency-Keys and ratings.

Personal data follows the rest of the service: the phone number is only encrypted
(AES-GCM) with its keyed blind index beside it for lookup; codes and tokens are
stored only as keyed hashes, so a copy of the database signs nobody in.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from ticketing.models import UTCDateTime


def _ts(nullable: bool = False, index: bool = False) -> Any:
    return Field(default=None, sa_column=sa.Column(UTCDateTime(), nullable=nullable, index=index))


class AppAccount(SQLModel, table=True):
    """A resident signed in to the app with a phone number (proven by a one-time code).

    `contact_id` is the phone's contact in the channels' registry, so the app's
    conversations, the phone calls and linked WeChat/Telegram contacts are one history.
    `feed_seq` numbers the account's notifications: taken under the account's row lock,
    so a notification with a higher number never commits before a lower one (a reader
    resuming after N misses nothing).
    """

    __tablename__ = "app_account"
    id: int | None = Field(default=None, primary_key=True)
    phone_enc: str = Field(max_length=255)
    phone_bidx: str = Field(max_length=64, unique=True, index=True)
    contact_id: int | None = Field(default=None)
    feed_seq: int = Field(default=0)
    created_at: datetime = _ts()
    last_login_at: datetime | None = _ts(nullable=True)


class AppSignInCode(SQLModel, table=True):
    """A one-time code sent to a phone; only its keyed hash is kept."""

    __tablename__ = "app_signin_code"
    __table_args__ = (
        sa.Index("ix_app_signin_code_phone_created", "phone_bidx", "created_at"),
        sa.Index("ix_app_signin_code_ip_created", "ip_hash", "created_at"),
    )
    id: int | None = Field(default=None, primary_key=True)
    phone_bidx: str = Field(max_length=64)
    ip_hash: str = Field(max_length=64)
    salt: str = Field(max_length=32)
    code_hash: str = Field(max_length=64)
    attempts: int = Field(default=0)
    created_at: datetime = _ts()
    expires_at: datetime = _ts()
    used_at: datetime | None = _ts(nullable=True)


class AppToken(SQLModel, table=True):
    """A resident's bearer token; only its SHA-256 is stored. Logout deletes the row."""

    __tablename__ = "app_token"
    token_hash: str = Field(primary_key=True, max_length=64)
    account_id: int = Field(index=True)
    created_at: datetime = _ts()
    expires_at: datetime = _ts()


class AppNotification(SQLModel, table=True):
    """One entry of a resident's feed: an agent's reply, a bot answer, a ticket update.

    `outbox_id` is the channel outbox row it delivers: the outbox delivers at least
    once, the unique constraint makes the feed hold it once.
    """

    __tablename__ = "app_notification"
    __table_args__ = (sa.UniqueConstraint("outbox_id", name="uq_app_notification_outbox"),)
    account_id: int = Field(primary_key=True)
    seq: int = Field(primary_key=True)
    kind: str = Field(max_length=16)  # message | ticket_update
    ticket_number: str | None = Field(default=None, max_length=20)
    status: str | None = Field(default=None, max_length=24)
    text: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    payload: dict[str, Any] = Field(
        default_factory=dict, sa_column=sa.Column(sa.JSON, nullable=False)
    )
    outbox_id: int | None = Field(default=None)
    created_at: datetime = _ts()


class AppRequest(SQLModel, table=True):
    """The first answer to an Idempotency-Key of one account (reports, follow-ups).

    `state` pending: the work started (a crash may have left it half done: a retry
    resumes it, every step being idempotent); done: `response` is the answer replayed.
    """

    __tablename__ = "app_request"
    account_id: int = Field(primary_key=True)
    key: str = Field(primary_key=True, max_length=255)
    request_hash: str = Field(max_length=64)
    state: str = Field(max_length=16)
    ticket_number: str | None = Field(default=None, max_length=20)
    status: int | None = Field(default=None)
    response: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class AppRating(SQLModel, table=True):
    """The resident's rating of a ticket's outcome: one per ticket."""

    __tablename__ = "app_rating"
    ticket_number: str = Field(primary_key=True, max_length=20)
    account_id: int = Field(index=True)
    rating: int
    satisfaction: str = Field(max_length=24)
    comment: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    created_at: datetime = _ts()


account_t: sa.Table = AppAccount.__table__  # type: ignore[attr-defined]
code_t: sa.Table = AppSignInCode.__table__  # type: ignore[attr-defined]
token_t: sa.Table = AppToken.__table__  # type: ignore[attr-defined]
notification_t: sa.Table = AppNotification.__table__  # type: ignore[attr-defined]
request_t: sa.Table = AppRequest.__table__  # type: ignore[attr-defined]
rating_t: sa.Table = AppRating.__table__  # type: ignore[attr-defined]
