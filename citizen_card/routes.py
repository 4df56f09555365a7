"""HTTP routes of the citizen card: staff API under /api/v1 and the published lists.

This package imports nothing of the hotline, so the caller hands in `staff`, a
function that returns the signed-in staff member (or raises the hotline's 401/403),
and turns these `CardRoute`s into its own route table and OpenAPI document.
"""

from __future__ import annotations

import io
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import segno
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from citizen_card import service as svc
from citizen_card.ledger import IdempotencyConflict, InsufficientFunds, LedgerError
from citizen_card.service import CardDeps, CardError

PROBLEM_JSON = "application/problem+json"
# RFC 9052's media type with its cose-type parameter: says which COSE structure the
# trust list and status list bytes are, so generic COSE tooling needs no guessing.
COSE_SIGN1_TYPE = 'application/cose; cose-type="cose-sign1"'
STAFF_READ = ("agent", "supervisor", "admin")
COUNTER = ("agent", "supervisor", "admin")


class Staff(Protocol):
    username: str

    @property
    def role_name(self) -> str: ...


StaffOf = Callable[[web.Request, tuple[str, ...]], Staff]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class CardRoute:
    method: str
    path: str
    handler: Handler
    summary: str
    body: type[BaseModel] | None = None
    roles: tuple[str, ...] | None = None  # None: public
    query: tuple[tuple[str, str], ...] = ()
    responses: dict[int, str] = field(default_factory=lambda: {200: "OK"})


def problem(
    status: int, slug: str, title: str, detail: str | None = None, **ext: Any
) -> web.HTTPException:
    body: dict[str, Any] = {"type": f"/problems/{slug}", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(ext)
    exc = web.HTTPException(text=json.dumps(body, ensure_ascii=False), content_type=PROBLEM_JSON)
    exc.set_status(status)
    return exc


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(data, ensure_ascii=False, separators=(",", ":")),
        content_type="application/json",
    )


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ResidentIn(Strict):
    name: str = Field(min_length=1, max_length=100)
    id_number: str = Field(min_length=18, max_length=18)
    phone: str | None = Field(None, max_length=32)
    address: str | None = Field(None, max_length=300)
    verified_source: str | None = Field(None, max_length=64, description="e.g. 'counter-id-check'")


class CardIn(Strict):
    concession: str = "adult"
    social_security_no: str | None = Field(None, max_length=32)
    health_card_no: str | None = Field(None, max_length=32)
    pin: str | None = Field(None, min_length=6, max_length=6)


class ReportLostIn(Strict):
    channel: str = Field("counter", pattern=r"^(counter|phone|ivr|app|wechat|api)$")


class CardReasonIn(Strict):
    reason: str | None = Field(None, max_length=500)


class PinResetIn(Strict):
    name: str = Field(min_length=1, max_length=100)
    id_last6: str = Field(min_length=6, max_length=6)
    new_pin: str = Field(min_length=6, max_length=6)


class TopUpIn(Strict):
    amount: int = Field(gt=0, le=5_000_000, description="fen")
    source: str = Field("counter-cash", max_length=32)


class BenefitItem(Strict):
    resident_id: int = Field(gt=0, lt=2**31)  # an id the INTEGER column can hold
    amount: int = Field(gt=0, le=5_000_000, description="fen")


class BenefitBatchIn(Strict):
    payments: list[BenefitItem] = Field(min_length=1, max_length=10_000)


class HospitalCardIn(Strict):
    hospital_code: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._-]+$")
    hospital_card_no: str = Field(min_length=1, max_length=64)


# JSON can carry NUL only as this escape (a raw control character is invalid JSON).
# PostgreSQL's text cannot store NUL and no field here has a use for it: refused as
# a field error instead of failing in the database.
_NUL_ESCAPE = b"\\u0000"


MAX_ROW_ID = 2**31 - 1  # the INTEGER primary keys on both databases


def row_id(raw: str) -> int | None:
    """A path segment as a row id, or None (the citizen card's own copy: it imports
    nothing of ticketing): ASCII digits only ('²' and '٣' pass
    `isdigit()` and fail or surprise `int()`) and within the INTEGER range, so a
    lookup never fails in the driver."""
    if raw.isascii() and raw.isdigit() and len(raw) <= 10:
        value = int(raw)
        if 0 < value <= MAX_ROW_ID:
            return value
    return None


def nul_errors(raw: bytes) -> list[dict[str, str]]:
    """A field error for each string (or key) of a JSON body that holds a NUL."""
    if _NUL_ESCAPE not in raw:
        return []
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return []
    # paths are linked (parent, key) pairs, spelled out only for a hit: spelling every
    # element's path would cost depth x elements of memory on a deep, wide body
    found: list[str] = []
    stack: list[tuple[Any, Any]] = [(None, data)]
    while stack:
        at, node = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                found.append(_spell(at))
        elif isinstance(node, dict):
            for k, v in node.items():
                if "\x00" in k:
                    found.append(_spell((at, k)))
                else:
                    stack.append(((at, k), v))
        elif isinstance(node, list):
            stack.extend(((at, i), v) for i, v in enumerate(node))
    found.sort()
    return [{"field": f, "message": "must not contain NUL characters"} for f in found]


async def _body(request: web.Request, model: type[Strict]) -> Any:
    raw = await request.read()
    try:
        body = model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        errors = [
            {
                "field": ".".join(str(p) for p in e["loc"]) or "(body)",
                "message": "unknown field" if e["type"] == "extra_forbidden" else e["msg"],
            }
            for e in exc.errors(include_url=False)
        ]
        if any(e["type"] in ("json_invalid", "json_type") for e in exc.errors()):
            raise problem(400, "malformed-body", "The request body could not be read") from None
        raise problem(422, "validation-error", "Some fields are not valid", errors=errors) from None
    nul = nul_errors(raw)
    if nul:
        raise problem(422, "validation-error", "Some fields are not valid", errors=nul)
    return body


def _card_errors(fn: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)
        except CardError as exc:
            ext: dict[str, Any] = {}
            if exc.field:
                ext["errors"] = [{"field": exc.field, "message": str(exc)}]
            slug = exc.code if exc.code in ("not-found", "validation-error") else f"card-{exc.code}"
            if exc.code == "validation":
                slug = "validation-error"
            raise problem(exc.status, slug, str(exc), str(exc), **ext) from None
        except IdempotencyConflict as exc:
            raise problem(
                422,
                "idempotency-key-reuse",
                "This Idempotency-Key was used for a different request",
                str(exc),
            ) from None
        except InsufficientFunds as exc:
            raise problem(
                402, "card-insufficient-funds", "The balance is too low", str(exc)
            ) from None
        except LedgerError as exc:
            raise problem(422, "ledger-refused", "The ledger refused this", str(exc)) from None

    wrapped.__name__ = fn.__name__
    return wrapped


def card_routes(deps: CardDeps, staff: StaffOf) -> list[CardRoute]:
    @_card_errors
    async def create_resident(request: web.Request) -> web.StreamResponse:
        who = staff(request, COUNTER)
        body = await _body(request, ResidentIn)
        row = await svc.register_resident(deps, **body.model_dump())
        view = svc.resident_view(deps, row, full_name=who.role_name == "admin")
        return _json(view, 201)

    def _resident_id(request: web.Request) -> int:
        rid = row_id(request.match_info["id"])
        if rid is None:
            raise problem(404, "not-found", "Not found")
        return rid

    @_card_errors
    async def get_resident(request: web.Request) -> web.StreamResponse:
        who = staff(request, STAFF_READ)
        row = await svc.get_resident(deps, _resident_id(request))
        return _json(svc.resident_view(deps, row, full_name=who.role_name == "admin"))

    @_card_errors
    async def issue_card(request: web.Request) -> web.StreamResponse:
        who = staff(request, COUNTER)
        body = await _body(request, CardIn)
        row = await svc.issue_card(
            deps, _resident_id(request), actor=who.username, **body.model_dump()
        )
        return _json(svc.card_view(row), 201)

    @_card_errors
    async def link_hospital(request: web.Request) -> web.StreamResponse:
        staff(request, COUNTER)
        body = await _body(request, HospitalCardIn)
        await svc.link_hospital_card(
            deps, _resident_id(request), body.hospital_code, body.hospital_card_no
        )
        return _json({"linked": True}, 201)

    @_card_errors
    async def get_card(request: web.Request) -> web.StreamResponse:
        staff(request, STAFF_READ)
        return _json(svc.card_view(await svc.get_card(deps, request.match_info["card_no"])))

    @_card_errors
    async def report_lost(request: web.Request) -> web.StreamResponse:
        who = staff(request, COUNTER)
        body = await _body(request, ReportLostIn)
        receipt = await svc.report_lost(
            deps, request.match_info["card_no"], actor=who.username, channel=body.channel
        )
        return _json(receipt)

    def status_move(action: str) -> Handler:
        @_card_errors
        async def handler(request: web.Request) -> web.StreamResponse:
            who = staff(request, ("supervisor", "admin") if action == "freeze" else COUNTER)
            body = await _body(request, CardReasonIn)
            row = await svc.change_status(
                deps,
                request.match_info["card_no"],
                action,
                actor=who.username,
                channel="counter",
                reason=body.reason,
            )
            return _json(svc.card_view(row))

        handler.__name__ = action
        return handler

    @_card_errors
    async def replace(request: web.Request) -> web.StreamResponse:
        who = staff(request, COUNTER)
        row = await svc.replace_card(
            deps, request.match_info["card_no"], actor=who.username, channel="counter"
        )
        return _json(svc.card_view(row), 201)

    @_card_errors
    async def cancel(request: web.Request) -> web.StreamResponse:
        who = staff(request, ("supervisor", "admin"))
        return _json(
            await svc.cancel_card(
                deps, request.match_info["card_no"], actor=who.username, channel="counter"
            )
        )

    @_card_errors
    async def token(request: web.Request) -> web.StreamResponse:
        staff(request, COUNTER)
        purpose = request.query.get("purpose", "id")
        tok = await svc.make_token(deps, request.match_info["card_no"], purpose)
        return _json({"token": tok, "purpose": purpose, "expires_in": 60})

    def qr(kind: str) -> Handler:
        @_card_errors
        async def handler(request: web.Request) -> web.StreamResponse:
            staff(request, COUNTER)
            tok = await svc.make_token(
                deps, request.match_info["card_no"], request.query.get("purpose", "id")
            )
            # alphanumeric mode: Base45 was chosen for exactly this
            code = segno.make(tok, error="m", mode="alphanumeric")
            buf = io.BytesIO()
            if kind == "png":
                code.save(buf, kind="png", scale=4, border=4)
                return web.Response(
                    body=buf.getvalue(),
                    content_type="image/png",
                    headers={"Cache-Control": "no-store"},
                )
            code.save(buf, kind="svg", scale=4, border=4)
            return web.Response(
                body=buf.getvalue(),
                content_type="image/svg+xml",
                headers={"Cache-Control": "no-store"},
            )

        handler.__name__ = f"qr_{kind}"
        return handler

    @_card_errors
    async def wallet(request: web.Request) -> web.StreamResponse:
        staff(request, STAFF_READ)
        resident = await svc.get_resident(deps, _resident_id(request))
        page = await deps.ledger.statement(
            resident.wallet_account_id, limit=20, cursor=request.query.get("cursor") or None
        )
        return _json(
            {
                "balance_fen": await deps.ledger.balance(resident.wallet_account_id),
                "currency": "CNY",
                "lines": [
                    {
                        "seq": ln.seq,
                        "transfer_id": str(ln.transfer_id),
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

    def _idem_key(request: web.Request) -> str:
        key = request.headers.get("Idempotency-Key", "")
        if not (1 <= len(key) <= 128 and key.isascii() and key.isprintable()):
            raise problem(
                400,
                "idempotency-key-required",
                "Money moves need an Idempotency-Key header",
                "send a unique Idempotency-Key (1-128 printable ASCII characters)",
            )
        return key

    @_card_errors
    async def top_up(request: web.Request) -> web.StreamResponse:
        who = staff(request, ("supervisor", "admin"))
        body = await _body(request, TopUpIn)
        key = _idem_key(request)
        resident = await svc.get_resident(deps, _resident_id(request))
        t = await deps.ledger.top_up(
            resident.wallet_account_id,
            body.amount,
            f"staff:{key}",
            meta={"source": body.source, "by": who.username},
        )
        return _json(
            {"transfer_id": str(t.id), "seq": t.seq, "amount_fen": t.amount, "receipt": t.receipt},
            201,
        )

    @_card_errors
    async def benefits(request: web.Request) -> web.StreamResponse:
        staff(request, ("admin",))
        body = await _body(request, BenefitBatchIn)
        batch = request.match_info["batch_id"]
        wallets = []
        for item in body.payments:
            r = await svc.get_resident(deps, item.resident_id)
            wallets.append((r.wallet_account_id, item.amount))
        done = await deps.ledger.disburse(batch, wallets)
        return _json(
            {
                "batch": batch,
                "paid": len(done),
                "total_fen": sum(t.amount for t in done),
                "transfers": [str(t.id) for t in done],
            },
            201,
        )

    @_card_errors
    async def pin_reset(request: web.Request) -> web.StreamResponse:
        who = staff(request, COUNTER)
        body = await _body(request, PinResetIn)
        await svc.reset_pin(
            deps,
            request.match_info["card_no"],
            name=body.name,
            id_last6=body.id_last6,
            new_pin=body.new_pin,
            actor=who.username,
            channel="counter",
        )
        return web.Response(status=204)

    async def trust_list(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=svc.trust_list(deps),
            headers={"Content-Type": COSE_SIGN1_TYPE, "Cache-Control": "public, max-age=60"},
        )

    async def status_list(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=await svc.status_list(deps),
            headers={"Content-Type": COSE_SIGN1_TYPE, "Cache-Control": "public, max-age=30"},
        )

    async def root_key(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=deps.keyring.root_public_pem(), content_type="application/x-pem-file"
        )

    async def receipt_key(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=svc.receipt_public_pem(deps), content_type="application/x-pem-file"
        )

    c = "/api/v1/cards/{card_no}"
    r = "/api/v1/residents/{id}"
    wk = "/.well-known/citizen-card"
    moved = {200: "the card", 404: "no such card", 409: "not allowed in the card's status"}
    return [
        CardRoute(
            "POST",
            "/api/v1/residents",
            create_resident,
            "Register a resident (ID number validated, PII encrypted)",
            ResidentIn,
            COUNTER,
            responses={201: "registered", 409: "exists", 422: "invalid"},
        ),
        CardRoute("GET", r, get_resident, "A resident (masked by role)", roles=STAFF_READ),
        CardRoute(
            "POST",
            r + "/cards",
            issue_card,
            "Issue a citizen card",
            CardIn,
            COUNTER,
            responses={201: "issued", 404: "no such resident"},
        ),
        CardRoute(
            "POST",
            r + "/hospital-cards",
            link_hospital,
            "Map a hospital visit card to the resident",
            HospitalCardIn,
            COUNTER,
            responses={201: "linked"},
        ),
        CardRoute(
            "GET",
            r + "/wallet",
            wallet,
            "Wallet balance and statement (fen)",
            roles=STAFF_READ,
            query=(("cursor", "next_cursor of the previous page"),),
        ),
        CardRoute(
            "POST",
            r + "/wallet/top-up",
            top_up,
            "Counter top-up (Idempotency-Key required)",
            TopUpIn,
            ("supervisor", "admin"),
            responses={201: "credited", 400: "no key"},
        ),
        CardRoute(
            "POST",
            "/api/v1/benefits/{batch_id}",
            benefits,
            "Benefit disbursement batch (惠民资金), idempotent per resident",
            BenefitBatchIn,
            ("admin",),
            responses={201: "paid"},
        ),
        CardRoute("GET", c, get_card, "A card and its status", roles=STAFF_READ),
        CardRoute(
            "POST",
            c + "/report-lost",
            report_lost,
            "Report lost: freeze now, signed freeze receipt",
            ReportLostIn,
            COUNTER,
            responses=moved,
        ),
        CardRoute(
            "POST",
            c + "/freeze",
            status_move("freeze"),
            "Freeze",
            CardReasonIn,
            ("supervisor", "admin"),
            responses=moved,
        ),
        CardRoute(
            "POST",
            c + "/unfreeze",
            status_move("unfreeze"),
            "Unfreeze (found, or freeze lifted)",
            CardReasonIn,
            COUNTER,
            responses=moved,
        ),
        CardRoute(
            "POST",
            c + "/activate",
            status_move("activate"),
            "Activate an issued card",
            CardReasonIn,
            COUNTER,
            responses=moved,
        ),
        CardRoute(
            "POST",
            c + "/replace",
            replace,
            "Replace: new number, balance and links move",
            roles=COUNTER,
            responses={201: "the new card", 409: "not allowed"},
        ),
        CardRoute(
            "POST",
            c + "/cancel",
            cancel,
            "Cancel; the balance is refunded",
            roles=("supervisor", "admin"),
            responses=moved,
        ),
        CardRoute(
            "POST",
            c + "/pin/reset",
            pin_reset,
            "Reset a (locked) PIN after an identity check",
            PinResetIn,
            COUNTER,
            responses={204: "reset", 403: "identity does not match"},
        ),
        CardRoute(
            "GET",
            c + "/token",
            token,
            "A dynamic QR token (CC1:...)",
            roles=COUNTER,
            query=(("purpose", "id | transit | pay | medical"),),
        ),
        CardRoute(
            "GET",
            c + "/qr.png",
            qr("png"),
            "The dynamic QR code as PNG",
            roles=COUNTER,
            query=(("purpose", "id | transit | pay | medical"),),
        ),
        CardRoute(
            "GET",
            c + "/qr.svg",
            qr("svg"),
            "The dynamic QR code as SVG",
            roles=COUNTER,
            query=(("purpose", "id | transit | pay | medical"),),
        ),
        CardRoute(
            "GET", wk + "/trust-list", trust_list, "Signed trust list (COSE_Sign1, root key)"
        ),
        CardRoute("GET", wk + "/status-list", status_list, "Signed status list of revoked cards"),
        CardRoute("GET", wk + "/root-key.pem", root_key, "The city's root public key (pin it)"),
        CardRoute("GET", wk + "/receipt-key.pem", receipt_key, "Public key of freeze receipts"),
    ]


def _spell(at: Any) -> str:
    """`a.0.b` from the linked (parent, key) pairs of a JSON path."""
    keys: list[str] = []
    while at is not None:
        at, key = at
        keys.append(str(key))
    return ".".join(reversed(keys)) or "(body)"
