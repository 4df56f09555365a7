"""Tables of the partner API: the partner registry and the nonces seen recently.

`partner` is the registry an admin edits: one row per partner system (hospital,
transit operator, merchant, department, another city) with its scopes, its Ed25519
public keys by key id (several at once, so a partner can rotate without downtime)
and, for partners that cannot do Ed25519, an HMAC secret that is stored only
encrypted (by a cipher the caller passes, see `partner_auth.SqlPartnerRegistry`).

`partner_nonce` remembers each (partner, nonce) until the request's timestamp
leaves the accepted window, so a captured request cannot be replayed. Expiry is a
plain integer (Unix seconds) so the purge is one indexed range delete on SQLite
and PostgreSQL alike.

The tables live on `SQLModel.metadata`; `PARTNER_TABLES` names just these for
`SQLModel.metadata.create_all(conn, tables=list(PARTNER_TABLES))`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from citizen_card.dbtypes import UTCDateTime


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Partner(SQLModel, table=True):
    """One partner system allowed to call /partner/v1."""

    __tablename__ = "partner"
    partner_id: str = Field(primary_key=True, max_length=64)
    type: str = Field(max_length=16)  # hospital | transit | merchant | department | city
    scopes: list[str] = Field(default_factory=list, sa_column=sa.Column(sa.JSON, nullable=False))
    # {key_id: {"public_key_pem": "-----BEGIN PUBLIC KEY-----...", "not_after": ISO-8601 | null}}
    keys: dict[str, Any] = Field(default_factory=dict, sa_column=sa.Column(sa.JSON, nullable=False))
    hmac_secret_enc: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    enabled: bool = Field(default=True)
    rate_per_minute: int = Field(default=600)
    created_at: datetime = Field(
        default_factory=_utcnow, sa_column=sa.Column(UTCDateTime(), nullable=False)
    )


class PartnerNonce(SQLModel, table=True):
    """A nonce already used by a partner, kept until its request could no longer be valid."""

    __tablename__ = "partner_nonce"
    partner_id: str = Field(primary_key=True, max_length=64)
    nonce: str = Field(primary_key=True, max_length=64)
    expires_at: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False, index=True))


class PartnerIdempotency(SQLModel, table=True):
    """The first answer to a partner's `Idempotency-Key`, shared by every instance.

    A row with `status` NULL is a claim: the first request is still running (another
    request with the key gets 409). `expires_at` (Unix s) is a short lease while in
    flight -- so a crashed instance's claim frees itself -- and 24 h once answered.
    """

    __tablename__ = "partner_idempotency"
    partner_id: str = Field(primary_key=True, max_length=64)
    key: str = Field(primary_key=True, max_length=128)
    fingerprint: str = Field(max_length=64)
    status: int | None = Field(default=None)
    content_type: str | None = Field(default=None, max_length=64)
    body: bytes | None = Field(default=None, sa_column=sa.Column(sa.LargeBinary, nullable=True))
    expires_at: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False, index=True))


PARTNER_TABLE: sa.Table = Partner.__table__  # type: ignore[attr-defined]
PARTNER_NONCE_TABLE: sa.Table = PartnerNonce.__table__  # type: ignore[attr-defined]
PARTNER_IDEMPOTENCY_TABLE: sa.Table = PartnerIdempotency.__table__  # type: ignore[attr-defined]
PARTNER_TABLES: tuple[sa.Table, ...] = (
    PARTNER_TABLE,
    PARTNER_NONCE_TABLE,
    PARTNER_IDEMPOTENCY_TABLE,
)
