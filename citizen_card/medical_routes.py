"""HTTP routes of the medical features.

``medical_routes``: for the partner sub-application (mounted at /partner/v1 behind
``partner_auth_middleware``; paths here are relative to it). Every route needs the
scope ``medical``; the partner is ``request[PARTNER]``. Errors are problem+json with
type ``/problems/partner-<code>``, like the middleware's own.

``medical_admin_routes``: staff routes under /api/v1 as ``CardRoute``s (grants are
given and revoked at the counter on the resident's behalf, health cards linked).

A hospital's level (which decides its insurance ratio) is configuration of the city,
never taken from the hospital's request: ``hospital_levels`` maps partner id to level.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, timedelta
from typing import Any

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from citizen_card import medical as med
from citizen_card import service as svc
from citizen_card.ledger import DEFAULT_MAX_AMOUNT
from citizen_card.partner_middleware import problem_response, require_scope
from citizen_card.routes import (
    COUNTER,
    STAFF_READ,
    CardRoute,
    StaffOf,
    _body,
    _card_errors,
    nul_errors,
    row_id,
)
from citizen_card.service import CardDeps, CardError

MEDICAL_SCOPE = "medical"
Handler = Callable[[web.Request], Any]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class CheckInIn(_Strict):
    token: str = Field(min_length=5, max_length=4096)


class BillItemIn(_Strict):
    code: str = Field(min_length=1, max_length=100)
    name: str = Field(min_length=1, max_length=100)
    category: str = Field(min_length=1, max_length=100)
    unit_price_fen: int = Field(ge=0, le=DEFAULT_MAX_AMOUNT, strict=True)
    quantity: int = Field(1, ge=1, le=100_000, strict=True)
    self_pay_only: bool = False


class SettlementIn(_Strict):
    bill_no: str = Field(min_length=1, max_length=128, description="the idempotency key")
    token: str | None = Field(None, max_length=4096)
    card_no: str | None = Field(None, max_length=20)
    hospital_card_no: str | None = Field(None, max_length=64)
    items: list[BillItemIn] = Field(min_length=1, max_length=med.MAX_ITEMS)


class GrantIn(_Strict):
    partner_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    purpose: str = Field(description=" | ".join(med.GRANT_PURPOSES))
    not_before: AwareDatetime | None = None
    not_after: AwareDatetime | None = None
    days: int | None = Field(None, ge=1, le=med.MAX_GRANT_DAYS, description="or not_after")


class MedicalLinksIn(_Strict):
    health_card_no: str | None = Field(None, max_length=32)
    social_security_no: str | None = Field(None, max_length=32)


def _ok(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(data, ensure_ascii=False, separators=(",", ":")),
        content_type="application/json",
    )


def _problem(exc: CardError) -> web.Response:
    ext: dict[str, Any] = {}
    if exc.field:
        ext["errors"] = [{"field": exc.field, "message": str(exc)}]
    code = "validation_error" if exc.code == "validation" else exc.code.replace("-", "_")
    return problem_response(code, exc.status, str(exc), str(exc), **ext)


async def _parse(request: web.Request, model: type[_Strict]) -> Any:
    raw = await request.read()
    try:
        body = model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        if any(e["type"] in ("json_invalid", "json_type") for e in exc.errors()):
            raise CardError("malformed-body", "the body is not JSON", status=400) from None
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]) or "(body)", "message": e["msg"]}
            for e in exc.errors(include_url=False)
        ]
        raise _Invalid(errors) from None
    nul = nul_errors(raw)
    if nul:
        raise _Invalid(nul)
    return body


class _Invalid(Exception):
    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("invalid body")
        self.errors = errors


def _partner_errors(fn: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)
        except CardError as exc:
            return _problem(exc)
        except _Invalid as exc:
            return problem_response(
                "validation_error", 422, "Some fields are not valid", errors=exc.errors
            )

    wrapped.__name__ = fn.__name__
    return wrapped


LevelOf = Mapping[str, str] | Callable[[str], str | None]


def medical_routes(
    card: CardDeps,
    *,
    rule: med.InsuranceRule = med.DEFAULT_RULE,
    hospital_levels: LevelOf | None = None,
) -> list[web.RouteDef]:
    """Partner routes (relative to /partner/v1), each needing the scope ``medical``.

    ``hospital_levels``: partner id -> level (a mapping or a function); a hospital not
    in it cannot settle (403 ``hospital_level_unknown``)."""
    levels = hospital_levels if hospital_levels is not None else {}

    def level_of(partner_id: str) -> str | None:
        return levels.get(partner_id) if isinstance(levels, Mapping) else levels(partner_id)

    @_partner_errors
    async def check_in(request: web.Request) -> web.StreamResponse:
        partner = require_scope(request, MEDICAL_SCOPE)
        body = await _parse(request, CheckInIn)
        return _ok(await med.check_in(card, body.token, partner.partner_id))

    @_partner_errors
    async def visit_card(request: web.Request) -> web.StreamResponse:
        partner = require_scope(request, MEDICAL_SCOPE)
        return _ok(
            await med.resolve_visit_card(
                card, partner.partner_id, request.match_info["hospital_card_no"]
            )
        )

    @_partner_errors
    async def settle(request: web.Request) -> web.StreamResponse:
        partner = require_scope(request, MEDICAL_SCOPE)
        body = await _parse(request, SettlementIn)
        level = level_of(partner.partner_id)
        if level is None:
            raise CardError(
                "hospital-level-unknown",
                "this hospital's level is not configured; it cannot settle bills yet",
                status=403,
            )
        result = await med.settle(
            card,
            partner.partner_id,
            level,
            [item.model_dump() for item in body.items],
            body.bill_no,
            token=body.token,
            card_no=body.card_no,
            hospital_card_no=body.hospital_card_no,
            rule=rule,
        )
        return _ok(result.to_dict(), 200 if result.transfer.replayed else 201)

    @_partner_errors
    async def records(request: web.Request) -> web.StreamResponse:
        partner = require_scope(request, MEDICAL_SCOPE)
        purpose = request.query.get("purpose", "")
        if purpose not in med.GRANT_PURPOSES:
            raise CardError(
                "validation",
                f"purpose must be one of {', '.join(med.GRANT_PURPOSES)}",
                status=422,
                field="purpose",
            )
        return _ok(
            await med.read_records(card, partner.partner_id, request.match_info["handle"], purpose)
        )

    return [
        web.post("/medical/check-in", check_in),
        web.get("/medical/visit-cards/{hospital_card_no}", visit_card),
        web.post("/medical/settlements", settle),
        web.get("/medical/records/{handle}", records),
    ]


def medical_admin_routes(card: CardDeps, staff: StaffOf) -> list[CardRoute]:
    """Staff routes: residents' grants to hospitals, health-card links."""

    def path_id(request: web.Request, name: str, what: str) -> int:
        rid = row_id(request.match_info[name])
        if rid is None:
            raise CardError("not-found", f"no such {what}", status=404)
        return rid

    def resident_id(request: web.Request) -> int:
        return path_id(request, "id", "resident")

    @_card_errors
    async def create_grant(request: web.Request) -> web.StreamResponse:
        who = staff(request, COUNTER)
        body = await _body(request, GrantIn)
        if (body.not_after is None) == (body.days is None):
            raise CardError("validation", "give not_after or days", status=422, field="not_after")
        start = body.not_before or card.clock()
        not_after = body.not_after or start + timedelta(days=body.days or 0)
        row = await med.grant_access(
            card,
            resident_id(request),
            body.partner_id,
            body.purpose,
            not_before=body.not_before,
            not_after=not_after.astimezone(UTC),
            actor=who.username,
        )
        return _ok(med.grant_view(row, card.clock()), 201)

    @_card_errors
    async def list_grants(request: web.Request) -> web.StreamResponse:
        staff(request, STAFF_READ)
        now = card.clock()
        rows = await med.list_grants(card, resident_id(request))
        return _ok({"items": [med.grant_view(r, now) for r in rows]})

    @_card_errors
    async def revoke(request: web.Request) -> web.StreamResponse:
        who = staff(request, COUNTER)
        grant_id = path_id(request, "grant_id", "grant")
        row = await med.revoke_grant(card, resident_id(request), grant_id, actor=who.username)
        return _ok(med.grant_view(row, card.clock()))

    @_card_errors
    async def link(request: web.Request) -> web.StreamResponse:
        who = staff(request, COUNTER)
        body = await _body(request, MedicalLinksIn)
        row = await med.link_medical_cards(
            card,
            request.match_info["card_no"],
            actor=who.username,
            health_card_no=body.health_card_no,
            social_security_no=body.social_security_no,
        )
        return _ok(svc.card_view(row))

    g = "/api/v1/residents/{id}/grants"
    return [
        CardRoute(
            "POST",
            g,
            create_grant,
            "Grant a hospital access to the resident's records for a purpose and a period",
            GrantIn,
            COUNTER,
            responses={201: "granted", 404: "no such resident or partner", 422: "invalid"},
        ),
        CardRoute("GET", g, list_grants, "The resident's grants", roles=STAFF_READ),
        CardRoute(
            "POST",
            g + "/{grant_id}/revoke",
            revoke,
            "Revoke a grant (at once; revoking twice is harmless)",
            roles=COUNTER,
            responses={200: "the grant", 404: "no such grant"},
        ),
        CardRoute(
            "POST",
            "/api/v1/cards/{card_no}/medical-links",
            link,
            "Link the health card and/or social-security card",
            MedicalLinksIn,
            COUNTER,
            responses={200: "the card", 404: "no such card", 409: "card replaced or cancelled"},
        ),
    ]
