"""HTTP routes of the ticket domain, under /api/v1.

The only place where domain errors become HTTP answers: TicketNotFound -> 404,
IllegalMove -> 409 (or 403 when the role may never do it) naming the allowed
moves, InvalidRequest -> 422 naming the field, ConcurrentUpdate -> 409.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from aiohttp import web
from pydantic import BaseModel

from ticketing import handlers as h
from ticketing.catalog import CatalogError, category_t, create_row, department_t, update_row
from ticketing.events import CatalogChanged
from ticketing.intake import IdempotencySpec, Intake, NewTicket
from ticketing.lifecycle import Action, IllegalMove, Role
from ticketing.schemas import (
    AnswerIn,
    CategoryIn,
    CategoryPatch,
    DepartmentIn,
    DepartmentPatch,
    DispatchIn,
    ExtendIn,
    FollowUpIn,
    GrantExtensionIn,
    MergeIn,
    NoteIn,
    ReasonIn,
    ReplyIn,
    RevealIn,
    SuperviseIn,
    TicketIn,
)
from ticketing.webkit import (
    IDEMPOTENCY,
    IDEMPOTENCY_RECORDED,
    RouteSpec,
    field_problem,
    json_response,
    principal_of,
    problem,
    read_body,
    row_id,
)

STAFF: tuple[Role, ...] = ()
FLOOR = (Role.AGENT, Role.SUPERVISOR)
ADMIN = (Role.ADMIN,)
NUMBER_RE = re.compile(r"^[0-9]{13,16}$")

# Content sniffing: the declared type must match the bytes (no HTML posing as a PNG).
MAGIC: dict[str, tuple[bytes, ...]] = {
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/webp": (b"RIFF",),
    "application/pdf": (b"%PDF-",),
    "audio/amr": (b"#!AMR",),
}


def _domain_errors(fn: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)
        except h.TicketNotFound as exc:
            raise problem("not-found", f"no ticket {exc}") from None
        except IllegalMove as exc:
            raise problem(
                "forbidden" if exc.forbidden else "illegal-transition",
                str(exc),
                status_now=exc.status.value,
                allowed_actions=exc.allowed,
            ) from None
        except h.InvalidRequest as exc:
            raise field_problem(str(exc), exc.field) from None
        except CatalogError as exc:
            raise field_problem(str(exc), exc.field) from None
        except h.ConcurrentUpdate:
            raise problem("conflict") from None

    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


def _number(request: web.Request) -> str:
    number = request.match_info["number"]
    if not NUMBER_RE.match(number):
        raise problem("not-found", f"{number!r} is not a ticket number")
    return number


def _bool(value: str | None, name: str) -> bool | None:
    if value is None or value == "":
        return None
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise problem("validation-error", errors=[{"field": name, "message": "true or false"}])


def _time(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if dt.tzinfo is not None:
            dt.astimezone(UTC)  # year 1 at +14:00 has no UTC instant: refuse, not 500
    except (ValueError, OverflowError):
        dt = None
    if dt is None or dt.tzinfo is None:
        raise problem(
            "validation-error",
            errors=[
                {"field": name, "message": "ISO 8601 with a UTC offset, e.g. 2026-11-22T00:00:00Z"}
            ],
        )
    return dt


def ticket_routes(
    deps: h.Deps, intake: Intake, attachment_dir: Path, limits: dict[str, Any]
) -> list[RouteSpec]:
    """The ticket API, closed over the handlers' dependencies."""

    @_domain_errors
    async def create_ticket(request: web.Request) -> web.StreamResponse:
        who = principal_of(request, *FLOOR)
        body = await read_body(request, TicketIn)
        contact = body.contact
        loc = body.location
        cmd = NewTicket(
            kind=body.kind.value,
            title=body.title,
            description=body.description,
            channel=body.channel,
            principal=who,
            category=body.category,
            urgency=body.urgency.value if body.urgency else None,
            contact_name=contact.name if contact else None,
            contact_phone=contact.phone if contact else None,
            contact_ids=dict(contact.channel_ids) if contact else {},
            address=loc.address if loc else None,
            district=loc.district if loc else None,
            lat=loc.lat if loc else None,
            lon=loc.lon if loc else None,
        )
        idem: IdempotencySpec | None = request.get(IDEMPOTENCY)
        view = await intake.create(cmd, idem)
        if idem:
            request[IDEMPOTENCY_RECORDED] = True
        return json_response(
            view, status=201, headers={"Location": f"/api/v1/tickets/{view['number']}"}
        )

    @_domain_errors
    async def list_tickets(request: web.Request) -> web.StreamResponse:
        who = principal_of(request, *STAFF)
        q = request.query
        try:
            limit = int(q.get("limit", "50"))
        except ValueError:
            limit = -1
        if not 1 <= limit <= 200:
            raise problem("validation-error", errors=[{"field": "limit", "message": "1 to 200"}])
        flt = h.TicketFilter(
            status=tuple(s for s in q.get("status", "").split(",") if s),
            kind=q.get("kind") or None,
            category=q.get("category") or None,
            department=q.get("department") or None,
            channel=q.get("channel") or None,
            overdue=_bool(q.get("overdue"), "overdue"),
            q=(q.get("q") or "").strip()[:100] or None,
            created_from=_time(q.get("from"), "from"),
            created_to=_time(q.get("to"), "to"),
        )
        cursor = q.get("cursor") or None
        if cursor:
            # only a cursor this API issued: aware time, an id the column can hold
            at, tid = h.decode_cursor(cursor)
            if at.tzinfo is None or not 0 < tid < 2**31:
                raise h.InvalidRequest("cursor is not one this API issued", "cursor")
        page = await h.list_tickets(deps, who, flt, limit=limit, cursor=cursor)
        return json_response(page)

    @_domain_errors
    async def get_ticket(request: web.Request) -> web.StreamResponse:
        who = principal_of(request, *STAFF)
        return json_response(await h.get_ticket(deps, _number(request), who))

    @_domain_errors
    async def get_events(request: web.Request) -> web.StreamResponse:
        who = principal_of(request, *STAFF)
        return json_response({"items": await h.ticket_events(deps, _number(request), who)})

    @_domain_errors
    async def reveal_contact(request: web.Request) -> web.StreamResponse:
        who = principal_of(request, *FLOOR)
        body = await read_body(request, RevealIn)
        return json_response(await h.reveal_contact(deps, _number(request), who, body.reason))

    def move(action: Action, model: type[BaseModel]) -> Any:
        @_domain_errors
        async def handler(request: web.Request) -> web.StreamResponse:
            who = principal_of(request, *STAFF)
            number = _number(request)
            body = await read_body(request, model)
            payload = body.model_dump(mode="json", exclude_none=True)
            view = await h.move_ticket(deps, h.MoveTicket(number, action, who, payload))
            return json_response(view)

        handler.__name__ = f"move_{action.value}"
        return handler

    @_domain_errors
    async def upload_attachment(request: web.Request) -> web.StreamResponse:
        who = principal_of(request, *STAFF)
        number = _number(request)
        ctype = request.content_type
        if ctype not in limits["types"]:
            raise problem(
                "unsupported-media-type",
                f"{ctype} is not accepted; send one of {', '.join(sorted(limits['types']))}",
            )
        filename = (request.query.get("filename") or "attachment").strip()
        if len(filename) > 200 or any(c in filename for c in "/\\\x00"):
            raise problem(
                "validation-error", errors=[{"field": "filename", "message": "a plain file name"}]
            )
        await h.get_ticket(deps, number, who)  # 404 before reading the body
        digest = hashlib.sha256()
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(65536):
            size += len(chunk)
            if size > limits["max_bytes"]:
                raise problem(
                    "payload-too-large", f"attachments are limited to {limits['max_bytes']} bytes"
                )
            digest.update(chunk)
            chunks.append(chunk)
        data = b"".join(chunks)
        if not data:
            raise problem("validation-error", errors=[{"field": "(body)", "message": "empty file"}])
        magic = MAGIC.get(ctype)
        if magic and not any(data.startswith(m) for m in magic):
            raise problem("unsupported-media-type", f"the content is not {ctype}")
        sha = digest.hexdigest()
        await asyncio.to_thread(_store_blob, attachment_dir, sha, data)
        row = await h.add_attachment(
            deps,
            number,
            who,
            filename=filename,
            content_type=ctype,
            size=size,
            sha256=sha,
            storage_key=f"{sha[:2]}/{sha}",
        )
        return json_response(row, status=200 if row.pop("duplicate", False) else 201)

    @_domain_errors
    async def list_attachments(request: web.Request) -> web.StreamResponse:
        who = principal_of(request, *STAFF)
        return json_response({"items": await h.list_attachments(deps, _number(request), who)})

    @_domain_errors
    async def download_attachment(request: web.Request) -> web.StreamResponse:
        who = principal_of(request, *STAFF)
        att_id = row_id(request.match_info["id"])
        if att_id is None:
            raise problem("not-found")
        meta = await h.get_attachment(deps, att_id, who)
        path = attachment_dir / meta["storage_key"]
        if not path.is_file():
            raise problem("not-found", "the file is missing from storage")
        return web.FileResponse(
            path,
            headers={
                "Content-Type": meta["content_type"],
                "Content-Disposition": "attachment",
                "X-Content-Type-Options": "nosniff",
            },
        )

    async def queue(request: web.Request) -> web.StreamResponse:
        who = principal_of(request, *STAFF)
        return json_response({"items": await h.queue_view(deps, who)})

    async def claim(request: web.Request) -> web.StreamResponse:
        who = principal_of(request, Role.AGENT, Role.SUPERVISOR, Role.DEPARTMENT)
        item = await h.claim_next(deps, who)
        if item is None:
            return web.Response(status=204)
        return json_response(item)

    async def list_departments(request: web.Request) -> web.StreamResponse:
        principal_of(request, *STAFF)
        return json_response({"items": [_public(d) for d in deps.catalog.departments.values()]})

    async def list_categories(request: web.Request) -> web.StreamResponse:
        principal_of(request, *STAFF)
        return json_response({"items": [_public(c) for c in deps.catalog.categories.values()]})

    def catalog_writer(table: sa.Table, model: type[BaseModel], create: bool) -> Any:
        @_domain_errors
        async def handler(request: web.Request) -> web.StreamResponse:
            principal_of(request, *ADMIN)
            body = await read_body(request, model)
            if create:
                row = await create_row(deps.db, deps.catalog, table, body.model_dump(mode="json"))
            else:
                code = request.match_info["code"]
                patch = body.model_dump(mode="json", exclude_unset=True)
                found = await update_row(deps.db, deps.catalog, table, code, patch)
                if found is None:
                    raise problem("not-found", f"no {table.name} {code!r}")
                row = found
            await h.announce(deps, [CatalogChanged()])
            return json_response(_public(row), status=201 if create else 200)

        handler.__name__ = f"{'create' if create else 'update'}_{table.name}"
        return handler

    async def verify_audit(request: web.Request) -> web.StreamResponse:
        principal_of(request, Role.ADMIN, Role.SUPERVISOR)
        numbers = [n for n in request.query.get("tickets", "").split(",") if n]
        return json_response(await h.verify_trails(deps, numbers or None))

    t = "/api/v1/tickets"
    n = t + "/{number}"
    ok = {
        200: "the ticket after the move",
        404: "no such ticket (or not yours)",
        409: "not allowed in the ticket's current status",
        422: "invalid body",
    }
    specs = [
        RouteSpec(
            "POST",
            t,
            create_ticket,
            "Create a ticket",
            TicketIn,
            FLOOR,
            responses={201: "created; body is the ticket", 422: "invalid body"},
        ),
        RouteSpec(
            "GET",
            t,
            list_tickets,
            "List and search tickets",
            roles=STAFF,
            query=(
                ("status", "comma-separated statuses"),
                ("kind", "ticket kind"),
                ("category", "category code (includes its sub-categories)"),
                ("department", "lead or assisting department code"),
                ("channel", "intake channel"),
                ("overdue", "true/false"),
                ("q", "substring search in title, text, address"),
                ("from", "created at or after (ISO 8601)"),
                ("to", "created before (ISO 8601)"),
                ("limit", "1..200, default 50"),
                ("cursor", "next_cursor of the previous page"),
            ),
        ),
        RouteSpec("GET", n, get_ticket, "One ticket", roles=STAFF),
        RouteSpec("GET", n + "/events", get_events, "The ticket's audit trail", roles=STAFF),
        RouteSpec(
            "POST",
            n + "/contact",
            reveal_contact,
            "Reveal the resident's full contact (audited)",
            RevealIn,
            FLOOR,
        ),
        RouteSpec(
            "POST",
            n + "/attachments",
            upload_attachment,
            "Upload an attachment (raw body, ?filename=)",
            roles=STAFF,
            raw_body="application/octet-stream",
            responses={201: "stored", 413: "too large", 415: "type not accepted"},
        ),
        RouteSpec(
            "GET", n + "/attachments", list_attachments, "Attachments of a ticket", roles=STAFF
        ),
        RouteSpec(
            "GET",
            "/api/v1/attachments/{id}",
            download_attachment,
            "Download an attachment",
            roles=STAFF,
        ),
        RouteSpec(
            "GET", "/api/v1/queue", queue, "My work queue (priority, then deadline)", roles=STAFF
        ),
        RouteSpec(
            "POST",
            "/api/v1/queue/claim",
            claim,
            "Claim the next item",
            roles=(Role.AGENT, Role.SUPERVISOR, Role.DEPARTMENT),
            responses={200: "the claimed item", 204: "nothing to claim"},
        ),
        RouteSpec(
            "GET",
            "/api/v1/departments",
            list_departments,
            "Departments",
            roles=STAFF,
            tag="catalog",
        ),
        RouteSpec(
            "POST",
            "/api/v1/departments",
            catalog_writer(department_t, DepartmentIn, True),
            "Create a department",
            DepartmentIn,
            ADMIN,
            tag="catalog",
            responses={201: "created", 422: "invalid"},
        ),
        RouteSpec(
            "PATCH",
            "/api/v1/departments/{code}",
            catalog_writer(department_t, DepartmentPatch, False),
            "Update a department",
            DepartmentPatch,
            ADMIN,
            tag="catalog",
        ),
        RouteSpec(
            "GET", "/api/v1/categories", list_categories, "Categories", roles=STAFF, tag="catalog"
        ),
        RouteSpec(
            "POST",
            "/api/v1/categories",
            catalog_writer(category_t, CategoryIn, True),
            "Create a category",
            CategoryIn,
            ADMIN,
            tag="catalog",
            responses={201: "created", 422: "invalid"},
        ),
        RouteSpec(
            "PATCH",
            "/api/v1/categories/{code}",
            catalog_writer(category_t, CategoryPatch, False),
            "Update a category",
            CategoryPatch,
            ADMIN,
            tag="catalog",
        ),
        RouteSpec(
            "GET",
            "/api/v1/admin/audit/verify",
            verify_audit,
            "Recompute audit hash chains and report breaks",
            roles=(Role.ADMIN, Role.SUPERVISOR),
            query=(("tickets", "comma-separated numbers; default all"),),
            tag="admin",
        ),
    ]
    for path, action, model, summary in (
        ("answer", Action.ANSWER, AnswerIn, "Answer directly (no dispatch)"),
        ("dispatch", Action.DISPATCH, DispatchIn, "Dispatch to a lead (+ assisting) department"),
        ("sign", Action.SIGN, NoteIn, "Sign for the ticket (lead department)"),
        ("return", Action.RETURN, ReasonIn, "Return the ticket with a reason (lead department)"),
        ("extend", Action.REQUEST_EXTENSION, ExtendIn, "Request more time (lead department)"),
        ("extend/grant", Action.GRANT_EXTENSION, GrantExtensionIn, "Grant the extension"),
        ("extend/refuse", Action.REFUSE_EXTENSION, NoteIn, "Refuse the extension"),
        ("reply", Action.REPLY, ReplyIn, "Reply (lead department)"),
        ("follow-up", Action.FOLLOW_UP, FollowUpIn, "Record the follow-up and satisfaction"),
        ("close", Action.CLOSE, ReasonIn, "Close without follow-up (supervisor)"),
        ("reopen", Action.REOPEN, ReasonIn, "Reopen a closed or answered ticket"),
        ("merge", Action.MERGE, MergeIn, "Merge into another ticket"),
        ("supervise", Action.SUPERVISE, SuperviseIn, "Send a supervision notice (督办)"),
    ):
        specs.append(
            RouteSpec(
                "POST", f"{n}/{path}", move(action, model), summary, model, STAFF, responses=ok
            )
        )
    return specs


def _store_blob(root: Path, sha: str, data: bytes) -> None:
    """Content-addressed, written to a temp name then renamed: never a half file."""
    final = root / sha[:2] / sha
    if final.exists():
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{sha}.{uuid.uuid4().hex}")
    tmp.write_bytes(data)
    os.replace(tmp, final)


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "id"}
