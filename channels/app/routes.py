"""HTTP routes of the city app under /api/v1/app (OpenAPI tag "app").

The resident's bearer token is the app's own (not a staff session): every route
but the two sign-in steps resolves it here. The only place the app's refusals
become problem+json answers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from channels.app import const
from channels.app.accounts import ResidentPrincipal, SignIn, SignInRefused
from channels.app.feed import Feed
from channels.app.photos import FormError, read_report_form
from channels.app.schemas import CodeIn, MessageIn, RatingIn, ReportFields, TokenIn
from channels.app.service import AppError, AppService, Report
from ticketing.handlers import TicketNotFound
from ticketing.webkit import (
    RouteSpec,
    json_response,
    problem,
    read_body,
    validation_errors,
)

P = const.PREFIX
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_SEQ = 2**31 - 1  # app_notification.seq is an INTEGER column
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return None


def _unauthorized(detail: str) -> web.HTTPException:
    exc = problem("unauthorized", detail)
    exc.headers["WWW-Authenticate"] = 'Bearer realm="app"'
    return exc


async def resolve(signin: SignIn, request: web.Request) -> ResidentPrincipal:
    """The signed-in resident, or the app's 401 (staff sessions do not count here)."""
    token = bearer(request)
    # header bytes that are not UTF-8 arrive as lone surrogates: no token we issued
    if token is None or len(token) > 256 or not (token.isascii() and token.isprintable()):
        raise _unauthorized("send the app's bearer token (POST /api/v1/app/auth/token)")
    who = await signin.resolve(token)
    if who is None:
        raise _unauthorized("the token is unknown, expired or signed out")
    return who


def _errors(fn: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)
        except SignInRefused as exc:
            ext: dict[str, Any] = {}
            if exc.reason:
                ext["reason"] = exc.reason
            if exc.attempts_left is not None:
                ext["attempts_left"] = exc.attempts_left
            if exc.field:
                ext["errors"] = [{"field": exc.field, "message": exc.detail}]
            err = problem(exc.slug, exc.detail, **ext)
            if exc.retry_after is not None:
                err.headers["Retry-After"] = str(exc.retry_after)
            raise err from None
        except AppError as exc:
            ext = dict(exc.ext)
            if exc.field:
                ext["errors"] = [{"field": exc.field, "message": exc.detail}]
            raise problem(exc.slug, exc.detail, **ext) from None
        except FormError as exc:
            ext = {}
            if exc.slug == "validation-error":
                ext["errors"] = [{"field": exc.field, "message": exc.detail}]
            raise problem(exc.slug, exc.detail, **ext) from None
        except TicketNotFound:
            raise problem("not-found", "no such ticket of yours") from None

    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


def _key(request: web.Request, required: bool) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        if required:
            raise problem(
                "validation-error",
                "reports need an Idempotency-Key header (the app's retries must not "
                "file the report twice)",
                errors=[{"field": IDEMPOTENCY_HEADER, "message": "required"}],
            )
        return None
    if not (1 <= len(key) <= 255) or not key.isascii() or not key.isprintable():
        raise problem(
            "validation-error",
            errors=[
                {"field": IDEMPOTENCY_HEADER, "message": "1 to 255 printable ASCII characters"}
            ],
        )
    return key


def _lang(request: web.Request) -> str:
    return "en" if request.headers.get("Accept-Language", "").lower().startswith("en") else "zh"


def _int(value: str | None, name: str, default: int, lo: int, hi: int) -> int:
    if value is None or value == "":
        return default
    # ASCII digits only ("²".isdigit() too), few enough for int() and the columns
    if not (value.isascii() and value.isdigit() and len(value) <= 19 and lo <= int(value) <= hi):
        raise problem("validation-error", errors=[{"field": name, "message": f"{lo} to {hi}"}])
    return int(value)


def _number(request: web.Request) -> str:
    number = request.match_info["number"]
    if not number.isdigit() or not 13 <= len(number) <= 16:
        raise problem("not-found", "not a ticket number")
    return number


def _answer(status: int, body: Any, replayed: bool) -> web.Response:
    resp = json_response(body, status=status)
    if replayed:
        resp.headers["Idempotent-Replayed"] = "true"
    return resp


def app_routes(
    signin: SignIn,
    service: AppService,
    feed: Feed,
    *,
    photo_limits: dict[str, Any],
) -> list[RouteSpec]:
    async def who(request: web.Request) -> ResidentPrincipal:
        return await resolve(signin, request)

    @_errors
    async def app_request_code(request: web.Request) -> web.StreamResponse:
        body = await read_body(request, CodeIn)
        return json_response(await signin.request_code(body.phone, request.remote), status=202)

    @_errors
    async def app_sign_in(request: web.Request) -> web.StreamResponse:
        body = await read_body(request, TokenIn)
        resp = json_response(await signin.verify(body.phone, body.code, request.remote))
        resp.headers["Cache-Control"] = "no-store"
        return resp

    @_errors
    async def app_sign_out(request: web.Request) -> web.StreamResponse:
        await signin.logout(await who(request))
        return web.Response(status=204)

    @_errors
    async def app_create_report(request: web.Request) -> web.StreamResponse:
        me = await who(request)
        key = _key(request, required=True)
        assert key is not None
        form = await read_report_form(
            request,
            max_photos=photo_limits["max_photos"],
            photo_max_bytes=photo_limits["max_bytes"],
            photo_types=photo_limits["types"],
            max_field_bytes=const.MAX_FIELD_BYTES,
        )
        try:
            fields = ReportFields.model_validate(form.fields)
        except ValidationError as exc:
            raise problem("validation-error", errors=validation_errors(exc)) from None
        report = Report(
            description=fields.description,
            kind=fields.kind.value,
            category=fields.category,
            address=fields.address,
            lat=fields.lat,
            lon=fields.lon,
            photos=tuple(form.photos),
            lang=_lang(request),
        )
        return _answer(*await service.create_report(me, key, report))

    @_errors
    async def app_my_tickets(request: web.Request) -> web.StreamResponse:
        me = await who(request)
        limit = _int(request.query.get("limit"), "limit", 20, 1, 100)
        return json_response(await service.my_tickets(me, limit, request.query.get("cursor")))

    @_errors
    async def app_ticket(request: web.Request) -> web.StreamResponse:
        me = await who(request)
        return json_response(await service.ticket_view(me, _number(request)))

    @_errors
    async def app_rate_ticket(request: web.Request) -> web.StreamResponse:
        me = await who(request)
        number = _number(request)
        body = await read_body(request, RatingIn)
        return json_response(await service.rate(me, number, body.rating, body.comment or None))

    @_errors
    async def app_follow_up(request: web.Request) -> web.StreamResponse:
        me = await who(request)
        number = _number(request)
        key = _key(request, required=False)
        body = await read_body(request, MessageIn)
        return _answer(*await service.follow_up(me, number, body.text, key, _lang(request)))

    @_errors
    async def app_notifications(request: web.Request) -> web.StreamResponse:
        me = await who(request)
        after = _int(request.query.get("after"), "after", 0, 0, MAX_SEQ)
        limit = _int(request.query.get("limit"), "limit", const.FEED_PAGE, 1, 100)
        items = await feed.page(me.account_id, after, limit)
        return json_response(
            {
                "items": items,
                "next_after": items[-1]["id"] if items else after,
                "more": len(items) == limit,
            }
        )

    @_errors
    async def app_notification_stream(request: web.Request) -> web.StreamResponse:
        me = await who(request)
        last = request.headers.get("Last-Event-ID") or request.query.get("after")
        after = _int(last, "Last-Event-ID", 0, 0, MAX_SEQ)

        async def still_signed_in() -> bool:
            token = bearer(request)
            return token is not None and await signin.resolve(token) is not None

        return await feed.stream(request, me.account_id, after, still_signed_in)

    t = P + "/tickets/{number}"
    return [
        RouteSpec(
            "POST",
            P + "/auth/code",
            app_request_code,
            "Send a one-time sign-in code to a mobile number",
            CodeIn,
            None,
            tag=const.TAG,
            responses={202: "code sent", 422: "not a mobile number", 429: "wait (Retry-After)"},
        ),
        RouteSpec(
            "POST",
            P + "/auth/token",
            app_sign_in,
            "Exchange the code for the resident's bearer token",
            TokenIn,
            None,
            tag=const.TAG,
            responses={
                200: "signed in",
                401: "wrong, expired or spent code (see reason)",
                429: "too many wrong codes",
            },
        ),
        RouteSpec(
            "POST",
            P + "/auth/logout",
            app_sign_out,
            "Revoke the resident's token",
            roles=(),
            tag=const.TAG,
            responses={204: "signed out"},
        ),
        RouteSpec(
            "POST",
            P + "/reports",
            app_create_report,
            "Report a problem (multipart: description, kind, category, lat, lon, address, "
            "up to 4 photos); Idempotency-Key required",
            roles=(),
            tag=const.TAG,
            raw_body="multipart/form-data",
            responses={
                201: "ticket created (or the first answer, Idempotent-Replayed)",
                409: "the same Idempotency-Key is still running",
                413: "a photo is too large",
                415: "not multipart, or a photo is not an accepted image",
                422: "invalid fields, too many photos, or the key reused for another body",
            },
        ),
        RouteSpec(
            "GET",
            P + "/tickets",
            app_my_tickets,
            "The signed-in resident's tickets, newest first",
            roles=(),
            tag=const.TAG,
            query=(("limit", "1-100 (20)"), ("cursor", "next_cursor of the previous page")),
        ),
        RouteSpec(
            "GET",
            t,
            app_ticket,
            "One of the resident's tickets with its public timeline",
            roles=(),
            tag=const.TAG,
            responses={200: "OK", 404: "no such ticket of yours"},
        ),
        RouteSpec(
            "POST",
            t + "/rating",
            app_rate_ticket,
            "Rate the outcome once it is answered (1 unsatisfied - 3 satisfied)",
            RatingIn,
            (),
            tag=const.TAG,
            responses={200: "rated", 404: "no such ticket of yours", 409: "not yet, or rated"},
        ),
        RouteSpec(
            "POST",
            t + "/messages",
            app_follow_up,
            "Write to the hotline about the ticket (Idempotency-Key honoured)",
            MessageIn,
            (),
            tag=const.TAG,
            responses={201: "stored", 404: "no such ticket of yours"},
        ),
        RouteSpec(
            "GET",
            P + "/notifications",
            app_notifications,
            "The resident's notifications after a cursor (poll)",
            roles=(),
            tag=const.TAG,
            query=(("after", "id of the last notification seen (0)"), ("limit", "1-100 (50)")),
        ),
        RouteSpec(
            "GET",
            P + "/notifications/stream",
            app_notification_stream,
            "The notifications as Server-Sent Events (resume with Last-Event-ID)",
            roles=(),
            tag=const.TAG,
            query=(("after", "resume point when Last-Event-ID cannot be sent"),),
            responses={200: "text/event-stream"},
        ),
    ]
