"""aiohttp middleware guarding /partner/v1: verify, rate-limit, sign every answer.

For a request under the prefix, in this order:

1. parse `Authorization` (exactly one; 401 when absent or unreadable);
2. read the body, at most `max_body` bytes (413 above; 411 for a chunked body,
   partners send a Content-Length);
3. look the partner up, check it is enabled, the key, the clock window (±skew_s)
   and the signature (401 with a stable code, see `partner_auth`);
4. take a token from the partner's bucket (429 with Retry-After) -- after the
   signature, so nobody can spend a partner's budget, and before the nonce is
   recorded, so the nonce table grows no faster than the partners' rates;
5. record the nonce (401 replayed_nonce when seen within the window), through the
   nonce store or the caller's `admit` hook (which may record it later, with the
   call's audit row, and refuse the answer then);
6. put the `PartnerCredentials` in the request under `PARTNER` and run the handler.

Every response under the prefix -- success, problem, or an exception from the
handler -- leaves with `X-Citycard-Signature`, bound to the request's nonce.
Handlers must answer with an in-memory `web.Response` (a streamed response cannot
be signed and becomes a 500). Errors are RFC 9457 problem+json with type
`/problems/partner-<code>`. This middleware is independent of the hotline's own
middlewares: put it on the partner sub-application, or anywhere in the list.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from citizen_card.dberrors import first_line, unavailable
from citizen_card.partner_auth import (
    DEFAULT_SKEW_S,
    RESPONSE_SIGNATURE_HEADER,
    SCHEME_ED25519,
    SCHEME_HMAC,
    CitySigner,
    NonceStore,
    NonceStoreFull,
    PartnerAuthError,
    PartnerCredentials,
    PartnerRateLimiter,
    SignedRequestParams,
    nonce_expiry,
    parse_authorization,
    remember_nonce,
    verify_signature,
)

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
MAX_BODY = 1024 * 1024
PARTNER = web.RequestKey("citycard_partner", PartnerCredentials)
PARTNER_REQUEST = web.RequestKey("citycard_partner_request", SignedRequestParams)

Lookup = Callable[[str], Awaitable[PartnerCredentials | None]]
Admit = Callable[[web.Request, SignedRequestParams, int], Awaitable[bool]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def partner_of(request: web.Request) -> PartnerCredentials:
    """The authenticated partner of a request that went through the middleware."""
    partner = request.get(PARTNER)
    if partner is None:
        raise RuntimeError("no partner on this request: is partner_auth_middleware installed?")
    return partner


def require_scope(request: web.Request, *scopes: str) -> PartnerCredentials:
    """The partner, if it holds every one of `scopes`; otherwise 403 insufficient_scope."""
    partner = partner_of(request)
    missing = sorted(set(scopes) - partner.scopes)
    if missing:
        raise PartnerAuthError(
            "insufficient_scope", f"this needs the scope(s) {', '.join(missing)}"
        )
    return partner


def problem_response(
    code: str, status: int, title: str, detail: str | None = None, **ext: Any
) -> web.Response:
    body: dict[str, Any] = {"type": f"/problems/partner-{code}", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(ext)
    return web.Response(
        status=status, text=json.dumps(body, ensure_ascii=False), content_type=PROBLEM_JSON
    )


def _auth_problem(exc: PartnerAuthError) -> web.Response:
    resp = problem_response(exc.code, exc.status, exc.title, exc.message)
    if exc.status == 401:
        resp.headers["WWW-Authenticate"] = (
            f'{SCHEME_ED25519} realm="partner", {SCHEME_HMAC} realm="partner"'
        )
    if exc.retry_after is not None:
        resp.headers["Retry-After"] = str(exc.retry_after)
    return resp


def _internal_error() -> web.Response:
    return problem_response("internal_error", 500, "Something went wrong on our side")


def _failed(what: str, request: web.Request, exc: BaseException) -> web.Response:
    """An unexpected exception: 503 ``service_unavailable`` (retry later, one log line)
    when the database cannot serve now (out of connection slots, shutting down,
    unreachable), else 500 with the traceback logged."""
    if unavailable(exc):
        log.warning(
            "partner %s: database unavailable: %s %s: %s",
            what,
            request.method,
            request.path,
            first_line(exc),
        )
        resp = problem_response(
            "service_unavailable", 503, "The service cannot answer now; retry shortly"
        )
        resp.headers["Retry-After"] = "5"
        return resp
    log.error("partner %s failed: %s %s", what, request.method, request.path, exc_info=exc)
    return _internal_error()


def _from_http_exception(exc: web.HTTPException) -> web.Response:
    """An aiohttp exception as a plain response; error bodies become problem+json."""
    headers = {
        k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")
    }
    if exc.status >= 400 and exc.content_type not in (PROBLEM_JSON, "application/json"):
        resp = web.Response(
            status=exc.status,
            text=json.dumps(
                {"type": "about:blank", "title": exc.reason, "status": exc.status},
                ensure_ascii=False,
            ),
            content_type=PROBLEM_JSON,
        )
    else:
        resp = web.Response(status=exc.status, body=exc.body, content_type=exc.content_type)
    for k, v in headers.items():
        resp.headers[k] = v
    return resp


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


async def _read_body(request: web.Request, max_body: int) -> bytes:
    if "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        raise PartnerAuthError("length_required", "send the body with a Content-Length header")
    length = request.content_length
    if length is not None and length > max_body:
        raise PartnerAuthError("body_too_large", f"at most {max_body} bytes, got {length}")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PartnerAuthError("body_too_large", f"at most {max_body} bytes") from None


def partner_auth_middleware(
    lookup: Lookup,
    nonce_store: NonceStore,
    city_signer: CitySigner,
    *,
    prefix: str = "/partner/v1",
    skew_s: int = DEFAULT_SKEW_S,
    clock: Callable[[], float] = time.time,
    rate_limiter: PartnerRateLimiter | None = None,
    max_body: int = MAX_BODY,
    admit: Admit | None = None,
) -> Middleware:
    """Build the middleware; `lookup(partner_id)` answers from the registry (None: unknown).

    `admit(request, params, expires_at)` records the nonce instead of the nonce store
    (True: fresh). The partner API uses it to record the nonce together with the
    Idempotency-Key claim, or -- for a call that changes nothing -- together with the
    call's audit row, after the handler (see partner_routes)."""
    limiter = rate_limiter if rate_limiter is not None else PartnerRateLimiter()

    async def authenticate(request: web.Request) -> SignedRequestParams:
        headers = request.headers.getall("Authorization", [])
        if len(headers) > 1:
            raise PartnerAuthError("malformed", "send exactly one Authorization header")
        params = parse_authorization(headers[0] if headers else None)
        request[PARTNER_REQUEST] = params
        body = await _read_body(request, max_body)
        partner = await lookup(params.partner_id)
        if partner is None:
            raise PartnerAuthError("unknown_partner", f"no partner {params.partner_id!r}")
        verify_signature(
            params, request.method, request.raw_path, body, partner, clock(), skew_s=skew_s
        )
        wait = limiter.take(partner.partner_id, partner.rate_per_minute)
        if wait > 0:
            raise PartnerAuthError(
                "rate_limited",
                f"at most {partner.rate_per_minute} requests a minute",
                retry_after=max(1, math.ceil(wait)),
            )
        try:
            if admit is None:
                await remember_nonce(params, nonce_store, skew_s=skew_s)
            elif not await admit(request, params, nonce_expiry(params, skew_s)):
                raise PartnerAuthError("replayed_nonce", f"nonce {params.nonce} was already used")
        except NonceStoreFull:
            raise PartnerAuthError(
                "nonce_store_full", "too many requests in flight", retry_after=1
            ) from None
        request[PARTNER] = partner
        return params

    async def answer(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            await authenticate(request)
        except PartnerAuthError as exc:
            params = request.get(PARTNER_REQUEST)
            log.info(
                "partner request refused: %s (partner=%s, %s %s)",
                exc.code,
                params.partner_id if params else "-",
                request.method,
                request.path,
            )
            return _auth_problem(exc)
        except Exception as exc:  # the registry or the nonce store failed
            return _failed("authentication", request, exc)
        try:
            return await handler(request)
        except PartnerAuthError as exc:  # require_scope in a handler
            return _auth_problem(exc)
        except web.HTTPException as exc:
            return _from_http_exception(exc)
        except Exception as exc:
            return _failed("handler", request, exc)

    @web.middleware
    async def partner_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not _under(request.path, prefix):
            return await handler(request)
        resp = await answer(request, handler)
        if (
            resp.prepared
            or not isinstance(resp, web.Response)
            or not isinstance(resp.body, bytes | bytearray | None)
        ):
            log.error("partner response cannot be signed (streamed): %s", request.path)
            if resp.prepared:
                return resp  # headers already sent; the partner will see no signature
            resp = _internal_error()
        params = request.get(PARTNER_REQUEST)
        body = b"" if request.method == "HEAD" or resp.body is None else bytes(resp.body)
        resp.headers[RESPONSE_SIGNATURE_HEADER] = city_signer.sign(
            resp.status, params.nonce if params else "", body, int(clock())
        )
        return resp

    return partner_auth
