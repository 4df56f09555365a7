"""Which citizen card a signed-in app session may use.

A phone one-time code proves the phone, not the card holder: mobile numbers are
recycled, and a new owner of an old number must not inherit someone's wallet. So an
app session reaches a card only after the resident proves the card once on that
session, with what a counter would ask: the card number, the last six characters
of the ID number and the card PIN (wrong answers count towards the card's PIN
lockout). The proof is bound to the session token (its hash), so signing in again on
another device, or a new owner signing in with the same number, starts unbound.
The card holder's phone on file must also be the signed-in phone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

import sqlalchemy as sa
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Field as SqlField
from sqlmodel import SQLModel

from channels.app import AppChannel
from citizen_card.self_service import verify_holder_by_phone
from citizen_card.service import CardDeps
from ticketing.models import UTCDateTime
from ticketing.webkit import RouteSpec, json_response, problem, read_body


class AppCardBinding(SQLModel, table=True):
    """An app session (by token hash) proven to belong to a card holder."""

    __tablename__ = "app_card_binding"
    token_hash: str = SqlField(primary_key=True, max_length=64)
    resident_id: int = SqlField(index=True)
    bound_at: datetime = SqlField(sa_column=sa.Column(UTCDateTime(), nullable=False))


binding_t = AppCardBinding.__table__  # type: ignore[attr-defined]


class BindIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    card_no: str = Field(min_length=8, max_length=32)
    id_last6: str = Field(pattern=r"^[0-9]{5}[0-9Xx]$")
    pin: str = Field(pattern=r"^[0-9]{6}$")


def bound_resident(
    card_deps: CardDeps, app_channel: AppChannel
) -> Callable[[web.Request], Awaitable[int]]:
    """The resolver the resident card routes use: the session's proven card holder."""

    async def resolve(request: web.Request) -> int:
        who = await app_channel.resolve(request)
        async with card_deps.read() as conn:
            resident_id = (
                await conn.execute(
                    sa.select(binding_t.c.resident_id).where(
                        binding_t.c.token_hash == who.token_hash
                    )
                )
            ).scalar_one_or_none()
        if resident_id is None:
            raise problem(
                "forbidden",
                "link your citizen card to this sign-in first: POST /api/v1/app/cards/bind "
                "with the card number, the last six characters of your ID number and the PIN",
            )
        return int(resident_id)

    return resolve


def binding_routes(card_deps: CardDeps, app_channel: AppChannel) -> list[RouteSpec]:
    async def bind_card(request: web.Request) -> web.StreamResponse:
        who = await app_channel.resolve(request)
        body = await read_body(request, BindIn)
        resident_id, refusal = await verify_holder_by_phone(
            card_deps, body.card_no, body.id_last6, body.pin, phone_bidx=who.phone_bidx
        )
        if refusal is not None:
            extra = {"reason": refusal.outcome}
            if refusal.tries_left is not None:
                extra["tries_left"] = refusal.tries_left
            raise problem("forbidden", "the card could not be linked to this sign-in", **extra)
        assert resident_id is not None
        now = card_deps.clock()
        async with card_deps.write() as conn:
            await conn.execute(sa.delete(binding_t).where(binding_t.c.token_hash == who.token_hash))
            await conn.execute(
                sa.insert(binding_t).values(
                    token_hash=who.token_hash, resident_id=resident_id, bound_at=now
                )
            )
        return json_response({"bound": True}, status=201)

    return [
        RouteSpec(
            "POST",
            "/api/v1/app/cards/bind",
            bind_card,
            "Link the signed-in session to a citizen card (card number, ID last six, PIN)",
            BindIn,
            (),
            tag="app",
            responses={201: "Linked", 403: "Not proven (reason: wrong_pin, locked, ...)"},
        )
    ]
