"""What a resident does with their own card, without staff: by phone and in the city app.

By phone (the hotline's IVR, a WeChat menu): `report_lost_by_phone` and
`balance_by_phone` take what a caller can key on a phone pad -- the card number, the
last six characters of the ID number (a loss report only) and the 6-digit PIN -- and
answer a `PhoneReply` whose `outcome` is one of the IVR's `CardOutcome` values
(`ok`, `wrong_pin`, `unknown_card`, `locked`, `refused`), so the hotline's adapter
maps it one to one. A wrong ID and a wrong PIN are the same `wrong_pin` and count
the same failure: after five the PIN locks (`locked`) and only a counter or an agent
(identity check, `service.reset_pin`) opens it. Authentication comes before any
status is revealed: an unauthenticated caller learns only "unknown card" or "wrong".

In the app: `resident_card_routes(deps, resolve_resident)` serves the signed-in
resident's cards, wallet balance and statement, dynamic QR tokens (JSON, PNG, SVG)
and a loss report, under `/api/v1/app/cards` and `/api/v1/app/wallet`. The app's
sign-in belongs to the hotline: `resolve_resident(request)` returns the signed-in
resident's id in this package's `resident` table, or raises the app's own 401
problem. Every route checks that the card belongs to that resident (404 otherwise,
never 403: a card number is not confirmed to exist).
"""

from __future__ import annotations

import asyncio
import hmac
import io
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import segno
import sqlalchemy as sa
from aiohttp import web
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from citizen_card import service as svc
from citizen_card.identity import is_valid_card_number
from citizen_card.routes import CardRoute, _card_errors, _json, problem
from citizen_card.service import CARD_MOVES, MAX_PIN_FAILURES, CardDeps, CardStatus

ResolveResident = Callable[[web.Request], Awaitable[int]]
APP = "/api/v1/app"
PHONE_CHANNELS = frozenset({"ivr", "wechat", "phone", "app"})


@dataclass(frozen=True)
class PhoneReply:
    """`outcome`: ok | wrong_pin | unknown_card | locked | refused (the IVR's CardOutcome)."""

    outcome: str
    receipt: str | None = None  # a loss report: the freeze receipt number (digits)
    balance_fen: int | None = None  # a balance query
    signed: str | None = None  # a loss report: the signed freeze receipt
    tries_left: int | None = None  # after a wrong PIN

    def __repr__(self) -> str:  # nothing secret here, but keep it short in logs
        return f"PhoneReply(outcome={self.outcome!r})"


async def _authenticate(
    deps: CardDeps, card_no: str, pin: str, id_last6: str | None, channel: str
) -> tuple[Any, PhoneReply | None]:
    """(card, None) when the caller proved it, else (card or None, the reply to give)."""
    card_no = "".join(card_no.split())
    if not is_valid_card_number(card_no):
        return None, PhoneReply("unknown_card")
    try:
        card = await svc.get_card(deps, card_no)
    except svc.NotFound:
        return None, PhoneReply("unknown_card")
    if card.pin_hash is None:
        return card, PhoneReply("refused")  # no PIN: only a counter or an agent can help
    if card.pin_failures >= MAX_PIN_FAILURES:
        return card, PhoneReply("locked")
    ok = True
    if id_last6 is not None:
        resident = await svc.get_resident(deps, card.resident_id)
        id_number = deps.cipher.decrypt(resident.id_number_enc)
        given = "".join(id_last6.split()).upper()
        # the check character X is keyed as * or 0 on some phones: accept only the exact
        # character, a wrong guess costs a try like a wrong PIN
        ok = hmac.compare_digest(id_number[-6:].encode(), given.encode())

    def check_pin() -> bool:
        try:
            return svc._pin_hasher.verify(card.pin_hash, pin)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    # the PIN is checked even after a wrong ID, so both take the same time
    ok = (await asyncio.to_thread(check_pin)) and ok
    now = deps.clock()
    async with deps.write() as conn:
        if ok:
            await conn.execute(
                sa.update(svc.card_t).where(svc.card_t.c.id == card.id).values(pin_failures=0)
            )
        else:
            failures = (
                await conn.execute(
                    sa.update(svc.card_t)
                    .where(svc.card_t.c.id == card.id)
                    .values(pin_failures=svc.card_t.c.pin_failures + 1)
                    .returning(svc.card_t.c.pin_failures)
                )
            ).scalar_one()
            await svc._log(conn, card.card_no, channel, channel, "pin_failed", now)
    if ok:
        return card, None
    left = max(0, MAX_PIN_FAILURES - int(failures))
    return card, PhoneReply("locked" if left == 0 else "wrong_pin", tries_left=left)


async def verify_holder_by_phone(
    deps: CardDeps, card_no: str, id_last6: str, pin: str, *, phone_bidx: str
) -> tuple[int | None, PhoneReply | None]:
    """(resident id, None) when the caller proved the card -- card number, last six of
    the ID number and PIN, with the same lockout as the IVR -- and the holder's phone
    on file is the one the caller signed in with (`phone_bidx`); else (None, refusal).
    The city app links a sign-in to a card with this."""
    card, refusal = await _authenticate(deps, card_no, pin, id_last6, "app")
    if refusal is not None:
        return None, refusal
    resident = await svc.get_resident(deps, card.resident_id)
    if not hmac.compare_digest((resident.phone_bidx or "").encode(), phone_bidx.encode()):
        return None, PhoneReply("refused")
    return int(card.resident_id), None


async def report_lost_by_phone(
    deps: CardDeps, card_no: str, id_last6: str, pin: str, *, channel: str = "ivr"
) -> PhoneReply:
    """Freeze a card on the caller's word: card number + last six of the ID + PIN.

    `ok` carries the freeze receipt number (digits, to read back) and the signed
    receipt; a card already lost, replaced or cancelled is `refused`.
    """
    if channel not in PHONE_CHANNELS:
        raise ValueError(f"channel must be one of {sorted(PHONE_CHANNELS)}")
    card, refusal = await _authenticate(deps, card_no, pin, id_last6, channel)
    if refusal is not None:
        return refusal
    sources, _ = CARD_MOVES["report_lost"]
    if CardStatus(card.status) not in sources:
        return PhoneReply("refused")
    try:
        receipt = await svc.report_lost(deps, card.card_no, actor=channel, channel=channel)
    except svc.CardError:  # changed meanwhile (reported on another line)
        return PhoneReply("refused")
    return PhoneReply("ok", receipt=receipt["receipt"], signed=receipt["signed"])


async def balance_by_phone(
    deps: CardDeps, card_no: str, pin: str, *, channel: str = "ivr"
) -> PhoneReply:
    """The wallet balance in fen, for the card number and its PIN."""
    if channel not in PHONE_CHANNELS:
        raise ValueError(f"channel must be one of {sorted(PHONE_CHANNELS)}")
    card, refusal = await _authenticate(deps, card_no, pin, None, channel)
    if refusal is not None:
        return refusal
    wallet = await svc.wallet_of(deps, card.resident_id)
    return PhoneReply("ok", balance_fen=await deps.ledger.balance(wallet))


# ---------------------------------------------------------------- the city app


def resident_card_routes(deps: CardDeps, resolve_resident: ResolveResident) -> list[CardRoute]:
    """The signed-in resident's own card, for the city app (see the module doc)."""

    async def own_card(request: web.Request) -> Any:
        resident_id = await resolve_resident(request)
        card_no = request.match_info["card_no"]
        try:
            card = await svc.get_card(deps, card_no)
        except svc.NotFound:
            card = None
        if card is None or card.resident_id != resident_id:
            raise problem(404, "not-found", "No such card of yours")
        return card

    @_card_errors
    async def cards(request: web.Request) -> web.StreamResponse:
        resident_id = await resolve_resident(request)
        async with deps.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(svc.card_t)
                    .where(svc.card_t.c.resident_id == resident_id)
                    .order_by(svc.card_t.c.issued_at.desc(), svc.card_t.c.id.desc())
                )
            ).all()
        return _json({"items": [svc.card_view(r) for r in rows]})

    @_card_errors
    async def wallet(request: web.Request) -> web.StreamResponse:
        resident_id = await resolve_resident(request)
        account = await svc.wallet_of(deps, resident_id)
        limit_text = request.query.get("limit", "20")
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= 100:
            raise problem(
                422,
                "validation-error",
                "Some fields are not valid",
                errors=[{"field": "limit", "message": "1 to 100"}],
            )
        try:
            page = await deps.ledger.statement(
                account, limit=int(limit_text), cursor=request.query.get("cursor") or None
            )
        except (ValueError, TypeError):
            raise problem(
                422,
                "validation-error",
                "Some fields are not valid",
                errors=[{"field": "cursor", "message": "use next_cursor of the previous page"}],
            ) from None
        return _json(
            {
                "balance_fen": await deps.ledger.balance(account),
                "currency": "CNY",
                "lines": [
                    {
                        "seq": ln.seq,
                        "kind": ln.kind,
                        "amount_fen": ln.amount,
                        "balance_after_fen": ln.balance_after,
                        "at": ln.at.isoformat().replace("+00:00", "Z"),
                        "partner": ln.partner_id,
                    }
                    for ln in page.lines
                ],
                "next_cursor": page.next_cursor,
            }
        )

    @_card_errors
    async def token(request: web.Request) -> web.StreamResponse:
        card = await own_card(request)
        purpose = request.query.get("purpose", "id")
        tok = await svc.make_token(deps, card.card_no, purpose)
        resp = _json({"token": tok, "purpose": purpose, "expires_in": 60})
        resp.headers["Cache-Control"] = "no-store"
        return resp

    def qr(kind: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        @_card_errors
        async def handler(request: web.Request) -> web.StreamResponse:
            card = await own_card(request)
            tok = await svc.make_token(deps, card.card_no, request.query.get("purpose", "id"))
            code = segno.make(tok, error="m", mode="alphanumeric")
            buf = io.BytesIO()
            code.save(buf, kind=kind, scale=4, border=4)
            return web.Response(
                body=buf.getvalue(),
                content_type="image/png" if kind == "png" else "image/svg+xml",
                headers={"Cache-Control": "no-store"},
            )

        handler.__name__ = f"app_qr_{kind}"
        return handler

    @_card_errors
    async def report_lost(request: web.Request) -> web.StreamResponse:
        card = await own_card(request)
        receipt = await svc.report_lost(
            deps, card.card_no, actor=f"resident:{card.resident_id}", channel="app"
        )
        return _json(receipt)

    purpose = (("purpose", "id | transit | pay | medical (default id)"),)
    c = APP + "/cards/{card_no}"
    return [
        CardRoute("GET", APP + "/cards", cards, "The signed-in resident's cards"),
        CardRoute(
            "GET",
            APP + "/wallet",
            wallet,
            "The signed-in resident's wallet balance and statement (fen)",
            query=(("cursor", "next_cursor of the previous page"), ("limit", "1-100 (20)")),
        ),
        CardRoute("GET", c + "/token", token, "A dynamic QR token (60 s)", query=purpose),
        CardRoute("GET", c + "/qr.png", qr("png"), "The dynamic QR code as PNG", query=purpose),
        CardRoute("GET", c + "/qr.svg", qr("svg"), "The dynamic QR code as SVG", query=purpose),
        CardRoute(
            "POST",
            c + "/report-lost",
            report_lost,
            "Report the card lost: frozen at once, answered with the signed freeze receipt",
            responses={200: "frozen", 404: "not your card", 409: "already lost or closed"},
        ),
    ]


__all__ = [
    "PhoneReply",
    "ResolveResident",
    "balance_by_phone",
    "report_lost_by_phone",
    "resident_card_routes",
    "verify_holder_by_phone",
]
