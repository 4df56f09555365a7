"""Tables of residents and their cards.

Personal data (ID number, phone) is stored only encrypted, with a keyed blind index
beside it for exact lookup; the name is kept for the counter but masked in answers
to anyone whose scope does not need it.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from citizen_card.dbtypes import UTCDateTime


def _ts(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=sa.Column(UTCDateTime(), nullable=nullable))


class Resident(SQLModel, table=True):
    __tablename__ = "resident"
    id: int | None = Field(default=None, primary_key=True)
    handle: str = Field(max_length=40, unique=True, index=True)  # pseudonymous, for partners
    name: str = Field(max_length=100)
    id_number_enc: str = Field(max_length=255)
    id_number_bidx: str = Field(max_length=64, unique=True, index=True)
    phone_enc: str | None = Field(default=None, max_length=255)
    phone_bidx: str | None = Field(default=None, max_length=64, index=True)
    birth_date: date
    sex: str = Field(max_length=1)
    address: str | None = Field(default=None, max_length=300)
    verified: bool = Field(default=False)
    verified_source: str | None = Field(default=None, max_length=64)
    verified_at: datetime | None = _ts()
    wallet_account_id: int | None = Field(default=None, sa_type=sa.BigInteger)
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class Card(SQLModel, table=True):
    __tablename__ = "card"
    id: int | None = Field(default=None, primary_key=True)
    card_no: str = Field(max_length=20, unique=True, index=True)
    resident_id: int = Field(index=True)
    status: str = Field(max_length=16, index=True)
    status_index: int = Field(unique=True)  # position in the published status list
    concession: str = Field(default="adult", max_length=16)  # transit class
    social_security_no: str | None = Field(default=None, max_length=32)
    health_card_no: str | None = Field(default=None, max_length=32, index=True)
    pin_hash: str | None = Field(default=None, max_length=255)
    pin_failures: int = Field(default=0)
    replaced_by: str | None = Field(default=None, max_length=20)
    issued_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    updated_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    version: int = Field(default=1)


class HospitalCard(SQLModel, table=True):
    """A hospital's own visit card mapped to the citizen card (诊疗卡一卡通)."""

    __tablename__ = "hospital_card"
    __table_args__ = (
        sa.UniqueConstraint("hospital_code", "hospital_card_no", name="uq_hospital_card"),
    )
    id: int | None = Field(default=None, primary_key=True)
    hospital_code: str = Field(max_length=32)
    hospital_card_no: str = Field(max_length=64)
    resident_id: int = Field(index=True)
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class CardEvent(SQLModel, table=True):
    """Who did what to a card, when (loss reports, replacements, PIN lockouts, reads)."""

    __tablename__ = "card_event"
    id: int | None = Field(default=None, primary_key=True)
    card_no: str = Field(max_length=20, index=True)
    at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    actor: str = Field(max_length=64)
    channel: str = Field(max_length=16)
    action: str = Field(max_length=32)
    data: dict[str, Any] = Field(default_factory=dict, sa_column=sa.Column(sa.JSON, nullable=False))


class FreezeReceipt(SQLModel, table=True):
    """The signed proof of a loss report: liability for later payments is the city's."""

    __tablename__ = "freeze_receipt"
    number: str = Field(primary_key=True, max_length=20)  # digits, read out on the phone
    card_no: str = Field(max_length=20, index=True)
    at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    ledger_position: int = Field(sa_type=sa.BigInteger)
    channel: str = Field(max_length=16)
    receipt: str = Field(sa_column=sa.Column(sa.Text, nullable=False))


class CardCounter(SQLModel, table=True):
    """Allocators for card serials and status-list indexes, and the status list version."""

    __tablename__ = "card_counter"
    name: str = Field(primary_key=True, max_length=32)
    value: int
